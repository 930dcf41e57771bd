"""New-data trigger: records added to the dataset since the last successful run of the pipeline.

The baseline is what that run actually read: the sha256 recorded for the dataset input in its `run.json`,
and its record count from the data card a prepare-like step wrote (`data_card.json`, `input.input_records`,
matched by `input.sha256`, which prepare writes as the runner's digest of the same path). The current
count reads the dataset (a file of any type prepare reads, or a folder of them) with the same readers
(`tuneline.llm.data.sources.Dataset.count_records`), so a record is what prepare counts as one.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...llm.data.sources import Dataset, SourceError
from ...spec import IOType, Pipeline
from ...spec.models import Triggers
from ...targets.local.record import SUCCEEDED, list_runs
from .result import FIRED, OK, SKIPPED, TriggerResult

DATA_CARD = "data_card.json"


class TriggerConfigError(ValueError):
    """The pipeline and the trigger options do not fit together; the message says how to fix it."""


def dataset_param(pipeline: Pipeline, name: str | None = None) -> str:
    """The parameter holding the training data: `name`, else `dataset`, else the only uri_file parameter."""
    params = pipeline.spec.params
    if name:
        if name not in params:
            raise TriggerConfigError(
                f"{pipeline.path}: no parameter '{name}' (parameters: {', '.join(params)})"
            )
        return name
    if "dataset" in params:
        return "dataset"
    files = [p for p, spec in params.items() if spec.type == IOType.uri_file]
    if len(files) == 1:
        return files[0]
    raise TriggerConfigError(
        f"{pipeline.path}: cannot tell which parameter is the dataset "
        f"(uri_file parameters: {files or 'none'}); pass --dataset-param"
    )


def last_successful_run(runs_dir: Path, pipeline_name: str) -> dict[str, Any] | None:
    runs = [
        r for r in list_runs(runs_dir) if r.get("pipeline") == pipeline_name and r.get("status") == SUCCEEDED
    ]
    return runs[-1] if runs else None


def resolve(pipeline: Pipeline, value: str) -> Path:
    return Path(value) if os.path.isabs(value) else pipeline.root / value


def recorded_input(run: dict[str, Any], path: Path) -> tuple[str, dict[str, Any]] | None:
    """(step name, {path, sha256}) of the first step input that read `path` in `run`."""
    target = os.path.realpath(path)
    for name in run.get("order", []):
        for spec in run["steps"][name].get("inputs", {}).values():
            if "path" in spec and os.path.realpath(spec["path"]) == target:
                return name, spec
    return None


def card_records(run: dict[str, Any], sha256: str) -> int | None:
    """input_records of a data card in any step output of `run` describing the file with `sha256`."""
    for step in run["steps"].values():
        for out in step.get("outputs", {}).values():
            card = Path(out.get("path", "")) / DATA_CARD
            if not card.is_file():
                continue
            try:
                data = json.loads(card.read_text())
                if data["input"]["sha256"] == sha256:
                    return int(data["input"]["input_records"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
    return None


@dataclass(frozen=True)
class SubmittedBaseline:
    """What the last run submitted to a platform read (recorded in the tracking server by `trigger check
    --submit`): a cluster's check keeps no local run records, so this is its baseline."""

    run_id: str
    records: int
    sha256: str


def check_new_data(
    pipeline: Pipeline, triggers: Triggers, runs_dir: Path, param: str | None = None,
    submitted: SubmittedBaseline | None = None,
) -> TriggerResult:
    if triggers.new_data_fraction is None and triggers.new_data_count is None:
        return TriggerResult("new_data", SKIPPED, "not configured (new_data_fraction / new_data_count)")
    name = dataset_param(pipeline, param)
    path = resolve(pipeline, str(pipeline.params[name]))
    if not path.exists():
        raise TriggerConfigError(f"parameter '{name}': dataset not found: {path}")
    try:
        dataset = Dataset(path)
        current = dataset.count_records()
    except SourceError as exc:
        raise TriggerConfigError(f"parameter '{name}': {exc}") from None
    current_sha = dataset.digest()
    inputs: dict[str, Any] = {"param": name, "path": str(path), "sha256": current_sha, "records": current}
    run = last_successful_run(runs_dir, pipeline.name)
    if run is None and submitted is not None:
        inputs |= {"baseline_run": submitted.run_id, "baseline_sha256": submitted.sha256,
                   "baseline_source": "the tracking server's record of the submitted run"}
        if submitted.sha256 == current_sha:
            return TriggerResult("new_data", OK, f"{path.name} unchanged since submitted run {submitted.run_id} "
                                 f"({current} records)", {"records": current, "new_records": 0,
                                                          "new_fraction": 0.0}, inputs)
        return _judge(triggers, submitted.records, current, f"submitted run {submitted.run_id}", inputs)
    if run is None:
        return TriggerResult(
            "new_data",
            FIRED,
            f"no successful run of '{pipeline.name}' yet; {current} records",
            {"records": current},
            inputs,
        )
    inputs["baseline_run"] = run["run_id"]
    found = recorded_input(run, path)
    if found is None:
        return TriggerResult(
            "new_data",
            FIRED,
            f"last successful run {run['run_id']} did not read {path.name}",
            {"records": current},
            inputs,
        )
    step, recorded = found
    inputs["baseline_sha256"] = recorded["sha256"]
    if recorded["sha256"] == current_sha:
        return TriggerResult(
            "new_data",
            OK,
            f"{path.name} unchanged since run {run['run_id']} ({current} records)",
            {"records": current, "new_records": 0, "new_fraction": 0.0},
            inputs,
        )
    baseline = card_records(run, recorded["sha256"])
    inputs["baseline_source"] = f"{DATA_CARD} of run {run['run_id']}"
    if baseline is None:
        return TriggerResult(
            "new_data",
            FIRED,
            f"{path.name} changed since run {run['run_id']} (step '{step}') and that run left no "
            f"{DATA_CARD} to count its records: assuming new data",
            {"records": current},
            inputs,
        )
    return _judge(triggers, baseline, current, f"run {run['run_id']}", inputs)


def _judge(triggers: Triggers, baseline: int, current: int, since: str, inputs: dict[str, Any]) -> TriggerResult:
    new = max(current - baseline, 0)
    fraction = new / baseline if baseline else float("inf") if new else 0.0
    metrics = {"records": current, "baseline_records": baseline, "new_records": new, "new_fraction": fraction}
    limits = []
    if triggers.new_data_count is not None:
        limits.append(
            (new >= triggers.new_data_count, f"{new} new records (threshold {triggers.new_data_count})")
        )
    if triggers.new_data_fraction is not None:
        limits.append(
            (
                fraction >= triggers.new_data_fraction,
                f"{fraction:.1%} new (threshold {triggers.new_data_fraction:.0%})",
            )
        )
    fired = any(hit for hit, _ in limits)
    detail = "; ".join(text for _, text in limits)
    reason = f"{baseline} -> {current} records since {since}: {detail}"
    return TriggerResult("new_data", FIRED if fired else OK, reason, metrics, inputs)
