"""What the user sees while a pipeline runs: a live table on a terminal, one line per change elsewhere."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from . import record as rec

_SYMBOL = {rec.PENDING: "·", rec.RUNNING: "▶", rec.SUCCEEDED: "✔", rec.CACHED: "↺", rec.FAILED: "✘",
           rec.SKIPPED: "↷", rec.NOT_RUN: "-", rec.INTERRUPTED: "■"}


def _elapsed(step: rec.StepRecord) -> str:
    if step.duration_s is not None:
        seconds = step.duration_s
    elif step.started is not None and step.status == rec.RUNNING:
        seconds = time.time() - step.started
    else:
        return ""
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}m"


def summary_table(record: rec.RunRecord) -> str:
    rows = [("step", "status", "cache", "time", "exit", "note")]
    for name in record.order:
        step = record.steps[name]
        rows.append((name, f"{_SYMBOL.get(step.status, '?')} {step.status}", step.cache if step.cache_key else "",
                     _elapsed(step), "" if step.exit_code is None else str(step.exit_code), step.reason[:70]))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


class Progress:
    """Redraws a table in place on a TTY; otherwise prints each state change once (CI logs stay readable)."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None):
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.seen: dict[str, str] = {}
        self.drawn_lines = 0
        self.last_draw = 0.0

    def __call__(self, record: rec.RunRecord) -> None:
        if self.live:
            if time.time() - self.last_draw < 0.5 and not self._changed(record):
                return
            self.last_draw = time.time()
            text = f"run {record.run_id}  {time.time() - record.started:.0f}s\n" + summary_table(record)
            if self.drawn_lines:
                self.stream.write(f"\x1b[{self.drawn_lines}F\x1b[J")
            self.stream.write(text + "\n")
            self.drawn_lines = text.count("\n") + 1
            self.stream.flush()
            return
        for name in record.order:
            step = record.steps[name]
            if self.seen.get(name) != step.status and step.status != rec.PENDING:
                self.seen[name] = step.status
                note = f" ({step.reason})" if step.reason else ""
                self.stream.write(f"[{time.strftime('%H:%M:%S')}] {name}: {step.status}"
                                  f"{' ' + _elapsed(step) if step.status != rec.RUNNING else ''}{note}\n")
                self.stream.flush()

    def _changed(self, record: rec.RunRecord) -> bool:
        current = {n: s.status for n, s in record.steps.items()}
        changed = current != self.seen
        self.seen = current
        return changed
