"""One place decides where state lives; every reader of it agrees, the make targets included."""

import os
import subprocess
from pathlib import Path

import pytest

from components.deploy.local import default_state_dir as deploy_state_dir
from tuneline import settings
from tuneline.serving.local import default_state_dir as serve_state_dir

REPO = Path(__file__).resolve().parents[1]


def test_tuneline_home_moves_the_tracking_store_and_the_serve_state(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("TUNELINE_SERVE_STATE", raising=False)
    monkeypatch.setenv("TUNELINE_HOME", str(tmp_path / "home"))
    assert settings.home(REPO) == tmp_path / "home"
    assert settings.tracking_uri() == f"sqlite:///{tmp_path / 'home' / 'mlflow.db'}"
    assert serve_state_dir() == deploy_state_dir() == tmp_path / "home" / "serve"


def test_defaults_without_variables(tmp_path: Path, monkeypatch):
    for name in ("TUNELINE_HOME", "MLFLOW_TRACKING_URI", "TUNELINE_SERVE_STATE"):
        monkeypatch.delenv(name, raising=False)
    assert settings.home(tmp_path) == tmp_path / ".tuneline"
    assert settings.tracking_uri(tmp_path) == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert settings.tracking_uri(tmp_path) == "http://mlflow:5000"
    assert settings.sqlite_path("http://mlflow:5000") is None


def test_the_tracking_client_initialises_a_fresh_store(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    client = settings.mlflow_client(tmp_path)
    assert client.search_registered_models() == []
    assert (tmp_path / "mlflow.db").is_file() and (tmp_path / "mlflow.db.init.lock").is_file()


def test_make_serve_targets_follow_tuneline_home(tmp_path: Path):
    shown = subprocess.run(["make", "-n", "serve-stop", f"TUNELINE_HOME={tmp_path}"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout
    assert f"--state-dir {tmp_path}/serve stop" in shown


AZUREML_URI = ("azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/0000/resourceGroups/rg/providers/"
               "Microsoft.MachineLearningServices/workspaces/ws")  # the form Azure ML injects into every job


def test_the_injected_azureml_uri_becomes_the_workspaces_https_endpoint_with_the_jobs_token(monkeypatch):
    """What azureml-mlflow does in a job, done with MLflow's own REST store (the workspace is reached for real in
    tests/conformance/test_azureml.py)."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", AZUREML_URI)
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    monkeypatch.setenv("AZUREML_RUN_TOKEN", "job-token")
    assert settings.use_tracking() == ("https://eastus.api.azureml.ms/mlflow/v2.0/subscriptions/0000/resourceGroups/"
                                       "rg/providers/Microsoft.MachineLearningServices/workspaces/ws")
    assert os.environ["MLFLOW_TRACKING_TOKEN"] == "job-token"
    assert os.environ["MLFLOW_TRACKING_URI"].startswith("https://")  # what the step's subprocesses inherit
    import mlflow

    # The pinned MLflow itself has no store for the scheme: without the rewrite every MLflow use fails.
    with pytest.raises(Exception, match="azureml"):
        mlflow.tracking.MlflowClient(tracking_uri=AZUREML_URI).search_experiments()


def test_an_azureml_uri_without_a_token_or_a_workspace_fails_with_the_reason(monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_TOKEN", raising=False)
    monkeypatch.delenv("AZUREML_RUN_TOKEN", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", AZUREML_URI)
    with pytest.raises(settings.TrackingStoreMissing, match="MLFLOW_TRACKING_TOKEN, AZUREML_RUN_TOKEN"):
        settings.use_tracking()
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "t")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "azureml://eastus.api.azureml.ms/mlflow/v1.0/subscriptions/0000")
    with pytest.raises(settings.TrackingStoreMissing, match="workspaces/<name>"):
        settings.use_tracking()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.tuneline.svc.cluster.local:5000")
    assert settings.use_tracking() == "http://mlflow.tuneline.svc.cluster.local:5000"


def test_pipeline_run_id_comes_from_kfp_local_or_azureml(monkeypatch):
    monkeypatch.delenv("TUNELINE_RUN_ID", raising=False)
    monkeypatch.delenv("AZUREML_ROOT_RUN_ID", raising=False)
    assert settings.pipeline_run_id() == ""
    monkeypatch.setenv("AZUREML_ROOT_RUN_ID", "happy_lime_abc123")
    assert settings.pipeline_run_id() == "happy_lime_abc123"
    monkeypatch.setenv("TUNELINE_RUN_ID", "run-1")
    assert settings.pipeline_run_id() == "run-1"


def test_every_command_finds_the_state_folder_from_the_current_folder(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("TUNELINE_HOME", raising=False)
    project = tmp_path / "project"
    (project / "components").mkdir(parents=True)
    deep = project / "a" / "b"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    assert settings.state_home() == settings.home() == project / ".tuneline"
    assert settings.state_home("elsewhere") == deep / "elsewhere"  # --home is the user's path
    alone = tmp_path / "alone"
    alone.mkdir()
    monkeypatch.chdir(alone)
    assert settings.state_home() == alone / ".tuneline"
    monkeypatch.setenv("TUNELINE_HOME", str(tmp_path / "h"))
    assert settings.state_home() == tmp_path / "h"


def test_a_project_without_a_serve_venv_uses_the_one_built_beside_tuneline(tmp_path: Path, monkeypatch):
    monkeypatch.delenv("TUNELINE_SERVE_VENV", raising=False)
    built = tmp_path / "checkout" / ".tuneline" / "serve-venv"
    monkeypatch.setattr(settings, "INSTALL_SERVE_VENV", built)
    monkeypatch.chdir(tmp_path)
    assert settings.serve_venv() == Path(".tuneline/serve-venv")  # nothing built anywhere: build it here
    (built / "bin").mkdir(parents=True)
    (built / "bin" / "python").write_text("")
    assert settings.serve_venv() == built
    (tmp_path / ".tuneline" / "serve-venv").mkdir(parents=True)
    assert settings.serve_venv() == Path(".tuneline/serve-venv")  # one of the project's own wins
