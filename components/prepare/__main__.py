"""Data preparation step: raw JSONL -> train/validation/test folders + a report folder.

Run as: python -m components.prepare --raw data/sample/tickets.jsonl --train-out out/train \
    --validation-out out/validation --test-out out/test --report-out out/report

Each split folder receives ``data.jsonl`` (chat format plus passthrough fields such as ``id``); the report
folder receives ``quarantine.jsonl``, ``data_card.json`` and ``data_card.md``. Exits 2 when the input file
cannot be read and 1 when no record survives (the report is still written, to show why).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tuneline.component_args import parse_component_args
from tuneline.data.records import Budget
from tuneline.data.split import SplitRatios


def _auto_workers(raw: Path) -> int:
    # Worker start-up costs more than it saves on small files (the demo dataset is ~350 KB).
    if raw.stat().st_size < 8 << 20:
        return 1
    return min(4, len(os.sched_getaffinity(0)))


def main(argv: list[str] | None = None) -> int:
    args = parse_component_args(__file__, argv)
    raw: Path = args.raw
    if not raw.is_file():
        print(f"prepare: input file not found (or not a file): {raw}", file=sys.stderr)
        return 2
    try:
        with raw.open("rb") as fh:
            fh.read(1)
    except OSError as exc:
        print(f"prepare: cannot read input file {raw}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    # Imported here, not at the top: datasketch loads scipy (~1 s), which --help and usage errors skip.
    from components.prepare.card import write_card
    from components.prepare.pipeline import PrepareConfig, run

    try:
        cfg = PrepareConfig(
            raw=raw,
            train_out=args.train,
            validation_out=args.validation,
            test_out=args.test,
            report_out=args.report,
            near_dup=args.near_dup,
            near_dup_threshold=args.near_dup_threshold,
            num_perm=args.num_perm,
            shingle_bytes=args.shingle_bytes,
            ratios=SplitRatios(validation=args.validation_ratio, test=args.test_ratio),
            budget=Budget(max_chars=args.max_chars, max_tokens=args.max_tokens),
            redact_pii=args.redact_pii,
            seed=args.seed,
            batch_size=args.batch_size,
            workers=args.workers or _auto_workers(raw),
        )
        result = run(cfg)
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
