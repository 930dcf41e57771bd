"""Text and structured-output metrics over (prediction, reference) pairs. All scores are in [0, 1].

- ``exact_match``: equal after trimming and collapsing whitespace.
- ``token_f1``: SQuAD-style F1 over lower-cased word/punctuation tokens.
- ``rouge_l``: ROUGE-L F-measure (``rouge-score``).
- ``bleu`` / ``chrf``: corpus BLEU and chrF (``sacrebleu``), divided by 100.
- JSON answers (computed when references parse as JSON objects): ``json_valid`` (prediction parses as an
  object), ``schema_valid`` (it also satisfies the JSON schema, when one is given), ``field_accuracy``
  (share of reference fields whose value the prediction reproduces) and ``field_acc_<name>`` per field.

``example_scores`` scores each example alone, for judging two models example by example (win rate): the same
definitions per example, with sentence BLEU/chrF for the corpus ones and a field share per answer.
Perplexity has no per-example score here.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Sequence

from tuneline.spec.metrics import FIELD_METRIC_PREFIX, JSON_METRICS, TEXT_METRICS

_TOKEN = re.compile(r"\w+|[^\w\s]")


def normalize(text: str) -> str:
    return " ".join(text.split())


def exact_match(pred: str, ref: str) -> float:
    return float(normalize(pred) == normalize(ref))


def token_f1(pred: str, ref: str) -> float:
    p, r = _TOKEN.findall(pred.lower()), _TOKEN.findall(ref.lower())
    if not p and not r:
        return 1.0
    common = sum((Counter(p) & Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


def parse_json_object(text: str) -> dict | None:
    try:
        value = json.loads(text.strip())
    except (json.JSONDecodeError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def json_metrics(preds: Sequence[str], refs: Sequence[str], schema: dict | None) -> dict[str, float]:
    """Structured-output metrics; empty when the references are not JSON objects."""
    ref_objs = [parse_json_object(r) for r in refs]
    if not ref_objs or any(o is None for o in ref_objs):
        return {}
    validator = None
    if schema is not None:
        import jsonschema

        validator = jsonschema.Draft202012Validator(schema)
    pred_objs = [parse_json_object(p) for p in preds]
    out = {"json_valid": _mean([float(o is not None) for o in pred_objs])}
    if validator is not None:
        out["schema_valid"] = _mean([float(o is not None and validator.is_valid(o)) for o in pred_objs])
    per_field: dict[str, list[float]] = {}
    for pred, ref in zip(pred_objs, ref_objs, strict=True):
        for key, value in ref.items():
            per_field.setdefault(key, []).append(float(pred is not None and pred.get(key) == value))
    out["field_accuracy"] = _mean([v for values in per_field.values() for v in values])
    for key, values in sorted(per_field.items()):
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):  # usable as a metric name in gate expressions
            out[f"field_acc_{key}"] = _mean(values)
    return out


def text_metrics(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    import sacrebleu
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return {
        "exact_match": _mean([exact_match(p, r) for p, r in zip(preds, refs, strict=True)]),
        "token_f1": _mean([token_f1(p, r) for p, r in zip(preds, refs, strict=True)]),
        "rouge_l": _mean([scorer.score(r, p)["rougeL"].fmeasure for p, r in zip(preds, refs, strict=True)]),
        "bleu": sacrebleu.corpus_bleu(list(preds), [list(refs)]).score / 100,
        "chrf": sacrebleu.corpus_chrf(list(preds), [list(refs)]).score / 100,
    }


def metric_names(refs: Sequence[str], schema: dict | None = None) -> list[str]:
    """The metrics ``all_metrics`` (plus ``perplexity``) produces for these references, without scoring."""
    names = [*TEXT_METRICS, "perplexity"]
    objs = [parse_json_object(r) for r in refs]
    if objs and all(o is not None for o in objs):
        names += ["json_valid", "field_accuracy", *(["schema_valid"] if schema is not None else [])]
        keys = {k for o in objs for k in o if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)}  # type: ignore[union-attr]
        names += [f"{FIELD_METRIC_PREFIX}{k}" for k in sorted(keys)]
    return sorted(names)


def all_metrics(preds: Sequence[str], refs: Sequence[str], schema: dict | None = None) -> dict[str, float]:
    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} references")
    return {**text_metrics(preds, refs), **json_metrics(preds, refs, schema)}


def example_scores(metric: str, preds: Sequence[str], refs: Sequence[str], schema: dict | None = None) -> list[float]:
    """``metric`` for each (prediction, reference) on its own; ValueError for a metric that has none."""
    import sacrebleu

    if len(preds) != len(refs):
        raise ValueError(f"{len(preds)} predictions for {len(refs)} references")
    name = metric.removeprefix("tuned.")
    pairs = list(zip(preds, refs, strict=True))
    if name == "exact_match":
        return [exact_match(p, r) for p, r in pairs]
    if name == "token_f1":
        return [token_f1(p, r) for p, r in pairs]
    if name == "rouge_l":
        from rouge_score import rouge_scorer

        scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
        return [scorer.score(r, p)["rougeL"].fmeasure for p, r in pairs]
    if name == "bleu":
        return [sacrebleu.sentence_bleu(p, [r]).score / 100 for p, r in pairs]
    if name == "chrf":
        return [sacrebleu.sentence_chrf(p, [r]).score / 100 for p, r in pairs]
    if name in ("json_valid", "schema_valid", "field_accuracy") or name.startswith(FIELD_METRIC_PREFIX):
        return [_json_example(name, parse_json_object(p), parse_json_object(r), schema) for p, r in pairs]
    raise ValueError(f"'{name}' has no per-example score (one of {', '.join((*TEXT_METRICS, *JSON_METRICS))}, "
                     f"{FIELD_METRIC_PREFIX}<field>)")


def _json_example(name: str, pred: dict | None, ref: dict | None, schema: dict | None) -> float:
    if ref is None:
        raise ValueError(f"'{name}' needs JSON object references")
    if name == "json_valid":
        return float(pred is not None)
    if name == "schema_valid":
        if schema is None:
            raise ValueError("'schema_valid' needs a JSON schema")
        import jsonschema

        return float(pred is not None and jsonschema.Draft202012Validator(schema).is_valid(pred))
    keys = list(ref) if name == "field_accuracy" else [name.removeprefix(FIELD_METRIC_PREFIX)]
    keys = [k for k in keys if k in ref]
    if not keys:
        return 1.0  # nothing to reproduce in this answer: both models tie on it
    return _mean([float(pred is not None and pred.get(k) == ref[k]) for k in keys])
