import pytest

from tuneline.llm.ml.metrics import all_metrics, exact_match, json_metrics, token_f1

SCHEMA = {"type": "object", "properties": {"a": {"enum": ["x", "y"]}, "b": {"type": "integer"}},
          "required": ["a", "b"], "additionalProperties": False}


def test_exact_match_ignores_surrounding_and_repeated_whitespace():
    assert exact_match("  hello   world\n", "hello world") == 1.0
    assert exact_match("hello", "Hello") == 0.0


def test_token_f1_counts_overlap():
    assert token_f1("the cat sat", "the cat sat") == 1.0
    assert token_f1("the cat", "the cat sat on") == pytest.approx(2 * 1.0 * 0.5 / 1.5)
    assert token_f1("dog", "cat") == 0.0


def test_json_metrics_per_field_and_schema():
    refs = ['{"a": "x", "b": 1}', '{"a": "y", "b": 2}']
    preds = ['{"a": "x", "b": 3}', 'not json']
    out = json_metrics(preds, refs, SCHEMA)
    assert out["json_valid"] == 0.5
    assert out["schema_valid"] == 0.5
    assert out["field_acc_a"] == 0.5 and out["field_acc_b"] == 0.0
    assert out["field_accuracy"] == 0.25


def test_json_metrics_are_absent_for_plain_text_answers():
    assert json_metrics(["hi"], ["hello"], None) == {}


def test_all_metrics_perfect_predictions_score_one():
    refs = ['{"a": "x", "b": 1}', '{"a": "y", "b": 2}']
    out = all_metrics(refs, refs, SCHEMA)
    assert all(value == pytest.approx(1.0) for value in out.values()), out
    assert {"exact_match", "token_f1", "rouge_l", "bleu", "chrf", "schema_valid", "field_accuracy"} <= set(out)


def test_direction_is_known_in_one_place_and_drives_the_gate_default():
    from tuneline.spec.gates import Gate, expand
    from tuneline.spec.metrics import direction

    assert (direction("perplexity"), direction("tuned.perplexity"), direction("rouge_l")) == ("min", "min", "max")
    assert expand("tuned.{metric} {better} base.{metric}", "perplexity") == "tuned.perplexity < base.perplexity"
    assert expand("tuned.{metric} {better}= base.{metric}", "tuned.rouge_l") == "tuned.rouge_l >= base.rouge_l"
    lower = {"base": {"perplexity": 9.0}, "tuned": {"perplexity": 4.0}}
    assert Gate(expand("tuned.{metric} {better} base.{metric}", "perplexity")).evaluate(lower).passed


def test_unknown_metric_names_what_evaluate_produces():
    from tuneline.spec.metrics import unknown_metric

    assert unknown_metric("rouge_l") is None and unknown_metric("tuned.field_acc_priority") is None
    assert "'rouge' is not a metric evaluate produces" in unknown_metric("rouge")
