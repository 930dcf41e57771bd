"""Submit a compiled Azure ML pipeline job: ensure its compute clusters, create the job (and watch and resubmit it
when a low-priority node was preempted) and its schedule, through azure-ai-ml's MLClient.

The plan (every client call with its exact arguments) is built first and is plain data: `tuneline submit
--dry-run` prints it. Only `execute_azureml` and what it calls touch the network.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..base import SubmitSettings
from ..plan import Call
from ..submit import SubmitError
from .compiler import JOB_FILE, SCHEDULE_FILE

# What an Azure ML job input can read (https://learn.microsoft.com/azure/machine-learning/how-to-read-write-data-v2,
# "Paths"): a datastore or data asset URI, an Azure Storage URI, a public http(s) URL, or a local path the SDK
# uploads. KFP's object stores (minio://, s3://, gs://) are none of them.
AZUREML_DATA_SCHEMES = ("azureml://", "https://", "http://", "wasbs://", "wasb://", "abfss://", "abfs://", "adl://")


@dataclass
class AzureMLPlan:
    subscription_id: str
    resource_group_name: str
    workspace_name: str
    calls: list[Call] = field(default_factory=list)


# Job states after which nothing more happens (azure-ai-ml JobStatus: Completed, Failed, Canceled, NotResponding).
TERMINAL_STATES = ("Completed", "Failed", "Canceled", "NotResponding")
WATCH_POLL_SECONDS = 60


def low_priority_nodes(folder: Path) -> list[str]:
    """The job's nodes that run on a cluster this compilation writes with `tier: low_priority`."""
    import yaml

    tiers = {}
    for path in (folder / "compute").glob("*.yml"):
        body = yaml.safe_load(path.read_text())
        tiers[body["name"]] = body.get("tier")
    job = yaml.safe_load((folder / JOB_FILE).read_text())
    return sorted(node for node, body in job["jobs"].items()
                  if tiers.get(str(body.get("compute", "")).removeprefix("azureml:")) == "low_priority")


def resubmission(status: str, failed_nodes: set[str], low_priority: set[str], resubmitted: int,
                 limit: int) -> str:
    """What to do with a watched job in `status`: "wait", "done", "resubmit" or "give up".

    Azure ML does not restart a job whose low-priority node was preempted: the node, and with it the pipeline job,
    fails (azure-ai-docs how-to-create-attach-compute-cluster.md, "Use low-priority VMs"). A node's failure does not
    say whether a preemption caused it, so a failure of a node on a low-priority cluster is taken for one, at most
    `limit` times; a failure elsewhere is not retried. The new job mounts the same checkpoint folder (the
    `resume: true` outputs' fixed datastore path) and reuses the nodes that completed.
    """
    if status not in TERMINAL_STATES:
        return "wait"
    if status != "Failed":
        return "done"
    if resubmitted < limit and failed_nodes and failed_nodes <= low_priority:
        return "resubmit"
    return "give up"


def azureml_plan(folder: Path, subscription_id: str, resource_group: str, workspace: str,
                 experiment: str | None = None, schedule: bool = False,
                 resubmit_preempted: int = 0) -> AzureMLPlan:
    """`folder` is the compiled `<out>/<pipeline>/azureml/` folder."""
    plan = AzureMLPlan(subscription_id=subscription_id, resource_group_name=resource_group,
                       workspace_name=workspace)
    # The clusters the job's profiles describe, first: a spot profile's is low priority, and a cluster that exists
    # under that name as dedicated would run it at full price and never preempt it (tier cannot be changed).
    for path in sorted((folder / "compute").glob("*.yml")):
        plan.calls.append(Call("MLClient.compute.ensure", {"compute": str(path)}))
    plan.calls.append(Call("MLClient.jobs.create_or_update", {"job": str(folder / JOB_FILE),
                                                              "experiment_name": experiment}))
    if resubmit_preempted > 0:
        plan.calls.append(Call("MLClient.jobs.watch", {
            "job": str(folder / JOB_FILE), "experiment_name": experiment, "resubmit": resubmit_preempted,
            "low_priority_nodes": low_priority_nodes(folder), "poll_seconds": WATCH_POLL_SECONDS}))
    if schedule:
        path = folder / SCHEDULE_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path}: the pipeline has no `schedule:` to create")
        plan.calls.append(Call("MLClient.schedules.begin_create_or_update", {"schedule": str(path)}))
    return plan


def ensure_compute(client, path: str) -> str:  # pragma: no cover - needs an Azure ML workspace
    """Create the cluster `path` describes unless it exists; refuse one that exists with another tier."""
    from azure.ai.ml.entities._load_functions import load_compute
    from azure.core.exceptions import ResourceNotFoundError

    wanted = load_compute(path)
    try:
        found = client.compute.get(wanted.name)
    except ResourceNotFoundError:
        client.compute.begin_create_or_update(wanted).result()
        return f"compute {wanted.name} created ({wanted.tier})"
    if (getattr(found, "tier", None) or "dedicated") != (wanted.tier or "dedicated"):
        raise SubmitError(f"compute {wanted.name} exists as {found.tier}, but {path} asks for {wanted.tier}: a "
                          f"cluster's tier cannot change; delete it or name another cluster in the profile")
    return f"compute {wanted.name} exists ({found.tier})"


def execute_azureml(plan: AzureMLPlan) -> list[str]:  # pragma: no cover - needs an Azure ML workspace
    from azure.ai.ml import MLClient, load_job
    from azure.ai.ml.entities._load_functions import load_schedule
    from azure.identity import DefaultAzureCredential

    client = MLClient(DefaultAzureCredential(), subscription_id=plan.subscription_id,
                      resource_group_name=plan.resource_group_name, workspace_name=plan.workspace_name)
    done = []
    job = None
    for call in plan.calls:
        if call.method == "MLClient.compute.ensure":
            done.append(ensure_compute(client, call.kwargs["compute"]))
        elif call.method == "MLClient.jobs.create_or_update":
            job = client.jobs.create_or_update(load_job(call.kwargs["job"]),
                                               experiment_name=call.kwargs["experiment_name"])
            done.append(f"job {job.name}")
        elif call.method == "MLClient.jobs.watch" and job is not None:
            done += watch_and_resubmit(client, job.name, call.kwargs)
        elif call.method == "MLClient.schedules.begin_create_or_update":
            schedule = client.schedules.begin_create_or_update(load_schedule(call.kwargs["schedule"])).result()
            done.append(f"schedule {schedule.name}")
    return done


def watch_and_resubmit(client, name: str, watch: dict[str, Any]) -> list[str]:  # pragma: no cover - a workspace
    """Poll job `name` until it ends; submit the job file again while `resubmission` says so."""
    import time

    from azure.ai.ml import load_job

    lines, resubmitted = [], 0
    while True:
        status = str(client.jobs.get(name).status)
        failed = set()
        if status == "Failed":
            # A pipeline's child jobs are named by the service; their display name is the node's name.
            failed = {child.display_name for child in client.jobs.list(parent_job_name=name)
                      if str(child.status) == "Failed"}
        action = resubmission(status, failed, set(watch["low_priority_nodes"]), resubmitted, watch["resubmit"])
        if action == "wait":
            time.sleep(watch["poll_seconds"])
            continue
        if action != "resubmit":
            lines.append(f"job {name} {status}" + (f" (failed: {', '.join(sorted(failed))})" if failed else ""))
            return lines
        resubmitted += 1
        name = client.jobs.create_or_update(load_job(watch["job"]), experiment_name=watch["experiment_name"]).name
        lines.append(f"job {name} (resubmitted after {', '.join(sorted(failed))} failed on low priority, "
                     f"{resubmitted} of {watch['resubmit']})")


def azureml_job_status(name: str, settings: SubmitSettings) -> str:  # pragma: no cover - needs a workspace
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    client = MLClient(DefaultAzureCredential(), subscription_id=settings.get("subscription"),
                      resource_group_name=settings.get("resource_group"), workspace_name=settings.get("workspace"))
    return str(client.jobs.get(name).status)
