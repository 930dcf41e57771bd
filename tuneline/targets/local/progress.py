"""What the user sees while a pipeline runs.

On a terminal: a live table of the steps (rich), with a bar, the step's own figures (loss, tokens/s) and an
ETA under the step that is running, from what the step reports through `$TUNELINE_PROGRESS`
(`tuneline.step.progress`). Elsewhere (CI logs, a file): one line per status change, and a line with
the running step's progress every `TUNELINE_PROGRESS_EVERY` seconds (default 30), so a long step is never
silent. rich comes with every environment of the project (mlflow and kfp need it); without it the table is
redrawn with plain ANSI codes instead.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from ...step.progress import StepProgress
from . import record as rec

_SYMBOL = {rec.PENDING: "·", rec.RUNNING: "▶", rec.SUCCEEDED: "✔", rec.CACHED: "↺", rec.FAILED: "✘",
           rec.SKIPPED: "↷", rec.NOT_RUN: "-", rec.INTERRUPTED: "■"}
DEFAULT_EVERY_S = 30.0


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    return f"{seconds / 60:.1f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


def _elapsed(step: rec.StepRecord) -> str:
    if step.duration_s is not None:
        return _duration(step.duration_s)
    if step.started is not None and step.status == rec.RUNNING:
        return _duration(time.time() - step.started)
    return ""


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def describe(progress: StepProgress, finished: bool = False) -> str:
    """`step 6/24 (25%)  loss 0.357  tokens_per_s 95  ETA 1.2m`; once finished, the figures without the ETA."""
    count = f"{progress.unit} {progress.current:g}" + (f"/{progress.total:g}" if progress.total else "")
    if progress.fraction is not None and not finished:
        count += f" ({progress.fraction:.0%})"
    parts = [count] + [f"{k} {_number(v)}" for k, v in progress.metrics.items()]
    eta = None if finished else progress.eta_seconds()
    if eta is not None:
        parts.append(f"ETA {_duration(eta)}")
    return "  ".join(parts)


def _note(step: rec.StepRecord) -> str:
    """Why a step is in its state; for one that succeeded, the last figures it reported (records kept and
    quarantined, the final loss), so the table keeps them after the live view is gone."""
    if step.reason or step.status != rec.SUCCEEDED or step.progress is None:
        return step.reason[:70]
    return describe(step.progress, finished=True)[:70]


def summary_table(record: rec.RunRecord) -> str:
    rows = [("step", "status", "cache", "time", "exit", "note")]
    for name in record.order:
        step = record.steps[name]
        rows.append((name, f"{_SYMBOL.get(step.status, '?')} {step.status}", step.cache if step.cache_key else "",
                     _elapsed(step), "" if step.exit_code is None else str(step.exit_code), _note(step)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _rich_view(record: rec.RunRecord):
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("step", "status", "cache", "time", "exit", "note"):
        table.add_column(column, no_wrap=column != "note")
    bars = Table.grid(padding=(0, 1))
    for name in record.order:
        step = record.steps[name]
        table.add_row(name, f"{_SYMBOL.get(step.status, '?')} {step.status}", step.cache if step.cache_key else "",
                      _elapsed(step), "" if step.exit_code is None else str(step.exit_code), _note(step))
        if step.status == rec.RUNNING and step.progress is not None:
            progress = step.progress
            bars.add_row(Text(name, style="bold"),
                         ProgressBar(total=progress.total or None, completed=progress.current, width=30),
                         Text(describe(progress)))
    header = Text(f"run {record.run_id}  {time.time() - record.started:.0f}s", style="bold")
    return Group(header, table, bars) if bars.row_count else Group(header, table)


class Progress:
    """The run's progress display; call it with the record on every change, and `close()` at the end."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None, every_s: float | None = None):
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.every_s = every_s if every_s is not None else float(
            os.environ.get("TUNELINE_PROGRESS_EVERY") or DEFAULT_EVERY_S)
        self.seen: dict[str, str] = {}
        self.reported: dict[str, float] = {}
        self.drawn_lines = 0
        self.last_draw = 0.0
        self._rich: Any = None

    def __call__(self, record: rec.RunRecord) -> None:
        if not self.live:
            self._lines(record)
        elif self._start_rich():
            self._rich.update(_rich_view(record))
        else:
            self._redraw(record)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None

    def _start_rich(self) -> bool:
        if self._rich is None:
            try:
                from rich.console import Console
                from rich.live import Live
            except ImportError:
                return False
            self._rich = Live(console=Console(file=self.stream), refresh_per_second=4, transient=False)
            self._rich.start()
        return True

    def _redraw(self, record: rec.RunRecord) -> None:
        if time.time() - self.last_draw < 0.5:
            return
        self.last_draw = time.time()
        running = [f"  {s.name}: {describe(s.progress)}" for s in record.steps.values()
                   if s.status == rec.RUNNING and s.progress is not None]
        text = "\n".join([f"run {record.run_id}  {time.time() - record.started:.0f}s", summary_table(record),
                          *running])
        if self.drawn_lines:
            self.stream.write(f"\x1b[{self.drawn_lines}F\x1b[J")
        self.stream.write(text + "\n")
        self.drawn_lines = text.count("\n") + 1
        self.stream.flush()

    def _lines(self, record: rec.RunRecord) -> None:
        now = time.time()
        for name in record.order:
            step = record.steps[name]
            if self.seen.get(name) != step.status and step.status != rec.PENDING:
                self.seen[name] = step.status
                self.reported[name] = now
                note = f" ({step.reason})" if step.reason else ""
                self._write(f"{name}: {step.status}{' ' + _elapsed(step) if step.status != rec.RUNNING else ''}"
                            f"{note}")
            elif step.status == rec.RUNNING and now - self.reported.get(name, now) >= self.every_s:
                self.reported[name] = now
                shown = describe(step.progress) if step.progress is not None else "no progress reported"
                self._write(f"{name}: running {_elapsed(step)}  {shown}")

    def _write(self, text: str) -> None:
        self.stream.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
        self.stream.flush()
