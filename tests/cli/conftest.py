"""Drive the `tuneline` command as a user does: a subprocess, standing in a folder outside this checkout."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _command() -> list[str]:
    script = Path(sys.executable).with_name("tuneline")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "tuneline"]


@pytest.fixture
def user(tmp_path: Path):
    """`user(*args, cwd=..., env=...)` runs `tuneline ARGS` in `cwd` (default: an empty folder under tmp_path) with
    no TUNELINE_HOME and no tracking URI, as on a newcomer's machine (`env` adds variables; a None value unsets
    one); returns the CompletedProcess."""
    home = tmp_path / "work"
    home.mkdir()

    def run(*args: str, cwd: Path | None = None, env: dict[str, str | None] | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        environ = {k: v for k, v in os.environ.items()
                   if k not in ("TUNELINE_HOME", "MLFLOW_TRACKING_URI", "TUNELINE_SERVE_STATE")}
        environ["PYTHONPATH"] = str(REPO)  # this tree's tuneline, whatever the venv's editable install points at
        for name, value in (env or {}).items():  # None unsets
            environ.pop(name, None) if value is None else environ.__setitem__(name, value)
        return subprocess.run([*_command(), *args], cwd=cwd or home, env=environ, capture_output=True, text=True,
                              timeout=timeout)

    run.folder = home
    return run


def line_of(path: Path, needle: str) -> int:
    return next(i for i, text in enumerate(path.read_text().splitlines(), 1) if needle in text)
