"""The Markdown report: metrics side by side, gate clauses, and a few sample predictions."""

from __future__ import annotations

from tuneline.spec.gates import GateResult
from tuneline.spec.metrics import direction


def _code(text: str) -> str:
    """Model output shown inline: one line, and no backtick that would end the code span."""
    return "`" + " ".join(str(text).split()).replace("`", "'") + "`"


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _win_rate(contest: dict | None) -> list[str]:
    if not contest:
        return []
    return [f"- win rate against the champion: **{contest['value']:.3f}** (95% CI {contest['lower']:.3f}–"
            f"{contest['upper']:.3f}; {contest['wins']} won, {contest['ties']} tied, {contest['losses']} lost of "
            f"{contest['n']}; judge `{contest['judge']}`)"]


def render(metrics: dict[str, dict[str, float]], gate: GateResult, samples: list[dict], meta: dict) -> str:
    models = list(metrics)
    names = sorted({name for m in metrics.values() for name in m})
    lines = [
        "# Evaluation report",
        "",
        f"- test split: {meta['n_examples']} examples (sha256 `{meta['test_sha256'][:12]}`)",
        f"- base model: `{meta['base_model']}`; tuned model: `{meta['tuned_method']}` fine-tune",
        f"- generation: greedy, max {meta['max_new_tokens']} new tokens",
        f"- **gates {'PASSED' if gate.passed else 'FAILED'}**: `{gate.expression}`",
        *_win_rate(meta.get("win_rate")),
        "",
        "| metric | " + " | ".join(models) + " |",
        "|---|" + "---:|" * len(models),
    ]
    for name in names:
        arrow = " (lower is better)" if direction(name) == "min" else ""
        lines.append(f"| {name}{arrow} | " + " | ".join(_fmt(metrics[m].get(name)) for m in models) + " |")
    lines += ["", "## Gates", ""]
    lines += [f"- {'✅' if c.value else '❌'} `{c.text}`" for c in gate.clauses]
    lines += ["", "## Samples", ""]
    for sample in samples:
        lines.append(f"**{sample['id']}** — reference: {_code(sample['reference'])}")
        lines += [f"- {m}: {_code(sample[m])}" for m in models]
        lines.append("")
    return "\n".join(lines) + "\n"
