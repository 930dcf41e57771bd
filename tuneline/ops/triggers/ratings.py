"""Ratings trigger: the champion's win rate over fresh rated traffic.

Each rated answer is a contest between what the endpoint served and what its user wanted: rated 4 or 5 it is a
win, 3 a tie, 1 or 2 a loss, and an answer the user corrected a loss whatever its rating. The mean, ties half,
is a win rate, with the same 95% interval evaluate gives a challenger's (``tuneline.llm.ml.winrate``). The
trigger fires when the interval's upper bound is under ``rated_win_rate``: the champion is below the bar with
confidence, not on a handful of bad ratings.

What counts: the newest ``window`` rated requests the endpoint served (``by`` set; an operator's own log lines
are not users), served since the champion was registered when it is known (older answers came from the model
it replaced), at least ``min_ratings`` of them. The ratings are where the endpoint keeps them, beside
``requests_log``.
"""

from __future__ import annotations

from pathlib import Path

from tuneline.serving.requestlog import RATINGS_FILE, RatingStore, read_requests

from ...llm.ml.winrate import MIN_EXAMPLES, win_rate
from ...spec.models import Triggers
from .champion import Champion
from .result import FIRED, OK, SKIPPED, TriggerResult


def outcome(rating: int, corrected: bool) -> float:
    if corrected or rating <= 2:
        return 0.0
    return 1.0 if rating >= 4 else 0.5


def check_ratings(triggers: Triggers, root: Path, champion: Champion | None = None, window: int = 200,
                  min_ratings: int = 30) -> TriggerResult:
    if triggers.rated_win_rate is None:
        return TriggerResult("ratings", SKIPPED, "not configured (rated_win_rate)")
    if not triggers.requests_log:
        return TriggerResult("ratings", SKIPPED, "rated_win_rate is set but requests_log is not")
    log = Path(triggers.requests_log)
    log = log if log.is_absolute() else root / log
    ratings_path = log.with_name(RATINGS_FILE)
    inputs = {"requests_log": str(log), "ratings": str(ratings_path)}
    if not ratings_path.exists():
        return TriggerResult("ratings", SKIPPED, f"no ratings yet ({ratings_path})", {"ratings": 0}, inputs)
    entries = RatingStore(ratings_path).entries()
    since = champion.created if champion is not None else 0.0
    served = [r for r in read_requests(log) if r.by and r.id in entries and r.time >= since][-window:]
    results = [outcome(entries[r.id].rating, bool(entries[r.id].correction)) for r in served]
    metrics: dict[str, float] = {"ratings": len(results)}
    scope = f"since champion v{champion.version}" if champion is not None else "in the log"
    needed = max(min_ratings, MIN_EXAMPLES)  # below it a win rate has no interval
    if len(results) < needed:
        return TriggerResult("ratings", SKIPPED, f"{len(results)} rated answers {scope} (< {needed} needed)",
                             metrics, inputs)
    rate = win_rate(results, judge="user ratings")
    metrics.update({f"rated_win_rate.{k}": v for k, v in rate.metrics().items()})
    below = rate.upper < triggers.rated_win_rate
    reason = (f"{len(results)} rated answers {scope}: win rate {rate.value:.3f} (95% CI {rate.lower:.3f}-"
              f"{rate.upper:.3f}) {'below' if below else 'not below'} rated_win_rate {triggers.rated_win_rate:g}")
    return TriggerResult("ratings", FIRED if below else OK, reason, metrics, inputs)
