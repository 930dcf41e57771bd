"""MLflow's Host-header and CORS allow-lists admit every name the cluster's clients, the docs' port-forward and the
optional ingress use, and nothing else: checked with MLflow's own matcher, and (slow) against a real
`mlflow server --app-name basic-auth` started with the rendered Deployment's arguments and environment."""

from __future__ import annotations

import http.client
import os
import re
import socket
import subprocess
import sys
import time
from base64 import b64encode
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from mlflow.server.security_utils import is_allowed_host_header, should_block_cors_request

from tests.cluster.docs_commands import commands
from tuneline.cluster.render import render

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "aks.md"


def overlay_with_ingress(tmp_path: Path) -> Path:
    """An overlay = prod + components/mlflow-ingress, built in tmp_path over links to the repository's k8s/."""
    for part in ("addons", "base", "kubeflow", "components", "overlays/prod"):
        (tmp_path / "k8s" / part).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "k8s" / part).symlink_to(REPO / "k8s" / part)
    overlay = tmp_path / "k8s" / "overlays" / "ingress"
    overlay.mkdir(parents=True)
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(
        {"resources": ["../prod"], "components": ["../../components/mlflow-ingress"]}))
    return overlay


def container_env(container: dict) -> dict[str, str]:
    """Literal env values with $(VAR) expanded from earlier entries, as the kubelet does."""
    out: dict[str, str] = {}
    for entry in container.get("env") or []:
        if "value" in entry:
            out[entry["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                                        lambda m: out.get(m.group(1), m.group(0)), str(entry["value"]))
    return out


def mlflow_container(objects: list[dict]) -> dict:
    deployment = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow")
    return deployment["spec"]["template"]["spec"]["containers"][0]


def allowed_hosts(container: dict) -> list[str]:
    args = [a for a in container.get("args", []) if a.startswith("--allowed-hosts")]
    value = args[-1].split("=", 1)[1] if args else container_env(container).get("MLFLOW_SERVER_ALLOWED_HOSTS", "")
    return [h.strip() for h in value.split(",") if h.strip()]


def client_hosts(objects: list[dict]) -> set[str]:
    """Host headers MLflow's clients send: every MLFLOW_TRACKING_URI a manifest sets."""
    found = set()
    for o in objects:
        values = list((o.get("data") or {}).values()) if o["kind"] == "ConfigMap" else []
        spec = o.get("spec") or {}
        template = (spec.get("jobTemplate") or {}).get("spec", spec).get("template") or {}
        for c in (template.get("spec") or {}).get("containers") or []:
            values += [container_env(c).get("MLFLOW_TRACKING_URI", "")]
        found |= {urlsplit(v).netloc for v in values if isinstance(v, str) and v.startswith("http")}
    return found


def docs_port_forward_hosts() -> set[str]:
    """The MLflow URL the docs' commands use through `kubectl port-forward svc/mlflow LOCAL:5000`."""
    text = DOCS.read_text()
    ports = re.findall(r"kubectl -n tuneline port-forward svc/mlflow (\d+):5000", text)
    uris = set(re.findall(r"(?:tracking_uri=|MLFLOW_TRACKING_URI=)\"?http://(localhost:\d+)", text))
    assert ports and uris, "docs/aks.md no longer port-forwards MLflow: update this test"
    assert uris <= {f"localhost:{p}" for p in ports}, "an MLflow URL in the docs has no port-forward behind it"

    return uris


@pytest.mark.parametrize("overlay", ["dev", "prod", "prod+ingress"])
def test_every_name_clients_use_is_an_allowed_host(overlay: str, tmp_path: Path) -> None:
    folder = overlay_with_ingress(tmp_path) if overlay == "prod+ingress" else REPO / "k8s" / "overlays" / overlay
    objects = [r.obj for r in render(folder)]
    container = mlflow_container(objects)
    hosts = allowed_hosts(container)
    assert "*" not in hosts and not is_allowed_host_header(hosts, "rebind.attacker.example")
    wanted = client_hosts(objects) | docs_port_forward_hosts()
    ingress = [rule["host"] for o in objects if o["kind"] == "Ingress" for rule in o["spec"]["rules"]
               if any(p["backend"]["service"]["name"] == "mlflow" for p in rule["http"]["paths"])]
    assert client_hosts(objects) and (overlay != "prod+ingress" or ingress)
    refused = sorted(h for h in wanted | set(ingress) if not is_allowed_host_header(hosts, h))
    assert refused == [], f"{overlay}: MLflow would answer 403 to Host {refused}"
    origins = container_env(container).get("MLFLOW_SERVER_CORS_ALLOWED_ORIGINS")
    blocked = [h for h in ingress if should_block_cors_request(
        f"https://{h}", "POST", origins.split(",") if origins else None)]
    assert blocked == [], f"{overlay}: the UI at {blocked} could not change anything (CORS)"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(port: int, host: str, method: str = "GET", path: str = "/api/2.0/mlflow/experiments/search?max_results=1",
            auth: str | None = None, body: str | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Host": host, "Content-Type": "application/json"}
    if auth:
        headers["Authorization"] = "Basic " + b64encode(auth.encode()).decode()
    conn.request(method, path, body=body, headers=headers)
    status = conn.getresponse().status
    conn.close()
    return status


@pytest.mark.slow
@pytest.mark.heavy
def test_real_mlflow_server_with_the_rendered_settings_admits_the_docs_port_forward(tmp_path: Path) -> None:
    objects = [r.obj for r in render(overlay_with_ingress(tmp_path / "tree"))]
    container = mlflow_container(objects)
    env = {**os.environ, **container_env(container)}
    auth_ini = tmp_path / "auth.ini"
    auth_ini.write_text(f"[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = sqlite:///{tmp_path}/auth.db\n"
                        "admin_username = admin\nadmin_password = not-the-real-one\n"
                        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
    port = _free_port()
    # The docs' user-creation script talks to localhost:5000 through the port-forward; here it talks to this port.
    env["MLFLOW_SERVER_ALLOWED_HOSTS"] += f",localhost:{port}"
    log = (tmp_path / "server.log").open("w")
    args = [a for a in container["args"] if not a.startswith(("--host", "--port", "--artifacts-destination"))]
    env.update(MLFLOW_AUTH_CONFIG_PATH=str(auth_ini), MLFLOW_BACKEND_STORE_URI=f"sqlite:///{tmp_path}/mlflow.db",
               MLFLOW_AUTH_ADMIN_PASSWORD="not-the-real-one", MLFLOW_FLASK_SERVER_SECRET_KEY="k" * 32)
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", *args, "--host", "127.0.0.1", "--port", str(port),
         f"--artifacts-destination={tmp_path / 'artifacts'}"],
        env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if _status(port, "localhost:5000", path="/health") == 200:
                    break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(1)
        assert _status(port, "rebind.attacker.example") == 403
        for host in ["localhost:5000", "mlflow.tuneline.svc.cluster.local:5000", "mlflow.tuneline.example.com"]:
            assert _status(port, host) == 401, host  # past the Host check: now it asks for credentials
        # The docs' user creation (step 10), run as written against this server: both users, then the grant.
        script = next(c.heredoc for c in commands(DOCS.read_text()) if "create_user" in c.heredoc)
        logins = {"RETRAIN_PASS": "retrain-pw-of-some-length", "PIPELINE_PASS": "pipeline-pw-of-some-length"}
        done = subprocess.run([sys.executable, "-"], input=script.replace("localhost:5000", f"localhost:{port}"),
                              env={**os.environ, **logins, "MLFLOW_TRACKING_USERNAME": "admin",
                                   "MLFLOW_TRACKING_PASSWORD": "not-the-real-one"},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        for user, password in (("tuneline-retrain", logins["RETRAIN_PASS"]),
                               ("tuneline-pipeline", logins["PIPELINE_PASS"])):
            assert _status(port, "localhost:5000", auth=f"{user}:{password}") == 200, user
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
