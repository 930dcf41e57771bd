"""The KFP resume harness up to the container boundary: the compiled task, resolved by kfp.local's own code.

The container runs themselves (podman, the project's images) are `make conformance`: images take minutes to build.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.conformance.kfp_resume import IMAGE_REGISTRY, ResumeBroken, TaskRun, _local_runs, cpu_image
from tuneline.graph import build_graph
from tuneline.spec import load_pipeline
from tuneline.targets.build import compile_graph
from tuneline.targets.options import CompileOptions

REPO = Path(__file__).resolve().parents[2]
RESUME = REPO / "tests" / "fixtures" / "toy" / "pipelines" / "resume.yaml"


def test_a_gpu_only_image_runs_as_the_cpu_image_holding_the_same_component(tmp_path):
    assert cpu_image("localhost/tuneline/train-gpu:dev", REPO) == "localhost/tuneline/train-cpu:dev"
    assert cpu_image("localhost/tuneline/control:dev", REPO) == "localhost/tuneline/control:dev"
    assert cpu_image("localhost/tuneline/serve:dev", REPO) == "localhost/tuneline/control:dev"  # deploy
    images = tmp_path / "environments" / "images.yaml"
    images.parent.mkdir()
    images.write_text("images:\n  gpu-only: {components: [x], cpu_buildable: false}\n")
    with pytest.raises(ResumeBroken, match="no CPU-buildable image"):
        cpu_image("localhost/tuneline/gpu-only:dev", tmp_path)


def test_the_task_gets_the_pvc_path_the_compiler_set_and_its_own_scratch_per_attempt(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    graph = build_graph(load_pipeline(RESUME))
    package = compile_graph(graph, ("kfp",), tmp_path / "c", CompileOptions(image_registry=IMAGE_REGISTRY,
                                                                             image_tag="dev"))
    local = _local_runs(graph, "count", tmp_path / "local")
    assert local.steps["count"].status == "succeeded"  # the uninterrupted reference
    task = TaskRun(graph, "count", package.folder / "kfp" / "pipeline.yaml", local, tmp_path / "kfp", engine=None,
                   hosts={})
    assert task.pvc_path == "/mnt/checkpoints" and task.image == "localhost/tuneline/control:dev"
    first, env, root_1 = task._command_and_env(1)
    second, _, root_2 = task._command_and_env(2)
    assert root_1 != root_2  # a retried pod writes its outputs elsewhere: only the volume carries over
    assert env["TUNELINE_CHECKPOINT_ROOT"] == "/mnt/checkpoints" and env["TUNELINE_RUN_ID"] == "kfp-resume-run"
    # every compiled command starts behind tuneline.step.outdirs, which creates the output folders first
    assert first[:3] == ["python", "-m", "tuneline.step.outdirs"]
    first = first[first.index("--") + 1:]
    assert first[:5] == ["python", "-m", "tuneline.step.resume", "--component", "components/count"]
    data = local.steps["gen"].outputs["data"]["path"]
    assert f"data={data}" in first and f"checkpoints={root_1}/checkpoints" in first
    assert first[first.index("--") + 1:] == ["python", "components/count/count.py", data, "6", "0.25",
                                            f"{root_1}/total", f"{root_1}/checkpoints"]
    assert Path(data) in task._mounts() and task._mounts()[task.pvc] == "/mnt/checkpoints"
