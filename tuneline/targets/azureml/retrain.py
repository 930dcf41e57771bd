"""An Azure ML command job + schedule that runs `tuneline trigger check PIPELINE --submit azureml` on a cron:
the check runs in a small command job and, when a trigger fires, submits the pipeline job to the same workspace
(the job's AZUREML_ARM_* variables name it) rather than training inside the check's job.

Run as: tuneline trigger azureml-schedule pipelines/finetune.yaml --out build/azureml/retrain-check \
            --data azureml://datastores/workspaceblobstore/paths/tuneline/tickets.jsonl
        az ml schedule create --file build/azureml/retrain-check/schedule.yml

With `--data URI` the check reads the workspace's data (a read-only mounted job input) and the submitted pipeline
job gets the same URI as its dataset; without it both use the pipeline's own default, which for the demo is the
sample in the code snapshot.

The job runs in the control image, inline (`environment: {image: <registry>/control:<tag>}`, the pipeline's
`images:` as `tuneline compile` resolves them), so nothing has to be registered first. It submits with
`DefaultAzureCredential`, which inside a job finds only the compute's managed identity, so the job runs with
`identity: {type: managed}`: give the cluster a system-assigned identity with the AzureML Data Scientist role on
the workspace (docs/azureml.md, "Retraining on a schedule"). Without an identity a job has only the AML token,
which azure-ai-ml's clients cannot use.

Both files load with azure-ai-ml's `load_job` / `load_schedule`. The schedule refers to the job file
(`create_job: ./retrain_check_job.yml`) because a dumped JobSchedule does not load back.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import yaml

from ...settings import TELEMETRY_OFF
from ...spec import Pipeline
from ...spec.cron import check_cron

JOB_FILE = "retrain_check_job.yml"
SCHEDULE_FILE = "schedule.yml"
DEFAULT_CRON = "0 3 * * *"
CONTROL_ENVIRONMENT = "control"  # environments/control: tuneline and the platform SDKs


@dataclass(frozen=True)
class ScheduleOptions:
    compute: str = "cpu-cluster"
    environment: str | None = None  # default: the control image inline; or azureml:<name>@latest / :<version>
    registry: str | None = None  # image registry / tag over the pipeline's `images:` (as `tuneline compile`)
    tag: str | None = None
    cron: str | None = None  # default: the pipeline's schedule, else DEFAULT_CRON
    timezone: str | None = None  # default: the pipeline's, else UTC
    code: str | None = None  # project root relative to the output folder; default computed
    data: str | None = None  # the dataset's Azure ML URI (azureml://datastores/<store>/paths/<path>, a data asset)
    dataset_param: str | None = None  # default: the pipeline's triggers.dataset_param, else `dataset`
    experiment: str = "tuneline-triggers"


def check_command(pipeline_rel: str, param: str | None = None, data: str | None = None) -> str:
    """The container command: the same one the Kubernetes CronJob and `make retrain-check` run. With `data`, the
    check reads the mounted job input and the run gets the URI (`--set` is the check's, `--submit-param` the
    run's: tuneline.targets.submit.submission_values)."""
    if data is None:
        return f"tuneline trigger check {pipeline_rel} --submit azureml --exit-zero"
    return (f"tuneline trigger check {pipeline_rel} --set {param}=${{{{inputs.data}}}} --submit azureml "
            f"--submit-param {param}={data} --exit-zero")


def control_environment(pipeline: Pipeline, options: ScheduleOptions) -> dict[str, str]:
    """The control image inline, named as the compiled pipeline names its steps' images."""
    from ..options import CompileOptions
    from .compiler import component_environment

    compile_options = CompileOptions(image_registry=options.registry, image_tag=options.tag)
    return component_environment(compile_options.for_pipeline(pipeline.spec.images), CONTROL_ENVIRONMENT)


def render(pipeline: Pipeline, out: Path, options: ScheduleOptions) -> tuple[dict, dict]:
    cron = options.cron or (pipeline.spec.schedule.cron if pipeline.spec.schedule else DEFAULT_CRON)
    try:
        check_cron(cron)
    except ValueError as exc:
        raise ValueError(f"cron '{cron}': {exc}") from None
    timezone = options.timezone or (pipeline.spec.schedule.timezone if pipeline.spec.schedule else "UTC")
    pipeline_rel = Path(os.path.relpath(pipeline.path.resolve(), pipeline.root.resolve())).as_posix()
    code = options.code or Path(os.path.relpath(pipeline.root.resolve(), out.resolve())).as_posix()
    name = f"{pipeline.name}-retrain-check"
    param = options.dataset_param or (pipeline.spec.triggers.dataset_param if pipeline.spec.triggers else None) \
        or "dataset"
    if options.data is not None and not options.data.startswith("azureml:"):
        raise ValueError(f"--data {options.data}: give the dataset's Azure ML URI (azureml://datastores/<store>/"
                         f"paths/<path>, or azureml:<asset>:<version>), which the job mounts and the run reads")
    job = {
        "$schema": "https://azuremlschemas.azureedge.net/latest/commandJob.schema.json",
        "type": "command",
        "display_name": name,
        "experiment_name": options.experiment,
        "description": f"Evaluate the retraining triggers of {pipeline.name}; run it when one fires.",
        "code": code,
        "command": check_command(pipeline_rel, param, options.data),
        "environment": options.environment or control_environment(pipeline, options),
        "compute": options.compute
        if options.compute.startswith("azureml:")
        else f"azureml:{options.compute}",
        "environment_variables": dict(TELEMETRY_OFF),
        "identity": {"type": "managed"},
    }
    if options.data is not None:
        job["inputs"] = {"data": {"type": "uri_file", "path": options.data, "mode": "ro_mount"}}
    schedule = {
        "$schema": "https://azuremlschemas.azureedge.net/latest/schedule.schema.json",
        "name": name,
        "display_name": f"{pipeline.name} retrain check",
        "description": job["description"],
        "trigger": {"type": "cron", "expression": cron, "time_zone": timezone},
        "create_job": f"./{JOB_FILE}",
    }
    return job, schedule


def write_schedule(
    pipeline: Pipeline, out: Path, options: ScheduleOptions | None = None
) -> tuple[Path, Path]:
    """Write the job and schedule YAML into `out`; returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    job, schedule = render(pipeline, out, options or ScheduleOptions())
    job_path, schedule_path = out / JOB_FILE, out / SCHEDULE_FILE
    header = f"# Generated by: tuneline trigger azureml-schedule {pipeline.path.name}\n"
    job_path.write_text(header + yaml.safe_dump(job, sort_keys=False))
    schedule_path.write_text(
        header
        + f"# Create with: az ml schedule create --file {SCHEDULE_FILE}\n"
        + yaml.safe_dump(schedule, sort_keys=False)
    )
    return job_path, schedule_path
