"""`--set STEP.INPUT=VALUE` binds one step's input to a literal, typed and checked as the component declares it;
the graph, the plan and both compilers see the new binding (they read `Pipeline.bindings`, never the YAML)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneline.graph import build_graph
from tuneline.spec import Literal, SpecError, load_pipeline


def test_a_step_input_override_replaces_a_parameter_binding_and_a_default(toy: Path):
    pipeline = load_pipeline("pipelines/toy.yaml", {"gen.count": "7", "gen.flavour": "fancy"})
    assert pipeline.bindings["gen"]["count"] == Literal(7)  # typed: the input is an integer
    assert pipeline.bindings["gen"]["flavour"] == Literal("fancy")  # unbound in the pipeline: the default gave way
    assert pipeline.params["count"] == 5  # the parameter itself is untouched


def test_overriding_an_upstream_output_removes_the_edge(toy: Path):
    (toy / "report.txt").write_text("by hand\n")
    graph = build_graph(load_pipeline("pipelines/toy.yaml", {"publish.report": "report.txt"}))
    assert graph.nodes["publish"].bindings["report"] == Literal(str(toy / "report.txt"))  # from the current folder
    assert ("check", "report") not in {(e.source, e.output) for e in graph.edges() if e.target == "publish"}


@pytest.mark.parametrize(("pair", "message"), [
    ({"gen.cuont": "1"}, "component 'gen' has no input 'cuont'; did you mean 'count'?"),
    ({"gne.count": "1"}, "--set gne.count: no step 'gne'; did you mean 'gen'?"),
    ({"gen.count": "many"}, "--set gen.count: 'many' is not an integer"),
    ({"gen.count": "5000"}, "--set gen.count: 5000 is above the maximum 1000"),
    ({"gen.flavour": "sour"}, "--set gen.flavour: 'sour' is not one of ['plain', 'fancy']"),
    ({"flavour": "fancy"}, "--set flavour: no such parameter; to set a step's input use --set STEP.INPUT=VALUE"),
])
def test_a_wrong_override_names_the_step_and_what_is_wrong(toy: Path, pair: dict[str, str], message: str):
    with pytest.raises(SpecError) as err:
        load_pipeline("pipelines/toy.yaml", pair)
    assert message in str(err.value)
    assert str(err.value).startswith("pipelines/toy.yaml:")


def test_both_compilers_carry_a_step_input_override(toy: Path, cli, tmp_path: Path):
    code, _, err = cli("compile", "pipelines/toy.yaml", "--set", "gen.flavour=fancy", "--out", str(tmp_path))
    assert code == 0, err
    assert "constant: fancy" in (tmp_path / "toy" / "kfp" / "pipeline.yaml").read_text()
    assert "flavour: fancy" in (tmp_path / "toy" / "azureml" / "pipeline_job.yml").read_text()
    assert "--flavour fancy" in (tmp_path / "toy" / "local" / "steps.yaml").read_text()
