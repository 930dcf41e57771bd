"""Rollout policy shared by every deploy target: switch all traffic after a smoke test (blue_green), or send
``canary_percent`` of it to the new version and keep the rest on the previous one (canary)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Strategy = Literal["blue_green", "canary"]


class RolloutPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    strategy: Strategy = "blue_green"
    canary_percent: int = Field(
        default=10, ge=0, le=100, description="share of traffic for the new version under the canary strategy"
    )

    @model_validator(mode="after")
    def _canary_is_partial(self) -> RolloutPolicy:
        if self.strategy == "canary" and not 1 <= self.canary_percent <= 99:
            raise ValueError(
                f"canary_percent must be between 1 and 99 for the canary strategy, got "
                f"{self.canary_percent} (0 sends nothing to the new version, 100 is blue_green)"
            )
        return self

    @property
    def new_percent(self) -> int:
        """Traffic share of the new version right after the rollout."""
        return self.canary_percent if self.strategy == "canary" else 100

    def traffic(self, new: str, previous: str | None) -> dict[str, int]:
        """Deployment name -> percent; without a previous deployment the new one takes everything."""
        if previous is None or previous == new:
            return {new: 100}
        return {new: self.new_percent, previous: 100 - self.new_percent}

    def kserve_canary_percent(self) -> int | None:
        """KServe's ``canaryTrafficPercent``: None (field omitted) promotes the new revision at once."""
        return self.canary_percent if self.strategy == "canary" else None
