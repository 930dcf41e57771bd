"""The serving champion in the MLflow registry: which version, how old, and what it scored when registered.

The registered score is the version tag the register step writes (`tuneline.metric.tuned.<metric>`, see
`tuneline.llm.registry.metric_tag`); a version without it falls back to the `eval.tuned.<metric>` metric the
evaluate step logged into the version's run.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tuneline.spec.metrics import direction

from ...llm.registry import CHAMPION, metric_tag, version_by_alias
from ...spec import Pipeline
from ...spec.models import Role, Triggers
from .result import FIRED, OK, SKIPPED, TriggerResult


@dataclass(frozen=True)
class Champion:
    name: str
    version: int
    created: float  # seconds since the epoch
    run_id: str | None
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def default_model_name(pipeline: Pipeline) -> str:
    """The `name` input of the pipeline's `role: register` step, else the pipeline's name."""
    step = pipeline.step_with_role(Role.register)
    value = None if step is None else pipeline.input_value(step, "name")
    return pipeline.name if value is None else str(value)


def find_champion(client, name: str) -> Champion | None:
    found = version_by_alias(client, name, CHAMPION)
    if found is None:
        return None
    return Champion(
        name=name,
        version=int(found.version),
        created=found.creation_timestamp / 1000,
        run_id=found.run_id or None,
        tags=dict(found.tags or {}),
    )


def registered_metric(client, champion: Champion, metric: str) -> tuple[float | None, str]:
    """(value, where it came from)."""
    tag = metric_tag("tuned", metric)
    if champion.tags.get(tag) not in (None, ""):
        return float(champion.tags[tag]), f"version tag {tag}"
    if champion.run_id:
        logged = client.get_run(champion.run_id).data.metrics.get(f"eval.tuned.{metric}")
        if logged is not None:
            return float(logged), f"metric eval.tuned.{metric} of run {champion.run_id}"
    return None, f"no tag {tag} and no eval.tuned.{metric} metric in the version's run"


def relative_drop(registered: float, current: float, metric: str) -> float:
    """How much worse `current` is than `registered`, as a share of `registered` (negative: it improved)."""
    if direction(metric) == "min":
        return (current - registered) / registered if registered else 0.0
    if registered == 0:
        return 0.0 if current >= 0 else float("inf")
    return (registered - current) / abs(registered)


def check_age(champion: Champion | None, triggers: Triggers, now: float | None = None) -> TriggerResult:
    if triggers.max_age_days is None:
        return TriggerResult("age", SKIPPED, "not configured (max_age_days)")
    if champion is None:
        return TriggerResult("age", SKIPPED, "no champion registered yet: nothing to age")
    age_days = ((now or time.time()) - champion.created) / 86400
    inputs = {"model": champion.name, "version": champion.version, "created": champion.created}
    metrics = {"champion_age_days": age_days}
    over = age_days >= triggers.max_age_days
    reason = (
        f"champion {champion.name} v{champion.version} is {age_days:.1f} days old "
        f"({'>=' if over else '<'} max_age_days {triggers.max_age_days:g})"
    )
    return TriggerResult("age", FIRED if over else OK, reason, metrics, inputs)
