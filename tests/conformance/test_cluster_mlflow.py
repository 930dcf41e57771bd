"""The KFP harness's MLflow is the cluster's: the Deployment's own server and arguments, basic auth, and a login each
step gets only where its compiled spec reads the Secret.

The server tests need root, podman and the control image (`make images`), so they are in the heavy tier, which
builds the images first (`make test-heavy`); without them they are skipped.
"""

import base64
import http.client
import json
from pathlib import Path

import pytest
import yaml

from tools.conformance.__main__ import REPO
from tools.conformance.cluster_mlflow import (
    CONFIG_MAP,
    DEPLOYMENT,
    NAMESPACE_FROM,
    PIPELINE_USER,
    SERVICE,
    ClusterMlflow,
    ServerSpec,
    read_config_map,
)
from tools.conformance.kfp import IMAGE_REGISTRY, IMAGE_TAG, KfpRunBroken
from tuneline.graph import build_graph
from tuneline.spec import load_pipeline
from tuneline.targets.build import compile_graph
from tuneline.targets.kfp.options import DEFAULT_MLFLOW_SECRET, KfpOptions
from tuneline.targets.options import CompileOptions

FINETUNE = REPO / "pipelines" / "finetune.yaml"
CONTROL = f"{IMAGE_REGISTRY}/control:{IMAGE_TAG}"
URI = "MLFLOW_TRACKING_URI"
LOGIN = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


def _package(tmp_path: Path, kfp: KfpOptions | None = None) -> Path:
    out = compile_graph(build_graph(load_pipeline(FINETUNE)).for_target("kfp"), ("kfp",), tmp_path,
                        CompileOptions(platform={"kfp": kfp or KfpOptions()}))
    return out.folder / "kfp" / "pipeline.yaml"


def _container_env(package: Path) -> dict[str, dict[str, str]]:
    spec = next(yaml.safe_load_all(package.read_text()))
    return {label: {e["name"]: e["value"] for e in executor["container"].get("env", [])}
            for label, executor in spec["deploymentSpec"]["executors"].items() if "container" in executor}


def _objects(tmp_path: Path) -> ClusterMlflow:
    """The objects of a started server, without the server: what pods would read."""
    mlflow = ClusterMlflow(engine=None, folder=tmp_path, repo=REPO)  # type: ignore[arg-type]
    mlflow.config_maps["tuneline-mlflow"] = {URI: "http://mlflow.tuneline.svc.cluster.local:5000"}
    mlflow.secrets[DEFAULT_MLFLOW_SECRET] = dict(zip(LOGIN, (PIPELINE_USER, "pw"), strict=True))
    return mlflow


def test_the_server_runs_the_deployments_command_and_host_list():
    spec = ServerSpec.read(REPO, "127.0.0.1:41234")
    assert spec.image == CONTROL
    assert spec.command[:2] == ["mlflow", "server"] and "--app-name=basic-auth" in spec.command
    # $(VAR) expanded as the kubelet expands it, with the Blob container replaced by the server's folder
    assert "--artifacts-destination=/var/lib/tuneline-mlflow/artifacts" in spec.command
    allowed = spec.env["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert "mlflow.tuneline.svc.cluster.local:5000" in allowed  # what the ConfigMap's URI sends
    assert "127.0.0.1:41234" in allowed and "localhost:5000" in allowed
    assert spec.env["MLFLOW_BACKEND_STORE_URI"].startswith("sqlite:///")


def test_a_deployment_value_from_an_unknown_secret_is_named(tmp_path):
    doc = yaml.safe_load((REPO / DEPLOYMENT).read_text())
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["env"].append({"name": "NEW_TOKEN", "valueFrom": {"secretKeyRef": {"name": "x", "key": "y"}}})
    (tmp_path / DEPLOYMENT).parent.mkdir(parents=True)
    (tmp_path / DEPLOYMENT).write_text(yaml.safe_dump(doc))
    with pytest.raises(KfpRunBroken, match="NEW_TOKEN from secretKeyRef"):
        ServerSpec.read(tmp_path, "127.0.0.1:1")


def test_each_step_gets_the_configmap_uri_and_the_secret_login(tmp_path):
    package = _package(tmp_path / "out")
    given = _objects(tmp_path).give_pods_their_env(package)
    env = _container_env(package)
    assert set(given) == set(env)
    steps = [f"exec-{step}" for step in build_graph(load_pipeline(FINETUNE)).order]
    for label in steps:  # every step reaches MLflow; the fingerprint helpers do not
        values = env[label]
        assert values[URI] == "http://mlflow.tuneline.svc.cluster.local:5000", label
        assert (values[LOGIN[0]], values[LOGIN[1]]) == (PIPELINE_USER, "pw"), label


def test_a_step_compiled_without_the_secret_gets_no_login(tmp_path):
    package = _package(tmp_path / "out", KfpOptions(mlflow_secret=None))
    _objects(tmp_path).give_pods_their_env(package)
    env = _container_env(package)
    for step in build_graph(load_pipeline(FINETUNE)).order:
        assert URI in env[f"exec-{step}"] and LOGIN[0] not in env[f"exec-{step}"], step


def test_a_secret_nothing_creates_stops_the_run_naming_it(tmp_path):
    package = _package(tmp_path / "out", KfpOptions(mlflow_secret="mlflow-from-csi"))
    with pytest.raises(KfpRunBroken, match=r"exec-\w+: reads Secret 'mlflow-from-csi', which nothing creates"):
        _objects(tmp_path).give_pods_their_env(package)


@pytest.fixture(scope="module")
def server(image_engine, tmp_path_factory):
    with ClusterMlflow.start(image_engine, tmp_path_factory.mktemp("cluster-mlflow"), REPO) as mlflow:
        yield image_engine, mlflow


def _pod(engine, mlflow, env: dict[str, str]) -> tuple[int, str]:
    """A step's container: asks the Service named in the ConfigMap to create an experiment."""
    probe = ("import mlflow, sys\n"
             "try:\n    print(mlflow.MlflowClient().create_experiment('from-a-pod'))\n"
             "except Exception as exc:\n    print(type(exc).__name__, exc); sys.exit(3)\n")
    client = engine.client()
    handle = client.containers.run(f"{IMAGE_REGISTRY}/train-cpu:{IMAGE_TAG}", ["python", "-c", probe],
                                   detach=True, environment=env, extra_hosts=mlflow.hosts)
    try:
        code = handle.wait(timeout=120)["StatusCode"]
        return code, handle.logs().decode(errors="replace")
    finally:
        handle.remove(force=True)


@pytest.mark.slow
@pytest.mark.heavy
def test_a_pod_with_the_secrets_login_creates_and_one_without_gets_401(server):
    engine, mlflow = server
    uri = mlflow.config_maps["tuneline-mlflow"][URI]
    code, logs = _pod(engine, mlflow, {URI: uri, **mlflow.secrets[DEFAULT_MLFLOW_SECRET]})
    assert code == 0, logs
    code, logs = _pod(engine, mlflow, {URI: uri})
    assert code == 3 and "401" in logs, logs


@pytest.mark.slow
@pytest.mark.heavy
def test_the_server_refuses_a_host_it_does_not_list(server):
    _, mlflow = server
    conn = http.client.HTTPConnection("127.0.0.1", mlflow.host_port, timeout=10)
    conn.request("GET", "/api/2.0/mlflow/experiments/search?max_results=1", headers={"Host": "evil.example:5000"})
    assert conn.getresponse().status == 403
    conn = http.client.HTTPConnection("127.0.0.1", mlflow.host_port, timeout=10)
    conn.request("GET", "/api/2.0/mlflow/experiments/search?max_results=1")
    assert conn.getresponse().status == 401  # a listed host, no login
    user, password = mlflow.secrets[DEFAULT_MLFLOW_SECRET].values()
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    conn = http.client.HTTPConnection("127.0.0.1", mlflow.host_port, timeout=10)
    conn.request("GET", "/api/2.0/mlflow/experiments/search?max_results=5",
                 headers={"Authorization": f"Basic {token}"})
    reply = conn.getresponse()
    # NO_PERMISSIONS (docs/aks.md step 3): the pipeline's user sees only what it created
    assert reply.status == 200
    names = {e["name"] for e in json.loads(reply.read()).get("experiments", [])}
    assert "Default" not in names


def _repo_copy(tmp_path: Path) -> Path:
    for path in (DEPLOYMENT, SERVICE, NAMESPACE_FROM, CONFIG_MAP):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text((REPO / path).read_text())
    return tmp_path


@pytest.mark.parametrize("uri", ["http://mlflow:5000", "http://mlflow.tuneline.svc.cluster.local:8080"])
def test_a_configmap_uri_a_pod_in_kubeflow_cannot_reach_is_refused(tmp_path, uri):
    # `mlflow` resolves only inside the tuneline namespace, and the Service listens on its own port
    repo = _repo_copy(tmp_path)
    doc = yaml.safe_load((repo / CONFIG_MAP).read_text())
    doc["data"][URI] = uri
    (repo / CONFIG_MAP).write_text(yaml.safe_dump(doc))
    with pytest.raises(KfpRunBroken, match="a pod in another namespace reaches the Service"):
        read_config_map(repo)
    assert read_config_map(REPO)[1] == "mlflow.tuneline.svc.cluster.local"


def test_the_secret_name_parameter_wins_over_the_plain_name_as_in_kfps_driver(tmp_path):
    package = _package(tmp_path / "out")
    docs = list(yaml.safe_load_all(package.read_text()))
    for config in docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values():
        for entry in config.get("secretAsEnv", []):
            entry["secretNameParameter"] = {"runtimeValue": {"constant": "another-login"}}
    package.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    with pytest.raises(KfpRunBroken, match="reads Secret 'another-login'"):
        _objects(tmp_path).give_pods_their_env(package)


def test_the_server_runs_as_the_pods_security_context_says():
    spec = ServerSpec.read(REPO, "127.0.0.1:1")
    assert spec.user == "10001:10001" and spec.read_only_root and spec.cap_drop == ["ALL"]
    assert spec.writable == ["/tmp"]  # its one emptyDir
