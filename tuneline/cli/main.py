"""The `tuneline` command line.

Run as: tuneline validate pipelines/finetune.yaml
        tuneline run pipelines/finetune.yaml --set learning_rate=5e-4 [--dry-run]
        tuneline runs show latest --json
        tuneline logs latest train
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ..spec import SpecError, load_component, load_pipeline
from ..spec.load import parse_set_pairs
from ..targets.local.report import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_INVALID, EXIT_OK


def _project_home(home: str | None) -> Path:
    """The state folder, found as every command finds it (`tuneline.settings.state_home`)."""
    from .. import settings

    return settings.state_home(home)


def _print_problems(exc: SpecError) -> int:
    for problem in exc.problems:
        print(problem, file=sys.stderr)
    return EXIT_INVALID


# ---------------------------------------------------------------------------------------------- commands


def _validate_targets(names: Sequence[str]) -> tuple[list[tuple[str, Path]], list[str]]:
    """(kind, path) for each file to check — a folder argument stands for its pipelines and component folders —
    and the arguments that name nothing to check."""
    targets: list[tuple[str, Path]] = []
    unusable = []
    for name in names:
        path = Path(name)
        if path.name == "component.yaml" and path.is_file():
            targets.append(("component", path.parent))
        elif path.is_dir() and (path / "component.yaml").is_file():
            targets.append(("component", path))
        elif path.is_dir():
            found = [("pipeline", f) for f in sorted(path.iterdir())
                     if f.suffix in (".yaml", ".yml") and f.is_file()]
            found += [("component", f) for f in sorted(path.iterdir()) if (f / "component.yaml").is_file()]
            if not found:
                unusable.append(f"{name}: no pipeline (*.yaml) or component folder in it")
            targets.extend(found)
        elif path.is_file():
            targets.append(("pipeline", path))
        else:
            unusable.append(f"{name}: no such file or folder (relative paths start from {Path.cwd()})")
    return targets, unusable


def cmd_validate(args: argparse.Namespace) -> int:
    from .preflight import check

    targets, unusable = _validate_targets(args.files)
    for line in unusable:
        print(f"tuneline validate: {line}", file=sys.stderr)
    problems = []
    notes: list[str] = []
    for kind, path in targets:
        try:
            if kind == "component":
                load_component(path)
            else:
                found = check(load_pipeline(path, parse_set_pairs(args.set)))
                problems.extend(found.problems)
                notes.extend(found.notes)
        except SpecError as exc:
            problems.extend(exc.problems)
        except (OSError, UnicodeError) as exc:
            print(f"tuneline validate: {path}: cannot read: {exc}", file=sys.stderr)
            unusable.append(str(path))
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    if problems:
        return _print_problems(SpecError(problems))
    if unusable:
        return EXIT_INVALID
    print(f"{len(targets)} file{'s' if len(targets) != 1 else ''} valid")
    return EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    from ..graph import build_graph
    from ..ops.cost.comparison import cost_comparison
    from ..targets.local.report import exit_code, run_and_report
    from ..targets.local.runner import RunOptions, StepFailed
    from .preflight import check

    try:
        pipeline = load_pipeline(args.pipeline, parse_set_pairs(args.set))
    except SpecError as exc:
        return _print_problems(exc)
    found = check(pipeline)  # a misspelt gate or a missing file fails here, not after training
    for note in found.notes:
        print(f"note: {note}", file=sys.stderr)
    if found.problems:
        return _print_problems(SpecError(found.problems))
    home = _project_home(args.home)
    options = RunOptions(home=home, no_cache=args.no_cache, from_step=args.from_step, only_step=args.only)
    graph = build_graph(pipeline)
    if args.dry_run:
        from ..targets.local.plan import plan, render

        for flag, name in (("--from", args.from_step), ("--only", args.only)):
            if name is not None and name not in graph.nodes:
                print(f"tuneline: {flag} {name}: no such step (steps: {', '.join(graph.order)})", file=sys.stderr)
                return EXIT_INVALID
        print(render(graph, plan(graph, options), home))
        return EXIT_OK
    where = "" if args.home or os.environ.get("TUNELINE_HOME") else "  (`tuneline runs list` here lists this run)"
    print(f"state folder: {home}{where}", flush=True)
    try:
        record = run_and_report(graph, options, afterword=cost_comparison)
    except StepFailed as exc:
        print(f"tuneline: {exc}", file=sys.stderr)
        return EXIT_INVALID
    return exit_code(record)


def _no_runs(home: Path) -> str:
    if (home / "runs").is_dir():
        return f"no runs yet in {home}"
    return (f"no runs yet: {home} does not exist. Runs live in the state folder of the folder you run tuneline "
            "from ($TUNELINE_HOME, else .tuneline/ in the nearest folder above holding .tuneline/, components/ or "
            ".git); "
            "cd there, or pass --home")


def cmd_runs_list(args: argparse.Namespace) -> int:
    from ..targets.local.record import list_runs

    home = _project_home(args.home)
    runs = list_runs(home / "runs")[-args.limit:]
    if args.json:
        print(json.dumps([{k: r[k] for k in ("run_id", "pipeline", "status", "started", "duration_s")}
                          for r in runs], indent=2))
        return EXIT_OK
    if not runs:
        print(_no_runs(home))
        return EXIT_OK
    print(f"{'run id':<24} {'pipeline':<20} {'status':<12} {'started':<20} {'time':>8}  steps")
    for r in runs:
        statuses = [s["status"] for s in r["steps"].values()]
        counts = ", ".join(f"{statuses.count(s)} {s}" for s in dict.fromkeys(statuses))
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["started"]))
        duration = f"{r['duration_s']:.1f}s" if r.get("duration_s") is not None else ""
        print(f"{r['run_id']:<24} {r['pipeline']:<20} {r['status']:<12} {started:<20} {duration:>8}  {counts}")
    return EXIT_OK


def _find_run(home_flag: str | None, run_id: str) -> dict | None:
    from ..targets.local.record import find_run

    home = _project_home(home_flag)
    run = find_run(home / "runs", run_id)
    if run is None:
        print(f"tuneline: no run '{run_id}' in {home} (or the prefix is ambiguous); see `tuneline runs list`",
              file=sys.stderr)
    return run


def _reported(progress: dict, finished: bool) -> str:
    from ..step.progress import StepProgress
    from ..targets.local.progress import describe

    return describe(StepProgress(progress["current"], progress["total"], progress["unit"], progress["metrics"]),
                    finished=finished)


def cmd_runs_show(args: argparse.Namespace) -> int:
    run = _find_run(args.home, args.run_id)
    if run is None:
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
        if step.get("progress"):  # the last figures the step reported (records kept, the final loss...)
            print(f"    reported: {_reported(step['progress'], finished=step['status'] == 'succeeded')}")
        for out_name, out in step["outputs"].items():
            shown = out["path"] if "path" in out else json.dumps(out["value"])
            print(f"    {out_name} [{out['type']}] = {shown}")
    return EXIT_OK


def cmd_logs(args: argparse.Namespace) -> int:
    run = _find_run(args.home, args.run_id)
    if run is None:
        return EXIT_FAILED
    names = [args.step] if args.step else run["order"]
    if args.step and args.step not in run["steps"]:
        print(f"tuneline: run {run['run_id']} has no step '{args.step}' (steps: {', '.join(run['order'])})",
              file=sys.stderr)
        return EXIT_FAILED
    for name in names:
        step = run["steps"][name]
        log = Path(step["log"]) if step.get("log") else None
        if len(names) > 1:
            print(f"── {name} ({step['status']}) " + "─" * max(0, 50 - len(name)))
        if log is None or not log.is_file():
            why = "it came from the cache" if step["status"] == "cached" else (step["reason"] or step["status"])
            print(f"(no log: step '{name}' started no process: {why})")
            continue
        lines = log.read_text(errors="replace").splitlines()
        print("\n".join(lines[-args.tail:] if args.tail else lines))
    return EXIT_OK


def cmd_runs_rm(args: argparse.Namespace) -> int:
    import shutil

    for run_id in args.run_ids:
        run = _find_run(args.home, run_id)
        if run is None:
            return EXIT_FAILED
        shutil.rmtree(run["folder"])
        print(f"removed run {run['run_id']} ({run['folder']})")
    return EXIT_OK


def cmd_completion(args: argparse.Namespace) -> int:
    from .start import completion_script

    print(completion_script(build_parser()), end="")
    return EXIT_OK


def cmd_runs_gc(args: argparse.Namespace) -> int:
    from ..targets.local.gc import collect

    home = _project_home(args.home)
    print(collect(home, keep=args.keep, dry_run=args.dry_run).render())
    return EXIT_OK


# ---------------------------------------------------------------------------------------------- parser


def _add_home(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--home", default=None, help="state folder (default: $TUNELINE_HOME, else .tuneline/ in the "
                                                     "nearest folder at or above this one holding .tuneline/, "
                                                     "components/ or .git, else here)")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="tuneline", description="Fine-tuning pipelines for LLMs as code.")
    parser.add_argument("--version", action="version", version=f"tuneline {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    validate = sub.add_parser("validate", help="check pipelines and components before anything runs")
    validate.add_argument("files", nargs="+", help="pipeline YAML files, component.yaml files, component folders, "
                                                   "or folders of them")
    validate.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                          help="check the pipelines with this parameter (or STEP.INPUT) value (repeatable)")
    validate.set_defaults(handler=cmd_validate)

    run = sub.add_parser("run", help="run a pipeline locally, one subprocess per step")
    run.add_argument("pipeline", help="pipeline YAML file")
    run.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                     help="override a pipeline parameter, or with STEP.INPUT=VALUE one step's input, e.g. "
                          "prepare.columns=prompt=question,completion=answer (repeatable); relative paths are "
                          "relative to the current folder")
    run.add_argument("--no-cache", action="store_true", help="run every step even when a cached result exists")
    run.add_argument("--from", dest="from_step", default=None, metavar="STEP",
                     help="rerun STEP and everything downstream of it; earlier steps come from the cache")
    run.add_argument("--only", default=None, metavar="STEP",
                     help="run just STEP; its inputs must come from cached upstream results")
    run.add_argument("--dry-run", action="store_true",
                     help="print the plan (each step: cached or run, and why, and where) and run nothing")
    _add_home(run)
    run.set_defaults(handler=cmd_run)

    runs = sub.add_parser("runs", help="past local runs")
    runs_sub = runs.add_subparsers(dest="runs_command", required=True)
    runs_list = runs_sub.add_parser("list", help="list past runs, oldest first")
    runs_list.add_argument("--limit", type=int, default=20, help="show at most this many recent runs")
    runs_list.add_argument("--json", action="store_true", help="print JSON instead of a table")
    _add_home(runs_list)
    runs_list.set_defaults(handler=cmd_runs_list)
    runs_show = runs_sub.add_parser("show", help="show one run's record: steps, outputs, artifacts")
    runs_show.add_argument("run_id", nargs="?", default="latest", help="run id, a unique prefix, or 'latest'")
    runs_show.add_argument("--json", action="store_true", help="print the full run.json")
    _add_home(runs_show)
    runs_show.set_defaults(handler=cmd_runs_show)
    runs_rm = runs_sub.add_parser("rm", help="delete runs' folders (cache entries stay: see gc)")
    runs_rm.add_argument("run_ids", nargs="+", metavar="RUN", help="run id, a unique prefix, or 'latest'")
    _add_home(runs_rm)
    runs_rm.set_defaults(handler=cmd_runs_rm)
    runs_gc = runs_sub.add_parser("gc", help="keep the newest runs and the cache entries they use; delete the rest")
    runs_gc.add_argument("--keep", type=int, default=10, help="runs to keep (default: %(default)s)")
    runs_gc.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    _add_home(runs_gc)
    runs_gc.set_defaults(handler=cmd_runs_gc)

    logs = sub.add_parser("logs", help="print a run's step logs")
    logs.add_argument("run_id", nargs="?", default="latest", help="run id, a unique prefix, or 'latest'")
    logs.add_argument("step", nargs="?", default=None, help="one step (default: every step)")
    logs.add_argument("--tail", type=int, default=0, metavar="N", help="only the last N lines of each log")
    _add_home(logs)
    logs.set_defaults(handler=cmd_logs)

    completion = sub.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=("bash",), help="the shell (bash; zsh loads it with bashcompinit)")
    completion.set_defaults(handler=cmd_completion)

    for extend in _extensions():
        extend(sub)
    return parser


def _extensions():
    """Sub-commands that live beside their own code; each module imports its heavy SDKs only when run."""
    from .compile import add_commands as compile_commands
    from .ops import add_commands as ops_commands
    from .start import add_commands as start_commands

    return [start_commands, compile_commands, ops_commands]


def main(argv: Sequence[str] | None = None) -> int:
    from .errors import next_step, quiet_sdk_logs

    args = build_parser().parse_args(argv)
    quiet_sdk_logs()
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        # `tuneline run` handles Ctrl-C itself (it stops the step and records the run); anywhere else, a wait on
        # the network or a long compile, Ctrl-C just ends the command.
        print(f"tuneline {args.command}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        # A platform that cannot be reached, a missing login: one line saying what to do, not an SDK traceback.
        hint = next_step(exc, args)
        if hint is None:
            raise
        print(f"tuneline {args.command}: {hint}", file=sys.stderr)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
