"""Run a multi-node step as a Kubeflow TrainJob (or PyTorchJob) from inside a KFP pod, and wait for it.

Run as (the KFP launcher step does this; arguments come from the compiled pipeline):
    python -m tuneline.targets.kfp.launch --step train --nodes 2 --procs 4 --template '<command>' \
        --manifest '<TrainJob JSON>' --artifact train=/path --value learning_rate=0.001 --output model=/path

The job's pods are not KFP pods, so they cannot see this pod's artifact paths. Inputs are copied to the shared
checkpoint volume, the command is rendered against those copies, and when the job succeeds its outputs are
copied back to this pod's output paths for KFP to upload. Meanwhile rank 0's log is streamed to this pod's
stdout, which is the log KFP shows for the step.

The job is named `<pipeline>-<step>-<8 hex of the run id>` (a DNS-1035 label), labelled with the run id, and
owned by this pod (an ownerReference, so Kubernetes' garbage collector deletes it with the run's pods:
https://kubernetes.io/docs/concepts/overview/working-with-objects/owners-dependents/). A KFP retry of this step
runs this launcher again, and its create answers 409 AlreadyExists: the job of the same run that has not failed
is adopted (the new pod is added as an owner, and waited for); a failed one, or one of another run, is deleted
and created afresh (the step resumes from its checkpoints on the shared volume).

Terminating a KFP run keeps its pods (Argo only signals them), so the ownerReference alone would leave the job
running. On SIGTERM the launcher deletes the job, but that races the container's end; what does not race is the
heartbeat: the launcher rewrites `<stage>/launcher-heartbeat` on the shared volume every 30 s, and each of the
job's pods runs its command behind `tuneline.targets.kfp.watch`, which stops it when the heartbeat has been still for
ten minutes. The job is created with strict field validation, so a Kubeflow Trainer older than v2.2 (no
spec.runtimePatches) or a cluster without the job's API (Kubeflow 1.10's v1 Training Operator has no TrainJob)
fails the step at once with what is missing, instead of a job that runs without its node selector and deadline.

The launcher uses the Kubernetes API only through the `kubernetes` client, which the control image carries (the
launcher step runs in it; the job's pods run the step's own image). `PERMISSIONS` is every call it makes, and
k8s/kubeflow/launcher-rbac.yaml grants exactly those to the pipeline's ServiceAccount. No API server can run
where the tests run: they drive this module through the real client down to its HTTP pool, with recorded API
answers (tests/targets/compile/test_launch.py), and so stop at the API server's boundary.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from ...settings import CHECKPOINT_MOUNT
from ...spec.models import ComponentSpec
from ...step.command import render_command
from ..command import torchrun_prefix
from . import pytorchjob, trainjob
from .jobpod import DNS_1035, NAME_PREFIX_MAX
from .watch import BEAT_SECONDS, GONE_FILE, HEARTBEAT_FILE, WATCH_MODULE

LAUNCH_MODULE = "tuneline.targets.kfp.launch"
DEFAULT_SHARED = CHECKPOINT_MOUNT
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
RUN_LABEL = "tuneline.dev/run-id"
# The launcher pod's own name and uid, from the downward API (the compiled task sets them), for the ownerReference.
POD_NAME_ENV, POD_UID_ENV = "TUNELINE_POD_NAME", "TUNELINE_POD_UID"
# The oldest Kubeflow Trainer whose TrainJob has every field trainjob.py writes (k8s/supported.yaml, `kubeflow:`).
MIN_TRAINER = "v2.2.0"


class JobApiError(RuntimeError):
    """The cluster cannot run this kind of job: the message says what it has and what is needed."""


@dataclass(frozen=True)
class JobKind:
    """Where a kind of job lives in the API, how it reports the end, and which pod is rank 0."""
    kind: str
    group: str
    version: str
    plural: str
    done: dict[str, str]        # condition type -> "Succeeded" / "Failed"
    container: str              # the container that runs the step's command
    rank0_labels: Callable[[str], dict[str, str]]

    def coordinates(self, namespace: str) -> dict[str, str]:
        return {"group": self.group, "version": self.version, "namespace": namespace, "plural": self.plural}


TRAINJOB = JobKind(
    kind=trainjob.KIND, group="trainer.kubeflow.org", version="v1alpha1", plural="trainjobs",
    done={"Complete": "Succeeded", "Failed": "Failed"}, container=trainjob.TRAINER_CONTAINER,
    # The TrainJob's JobSet has the job's name (its pods carry `jobset.sigs.k8s.io/jobset-name`); the Job of the
    # `node` replicated job is Indexed, and Kubernetes labels each pod with its index, which torch's plugin makes
    # the node rank (https://kubernetes.io/docs/reference/labels-annotations-taints/#batch-kubernetes-io-job-completion-index).
    rank0_labels=lambda name: {"jobset.sigs.k8s.io/jobset-name": name, "batch.kubernetes.io/job-completion-index": "0"})
PYTORCHJOB = JobKind(
    kind=pytorchjob.KIND, group="kubeflow.org", version="v1", plural="pytorchjobs",
    done={"Succeeded": "Succeeded", "Failed": "Failed"}, container=pytorchjob.CONTAINER,
    rank0_labels=lambda name: {"training.kubeflow.org/job-name": name, "training.kubeflow.org/replica-type": "master",
                               "training.kubeflow.org/replica-index": "0"})
KINDS = {k.kind: k for k in (TRAINJOB, PYTORCHJOB)}

# Every API call the launcher makes: (API group, resource, verbs). The Role in k8s/kubeflow/ grants these, and
# `tuneline cluster check` verifies that it does.
PERMISSIONS: dict[str, list[tuple[str, str, tuple[str, ...]]]] = {
    kind.kind: [(kind.group, kind.plural, ("create", "get", "patch", "delete")),
                ("", "pods", ("list",)), ("", "pods/log", ("get",))]
    for kind in KINDS.values()}


def job_kind(manifest: dict[str, Any]) -> JobKind:
    return KINDS[manifest["kind"]]


def staged_command(spec: ComponentSpec, values: dict[str, Any], artifacts: Sequence[str], stage: str,
                   nodes: int, procs: int) -> list[str]:
    """The step's command with artifacts read from, and outputs written to, the stage folder; run by torchrun."""
    inputs: dict[str, Any] = {name: s.default for name, s in spec.inputs.items() if s.default is not None}
    inputs.update(values)
    inputs.update({name: f"{stage}/inputs/{name}" for name in artifacts})
    outputs = {name: f"{stage}/outputs/{name}" for name in spec.outputs}
    argv = render_command(spec.command, inputs, outputs)
    watch = ["python", "-m", WATCH_MODULE, "--heartbeat", f"{stage}/{HEARTBEAT_FILE}", "--"]
    return watch + torchrun_prefix(argv[:1], nodes, procs) + argv[1:]


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
    pod_name: str | None = None
    pod_uid: str | None = None


def _pairs(items: Sequence[str], flag: str) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"launch: {flag} expects name=value, got '{item}'")
        out[name] = value
    return out


def parse_args(argv: Sequence[str] | None = None) -> LaunchArgs:
    parser = argparse.ArgumentParser(prog=LAUNCH_MODULE, description="Run a step as a TrainJob/PyTorchJob and wait.")
    parser.add_argument("--step", required=True, help="step name")
    parser.add_argument("--nodes", type=int, default=1, help="nodes of the job")
    parser.add_argument("--procs", type=int, default=1, help="processes (GPUs) per node")
    parser.add_argument("--template", required=True, help="the component's command template")
    parser.add_argument("--manifest", required=True, help="the job manifest as JSON")
    parser.add_argument("--artifact", action="append", default=[], help="NAME=PATH of an input artifact")
    parser.add_argument("--value", action="append", default=[], help="NAME=VALUE of an input value")
    parser.add_argument("--output", action="append", default=[], help="NAME=PATH where an output goes")
    parser.add_argument("--shared", default=DEFAULT_SHARED, help="mount of the volume the job's pods share")
    args = parser.parse_args(argv)
    return LaunchArgs(step=args.step, nodes=args.nodes, procs=args.procs, template=args.template,
                      manifest=json.loads(args.manifest), artifacts=_pairs(args.artifact, "--artifact"),
                      values=_pairs(args.value, "--value"), outputs=_pairs(args.output, "--output"),
                      shared=args.shared, run_id=os.environ.get("TUNELINE_RUN_ID") or "run",
                      pod_name=os.environ.get(POD_NAME_ENV) or None, pod_uid=os.environ.get(POD_UID_ENV) or None)


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


def job_name(prefix: str, run_id: str) -> str:
    """`<prefix>-<8 hex>`: one name per run, so a retry of the step finds its job; at most 48 characters."""
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
    name = f"{prefix[:NAME_PREFIX_MAX].rstrip('-')}-{digest}"
    if not DNS_1035.match(name):
        raise ValueError(f"job name {name!r} is not a DNS-1035 label")
    return name


def label_value(text: str) -> str:
    """A Kubernetes label value: at most 63 of [A-Za-z0-9._-], alphanumeric at both ends."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", text)[:63].strip("-._") or "run"


def _containers(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The containers that run the step's command: the TrainJob's trainer, or every PyTorchJob replica's."""
    if body["kind"] == trainjob.KIND:
        return [body["spec"]["trainer"]]
    return [c for r in body["spec"]["pytorchReplicaSpecs"].values() for c in r["template"]["spec"]["containers"]]


def owner_reference(args: LaunchArgs) -> dict[str, Any] | None:
    if not (args.pod_name and args.pod_uid):
        return None
    # Not `controller`: the job's own operator is its controller. Not `blockOwnerDeletion`: that would need
    # `update` on pods/finalizers, and nothing waits for the job to be gone before the pod goes.
    return {"apiVersion": "v1", "kind": "Pod", "name": args.pod_name, "uid": args.pod_uid}


def job_body(args: LaunchArgs, spec: ComponentSpec) -> dict[str, Any]:
    """The manifest with this run's name, labels, owner and command; values stay the text KFP rendered them as."""
    command = staged_command(spec, dict(args.values), list(args.artifacts), str(stage_dir(args)), args.nodes,
                             args.procs)
    body = json.loads(json.dumps(args.manifest))
    meta = body["metadata"]
    meta["name"] = job_name(meta["name"], args.run_id)
    meta.setdefault("labels", {})[RUN_LABEL] = label_value(args.run_id)
    owner = owner_reference(args)
    if owner:
        meta["ownerReferences"] = [owner]
    for container in _containers(body):
        container["command"] = command
        container.setdefault("env", []).append({"name": "TUNELINE_RUN_ID", "value": args.run_id})
    return body


def collect_outputs(args: LaunchArgs, spec: ComponentSpec) -> None:
    stage = stage_dir(args) / "outputs"
    for name, path in args.outputs.items():
        produced = stage / name
        if not produced.exists():
            raise RuntimeError(f"the job wrote no output '{name}' (expected {produced})")
        _copy(produced, Path(path))


def job_state(status: dict[str, Any] | None, kind: JobKind = PYTORCHJOB) -> str | None:
    """'Succeeded' or 'Failed' once the job has finished, else None."""
    for condition in reversed((status or {}).get("conditions") or []):
        if condition.get("status") == "True" and condition.get("type") in kind.done:
            return kind.done[condition["type"]]
    return None


# ---------------------------------------------------------------------------------------------- the API calls


class Cluster:
    """The launcher's calls to the Kubernetes API (each one is in PERMISSIONS)."""

    def __init__(self, api_client: Any, namespace: str, kind: JobKind, poll_seconds: float = 10):
        from kubernetes import client

        self.custom = client.CustomObjectsApi(api_client)
        self.core = client.CoreV1Api(api_client)
        self.namespace = namespace
        self.kind = kind
        self.poll_seconds = poll_seconds
        self.coordinates = kind.coordinates(namespace)

    def get(self, name: str) -> dict[str, Any] | None:
        from kubernetes.client.exceptions import ApiException

        try:
            return self.custom.get_namespaced_custom_object(name=name, **self.coordinates)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def create(self, body: dict[str, Any]) -> None:
        """Create the job with strict field validation: a server whose job type lacks a field the manifest sets
        answers 400 at once, where the default (Warn) would drop the field and run a different job."""
        from kubernetes.client.exceptions import ApiException

        try:
            self.custom.create_namespaced_custom_object(body=body, field_validation="Strict", **self.coordinates)
        except ApiException as exc:
            why = unsupported_api(self.kind, exc)
            if why:
                raise JobApiError(why) from None
            raise

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(name=name, propagation_policy="Foreground", **self.coordinates)

    def submit(self, body: dict[str, Any], log: TextIO = sys.stderr) -> str:
        """Create the job; on 409 adopt this run's unfailed job, or replace the other. Returns what it did."""
        from kubernetes.client.exceptions import ApiException

        name = body["metadata"]["name"]
        try:
            self.create(body)
            return "created"
        except ApiException as exc:
            if exc.status != 409:
                raise
        existing = self.get(name)
        if existing is None:  # deleted between our create and get
            self.create(body)
            return "created"
        ours = (existing["metadata"].get("labels") or {}).get(RUN_LABEL) == body["metadata"]["labels"][RUN_LABEL]
        if ours and job_state(existing.get("status"), self.kind) != "Failed":
            owners = list(existing["metadata"].get("ownerReferences") or [])
            new = [o for o in body["metadata"].get("ownerReferences", []) if o["uid"] not in {x["uid"] for x in owners}]
            if new:  # the retried pod owns it too, so it outlives the failed attempt's pod
                self.custom.patch_namespaced_custom_object(name=name, body={"metadata": {"ownerReferences":
                                                                                          owners + new}},
                                                           **self.coordinates)
            print(f"{self.kind.kind} {name}: adopted (created by an earlier attempt of this run)", file=log)
            return "adopted"
        why = "it failed" if ours else "it belongs to another run"
        print(f"{self.kind.kind} {name}: replacing it ({why})", file=log)
        self.delete(name)
        while self.get(name) is not None:
            time.sleep(self.poll_seconds)
        self.create(body)
        return "replaced"

    def wait(self, name: str, terminated: threading.Event | None = None) -> str:
        """How the job ended; on `terminated` (the step's SIGTERM) the job is deleted and "Terminated" returned."""
        terminated = terminated or threading.Event()
        while True:
            if terminated.is_set():
                self.delete(name)
                return "Terminated"
            job = self.get(name)
            if job is None:
                return "Failed"  # deleted under us (the run was deleted, or someone removed it)
            state = job_state(job.get("status"), self.kind)
            if state:
                return state
            terminated.wait(self.poll_seconds)

    def follow_rank0(self, name: str, out: TextIO, stop: threading.Event) -> None:
        """Copy rank 0's log to `out`: each container start once, until `stop` is set."""
        selector = ",".join(f"{k}={v}" for k, v in self.kind.rank0_labels(name).items())
        streamed: set[tuple[str, int]] = set()
        while not stop.is_set():
            for pod in self.core.list_namespaced_pod(self.namespace, label_selector=selector).items:
                statuses = [s for s in (pod.status.container_statuses or []) if s.name == self.kind.container]
                if not statuses or not (statuses[0].state.running or statuses[0].state.terminated):
                    continue
                key = (pod.metadata.uid, statuses[0].restart_count or 0)
                if key in streamed:
                    continue
                streamed.add(key)
                stream = self.core.read_namespaced_pod_log(pod.metadata.name, self.namespace,
                                                           container=self.kind.container, follow=True,
                                                           _preload_content=False)
                for chunk in stream.stream(4096):
                    out.write(chunk.decode("utf-8", errors="replace"))
                    out.flush()
            stop.wait(self.poll_seconds)


def unsupported_api(kind: JobKind, exc: Any) -> str | None:
    """What a create's error says about the cluster's job API, in words; None for any other error.

    404: the API group/version is not served (Kubeflow 1.10 and 1.11 ship the v1 Training Operator, whose
    kubeflow.org/v1 has no TrainJob; Kubeflow Trainer v2 has no PyTorchJob). 400 "unknown field" under strict
    field validation: the CRD's schema lacks a field the manifest sets (Trainer v2.0/v2.1 have neither
    spec.runtimePatches nor spec.activeDeadlineSeconds: pkg/apis/trainer/v1alpha1/trainjob_types.go)."""
    message = _status_message(exc)
    api = f"{kind.group}/{kind.version} {kind.plural}"
    if exc.status == 404:
        if kind.kind == trainjob.KIND:
            return (f"the cluster does not serve {api} (404: {message}). A TrainJob needs Kubeflow Trainer "
                    f"{MIN_TRAINER} or newer; Kubeflow 1.10 and 1.11 ship the v1 Training Operator instead: install "
                    f"Trainer, or give the step's compute profile `launcher: pytorchjob`")
        return (f"the cluster does not serve {api} (404: {message}). A PyTorchJob needs the v1 Training Operator "
                f"(Kubeflow 1.10/1.11 ship it); with Kubeflow Trainer v2 use `launcher: trainjob`")
    if exc.status == 400 and "unknown field" in message:
        if kind.kind == trainjob.KIND:
            return (f"the cluster's TrainJob has no field the manifest sets ({message}): its Kubeflow Trainer is "
                    f"older than {MIN_TRAINER} (v2.0 and v2.1 lack spec.runtimePatches and "
                    f"spec.activeDeadlineSeconds); upgrade Trainer, or give the step `launcher: pytorchjob`")
        return f"the cluster's PyTorchJob has no field the manifest sets ({message}): upgrade the Training Operator"
    return None


def _status_message(exc: Any) -> str:
    try:
        return str(json.loads(exc.body).get("message", "")) or str(exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(getattr(exc, "reason", "") or exc)


class Heartbeat:
    """Rewrites a counter in the stage folder every `seconds`, for tuneline.targets.kfp.watch in the job's pods."""

    def __init__(self, path: Path, seconds: float = BEAT_SECONDS):
        self.path, self.seconds = path, seconds
        self.stop = threading.Event()
        self.beats = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def beat(self) -> None:
        self.beats += 1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(f"{self.beats} {os.getpid()}\n")
        tmp.replace(self.path)  # a reader never sees a half-written file

    def _run(self) -> None:
        while not self.stop.wait(self.seconds):
            try:
                self.beat()
            except OSError as exc:  # a volume hiccup: the watchers tolerate STALE_SECONDS of silence
                print(f"launch: heartbeat {self.path}: {exc}", file=sys.stderr, flush=True)

    def __enter__(self) -> Heartbeat:
        self.path.with_name(GONE_FILE).unlink(missing_ok=True)  # a retried step's new job may start its pods
        self.beat()
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join(timeout=self.seconds + 5)


def on_sigterm(terminated: threading.Event) -> None:
    """A SIGTERM (the run terminated, the pod evicted) sets `terminated`; the wait loop then deletes the job. It
    races the end of the container (the KFP launcher that runs this exits on the same signal), which is why the
    job's pods also watch the heartbeat."""
    signal.signal(signal.SIGTERM, lambda *_: terminated.set())


def run_job(cluster: Cluster, body: dict[str, Any], out: TextIO = sys.stdout,
            terminated: threading.Event | None = None) -> str:
    """Submit the job, stream rank 0's log while it runs, and return how it ended."""
    name = body["metadata"]["name"]
    how = cluster.submit(body)
    print(f"{cluster.kind.kind} {name}: {how}", file=sys.stderr)
    stop = threading.Event()
    follower = threading.Thread(target=cluster.follow_rank0, args=(name, out, stop), daemon=True)
    follower.start()
    try:
        return cluster.wait(name, terminated)
    finally:
        stop.set()
        follower.join(timeout=60)  # the log stream ends when rank 0's container does


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - runs in the cluster
    from kubernetes import client, config

    args = parse_args(argv)
    spec = launcher_spec(args)
    stage_inputs(args)
    body = job_body(args, spec)
    namespace = NAMESPACE_FILE.read_text().strip() if NAMESPACE_FILE.is_file() else "default"
    config.load_incluster_config()
    terminated = threading.Event()
    on_sigterm(terminated)
    try:
        with Heartbeat(stage_dir(args) / HEARTBEAT_FILE):
            state = run_job(Cluster(client.ApiClient(), namespace, job_kind(body)), body, terminated=terminated)
    except JobApiError as exc:
        print(f"launch: {body['kind']} {body['metadata']['name']}: {exc}", file=sys.stderr)
        return 2
    print(f"{body['kind']} {body['metadata']['name']}: {state}", file=sys.stderr)
    if state != "Succeeded":
        return 1  # the stage folder stays for a retry; tuneline.step.resume sweeps it when it has gone stale
    collect_outputs(args, spec)
    remove_stage(args)
    return 0


def remove_stage(args: LaunchArgs) -> None:
    """The stage folder of a finished step, and its run's folder once no other step's stage is in it: nothing
    else removes them from the shared volume."""
    stage = stage_dir(args)
    shutil.rmtree(stage, ignore_errors=True)
    try:
        stage.parent.rmdir()
    except OSError:
        pass  # another step of the run still has its stage there


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
