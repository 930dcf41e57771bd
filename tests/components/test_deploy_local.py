"""deploy --target local on a real Triton server behind the auth proxy: blue/green to the champion, a failed
smoke test rolls back with the previous version still answering, and an unchanged champion is left alone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.components.test_deploy import make_adapter_in
from tests.components.tuned_fixtures import REPO, make_metrics, run_register, step_env

pytestmark = [pytest.mark.slow, pytest.mark.heavy, pytest.mark.timeout(1200)]


@pytest.fixture
def serving(tmp_path: Path):
    from tuneline.serving.env import ServeEnvError, ensure_serve_venv

    venv = os.environ.get("TUNELINE_SERVE_VENV") or str(REPO / ".tuneline" / "serve-venv")
    try:
        ensure_serve_venv(Path(venv))
    except ServeEnvError as exc:
        pytest.skip(f"serve venv cannot be created (pip could not install nvidia-pytriton & co): {exc}")
    env = step_env(tmp_path / "home")
    env["TUNELINE_SERVE_VENV"] = venv
    state = tmp_path / "home" / "serve"
    yield env, state
    from tuneline.serving.local import stop_all

    stop_all(state)


def _deploy(env: dict[str, str], out: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    cmd = [
        sys.executable,
        "-m",
        "components.deploy",
        "--model-uri",
        "models:/tuneline-llm/1",
        "--target",
        "local",
        "--endpoint-out",
        str(out / "endpoint"),
        "--status-out",
        str(out / "status"),
        "--deployment-out",
        str(out / "deployment.json"),
        "--out",
        str(out / "files"),
        *args,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert (out / "deployment.json").is_file(), proc.stderr[-3000:]
    return proc, json.loads((out / "deployment.json").read_text())


def _generate(record: dict) -> dict:
    token = Path(record["token_file"]).read_text().strip()
    request = urllib.request.Request(
        f"{record['endpoint']}/v1/generate",
        method="POST",
        data=json.dumps({"prompt": "hello", "max_new_tokens": 4}).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=120) as resp:
        return json.loads(resp.read())


def test_local_blue_green_rollback_and_unchanged(serving, tmp_path: Path):
    env, state = serving
    adapter = make_adapter_in(env, tmp_path / "model")
    run_register(adapter, make_metrics(tmp_path / "m1.json", tuned=0.5), tmp_path / "r1", env)

    proc, first = _deploy(env, tmp_path / "d1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert first["status"] == "deployed" and first["model_uri"] == "models:/tuneline-llm/1"
    assert (tmp_path / "d1" / "endpoint").read_text() == first["endpoint"]
    assert "curl -s -X POST" in proc.stdout and first["token_file"] in proc.stdout
    assert isinstance(_generate(first)["text"], str)

    # v2 becomes champion, but its smoke test fails: the proxy must keep v1 serving.
    run_register(adapter, make_metrics(tmp_path / "m2.json", tuned=0.9), tmp_path / "r2", env)
    proc, second = _deploy(env, tmp_path / "d2", "--smoke-expect", "^never matches$")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert second["status"] == "rolled_back" and second["model_uri"] == "models:/tuneline-llm/2"
    assert "smoke test" in second["error"] and second["endpoint"] == first["endpoint"]
    assert (tmp_path / "d2" / "status").read_text() == "rolled_back"
    assert json.loads((state / "deployed-model.json").read_text())["model_uri"] == "models:/tuneline-llm/1"
    assert isinstance(_generate(second)["text"], str)

    # Without the impossible expectation v2 deploys; a re-run leaves it serving untouched.
    proc, third = _deploy(env, tmp_path / "d3")
    assert third["status"] == "deployed" and third["model_uri"] == "models:/tuneline-llm/2", proc.stderr[
        -2000:
    ]
    proc, fourth = _deploy(env, tmp_path / "d4")
    assert fourth["status"] == "unchanged" and fourth["endpoint"] == third["endpoint"]
    assert isinstance(_generate(fourth)["text"], str)
