"""`tuneline compile` and `tuneline submit`.

Run as: tuneline compile pipelines/finetune.yaml --target all --out build/
        tuneline cluster check pipelines/*.yaml
        tuneline submit pipelines/finetune.yaml --target kfp --host https://kfp.example.com --dry-run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..spec import SpecError
from ..spec.load import parse_set_pairs
from ..targets import CompileError
from ..targets.build import TARGETS, compile_file
from ..targets.options import CompileOptions

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def _options(args: argparse.Namespace) -> CompileOptions:
    from ..targets.images import load_image_lock
    from ..targets.submit import platform_options_from_args, submit_targets

    return CompileOptions(image_registry=args.image_registry, image_tag=args.image_tag, production=args.production,
                          image_lock=load_image_lock(Path(args.images)) if args.images else None,
                          no_cache=args.no_cache, platform=platform_options_from_args(submit_targets(), args))


def _compile(args: argparse.Namespace, pipeline: str, targets: tuple[str, ...]):
    try:
        return compile_file(pipeline, targets, Path(args.out), _options(args), parse_set_pairs(args.set))
    except SpecError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
    except CompileError as exc:
        print(f"{pipeline}: cannot compile: {exc}", file=sys.stderr)
    return None


def cmd_compile(args: argparse.Namespace) -> int:
    targets = TARGETS if args.target == "all" else (args.target,)
    status = EXIT_OK
    for pipeline in args.pipelines:
        output = _compile(args, pipeline, targets)
        if output is None:
            status = EXIT_INVALID
            continue
        for warning in output.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(f"{pipeline}: {len(output.files)} files in {output.folder}/ ({', '.join(targets)})")
        if args.verbose:
            for path in output.files:
                print(f"  {path}")
    return status


def cmd_submit(args: argparse.Namespace) -> int:
    import os

    from ..targets import submit

    given = parse_set_pairs(args.param)
    # A run argument is a pipeline parameter; a step's input is a constant of the compiled pipeline (KFP's
    # run arguments are the pipeline's inputs only), so `--param STEP.INPUT=...` is compiled in, as --set does.
    step_inputs = [f"{name}={value}" for name, value in given.items() if "." in name]
    if step_inputs:
        given = {name: value for name, value in given.items() if "." not in name}
        print(f"tuneline: {', '.join(pair.partition('=')[0] for pair in step_inputs)}: a step's input, compiled "
              "into the pipeline as --set does (run arguments are pipeline parameters)", file=sys.stderr)
    # The target says which values its run takes as arguments and which it carries compiled in.
    compiled_in, run_params = submit.submission_values(args.target, parse_set_pairs([*args.set, *step_inputs]), given)
    args.set = [f"{name}={value}" for name, value in compiled_in.items()]
    output = _compile(args, args.pipeline, (args.target,))
    if output is None:
        return EXIT_INVALID
    from ..spec import load_pipeline

    try:  # typed and checked like --set, so KFP receives numbers as numbers
        typed = load_pipeline(args.pipeline, run_params).for_target(args.target).params  # local-only is refused
    except SpecError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    settings = submit.settings_from_args(args.target, args, os.environ)
    try:
        lines = submit.submit_compiled(args.target, output.folder / args.target, output.pipeline,
                                       {name: typed[name] for name in run_params}, settings, schedule=args.schedule,
                                       dry_run=args.dry_run, no_cache=args.no_cache)
    except submit.SubmitError as exc:
        print(f"tuneline: {exc}", file=sys.stderr)
        return EXIT_INVALID
    for line in lines:
        print(line)
    return EXIT_OK


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="build", help="output folder; files go to OUT/<pipeline>/<target>/")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="override a pipeline parameter's compiled default (repeatable)")
    parser.add_argument("--no-cache", action="store_true",
                        help="turn caching off for every step (KFP caching options, Azure ML force_rerun)")
    parser.add_argument("--production", action="store_true",
                        help="refuse mutable image tags (latest, ...), a missing tag or a missing environment")
    parser.add_argument("--image-registry", default=None,
                        help="registry prefix of every image (default: the pipeline's images.registry)")
    parser.add_argument("--image-tag", default=None,
                        help="tag or sha256 digest of every image (default: the pipeline's images.tag)")
    parser.add_argument("--images", default=None, metavar="FILE",
                        help="image lock: `registry:` and a sha256 digest per environment (wins over both above)")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    from ..targets.submit import add_setting_flags, submit_targets

    compile_ = subparsers.add_parser("compile", help="compile pipelines to Kubeflow Pipelines and/or Azure ML")
    compile_.add_argument("pipelines", nargs="+", help="pipeline YAML files")
    compile_.add_argument("--target", choices=(*TARGETS, "all"), default="all", help="platform(s)")
    compile_.add_argument("-v", "--verbose", action="store_true", help="list every file written")
    _common(compile_)
    add_setting_flags(compile_, submit_targets(), compile_only=True)
    compile_.set_defaults(handler=cmd_compile)

    targets = submit_targets()
    submit_ = subparsers.add_parser("submit", help="compile, then run (and schedule) on a target's platform")
    submit_.add_argument("pipeline", help="pipeline YAML file")
    submit_.add_argument("--target", choices=targets, required=True, help="platform")
    submit_.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                         help="a run argument (repeatable); the compiled default otherwise. A target whose job file "
                              "carries its inputs (Azure ML) compiles it in. STEP.INPUT=VALUE sets one step's "
                              "input, compiled into the pipeline as with --set")
    submit_.add_argument("--experiment", default=None, help="experiment name (default: the pipeline name)")
    submit_.add_argument("--schedule", action="store_true", help="also create the pipeline's schedule")
    submit_.add_argument("--dry-run", action="store_true", help="print the client calls as JSON; call nothing")
    add_setting_flags(submit_, targets, prefix="{target}: ")
    _common(submit_)
    submit_.set_defaults(handler=cmd_submit)

    from .cluster import add_arguments

    cluster = subparsers.add_parser("cluster", help="check compiled pipelines against the cluster k8s/ provisions")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True)
    check = cluster_sub.add_parser("check", help="exit 2 with pipeline:step: message when a step cannot run there")
    add_arguments(check)
    check.set_defaults(handler=cmd_cluster_check)


def cmd_cluster_check(args: argparse.Namespace) -> int:
    from .cluster import run

    return run(args)


def main(argv: list[str] | None = None) -> int:
    """Entry point before `tuneline.cli.main` wires these in; `tuneline compile ...` does the same."""
    parser = argparse.ArgumentParser(prog="tuneline", description="Compile and submit tuneline pipelines.")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
