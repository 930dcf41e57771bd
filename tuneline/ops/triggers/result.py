"""The outcome of one trigger and of a whole check, as typed data (printed, and logged to MLflow as JSON)."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

FIRED, OK, SKIPPED = "fired", "ok", "skipped"


@dataclass
class TriggerResult:
    name: str  # new_data | drift | quality | age | ratings
    status: str  # fired | ok | skipped (not configured, or nothing to compare yet)
    reason: str
    metrics: dict[str, float] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)

    @property
    def fired(self) -> bool:
        return self.status == FIRED


@dataclass
class Decision:
    pipeline: str
    pipeline_path: str
    results: list[TriggerResult]
    checked_at: float = field(default_factory=time.time)
    pipeline_run: dict[str, Any] | None = None  # {"run_id", "status", "exit_code"} after --run
    mlflow_run_id: str | None = None

    @property
    def retrain(self) -> bool:
        return any(r.fired for r in self.results)

    @property
    def fired(self) -> list[str]:
        return [r.name for r in self.results if r.fired]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["retrain"] = self.retrain
        data["fired"] = self.fired
        return data

    def render(self) -> str:
        head = (
            f"retrain: YES ({', '.join(self.fired)} fired)"
            if self.retrain
            else "retrain: no (no trigger fired)"
        )
        lines = [f"pipeline {self.pipeline}: {head}"]
        for r in self.results:
            lines.append(f"  [{r.status:>7}] {r.name:<9} {r.reason}")
        if self.pipeline_run:
            lines.append(f"pipeline run {self.pipeline_run['run_id']}: {self.pipeline_run['status']}")
        if self.mlflow_run_id:
            lines.append(
                f"decision recorded in MLflow run {self.mlflow_run_id} (experiment tuneline-triggers)"
            )
        return "\n".join(lines)
