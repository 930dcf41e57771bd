from pathlib import Path

import pytest
import yaml

from tuneline.graph import build_graph
from tuneline.spec import load_pipeline
from tuneline.spec.models import Images
from tuneline.targets import CompileError
from tuneline.targets.build import compile_graph
from tuneline.targets.images import check_environments, load_image_lock, resolve_images
from tuneline.targets.options import CompileOptions

DIGEST = "sha256:" + "ab" * 32


def test_command_line_wins_over_pipeline_and_digests_use_at():
    plan = resolve_images(Images(registry="acr.io/x", tag="1.0.0"), tag=DIGEST)
    assert plan.image("train-gpu") == f"acr.io/x/train-gpu@{DIGEST}"
    assert resolve_images(None).image("train-cpu") == "tuneline/train-cpu:latest"


def test_an_image_lock_pins_each_environment_by_its_own_digest(tmp_path):
    other = "sha256:" + "cd" * 32
    lock_file = tmp_path / "images.yaml"
    lock_file.write_text(f"registry: acr.io/t/\ndigests: {{train-gpu: '{DIGEST}', control: '{other}'}}\n")
    plan = resolve_images(Images(registry="docker.io/x", tag="latest"), lock=load_image_lock(lock_file))
    assert plan.image("train-gpu") == f"acr.io/t/train-gpu@{DIGEST}"
    assert plan.image("control") == f"acr.io/t/control@{other}"
    with pytest.raises(CompileError, match="pins no digest for environment 'serve'"):
        plan.image("serve")
    lock_file.write_text("registry: acr.io/t\ndigests: {train-gpu: '0.1.0'}\n")
    with pytest.raises(CompileError, match=r"images.yaml: digests.train-gpu: '0.1.0' is not a sha256"):
        load_image_lock(lock_file)


@pytest.mark.parametrize("tag", ["latest", "LATEST", "main", None])
def test_production_refuses_mutable_or_missing_tags(tag):
    with pytest.raises(CompileError, match="--production"):
        resolve_images(Images(registry="acr.io/x", tag=tag) if tag else None, registry="acr.io/x", production=True)


def test_bad_tag_is_refused():
    with pytest.raises(CompileError, match="not a valid tag"):
        resolve_images(None, tag="v1 beta")


def test_production_needs_environment_folders(tmp_path):
    (tmp_path / "environments" / "train-cpu").mkdir(parents=True)
    check_environments(tmp_path, {"train-cpu"})
    with pytest.raises(CompileError, match="train-gpu"):
        check_environments(tmp_path, {"train-cpu", "train-gpu"})


def test_production_compile_of_the_fixture_passes_with_a_version(tmp_path, compiled):
    from readback import TOY

    graph = build_graph(load_pipeline(TOY))
    out = compile_graph(graph, ("kfp",), tmp_path, CompileOptions(production=True))
    assert "registry.example.com/toy/toy-gpu:1.4.0" in (out.folder / "kfp" / "pipeline.yaml").read_text()


def test_a_step_can_run_in_another_environment_than_its_component(tmp_path):
    # evaluate's component runs in train-cpu; on a GPU profile the step names the CUDA image instead.


    root = Path(__file__).resolve().parents[3]
    graph = build_graph(load_pipeline(root / "pipelines" / "finetune-gpu.yaml"))
    assert graph.nodes["evaluate"].component.spec.environment == "train-cpu"
    assert graph.nodes["evaluate"].environment == "train-gpu" and graph.nodes["prepare"].environment == "train-cpu"
    out = compile_graph(graph, ("kfp", "azureml"), tmp_path, CompileOptions()).folder
    ir = yaml.safe_load((out / "kfp" / "pipeline.yaml").read_text().split("\n---\n")[0])
    images = {name: spec["container"]["image"] for name, spec in ir["deploymentSpec"]["executors"].items()
              if "container" in spec}
    assert images["exec-evaluate"].endswith("/train-gpu:0.1.0") and images["exec-prepare"].endswith("/train-cpu:0.1.0")
    component = yaml.safe_load((out / "azureml" / "components" / "evaluate.yml").read_text())
    assert component["environment"] == {"image": images["exec-evaluate"]}  # the same image, inline


def test_the_step_that_deploys_an_image_gets_it_from_the_same_plan_as_its_own(tmp_path):
    # deploy's component.yaml `deploys_image: serve`: the Azure ML deployment it writes runs that image, which
    # must come from the registry and tag the pipeline was compiled with, not a default on Docker Hub.
    root = Path(__file__).resolve().parents[3]
    graph = build_graph(load_pipeline(root / "pipelines" / "finetune.yaml"))
    options = CompileOptions(image_registry="acr.example.io/tuneline", image_tag="1.2.0")
    out = compile_graph(graph, ("kfp", "azureml"), tmp_path, options).folder
    ir = yaml.safe_load((out / "kfp" / "pipeline.yaml").read_text().split("\n---\n")[0])
    env = {name: {e["name"]: e["value"] for e in spec["container"].get("env", [])}
           for name, spec in ir["deploymentSpec"]["executors"].items() if "container" in spec}
    assert env["exec-deploy"]["TUNELINE_DEPLOY_IMAGE"] == "acr.example.io/tuneline/serve:1.2.0"
    assert all("TUNELINE_DEPLOY_IMAGE" not in values for name, values in env.items() if name != "exec-deploy")
    job = yaml.safe_load((out / "azureml" / "pipeline_job.yml").read_text())
    assert job["jobs"]["deploy"]["environment_variables"]["TUNELINE_DEPLOY_IMAGE"] == \
        "acr.example.io/tuneline/serve:1.2.0"
    assert "TUNELINE_DEPLOY_IMAGE" not in job["jobs"]["train"]["environment_variables"]
