"""Win rate of a candidate against the champion, judged example by example, with a 95% confidence interval.

Each held-out example is one contest: the candidate wins it (1), ties it (0.5) or loses it (0), by the task's
own metric on that example (``tuneline.llm.ml.metrics.example_scores``) or by an LLM judge
(``tuneline.llm.ml.judge``). The win rate is the mean outcome, ties counted half, so 0.5 means "as good as the
champion". Its interval is a percentile bootstrap over examples (10,000 resamples with a fixed seed, so the
same predictions always give the same gate verdict); Chatbot Arena reports its ratings' intervals the same
way. A gate such as ``win_rate.lower > 0.5`` then asks for a candidate better than the champion beyond
sampling noise, not one that merely scored higher on this sample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

from tuneline.spec.metrics import WIN_RATE_FIELDS

RESAMPLES = 10_000
SEED = 0


@dataclass(frozen=True)
class WinRate:
    value: float
    lower: float
    upper: float
    wins: int
    ties: int
    losses: int
    n: int
    judge: str

    def metrics(self) -> dict[str, float]:
        """The numeric fields, as the gates and MLflow take them."""
        return {k: float(v) for k, v in asdict(self).items() if k in WIN_RATE_FIELDS}


def outcomes(candidate: Sequence[float], champion: Sequence[float], higher_is_better: bool = True) -> list[float]:
    """1, 0.5 or 0 per example, from two models' scores on the same examples."""
    if len(candidate) != len(champion):
        raise ValueError(f"{len(candidate)} candidate scores for {len(champion)} champion scores")
    sign = 1 if higher_is_better else -1
    return [1.0 if sign * (a - b) > 0 else 0.5 if a == b else 0.0 for a, b in zip(candidate, champion, strict=True)]


def win_rate(results: Sequence[float], judge: str) -> WinRate:
    """The mean of per-example outcomes (1 / 0.5 / 0) and its 95% percentile-bootstrap interval."""
    import numpy as np

    if not results:
        raise ValueError("no examples to judge")
    values = np.asarray(results, dtype=float)
    if not np.isin(values, (0.0, 0.5, 1.0)).all():
        raise ValueError("outcomes must be 1 (win), 0.5 (tie) or 0 (loss)")
    rng = np.random.default_rng(SEED)
    means = values[rng.integers(0, len(values), size=(RESAMPLES, len(values)))].mean(axis=1)
    lower, upper = np.percentile(means, [2.5, 97.5])
    return WinRate(value=float(values.mean()), lower=float(lower), upper=float(upper),
                   wins=int((values == 1).sum()), ties=int((values == 0.5).sum()), losses=int((values == 0).sum()),
                   n=len(values), judge=judge)
