"""Trigger test fixtures: a throwaway copy of tests/ops/triggers/project with chat data and its own MLflow."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support.tickets import ticket_records
from tuneline.cli.main import main as cli_main

PROJECT = Path(__file__).parent / "project"


def write_records(path: Path, records: list[dict], mode: str = "w") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open(mode) as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "project"
    shutil.copytree(PROJECT, root)
    write_records(root / "data" / "tickets.jsonl", ticket_records(40, seed=1))
    monkeypatch.delenv("TUNELINE_HOME", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def ops_cli(capsys: pytest.CaptureFixture[str]):
    """`tuneline ...` in-process (the trigger, feedback and cost commands included)."""

    def call(*args: str) -> tuple[int, str, str]:
        code = cli_main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return call
