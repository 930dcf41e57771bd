import os

import pytest
import yaml
from azure.ai.ml import load_component, load_job
from azure.ai.ml.constants import TimeZone
from azure.ai.ml.entities._load_functions import load_schedule
from readback import FIXTURES, TOY

from tuneline.compile.build import compile_graph
from tuneline.compile.options import CompileOptions
from tuneline.compile.schedule import WINDOWS_TIME_ZONES
from tuneline.graph import build_graph
from tuneline.spec import load_pipeline


@pytest.mark.parametrize("stem", ["toy", "toy-multinode"])
def test_every_file_loads_and_validates_with_azure_ai_ml(compiled, stem):
    folder = compiled[stem] / "azureml"
    for path in sorted((folder / "components").glob("*.yml")):
        component = load_component(str(path))
        assert component._validate().passed, (path, component._validate().error_messages)
    job = load_job(str(folder / "pipeline_job.yml"))
    result = job._validate()
    assert result.passed, result.error_messages
    assert set(job.jobs) == {"make_data", "fit", "check", "publish", "announce", "when_check_passed"}
    schedule = load_schedule(str(folder / "schedule.yml"))
    assert schedule._validate().passed
    assert schedule.trigger.expression == yaml.safe_load((folder / "schedule.yml").read_text())["trigger"][
        "expression"]


def test_multinode_step_has_distribution_and_instance_count(compiled):
    job = load_job(str(compiled["toy-multinode"] / "azureml" / "pipeline_job.yml"))
    fit = job.jobs["fit"]
    assert fit.distribution.type == "pytorch"
    assert fit.distribution.process_count_per_instance == 4
    assert fit.resources.instance_count == 2
    assert fit.resources.shm_size == "16g"
    assert fit.compute == "gpu-spot"
    assert fit.outputs["checkpoints"].mode == "rw_mount"
    assert job.jobs["make_data"].distribution is None


def test_condition_node_tests_a_control_output(compiled):
    folder = compiled["toy"] / "azureml"
    job = load_job(str(folder / "pipeline_job.yml"))
    node = job.jobs["when_check_passed"]
    assert node.type == "if_else"
    assert node.true_block == ["${{parent.jobs.publish}}", "${{parent.jobs.announce}}"]
    check = yaml.safe_load((folder / "components" / "check.yml").read_text())
    assert check["outputs"]["passed"] == {"type": "boolean", "is_control": True}
    assert check["is_deterministic"] is False  # cache: false in the component


def test_code_paths_are_relative_and_point_at_the_project(compiled):
    folder = compiled["toy"] / "azureml"
    for path in (folder / "components").glob("*.yml"):
        code = yaml.safe_load(path.read_text())["code"]
        assert not os.path.isabs(code)
        assert os.path.samefile(path.parent / code, FIXTURES)
    job = yaml.safe_load((folder / "pipeline_job.yml").read_text())
    assert os.path.normpath(folder / job["inputs"]["dataset"]["path"]) == str(FIXTURES / "data" / "toy.jsonl")


def test_images_become_versioned_environments_and_no_cache_forces_a_rerun(tmp_path):
    graph = build_graph(load_pipeline(TOY))
    out = compile_graph(graph, ("azureml",), tmp_path, CompileOptions(no_cache=True, image_tag="2.0.1"))
    folder = out.folder / "azureml"
    assert yaml.safe_load((folder / "components" / "fit.yml").read_text())["environment"] == "azureml:toy-gpu:2.0.1"
    assert yaml.safe_load((folder / "pipeline_job.yml").read_text())["settings"]["force_rerun"] is True
    assert load_job(str(folder / "pipeline_job.yml"))._validate().passed


def test_every_mapped_time_zone_is_one_azure_ml_knows():
    known = {zone.value for zone in TimeZone}
    assert set(WINDOWS_TIME_ZONES.values()) <= known
