"""Per-target parameter defaults: a compiled pipeline never carries a value only a local run can use."""

from pathlib import Path

import pytest
import yaml

from tuneline.graph import build_graph
from tuneline.spec import SpecError, load_pipeline
from tuneline.targets.build import compile_graph
from tuneline.targets.options import CompileOptions

ROOT = Path(__file__).resolve().parents[3]
FINETUNE = ROOT / "pipelines" / "finetune.yaml"


def _copy(tmp_path: Path, old: str, new: str) -> Path:
    """finetune.yaml with one edit, in a project whose components/ are the real ones."""
    (tmp_path / "components").symlink_to(ROOT / "components")
    (tmp_path / "pipelines").mkdir()
    text = FINETUNE.read_text()
    assert old in text
    path = tmp_path / "pipelines" / "finetune.yaml"
    path.write_text(text.replace(old, new))
    return path


def test_each_target_gets_its_own_default():
    pipeline = load_pipeline(FINETUNE)
    assert pipeline.params["deploy_target"] == "local"  # tuneline run
    assert pipeline.for_target("kfp").params["deploy_target"] == "kserve"
    assert pipeline.for_target("azureml").params["deploy_target"] == "azureml"
    assert pipeline.for_target("kfp").params["learning_rate"] == pipeline.params["learning_rate"]


def test_compiled_files_carry_the_target_default(tmp_path):
    graph = build_graph(load_pipeline(FINETUNE))
    out = compile_graph(graph, ("kfp", "azureml"), tmp_path, CompileOptions())
    kfp = next(yaml.safe_load_all((out.folder / "kfp" / "pipeline.yaml").read_text()))
    assert kfp["root"]["inputDefinitions"]["parameters"]["deploy_target"]["defaultValue"] == "kserve"
    job = yaml.safe_load((out.folder / "azureml" / "pipeline_job.yml").read_text())
    assert job["inputs"]["deploy_target"] == "azureml"


def test_set_wins_over_the_target_default():
    pipeline = load_pipeline(FINETUNE, {"deploy_target": "triton"})
    assert pipeline.for_target("kfp").params["deploy_target"] == "triton"
    assert pipeline.for_target("azureml").params["deploy_target"] == "triton"


def test_a_local_only_value_is_a_compile_error(tmp_path):
    graph = build_graph(load_pipeline(FINETUNE, {"deploy_target": "local"}))
    with pytest.raises(SpecError) as err:
        compile_graph(graph, ("kfp",), tmp_path, CompileOptions())
    text = str(err.value)
    assert "finetune.yaml:" in text and "deploy.target" in text and "runs only locally" in text
    assert "['triton', 'kserve']" in text
    assert not (tmp_path / "kfp" / "pipeline.yaml").exists()


def test_a_local_only_literal_is_a_compile_error(tmp_path):
    path = _copy(tmp_path, "target: ${{params.deploy_target}}", "target: local")
    graph = build_graph(load_pipeline(path))  # fine for tuneline run
    with pytest.raises(SpecError, match=r"finetune.yaml:\d+:\d+: .*deploy.target \('local'\) for target azureml"):
        graph.for_target("azureml")


def test_a_target_default_the_target_cannot_run_fails_validation(tmp_path):
    path = _copy(tmp_path, "{kfp: kserve, azureml: azureml}", "{kfp: local, azureml: azureml}")
    with pytest.raises(SpecError, match=r"deploy_target = 'local'\) for target kfp: 'local' runs only locally"):
        load_pipeline(path)


def test_a_target_default_for_an_unknown_target_fails_validation(tmp_path):
    path = _copy(tmp_path, "{kfp: kserve, azureml: azureml}", "{kfp: kserve, azureml: azureml, nowhere: x}")
    with pytest.raises(SpecError) as err:
        load_pipeline(path)
    assert "target_defaults" in str(err.value)


def test_a_local_target_default_is_what_a_run_on_this_machine_sees(tmp_path):
    path = _copy(tmp_path, "{kfp: kserve, azureml: azureml}", "{kfp: kserve, azureml: azureml, local: triton}")
    pipeline = load_pipeline(path)
    assert pipeline.params["deploy_target"] == "triton"  # tuneline run
    assert pipeline.for_target("local").params["deploy_target"] == "triton"  # tuneline submit --target local
    assert pipeline.for_target("kfp").params["deploy_target"] == "kserve"
