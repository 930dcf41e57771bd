"""The Azure ML deployment run as Azure ML runs a custom container: the serve image's own command (its Dockerfile's
CMD; a deployment cannot pass arguments), the deployment's environment variables, the registered repository folder
mounted read-only under AZUREML_MODEL_DIR keeping its folder name, and the liveness, readiness and scoring routes
of the deployment's inference_config asked on the ports they name. A real tritonserver from the serve venv serves a
repository write_repository wrote, with an adapter on its base. The server runs in a network namespace of its own,
so the routes' own port (8080) is free whatever else this machine runs; the probes enter that namespace.

Not run here: Azure ML itself (no workspace), the serve image (its vLLM is the CUDA build) and a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tuneline.serving.deploy import azureml
from tuneline.serving.deploy.policy import RolloutPolicy
from tuneline.serving.repository import RepositorySpec, stream_model_name, write_repository

REPO = Path(__file__).resolve().parents[3]
DOCKERFILE = REPO / "environments" / "serve" / "Dockerfile"
SERVE_IMAGE = "myacr.azurecr.io/tuneline/serve:0.1.0"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PROBE = """
import sys, urllib.request, urllib.error
method, url, body = sys.argv[1], sys.argv[2], sys.argv[3]
req = urllib.request.Request(url, data=body.encode() or None, method=method,
                             headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(req, timeout=120) as resp:
        print(resp.status); print(resp.read().decode())
except urllib.error.HTTPError as exc:
    print(exc.code); print(exc.read().decode())
except OSError as exc:
    print(0); print(exc)
"""


def image_command() -> list[str]:
    """The serve image's CMD (exec form)."""
    lines = [line for line in DOCKERFILE.read_text().splitlines() if line.startswith("CMD ")]
    assert len(lines) == 1, lines
    return json.loads(lines[0][len("CMD "):])


def probe(pid: int, method: str, port: int, path: str, body: str = "") -> tuple[int, str]:
    """An HTTP request from inside the server's network namespace."""
    proc = subprocess.run(["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, "-c", PROBE, method,
                           f"http://127.0.0.1:{port}{path}", body], capture_output=True, text=True, timeout=150)
    status, _, text = proc.stdout.partition("\n")
    assert status.strip(), proc.stderr
    return int(status), text


def test_the_deployments_container_answers_its_routes_on_the_azureml_mount(serve_venv, tiny_model: Path,
                                                                           tiny_adapter: Path, tmp_path: Path):
    out = tmp_path / "azureml"
    source = tmp_path / "written"
    write_repository(tiny_adapter, source, RepositorySpec(adapters="shared"), base_model_dir=tiny_model,
                     adapter="m-1")
    cpu = azureml.AzureMLOptions(image=SERVE_IMAGE, instance_type="Standard_DS3_v2")
    paths = azureml.write(out, cpu, RolloutPolicy(),
                          repository_dir=source, model_name="tuneline-llm", model_version=4,
                          model_uri="models:/tuneline-llm/4")
    azureml.load_check(paths)
    deployment = yaml.safe_load(paths["deployment"].read_text())
    routes = deployment["environment"]["inference_config"]
    registered = (paths["deployment"].parent / deployment["model"]["path"]).resolve()
    # Where Azure ML puts it: /var/azureml-app/azureml-models/<model>/<version>/<registered folder's name>, here
    # under tmp_path, read-only, in a mount namespace of the server's own (file modes would not stop root).
    model_dir = tmp_path / "var" / "azureml-app" / "azureml-models" / deployment["model"]["name"] / "1"
    (model_dir / registered.name).mkdir(parents=True)
    command = image_command()
    assert command[:3] == ["python", "-m", "tuneline.serving.runtime"]
    cmd = [str(serve_venv.python), *command[1:]]
    setup = ('ip link set lo up && mount --bind "$0" "$1" && mount -o remount,bind,ro "$1" && shift '
             '&& exec "$@"')
    env = {**os.environ, **deployment["environment_variables"], "AZUREML_MODEL_DIR": str(model_dir),
           "PYTHONPATH": str(REPO)}
    server = subprocess.Popen(["unshare", "--net", "--mount", "sh", "-c", setup, str(registered),
                               str(model_dir / registered.name), *cmd], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        live, ready, scoring = (routes[k] for k in ("liveness_route", "readiness_route", "scoring_route"))
        deadline = time.monotonic() + 240
        while True:
            time.sleep(1)
            assert server.poll() is None, server.stdout.read().decode()[-3000:]
            if probe(server.pid, "GET", ready["port"], ready["path"])[0] == 200:
                break
            assert time.monotonic() < deadline, "not ready in 240 s"
        assert probe(server.pid, "GET", live["port"], live["path"])[0] == 200
        assert scoring["path"] == f"/v2/models/{stream_model_name('tuneline-llm')}/generate"
        body = json.dumps({"text_input": "The printer is offline", "max_new_tokens": 4, "adapter": "m-1"})
        status, text = probe(server.pid, "POST", scoring["port"], scoring["path"], body)
        assert status == 200, text
        assert json.loads(text)["finish_reason"] in ("stop", "length")
        # An adapter the repository does not hold is refused by name, so `adapter` did reach the engine.
        bad = json.dumps({"text_input": "hi", "max_new_tokens": 2, "adapter": "nope"})
        assert probe(server.pid, "POST", scoring["port"], scoring["path"], bad)[0] != 200
        server.terminate()
        assert server.wait(timeout=60) == 0
        log = server.stdout.read().decode()
        assert f"serving the model repository {model_dir / registered.name}" in log
        assert "engine.json not written (Read-only file system)" in log
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
