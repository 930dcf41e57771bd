"""A finished local run's measured training time beside what `tuneline cost` would have predicted, printed after
the run's table so estimates stay honest (the command line hands it to the runner's report)."""

from __future__ import annotations

from pathlib import Path

from ...spec.load import find_root
from ...targets.local import record as rec
from .estimate import estimate_for_run
from .prices import DEFAULT_PRICES, CostError


def cost_comparison(record: rec.RunRecord) -> str | None:
    """Measured training time next to what `tuneline cost` would have predicted, or None when there is nothing
    to compare (no training step succeeded, or the project has no price table)."""
    if not any(step.role == "train" and step.status == rec.SUCCEEDED for step in record.steps.values()):
        return None
    if not (find_root(Path(record.pipeline_path)) / DEFAULT_PRICES).is_file():
        return None  # a project without a price table (one's own repository) asked for no estimate
    try:
        # The run's own state folder (runs/<id>/ is in it), wherever the pipeline file is.
        return estimate_for_run(record.to_dict(), home=Path(record.folder).parents[1]).render()
    except (CostError, OSError, ValueError) as exc:
        return f"(no cost comparison: {exc})"
