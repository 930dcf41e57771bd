"""Distribution shift between a reference sample (training prompts) and a current one (served requests).

- PSI (population stability index): bins are the reference's deciles; each bin contributes
  ``(cur - ref) * ln(cur / ref)`` with shares floored at 1e-4 so an empty bin is finite. Common reading:
  < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 large shift.
- KS: the two-sample Kolmogorov-Smirnov statistic, the largest gap between the two empirical CDFs (0-1).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tuneline.serving.requestlog import read_requests

from ...spec.models import Role, Triggers
from .features import FEATURES, dataset_prompts, feature_matrix
from .result import FIRED, OK, SKIPPED, TriggerResult

_FLOOR = 1e-4


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    if len(reference) == 0 or len(current) == 0:
        raise ValueError("PSI needs two non-empty samples")
    inner = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    # searchsorted with side="right" puts a value equal to an edge in the upper bin, for both samples alike.
    ref_counts = np.bincount(np.searchsorted(inner, reference, side="right"), minlength=len(inner) + 1)
    cur_counts = np.bincount(np.searchsorted(inner, current, side="right"), minlength=len(inner) + 1)
    ref_share = np.maximum(ref_counts / len(reference), _FLOOR)
    cur_share = np.maximum(cur_counts / len(current), _FLOOR)
    return float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))


def ks_statistic(reference: np.ndarray, current: np.ndarray) -> float:
    if len(reference) == 0 or len(current) == 0:
        raise ValueError("KS needs two non-empty samples")
    a, b = np.sort(reference), np.sort(current)
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / len(a)
    cdf_b = np.searchsorted(b, points, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    psi: float
    ks: float
    reference_mean: float
    current_mean: float


def compare(reference_texts: list[str], current_texts: list[str]) -> list[FeatureDrift]:
    ref, cur = feature_matrix(reference_texts), feature_matrix(current_texts)
    return [
        FeatureDrift(
            name,
            psi(ref[name], cur[name]),
            ks_statistic(ref[name], cur[name]),
            float(ref[name].mean()),
            float(cur[name].mean()),
        )
        for name in FEATURES
    ]


def reference_source(run: dict | None, dataset: Path) -> Path:
    """The prompts the champion learned from: the `train` input of the last successful run's `role: train`
    step (a split folder's data.jsonl, or a file), else the dataset."""
    for step in (run or {}).get("steps", {}).values():
        given = step.get("inputs", {}).get("train", {}) if step.get("role") == Role.train else {}
        path = Path(given["path"]) if "path" in given else None
        if path is not None and path.is_dir():
            path = path / "data.jsonl"
        if path is not None and path.is_file():
            return path
    return dataset


def check_drift(
    triggers: Triggers, root: Path, reference: Path, window: int = 1000, min_requests: int = 50
) -> TriggerResult:
    if triggers.drift_psi is None and triggers.drift_ks is None:
        return TriggerResult("drift", SKIPPED, "not configured (drift_psi / drift_ks)")
    if not triggers.requests_log:
        return TriggerResult("drift", SKIPPED, "drift thresholds are set but requests_log is not")
    log = Path(triggers.requests_log)
    log = log if log.is_absolute() else root / log
    requests = [r.prompt for r in read_requests(log)][-window:]
    requests = [p for p in requests if p]
    inputs = {"requests_log": str(log), "reference": str(reference), "requests": len(requests)}
    if len(requests) < min_requests:
        return TriggerResult(
            "drift",
            SKIPPED,
            f"{len(requests)} logged requests (< {min_requests} needed to compare)",
            {"requests": len(requests)},
            inputs,
        )
    ref_prompts = dataset_prompts(reference)
    if not ref_prompts:
        raise ValueError(f"{reference}: no user prompts to compare requests with")
    drifts = compare(ref_prompts, requests)
    metrics: dict[str, float] = {"requests": len(requests), "reference_prompts": len(ref_prompts)}
    hits = []
    for d in drifts:
        metrics[f"psi.{d.feature}"] = d.psi
        metrics[f"ks.{d.feature}"] = d.ks
        if triggers.drift_psi is not None and d.psi >= triggers.drift_psi:
            hits.append(f"{d.feature} PSI {d.psi:.3f} >= {triggers.drift_psi:g}")
        if triggers.drift_ks is not None and d.ks >= triggers.drift_ks:
            hits.append(f"{d.feature} KS {d.ks:.3f} >= {triggers.drift_ks:g}")
    worst = max(drifts, key=lambda d: d.psi)
    metrics["psi.max"] = worst.psi
    metrics["ks.max"] = max(d.ks for d in drifts)
    if hits:
        reason = f"{len(requests)} requests vs {len(ref_prompts)} training prompts: " + "; ".join(hits)
        return TriggerResult("drift", FIRED, reason, metrics, inputs)
    reason = (
        f"{len(requests)} requests vs {len(ref_prompts)} training prompts: max PSI {worst.psi:.3f} "
        f"({worst.feature}), max KS {metrics['ks.max']:.3f}; below thresholds"
    )
    return TriggerResult("drift", OK, reason, metrics, inputs)
