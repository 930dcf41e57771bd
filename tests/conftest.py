"""Shared fixtures: a throwaway copy of the toy project, and a way to call the CLI in-process."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tuneline.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def toy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of tests/fixtures/toy with its own .tuneline state folder."""
    root = tmp_path / "toy"
    shutil.copytree(FIXTURES / "toy", root)
    monkeypatch.delenv("TUNELINE_HOME", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(root)
    return root


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]):
    """Call `tuneline ...` in-process; returns (exit code, stdout, stderr)."""

    def call(*args: str) -> tuple[int, str, str]:
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return call
