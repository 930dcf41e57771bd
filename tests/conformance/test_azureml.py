"""The compiled toy pipeline, executed by Azure ML's documented runtime rules, matches `tuneline run`."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from tuneline.conformance.__main__ import main
from tuneline.conformance.azureml import AzureMLRuntime, RuntimeRuleBroken

TOY = Path(__file__).resolve().parents[1] / "fixtures" / "toy" / "pipelines" / "toy.yaml"


@pytest.mark.parametrize(("count", "publish"), [(5, "succeeded"), (2, "skipped")])
def test_toy_pipeline_matches_local_with_the_gate_open_and_closed(tmp_path, capsys, count, publish):
    assert main(["azureml", str(TOY), "--set", f"count={count}", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "azureml conformance: 3/3 steps match local" in out
    assert f"publish      {publish}" in out
    assert "passed: True" in out if publish == "succeeded" else "passed: False" in out


def _compiled(tmp_path: Path) -> Path:
    from tuneline.compile.build import compile_file
    from tuneline.compile.options import CompileOptions

    return compile_file(TOY, ("azureml",), tmp_path / "c", CompileOptions()).folder / "azureml" / "pipeline_job.yml"


def test_a_folder_where_a_uri_file_is_mounted_breaks_a_runtime_rule(tmp_path):
    job_file = _compiled(tmp_path)
    component = job_file.parent / "components" / "publish.yml"
    body = yaml.safe_load(component.read_text())
    body["inputs"]["report"]["type"] = "uri_folder"  # check writes a file there
    component.write_text(yaml.safe_dump(body))
    runtime = AzureMLRuntime(job_file, tmp_path / "run", image_path=Path(__file__).resolve().parents[2])
    for name in ("gen", "check"):
        runtime.results[name] = runtime.run_node(name)
    with pytest.raises(RuntimeRuleBroken, match="a uri_folder input must be a folder"):
        runtime.run_node("publish")


def test_primitive_outputs_are_refused(tmp_path):
    job_file = _compiled(tmp_path)
    component = job_file.parent / "components" / "gen.yml"
    body = yaml.safe_load(component.read_text())
    body["outputs"]["flag"] = {"type": "boolean", "is_control": True}
    component.write_text(yaml.safe_dump(body))
    with pytest.raises(RuntimeRuleBroken, match="primitive outputs are not supported"):
        AzureMLRuntime(job_file, tmp_path / "run").run_node("gen")


def test_the_private_preview_flag_is_refused(tmp_path, monkeypatch):
    from tuneline.conformance.azureml import validate_offline

    monkeypatch.setitem(os.environ, "AZURE_ML_CLI_PRIVATE_FEATURES_ENABLED", "true")
    with pytest.raises(RuntimeRuleBroken, match="must validate without it"):
        validate_offline(_compiled(tmp_path))


RESUME = TOY.parent / "resume.yaml"


@pytest.mark.slow
def test_a_preempted_resumable_node_resumes_from_its_rw_mount_output(tmp_path, capsys):
    """R8: count's checkpoints live at a datastore path; killed after its first checkpoint and submitted again,
    it resumes from there, and its outputs still equal an uninterrupted local run's."""
    assert main(["azureml", str(RESUME), "--preempt-resumable", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "azureml conformance: 2/2 steps match local" in out
    line = next(x for x in out.splitlines() if x.startswith("azureml checkpoint resume: count killed at step "))
    killed, resumed = (int(x) for x in re.findall(r"step (\d+)", line))
    assert resumed == killed + 1 and 1 <= killed < 6
    assert "(exit 143)" in line


def test_datastore_paths_resolve_to_folders_that_outlive_jobs(tmp_path):
    runtime = AzureMLRuntime(_compiled(tmp_path), tmp_path / "run")
    folder, mode = runtime._output_folder("fit", "checkpoints", {
        "type": "uri_folder", "mode": "rw_mount",
        "path": "azureml://datastores/${{default_datastore}}/paths/tuneline/checkpoints/x/${{output_name}}/"},
        tmp_path / "scratch")
    assert (folder, mode) == (tmp_path / "run/datastores/workspaceblobstore/tuneline/checkpoints/x/checkpoints",
                              "rw_mount")
    assert runtime._output_folder("fit", "model", None, tmp_path / "scratch") == (tmp_path / "scratch", None)
    with pytest.raises(RuntimeRuleBroken, match="mode 'download'"):
        runtime._output_folder("fit", "model", {"mode": "download"}, tmp_path / "scratch")
    with pytest.raises(RuntimeRuleBroken, match="known expressions"):
        runtime._output_folder("fit", "model", {"path": "azureml://datastores/x/paths/${{run_id}}/"}, tmp_path)
