"""A stand-in for an Azure ML workspace's MLflow endpoint: a real `mlflow server` behind a TLS, bearer-token front.

Run as: python -m tools.conformance.workspace_mlflow DIR   (serves until Ctrl-C; prints the job variables)

What it stands for (azureml-mlflow 1.62.0.post6, azureml/mlflow/_internal/utils.py and
_store/azureml_reststore.py, and https://learn.microsoft.com/azure/machine-learning/how-to-use-mlflow-configure-tracking):
a workspace serves the MLflow REST API over https at `/mlflow/v2.0/subscriptions/<s>/resourceGroups/<g>/providers/
Microsoft.MachineLearningServices/workspaces/<w>/api/2.0/mlflow/...`, and a job authenticates with the token Azure ML
injects, sent as `Authorization: Bearer <token>`. MLflow's own server has no bearer-token auth (its basic-auth app
takes a user name and password), so the front does what the workspace's gateway does: it checks the bearer token,
strips the workspace prefix and calls the server as the workspace's one MLflow user with basic auth. A request with
no or another token, or outside the workspace prefix, never reaches MLflow (401 / 404).

Like a workspace's registry, it answers the model-alias calls with 404 ENDPOINT_NOT_FOUND (`UNSUPPORTED`).

Artifacts: a workspace gives experiments, runs and logged models `azureml://` artifact locations, which only
azureml-mlflow's artifact repository serves (entry point `mlflow.artifact_repository: azureml`), and no image
carries it (it caps MLflow below the pinned version). This server hands out the same kind of location
(`--default-artifact-root`, `ARTIFACT_ROOT`), so a step that uploads files through MLflow fails here as it would
in a workspace; what it does not stand for is the upload itself, which nothing here can serve.

Registered model files: on a workspace register saves the model into its own output and registers that output's
datastore URI (tuneline/llm/workspace_files.py). Where this stand-in differs from a workspace there: its registry is
plain MLflow, which stores any non-local `source` as given (a workspace turns it into a model asset's path); and a
datastore is a folder the harness owns (`datastores/<name>/` in tools.conformance.azureml, named to every job in
TUNELINE_AZUREML_DATASTORES), read as a mount would be, where a job on Azure ML downloads it with azure-ai-ml.
"""

from __future__ import annotations

import base64
import http.client
import http.server
import json
import os
import re
import secrets
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tuneline.settings import TELEMETRY_OFF

from .envvars import environment

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
RESOURCE_GROUP = "tuneline-rg"
WORKSPACE = "tuneline-ws"
SCOPE = (f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}/providers/"
         f"Microsoft.MachineLearningServices/workspaces/{WORKSPACE}")
API_PREFIX = "/mlflow/v2.0" + SCOPE  # what azureml-mlflow puts before MLflow's /api/2.0/... for MLflow 2 and 3
INJECTED_PREFIX = "/mlflow/v1.0" + SCOPE  # the form of the URI Azure ML injects (Workspace.get_mlflow_tracking_uri)
USER = "workspace"
# The job token's refresh call (azureml-mlflow 1.62.0.post6, _restclient/token/operations/_runs_operations.py
# `get_token_by_experiment_id`: GET, answering {"token", "expiryTimeUtc"}).
TOKEN_PATH = re.compile(r"/history/v1\.0" + re.escape(SCOPE) + r"/experimentids/[^/]+/runs/[^/]+/token")
TOKEN_LIFETIME_S = 3600
# MLflow REST calls a workspace's registry does not serve: aliases (azure-ai-docs articles/machine-learning/
# how-to-manage-models-mlflow.md, "Support matrix for managing models with MLflow": stages and tags, no aliases).
UNSUPPORTED = ("/registered-models/alias",)
# Where a workspace's experiments keep their artifacts, in the form azureml-mlflow serves; each experiment's
# location is this plus its id, as MLflow's server makes it.
ARTIFACT_ROOT = f"azureml://workspace.api.azureml.ms/mlflow/v2.0{SCOPE}/experiments"
START_TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def reachable_address() -> str:
    """This machine's own IPv4 address on its default route: what a container on a bridge network reaches the host
    by, as a compute node reaches its workspace over the network (the host's 127.0.0.1 it cannot reach). Loopback
    when the machine has no route out, where jobs then share the host's network instead."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # a UDP connect sends nothing: it only picks the route's source address
            return probe.getsockname()[0]
        except OSError:
            return "127.0.0.1"


def _certificate(folder: Path, address: str) -> tuple[Path, Path]:
    """A self-signed certificate for `address`; the job's process trusts it through MLFLOW_TRACKING_SERVER_CERT_PATH
    (an Azure ML endpoint has a public certificate, which needs no such variable)."""
    cert, key = folder / "front.crt", folder / "front.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    f"/CN={address}", "-addext", f"subjectAltName=IP:{address}", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    return cert, key


class _Front(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address, token: str, upstream: int, basic: str) -> None:
        super().__init__(address, _Handler)
        self.token, self.upstream, self.basic = token, upstream, basic
        self.seen: list[tuple[str, str, int]] = []  # (method, path, status) of every request


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Front
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _answer(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for key, value in (headers or {"Content-Type": "application/json"}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.server.seen.append((self.command, self.path, status))

    def _relay(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Authorization") != f"Bearer {self.server.token}":
            self._answer(401, b'{"error_code": "UNAUTHENTICATED", "message": "bearer token required"}')
            return
        if self.command == "GET" and TOKEN_PATH.fullmatch(self.path.split("?", 1)[0]):
            # The run-history token call azureml-mlflow makes before the job's token expires: a new token, and
            # the old one refused from now on, so a process that keeps the old one fails here.
            self.server.token = secrets.token_urlsafe(24)
            expiry = datetime.now(UTC) + timedelta(seconds=TOKEN_LIFETIME_S)
            self._answer(200, json.dumps({"token": self.server.token,
                                          "expiryTimeUtc": expiry.isoformat()}).encode())
            return
        if not self.path.startswith(API_PREFIX + "/"):
            self._answer(404, b'{"error_code": "ENDPOINT_NOT_FOUND", "message": "not a workspace MLflow path"}')
            return
        if self.path[len(API_PREFIX):].split("?", 1)[0].endswith(UNSUPPORTED):
            self._answer(404, b'{"error_code": "ENDPOINT_NOT_FOUND", "message": "not supported by a workspace"}')
            return
        headers = {k: v for k, v in self.headers.items()
                   if k.lower() not in ("authorization", "host", "content-length", "connection")}
        headers["Authorization"] = f"Basic {self.server.basic}"
        conn = http.client.HTTPConnection("127.0.0.1", self.server.upstream, timeout=300)
        try:
            conn.request(self.command, self.path[len(API_PREFIX):], body=body, headers=headers)
            reply = conn.getresponse()
            data = reply.read()
            passed = {k: v for k, v in reply.getheaders()
                      if k.lower() not in ("content-length", "transfer-encoding", "connection")}
            self._answer(reply.status, data, passed)
        finally:
            conn.close()

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _relay


@dataclass
class WorkspaceMlflow:
    """The server, the front, and the variables Azure ML would inject into a job of this workspace."""

    folder: Path
    token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    password: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    # Where jobs reach the front: the only port of this stand-in off loopback (the MLflow server behind it listens
    # on 127.0.0.1); the harness runs jobs on a bridge network unless this is loopback.
    address: str = field(default_factory=reachable_address)
    server: subprocess.Popen | None = None
    front: _Front | None = None
    cert: Path | None = None

    @property
    def port(self) -> int:
        assert self.front is not None
        return self.front.server_address[1]

    @property
    def current_token(self) -> str:
        """The token the endpoint takes now: the job's, until a refresh call replaced it."""
        return self.front.token if self.front is not None else self.token

    @property
    def injected_uri(self) -> str:
        return f"azureml://{self.address}:{self.port}{INJECTED_PREFIX}"

    @property
    def rest_uri(self) -> str:
        return f"https://{self.address}:{self.port}{API_PREFIX}"

    def start(self) -> WorkspaceMlflow:
        self.folder.mkdir(parents=True, exist_ok=True)
        upstream = _free_port()
        config = self.folder / "basic_auth.ini"
        config.write_text("[mlflow]\ndefault_permission = READ\n"
                          f"database_uri = sqlite:///{self.folder / 'auth.db'}\n"
                          f"admin_username = {USER}\nadmin_password = {self.password}\n"
                          "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        env = dict(os.environ, **TELEMETRY_OFF, MLFLOW_AUTH_CONFIG_PATH=str(config),
                   MLFLOW_FLASK_SERVER_SECRET_KEY=secrets.token_hex(16))
        env.pop("MLFLOW_TRACKING_URI", None)
        log = (self.folder / "server.log").open("wb")
        self.server = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--app-name", "basic-auth", "--host", "127.0.0.1",
             "--port", str(upstream), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.folder / 'mlflow.db'}",
             "--default-artifact-root", ARTIFACT_ROOT],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        basic = base64.b64encode(f"{USER}:{self.password}".encode()).decode()
        cert, key = _certificate(self.folder, self.address)
        self.cert = cert
        self.front = _Front((self.address, 0), self.token, upstream, basic)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.front.socket = context.wrap_socket(self.front.socket, server_side=True)
        threading.Thread(target=self.front.serve_forever, daemon=True).start()
        self._wait(upstream)
        return self

    def _wait(self, upstream: int) -> None:
        deadline = time.time() + START_TIMEOUT_S
        while time.time() < deadline:
            if self.server is not None and self.server.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(self.folder / 'server.log').read_text()[-2000:]}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", upstream, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.5)
        raise RuntimeError(f"mlflow server did not answer within {START_TIMEOUT_S}s")

    @contextmanager
    def client(self) -> Iterator[Any]:
        """An MlflowClient on the https endpoint with the token, as a job has once its URI is rewritten (MLflow
        reads the token and certificate variables at each request, so they are set only meanwhile)."""
        from mlflow.tracking import MlflowClient

        with environment({"MLFLOW_TRACKING_SERVER_CERT_PATH": str(self.cert),
                          "MLFLOW_TRACKING_TOKEN": self.current_token}):
            yield MlflowClient(tracking_uri=self.rest_uri, registry_uri=self.rest_uri)

    def job_run(self, experiment: str, name: str) -> tuple[str, str]:
        """The experiment id and run id Azure ML creates for a job before it starts (MLFLOW_RUN_ID)."""
        with self.client() as client:
            found = client.get_experiment_by_name(experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(experiment)
            return experiment_id, client.create_run(experiment_id, run_name=name).info.run_id

    def job_env(self, experiment_id: str, run_id: str) -> dict[str, str]:
        """The variables a job of this workspace gets: the azureml:// URI, the token, its run and experiment."""
        return {"MLFLOW_TRACKING_URI": self.injected_uri, "MLFLOW_TRACKING_TOKEN": self.current_token,
                "MLFLOW_RUN_ID": run_id, "MLFLOW_EXPERIMENT_ID": experiment_id,
                "AZUREML_RUN_ID": run_id, "AZUREML_RUN_TOKEN": self.current_token,
                "AZUREML_RUN_TOKEN_EXPIRY": str(int(time.time()) + TOKEN_LIFETIME_S),
                "AZUREML_ARM_SUBSCRIPTION": SUBSCRIPTION, "AZUREML_ARM_RESOURCEGROUP": RESOURCE_GROUP,
                "AZUREML_ARM_WORKSPACE_NAME": WORKSPACE,
                # only because the stand-in's certificate is self-signed; a workspace's is public
                "MLFLOW_TRACKING_SERVER_CERT_PATH": str(self.cert)}

    def stop(self) -> None:
        if self.front is not None:
            self.front.shutdown()
            self.front.server_close()
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, 15)
            try:
                self.server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.server.pid, 9)
                self.server.wait()

    def __enter__(self) -> WorkspaceMlflow:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    folder = Path((argv or sys.argv[1:] or ["build/workspace-mlflow"])[0])
    with WorkspaceMlflow(folder) as ws:
        experiment_id, run_id = ws.job_run("tuneline", "job")
        for key, value in ws.job_env(experiment_id, run_id).items():
            print(f"export {key}={value}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    raise SystemExit(main())
