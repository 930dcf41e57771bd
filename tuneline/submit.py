"""Submit compiled pipelines: upload and run on Kubeflow Pipelines, or create the job on Azure ML, and create
the pipeline's schedule on either.

Run as: tuneline submit pipelines/finetune.yaml --target kfp --host https://kfp.example.com --schedule
        tuneline submit pipelines/finetune.yaml --target azureml --subscription SUB --resource-group RG \
            --workspace WS --dry-run

The plan (every client call with its exact arguments) is built first and is plain data: `--dry-run` prints it.
Only `execute_*` touch the network, through the platforms' own SDK clients.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .compile import PIPELINE_FILE, RECURRING_RUN_FILE
from .compile.azureml import JOB_FILE, SCHEDULE_FILE


@dataclass
class Call:
    method: str                 # the SDK call, e.g. "Client.create_run_from_pipeline_package"
    kwargs: dict[str, Any]


@dataclass
class KfpPlan:
    host: str
    namespace: str | None
    calls: list[Call] = field(default_factory=list)


@dataclass
class AzureMLPlan:
    subscription_id: str
    resource_group_name: str
    workspace_name: str
    calls: list[Call] = field(default_factory=list)


def kfp_plan(folder: Path, host: str, pipeline_name: str, experiment: str | None = None,
             namespace: str | None = None, arguments: dict[str, Any] | None = None, no_cache: bool = False,
             schedule: bool = False, service_account: str | None = None) -> KfpPlan:
    """`folder` is the compiled `<out>/<pipeline>/kfp/` folder."""
    package = str(folder / PIPELINE_FILE)
    experiment = experiment or pipeline_name
    plan = KfpPlan(host=host, namespace=namespace)
    plan.calls.append(Call("Client.create_run_from_pipeline_package", {
        "pipeline_file": package, "arguments": dict(arguments or {}), "run_name": None,
        "experiment_name": experiment, "namespace": namespace,
        # None leaves each step's compiled caching option in force; False turns every step's cache off.
        "enable_caching": False if no_cache else None, "service_account": service_account}))
    if schedule:
        recurring = folder / RECURRING_RUN_FILE
        if not recurring.is_file():
            raise FileNotFoundError(f"{recurring}: the pipeline has no `schedule:` to create")
        spec = json.loads(recurring.read_text())
        spec.pop("note", None)
        if no_cache:
            spec["enable_caching"] = False
        plan.calls.append(Call("Client.create_experiment", {"name": experiment, "namespace": namespace}))
        plan.calls.append(Call("Client.create_recurring_run", {
            "experiment_id": "<id of the experiment above>", "pipeline_package_path": package,
            "params": dict(arguments or {}), "service_account": service_account, **spec}))
    return plan


def azureml_plan(folder: Path, subscription_id: str, resource_group: str, workspace: str,
                 experiment: str | None = None, schedule: bool = False) -> AzureMLPlan:
    """`folder` is the compiled `<out>/<pipeline>/azureml/` folder."""
    plan = AzureMLPlan(subscription_id=subscription_id, resource_group_name=resource_group,
                       workspace_name=workspace)
    plan.calls.append(Call("MLClient.jobs.create_or_update", {"job": str(folder / JOB_FILE),
                                                              "experiment_name": experiment}))
    if schedule:
        path = folder / SCHEDULE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the pipeline has no `schedule:` to create")
        plan.calls.append(Call("MLClient.schedules.begin_create_or_update", {"schedule": str(path)}))
    return plan


def plan_json(plan: KfpPlan | AzureMLPlan) -> str:
    return json.dumps(asdict(plan), indent=2)


def execute_kfp(plan: KfpPlan) -> list[str]:  # pragma: no cover - needs a KFP API server
    import kfp

    client = kfp.Client(host=plan.host, namespace=plan.namespace)
    done = []
    experiment_id = None
    for call in plan.calls:
        kwargs = dict(call.kwargs)
        if call.method == "Client.create_run_from_pipeline_package":
            result = client.create_run_from_pipeline_package(**kwargs)
            done.append(f"run {result.run_id}")
        elif call.method == "Client.create_experiment":
            experiment_id = client.create_experiment(**kwargs).experiment_id
        elif call.method == "Client.create_recurring_run":
            kwargs["experiment_id"] = experiment_id
            done.append(f"recurring run {client.create_recurring_run(**kwargs).recurring_run_id}")
    return done


def execute_azureml(plan: AzureMLPlan) -> list[str]:  # pragma: no cover - needs an Azure ML workspace
    from azure.ai.ml import MLClient, load_job
    from azure.ai.ml.entities._load_functions import load_schedule
    from azure.identity import DefaultAzureCredential

    client = MLClient(DefaultAzureCredential(), subscription_id=plan.subscription_id,
                      resource_group_name=plan.resource_group_name, workspace_name=plan.workspace_name)
    done = []
    for call in plan.calls:
        if call.method == "MLClient.jobs.create_or_update":
            job = client.jobs.create_or_update(load_job(call.kwargs["job"]),
                                               experiment_name=call.kwargs["experiment_name"])
            done.append(f"job {job.name}")
        elif call.method == "MLClient.schedules.begin_create_or_update":
            schedule = client.schedules.begin_create_or_update(load_schedule(call.kwargs["schedule"])).result()
            done.append(f"schedule {schedule.name}")
    return done
