"""The model card of a registered version (Markdown): intended use, data, training, metrics, limitations.

Logged as the run artifact ``model_card.md`` and set as the model version's description.
"""

from __future__ import annotations

from dataclasses import dataclass

from components.register.inputs import Evaluation, TrainedModel


@dataclass(frozen=True)
class CardContext:
    name: str
    version: int | None
    trained: TrainedModel
    evaluation: Evaluation
    code_version: str
    pipeline_run_id: str
    base_reference: str  # "bundled" or "by name, weights sha256 ..."
    gate_metric: str


def _fmt(value: float) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:.3e}"


def metrics_table(evaluation: Evaluation) -> list[str]:
    models = [m for m in ("base", "tuned", "champion") if m in evaluation.models]
    names = sorted({k for m in models for k in evaluation.models[m]})
    if not names:
        return ["(no metrics)"]
    lines = ["| metric | " + " | ".join(models) + " |", "|---|" + "---:|" * len(models)]
    for name in names:
        cells = [_fmt(evaluation.models[m][name]) if name in evaluation.models[m] else "" for m in models]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def render_card(ctx: CardContext) -> str:
    t, ev = ctx.trained, ctx.evaluation
    title = f"{ctx.name} v{ctx.version}" if ctx.version is not None else ctx.name
    data = t.summary.get("data") if isinstance(t.summary.get("data"), dict) else {}
    hyper = ", ".join(f"{k}={v}" for k, v in sorted(t.hyperparameters.items())) or "(not recorded)"
    gate = ev.gates.get("expression", "")
    lines = [
        f"# Model card: {title}",
        "",
        "## Intended use",
        f"A {t.method} fine-tune of `{t.base_model}` for the task in its training data (chat-formatted "
        "prompt -> answer). Intended for the narrow task it was evaluated on, behind an authenticated "
        "endpoint; "
        "not for open-ended chat, high-stakes decisions or any use without human review.",
        "",
        "## Model",
        f"- Base model: `{t.base_model}` ({ctx.base_reference})",
        f"- Method: {t.method} ({'LoRA adapter, merged at load' if t.is_adapter else 'full weights'})",
        f"- Hyperparameters: {hyper}",
        f"- Code version: `{ctx.code_version}`",
        f"- Pipeline run: `{ctx.pipeline_run_id or 'n/a'}`; training run: `{t.train_run_id or 'n/a'}`",
        "",
        "## Data",
        f"- Training data sha256: `{t.data_sha256 or 'n/a'}` ({data.get('n_train', '?')} examples)",
        f"- Validation data sha256: `{data.get('validation_sha256') or 'n/a'}` "
        f"({data.get('n_validation', '?')} examples)",
        f"- Test data sha256: `{ev.test_sha256 or 'n/a'}`",
        "",
        "## Evaluation",
        *metrics_table(ev),
        "",
        f"Quality gate: `{gate or 'n/a'}` -> {'passed' if ev.gates.get('passed', True) else 'failed'}. "
        f"Champion promotion compares `{ctx.gate_metric}`.",
        "",
        "## Limitations",
        f"- Small base model (`{t.base_model}`): limited knowledge and reasoning; it can produce fluent but "
        "wrong "
        "or malformed answers. Validate structured output before use.",
        "- Evaluated only on the held-out split of the same data source; quality on other distributions is "
        "unknown. Monitor drift and retrain (the pipeline's triggers).",
        "- The training data was PII-redacted by the prepare step; the model may still echo sensitive text "
        "from prompts.",
        "",
    ]
    return "\n".join(lines)
