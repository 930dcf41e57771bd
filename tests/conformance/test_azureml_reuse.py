"""R11 (reuse) and R12 (schedules) of the Azure ML harness: a pipeline job submitted again reuses the deterministic
nodes of the first, and the compiled schedule's job (`force_rerun: true`) runs every node again.

The reuse key and the schedule loader need no images; the submissions run each node in a container of its image,
so they are in the heavy tier (tests/conformance/test_azureml.py says how those run).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tools.conformance.__main__ import REPO
from tools.conformance.azureml import (
    AzureMLRuntime,
    NodeResult,
    RuntimeRuleBroken,
    compile_options,
    local_images,
    scheduled_job,
)
from tools.conformance.azureml_reuse import FinishedJob, ReuseRecord, digest
from tools.conformance.kfp import IMAGE_REGISTRY
from tuneline.targets.options import CompileOptions

TOY = Path(__file__).resolve().parents[1] / "fixtures" / "toy"
REUSE = TOY / "pipelines" / "reuse.yaml"


def _compiled(pipeline: Path, out: Path, options: CompileOptions | None = None) -> Path:
    """The Azure ML folder `pipeline` compiles to: pipeline_job.yml, components/, schedule.yml."""
    from tuneline.targets.build import compile_file

    return compile_file(pipeline, ("azureml",), out, options or compile_options()).folder / "azureml"


def _keys(folder: Path, work: Path, upstream: Path) -> dict[str, str]:
    """Each node's reuse key, its upstream nodes standing as finished jobs whose outputs are under `upstream`."""
    runtime = AzureMLRuntime(folder / "pipeline_job.yml", work)
    keys = {}
    for name, outputs in (("gen", ["data"]), ("check", ["passed", "size", "report"]), ("publish", [])):
        keys[name] = digest(runtime.reuse_key(name))
        runtime.results[name] = NodeResult(name, "succeeded", outputs={o: upstream / name / o for o in outputs})
    return keys


def _edit(path: Path, change) -> None:
    body = yaml.safe_load(path.read_text())
    change(body)
    path.write_text(yaml.safe_dump(body, sort_keys=False))


def test_the_reuse_key_sees_what_azure_ml_compares_and_nothing_else(tmp_path):
    """R11's criteria: component (with its environment definition), code, inputs, output and run settings."""
    project = tmp_path / "toy"
    shutil.copytree(TOY, project, ignore=shutil.ignore_patterns("__pycache__"))
    (project / ".amlignore").write_text("notes.txt\n")
    pipeline = project / "pipelines" / "reuse.yaml"
    upstream = tmp_path / "first"
    first = _keys(_compiled(pipeline, tmp_path / "c1"), tmp_path / "w", upstream)

    # Compiled again elsewhere, from the same files, in a pipeline job of another name: the same keys.
    folder = _compiled(pipeline, tmp_path / "c2")
    _edit(folder / "pipeline_job.yml", lambda job: job.update(display_name="other", experiment_name="other",
                                                              description="other"))
    assert _keys(folder, tmp_path / "w", upstream) == first
    # A file the snapshot leaves out (.amlignore) is no change to the code.
    (project / "notes.txt").write_text("not uploaded")
    assert _keys(_compiled(pipeline, tmp_path / "c3"), tmp_path / "w", upstream) == first

    # An input's value changes gen; check and publish bind gen's output, whose location is the same here.
    folder = _compiled(pipeline, tmp_path / "c5")
    _edit(folder / "pipeline_job.yml", lambda job: job["inputs"].update(count=6))
    changed = _keys(folder, tmp_path / "w", upstream)
    assert changed["gen"] != first["gen"] and changed["check"] == first["check"]
    # threshold is check's input, not gen's
    folder = _compiled(pipeline, tmp_path / "c6")
    _edit(folder / "pipeline_job.yml", lambda job: job["inputs"].update(threshold=3))
    changed = _keys(folder, tmp_path / "w", upstream)
    assert changed["gen"] == first["gen"] and changed["check"] != first["check"]
    # An upstream job that ran again wrote its outputs elsewhere: the nodes binding them change.
    changed = _keys(_compiled(pipeline, tmp_path / "c7"), tmp_path / "w", tmp_path / "rerun")
    assert changed["gen"] == first["gen"]
    assert changed["check"] != first["check"] and changed["publish"] != first["publish"]

    # Run settings: an environment variable of the node.
    folder = _compiled(pipeline, tmp_path / "c8")
    _edit(folder / "pipeline_job.yml", lambda job: job["jobs"]["gen"]["environment_variables"].update(EXTRA="1"))
    assert _keys(folder, tmp_path / "w", upstream)["gen"] != first["gen"]
    # Output settings: where the output is written.
    folder = _compiled(pipeline, tmp_path / "c9")
    _edit(folder / "pipeline_job.yml", lambda job: job["jobs"]["gen"].update(
        outputs={"data": {"type": "uri_folder", "path": "azureml://datastores/workspaceblobstore/paths/x/"}}))
    assert _keys(folder, tmp_path / "w", upstream)["gen"] != first["gen"]
    # The environment definition: the image reference (another tag), every node.
    options = CompileOptions(image_registry=IMAGE_REGISTRY, image_tag="other")
    tagged = _keys(_compiled(pipeline, tmp_path / "c10", options), tmp_path / "w", upstream)
    assert all(tagged[name] != first[name] for name in first)
    # The code: a file of the snapshot, every node (they share the project's folder).
    (project / "components" / "gen" / "gen.py").write_text("# changed\n", encoding="utf-8")
    code = _keys(_compiled(pipeline, tmp_path / "c11"), tmp_path / "w", upstream)
    assert all(code[name] != first[name] for name in first)


def test_a_local_data_input_is_keyed_by_its_content_not_its_path(tmp_path):
    """azure-ai-ml uploads a local `path:` under the hash of its content: the same files bind the same data."""
    folder = _compiled(REUSE, tmp_path / "c")
    runtime = AzureMLRuntime(folder / "pipeline_job.yml", tmp_path / "w")
    for name, text in (("a", "x\n"), ("b", "x\n"), ("c", "y\n")):
        (tmp_path / "data" / name).mkdir(parents=True)
        (tmp_path / "data" / name / "lines.txt").write_text(text)

    def key(source: str):
        return runtime._input_identity({"type": "uri_folder", "path": str(tmp_path / "data" / source)}, "uri_folder")

    assert key("a") == key("b") != key("c")


def test_the_compiled_schedule_submits_the_pipeline_job_with_force_rerun(tmp_path):
    """R12: the schedule's create_job as azure-ai-ml loads it: the compiled job file, its settings overridden."""
    folder = _compiled(REUSE, tmp_path / "c")
    scheduled = scheduled_job(folder / "schedule.yml")
    assert scheduled.job_file == folder / "pipeline_job.yml"
    assert scheduled.settings["force_rerun"] is True
    assert scheduled.trigger == "0 3 * * 1 (UTC)"
    runtime = AzureMLRuntime.from_schedule(folder / "schedule.yml", tmp_path / "w")
    assert runtime.settings["force_rerun"] is True
    assert yaml.safe_load((folder / "pipeline_job.yml").read_text())["settings"]["force_rerun"] is False
    _edit(folder / "schedule.yml", lambda body: body["create_job"].update(inputs={"count": 2}))
    with pytest.raises(RuntimeRuleBroken, match=r"create_job overrides \['inputs'\]"):
        scheduled_job(folder / "schedule.yml")


def test_a_submission_cannot_share_the_job_folders_of_one_whose_outputs_may_be_reused(tmp_path):
    """Running a node empties its job folder, where (without a workspace endpoint) its outputs are."""
    folder = _compiled(REUSE, tmp_path / "c")
    work = tmp_path / "workspace" / "submission"
    ReuseRecord(work).add(FinishedJob(key="k", node="gen", job="j", status="succeeded", outputs={}, output_types={},
                                      log=str(work / "jobs" / "gen" / "log.txt")))
    with pytest.raises(RuntimeRuleBroken, match="need a work folder of their own"):
        AzureMLRuntime(folder / "pipeline_job.yml", work).run()


@pytest.mark.slow
@pytest.mark.heavy
def test_a_second_submission_reuses_deterministic_nodes_and_the_schedule_runs_them_all(image_engine, tmp_path):
    folder = _compiled(REUSE, tmp_path / "c")
    workspace = tmp_path / "workspace"

    def submission(work: str, runtime: AzureMLRuntime | None = None) -> dict[str, NodeResult]:
        runtime = runtime or AzureMLRuntime(folder / "pipeline_job.yml", workspace / work,
                                            datastores=workspace / "datastores", engine=image_engine,
                                            images=local_images(REPO))
        return runtime.run()

    first = submission("first")
    assert [first[n].status for n in first] == ["succeeded"] * 3 and not any(r.reused_from for r in first.values())

    second = submission("second")
    for name in ("gen", "check"):  # deterministic: reused, not run
        assert second[name].reused_from == str(workspace / "first" / "jobs" / name)
        assert second[name].outputs == first[name].outputs and second[name].status == "succeeded"
        assert not (workspace / "second" / "jobs" / name).exists()
    publish = second["publish"]  # is_deterministic: false: runs, on the first submission's check outputs
    assert publish.reused_from is None and publish.status == "succeeded"
    assert publish.outputs["note"].is_relative_to(workspace / "second")
    assert publish.outputs["note"].read_text() == first["publish"].outputs["note"].read_text()

    fired = AzureMLRuntime.from_schedule(folder / "schedule.yml", workspace / "scheduled",
                                         datastores=workspace / "datastores", engine=image_engine,
                                         images=local_images(REPO))
    scheduled = submission("scheduled", fired)
    for name, result in scheduled.items():  # force_rerun: every node runs again
        assert result.reused_from is None and result.status == "succeeded", name
        assert result.log.is_relative_to(workspace / "scheduled")
    assert scheduled["gen"].outputs["data"] != first["gen"].outputs["data"]

    # A force_rerun job is never reused: a later submission still reuses the first one's outputs.
    third = submission("third")
    assert third["check"].reused_from == str(workspace / "first" / "jobs" / "check")
    assert [job.node for job in ReuseRecord(workspace).jobs()] == ["gen", "check"]


@pytest.mark.slow
@pytest.mark.heavy
def test_the_conformance_run_submits_again_and_fires_the_schedule(image_engine, tmp_path, capsys):
    """`--resubmit`: after the compared run, the same job again (R11) and the schedule's job (R12), in its workspace."""
    from tools.conformance.__main__ import main

    assert main(["azureml", str(REUSE), "--resubmit", "--work", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "azureml conformance: 3/3 steps match local" in out
    assert "azureml resubmission: gen reused, check reused, publish succeeded" in out
    assert "azureml schedule fired: gen succeeded, check succeeded, publish succeeded" in out
