"""The run record (`run.json`): what ran, with which inputs, what it produced, and how it went.

Saved atomically after every state change, so an interrupted run still leaves a consistent record.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ...step.progress import StepProgress

# Step states, in the order a step moves through them.
PENDING, RUNNING, SUCCEEDED, CACHED, FAILED, SKIPPED, NOT_RUN, INTERRUPTED = (
    "pending", "running", "succeeded", "cached", "failed", "skipped", "not-run", "interrupted")
FINISHED_OK = (SUCCEEDED, CACHED, SKIPPED)


@dataclass
class Attempt:
    number: int
    started: float
    duration_s: float | None = None
    exit_code: int | None = None
    reason: str = ""


@dataclass
class StepRecord:
    name: str
    component: str
    role: str | None = None          # the component's declared role (train, register, ...)
    status: str = PENDING
    reason: str = ""
    cache_key: str | None = None
    cache: str = "miss"              # hit | miss | disabled
    command: list[str] = field(default_factory=list)
    inputs: dict[str, Any] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    started: float | None = None
    duration_s: float | None = None
    log: str | None = None
    progress: StepProgress | None = None  # the newest line the running step reported ($TUNELINE_PROGRESS)
    # `resume: true` outputs: output -> {"store": stable folder, "entries_at_start": what an earlier attempt left}
    resume: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int | None:
        return self.attempts[-1].exit_code if self.attempts else None


@dataclass
class RunRecord:
    run_id: str
    pipeline: str
    pipeline_path: str
    folder: str
    params: dict[str, Any]
    order: list[str]
    status: str = RUNNING
    started: float = field(default_factory=time.time)
    duration_s: float | None = None
    steps: dict[str, StepRecord] = field(default_factory=dict)
    lineage: list[dict[str, Any]] = field(default_factory=list)
    tuneline_version: str = ""

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name, step in self.steps.items():
            data["steps"][name]["exit_code"] = step.exit_code
        return data

    def save(self) -> None:
        path = Path(self.folder) / "run.json"
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=2, default=str))
        os.replace(tmp, path)


def load_record(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())


def list_runs(runs_dir: Path) -> list[dict[str, Any]]:
    records = []
    for path in sorted(runs_dir.glob("*/run.json")):
        try:
            records.append(load_record(path))
        except (OSError, json.JSONDecodeError):
            continue  # a record being written right now; the next listing shows it
    return sorted(records, key=lambda r: r.get("started", 0))


def find_run(runs_dir: Path, run_id: str) -> dict[str, Any] | None:
    runs = list_runs(runs_dir)
    if run_id == "latest":
        return runs[-1] if runs else None
    matches = [r for r in runs if r["run_id"].startswith(run_id)]
    return matches[0] if len(matches) == 1 else None
