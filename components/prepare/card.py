"""The data card: what went in, what came out and why, as ``data_card.json`` and ``data_card.md``."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from components.prepare.pipeline import LENGTH_BINS, SPLITS, PrepareConfig, Result
from tuneline.llm.data.reasons import PREFERENCE_REASONS
from tuneline.llm.data.records import DUPLICATE_REASONS, REJECT_REASONS

INVARIANT = "kept + quarantined + deduplicated == input_records"
BLANK_LINES = (
    "A blank (whitespace-only) line is not a record: it is counted in input.blank_lines, "
    "not in input_records; input.lines == input_records + blank_lines."
)


def _histogram(counts: list[int]) -> list[dict[str, Any]]:
    edges = [*LENGTH_BINS[1:], None]
    return [
        {"min_chars": lo, "max_chars": hi, "count": n}
        for lo, hi, n in zip(LENGTH_BINS, edges, counts, strict=True)
    ]


def _notes() -> dict[str, str]:
    """The card's fixed prose: how the counts and the rules are to be read."""
    return {
        "blank_lines": BLANK_LINES,
        "normalisation": "Unicode NFC; line endings to \\n, exotic spaces to ' ', invisible characters "
        "dropped, trailing spaces stripped. NFKC is not used: it rewrites x² to x2, ﬁ to fi.",
        "near_dup_text": "MinHash over byte n-grams of the non-system turns, case-folded; system prompts "
        "are "
        "shared by many records and would inflate every similarity.",
        "quarantine": "quarantine.jsonl keeps the raw source record, unredacted: handle it like the input. "
        "Each row names its file and line (JSON Lines) or row (JSON arrays, CSV, Parquet).",
        "preference": "Preference records are written in TRL's conversational shape (prompt/chosen/rejected, "
        "or prompt/completion/label for KTO). A pair is deduplicated and split on its prompt, a KTO record "
        "deduplicated on prompt + completion and split on its prompt: one prompt never lands in two splits. "
        "PII is redacted on every side; quality rules apply to the side trained towards.",
        "repetition": "Gopher repetition rules (Rae et al. 2021, Table A1; datatrove GopherRepetitionFilter "
        "thresholds) on assistant turns: duplicate 5..10-gram character fractions, and top 2..4-gram "
        "fractions from 50 words; max_repetition is the 5-gram threshold, the others keep their ratio.",
    }


def build_card(cfg: PrepareConfig, result: Result) -> dict[str, Any]:
    s = result.stats
    rules = cfg.rules
    return {
        "input": {
            "file": cfg.raw.name,
            "sha256": result.input_sha256,
            "bytes": result.input_bytes,
            "lines": result.input_lines,
            "blank_lines": result.blank_lines,
            "input_records": s.input_records,
            "files": result.files,
            "ignored_files": result.ignored,
        },
        "kind": result.kind,
        "formats": {fmt: {"read": n, "kept": s.formats_kept.get(fmt, 0)} for fmt, n in sorted(s.formats_read.items())},
        "counts": {
            "input_records": s.input_records,
            "kept": s.kept,
            "quarantined": s.quarantined,
            "deduplicated": s.deduplicated,
            "invariant": INVARIANT,
            "invariant_holds": s.kept + s.quarantined + s.deduplicated == s.input_records,
        },
        # An SFT card does not list the reasons only preference records can have.
        "rejected": {str(r): s.reasons.get(r, 0) for r in REJECT_REASONS
                     if result.kind != "sft" or r not in PREFERENCE_REASONS},
        "duplicates": {str(r): s.reasons.get(r, 0) for r in DUPLICATE_REASONS},
        "quality_rules": {
            "no_user_turn": {"enabled": rules.require_user_turn, "quarantined": s.reasons.get("no_user_turn", 0)},
            "empty_answer": {"min_answer_chars": rules.min_answer_chars,
                             "quarantined": s.reasons.get("empty_answer", 0)},
            "degenerate_repetition": {"max_repetition": rules.max_repetition,
                                      "quarantined": s.reasons.get("degenerate_repetition", 0)},
            "too_many_chars": {"max_chars": cfg.budget.max_chars, "quarantined": s.reasons.get("too_many_chars", 0)},
            "too_many_tokens": {"max_tokens": cfg.budget.max_tokens,
                                "quarantined": s.reasons.get("too_many_tokens", 0)},
            "near_duplicate": {"threshold": cfg.near_dup_threshold if cfg.near_dup else None,
                               "deduplicated": s.reasons.get("near_duplicate", 0)},
        },
        "splits": {name: s.splits.get(name, 0) for name in SPLITS},
        "pii": {
            "redaction": cfg.redact_pii,
            "records_with_pii": s.pii_records,
            "by_type": dict(result.pii_counts),
        },
        "length_histogram": _histogram(s.length_histogram),
        "outputs": result.outputs,
        "parameters": {
            "format": cfg.format,
            "columns": cfg.columns,
            "near_dup": cfg.near_dup,
            "near_dup_threshold": cfg.near_dup_threshold,
            "num_perm": cfg.num_perm,
            "shingle_bytes": cfg.shingle_bytes,
            "validation_ratio": cfg.ratios.validation,
            "test_ratio": cfg.ratios.test,
            **asdict(cfg.budget),
            **asdict(cfg.rules),
            "redact_pii": cfg.redact_pii,
            "seed": cfg.seed,
        },
        "notes": _notes(),
        "timing": {
            "seconds": round(result.seconds, 3),
            "records_per_second": round(s.input_records / result.seconds, 1) if result.seconds else None,
        },
    }


def render_markdown(card: dict[str, Any]) -> str:
    c, inp = card["counts"], card["input"]
    lines = [
        f"# Data card: {inp['file']}",
        "",
        f"Input sha256 `{inp['sha256']}`, {inp['bytes']} bytes, {inp['lines']} lines "
        f"({inp['blank_lines']} blank), {c['input_records']} records; {card['kind']} data.",
        "",
        "| format | read | kept |",
        "|---|---:|---:|",
        *(f"| {k} | {v['read']} | {v['kept']} |" for k, v in card["formats"].items()),
        "",
        "| file | type | format | records |",
        "|---|---|---|---:|",
        *(f"| {f['file']} | {f['type']} | {f['format']} | {f['records']} |" for f in inp["files"]),
        "",
        "| kept | quarantined | deduplicated | input records |",
        "|---:|---:|---:|---:|",
        f"| {c['kept']} | {c['quarantined']} | {c['deduplicated']} | {c['input_records']} |",
        "",
        f"Invariant `{c['invariant']}`: {'holds' if c['invariant_holds'] else 'BROKEN'}.",
        "",
        "## Splits",
        "",
        "| split | records |",
        "|---|---:|",
        *(f"| {k} | {v} |" for k, v in card["splits"].items()),
        "",
        "## Quarantine reasons",
        "",
        "| reason | records |",
        "|---|---:|",
        *(f"| {k} | {v} |" for k, v in {**card["rejected"], **card["duplicates"]}.items()),
        "",
        f"## PII redacted (redaction {'on' if card['pii']['redaction'] else 'off'}; "
        f"{card['pii']['records_with_pii']} kept records touched)",
        "",
        "| type | matches |",
        "|---|---:|",
        *(f"| {k} | {v} |" for k, v in card["pii"]["by_type"].items()),
        "",
        "## Length of kept records (characters)",
        "",
        "| from | to | records |",
        "|---:|---:|---:|",
        *(
            f"| {b['min_chars']} | {b['max_chars'] if b['max_chars'] is not None else '∞'} | {b['count']} |"
            for b in card["length_histogram"]
        ),
        "",
        "## Outputs",
        "",
        "| file | records | sha256 |",
        "|---|---:|---|",
        *(f"| {k} | {v['records']} | `{v['sha256']}` |" for k, v in card["outputs"].items()),
        "",
        "## Notes",
        "",
        *(f"- {k}: {v}" for k, v in card["notes"].items()),
        "",
    ]
    return "\n".join(lines)


def write_card(cfg: PrepareConfig, result: Result) -> dict[str, Any]:
    card = build_card(cfg, result)
    out = Path(cfg.report_out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "data_card.json").write_text(
        json.dumps(card, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (out / "data_card.md").write_text(render_markdown(card), encoding="utf-8")
    return card
