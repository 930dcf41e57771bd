"""The multi-node launcher, up to the Kubernetes API server's boundary.

No API server can run here. The launcher is driven through the real `kubernetes` client (URL building, JSON
bodies, content types, ApiException from a 409), and only the client's HTTP pool is replaced by `RecordedApi`,
which answers with the bodies an API server sends (a Status object for errors:
https://kubernetes.io/docs/reference/using-api/api-concepts/#response-status-kind). The manifests are checked
with the Kubeflow Trainer's own API models (kubeflow-trainer-api 2.3.0, generated from the TrainJob types) and
kubernetes-validate (core/v1, strict).
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import urllib3
import yaml
from kubeflow_trainer_api.models.trainer_v1alpha1_train_job import TrainerV1alpha1TrainJob
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes_validate import validate
from readback import TOY_MULTINODE, variant

from tuneline.cluster.check import launcher_problems, rendered_objects
from tuneline.graph import build_graph
from tuneline.spec import load_pipeline
from tuneline.targets.build import compile_graph
from tuneline.targets.kfp.jobpod import DNS_1035, dns_1035
from tuneline.targets.kfp.launch import (
    MIN_TRAINER,
    PERMISSIONS,
    PYTORCHJOB,
    RUN_LABEL,
    TRAINJOB,
    Cluster,
    Heartbeat,
    JobApiError,
    collect_outputs,
    job_body,
    job_kind,
    job_name,
    job_state,
    launcher_spec,
    on_sigterm,
    parse_args,
    remove_stage,
    run_job,
    stage_inputs,
)
from tuneline.targets.kfp.trainjob import pod_template_of
from tuneline.targets.options import CompileOptions

REPO = Path(__file__).resolve().parents[3]
NAMESPACE = "kubeflow"
TEMPLATE = ("python -m components.fit --train ${{inputs.train}} --rows ${{inputs.rows}} --lr ${{inputs.lr}} "
            "--model-out ${{outputs.model}} --checkpoints ${{outputs.checkpoints}}")


# ---------------------------------------------------------------------------------------------- recorded API


@dataclass
class Call:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str | None
    body: Any


class RecordedApi:
    """Stands where the client's urllib3 pool manager stands: records each request and answers from `routes`,
    a list of (method, path regex, answer); an answer is (status, body), or a function of the calls so far
    that returns one. A route is used once unless its answer is a function."""

    def __init__(self, routes: list[tuple[str, str, Any]]):
        self.routes = list(routes)
        self.calls: list[Call] = []
        self.lock = threading.Lock()

    def request(self, method, url, body=None, fields=None, preload_content=True, timeout=None, headers=None,
                **_):
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qs(parts.query)
        if method in ("GET", "HEAD") and fields:  # urllib3 encodes a GET's fields into its query string
            query.update({k: [str(v)] for k, v in fields})
        with self.lock:
            self.calls.append(Call(method, parts.path, query,
                                   (headers or {}).get("Content-Type"), json.loads(body) if body else None))
            for index, (m, pattern, answer) in enumerate(self.routes):
                if m == method and re.fullmatch(pattern, parts.path):
                    if callable(answer):
                        status, payload = answer(self.calls)
                    else:
                        status, payload = answer
                        del self.routes[index]
                    break
            else:
                raise AssertionError(f"unexpected {method} {parts.path}")
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        return urllib3.HTTPResponse(body=io.BytesIO(data), status=status, preload_content=preload_content,
                                    headers={"Content-Type": "application/json"}, reason="recorded")

    def verbs(self) -> set[tuple[str, str, str]]:
        """(API group, resource, RBAC verb) of every call, by the API's URL scheme and verb mapping:
        https://kubernetes.io/docs/reference/access-authn-authz/authorization/#determine-the-request-verb"""
        out = set()
        for call in self.calls:
            match = re.fullmatch(r"/(?:api/v1|apis/([^/]+)/[^/]+)/namespaces/[^/]+/([^/]+)(?:/([^/]+))?(?:/(\w+))?",
                                 call.path)
            assert match, call.path
            group, resource, name, sub = match.groups()
            resource = f"{resource}/{sub}" if sub else resource
            verb = {"POST": "create", "PATCH": "patch", "DELETE": "delete"}.get(call.method)
            verb = verb or ("get" if name else "list")
            out.add((group or "", resource, verb))
        return out


def status(code: int, reason: str, message: str) -> tuple[int, dict]:
    return code, {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
                  "reason": reason, "code": code}


def cluster(routes, kind=TRAINJOB) -> tuple[Cluster, RecordedApi]:
    api_client = client.ApiClient(client.Configuration(host="https://kubernetes.test"))
    recorded = RecordedApi(routes)
    api_client.rest_client.pool_manager = recorded
    return Cluster(api_client, NAMESPACE, kind, poll_seconds=0.01), recorded


# ---------------------------------------------------------------------------------------------- fixtures


def _args(manifest_file: Path, tmp_path, monkeypatch, run_id="Run-1234ABCD-extra", pod="fit-launcher-abc",
          uid="uid-2"):
    manifest = yaml.safe_load(manifest_file.read_text())
    train = tmp_path / "kfp" / "train"
    train.mkdir(parents=True, exist_ok=True)
    (train / "data.jsonl").write_text("{}\n")
    monkeypatch.setenv("TUNELINE_RUN_ID", run_id)
    monkeypatch.setenv("TUNELINE_POD_NAME", pod)
    monkeypatch.setenv("TUNELINE_POD_UID", uid)
    return parse_args(["--step", "fit", "--nodes", "2", "--procs", "4", "--template", TEMPLATE,
                       "--manifest", json.dumps(manifest), "--artifact", f"train={train}", "--value", "rows=120",
                       "--value", "lr=0.002", "--output", f"model={tmp_path / 'kfp' / 'model'}",
                       "--output", f"checkpoints={tmp_path / 'kfp' / 'ckpt'}", "--shared", str(tmp_path / "shared")])


@pytest.fixture
def trainjob_file(compiled) -> Path:
    return compiled["toy-multinode"] / "kfp" / "trainjob-fit.yaml"


@pytest.fixture(scope="module")
def pytorchjob_file(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("pytorchjob")
    path = variant(tmp, "nodes: 2, processes_per_node: 4, accelerator",
                   "nodes: 2, processes_per_node: 4, launcher: pytorchjob, accelerator", source=TOY_MULTINODE)
    out = compile_graph(build_graph(load_pipeline(path)), ("kfp",), tmp / "out", CompileOptions())
    return out.folder / "kfp" / "pytorchjob-fit.yaml"


def _body(manifest_file, tmp_path, monkeypatch, **kw) -> dict:
    args = _args(manifest_file, tmp_path, monkeypatch, **kw)
    return job_body(args, launcher_spec(args))


# ---------------------------------------------------------------------------------------------- the objects


def test_launcher_stages_inputs_renders_the_trainjob_and_collects_outputs(trainjob_file, tmp_path, monkeypatch):
    args = _args(trainjob_file, tmp_path, monkeypatch)
    spec = launcher_spec(args)
    stage_inputs(args)
    stage = tmp_path / "shared" / "Run-1234ABCD-extra" / "fit"
    assert (stage / "inputs" / "train" / "data.jsonl").read_text() == "{}\n"
    body = job_body(args, spec)
    assert re.fullmatch(r"toy-multinode-fit-[0-9a-f]{8}", body["metadata"]["name"])
    assert body["metadata"]["labels"][RUN_LABEL] == "Run-1234ABCD-extra"
    assert body["metadata"]["ownerReferences"] == [{"apiVersion": "v1", "kind": "Pod", "name": "fit-launcher-abc",
                                                    "uid": "uid-2"}]
    trainer = body["spec"]["trainer"]
    assert trainer["command"] == [
        "python", "-m", "tuneline.targets.kfp.watch", "--heartbeat", f"{stage}/launcher-heartbeat", "--",
        "torchrun", "--nnodes=2", "--nproc-per-node=4", "-m", "components.fit", "--train",
        f"{stage}/inputs/train", "--rows", "120", "--lr", "0.002", "--model-out", f"{stage}/outputs/model",
        "--checkpoints", f"{stage}/outputs/checkpoints"]
    assert {"name": "TUNELINE_RUN_ID", "value": "Run-1234ABCD-extra"} in trainer["env"]
    (stage / "outputs" / "model").mkdir(parents=True)
    (stage / "outputs" / "model" / "weights.bin").write_bytes(b"w")
    (stage / "outputs" / "checkpoints").mkdir()
    collect_outputs(args, spec)
    assert (tmp_path / "kfp" / "model" / "weights.bin").read_bytes() == b"w"
    # nothing else removes a finished step's stage from the shared volume; a run folder goes with its last stage
    (stage.parent / "other-step").mkdir()
    remove_stage(args)
    assert not stage.exists() and (stage.parent / "other-step").is_dir()
    (stage.parent / "other-step").rmdir()
    stage_inputs(args)
    remove_stage(args)
    assert not stage.parent.exists() and (tmp_path / "shared").is_dir()


def test_the_trainjob_is_one_the_trainer_api_accepts(trainjob_file, tmp_path, monkeypatch):
    body = _body(trainjob_file, tmp_path, monkeypatch)
    # The generated models keep only the fields the API has, typed: a round trip that changes nothing means no
    # misspelt or misplaced field and no wrong type.
    assert TrainerV1alpha1TrainJob.from_dict(body).to_dict() == body
    broken = json.loads(json.dumps(body))
    broken["spec"]["trainer"]["numNode"] = broken["spec"]["trainer"].pop("numNodes")
    assert TrainerV1alpha1TrainJob.from_dict(broken).to_dict() != broken
    # The CRD's own rules (CEL): an RFC 1035 name of at most 63 characters; a positive deadline.
    assert DNS_1035.match(body["metadata"]["name"]) and len(body["metadata"]["name"]) <= 63
    assert body["spec"]["activeDeadlineSeconds"] >= 1
    # The trainer pod the runtime patch produces is a valid core/v1 pod template (strict: unknown fields fail).
    validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "fit"},
              "template": pod_template_of(body)}, "1.31", strict=True)


def test_the_pytorchjob_pods_are_valid_pod_templates(pytorchjob_file, tmp_path, monkeypatch):
    body = _body(pytorchjob_file, tmp_path, monkeypatch)
    assert job_kind(body) is PYTORCHJOB
    for replica in body["spec"]["pytorchReplicaSpecs"].values():
        command = replica["template"]["spec"]["containers"][0]["command"]
        assert command[:3] == ["python", "-m", "tuneline.targets.kfp.watch"]
        assert command[command.index("--") + 1:][:2] == ["torchrun", "--nnodes=2"]
        validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": "fit"},
                  "template": replica["template"]}, "1.31", strict=True)


def test_job_names_are_dns_1035_and_one_per_run():
    assert dns_1035("finetune-demo-train_llm") == "finetune-demo-train-llm"
    assert dns_1035("9-lives__Step") == "j-9-lives-step"
    assert len(dns_1035("x" * 100)) == 39
    first, again, other = (job_name("finetune-demo-train-llm", r) for r in ("run-a", "run-a", "run-b"))
    assert first == again != other
    assert DNS_1035.match(first) and len(job_name("y" * 39, "r")) == 48


def test_job_state_reads_the_last_finished_condition():
    assert job_state(None) is None
    assert job_state({"conditions": [{"type": "Created", "status": "True"},
                                     {"type": "Running", "status": "True"}]}) is None
    assert job_state({"conditions": [{"type": "Running", "status": "False"},
                                     {"type": "Succeeded", "status": "True"}]}) == "Succeeded"
    assert job_state({"conditions": [{"type": "Complete", "status": "True"}]}, TRAINJOB) == "Succeeded"
    assert job_state({"conditions": [{"type": "Failed", "status": "True"}]}, TRAINJOB) == "Failed"


# ---------------------------------------------------------------------------------------------- the API calls

JOBS = r"/apis/trainer.kubeflow.org/v1alpha1/namespaces/kubeflow/trainjobs"
PODS = r"/api/v1/namespaces/kubeflow/pods"


def _rank0_pod(name: str, container: str = "node") -> dict:
    return {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": [{
        "metadata": {"name": f"{name}-node-0-0-x", "uid": "p0"},
        "status": {"phase": "Running", "containerStatuses": [{
            "name": container, "restartCount": 0, "ready": True, "image": "i", "imageID": "", "state": {
                "running": {"startedAt": "2026-01-01T00:00:00Z"}}}]}}]}


def test_a_new_job_is_created_and_rank0_log_reaches_stdout(trainjob_file, tmp_path, monkeypatch):
    body = _body(trainjob_file, tmp_path, monkeypatch)
    name = body["metadata"]["name"]
    log_read = lambda calls: any(c.path.endswith("/log") for c in calls)  # noqa: E731
    api, recorded = cluster([
        ("POST", JOBS, (201, body)),
        # Running until rank 0's log has been read, then Complete: the order a real run has.
        ("GET", f"{JOBS}/{name}", lambda calls: (200, {**body, "status": {"conditions": [
            {"type": "Complete", "status": "True"}] if log_read(calls) else []}})),
        ("GET", PODS, lambda calls: (200, _rank0_pod(name))),
        ("GET", rf"{PODS}/{name}-node-0-0-x/log", (200, b"step 1 loss 2.31\nstep 2 loss 1.97\n")),
    ])
    out = io.StringIO()
    assert run_job(api, body, out) == "Succeeded"
    assert out.getvalue() == "step 1 loss 2.31\nstep 2 loss 1.97\n"
    create = recorded.calls[0]
    assert (create.method, create.body) == ("POST", body)
    pods = next(c for c in recorded.calls if c.path == PODS)
    assert pods.query["labelSelector"] == [f"jobset.sigs.k8s.io/jobset-name={name},"
                                           "batch.kubernetes.io/job-completion-index=0"]
    log = next(c for c in recorded.calls if c.path.endswith("/log"))
    # "True": how the client spells it; the API server parses it with Go's strconv.ParseBool, which accepts it.
    assert log.query["follow"] == ["True"] and log.query["container"] == ["node"]


def _conflict(name):
    return status(409, "AlreadyExists", f'trainjobs.trainer.kubeflow.org "{name}" already exists')


def test_a_retry_adopts_the_job_of_its_run(trainjob_file, tmp_path, monkeypatch):
    body = _body(trainjob_file, tmp_path, monkeypatch, pod="fit-launcher-retry", uid="uid-2")
    name = body["metadata"]["name"]
    existing = {**body, "metadata": {**body["metadata"], "ownerReferences": [
        {"apiVersion": "v1", "kind": "Pod", "name": "fit-launcher-first", "uid": "uid-1"}]},
        "status": {"conditions": [{"type": "Suspended", "status": "False"}]}}
    api, recorded = cluster([("POST", JOBS, _conflict(name)), ("GET", f"{JOBS}/{name}", (200, existing)),
                             ("PATCH", f"{JOBS}/{name}", (200, existing))])
    assert api.submit(body, io.StringIO()) == "adopted"
    patch = recorded.calls[-1]
    assert patch.content_type == "application/merge-patch+json"
    assert [o["uid"] for o in patch.body["metadata"]["ownerReferences"]] == ["uid-1", "uid-2"]
    assert "DELETE" not in {c.method for c in recorded.calls}


@pytest.mark.parametrize("why", ["failed", "another run"])
def test_a_retry_replaces_a_failed_or_foreign_job(trainjob_file, tmp_path, monkeypatch, why):
    body = _body(trainjob_file, tmp_path, monkeypatch)
    name = body["metadata"]["name"]
    existing = json.loads(json.dumps(body))
    if why == "failed":
        existing["status"] = {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}]}
    else:
        existing["metadata"]["labels"][RUN_LABEL] = "some-other-run"
    gone = status(404, "NotFound", f'trainjobs.trainer.kubeflow.org "{name}" not found')
    api, recorded = cluster([("POST", JOBS, _conflict(name)), ("GET", f"{JOBS}/{name}", (200, existing)),
                             ("DELETE", f"{JOBS}/{name}", (200, existing)), ("GET", f"{JOBS}/{name}", (200, existing)),
                             ("GET", f"{JOBS}/{name}", gone), ("POST", JOBS, (201, body))])
    assert api.submit(body, io.StringIO()) == "replaced"
    assert [c.method for c in recorded.calls] == ["POST", "GET", "DELETE", "GET", "GET", "POST"]
    assert recorded.calls[2].query["propagationPolicy"] == ["Foreground"]  # the job's pods go before it does


def test_other_api_errors_are_not_swallowed(trainjob_file, tmp_path, monkeypatch):
    body = _body(trainjob_file, tmp_path, monkeypatch)
    api, _ = cluster([("POST", JOBS, status(403, "Forbidden", "trainjobs is forbidden"))])
    with pytest.raises(ApiException) as err:
        api.submit(body, io.StringIO())
    assert err.value.status == 403


def test_pytorchjob_calls_go_to_the_v1_operator(pytorchjob_file, tmp_path, monkeypatch):
    body = _body(pytorchjob_file, tmp_path, monkeypatch)
    name = body["metadata"]["name"]
    jobs = r"/apis/kubeflow.org/v1/namespaces/kubeflow/pytorchjobs"
    api, recorded = cluster([("POST", jobs, (201, body)),
                             ("GET", f"{jobs}/{name}", (200, {**body, "status": {"conditions": [
                                 {"type": "Failed", "status": "True"}]}})),
                             ("GET", PODS, (200, {"kind": "PodList", "apiVersion": "v1", "metadata": {},
                                                  "items": []}))], kind=PYTORCHJOB)
    assert run_job(api, body, io.StringIO()) == "Failed"
    pods = [c for c in recorded.calls if c.path == PODS]
    assert all(c.query["labelSelector"] == [f"training.kubeflow.org/job-name={name},training.kubeflow.org/"
                                            "replica-type=master,training.kubeflow.org/replica-index=0"] for c in pods)


# ---------------------------------------------------------------------------------------------- RBAC


def _every_call(body, kind, jobs_path) -> set[tuple[str, str, str]]:
    """Run every path of the launcher (create, adopt, replace, logs) and return the verbs it used."""
    name = body["metadata"]["name"]
    conflict = status(409, "AlreadyExists", "exists")
    foreign = json.loads(json.dumps(body))
    foreign["metadata"]["labels"][RUN_LABEL] = "other"
    done = {**body, "status": {"conditions": [{"type": next(iter(kind.done)), "status": "True"}]}}
    api, recorded = cluster([
        ("POST", jobs_path, conflict), ("GET", f"{jobs_path}/{name}", (200, body)),
        ("PATCH", f"{jobs_path}/{name}", (200, body)),
        ("POST", jobs_path, conflict), ("GET", f"{jobs_path}/{name}", (200, foreign)),
        ("DELETE", f"{jobs_path}/{name}", (200, body)), ("GET", f"{jobs_path}/{name}", status(404, "NotFound", "")),
        ("POST", jobs_path, (201, body)),
        ("GET", f"{jobs_path}/{name}", lambda calls: (200, done if any(c.path.endswith("/log") for c in calls)
                                                      else body)),
        ("GET", PODS, lambda calls: (200, _rank0_pod(name, kind.container))),
        ("GET", rf"{PODS}/[^/]+/log", (200, b"ok\n"))], kind=kind)
    body = {**body, "metadata": {**body["metadata"], "ownerReferences": [{"apiVersion": "v1", "kind": "Pod",
                                                                          "name": "p", "uid": "new"}]}}
    api.submit(body, io.StringIO())
    run_job(api, body, io.StringIO())
    return recorded.verbs()


def test_permissions_are_exactly_the_calls_the_launcher_makes(trainjob_file, pytorchjob_file, tmp_path, monkeypatch):
    pytorchjobs = r"/apis/kubeflow.org/v1/namespaces/kubeflow/pytorchjobs"
    for manifest, kind, path in ((trainjob_file, TRAINJOB, JOBS), (pytorchjob_file, PYTORCHJOB, pytorchjobs)):
        body = _body(manifest, tmp_path, monkeypatch)
        declared = {(group, resource, verb) for group, resource, verbs in PERMISSIONS[kind.kind] for verb in verbs}
        assert _every_call(body, kind, path) == declared


def test_the_role_in_k8s_grants_the_launcher_its_calls_and_no_token_means_no_launch(tmp_path):
    folder = REPO / "k8s" / "kubeflow"
    rendered = rendered_objects([folder])[folder]
    for kind in (TRAINJOB, PYTORCHJOB):
        assert launcher_problems(kind.kind, "tuneline-pipeline", NAMESPACE, rendered, folder) == []
    role = rendered.bodies[("Role", NAMESPACE, "tuneline-launcher")]
    role["rules"] = [r for r in role["rules"] if r["resources"] != ["pods/log"]]
    rendered.bodies[("ServiceAccount", NAMESPACE, "tuneline-pipeline")]["automountServiceAccountToken"] = False
    problems = launcher_problems("TrainJob", "tuneline-pipeline", NAMESPACE, rendered, folder)
    assert any("may not get pods/log" in p for p in problems)
    assert any("automountServiceAccountToken: false" in p for p in problems)
    assert "does not create" in launcher_problems("TrainJob", "nobody", NAMESPACE, rendered, folder)[0]


def test_the_launcher_image_has_the_kubernetes_client():
    from tuneline.targets.kfp.compiler import LAUNCHER_ENVIRONMENT

    requirements = (REPO / "environments" / LAUNCHER_ENVIRONMENT / "requirements.txt").read_text().splitlines()
    assert any(line.startswith("kubernetes==") for line in requirements)


# ---------------------------------------------------------------------------------------------- Trainer versions


def test_the_create_asks_for_strict_field_validation(trainjob_file, tmp_path, monkeypatch):
    """Without it an API server drops fields its CRD lacks (the default is Warn) and runs another job."""
    body = _body(trainjob_file, tmp_path, monkeypatch)
    api, recorded = cluster([("POST", JOBS, (201, body))])
    api.create(body)
    assert recorded.calls[0].query["fieldValidation"] == ["Strict"]


def test_kubeflow_with_only_the_v1_training_operator_fails_at_once_naming_what_is_needed(trainjob_file, tmp_path,
                                                                                        monkeypatch):
    body = _body(trainjob_file, tmp_path, monkeypatch)
    # What an API server answers for a group/version it does not serve (Kubeflow 1.10: no trainer.kubeflow.org).
    api, recorded = cluster([("POST", JOBS, status(404, "NotFound", "the server could not find the requested "
                                                                   "resource"))])
    with pytest.raises(JobApiError) as err:
        run_job(api, body, io.StringIO())
    assert f"Kubeflow Trainer {MIN_TRAINER} or newer" in str(err.value)
    assert "launcher: pytorchjob" in str(err.value)
    assert [c.method for c in recorded.calls] == ["POST"]  # no polling of a job that cannot exist


def test_a_trainer_older_than_v2_2_fails_at_once(trainjob_file, tmp_path, monkeypatch):
    """Trainer v2.1's TrainJob has no spec.runtimePatches: strict validation answers 400 with the fields (the
    message format of apiextensions' strict decoding)."""
    body = _body(trainjob_file, tmp_path, monkeypatch)
    message = ('TrainJob in version "v1alpha1" cannot be handled as a TrainJob: strict decoding error: unknown '
               'field "spec.activeDeadlineSeconds", unknown field "spec.runtimePatches"')
    api, _ = cluster([("POST", JOBS, status(400, "BadRequest", message))])
    with pytest.raises(JobApiError, match=r"older than v2\.2\.0 .*spec\.runtimePatches"):
        api.submit(body, io.StringIO())


@pytest.mark.parametrize("version", ["v2.0.0", "v2.1.0", "v2.2.0", "v2.3.0"])
def test_the_manifest_uses_fields_only_the_supported_trainers_have(trainjob_file, version):
    """kubeflow/trainer's TrainJobSpec at each tag: the fields the manifest sets exist from v2.2.0 on, which is what
    MIN_TRAINER and k8s/supported.yaml say (read in pkg/apis/trainer/v1alpha1/trainjob_types.go)."""
    spec_fields = {"v2.0.0": {"runtimeRef", "trainer", "podSpecOverrides", "suspend", "managedBy"},
                   "v2.1.0": {"runtimeRef", "trainer", "podTemplateOverrides", "suspend", "managedBy"},
                   "v2.2.0": {"runtimeRef", "trainer", "runtimePatches", "suspend", "activeDeadlineSeconds",
                              "managedBy"},
                   "v2.3.0": {"runtimeRef", "trainer", "runtimePatches", "suspend", "activeDeadlineSeconds",
                              "managedBy"}}[version]
    manifest = yaml.safe_load(trainjob_file.read_text())
    missing = set(manifest["spec"]) - spec_fields
    from tools.conformance.kfp_backend import load_kubeflow_table
    supported = next(v.supported for v in load_kubeflow_table().trainer if v.version == version)
    assert (not missing) is supported, (version, missing)
    assert supported is (tuple(map(int, version[1:].split("."))) >= tuple(map(int, MIN_TRAINER[1:].split("."))))


# ---------------------------------------------------------------------------------------------- termination


def test_sigterm_deletes_the_job(trainjob_file, tmp_path, monkeypatch):
    """A real SIGTERM to this process sets the event the launcher's wait loop watches; the loop deletes the job."""
    body = _body(trainjob_file, tmp_path, monkeypatch)
    name = body["metadata"]["name"]
    terminated = threading.Event()
    previous = signal.getsignal(signal.SIGTERM)
    try:
        on_sigterm(terminated)
        os.kill(os.getpid(), signal.SIGTERM)
        assert terminated.wait(5)
    finally:
        signal.signal(signal.SIGTERM, previous)
    api, recorded = cluster([("POST", JOBS, (201, body)), ("GET", PODS, lambda calls: (200, _rank0_pod(name))),
                             ("GET", rf"{PODS}/[^/]+/log", lambda calls: (200, b"")),
                             ("DELETE", f"{JOBS}/{name}", (200, body))])
    assert run_job(api, body, io.StringIO(), terminated) == "Terminated"
    delete = next(c for c in recorded.calls if c.method == "DELETE")
    assert delete.query["propagationPolicy"] == ["Foreground"]


def _watch(tmp_path: Path, stale: float, script: str) -> tuple[int, float, str]:
    heartbeat = tmp_path / "launcher-heartbeat"
    heartbeat.write_text("1\n")
    marker = tmp_path / "got-sigterm"
    child = textwrap.dedent(f"""
        import signal, sys, time
        def stop(*_):
            open({str(marker)!r}, "w").write("checkpointed")
            sys.exit(143)
        signal.signal(signal.SIGTERM, stop)
        {script}
    """)
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "tuneline.targets.kfp.watch", "--heartbeat", str(heartbeat),
                           "--stale", str(stale), "--poll", "0.1", "--", sys.executable, "-c", child],
                          cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    return proc.returncode, time.monotonic() - start, marker.read_text() if marker.exists() else ""


def test_a_job_pod_stops_its_command_when_the_launcher_heartbeat_stops(tmp_path):
    """No launcher beats: the wrapper SIGTERMs the command (which checkpoints) after --stale seconds."""
    from tuneline.targets.kfp.watch import STOPPED

    code, took, marker = _watch(tmp_path, 1, "time.sleep(60)")
    assert code == STOPPED and marker == "checkpointed" and took < 20


def test_a_restarted_job_pod_does_not_wait_again_once_the_launcher_was_found_gone(tmp_path):
    """The Job restarts a pod that exited (backoffLimit 6 by default): the second start must not hold the GPUs for
    another --stale period, and a new launcher clears the marker so its own job can run."""
    from tuneline.targets.kfp.watch import GONE_FILE, STOPPED

    code, _, _ = _watch(tmp_path, 1, "time.sleep(60)")
    assert code == STOPPED and (tmp_path / GONE_FILE).exists()
    (tmp_path / "got-sigterm").unlink()
    code, took, marker = _watch(tmp_path, 30, "time.sleep(60)")
    assert (code, marker) == (STOPPED, "") and took < 10
    with Heartbeat(tmp_path / "launcher-heartbeat", seconds=0.2):
        assert not (tmp_path / GONE_FILE).exists()
        code, _, _ = _watch(tmp_path, 1, "sys.exit(0)")
    assert code == 0


def test_a_beating_launcher_keeps_the_job_running_to_its_end(tmp_path):
    with Heartbeat(tmp_path / "launcher-heartbeat", seconds=0.2):
        code, took, marker = _watch(tmp_path, 1, "time.sleep(4); sys.exit(0)")
    assert (code, marker) == (0, "") and took >= 4
