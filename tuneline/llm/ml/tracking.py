"""MLflow tracking through ``MlflowClient`` (no global active-run state).

The tracking store comes from ``MLFLOW_TRACKING_URI`` (the local runner sets a SQLite store under
``.tuneline/``; a cluster sets its server or Azure ML workspace). Without it, the same SQLite default is
used so a component run by hand still records its run.
"""

from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

from tuneline import settings

DEFAULT_EXPERIMENT = "tuneline"


def mlflow_missing() -> str | None:
    """None when MLflow can be imported, else a message saying so. MLflow is imported only when a run is
    opened, so a program that can work untracked (training on a bare GPU machine) asks this first."""
    try:
        import mlflow  # noqa: F401
    except ImportError as err:
        return f"MLflow is not installed ({err}); install the project's ml extra (mlflow) to track runs"
    return None


def experiment_id(mlflow_client, name: str) -> str:
    """Created once, with artifacts under TUNELINE_HOME rather than ./mlruns wherever the step runs."""
    from tuneline.llm.registry import ensure_experiment

    return ensure_experiment(mlflow_client, name)


def unservable_artifact_uri(uri: str) -> str | None:
    """Why files cannot be uploaded to `uri` here (an Azure ML `azureml://` artifact root with no repository for
    it), or None when they can."""
    if not uri.lower().startswith("azureml:"):
        return None
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    try:
        get_artifact_repository(uri)
    except MlflowException:
        return (f"artifact root {uri.split('?', 1)[0][:120]} is an Azure ML one, served only by azureml-mlflow, "
                f"which is not installed (it caps mlflow below the pinned version)")
    return None


def _flatten(params: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = str(value)[:6000]
    return out


def injected_run_id() -> str | None:
    """The run Azure ML created for this job, or None outside an Azure ML job.

    Azure ML creates a run for every job before it starts and injects its id as MLFLOW_RUN_ID (beside its own
    AZUREML_RUN_ID; tools.conformance.azureml R9); the job's page in the studio shows that run's metrics and
    parameters, and Azure ML ends it with the job's status. A run of our own in another experiment would leave the
    job page empty.
    """
    if os.environ.get("AZUREML_RUN_ID") and os.environ.get("MLFLOW_RUN_ID"):
        return os.environ["MLFLOW_RUN_ID"]
    return None


class Run:
    """One MLflow run: created fresh, or re-opened by id (a resumed training, evaluate adding metrics); in an Azure
    ML job, always the job's own run (`injected_run_id`), with the requested run id kept as a tag."""

    def __init__(self, run_id: str | None = None, experiment: str | None = None, run_name: str | None = None,
                 tags: dict[str, str] | None = None) -> None:
        self.client = settings.mlflow_client()
        all_tags = {k: v for k, v in {
            "tuneline.pipeline_run": settings.pipeline_run_id(),
            "tuneline.step": os.environ.get("TUNELINE_STEP", ""),
        }.items() if v}
        all_tags.update(tags or {})
        injected = injected_run_id()
        self.owned = injected is None  # Azure ML starts and ends the job's run; we only log into it
        if injected is not None:
            if run_id and run_id != injected:
                # Another job's run (evaluate given the train run, train resuming a preempted job's run): that
                # job has ended, and reopening its run would set it RUNNING again; it is named here instead.
                all_tags["tuneline.for_run"] = run_id
            if run_name:
                all_tags["tuneline.run_name"] = run_name
            self.run_id = injected
        elif run_id:
            self.run_id = run_id
            self.client.update_run(run_id, status="RUNNING")
        else:
            exp = experiment_id(self.client, experiment or os.environ.get("TUNELINE_EXPERIMENT", DEFAULT_EXPERIMENT))
            self.run_id = self.client.create_run(exp, run_name=run_name, tags=all_tags).info.run_id
            return
        for key, value in all_tags.items():
            self.client.set_tag(self.run_id, key, value)

    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        existing = self.client.get_run(self.run_id).data.params
        fresh = [Param(k, v) for k, v in _flatten(params).items() if k not in existing]
        for i in range(0, len(fresh), 100):
            self.client.log_batch(self.run_id, params=fresh[i: i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [Metric(k, float(v), now, step) for k, v in metrics.items()
                 if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))]
        for i in range(0, len(batch), 500):
            self.client.log_batch(self.run_id, metrics=batch[i: i + 500])

    def set_tags(self, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(self.run_id, key, str(value))

    def log_artifact(self, path: Path | str, artifact_path: str | None = None) -> None:
        """Upload a file to the run; on an Azure ML workspace without azureml-mlflow, note it instead.

        A workspace gives runs `azureml://` artifact URIs, which only azureml-mlflow's artifact repository serves
        (azureml-mlflow 1.62.0.post6, `mlflow.artifact_repository` entry point; its own run-artifact REST API and
        blob SAS uploads, not MLflow's). Every file a step logs here is also one of the step's outputs, which Azure ML
        keeps, so the run gets a tag saying where it is rather than failing the step after its work is done.
        """
        skipped = unservable_artifact_uri(self.client.get_run(self.run_id).info.artifact_uri)
        if skipped is None:
            self.client.log_artifact(self.run_id, str(path), artifact_path)
            return
        name = "/".join(p for p in (artifact_path, Path(path).name) if p)
        print(f"tracking: {name} not uploaded to the run: {skipped}; it is in the job's outputs", file=sys.stderr)
        self.client.set_tag(self.run_id, f"tuneline.artifact_not_uploaded.{name}", skipped[:500])

    def finish(self, status: str = "FINISHED") -> None:
        if self.owned:
            self.client.set_terminated(self.run_id, status=status)
