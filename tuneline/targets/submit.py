"""Submit compiled pipelines: upload and run on Kubeflow Pipelines, or create the job on Azure ML, and create
the pipeline's schedule on either.

Run as: tuneline submit pipelines/finetune.yaml --target kfp --host https://kfp.example.com --schedule
        tuneline submit pipelines/finetune.yaml --target azureml --subscription SUB --resource-group RG \
            --workspace WS --dry-run

The plan (every client call with its exact arguments) is built first and is plain data: `--dry-run` prints it.
Only `execute_*` touch the network, through the platforms' own SDK clients (kfp.Client, azure-ai-ml MLClient).

`submit_pipeline` is the path `tuneline trigger check --submit kfp|azureml` takes when a trigger fires: compile
the pipeline, then submit it with the run arguments that point its data at the configured store (an object-store
URI on KFP, an azureml:// URI on Azure ML), never at a file baked into the image. `compile_submission` is that
compilation alone; `tuneline cluster check` calls it with the retraining CronJob's own command line, so what is
checked is what the CronJob submits.

The check's `--set` and the run's `--submit-param` mean different places for the same parameter: `--set
dataset=/mnt/data/tickets.jsonl` is where the check reads the data, `--submit-param dataset=<store URI>` where the
run reads it. A parameter given as a run argument is therefore not also a compile-time value: on KFP it is a run
argument over the compiled default, on Azure ML (whose job file carries its inputs) it replaces the `--set` one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from . import PIPELINE_FILE, RECURRING_RUN_FILE
from .azureml.compiler import JOB_FILE, SCHEDULE_FILE
from .options import DEFAULT_KFP_PIPELINE_ROOT, CompileOptions


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


@dataclass
class SubmitSettings:
    """Where a triggered run goes: from `trigger check` flags, else the environment (see ops_cli)."""
    kfp_host: str | None = None
    kfp_namespace: str | None = None
    service_account: str | None = None
    subscription_id: str | None = None
    resource_group: str | None = None
    workspace: str | None = None
    experiment: str | None = None


@dataclass
class Submission:
    target: str
    run_id: str | None
    lines: list[str]


class SubmitError(ValueError):
    """A submission that cannot be made as configured; the message says which setting is missing."""


# What an Azure ML job input can read (https://learn.microsoft.com/azure/machine-learning/how-to-read-write-data-v2,
# "Paths"): a datastore or data asset URI, an Azure Storage URI, a public http(s) URL, or a local path the SDK
# uploads. KFP's object stores (minio://, s3://, gs://) are none of them.
AZUREML_DATA_SCHEMES = ("azureml://", "https://", "http://", "wasbs://", "wasb://", "abfss://", "abfs://", "adl://")


def data_problem(target: str, name: str, value: str,
                 kfp_pipeline_root: str = DEFAULT_KFP_PIPELINE_ROOT) -> str | None:
    """Why the platform cannot read `value` for the data parameter `name` (None when it can). On KFP this is for
    a run argument, which never passes the compiler's import check."""
    from .kfp.compiler import importer_uri_problem

    scheme = value.split("://", 1)[0] + "://" if "://" in value else ""
    if target == "kfp":
        why = importer_uri_problem(value, kfp_pipeline_root)
        return f"parameter '{name}' = {value}: KFP cannot import it: {why}" if why else None
    if target == "azureml" and scheme and not value.startswith(AZUREML_DATA_SCHEMES):
        return (f"parameter '{name}' = {value}: Azure ML cannot read a {scheme} URI (it reads "
                f"{', '.join(AZUREML_DATA_SCHEMES)} URIs, or a local path it uploads)")
    return None


def submission_options(images: str | None, mlflow_secret: str | None) -> CompileOptions:
    """The compile options of a `trigger check --submit` run (`--images FILE`, `--mlflow-secret NAME`)."""
    from .images import load_image_lock

    return CompileOptions(image_lock=load_image_lock(Path(images)) if images else None,
                          mlflow_secret=mlflow_secret or None)


def submission_values(target: str, sets: dict[str, str], run_params: dict[str, str]) -> tuple[dict[str, str],
                                                                                            dict[str, str]]:
    """(compile-time values, run arguments) of a submission: a run argument is never also compiled in."""
    if target == "kfp":
        return {k: v for k, v in sets.items() if k not in run_params}, dict(run_params)
    return {**sets, **run_params}, {}


def submitted_pipeline(pipeline_path: str | Path, target: str, sets: dict[str, str], run_params: dict[str, str]):
    """The pipeline as the submitted run sees it: compiled values and run arguments, the target's defaults."""
    from ..spec import load_pipeline

    if target not in ("kfp", "azureml"):
        raise SubmitError(f"unknown submit target {target!r} (kfp, azureml)")
    compiled_values, arguments = submission_values(target, sets, run_params)
    return load_pipeline(pipeline_path, {**compiled_values, **arguments}).for_target(target)


def compile_submission(pipeline_path: str | Path, target: str, out: Path, sets: dict[str, str],
                       run_params: dict[str, str], options: CompileOptions | None = None):
    """Compile what `submit_pipeline` submits; returns (CompileOutput, typed run arguments). Raises SpecError
    or CompileError as `tuneline compile` would, and SubmitError for data the target cannot read."""
    from .build import compile_file
    from ..spec import IOType

    compiled_values, arguments = submission_values(target, sets, run_params)
    pipeline = submitted_pipeline(pipeline_path, target, sets, run_params)
    for name, param in pipeline.spec.params.items():
        if param.type in (IOType.uri_file, IOType.uri_folder):
            if target == "kfp" and name not in arguments:
                continue  # compiled in: the compiler checks it and names the file, line and field
            why = data_problem(target, name, str(pipeline.params[name]),
                               (options or CompileOptions()).kfp_pipeline_root)
            if why:
                raise SubmitError(f"{pipeline_path}: {why}")
    typed = {name: pipeline.params[name] for name in arguments}
    options = options or CompileOptions()
    if target == "azureml":
        # A trigger fired because the data changed, but the job's dataset input is the same URI as last time, and
        # Azure ML reuses a deterministic node when its inputs (paths, not content) and settings are unchanged
        # (reference-yaml-component-command `is_deterministic`): prepare would hand back last run's splits.
        # KFP's runs are keyed by a fingerprint task on the data's digest instead.
        options = replace(options, no_cache=True)
    output = compile_file(pipeline_path, (target,), out, options, compiled_values)
    return output, typed


def submit_pipeline(pipeline_path: str | Path, target: str, out: Path, sets: dict[str, str],
                    run_params: dict[str, str], settings: SubmitSettings,
                    options: CompileOptions | None = None) -> Submission:
    """Compile `pipeline_path` for `target` into `out` and submit one run through the platform's SDK client.

    `sets` are the check's values (as `tuneline run --set`); `run_params` are the run's arguments on KFP and are
    baked in at compile time on Azure ML, whose job file carries its inputs (`submission_values`). `options`
    carry the cluster's image lock and MLflow Secret.
    """
    if target == "kfp":
        if not settings.kfp_host:
            raise SubmitError("--submit kfp needs the KFP API endpoint: --kfp-host or KF_PIPELINES_ENDPOINT")
        output, arguments = compile_submission(pipeline_path, target, out, sets, run_params, options)
        plan = kfp_plan(output.folder / "kfp", settings.kfp_host, output.pipeline, settings.experiment,
                        settings.kfp_namespace, arguments, service_account=settings.service_account)
        lines = execute_kfp(plan)
    elif target == "azureml":
        missing = [name for name, value in (("--subscription / AZURE_SUBSCRIPTION_ID", settings.subscription_id),
                                            ("--resource-group / AZURE_RESOURCE_GROUP", settings.resource_group),
                                            ("--workspace / AZUREML_WORKSPACE", settings.workspace)) if not value]
        if missing:
            raise SubmitError(f"--submit azureml needs {', '.join(missing)}")
        output, _ = compile_submission(pipeline_path, target, out, sets, run_params, options)
        plan = azureml_plan(output.folder / "azureml", str(settings.subscription_id), str(settings.resource_group),
                            str(settings.workspace), settings.experiment)
        lines = execute_azureml(plan)
    else:
        raise SubmitError(f"unknown submit target {target!r} (kfp, azureml)")
    first = lines[0].split() if lines else []
    return Submission(target=target, run_id=first[1] if len(first) == 2 else None, lines=lines)


def run_state(target: str, run_id: str, settings: SubmitSettings) -> str | None:
    """The platform's state of a submitted run (KFP: PENDING/RUNNING/SUCCEEDED/FAILED/CANCELED...; Azure ML: the
    job status), or None when it cannot be asked (no endpoint, no access, run gone): then the caller keeps the
    submission as its baseline, as it would without asking."""
    try:
        if target == "kfp" and settings.kfp_host:
            import kfp

            return str(kfp.Client(host=settings.kfp_host, namespace=settings.kfp_namespace).get_run(run_id).state)
        if target == "azureml" and settings.subscription_id and settings.resource_group and settings.workspace:
            return _azureml_job_status(run_id, settings)  # pragma: no cover - needs an Azure ML workspace
    except Exception:  # noqa: BLE001 - an unreachable or refusing API leaves the state unknown
        return None
    return None


def _azureml_job_status(name: str, settings: SubmitSettings) -> str:  # pragma: no cover - needs a workspace
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    client = MLClient(DefaultAzureCredential(), subscription_id=settings.subscription_id,
                      resource_group_name=settings.resource_group, workspace_name=settings.workspace)
    return str(client.jobs.get(name).status)


def plan_json(plan: KfpPlan | AzureMLPlan) -> str:
    return json.dumps(asdict(plan), indent=2)


def execute_kfp(plan: KfpPlan) -> list[str]:
    """Make the plan's calls with kfp.Client. Inside a cluster the client authenticates with the projected
    service-account token at KF_PIPELINES_SA_TOKEN_PATH (default /var/run/secrets/kubeflow/pipelines/token)."""
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
