"""The serve image's cluster entry (tuneline.serving.runtime) run as KServe's ServingRuntime runs it: a real
tritonserver on a repository the deploy step writes, on the ports the runtime declares, ended by SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tuneline.serving import process
from tuneline.serving.repository import RepositorySpec, stream_model_name, write_repository

REPO = Path(__file__).resolve().parents[2]
RUNTIME = REPO / "k8s" / "base" / "serving" / "servingruntime.yaml"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def test_the_runtime_entry_serves_a_repository_on_kserves_ports(serve_venv, tiny_model: Path, tiny_adapter: Path,
                                                                  tmp_path: Path) -> None:
    repo = tmp_path / "models"
    write_repository(tiny_adapter, repo, RepositorySpec(adapters="shared"), base_model_dir=tiny_model,
                     adapter="m-1")
    http, grpc, metrics = process.free_port(), process.free_port(), process.free_port()
    # The ServingRuntime's own command and arguments, with this machine's ports and folder.
    container = yaml.safe_load(RUNTIME.read_text())["spec"]["containers"][0]
    args = [a for a in container["args"] if not a.startswith(("--model-repository", "--http-port", "--grpc-port"))]
    cmd = [str(serve_venv.python), *container["command"][1:], *args, f"--model-repository={repo}",
           f"--http-port={http}", f"--grpc-port={grpc}", f"--metrics-port={metrics}"]
    # KServe mounts the downloaded repository read-only into the server's container: here a read-only bind mount
    # in a mount namespace of the server's own (file modes would not stop root, which the test may run as).
    read_only = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" && exec "$@"'
    server = subprocess.Popen(["unshare", "--mount", "sh", "-c", read_only, str(repo), *cmd], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{http}"
        deadline = time.monotonic() + 240
        while True:
            try:
                with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, server.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "not ready in 240 s"
            time.sleep(0.5)
        body = json.dumps({"text_input": "The printer is offline", "max_new_tokens": 4, "adapter": "m-1"}).encode()
        req = urllib.request.Request(f"{base}/v2/models/{stream_model_name('tuneline-llm')}/generate", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=120) as resp:
            assert json.loads(resp.read())["finish_reason"] in ("stop", "length")
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics}/metrics", timeout=10) as resp:
            assert b"nv_inference_request_success" in resp.read()
        assert not process.port_is_free(grpc)  # gRPC listens too (KServe's grpc-v2 protocol)
        assert not (repo / stream_model_name("tuneline-llm") / "1" / "engine.json").exists()
        # The entry replaced itself with tritonserver: the kubelet's SIGTERM reaches the server, which exits.
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0
        assert "engine.json not written (Read-only file system)" in server.stdout.read().decode()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
