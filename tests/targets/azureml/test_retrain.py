"""The Azure ML retrain-check job + schedule load with azure-ai-ml's own loaders, offline."""

from __future__ import annotations

import pytest
from azure.ai.ml import load_job
from azure.ai.ml.entities._load_functions import load_schedule

from tuneline.spec import load_pipeline
from tuneline.targets.azureml.retrain import ScheduleOptions, write_schedule


def test_job_and_schedule_load_with_azure_ai_ml(project, tmp_path):
    pipeline = load_pipeline(project / "pipelines" / "grow.yaml")
    out = project / "build" / "azureml"
    job_path, schedule_path = write_schedule(pipeline, out, ScheduleOptions(compute="cpu-cluster"))
    job = load_job(job_path)
    assert job.command == "tuneline trigger check pipelines/grow.yaml --submit azureml --exit-zero"
    assert job.compute == "cpu-cluster" and job.experiment_name == "tuneline-triggers"
    assert "/" not in job_path.read_text().split("code: ")[1].split("\n")[0].lstrip("./")  # relative: ../..
    schedule = load_schedule(schedule_path)
    assert schedule.name == "grow-retrain-check"
    assert schedule.trigger.expression == "0 3 * * *" and schedule.trigger.time_zone == "UTC"
    assert schedule.create_job.command == job.command


def test_a_bad_cron_is_refused(project):
    pipeline = load_pipeline(project / "pipelines" / "grow.yaml")
    with pytest.raises(ValueError, match="cron '61 3 \\* \\* \\*'"):
        write_schedule(pipeline, project / "out", ScheduleOptions(cron="61 3 * * *"))


def test_cli_writes_both_files(project, ops_cli):
    code, out, _ = ops_cli("trigger", "azureml-schedule", "pipelines/grow.yaml", "--out", "build/az")
    assert code == 0 and "az ml schedule create --file build/az/schedule.yml" in out
    assert (project / "build" / "az" / "retrain_check_job.yml").is_file()


def test_with_data_the_check_reads_the_mounted_input_and_the_run_gets_its_uri(project, ops_cli):
    """The scheduled check judges the workspace's data, not the file in the code snapshot, and the pipeline job it
    submits reads the same URI."""
    uri = "azureml://datastores/workspaceblobstore/paths/tuneline/tickets.jsonl"
    code, out, err = ops_cli("trigger", "azureml-schedule", "pipelines/grow.yaml", "--out", "build/az", "--data", uri)
    assert code == 0, err
    job = load_job(project / "build" / "az" / "retrain_check_job.yml")
    assert job.inputs["data"].path == uri and job.inputs["data"].mode == "ro_mount"
    assert job.command == ("tuneline trigger check pipelines/grow.yaml --set dataset=${{inputs.data}} --submit "
                           f"azureml --submit-param dataset={uri} --exit-zero")
    code, _, err = ops_cli("trigger", "azureml-schedule", "pipelines/grow.yaml", "--data", "minio://b/t.jsonl")
    assert code == 2 and "give the dataset's Azure ML URI" in err


def test_the_check_job_runs_in_the_control_image_inline_with_the_computes_identity(project, ops_cli):
    """`azureml:tuneline-control@latest` needed an environment registered first, and with no identity the job's
    DefaultAzureCredential found nothing to submit the pipeline job with."""
    from azure.ai.ml.entities import ManagedIdentityConfiguration

    code, _, err = ops_cli("trigger", "azureml-schedule", "pipelines/grow.yaml", "--out", "build/az",
                           "--image-registry", "acr.example.io/tl", "--image-tag", "2.0.1")
    assert code == 0, err
    job = load_job(project / "build" / "az" / "retrain_check_job.yml")
    assert job._validate().passed, job._validate().error_messages
    assert job.environment.image == "acr.example.io/tl/control:2.0.1"
    assert isinstance(job.identity, ManagedIdentityConfiguration)
    schedule = load_schedule(project / "build" / "az" / "schedule.yml")
    assert isinstance(schedule.create_job.identity, ManagedIdentityConfiguration)
    assert schedule.create_job.environment.image == job.environment.image
    code, _, err = ops_cli("trigger", "azureml-schedule", "pipelines/grow.yaml", "--out", "build/named",
                           "--environment", "azureml:tuneline-control:0.1.0")
    assert code == 0, err
    named = load_job(project / "build" / "named" / "retrain_check_job.yml")
    assert named.environment == "tuneline-control:0.1.0"  # the loader drops the azureml: prefix
