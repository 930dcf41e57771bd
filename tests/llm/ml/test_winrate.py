"""Win rate with its Wilson interval, and the per-example scores that judge it."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tuneline.llm.ml.judge import JudgeError, LLMJudge, verdict
from tuneline.llm.ml.metrics import all_metrics, example_scores
from tuneline.llm.ml.winrate import TooFewExamples, outcomes, win_rate


def test_outcomes_count_ties_half_and_follow_the_metric_direction():
    assert outcomes([1.0, 0.5, 0.0], [0.0, 0.5, 1.0]) == [1.0, 0.5, 0.0]
    assert outcomes([2.0, 3.0], [3.0, 3.0], higher_is_better=False) == [1.0, 0.5]
    with pytest.raises(ValueError, match="2 candidate scores for 1"):
        outcomes([1, 2], [1])


def test_a_clear_winner_has_an_interval_above_one_half_and_a_coin_flip_does_not():
    clear = win_rate([1.0] * 40 + [0.0] * 8, judge="metric:x")
    assert clear.value == pytest.approx(40 / 48) and clear.lower > 0.6 and clear.upper <= 1.0
    assert (clear.wins, clear.ties, clear.losses, clear.n) == (40, 0, 8, 48)
    even = win_rate([1.0] * 12 + [0.0] * 12 + [0.5] * 24, judge="metric:x")
    assert even.value == 0.5 and even.lower < 0.5 < even.upper
    # The interval narrows with the number of examples, as a sampling interval must.
    assert (win_rate([1.0, 0.0] * 100, "m").upper - win_rate([1.0, 0.0] * 100, "m").lower
            < even.upper - even.lower)
    with pytest.raises(ValueError, match="1 \\(win\\), 0.5 \\(tie\\) or 0"):
        win_rate([0.7] * 10, "m")


def test_a_handful_of_lucky_wins_cannot_pass_a_better_than_the_champion_gate():
    # A percentile bootstrap of unanimous wins has zero width (lower bound 1.0 on any n): too few contests are
    # refused, and the interval is the exact binomial one on the decisive contests.
    for n in (1, 3, 9):
        with pytest.raises(TooFewExamples, match=f"{n} examples judged"):
            win_rate([1.0] * n, "m")
    assert win_rate([1.0] * 10, "m").lower == pytest.approx(0.025 ** (1 / 10))  # P(10 of 10 | p) = 2.5%
    assert win_rate([1.0] * 5 + [0.5] * 5, "m").lower < 0.5 < win_rate([1.0] * 6 + [0.5] * 4, "m").lower
    # Clopper-Pearson for 40 of 48 (scipy.stats.beta.ppf(0.025, 40, 9), beta.ppf(0.975, 41, 8)).
    clear = win_rate([1.0] * 40 + [0.0] * 8, "m")
    assert (clear.lower, clear.upper) == pytest.approx((0.697778, 0.925189), abs=1e-6)


def test_ties_neither_count_as_coin_flips_nor_hide_a_clear_sign():
    # 8 wins, 39 ties, 1 loss (a two-sided sign test p of 0.039): better than the champion, as ties say nothing.
    mostly_ties = win_rate([1.0] * 8 + [0.5] * 39 + [0.0], "m")
    assert mostly_ties.value == pytest.approx(55 / 96) and 0.5 < mostly_ties.lower < 0.51
    assert (mostly_ties.wins, mostly_ties.ties, mostly_ties.losses) == (8, 39, 1)
    ties = win_rate([0.5] * 10, "m")
    assert (ties.value, ties.lower, ties.upper, ties.ties) == (0.5, 0.5, 0.5, 10)


def test_example_scores_average_to_the_corpus_metric():
    refs = ['{"team": "billing", "priority": "high"}', '{"team": "network", "priority": "low"}', '{"team": "x"}']
    preds = ['{"team": "billing", "priority": "low"}', 'not json', '{"team": "x"}']
    corpus = all_metrics(preds, refs)
    for metric in ("exact_match", "token_f1", "rouge_l", "json_valid"):
        scores = example_scores(metric, preds, refs)
        assert sum(scores) / len(scores) == pytest.approx(corpus[metric])
    assert example_scores("field_accuracy", preds, refs) == [0.5, 0.0, 1.0]
    assert example_scores("field_acc_priority", preds, refs) == [0.0, 0.0, 1.0]  # absent field: a tie, not a loss
    with pytest.raises(ValueError, match="no per-example score"):
        example_scores("perplexity", preds, refs)


@pytest.mark.parametrize(("reply", "expected"), [("A", "A"), (" b.", "B"), ("**T**", "T"), ("Answer A", None),
                                                 ("", None)])
def test_judge_verdicts_are_one_letter(reply, expected):
    assert verdict(reply) == expected


def test_an_unreachable_judge_is_named():
    with pytest.raises(JudgeError, match="expected an http"):
        LLMJudge("127.0.0.1:9", "m")
    judge = LLMJudge("http://127.0.0.1:9/v1", "m", timeout_s=2)
    from tuneline.llm.ml.judge import Contest

    with pytest.raises(JudgeError, match="judge http://127.0.0.1:9/v1/chat/completions"):
        judge.outcome(Contest("q", "a", "b"))


class _Judge(BaseHTTPRequestHandler):
    """A stand-in for an LLM endpoint (none runs in unit tests) that answers every comparison in prose."""

    def do_POST(self):  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        body = json.dumps({"choices": [{"message": {"content": "The first answer is better."}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_judge_whose_replies_cannot_be_read_is_refused_not_counted_as_ties():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        from tuneline.llm.ml.judge import Contest

        judge = LLMJudge(f"http://127.0.0.1:{server.server_port}/v1", "m", timeout_s=10)
        with pytest.raises(JudgeError, match="20 of 20 replies were not A, B or T"):
            judge.outcomes([Contest("q", "a", "b")] * 10)
    finally:
        server.shutdown()
        server.server_close()
