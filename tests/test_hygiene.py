"""The suite's own hygiene: what one test sets process-wide must not reach the next (tests/conftest.py)."""

from __future__ import annotations

import os


def test_a_step_run_in_process_sets_mlflows_process_wide_uri(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mine.db'}")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'a-step.db'}")  # what register and evaluate do
    assert mlflow.get_tracking_uri().endswith("a-step.db")


def test_the_next_test_reads_its_own_store_not_the_previous_ones(tmp_path, monkeypatch):
    import mlflow

    assert not (os.environ.get("MLFLOW_TRACKING_URI") or "").endswith("a-step.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mine.db'}")
    assert mlflow.get_tracking_uri().endswith("mine.db")
