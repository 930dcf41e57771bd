"""The failures a newcomer meets on the way to a cluster say what to do next in a line or two, no traceback.

The KFP host is a closed local port (nothing listens on port 9 here) and Azure ML has no credentials on this
machine (no `az` CLI, no service principal variables): both are the real SDK clients failing for real, up to the
network boundary this machine has.
"""

from __future__ import annotations

import json
import socket

import pytest

from .test_own_data import FINETUNE


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # released on close: nothing listens there afterwards


def test_an_unreachable_kfp_host(user):
    host = f"http://127.0.0.1:{_closed_port()}"
    result = user("submit", FINETUNE, "--target", "kfp", "--host", host)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "MaxRetryError" not in result.stderr
    assert f"cannot reach {host}: check --host" in result.stderr and "port-forward" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2, result.stderr


@pytest.mark.slow
def test_azure_ml_without_a_login(user):
    env = {name: None for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET", "AZURE_USERNAME",
                                 "IDENTITY_ENDPOINT", "MSI_ENDPOINT")}
    result = user("submit", FINETUNE, "--target", "azureml", "--subscription", "00000000-0000-0000-0000-000000000000",
                  "--resource-group", "rg", "--workspace", "ws", env=env)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "DefaultAzureCredential" not in result.stderr
    assert "Run `az login`" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2, result.stderr


@pytest.mark.slow
def test_service_principal_variables_set_but_empty(user):
    env = {"AZURE_CLIENT_ID": "", "AZURE_TENANT_ID": "", "AZURE_CLIENT_SECRET": ""}
    result = user("submit", FINETUNE, "--target", "azureml", "--subscription", "00000000-0000-0000-0000-000000000000",
                  "--resource-group", "rg", "--workspace", "ws", env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "AZURE_CLIENT_ID is not an application id" in result.stderr and "`az login`" in result.stderr


def test_ctrl_c_while_waiting_on_a_host_that_never_answers(user):
    """A KFP endpoint that accepts the connection and then says nothing (a half-open port-forward): Ctrl-C ends
    the command with 130 and one line, not a traceback from inside the HTTP client."""
    import os
    import signal
    import subprocess
    import sys

    from .conftest import REPO

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        server.settimeout(120)
        host = f"http://127.0.0.1:{server.getsockname()[1]}"
        env = {k: v for k, v in os.environ.items() if k != "TUNELINE_HOME"}
        env["PYTHONPATH"] = str(REPO)
        process = subprocess.Popen([sys.executable, "-m", "tuneline", "submit", FINETUNE, "--target", "kfp",
                                    "--host", host], cwd=user.folder, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True)
        try:
            connection, _ = server.accept()  # the client is now waiting for an answer
            with connection:
                process.send_signal(signal.SIGINT)
                _, err = process.communicate(timeout=60)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 130, err
    assert "Traceback" not in err and err.strip().endswith("tuneline submit: interrupted"), err


def test_submit_param_for_a_step_input_is_compiled_in_like_set(user):
    result = user("submit", FINETUNE, "--target", "kfp", "--host", "http://127.0.0.1:9", "--out", "build",
                  "--param", "prepare.columns=prompt=question,completion=answer", "--param", "max_steps=3",
                  "--dry-run")
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "prepare.columns: a step's input, compiled into the pipeline" in result.stderr
    plan = json.loads(result.stdout)
    arguments = next(c["kwargs"]["arguments"] for c in plan["calls"]
                     if c["method"] == "Client.create_run_from_pipeline_package")
    assert arguments == {"max_steps": 3}  # only pipeline parameters are run arguments
    compiled = (user.folder / "build" / "finetune" / "kfp" / "pipeline.yaml").read_text()
    assert "constant: prompt=question,completion=answer" in compiled
    wrong = user("submit", FINETUNE, "--target", "kfp", "--host", "h", "--param", "prepare.colums=x", "--dry-run")
    assert wrong.returncode == 2 and "did you mean 'columns'" in wrong.stderr and "Traceback" not in wrong.stderr
