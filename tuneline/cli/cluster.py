"""The `tuneline cluster check` command: its arguments, and the run over every overlay, the retraining CronJob's
submissions and each pipeline. The checks themselves are tuneline.cluster.check (what a compiled pipeline
asks of the cluster), tuneline.cluster.reads (what pods read) and tuneline.cluster.submit (what the
CronJob and the Azure ML retrain-check job submit); this module sits above all three, so none imports another back.

Run as: tuneline cluster check pipelines/*.yaml            (exit 2 with `pipeline:step: message` lines)
        python -m tuneline.cli.cluster pipelines/finetune.yaml --k8s k8s/overlays/dev
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cluster.check import (
    DEFAULT_K8S,
    DEFAULT_POOLS,
    DEFAULT_SKUS,
    DOCS,
    check_pipeline,
    cluster_conflicts_of,
    kustomizations,
    load_skus,
    rendered_objects,
)
from ..cluster.reads import KFP_NAMESPACE, docs_created
from ..spec import SpecError
from ..targets import CompileError
from ..targets.kfp.options import DEFAULT_KFP_SERVICE_ACCOUNT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tuneline cluster check",
                                     description="Would every compiled step run on the cluster that k8s/ provisions?")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipelines", nargs="+", help="pipeline YAML files")
    parser.add_argument("--pools", default=str(DEFAULT_POOLS), help="node pool spec (default: k8s/nodepools.yaml)")
    parser.add_argument("--skus", default=str(DEFAULT_SKUS), help="VM size table (default: config/skus.yaml)")
    parser.add_argument("--k8s", default=str(DEFAULT_K8S),
                        help="a kustomization, or a folder of them (each must create what pods use; "
                             "default: every overlay in k8s/overlays)")
    parser.add_argument("--namespace", default=KFP_NAMESPACE,
                        help="where the pipeline pods run (standalone KFP: kubeflow)")
    parser.add_argument("--service-account", default=DEFAULT_KFP_SERVICE_ACCOUNT,
                        help="the ServiceAccount runs are submitted with (the multi-node launcher's identity)")


def parse_trigger(argv: list[str]) -> argparse.Namespace:
    """A `tuneline trigger ...` command line read by `tuneline`'s own `trigger` commands (tuneline.cli.ops, which
    tuneline.cli.main adds the same way), so it is read exactly as the CLI reads it (flags, defaults,
    abbreviations): a copy of its options could agree with the checked command and not with the pod. Not
    tuneline.cli.main itself: that module imports every command, this one among them."""
    from .ops import add_commands

    parser = argparse.ArgumentParser(prog="tuneline")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    from ..cluster.nodepools import load_spec
    from ..cluster.reads import workload_problems
    from ..cluster.render import KustomizeError
    from ..cluster.submit import azureml_schedule_problems, cronjob_problems

    try:
        pools = load_spec(Path(args.pools)).pools
        skus = load_skus(Path(args.skus))
        objects = rendered_objects(kustomizations(Path(args.k8s)))
    except (OSError, KustomizeError, ValueError) as exc:
        print(f"tuneline cluster check: {exc}", file=sys.stderr)
        return 2
    unknown = sorted({p.vmSize for p in pools} - set(skus))
    status = 0
    if unknown:
        print(f"{args.pools}: VM size(s) {', '.join(unknown)} not in {args.skus}: add a row with its source",
              file=sys.stderr)
        status = 2
    docs_objects = docs_created([Path.cwd() / d for d in DOCS])
    for folder, rendered in objects.items():
        try:
            checked: list[str] = []
            found = workload_problems(folder, rendered, docs_objects) + cronjob_problems(Path.cwd(), pools, skus,
                                                                                          folder, rendered,
                                                                                          parse_trigger, checked)
        except CompileError as exc:
            found = [f"{folder}: {exc}"]
        for problem in found:
            print(problem, file=sys.stderr)
        for line in [] if found else checked:
            print(line)
        status = 2 if found else status
    status = 2 if cluster_conflicts_of(args.pipelines) else status
    for pipeline in args.pipelines:
        try:
            result = check_pipeline(Path(pipeline), pools, skus, objects, args.namespace, Path.cwd(),
                                    args.service_account)
            if Path(pipeline).resolve().parent == (Path.cwd() / "pipelines").resolve():
                result.problems += azureml_schedule_problems(Path(pipeline), Path.cwd(), pools, skus,
                                                             parse_trigger)
        except SpecError as exc:
            for problem in exc.problems:
                print(problem, file=sys.stderr)
            status = 2
            continue
        except CompileError as exc:
            print(f"{pipeline}: cannot compile: {exc}", file=sys.stderr)
            status = 2
            continue
        for problem in result.problems:
            print(problem, file=sys.stderr)
        if result.problems:
            status = 2
        else:
            print(f"{pipeline}: {result.pods} pods fit the cluster ({len(pools)} pools, {len(objects)} "
                  f"kustomizations, namespace {args.namespace})")
    return status


if __name__ == "__main__":
    sys.exit(main())
