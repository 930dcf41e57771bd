"""What a component leaves for the end of a local run: a few lines of Markdown (see docs/components.md).

Lives beside the runner so components need no more than this one import; on a cluster the variable is unset
and nothing is written.
"""

from __future__ import annotations

import os
from pathlib import Path

VARIABLE = "TUNELINE_STEP_SUMMARY"


def write_step_summary(text: str) -> None:
    target = os.environ.get(VARIABLE)
    if target:
        path = Path(target)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a", encoding="utf-8") as fh:
            fh.write(text.rstrip() + "\n")
