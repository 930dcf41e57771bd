"""Record a trigger decision in MLflow: experiment `tuneline-triggers`, one run per check.

Params are the thresholds, metrics every number a trigger measured (`<trigger>.<name>`), tags the outcome
(`tuneline.trigger.retrain`, `tuneline.trigger.fired`, ...) and `decision.json` is the whole decision.
"""

from __future__ import annotations

import json
import math
import tempfile
import time
from pathlib import Path

from ...spec import Pipeline
from .newdata import SubmittedBaseline
from .result import Decision

EXPERIMENT = "tuneline-triggers"


def experiment_id(client, home: Path) -> str:
    found = client.get_experiment_by_name(EXPERIMENT)
    if found is not None:
        return found.experiment_id
    location = None
    if client.tracking_uri.startswith(("sqlite:", "file:")):
        # MLflow's default would be ./mlruns wherever the check happens to run.
        folder = (home / "mlartifacts" / EXPERIMENT).absolute()
        folder.mkdir(parents=True, exist_ok=True)
        location = folder.as_uri()
    try:
        return client.create_experiment(EXPERIMENT, artifact_location=location)
    except Exception:  # noqa: BLE001 - a concurrent check created it first
        found = client.get_experiment_by_name(EXPERIMENT)
        if found is None:
            raise
        return found.experiment_id


def start(client, home: Path, pipeline: Pipeline, decision: Decision) -> str:
    """Create the run, log the decision, leave it open for `finish` (the pipeline run may follow)."""
    from mlflow.entities import Metric, Param

    triggers = pipeline.spec.triggers.model_dump(exclude_none=True) if pipeline.spec.triggers else {}
    run = client.create_run(
        experiment_id(client, home),
        run_name=f"check-{pipeline.name}",
        tags={
            "tuneline.pipeline": pipeline.name,
            "tuneline.trigger.retrain": str(decision.retrain).lower(),
            "tuneline.trigger.fired": ",".join(decision.fired) or "none",
            **{f"tuneline.trigger.{r.name}": r.status for r in decision.results},
        },
    )
    run_id = run.info.run_id
    now = int(time.time() * 1000)
    params = [Param("pipeline_path", str(pipeline.path))] + [
        Param(f"trigger.{k}", str(v)[:500]) for k, v in triggers.items()
    ]
    metrics = [
        Metric(f"{r.name}.{k}", float(v), now, 0)
        for r in decision.results
        for k, v in r.metrics.items()
        if isinstance(v, int | float) and math.isfinite(float(v))
    ]
    metrics.append(Metric("retrain", float(decision.retrain), now, 0))
    client.log_batch(run_id, metrics=metrics, params=params)
    decision.mlflow_run_id = run_id
    return run_id


def finish(client, decision: Decision) -> None:
    """Attach the pipeline run (if any) and `decision.json`, then close the MLflow run."""
    run_id = decision.mlflow_run_id
    if run_id is None:
        return
    status = "FINISHED"
    if decision.pipeline_run:
        client.set_tag(run_id, "tuneline.trigger.pipeline_run", decision.pipeline_run["run_id"])
        client.set_tag(run_id, "tuneline.trigger.pipeline_status", decision.pipeline_run["status"])
        new_data = next((r for r in decision.results if r.name == "new_data"), None)
        if new_data is not None and "sha256" in new_data.inputs:
            client.set_tag(run_id, "tuneline.trigger.dataset_sha256", new_data.inputs["sha256"])
        status = "FINISHED" if decision.pipeline_run["exit_code"] == 0 else "FAILED"
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "decision.json"
        path.write_text(json.dumps(decision.to_dict(), indent=2, default=str))
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, status=status)


# Platform run states that mean the submitted run did not consume its data: KFP's V2beta1RuntimeState and Azure ML's
# job status (https://learn.microsoft.com/azure/machine-learning/how-to-manage-jobs, "Job status"), upper-cased.
NOT_CONSUMED = frozenset({"FAILED", "CANCELED", "CANCELING", "CANCELLED", "CANCELREQUESTED", "NOTRESPONDING"})
SEARCHED = 20  # submissions looked at, newest first, for one that did not fail


def last_submission(client, pipeline_name: str, run_state=None) -> SubmittedBaseline | None:
    """The newest check of `pipeline_name` that submitted a run, with what that run read. `run_state(run_id)` is
    the platform's state of that run (None when unknown): a failed or canceled run never trained on its data, so
    it is no baseline, or a run that failed once would make every later check say "unchanged" and never retrain."""
    found = client.get_experiment_by_name(EXPERIMENT)
    if found is None:
        return None
    runs = client.search_runs(
        [found.experiment_id],
        filter_string=f"tags.`tuneline.pipeline` = '{pipeline_name}' "
                      "and tags.`tuneline.trigger.pipeline_status` = 'submitted'",
        order_by=["attribute.start_time DESC"], max_results=SEARCHED)
    for run in runs:
        tags = run.data.tags
        sha = tags.get("tuneline.trigger.dataset_sha256")
        if "new_data.records" not in run.data.metrics or not sha:
            continue
        run_id = tags.get("tuneline.trigger.pipeline_run", "?")
        state = run_state(run_id) if run_state is not None and run_id != "?" else None
        if state is not None and str(state).upper().replace("_", "") in NOT_CONSUMED:
            continue
        return SubmittedBaseline(run_id=run_id, records=int(run.data.metrics["new_data.records"]), sha256=sha)
    return None
