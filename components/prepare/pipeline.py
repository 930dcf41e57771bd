"""The prepare run: raw JSONL -> validated, normalised, redacted, deduplicated, split JSONL + report.

Streaming in batches: memory holds a few batches of lines plus the dedup indexes (a digest per kept
record, and a MinHash signature and LSH entry per kept record when near-dedup is on). Batches are parsed,
redacted and signed by ``batch.BatchParser`` (optionally in worker processes); dedup, split assignment
and writing happen here, in input order. Every input record ends in
exactly one place: a split file (kept), ``quarantine.jsonl`` with a rejection reason (quarantined), or
``quarantine.jsonl`` as an exact/near duplicate of an earlier line (deduplicated). ``run`` checks
kept + quarantined + deduplicated == input records before it returns.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import json
import multiprocessing as mp
import time
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.pool import AsyncResult
from pathlib import Path
from typing import Any

from components.prepare.batch import BatchParser, BatchResult, Parsed, init_worker, parse_in_worker
from tuneline.data.dedup import ExactDeduper, NearDeduper
from tuneline.data.jsonl import LineReader, RawLine, escape_bytes
from tuneline.data.minhash import Signer
from tuneline.data.pii import PII_TYPES
from tuneline.data.records import DUPLICATE_REASONS, Budget, Reason
from tuneline.data.split import SPLITS, SplitRatios, assign_split

LENGTH_BINS = (0, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)


@dataclass(frozen=True)
class PrepareConfig:
    raw: Path
    train_out: Path
    validation_out: Path
    test_out: Path
    report_out: Path
    near_dup: bool = True
    near_dup_threshold: float = 0.95
    num_perm: int = 128
    shingle_bytes: int = 5
    ratios: SplitRatios = field(default_factory=SplitRatios)
    budget: Budget = field(default_factory=lambda: Budget(max_chars=20_000, max_tokens=4_096))
    redact_pii: bool = True
    seed: str = "tuneline"
    batch_size: int = 512
    workers: int = 1  # processes for parsing/redaction/signing; 1 = in the main process

    def outputs(self) -> dict[str, Path]:
        return {"train": self.train_out, "validation": self.validation_out, "test": self.test_out}


class HashingWriter:
    """Appends JSON lines to a file, keeping count and a running sha256 of the bytes written."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._fh = path.open("wb", buffering=1 << 20)
        self._sha = hashlib.sha256()
        self.records = 0
        self.bytes = 0

    def write(self, obj: dict[str, Any]) -> None:
        data = json.dumps(obj, ensure_ascii=False).encode("utf-8") + b"\n"
        self._fh.write(data)
        self._sha.update(data)
        self.records += 1
        self.bytes += len(data)

    def close(self) -> dict[str, Any]:
        self._fh.close()
        return {"sha256": self._sha.hexdigest(), "records": self.records, "bytes": self.bytes}


@dataclass
class Stats:
    input_records: int = 0
    kept: int = 0
    quarantined: int = 0
    deduplicated: int = 0
    reasons: Counter[str] = field(default_factory=Counter)
    splits: Counter[str] = field(default_factory=Counter)
    pii_records: int = 0
    length_histogram: list[int] = field(default_factory=lambda: [0] * len(LENGTH_BINS))

    def check_invariant(self) -> None:
        total = self.kept + self.quarantined + self.deduplicated
        if total != self.input_records:
            raise RuntimeError(
                f"record accounting broken: kept {self.kept} + quarantined {self.quarantined} "
                f"+ deduplicated {self.deduplicated} = {total} != input {self.input_records}"
            )
        if sum(self.splits.values()) != self.kept:
            raise RuntimeError(f"split sizes {dict(self.splits)} do not add up to kept {self.kept}")


@dataclass
class Result:
    stats: Stats
    input_sha256: str
    input_lines: int
    blank_lines: int
    input_bytes: int
    pii_counts: Counter[str]
    outputs: dict[str, dict[str, Any]]
    seconds: float


def _raw_fields(line: RawLine) -> dict[str, Any]:
    try:
        return {"raw": line.data.decode("utf-8")}
    except UnicodeDecodeError:
        return {
            "raw": escape_bytes(line.data),
            "raw_escaped": True,
            "raw_base64": base64.b64encode(line.data).decode("ascii"),
        }


class _Run:
    """The order-dependent half: dedup against earlier records, split assignment, writing."""

    def __init__(self, cfg: PrepareConfig) -> None:
        self.cfg = cfg
        self.stats = Stats()
        self.pii: Counter[str] = Counter()
        self.exact = ExactDeduper()
        self.signer = Signer(cfg.num_perm, shingle_bytes=cfg.shingle_bytes)
        self.near = NearDeduper(self.signer, cfg.near_dup_threshold) if cfg.near_dup else None
        self.writers = {name: HashingWriter(path / "data.jsonl") for name, path in cfg.outputs().items()}
        self.quarantine = HashingWriter(cfg.report_out / "quarantine.jsonl")

    def parser_args(self) -> tuple[Budget, bool, Signer | None]:
        return self.cfg.budget, self.cfg.redact_pii, self.signer if self.near is not None else None

    def _quarantine(self, line: RawLine, reason: Reason, detail: str, **extra: Any) -> None:
        self.stats.reasons[reason] += 1
        if reason in DUPLICATE_REASONS:
            self.stats.deduplicated += 1
        else:
            self.stats.quarantined += 1
        self.quarantine.write(
            {"line": line.lineno, "reason": str(reason), "detail": detail, **extra, **_raw_fields(line)}
        )

    def _keep(self, item: Parsed) -> None:
        record, stats = item.record, self.stats
        group = record.group_key() or f"content={item.digest.hex()}"
        split = assign_split(group, self.cfg.ratios, self.cfg.seed)
        self.writers[split].write(record.to_json())
        stats.kept += 1
        stats.splits[split] += 1
        stats.pii_records += item.had_pii
        stats.length_histogram[bisect.bisect_right(LENGTH_BINS, record.chars) - 1] += 1

    def consume(self, n_lines: int, batch: BatchResult) -> None:
        self.stats.input_records += n_lines
        self.pii.update(batch.pii)
        for line, reason, detail in batch.rejected:
            self._quarantine(line, reason, detail)
        for i, item in enumerate(batch.parsed):
            original = self.exact.original_of(item.digest)
            if original is not None:
                self._quarantine(
                    item.line,
                    Reason.EXACT_DUPLICATE,
                    f"same content as line {original}",
                    duplicate_of=original,
                )
                continue
            if self.near is not None:
                assert batch.signatures is not None
                hit = self.near.check_and_add(batch.signatures[i], item.line.lineno)
                if hit is not None:
                    self._quarantine(
                        item.line,
                        Reason.NEAR_DUPLICATE,
                        f"estimated Jaccard {hit[1]:.3f} with line {hit[0]}",
                        duplicate_of=hit[0],
                        similarity=round(hit[1], 4),
                    )
                    continue
            self.exact.add(item.digest, item.line.lineno)
            self._keep(item)

    def close(self) -> dict[str, dict[str, Any]]:
        outputs = {f"{name}/data.jsonl": w.close() for name, w in self.writers.items()}
        outputs["report/quarantine.jsonl"] = self.quarantine.close()
        return outputs


def _batches(reader: LineReader, size: int) -> Iterator[list[RawLine]]:
    batch: list[RawLine] = []
    for line in reader:
        batch.append(line)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _process(state: _Run, batches: Iterator[list[RawLine]], workers: int) -> None:
    if workers <= 1:
        parse = BatchParser(*state.parser_args())
        for lines in batches:
            state.consume(len(lines), parse(lines))
        return
    # A bounded window of batches in flight keeps memory flat (Pool.imap would read the whole file
    # ahead); results are consumed in submission order, so output does not depend on timing.
    ctx = mp.get_context("fork")
    with ctx.Pool(workers, initializer=init_worker, initargs=state.parser_args()) as pool:
        window: deque[tuple[int, AsyncResult[BatchResult]]] = deque()
        for lines in batches:
            window.append((len(lines), pool.apply_async(parse_in_worker, (lines,))))
            if len(window) >= 2 * workers:
                n, pending = window.popleft()
                state.consume(n, pending.get())
        while window:
            n, pending = window.popleft()
            state.consume(n, pending.get())


def run(cfg: PrepareConfig) -> Result:
    """Process ``cfg.raw`` into the split folders and the quarantine file; see the module docstring."""
    start = time.perf_counter()
    reader = LineReader(cfg.raw)
    state = _Run(cfg)
    try:
        _process(state, _batches(reader, cfg.batch_size), cfg.workers)
    finally:
        outputs = state.close()
    state.stats.check_invariant()
    stats = state.stats
    if outputs["report/quarantine.jsonl"]["records"] != stats.quarantined + stats.deduplicated:
        raise RuntimeError("quarantine.jsonl line count differs from quarantined + deduplicated")
    if stats.input_records + reader.blank_lines != reader.lines:
        raise RuntimeError(
            f"{reader.lines} lines read but {stats.input_records} records + "
            f"{reader.blank_lines} blank lines accounted"
        )
    pii = Counter({name: state.pii.get(name, 0) for name in PII_TYPES})
    return Result(
        state.stats,
        reader.sha256,
        reader.lines,
        reader.blank_lines,
        reader.bytes,
        pii,
        outputs,
        time.perf_counter() - start,
    )


__all__ = ["LENGTH_BINS", "SPLITS", "PrepareConfig", "Result", "Stats", "run"]
