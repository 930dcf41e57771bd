"""Run a pipeline graph locally and print what the user needs afterwards: step summaries, the status table,
the measured-vs-estimated training time, and the log tail of any failed step.

`tuneline run` and `tuneline trigger check --run` both call `run_and_report`, so both get the run record back
(never a timestamp scan of the runs folder) and print the same report.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from ...graph import PipelineGraph
from . import record as rec
from .progress import Progress, summary_table
from .runner import LocalRunner, RunOptions

EXIT_OK, EXIT_FAILED, EXIT_INVALID, EXIT_INTERRUPTED = 0, 1, 2, 130


def log_tail(path: str | None, lines: int = 25) -> str:
    if not path or not Path(path).is_file():
        return "(no log)"
    text = Path(path).read_bytes()[-64_000:].decode("utf-8", "replace").splitlines()
    return "\n".join("    " + line for line in text[-lines:])


def exit_code(record: rec.RunRecord) -> int:
    if record.status == rec.SUCCEEDED:
        return EXIT_OK
    return EXIT_INTERRUPTED if record.status == rec.INTERRUPTED else EXIT_FAILED


# What the command line adds after the table of a finished run (the cost comparison, tuneline.ops.cost): handed
# in, since the runner sits below operations.
Afterword = Callable[[rec.RunRecord], str | None]


def print_report(record: rec.RunRecord, out: TextIO | None = None, afterword: Afterword | None = None) -> None:
    out = out or sys.stdout
    for name in record.order:
        summary = Path(record.folder, "steps", name, "summary.md")
        if record.steps[name].status in (rec.SUCCEEDED, rec.CACHED) and summary.is_file():
            print(f"\n── {name} " + "─" * max(0, 60 - len(name)) + "\n" + summary.read_text().rstrip(), file=out)
    print("\n" + summary_table(record), file=out)
    comparison = afterword(record) if afterword else None
    if comparison:
        print("\n" + comparison, file=out)
    print(f"\nrun {record.run_id} {record.status} in {record.duration_s:.1f}s; record: "
          f"{Path(record.folder, 'run.json')}", file=out)
    for step in record.steps.values():
        if step.status in (rec.FAILED, rec.INTERRUPTED):
            # A step that failed before its process started (a missing input file) has no log to point at.
            log = f"\n  log: {step.log}\n{log_tail(step.log)}" if step.log and Path(step.log).is_file() else ""
            print(f"\nstep '{step.name}' {step.status}: {step.reason}{log}", file=sys.stderr)
            if step.log and Path(step.log).is_file():
                print(f"  (all of it: tuneline logs {record.run_id} {step.name})", file=sys.stderr)
            if step.exit_code == 2 and _names_a_program_flag(log_tail(step.log), step.name):
                print(f"  set one of its inputs with --set {step.name}.INPUT=VALUE (the program's --flag-name is "
                      f"input flag_name; `tuneline components {step.component}` lists them)", file=sys.stderr)


def _names_a_program_flag(tail: str, step: str) -> bool:
    """Whether a step's message (its usage or data error, exit 2) speaks of one of the program's own `--flags`,
    which the user passes as `--set STEP.INPUT`: then, and only then, the report says how. A message that
    already names the `--set`, or is about the data file itself (its encoding), needs no translation."""
    said = "\n".join(line for line in tail.splitlines() if not line.lstrip().startswith("--- attempt"))
    return f"--set {step}." not in said and re.search(r"(^|[\s(\[])--[a-z]", said) is not None


def run_and_report(graph: PipelineGraph, options: RunOptions, out: TextIO | None = None,
                   afterword: Afterword | None = None) -> rec.RunRecord:
    """Run `graph` with live progress on `out` (default stdout), print the report, return the record.

    Raises `tuneline.targets.local.runner.StepFailed` when the selection (--from/--only) is invalid.
    """
    out = out or sys.stdout
    progress = Progress(out)
    runner = LocalRunner(graph, options, on_change=progress)
    print(f"run {runner.record.run_id}: {graph.name} ({len(graph.order)} steps: {' -> '.join(graph.order)})",
          file=out, flush=True)
    try:
        record = runner.run()
    finally:
        progress.close()
    print_report(record, out, afterword)
    return record
