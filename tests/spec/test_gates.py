import pytest

from tuneline.spec.gates import Gate, GateError

METRICS = {"base": {"exact_match": 0.1, "perplexity": 9.0}, "tuned": {"exact_match": 0.85, "perplexity": 2.0}}


def test_gate_from_the_demo_passes_and_reports_each_clause():
    result = Gate("tuned.exact_match >= 0.8 and tuned.exact_match - base.exact_match >= 0.3").evaluate(METRICS)
    assert result.passed is True
    assert [(c.text, c.value) for c in result.clauses] == [
        ("tuned.exact_match >= 0.8", True), ("tuned.exact_match - base.exact_match >= 0.3", True)]


@pytest.mark.parametrize(("expression", "expected"), [
    ("tuned.exact_match > 0.9", False),
    ("tuned.perplexity < base.perplexity / 2", True),
    ("not (tuned.exact_match < 0.5) or base.exact_match > 1", True),
    ("0.5 < tuned.exact_match <= 0.85", True),
    ("-base.exact_match + 0.2 == 0.1", True),
    ("champion.exact_match <= tuned.exact_match", True),  # no champion yet: nothing to beat
])
def test_gate_arithmetic_and_comparisons(expression, expected):
    assert Gate(expression).evaluate(METRICS).passed is expected


def test_champion_comparison_applies_when_present():
    metrics = {**METRICS, "champion": {"exact_match": 0.9, "perplexity": 1.5}}
    assert Gate("tuned.exact_match >= champion.exact_match").evaluate(metrics).passed is False


@pytest.mark.parametrize(("expression", "message"), [
    ("__import__('os').system('true')", "is not allowed"),
    ("tuned.exact_match.real > 0", "is not allowed"),
    ("tuned['exact_match'] > 0", "is not allowed"),
    ("exact_match > 0", "is not allowed"),
    ("staging.exact_match > 0", "unknown model 'staging'"),
    ("tuned.exact_match >=", "syntax error"),
    ("", "empty"),
    ("True", "is not allowed"),
])
def test_unsafe_or_malformed_expressions_are_rejected(expression, message):
    with pytest.raises(GateError, match=message):
        Gate(expression)


def test_unknown_metric_names_the_available_ones():
    expected = r"unknown metric 'accuracy' for tuned in gate \(available: exact_match, perplexity\)"
    with pytest.raises(GateError, match=expected):
        Gate("tuned.accuracy > 0.5").evaluate(METRICS)
