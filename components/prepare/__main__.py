"""Data preparation step: a dataset file or folder -> train/validation/test folders + a report folder.

Run as: python -m components.prepare --raw data/sample/tickets.jsonl --train-out out/train \
    --validation-out out/validation --test-out out/test --report-out out/report

Each split folder receives ``data.jsonl`` (chat format plus passthrough fields such as ``id``); the report
folder receives ``quarantine.jsonl``, ``data_card.json`` and ``data_card.md``. The input may be JSON Lines,
a JSON array, CSV or Parquet (``.gz``/``.zst`` compressed too), or a folder of them, in the chat, ShareGPT,
Alpaca or prompt/completion format (``--format``, ``--columns``). Exits 2 when the input cannot be read or
its format cannot be told (the message names the file), and 1 when no record survives (the report is still
written, to show why).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tuneline.data.formats import FORMAT_CHOICES, MAPPABLE, FormatError, parse_columns
from tuneline.data.quality import GOPHER_BASE, QualityRules
from tuneline.data.records import Budget
from tuneline.data.split import SplitRatios

NEAR_DUP_THRESHOLD = 0.95  # kept equal to pipeline.NEAR_DUP_THRESHOLD (importing it would load datasketch)


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _unit(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text}")
    return value


def _columns(text: str) -> dict[str, str]:
    try:
        return parse_columns(text)
    except FormatError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _auto_workers(raw: Path) -> int:
    # Worker start-up costs more than it saves on small files (the demo dataset is ~350 KB).
    size = sum(p.stat().st_size for p in raw.rglob("*") if p.is_file()) if raw.is_dir() else raw.stat().st_size
    if size < 8 << 20:
        return 1
    return min(4, len(os.sched_getaffinity(0)))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m components.prepare",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--raw", type=Path, required=True,
                   help="dataset: .jsonl, .json, .csv, .tsv or .parquet (optionally .gz/.zst), or a folder of them")
    p.add_argument("--format", default="auto", choices=FORMAT_CHOICES,
                   help="record format; auto detects it per file from its first records")
    p.add_argument("--columns", type=_columns, default={},
                   help="map your columns to format fields: FIELD=COLUMN,... e.g. prompt=text,completion=ground_truth "
                   "(fields: " + ", ".join(MAPPABLE) + ")")
    p.add_argument("--train-out", type=Path, required=True, help="folder for the train split (data.jsonl)")
    p.add_argument("--validation-out", type=Path, required=True, help="folder for the validation split")
    p.add_argument("--test-out", type=Path, required=True, help="folder for the test split")
    p.add_argument(
        "--report-out",
        type=Path,
        required=True,
        help="folder for quarantine.jsonl, data_card.json and data_card.md",
    )
    p.add_argument(
        "--near-dup", type=_bool, default=True, help="drop near-duplicates (MinHash LSH): true|false"
    )
    p.add_argument(
        "--near-dup-threshold",
        type=_unit,
        default=NEAR_DUP_THRESHOLD,
        help="estimated Jaccard similarity (5-byte shingles) at or above which a record is a near-duplicate",
    )
    p.add_argument("--num-perm", type=int, default=128, help="MinHash permutations (signature length)")
    p.add_argument("--shingle-bytes", type=int, default=5, help="near-dup shingle size in UTF-8 bytes (1-8)")
    p.add_argument("--validation-ratio", type=_unit, default=0.1, help="share of groups in validation")
    p.add_argument("--test-ratio", type=_unit, default=0.1, help="share of groups in test")
    p.add_argument(
        "--max-chars",
        type=_non_negative,
        default=20_000,
        help="reject records whose message text exceeds this many characters (0: no limit)",
    )
    p.add_argument(
        "--max-tokens",
        type=_non_negative,
        default=4_096,
        help="reject records over this many estimated tokens (0: no limit)",
    )
    p.add_argument("--require-user-turn", type=_bool, default=True,
                   help="quarantine a record whose first assistant turn has no user turn before it: true|false")
    p.add_argument("--min-answer-chars", type=_non_negative, default=1,
                   help="quarantine an assistant turn with fewer letters/digits after normalisation (0: off)")
    p.add_argument("--max-repetition", type=_unit, default=GOPHER_BASE,
                   help="Gopher duplicate 5-gram character fraction above which an assistant turn is degenerate "
                   "repetition; the 6..10-gram and top 2..4-gram thresholds scale with it (0: off)")
    p.add_argument(
        "--redact-pii", type=_bool, default=True, help="replace PII with typed placeholders: true|false"
    )
    p.add_argument("--seed", default="tuneline", help="salt of the split hash; change it to reshuffle splits")
    p.add_argument("--batch-size", type=int, default=512, help="lines processed per batch")
    p.add_argument(
        "--workers",
        type=_non_negative,
        default=0,
        help="processes that parse, redact and sign batches (0: 1 for files under 8 MiB, else one per "
        "available CPU, at most 4; "
        "1: all in the main process); the output is identical for any value",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    raw: Path = args.raw
    if not raw.exists():
        print(f"prepare: input not found: {raw}", file=sys.stderr)
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
    from components.prepare.pipeline import PrepareConfig, run
    from tuneline.data.sources import SourceError

    try:
        cfg = PrepareConfig(
            raw=raw,
            format=args.format,
            columns=args.columns,
            train_out=args.train_out,
            validation_out=args.validation_out,
            test_out=args.test_out,
            report_out=args.report_out,
            near_dup=args.near_dup,
            near_dup_threshold=args.near_dup_threshold,
            num_perm=args.num_perm,
            shingle_bytes=args.shingle_bytes,
            ratios=SplitRatios(validation=args.validation_ratio, test=args.test_ratio),
            budget=Budget(max_chars=args.max_chars, max_tokens=args.max_tokens),
            rules=QualityRules(require_user_turn=args.require_user_turn, min_answer_chars=args.min_answer_chars,
                               max_repetition=args.max_repetition),
            redact_pii=args.redact_pii,
            seed=args.seed,
            batch_size=args.batch_size,
            workers=args.workers or _auto_workers(raw),
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
