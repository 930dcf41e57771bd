"""Shared fixtures: a throwaway copy of the toy project, and a way to call the CLI in-process."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from tests.support import guards
from tuneline.cli.main import main

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


@pytest.fixture(autouse=True)
def _mlflow_process_uri():
    """Restore MLflow's process-wide tracking URI after each test. A component run in-process (register,
    evaluate, train) calls mlflow.set_tracking_uri for its own store, and MLflow prefers that global to
    MLFLOW_TRACKING_URI from then on, also writing it into the environment: a later test's `MlflowClient()` then
    read an earlier test's store ("Run with id=... not found", only in the full suite)."""
    before = os.environ.get("MLFLOW_TRACKING_URI")
    yield
    utils = sys.modules.get("mlflow.tracking._tracking_service.utils")
    if utils is not None:
        utils._tracking_uri = None  # its value in a process that never called set_tracking_uri
    if before is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = before


# ----------------------------------------------------------------------------- hygiene guards
# A test must not leave processes running nor signal handlers changed: either can make a later test fail for
# no reason of its own (a stray SIGINT/SIGTERM interrupting the in-process runner, see tests/support/guards.py).
# After each test: no process it started may remain in pytest's own process group (those share its signals).
# After a module's last test: nothing its tests or fixtures started may remain at all; detached servers (their
# own session) may serve several tests of a module, as tests/serving/test_local.py's deployment does.
_MODULE_START = pytest.StashKey[dict]()
_CALL_START = pytest.StashKey[dict]()
_HANDLERS = pytest.StashKey[dict]()
_module_before: dict = {}


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_setup(item: pytest.Item):
    global _module_before
    if item.nodeid.split("::")[0] != _module_before.get("module"):
        _module_before = {"module": item.nodeid.split("::")[0], "procs": guards.related_processes()}
    item.stash[_MODULE_START] = _module_before["procs"]
    item.stash[_HANDLERS] = guards.handlers()
    return (yield)


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_call(item: pytest.Item):
    item.stash[_CALL_START] = guards.related_processes(whole_group=False)
    return (yield)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None):
    result = yield
    problems = []
    changed = guards.changed_handlers(item.stash.get(_HANDLERS, {}))
    if changed:
        problems.append(f"signal handlers left changed (restored now): {', '.join(changed)}")
    last_of_module = nextitem is None or nextitem.nodeid.split("::")[0] != item.nodeid.split("::")[0]
    before = item.stash.get(_MODULE_START, {}) if last_of_module else item.stash.get(_CALL_START, None)
    if before is not None:
        left = guards.leftovers(before, whole_group=last_of_module, own_group_only=not last_of_module)
        if left:
            described = "; ".join(f"pid {p.pid} pgrp {p.pgrp}: {guards.command_line(p)}" for p in left)
            guards.kill(left)
            what = "its module's tests" if last_of_module else "the test in pytest's process group"
            problems.append(f"processes left running by {what} (killed now): {described}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
    return result
