"""The rollout policy: traffic splits for blue/green and canary, and its input checks."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from tuneline.serving.deploy.policy import RolloutPolicy


def test_blue_green_moves_all_traffic():
    policy = RolloutPolicy(strategy="blue_green", canary_percent=30)
    assert policy.traffic("green", "blue") == {"green": 100, "blue": 0}
    assert policy.kserve_canary_percent() is None


def test_canary_splits_traffic():
    policy = RolloutPolicy(strategy="canary", canary_percent=15)
    assert policy.traffic("green", "blue") == {"green": 15, "blue": 85}
    assert policy.kserve_canary_percent() == 15


def test_first_deployment_takes_everything():
    assert RolloutPolicy(strategy="canary", canary_percent=15).traffic("blue", None) == {"blue": 100}


@pytest.mark.parametrize("percent", [0, 100, -1, 101])
def test_canary_percent_must_be_partial(percent: int):
    with pytest.raises(ValidationError, match="canary_percent"):
        RolloutPolicy(strategy="canary", canary_percent=percent)


def test_unknown_strategy_and_fields_are_rejected():
    with pytest.raises(ValidationError, match="strategy"):
        RolloutPolicy(strategy="rolling")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="canary_pct"):
        RolloutPolicy(canary_pct=5)  # type: ignore[call-arg]
