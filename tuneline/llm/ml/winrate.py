"""Win rate of a candidate against the champion, judged example by example, with a 95% confidence interval.

Each held-out example is one contest: the candidate wins it (1), ties it (0.5) or loses it (0), by the task's
own metric on that example (``tuneline.llm.ml.metrics.example_scores``) or by an LLM judge
(``tuneline.llm.ml.judge``). The win rate is the mean outcome, ties counted half, so 0.5 means "as good as the
champion". Ties say nothing about which model is better, so the 95% interval comes from the decisive
contests: an exact (Clopper-Pearson) binomial interval for the share ``W / (W + L)`` of wins among them, mapped
onto the win-rate scale with the ties held as observed (``value = 0.5 + (W + L) / 2n * (2 W / (W + L) - 1)``).
``win_rate.lower > 0.5`` is then exactly the two-sided 5% sign test of wins against losses. Contests that all
tie give [0.5, 0.5]: no evidence either way. Not a percentile bootstrap: resampling 3 wins out of 3 gives only
1.0, an interval of zero width that passed ``win_rate.lower > 0.5`` on three examples; the exact interval
needs 6 straight wins for that (p = 2/64), and fewer than ``MIN_EXAMPLES`` contests are refused outright
(``TooFewExamples``). Nor Wilson's interval on the mean with ties as half-wins: it treats a tie as a coin flip,
so 8 wins, 39 ties and 1 loss (sign test p = 0.04) would look like chance. The interval is a closed
computation, so the same predictions always give the same gate verdict; wins, ties and losses are reported
beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from tuneline.spec.metrics import WIN_RATE_FIELDS

ALPHA = 0.05  # a 95% interval
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
    """The mean of per-example outcomes (1 / 0.5 / 0) and its 95% interval from the decisive contests."""
    import numpy as np

    if len(results) < MIN_EXAMPLES:
        raise TooFewExamples(f"{len(results)} examples judged; a win rate and its 95% interval need at least "
                             f"{MIN_EXAMPLES}")
    values = np.asarray(results, dtype=float)
    if not np.isin(values, (0.0, 0.5, 1.0)).all():
        raise ValueError("outcomes must be 1 (win), 0.5 (tie) or 0 (loss)")
    wins, losses, n = int((values == 1).sum()), int((values == 0).sum()), len(values)
    decisive = wins + losses
    lower = upper = 0.5
    if decisive:
        low, high = clopper_pearson(wins, decisive)
        lower, upper = (0.5 + decisive / (2 * n) * (2 * q - 1) for q in (low, high))
    return WinRate(value=float(values.mean()), lower=lower, upper=upper,
                   wins=int((values == 1).sum()), ties=int((values == 0.5).sum()), losses=int((values == 0).sum()),
                   n=len(values), judge=judge)


def _tail_at_least(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), summed in log space so large n does not overflow."""
    if k <= 0:
        return 1.0
    if p <= 0.0:
        return 0.0
    if p >= 1.0:
        return 1.0
    log_p, log_q, log_n = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    return min(1.0, sum(math.exp(log_n - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q)
                        for i in range(k, n + 1)))


def _solve(f, target: float) -> float:
    """The p in [0, 1] where the increasing function f reaches target (bisection to float precision)."""
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if f(mid) < target else (lo, mid)
    return (lo + hi) / 2


def clopper_pearson(k: int, n: int, alpha: float = ALPHA) -> tuple[float, float]:
    """The exact two-sided ``1 - alpha`` interval for a binomial proportion, ``k`` successes in ``n`` trials."""
    lower = 0.0 if k == 0 else _solve(lambda p: _tail_at_least(k, n, p), alpha / 2)
    upper = 1.0 if k == n else _solve(lambda p: _tail_at_least(k + 1, n, p), 1 - alpha / 2)
    return lower, upper
