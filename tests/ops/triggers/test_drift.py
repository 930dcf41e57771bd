"""PSI and KS against hand-computed values, and the drift trigger from "no" to "yes" on real request logs."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from tests.support.tickets import ticket_records
from tuneline.ops.triggers.drift import check_drift, ks_statistic, psi
from tuneline.serving.requestlog import RequestLogger
from tuneline.spec.models import Triggers

from .conftest import write_records


def test_ks_matches_the_definition():
    assert ks_statistic(np.array([1.0, 2, 3, 4]), np.array([1.0, 2, 3, 4])) == 0
    assert ks_statistic(np.array([1.0, 2]), np.array([3.0, 4])) == 1
    # F_a jumps to 0.5 at 1 and 1.0 at 3; F_b to 0.5 at 2 and 1.0 at 4: the widest gap is 0.5.
    assert ks_statistic(np.array([1.0, 3]), np.array([2.0, 4])) == 0.5


def test_psi_is_zero_for_equal_samples_and_matches_the_formula():
    ref = np.arange(100, dtype=float)
    assert psi(ref, ref.copy()) == pytest.approx(0.0, abs=1e-12)
    cur = np.concatenate([np.full(50, 5.0), np.arange(50, 100, dtype=float)])  # the lower half moved to 5
    # Decile 1 now holds 50% (was 10%), deciles 2-5 hold 0 (floored to 1e-4), deciles 6-10 keep 10% each.
    expected = (0.5 - 0.1) * math.log(0.5 / 0.1) + 4 * (1e-4 - 0.1) * math.log(1e-4 / 0.1)
    assert psi(ref, cur) == pytest.approx(expected, rel=1e-9)


def _log(path, prompts):
    logger = RequestLogger(path)
    for prompt in prompts:
        logger.log(prompt, '{"category":"bug","priority":"low"}', model="tickets")


def test_drift_trigger_goes_from_no_to_yes(tmp_path):
    reference = tmp_path / "train.jsonl"
    write_records(reference, ticket_records(300, seed=1))
    triggers = Triggers(drift_psi=0.2, drift_ks=0.3, requests_log="requests.jsonl")
    same = [r["messages"][1]["content"] for r in ticket_records(200, seed=7)]
    _log(tmp_path / "requests.jsonl", same)
    result = check_drift(triggers, tmp_path, reference, min_requests=50)
    assert result.status == "ok", result.reason
    assert result.metrics["psi.max"] < 0.2 and result.metrics["requests"] == 200

    rng = random.Random(0)
    shifted = [
        f"order {rng.randint(10**7, 10**8)} from invoice {rng.randint(1000, 9999)}: " + "déjà vu " * 30
        for _ in range(200)
    ]
    _log(tmp_path / "requests.jsonl", shifted)
    result = check_drift(triggers, tmp_path, reference, window=200, min_requests=50)
    assert result.status == "fired"
    assert "chars PSI" in result.reason and "non_ascii_share" in result.reason
    assert result.metrics["ks.chars"] == 1.0


def test_too_few_requests_is_not_judged(tmp_path):
    reference = tmp_path / "train.jsonl"
    write_records(reference, ticket_records(50))
    _log(tmp_path / "requests.jsonl", ["hello"] * 3)
    result = check_drift(Triggers(drift_psi=0.2, requests_log="requests.jsonl"), tmp_path, reference)
    assert result.status == "skipped" and "3 logged requests" in result.reason


def test_demo_pipeline_drift_reads_the_log_its_deploy_step_writes():
    """One declaration: the deploy step's requests_log and triggers.requests_log are the same parameter."""
    from pathlib import Path

    from tuneline.ops.triggers.check import resolved_triggers
    from tuneline.spec import ParamRef, load_pipeline

    pipeline = load_pipeline(Path(__file__).resolve().parents[3] / "pipelines" / "finetune.yaml")
    binding = pipeline.bindings["deploy"]["requests_log"]
    assert isinstance(binding, ParamRef) and binding.name == "requests_log"
    declared = pipeline.params["requests_log"]
    assert resolved_triggers(pipeline).requests_log == declared == ".tuneline/serve/requests.jsonl"
