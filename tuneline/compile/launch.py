"""Run a multi-node step as a Kubeflow PyTorchJob from inside a KFP pod, and wait for it.

Run as (the KFP launcher step does this; arguments come from the compiled pipeline):
    python -m tuneline.compile.launch --step train --nodes 2 --procs 4 --template '<command>' \
        --manifest '<PyTorchJob JSON>' --artifact train=/path --value learning_rate=0.001 --output model=/path

The PyTorchJob's pods are not KFP pods, so they cannot see this pod's artifact paths. Inputs are copied to the
shared checkpoint volume, the command is rendered against those copies, and when the job succeeds its outputs
are copied back to this pod's output paths for KFP to upload. A retried launcher finds the job it created
(same name) and keeps waiting instead of starting a second one.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..runner.command import render_command
from ..spec.models import ComponentSpec
from .command import torchrun_prefix

LAUNCH_MODULE = "tuneline.compile.launch"
DEFAULT_SHARED = "/mnt/checkpoints"
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def staged_command(spec: ComponentSpec, values: dict[str, Any], artifacts: Sequence[str], stage: str,
                   nodes: int, procs: int) -> list[str]:
    """The step's command with artifacts read from, and outputs written to, the stage folder; run by torchrun."""
    inputs: dict[str, Any] = {name: s.default for name, s in spec.inputs.items() if s.default is not None}
    inputs.update(values)
    inputs.update({name: f"{stage}/inputs/{name}" for name in artifacts})
    outputs = {name: f"{stage}/outputs/{name}" for name in spec.outputs}
    argv = render_command(spec.command, inputs, outputs)
    return torchrun_prefix(argv[:1], nodes, procs) + argv[1:]


@dataclass
class LaunchArgs:
    step: str
    nodes: int
    procs: int
    template: str
    manifest: dict[str, Any]
    artifacts: dict[str, str]
    values: dict[str, str]
    outputs: dict[str, str]
    shared: str
    run_id: str


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"launch: {flag} expects name=value, got '{item}'")
        out[name] = value
    return out


def parse_args(argv: Sequence[str] | None = None) -> LaunchArgs:
    parser = argparse.ArgumentParser(prog=LAUNCH_MODULE, description="Run a step as a PyTorchJob and wait.")
    parser.add_argument("--step", required=True, help="step name")
    parser.add_argument("--nodes", type=int, default=1, help="PyTorchJob replicas (master + workers)")
    parser.add_argument("--procs", type=int, default=1, help="processes (GPUs) per node")
    parser.add_argument("--template", required=True, help="the component's command template")
    parser.add_argument("--manifest", required=True, help="PyTorchJob manifest as JSON")
    parser.add_argument("--artifact", action="append", default=[], help="NAME=PATH of an input artifact")
    parser.add_argument("--value", action="append", default=[], help="NAME=VALUE of an input value")
    parser.add_argument("--output", action="append", default=[], help="NAME=PATH where an output goes")
    parser.add_argument("--shared", default=DEFAULT_SHARED, help="mount of the volume the job's pods share")
    args = parser.parse_args(argv)
    run_id = os.environ.get("TUNELINE_RUN_ID") or "run"
    return LaunchArgs(step=args.step, nodes=args.nodes, procs=args.procs, template=args.template,
                      manifest=json.loads(args.manifest), artifacts=_pairs(args.artifact, "--artifact"),
                      values=_pairs(args.value, "--value"), outputs=_pairs(args.output, "--output"),
                      shared=args.shared, run_id=run_id)


def stage_dir(args: LaunchArgs) -> Path:
    return Path(args.shared) / args.run_id / args.step


def _copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, target, dirs_exist_ok=True)
    else:
        shutil.copy2(source, target)


def stage_inputs(args: LaunchArgs) -> None:
    stage = stage_dir(args)
    for name, path in args.artifacts.items():
        _copy(Path(path), stage / "inputs" / name)
    (stage / "outputs").mkdir(parents=True, exist_ok=True)


def job_body(args: LaunchArgs, spec: ComponentSpec) -> dict[str, Any]:
    """The manifest with this run's name and command; values stay the text KFP rendered them as."""
    command = staged_command(spec, dict(args.values), list(args.artifacts), str(stage_dir(args)), args.nodes,
                             args.procs)
    body = json.loads(json.dumps(args.manifest))
    suffix = re.sub(r"[^a-z0-9-]", "-", args.run_id.lower())[:12].strip("-")
    body["metadata"]["name"] = f"{body['metadata']['name'][:50]}-{suffix}".strip("-")
    for replica in body["spec"]["pytorchReplicaSpecs"].values():
        for container in replica["template"]["spec"]["containers"]:
            container["command"] = command
            container.setdefault("env", []).append({"name": "TUNELINE_RUN_ID", "value": args.run_id})
    return body


def collect_outputs(args: LaunchArgs, spec: ComponentSpec) -> None:
    stage = stage_dir(args) / "outputs"
    for name, path in args.outputs.items():
        produced = stage / name
        if not produced.exists():
            raise RuntimeError(f"the PyTorchJob wrote no output '{name}' (expected {produced})")
        _copy(produced, Path(path))


def job_state(status: dict[str, Any] | None) -> str | None:
    """'Succeeded' or 'Failed' once the job has finished, else None."""
    for condition in reversed((status or {}).get("conditions") or []):
        if condition.get("status") == "True" and condition.get("type") in ("Succeeded", "Failed"):
            return condition["type"]
    return None


def run_job(body: dict[str, Any], namespace: str, poll_seconds: float = 20) -> str:  # pragma: no cover - cluster
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    config.load_incluster_config()
    api = client.CustomObjectsApi()
    name = body["metadata"]["name"]
    coordinates = {"group": "kubeflow.org", "version": "v1", "namespace": namespace, "plural": "pytorchjobs"}
    try:
        api.create_namespaced_custom_object(body=body, **coordinates)
    except ApiException as exc:
        if exc.status != 409:  # 409: a retried launcher finds its own job and waits for it
            raise
    while True:
        state = job_state(api.get_namespaced_custom_object(name=name, **coordinates).get("status"))
        if state:
            return state
        time.sleep(poll_seconds)


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - runs in the cluster
    args = parse_args(argv)
    spec = launcher_spec(args)
    stage_inputs(args)
    body = job_body(args, spec)
    namespace = NAMESPACE_FILE.read_text().strip() if NAMESPACE_FILE.is_file() else "default"
    state = run_job(body, namespace)
    print(f"PyTorchJob {body['metadata']['name']}: {state}", file=sys.stderr)
    if state != "Succeeded":
        return 1
    collect_outputs(args, spec)
    return 0


def launcher_spec(args: LaunchArgs) -> ComponentSpec:
    """The launcher only knows names and whether each is a path or a value; that is all rendering needs."""
    inputs: dict[str, Any] = {name: {"type": "uri_folder"} for name in args.artifacts}
    inputs.update({name: {"type": "string"} for name in args.values})
    return ComponentSpec.model_validate({
        "name": "launch", "version": "0.0.0", "environment": "launch",
        "command": args.template, "inputs": inputs,
        "outputs": {name: {"type": "uri_folder"} for name in args.outputs}})


if __name__ == "__main__":
    sys.exit(main())
