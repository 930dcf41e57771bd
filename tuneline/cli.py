"""The `tuneline` command line.

Run as: tuneline validate pipelines/finetune.yaml
        tuneline run pipelines/finetune.yaml --set learning_rate=5e-4
        tuneline runs show latest --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .runner.report import EXIT_FAILED, EXIT_INVALID, EXIT_OK
from .spec import SpecError, load_component, load_pipeline
from .spec.load import parse_set_pairs


def _project_home(home: str | None) -> Path:
    from . import settings

    if home:
        return Path(home)
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / "components").is_dir() or (folder / ".tuneline").is_dir():
            return settings.home(folder)
    return settings.home(cwd)


def _print_problems(exc: SpecError) -> int:
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    return EXIT_INVALID


# ---------------------------------------------------------------------------------------------- commands


def cmd_validate(args: argparse.Namespace) -> int:
    problems = []
    for name in args.files:
        path = Path(name)
        try:
            if path.name == "component.yaml":
                load_component(path.parent)
            elif path.is_dir() and (path / "component.yaml").is_file():
                load_component(path)
            else:
                load_pipeline(path, parse_set_pairs(args.set))
        except SpecError as exc:
            problems.extend(exc.problems)
    if problems:
        return _print_problems(SpecError(problems))
    print(f"{len(args.files)} file{'s' if len(args.files) != 1 else ''} valid")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from . import settings
    from .graph import build_graph
    from .runner.local import RunOptions, StepFailed
    from .runner.report import exit_code, run_and_report

    try:
        pipeline = load_pipeline(args.pipeline, parse_set_pairs(args.set))
    except SpecError as exc:
        return _print_problems(exc)
    home = Path(args.home) if args.home else settings.home(pipeline.root)
    options = RunOptions(home=home, no_cache=args.no_cache, from_step=args.from_step, only_step=args.only)
    try:
        record = run_and_report(build_graph(pipeline), options)
    except StepFailed as exc:
        print(f"tuneline: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return exit_code(record)


def cmd_runs_list(args: argparse.Namespace) -> int:
    from .runner.record import list_runs

    runs = list_runs(_project_home(args.home) / "runs")[-args.limit:]
    if args.json:
        print(json.dumps([{k: r[k] for k in ("run_id", "pipeline", "status", "started", "duration_s")}
                          for r in runs], indent=2))
        return EXIT_OK
    if not runs:
        print("no runs yet")
        return EXIT_OK
    print(f"{'run id':<24} {'pipeline':<20} {'status':<12} {'started':<20} {'time':>8}  steps")
    for r in runs:
        statuses = [s["status"] for s in r["steps"].values()]
        counts = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["started"]))
        duration = f"{r['duration_s']:.1f}s" if r.get("duration_s") is not None else ""
        print(f"{r['run_id']:<24} {r['pipeline']:<20} {r['status']:<12} {started:<20} {duration:>8}  {counts}")
    return EXIT_OK


def cmd_runs_show(args: argparse.Namespace) -> int:
    from .runner.record import find_run

    run = find_run(_project_home(args.home) / "runs", args.run_id)
    if run is None:
        print(f"tuneline: no run '{args.run_id}' (or the prefix is ambiguous); see `tuneline runs list`",
              file=sys.stderr)
        return EXIT_FAILED
    if args.json:
        print(json.dumps(run, indent=2))
        return EXIT_OK
    print(f"run {run['run_id']}  pipeline {run['pipeline']}  status {run['status']}  "
          f"{(run.get('duration_s') or 0):.1f}s\nfolder {run['folder']}\nparams:")
    for name, value in run["params"].items():
        print(f"  {name} = {value!r}")
    for name in run["order"]:
        step = run["steps"][name]
        note = f" — {step['reason']}" if step["reason"] else ""
        print(f"step {name}: {step['status']} (cache {step['cache']}, exit {step['exit_code']}){note}")
        for out_name, out in step["outputs"].items():
            shown = out["path"] if "path" in out else json.dumps(out["value"])
            print(f"    {out_name} [{out['type']}] = {shown}")
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tuneline", description="Fine-tuning pipelines for LLMs as code.")
    sub = parser.add_subparsers(dest="command", required=True)

    validate = sub.add_parser("validate", help="check pipeline and component YAML files")
    validate.add_argument("files", nargs="+", help="pipeline YAML files, component.yaml files or component folders")
    validate.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                          help="check the pipelines with this parameter value (repeatable)")
    validate.set_defaults(handler=cmd_validate)

    run = sub.add_parser("run", help="run a pipeline locally, one subprocess per step")
    run.add_argument("pipeline", help="pipeline YAML file")
    run.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                     help="override a pipeline parameter (repeatable)")
    run.add_argument("--no-cache", action="store_true", help="run every step even when a cached result exists")
    run.add_argument("--from", dest="from_step", default=None, metavar="STEP",
                     help="rerun STEP and everything downstream of it; earlier steps come from the cache")
    run.add_argument("--only", default=None, metavar="STEP",
                     help="run just STEP; its inputs must come from cached upstream results")
    run.add_argument("--home", default=None, help="state folder (default: $TUNELINE_HOME or <project>/.tuneline)")
    run.set_defaults(handler=cmd_run)

    runs = sub.add_parser("runs", help="past local runs")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)
    runs_list = runs_sub.add_parser("list", help="list past runs, oldest first")
    runs_list.add_argument("--limit", type=int, default=20, help="show at most this many recent runs")
    runs_list.add_argument("--json", action="store_true", help="print JSON instead of a table")
    runs_list.add_argument("--home", default=None, help="state folder (default: $TUNELINE_HOME or .tuneline)")
    runs_list.set_defaults(handler=cmd_runs_list)
    runs_show = runs_sub.add_parser("show", help="show one run's record: steps, outputs, artifacts")
    runs_show.add_argument("run_id", nargs="?", default="latest", help="run id, a unique prefix, or 'latest'")
    runs_show.add_argument("--json", action="store_true", help="print the full run.json")
    runs_show.add_argument("--home", default=None, help="state folder (default: $TUNELINE_HOME or .tuneline)")
    runs_show.set_defaults(handler=cmd_runs_show)

    for extend in _extensions():
        extend(sub)
    return parser


def _extensions():
    """Sub-commands that live beside their own code; each module imports its heavy SDKs only when run."""
    from .compile.cli import add_commands as compile_commands
    from .ops_cli import add_commands as ops_commands

    return [compile_commands, ops_commands]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
