"""The routing table (upstream.json) and the canary rule, without servers."""

from __future__ import annotations

import json
import random
from dataclasses import replace
from pathlib import Path

import pytest

from tuneline.serving.routing import (
    CANDIDATE,
    CanaryPolicy,
    Routes,
    Upstream,
    VersionStats,
    judge,
    read_routes,
    read_upstream,
    write_routes,
    write_upstream,
)


def _split(percent: int) -> Routes:
    return Routes(
        backends=(
            Upstream(url="http://127.0.0.1:1", model="m", slot="blue", weight=100 - percent, label="models:/m/1"),
            Upstream(url="http://127.0.0.1:2", model="m", slot="green", weight=percent, role=CANDIDATE),
        ),
        canary=CanaryPolicy(promote_after=50, min_requests=10),
        request_log="logs/requests.jsonl",
    )


def test_traffic_follows_the_weights() -> None:
    rng = random.Random(7)
    picks = [_split(10).pick(rng).slot for _ in range(5000)]
    assert 0.08 < picks.count("green") / len(picks) < 0.12


def test_routes_round_trip_and_single_upstream_keeps_the_request_log(tmp_path: Path) -> None:
    write_routes(tmp_path, _split(25))
    assert read_routes(tmp_path) == _split(25)
    assert read_upstream(tmp_path).slot == "blue"
    write_upstream(tmp_path, Upstream(url="http://127.0.0.1:2", model="m", slot="green"))
    routes = read_routes(tmp_path)
    assert [b.slot for b in routes.backends] == ["green"] and routes.canary is None
    assert routes.request_log == "logs/requests.jsonl"


def test_an_old_single_upstream_file_still_reads(tmp_path: Path) -> None:
    (tmp_path / "upstream.json").write_text(json.dumps({"url": "http://127.0.0.1:5", "model": "m", "slot": "blue"}))
    assert read_upstream(tmp_path) == Upstream(url="http://127.0.0.1:5", model="m", slot="blue")


def _stats(ok: int, failed: int = 0, latency_ms: float = 100.0) -> VersionStats:
    stats = VersionStats()
    for _ in range(ok):
        stats.record(True, latency_ms)
    for _ in range(failed):
        stats.record(False, 0.0)
    return stats


def test_canary_is_not_judged_before_min_requests() -> None:
    assert judge(CanaryPolicy(promote_after=50, min_requests=10), _stats(0, 9), _stats(100)) is None


def test_failing_canary_is_rolled_back_on_errors() -> None:
    verdict = judge(CanaryPolicy(promote_after=50, min_requests=10, max_error_rate=0.05), _stats(9, 1), _stats(100))
    assert verdict.action == "rollback" and "error rate 10.0%" in verdict.reason


def test_slow_canary_is_rolled_back_on_latency() -> None:
    verdict = judge(CanaryPolicy(promote_after=50, min_requests=10), _stats(20, 0, 900.0), _stats(100, 0, 100.0))
    assert verdict.action == "rollback" and "p95" in verdict.reason


def test_healthy_canary_is_promoted_after_promote_after_requests() -> None:
    policy = CanaryPolicy(promote_after=50, min_requests=10)
    assert judge(policy, _stats(49), _stats(400)) is None
    assert judge(policy, _stats(50), _stats(400)).action == "promote"


@pytest.mark.parametrize(
    "fields", [{"promote_after": 5, "min_requests": 10}, {"max_error_rate": 1.0}, {"max_p95_ratio": 0.5}]
)
def test_bad_canary_policy_is_refused(fields: dict) -> None:
    with pytest.raises(ValueError, match="canary"):
        CanaryPolicy(**fields)


def test_a_promotion_keeps_the_version_it_replaced_as_the_rollback_target(tmp_path: Path) -> None:
    split = _split(25)
    promoted = split.only(split.candidate)
    assert promoted.current.slot == "green" and promoted.previous.label == "models:/m/1"
    assert promoted.previous.weight == 0 and promoted.backends == (promoted.current,)  # named, never routed
    write_routes(tmp_path, promoted)
    assert read_routes(tmp_path) == promoted
    # A rollback goes back to the current version and keeps the target it had.
    canary = replace(promoted, backends=(promoted.current, replace(split.current, role=CANDIDATE)))
    assert canary.only(canary.current).previous == promoted.previous
    write_upstream(tmp_path, split.candidate, previous=split.current)
    assert read_routes(tmp_path).previous.label == "models:/m/1"
