"""The ratings trigger: the champion's win rate over rated traffic, from "no" to "yes" on a real log and rating
store, and only on what the champion served to users."""

from __future__ import annotations

from tuneline.ops.triggers.champion import Champion
from tuneline.ops.triggers.ratings import check_ratings, outcome
from tuneline.serving.requestlog import RatingStore, RequestLogger, token_digest
from tuneline.spec.models import Triggers

BY = token_digest("token")


def _serve_and_rate(folder, ratings, corrected=()):
    logger = RequestLogger(folder / "requests.jsonl")
    store = RatingStore(folder / "ratings.jsonl")
    for i, rating in enumerate(ratings):
        rid = logger.log(f"ticket {i}", '{"category": "bug"}', by=BY)
        store.rate(rid, rating, once=True, by=BY, correction='{"category": "billing"}' if i in corrected else "")


def test_outcomes_of_a_rating():
    assert [outcome(r, False) for r in (1, 2, 3, 4, 5)] == [0.0, 0.0, 0.5, 1.0, 1.0]
    assert outcome(5, True) == 0.0  # corrected: the user said what the answer should have been


def test_ratings_trigger_goes_from_no_to_yes(tmp_path):
    triggers = Triggers(rated_win_rate=0.6, requests_log="requests.jsonl")
    _serve_and_rate(tmp_path, [5, 4, 4, 5, 3] * 8)  # 32 good answers, 8 ties: 0.9
    ok = check_ratings(triggers, tmp_path, min_ratings=30)
    assert ok.status == "ok" and ok.metrics["rated_win_rate.value"] == 0.9, ok.reason
    # Then the champion's answers get worse: 40 more, mostly bad, and the newest 40 are judged.
    _serve_and_rate(tmp_path, [1, 2, 4, 2, 1] * 8, corrected={0, 5, 10})
    fired = check_ratings(triggers, tmp_path, window=40, min_ratings=30)
    assert fired.status == "fired", fired.reason
    assert fired.metrics["rated_win_rate.upper"] < 0.6 and fired.metrics["ratings"] == 40
    assert "below rated_win_rate 0.6" in fired.reason


def test_a_few_bad_ratings_do_not_fire_and_older_champions_answers_do_not_count(tmp_path):
    triggers = Triggers(rated_win_rate=0.6, requests_log="requests.jsonl")
    _serve_and_rate(tmp_path, [1] * 10)
    few = check_ratings(triggers, tmp_path, min_ratings=30)
    assert few.status == "skipped" and "10 rated answers in the log (< 30 needed)" in few.reason
    _serve_and_rate(tmp_path, [1] * 40)
    import time

    champion = Champion(name="m", version=2, created=time.time() + 1, run_id=None)  # registered after them all
    assert check_ratings(triggers, tmp_path, champion).status == "skipped"
    # Lines an operator logged by hand (no token) are not users' traffic.
    logger = RequestLogger(tmp_path / "requests.jsonl")
    store = RatingStore(tmp_path / "ratings.jsonl")
    for i in range(40):
        store.rate(logger.log(f"op {i}", "x"), 5)
    assert check_ratings(triggers, tmp_path).metrics["rated_win_rate.n"] == 50  # the 50 users' answers only


def test_not_configured_or_no_log(tmp_path):
    assert check_ratings(Triggers(), tmp_path).status == "skipped"
    assert "requests_log is not" in check_ratings(Triggers(rated_win_rate=0.5), tmp_path).reason
    assert "no ratings yet" in check_ratings(Triggers(rated_win_rate=0.5, requests_log="r.jsonl"), tmp_path).reason
