"""Submit a compiled KFP package: run it, and create its recurring run, through the KFP SDK's own client.

The plan (every client call with its exact arguments) is built first and is plain data: `tuneline submit
--dry-run` prints it. Only `execute_kfp` touches the network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import PIPELINE_FILE, RECURRING_RUN_FILE
from ..plan import Call


@dataclass
class KfpPlan:
    host: str
    namespace: str | None
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
