"""Win rate of a candidate against the champion, judged example by example, with a 95% confidence interval.

Each held-out example is one contest: the candidate wins it (1), ties it (0.5) or loses it (0), by the task's
own metric on that example (``tuneline.llm.ml.metrics.example_scores``) or by an LLM judge
(``tuneline.llm.ml.judge``). The win rate is the mean outcome, ties counted half, so 0.5 means "as good as the
champion". Its 95% interval is Wilson's score interval for a proportion, taken on that mean over ``n``
examples. Not a percentile bootstrap: resampling 3 wins out of 3 gives only 1.0, an interval of zero width that
would pass ``win_rate.lower > 0.5`` on three examples, and all ties would give [0.5, 0.5]. Wilson's interval does
not collapse on small or unanimous samples (3 wins out of 3: lower bound 0.44), and ties, whose outcome varies
less than a win-or-loss does, only make it conservative. Its lower bound still passes 0.5 at 4 wins out of 4
(a one-sided sign-test p of 1/16), so fewer than ``MIN_EXAMPLES`` contests are refused (``TooFewExamples``)
rather than given an interval. It is a closed form, so the same predictions always give the same gate verdict.
A gate such as ``win_rate.lower > 0.5`` then asks for a candidate better than the champion beyond sampling
noise, not one that merely scored higher on this sample; wins, ties and losses are reported beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from tuneline.spec.metrics import WIN_RATE_FIELDS

Z95 = 1.959963984540054  # the standard normal's 97.5th percentile
MIN_EXAMPLES = 10


class TooFewExamples(ValueError):
    """Too few contests for a win rate's interval to mean anything."""


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
    """The mean of per-example outcomes (1 / 0.5 / 0) and its 95% Wilson score interval."""
    import numpy as np

    if len(results) < MIN_EXAMPLES:
        raise TooFewExamples(f"{len(results)} examples judged; a win rate and its 95% interval need at least "
                             f"{MIN_EXAMPLES}")
    values = np.asarray(results, dtype=float)
    if not np.isin(values, (0.0, 0.5, 1.0)).all():
        raise ValueError("outcomes must be 1 (win), 0.5 (tie) or 0 (loss)")
    lower, upper = wilson(float(values.mean()), len(values))
    return WinRate(value=float(values.mean()), lower=lower, upper=upper,
                   wins=int((values == 1).sum()), ties=int((values == 0.5).sum()), losses=int((values == 0).sum()),
                   n=len(values), judge=judge)


def wilson(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion ``p`` observed over ``n`` trials."""
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)
