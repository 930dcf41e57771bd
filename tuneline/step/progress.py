"""How a running step tells the runner how far it is (see docs/components.md, "Progress").

A step appends one JSON object per line to the file named by `$TUNELINE_PROGRESS`:

    {"current": 6, "total": 24, "unit": "step", "metrics": {"loss": 0.357, "tokens_per_s": 95}}

`current` and `total` count `unit`s (total may be null when unknown); `metrics` holds a few numbers worth
showing beside the bar. The local runner sets the variable for every attempt and draws the newest line; on a
cluster it is unset and `report` does nothing, so a component calls it unconditionally.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ENV = "TUNELINE_PROGRESS"
_TAIL_BYTES = 4096


def report(current: int | float, total: int | float | None, unit: str = "step", **metrics: Any) -> None:
    """Append one progress line for the runner; a no-op when `$TUNELINE_PROGRESS` is unset."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"current": current, "total": total, "unit": unit, "time": time.time(),
                       "metrics": {k: v for k, v in metrics.items() if v is not None}})
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")


@dataclass
class StepProgress:
    current: float
    total: float | None
    unit: str
    metrics: dict[str, Any] = field(default_factory=dict)
    started: float | None = None  # when the first line of this attempt arrived: the base of the rate
    first: float = 0.0            # `current` at that time

    @property
    def fraction(self) -> float | None:
        return min(1.0, self.current / self.total) if self.total else None

    def eta_seconds(self, now: float | None = None) -> float | None:
        """Seconds left at the rate seen since the first line (None until there is a rate)."""
        if not self.total or self.started is None:
            return None
        done, elapsed = self.current - self.first, (now or time.time()) - self.started
        if done <= 0 or elapsed <= 0:
            return None
        return max(0.0, (self.total - self.current) * elapsed / done)


def read_latest(path: Path, previous: StepProgress | None = None) -> StepProgress | None:
    """The newest complete line of the progress file (None when there is none yet); keeps the rate's base
    from `previous` so the ETA covers the whole attempt."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - _TAIL_BYTES))
            lines = fh.read().split(b"\n")[:-1]  # the last piece may be a line still being written
    except OSError:
        return previous
    for raw in reversed(lines):
        try:
            data = json.loads(raw)
            latest = StepProgress(float(data["current"]), None if data.get("total") is None else float(data["total"]),
                                  str(data.get("unit", "step")), dict(data.get("metrics") or {}))
        except (ValueError, KeyError, TypeError):
            continue
        if previous is not None and previous.started is not None and latest.current >= previous.first:
            latest.started, latest.first = previous.started, previous.first
        else:
            latest.started, latest.first = float(data.get("time") or time.time()), latest.current
        return latest
    return previous
