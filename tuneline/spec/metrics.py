"""The metric vocabulary the gates speak: which metrics an evaluation produces, which way each is better, and the
fields of the win rate against the champion. The pipeline language checks gate expressions and `gate_metric`
values against it when a pipeline loads; the LLM library computes exactly these (tuneline.llm.ml.metrics,
tuneline.llm.ml.winrate) and imports the names from here, so each is declared once.
"""

from __future__ import annotations

import re

TEXT_METRICS = ("exact_match", "token_f1", "rouge_l", "bleu", "chrf")
JSON_METRICS = ("json_valid", "schema_valid", "field_accuracy")  # plus field_acc_<name> per answer field
FIELD_METRIC_PREFIX = "field_acc_"
# The one place a metric's direction is known: these are better when smaller, every other metric when larger.
# The gates' default (``{better}``, see ``tuneline.spec.gates.expand``), register's champion comparison and the
# quality trigger's drop all read it through ``direction``.
LOWER_IS_BETTER = frozenset({"perplexity", "loss", "eval_loss"})


def direction(metric: str) -> str:
    """``"min"`` when a smaller value of ``metric`` is better, else ``"max"``."""
    return "min" if metric.removeprefix("tuned.") in LOWER_IS_BETTER else "max"


def unknown_metric(metric: str) -> str | None:
    """Why ``metric`` is not a name evaluate can ever produce, or None when it is one (whether it is produced
    for a given dataset is ``tuneline.llm.ml.metrics.metric_names``' answer)."""
    name = metric.removeprefix("tuned.")
    if name in (*TEXT_METRICS, "perplexity", *JSON_METRICS):
        return None
    if name.startswith(FIELD_METRIC_PREFIX) and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        return None
    return (f"'{name}' is not a metric evaluate produces; one of {', '.join(sorted((*TEXT_METRICS, 'perplexity')))}"
            f", or for JSON answers {', '.join(JSON_METRICS)}, {FIELD_METRIC_PREFIX}<field>")


WIN_RATE_FIELDS = ("value", "lower", "upper", "wins", "ties", "losses", "n")  # the gate's win_rate.<field> names
