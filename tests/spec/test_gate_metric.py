"""One `gate_metric` parameter drives every pipeline's gates, register's comparison and the quality trigger, and a
metric evaluate can never produce is refused by `tuneline validate` / `tuneline run` before any step runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneline.spec import SpecError, load_pipeline
from tuneline.spec.load import ParamRef, parse_binding
from tuneline.spec.models import Role

PIPELINES = sorted((Path(__file__).parents[2] / "pipelines").glob("*.yaml"))


@pytest.mark.parametrize("path", PIPELINES, ids=lambda p: p.stem)
def test_every_pipeline_binds_its_metric_inputs_to_the_gate_metric_parameter(path):
    pipeline = load_pipeline(path)
    metric_steps = [step for step, c in pipeline.components.items()
                    if c.spec.role in (Role.prepare, Role.evaluate, Role.register) and "gate_metric" in c.spec.inputs]
    assert any(pipeline.components[s].spec.role == Role.evaluate for s in metric_steps)
    for step in metric_steps:
        assert pipeline.bindings[step].get("gate_metric") == ParamRef("gate_metric"), step
    if pipeline.spec.triggers is not None:
        assert parse_binding(pipeline.spec.triggers.metric) == ParamRef("gate_metric")


def test_a_metric_no_evaluation_produces_is_one_problem_at_the_parameter():
    path = next(p for p in PIPELINES if p.stem == "finetune")
    with pytest.raises(SpecError) as caught:
        load_pipeline(path, {"gate_metric": "rouge"})
    messages = [str(p) for p in caught.value.problems]
    assert len(messages) == 1 and "gate_metric: 'rouge' is not a metric evaluate produces" in messages[0]
    assert load_pipeline(path, {"gate_metric": "perplexity"}).params["gate_metric"] == "perplexity"
