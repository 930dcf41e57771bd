"""The local plan, the KFP DAG and the Azure ML DAG are one graph: same steps, edges, parameters, conditions."""

import pytest
from readback import TOY, TOY_MULTINODE, azureml_dag, kfp_dag

from tuneline.graph import build_graph
from tuneline.spec import OutputRef, ParamRef, load_pipeline


def local_dag(path):
    graph = build_graph(load_pipeline(path))
    return {
        "steps": set(graph.order),
        "edges": {(e.source, e.output, e.target, e.input) for e in graph.edges()},
        "params": set(graph.params),
        "conditions": {n.name: (n.condition.step, n.condition.output) for n in graph.nodes.values() if n.condition},
        "param_inputs": {(n.name, i): b.name for n in graph.nodes.values() for i, b in n.bindings.items()
                         if isinstance(b, ParamRef)},
        "has_output_edges": any(isinstance(b, OutputRef) for n in graph.nodes.values() for b in n.bindings.values()),
    }


@pytest.mark.parametrize("pipeline", [TOY, TOY_MULTINODE], ids=lambda p: p.stem)
def test_local_kfp_and_azureml_dags_agree(compiled, pipeline):
    local = local_dag(pipeline)
    assert local["has_output_edges"] and local["conditions"]  # the fixture exercises both
    folder = compiled[pipeline.stem]
    kfp = kfp_dag(folder / "kfp" / "pipeline.yaml")
    aml = azureml_dag(folder / "azureml" / "pipeline_job.yml")
    for key in ("steps", "edges", "params", "conditions", "param_inputs"):
        assert kfp[key] == local[key], f"KFP {key}"
        assert aml[key] == local[key], f"Azure ML {key}"
