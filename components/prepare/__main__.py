"""Data preparation step: a dataset file or folder -> train/validation/test folders + a report folder.

Run as: python -m components.prepare --raw data/sample/tickets.jsonl --train-out out/train \
    --validation-out out/validation --test-out out/test --report-out out/report

Each split folder receives ``data.jsonl`` (chat format plus passthrough fields such as ``id``); the report
folder receives ``quarantine.jsonl``, ``data_card.json`` and ``data_card.md``. The input may be JSON Lines,
a JSON array, CSV or Parquet (``.gz``/``.zst`` compressed too), or a folder of them, in the chat, ShareGPT,
Alpaca or prompt/completion format, or one of the preference formats (TRL pairs, LLaMA-Factory ShareGPT pairs,
OpenAI preference, KTO), which are written as TRL's conversational preference records (``--format``,
``--columns``; ``tuneline.llm.data.preference``). Exits 2 when the input cannot be read or
its format cannot be told (the message names the file), and 1 when no record survives (the report is still
written, to show why).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tuneline.llm.data.formats import FormatError, parse_columns
from tuneline.step.args import parse_component_args


def _auto_workers(raw: Path) -> int:
    # Worker start-up costs more than it saves on small files (the demo dataset is ~350 KB).
    size = sum(p.stat().st_size for p in raw.rglob("*") if p.is_file()) if raw.is_dir() else raw.stat().st_size
    if size < 8 << 20:
        return 1
    return min(4, len(os.sched_getaffinity(0)))


def _gate_metric_fits(metric: str, *splits: Path) -> bool:
    """Whether evaluate can compute ``metric`` on these answers (JSON metrics need JSON-object answers)."""
    from tuneline.llm.ml.metrics import metric_names

    name = metric.removeprefix("tuned.")
    for split in splits:
        path = split / "data.jsonl"
        with path.open(encoding="utf-8") as fh:
            answers = [json.loads(line)["messages"][-1]["content"] for line in fh]
        if not answers:
            continue
        names = metric_names(answers)
        # schema_valid also needs evaluate's --schema; prepare cannot see it, so JSON answers are enough here.
        if name not in names and not (name == "schema_valid" and "json_valid" in names):
            print(f"prepare: gate_metric '{name}' cannot be computed on {path}: "
                  f"{'its answers are not all JSON objects; ' if 'json_valid' not in names else ''}"
                  f"metrics available for this data: {', '.join(names)}. "
                  f"Choose one with --set gate_metric=... (e.g. rouge_l for free text)", file=sys.stderr)
            return False
        return True
    return True


def main(argv: list[str] | None = None) -> int:
    args = parse_component_args(__file__, argv)
    raw: Path = args.raw
    if not raw.exists():
        print(f"prepare: input not found: {raw}", file=sys.stderr)
        return 2
    try:
        columns = parse_columns(args.columns or "")
    except FormatError as exc:
        print(f"prepare: {exc}", file=sys.stderr)
        return 2
    try:
        if raw.is_file():
            with raw.open("rb") as fh:
                fh.read(1)
    except OSError as exc:
        print(f"prepare: cannot read input file {raw}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    # Imported here, not at the top: datasketch loads scipy (~1 s), which --help and usage errors skip.
    from components.prepare.card import write_card
    from components.prepare.pipeline import PrepareConfig, config_fields, run
    from tuneline.llm.data.sources import SourceError

    try:
        cfg = PrepareConfig(
            raw=raw,
            columns=columns,
            train_out=args.train,
            validation_out=args.validation,
            test_out=args.test,
            report_out=args.report,
            workers=args.workers or _auto_workers(raw),
            **config_fields(args.parameters()),
        )
    except ValueError as exc:
        print(f"prepare: invalid parameters: {exc}", file=sys.stderr)
        return 2
    try:
        result = run(cfg)
    except (FormatError, SourceError) as exc:
        print(f"prepare: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"prepare: invalid parameters: {exc}", file=sys.stderr)
        return 2
    card = write_card(cfg, result)
    c = card["counts"]
    print(
        f"prepare: {raw}: {c['input_records']} records -> kept {c['kept']} "
        f"(train {card['splits']['train']}, validation {card['splits']['validation']}, "
        f"test {card['splits']['test']}), quarantined {c['quarantined']}, deduplicated {c['deduplicated']} "
        f"in {card['timing']['seconds']} s",
        file=sys.stderr,
    )
    sft = card["kind"] == "sft"
    if c["kept"] and args.gate_metric and sft and not _gate_metric_fits(args.gate_metric, cfg.test_out, cfg.train_out):
        return 2
    if c["kept"] == 0:
        reasons = {**card["rejected"], **card["duplicates"]}
        top = ", ".join(f"{k} {v}" for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]) if v)[:300]
        print(
            f"prepare: no records survived from {raw} "
            f"({c['input_records']} records; {top or 'file is empty'});"
            f" see {cfg.report_out / 'quarantine.jsonl'}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
