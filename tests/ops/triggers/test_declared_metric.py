"""triggers.metric may name a pipeline parameter, so the parameter that picks the gate metric picks it too."""

from pathlib import Path

import pytest

from tuneline.ops.triggers.check import declared_metric
from tuneline.spec import SpecError
from tuneline.spec.load import load_pipeline

REPO = Path(__file__).resolve().parents[3]


def test_the_demo_trigger_metric_follows_gate_metric():
    assert declared_metric(load_pipeline(REPO / "pipelines" / "finetune.yaml")) == "field_accuracy"
    retargeted = load_pipeline(REPO / "pipelines" / "finetune.yaml", {"gate_metric": "rouge_l"})
    assert declared_metric(retargeted) == "rouge_l"


def test_an_unknown_parameter_is_a_validation_problem(tmp_path):
    text = (REPO / "pipelines" / "finetune.yaml").read_text().replace(
        'metric: ${{params.gate_metric}}', 'metric: ${{params.gate_metrik}}')
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "components").symlink_to(REPO / "components")
    (tmp_path / "pipelines" / "finetune.yaml").write_text(text)
    with pytest.raises(SpecError, match="trigger metric"):
        load_pipeline(tmp_path / "pipelines" / "finetune.yaml")
