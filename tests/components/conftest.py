"""Fixtures shared by the component tests."""

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.fixture
def train_env(tmp_path):
    """Environment for train subprocesses, with the tiny model and the MLflow store built once beforehand,
    so concurrent runs start from the same files."""
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "TUNELINE_HOME": str(tmp_path / "home"), "PYTHONPATH": str(root),
           "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "MLFLOW_DISABLE_TELEMETRY": "true"}
    code = ("from tuneline.llm.ml.models import resolve_model; resolve_model('tiny-random-llama'); "
            "from tuneline import settings; settings.mlflow_client().search_experiments()")
    subprocess.run([sys.executable, "-c", code], env=env, cwd=root, check=True, capture_output=True)
    return env
