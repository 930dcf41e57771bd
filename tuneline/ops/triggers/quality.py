"""Quality trigger: re-evaluate the champion on fresh labelled data and compare with its registered score.

The scoring is the code the evaluate component uses (`tuneline.llm.ml.generate` for greedy answers and
perplexity, `tuneline.llm.ml.metrics.all_metrics` for the scores), so a drop here means the same thing as a
failed gate there.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from ...spec.models import Triggers
from .champion import Champion, registered_metric, relative_drop
from .result import FIRED, OK, SKIPPED, TriggerResult


@dataclass(frozen=True)
class EvalOptions:
    max_examples: int = 64
    max_new_tokens: int = 32
    batch_size: int = 16
    max_seq_len: int = 512


def load_registered(champion: Champion, folder: Path):
    """(model, tokenizer) of a registered tuneline version, downloaded into `folder`."""
    from ...llm.ml.models import load_causal_lm, load_tokenizer, merge_lora
    from ...llm.registry import fetch_model, resolve_base_dir

    fetched = fetch_model(champion.uri, folder)
    tokenizer = load_tokenizer(fetched.model_dir, padding_side="left")
    base_dir = resolve_base_dir(fetched)
    if base_dir is not None:
        model = merge_lora(base_dir, fetched.model_dir)
    else:
        model = load_causal_lm(fetched.model_dir)
    return model.eval(), tokenizer


def score(model, tokenizer, labels: Path, metric: str, options: EvalOptions) -> tuple[dict[str, float], int]:
    """(all metrics, number of examples) of `model` on the labelled chat JSONL (file or split folder)."""
    import torch

    from tuneline.llm.ml.data import read_split
    from tuneline.llm.ml.generate import generate, perplexity
    from tuneline.llm.ml.metrics import all_metrics

    torch.manual_seed(0)
    split = read_split(labels, limit=options.max_examples)
    refs = [r.answer for r in split.records]
    preds = generate(model, tokenizer, split.records, options.max_new_tokens, options.batch_size)
    metrics = all_metrics(preds, refs, None)
    if metric == "perplexity":
        metrics["perplexity"] = perplexity(
            model, tokenizer, split.records, options.max_seq_len, options.batch_size
        )
    return metrics, len(refs)


def check_quality(
    client,
    champion: Champion | None,
    triggers: Triggers,
    root: Path,
    metric: str,
    options: EvalOptions | None = None,
) -> TriggerResult:
    if triggers.metric_drop is None:
        return TriggerResult("quality", SKIPPED, "not configured (metric_drop)")
    if not triggers.fresh_labels:
        return TriggerResult(
            "quality", SKIPPED, "metric_drop is set but fresh_labels is not: nothing to evaluate on"
        )
    labels = Path(triggers.fresh_labels)
    labels = labels if labels.is_absolute() else root / labels
    if not labels.exists():
        return TriggerResult(
            "quality",
            SKIPPED,
            f"fresh_labels {triggers.fresh_labels} does not exist yet",
            inputs={"fresh_labels": str(labels)},
        )
    if champion is None:
        return TriggerResult("quality", SKIPPED, "no champion registered yet: nothing to re-evaluate")
    registered, source = registered_metric(client, champion, metric)
    inputs = {
        "model": champion.name,
        "version": champion.version,
        "fresh_labels": str(labels),
        "metric": metric,
        "registered_source": source,
    }
    if registered is None:
        return TriggerResult(
            "quality",
            SKIPPED,
            f"champion v{champion.version} has no registered {metric}: {source}",
            inputs=inputs,
        )
    with tempfile.TemporaryDirectory(prefix="tuneline-champion-") as tmp:
        model, tokenizer = load_registered(champion, Path(tmp))
        metrics, n = score(model, tokenizer, labels, metric, options or EvalOptions())
    if metric not in metrics:
        raise ValueError(
            f"metric '{metric}' is not produced on {labels} (available: {', '.join(sorted(metrics))})"
        )
    current = metrics[metric]
    drop = relative_drop(registered, current, metric)
    fired = drop > triggers.metric_drop
    reason = (
        f"champion v{champion.version} {metric} {current:.4g} on {n} fresh examples vs {registered:.4g} "
        f"registered: {drop:+.1%} drop ({'>' if fired else '<='} metric_drop {triggers.metric_drop:.0%})"
    )
    out = {
        "registered_metric": registered,
        "current_metric": current,
        "metric_drop": drop,
        "fresh_examples": n,
        **{f"fresh.{k}": v for k, v in metrics.items()},
    }
    return TriggerResult("quality", FIRED if fired else OK, reason, out, inputs)
