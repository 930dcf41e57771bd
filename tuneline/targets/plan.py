"""A submission plan's one call: which SDK method, with which arguments, so `--dry-run` can print it as data."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class Call:
    method: str                 # the SDK call, e.g. "Client.create_run_from_pipeline_package"
    kwargs: dict[str, Any]


def plan_json(plan: Any) -> str:
    return json.dumps(asdict(plan), indent=2)
