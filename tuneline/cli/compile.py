"""`tuneline compile` and `tuneline submit`.

Run as: tuneline compile pipelines/finetune.yaml --target all --out build/
        tuneline cluster check pipelines/*.yaml
        tuneline submit pipelines/finetune.yaml --target kfp --host https://kfp.example.com --dry-run
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..settings import CHECKPOINT_MOUNT
from ..spec import SpecError
from ..spec.load import parse_set_pairs
from ..targets import CompileError
from ..targets.build import TARGETS, compile_file
from ..targets.options import (
    DEFAULT_AZUREML_COMPUTE,
    DEFAULT_CHECKPOINT_PVC,
    DEFAULT_KFP_PIPELINE_ROOT,
    DEFAULT_MLFLOW_CONFIG_MAP,
    DEFAULT_MLFLOW_SECRET,
    CompileOptions,
)

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2


def _options(args: argparse.Namespace) -> CompileOptions:
    from ..targets.images import load_image_lock

    return CompileOptions(image_registry=args.image_registry, image_tag=args.image_tag, production=args.production,
                          image_lock=load_image_lock(Path(args.images)) if args.images else None,
                          no_cache=args.no_cache, mlflow_secret=args.mlflow_secret or None,
                          mlflow_config_map=args.mlflow_config_map or None,
                          checkpoint_pvc=args.checkpoint_pvc, azureml_compute=args.azureml_compute,
                          hf_secret=args.hf_secret or None,
                          kfp_pipeline_root=args.kfp_pipeline_root)


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
    from ..targets.plan import plan_json

    given = parse_set_pairs(args.param)
    # A run argument is a pipeline parameter; a step's input is a constant of the compiled pipeline (KFP's
    # run arguments are the pipeline's inputs only), so `--param STEP.INPUT=...` is compiled in, as --set does.
    step_inputs = [f"{name}={value}" for name, value in given.items() if "." in name]
    if step_inputs:
        args.set = [*args.set, *step_inputs]
        given = {name: value for name, value in given.items() if "." not in name}
        print(f"tuneline: {', '.join(pair.partition('=')[0] for pair in step_inputs)}: a step's input, compiled "
              "into the pipeline as --set does (run arguments are pipeline parameters)", file=sys.stderr)
    output = _compile(args, args.pipeline, (args.target,))
    if output is None:
        return EXIT_INVALID
    from ..spec import load_pipeline

    try:  # typed and checked like --set, so KFP receives numbers as numbers
        typed = load_pipeline(args.pipeline, given).for_target(args.target).params  # a local-only value is refused
    except SpecError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return EXIT_INVALID
    arguments = {name: typed[name] for name in given}
    if args.target == "kfp":
        if not args.host:
            print("tuneline: --target kfp needs --host", file=sys.stderr)
            return EXIT_INVALID
        from ..targets.kfp.submit import kfp_plan

        plan = kfp_plan(output.folder / "kfp", args.host, output.pipeline, args.experiment, args.namespace,
                        arguments, args.no_cache, args.schedule, args.service_account)
    else:
        missing = [flag for flag, value in (("--subscription", args.subscription),
                                            ("--resource-group", args.resource_group),
                                            ("--workspace", args.workspace)) if not value]
        if missing:
            print(f"tuneline: --target azureml needs {', '.join(missing)}", file=sys.stderr)
            return EXIT_INVALID
        if arguments:
            print("tuneline: on Azure ML, bake parameter values in with --set (the job file carries them)",
                  file=sys.stderr)
            return EXIT_INVALID
        from ..targets.azureml.submit import azureml_plan

        plan = azureml_plan(output.folder / "azureml", args.subscription, args.resource_group,
                            args.workspace, args.experiment, args.schedule, args.resubmit_preempted)
    if args.dry_run:
        print(plan_json(plan))
        return EXIT_OK
    if args.target == "kfp":
        from ..targets.kfp.submit import execute_kfp as execute
    else:
        from ..targets.azureml.submit import execute_azureml as execute
    for line in execute(plan):
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
    parser.add_argument("--mlflow-config-map", default=DEFAULT_MLFLOW_CONFIG_MAP,
                        help="Kubernetes ConfigMap with MLFLOW_TRACKING_URI (k8s/kubeflow/ creates it); '' for none")
    parser.add_argument("--mlflow-secret", default=DEFAULT_MLFLOW_SECRET,
                        help="Kubernetes Secret with MLFLOW_TRACKING_USERNAME/_PASSWORD for the tracking server's "
                             "basic auth (default: %(default)s); '' for none")
    parser.add_argument("--checkpoint-pvc", default=DEFAULT_CHECKPOINT_PVC,
                        help=f"PersistentVolumeClaim mounted at {CHECKPOINT_MOUNT} on resumable steps and on steps "
                             "that load a model (their Hugging Face cache lives there)")
    parser.add_argument("--hf-secret", default=None,
                        help="Kubernetes Secret with HF_TOKEN, given to the steps that load a model (gated Hub "
                             "models need it); default: none")
    parser.add_argument("--azureml-compute", default=DEFAULT_AZUREML_COMPUTE,
                        help="Azure ML compute for steps without an azureml compute profile")
    parser.add_argument("--kfp-pipeline-root", default=DEFAULT_KFP_PIPELINE_ROOT,
                        help="the cluster's KFP pipeline root (kfp-launcher ConfigMap defaultPipelineRoot; default: "
                             "%(default)s): imported data must be in its bucket")


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    compile_ = subparsers.add_parser("compile", help="compile pipelines to Kubeflow Pipelines and/or Azure ML")
    compile_.add_argument("pipelines", nargs="+", help="pipeline YAML files")
    compile_.add_argument("--target", choices=("kfp", "azureml", "all"), default="all", help="platform(s)")
    compile_.add_argument("-v", "--verbose", action="store_true", help="list every file written")
    _common(compile_)
    compile_.set_defaults(handler=cmd_compile)

    submit_ = subparsers.add_parser("submit", help="compile, then run (and schedule) on KFP or Azure ML")
    submit_.add_argument("pipeline", help="pipeline YAML file")
    submit_.add_argument("--target", choices=("kfp", "azureml"), required=True, help="platform")
    submit_.add_argument("--host", default=None, help="KFP API endpoint, e.g. https://kfp.example.com")
    submit_.add_argument("--namespace", default=None, help="KFP namespace (multi-user installs)")
    submit_.add_argument("--service-account", default=None, help="KFP: service account the run's pods use")
    submit_.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                         help="KFP: a run argument (repeatable); the compiled default otherwise. STEP.INPUT=VALUE "
                              "sets one step's input, compiled into the pipeline as with --set")
    submit_.add_argument("--subscription", default=None, help="Azure subscription id")
    submit_.add_argument("--resource-group", default=None, help="Azure resource group of the workspace")
    submit_.add_argument("--workspace", default=None, help="Azure ML workspace name")
    submit_.add_argument("--experiment", default=None, help="experiment name (default: the pipeline name)")
    submit_.add_argument("--schedule", action="store_true", help="also create the pipeline's schedule")
    submit_.add_argument("--resubmit-preempted", type=int, default=0, metavar="N",
                         help="Azure ML: watch the job and submit it again, up to N times, when a step on a "
                              "low-priority cluster fails (Azure ML does not restart a preempted job; the step "
                              "resumes from its checkpoint output)")
    submit_.add_argument("--dry-run", action="store_true", help="print the client calls as JSON; call nothing")
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
