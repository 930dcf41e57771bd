"""The prepare run: a dataset file or folder -> validated, normalised, redacted, deduplicated, split chat
JSONL + report.

The input is read by ``tuneline.llm.data.sources`` (JSON Lines, JSON arrays, CSV, Parquet, compressed, folders);
each file's record format is detected (``tuneline.llm.data.formats``) for every file before any output is
written, so an undetectable or mixed file fails the step at once with one error naming it.
Streaming in batches: memory holds a few batches of records plus the dedup indexes (a digest per kept
record, and a MinHash signature and LSH entry per kept record when near-dedup is on). Batches are parsed,
redacted and signed by ``batch.BatchParser`` (optionally in worker processes); dedup, split assignment
and writing happen here, in input order. Every input record ends in exactly one place: a split file
(kept), ``quarantine.jsonl`` with a rejection reason (quarantined), or ``quarantine.jsonl`` as an
exact/near duplicate of an earlier record (deduplicated); quarantine rows name the record's file and line
or row. ``run`` checks kept + quarantined + deduplicated == input records before it returns.
"""

from __future__ import annotations

import base64
import bisect
import functools
import hashlib
import json
import multiprocessing as mp
import time
from collections import Counter, deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from multiprocessing.pool import AsyncResult
from pathlib import Path
from typing import Any

from components.prepare.batch import BatchParser, BatchResult, Checks, Parsed, init_worker, parse_in_worker
from tuneline.llm.data.dedup import ExactDeduper, NearDeduper
from tuneline.llm.data.formats import SAMPLE, FormatError, apply_columns, detect_file, kind
from tuneline.llm.data.jsonl import escape_bytes
from tuneline.llm.data.minhash import Signer
from tuneline.llm.data.pii import PII_TYPES
from tuneline.llm.data.quality import QualityRules
from tuneline.llm.data.records import DUPLICATE_REASONS, Budget, Reason, RecordError, decode_line, load_json
from tuneline.llm.data.sources import Dataset, Item, SourceFile, encoding_problem, raw_text
from tuneline.llm.data.split import SPLITS, SplitRatios, assign_split
from tuneline.spec.load import load_component
from tuneline.step.progress import report as report_progress

LENGTH_BINS = (0, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
# The runner draws the newest progress line; one every half second is live enough and costs nothing measurable
# (a clock read per batch of 512 records, one short file append per half second).
PROGRESS_EVERY_S = 0.5


@functools.cache
def input_defaults() -> dict[str, Any]:
    """The defaults component.yaml declares for prepare's inputs: their one declaration (the near-dup threshold's
    is the one bench/neardup_bench.py measured)."""
    spec = load_component(Path(__file__).parent).spec
    return {name: inp.default for name, inp in spec.inputs.items() if inp.default is not None}


def config_fields(inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The `PrepareConfig` fields that prepare's inputs (by their component.yaml names) set."""
    return {
        "format": inputs["format"],
        "near_dup": inputs["near_dup"],
        "near_dup_threshold": inputs["near_dup_threshold"],
        "num_perm": inputs["num_perm"],
        "shingle_bytes": inputs["shingle_bytes"],
        "ratios": SplitRatios(validation=inputs["validation_ratio"], test=inputs["test_ratio"]),
        "budget": Budget(max_chars=inputs["max_chars"], max_tokens=inputs["max_tokens"]),
        "rules": QualityRules(require_user_turn=inputs["require_user_turn"],
                              min_answer_chars=inputs["min_answer_chars"], max_repetition=inputs["max_repetition"]),
        "redact_pii": inputs["redact_pii"],
        "seed": inputs["seed"],
        "batch_size": inputs["batch_size"],
    }


@dataclass(frozen=True)
class PrepareConfig:
    """What one prepare run does. The settings that are component inputs have no default here: `for_files`
    fills those not given from component.yaml, the only place they are declared."""

    raw: Path
    train_out: Path
    validation_out: Path
    test_out: Path
    report_out: Path
    format: str  # auto or one of ``formats.FORMATS``
    near_dup: bool
    near_dup_threshold: float
    num_perm: int
    shingle_bytes: int
    ratios: SplitRatios
    budget: Budget
    rules: QualityRules
    redact_pii: bool
    seed: str
    batch_size: int
    columns: dict[str, str] = field(default_factory=dict)  # format field -> the file's column
    workers: int = 1  # processes for parsing/redaction/signing; 1 = in the main process

    @classmethod
    def for_files(cls, raw: Path, out: Path, **fields: Any) -> PrepareConfig:
        """A config reading `raw` and writing the four outputs under `out`; fields not given take their
        component.yaml defaults."""
        outputs = {"train_out": out / "train", "validation_out": out / "validation", "test_out": out / "test",
                   "report_out": out / "report"}
        return cls(raw=raw, **{**outputs, **config_fields(input_defaults()), **fields})

    def outputs(self) -> dict[str, Path]:
        return {"train": self.train_out, "validation": self.validation_out, "test": self.test_out}


# ``json.dumps(obj, ensure_ascii=False)`` builds a new encoder per call; one shared encoder writes the same text.
_ENCODE = json.JSONEncoder(ensure_ascii=False).encode


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
        data = _ENCODE(obj).encode("utf-8") + b"\n"
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
    formats_read: Counter[str] = field(default_factory=Counter)  # input records by their file's format
    formats_kept: Counter[str] = field(default_factory=Counter)
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
    files: list[dict[str, Any]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    kind: str = "sft"  # sft, pairs or kto (``formats.kind``)


def _raw_fields(item: Item) -> dict[str, Any]:
    if item.data is None:
        return {"raw": raw_text(item)}
    try:
        return {"raw": item.data.decode("utf-8")}
    except UnicodeDecodeError:
        return {
            "raw": escape_bytes(item.data),
            "raw_escaped": True,
            "raw_base64": base64.b64encode(item.data).decode("ascii"),
        }


class _TotalEstimate:
    """The records an input holds, known without reading it twice where that is cheap: Parquet files say so in
    their footers, and uncompressed JSON Lines files are as many records as their size over the bytes per
    record read so far. Other inputs (compressed, CSV, JSON arrays) give no total until the end (None)."""

    def __init__(self, dataset: Dataset) -> None:
        files = dataset.files
        self.known = all(f.compression is None and f.kind in ("jsonl", "parquet") for f in files)
        self.rows = sum(f.parquet_rows() for f in files if f.kind == "parquet") if self.known else 0
        self.jsonl_bytes = sum(f.path.stat().st_size for f in files if f.kind == "jsonl") if self.known else 0
        self.lines_read = self.bytes_read = 0

    def add(self, items: list[Item]) -> None:
        if self.jsonl_bytes:
            lines = [item.data for item in items if item.data is not None]
            self.lines_read += len(lines)
            self.bytes_read += sum(map(len, lines)) + len(lines)  # and a newline each

    def total(self, records: int) -> int | None:
        if not self.known or (self.jsonl_bytes and not self.bytes_read):
            return None
        jsonl = round(self.lines_read * self.jsonl_bytes / self.bytes_read) if self.jsonl_bytes else 0
        return max(records, self.rows + jsonl)


class _Run:
    """The order-dependent half: dedup against earlier records, split assignment, writing."""

    def __init__(self, cfg: PrepareConfig, dataset: Dataset) -> None:
        self.cfg = cfg
        self.dataset = dataset
        self.stats = Stats()
        self.pii: Counter[str] = Counter()
        self.exact = ExactDeduper()
        self.signer = Signer(cfg.num_perm, shingle_bytes=cfg.shingle_bytes)
        self.near = NearDeduper(self.signer, cfg.near_dup_threshold) if cfg.near_dup else None
        self.writers = {name: HashingWriter(path / "data.jsonl") for name, path in cfg.outputs().items()}
        self.quarantine = HashingWriter(cfg.report_out / "quarantine.jsonl")
        self._reported = time.monotonic()
        self._estimate = _TotalEstimate(dataset)

    def report_progress(self, final: bool = False) -> None:
        """Records read so far and where they went, for the run table (`$TUNELINE_PROGRESS`). Counting the
        records first would read the input twice, so the total is estimated (`_TotalEstimate`) until the end."""
        now = time.monotonic()
        if not final and now - self._reported < PROGRESS_EVERY_S:
            return
        self._reported = now
        s = self.stats
        total = s.input_records if final else self._estimate.total(s.input_records)
        report_progress(s.input_records, total, "record", kept=s.kept, quarantined=s.quarantined,
                        deduplicated=s.deduplicated)

    def parser_args(self) -> tuple[Checks, Signer | None]:
        bands = (self.near.bands, self.near.rows) if self.near is not None else (0, 0)
        checks = Checks(self.cfg.budget, self.cfg.rules, self.cfg.redact_pii, bands)
        return checks, self.signer if self.near is not None else None

    def _quarantine(self, item: Item, reason: Reason, detail: str, **extra: Any) -> None:
        self.stats.reasons[reason] += 1
        if reason in DUPLICATE_REASONS:
            self.stats.deduplicated += 1
        else:
            self.stats.quarantined += 1
        self.quarantine.write(
            {**self.dataset.where(item.key), "reason": str(reason), "detail": detail, **extra,
             **_raw_fields(item)}
        )

    def _keep(self, item: Parsed, fmt: str) -> None:
        record, stats = item.record, self.stats
        # A preference record's prompt decides its split, so one prompt never trains and scores at once.
        group = (f"prompt={item.prompt.hex()}" if item.prompt is not None
                 else record.group_key() or f"content={item.digest.hex()}")
        split = assign_split(group, self.cfg.ratios, self.cfg.seed)
        self.writers[split].write(record.to_json())
        stats.kept += 1
        stats.splits[split] += 1
        stats.formats_kept[fmt] += 1
        stats.pii_records += item.had_pii
        stats.length_histogram[bisect.bisect_right(LENGTH_BINS, record.chars) - 1] += 1

    def consume(self, items: list[Item], batch: BatchResult, fmt: str) -> None:
        self.stats.input_records += len(items)
        self._estimate.add(items)
        self.stats.formats_read[fmt] += len(items)
        self.pii.update(batch.pii)
        for item, reason, detail in batch.rejected:
            self._quarantine(item, reason, detail)
        where = self.dataset.location
        for i, parsed in enumerate(batch.parsed):
            item = items[parsed.index]
            original = self.exact.original_of(parsed.digest)
            if original is not None:
                what = "prompt" if kind(fmt) == "pairs" else "content"
                self._quarantine(item, Reason.EXACT_DUPLICATE, f"same {what} as {where(original)}",
                                 duplicate_of=self.dataset.where(original))
                continue
            if self.near is not None:
                assert batch.signatures is not None and batch.band_keys is not None
                hit = self.near.check_and_add(batch.signatures[i], parsed.key, parsed.answer, batch.band_keys[i])
                if hit is not None:
                    self._quarantine(item, Reason.NEAR_DUPLICATE,
                                     f"estimated Jaccard {hit[1]:.3f} with {where(hit[0])}",
                                     duplicate_of=self.dataset.where(hit[0]), similarity=round(hit[1], 4))
                    continue
            self.exact.add(parsed.digest, parsed.key)
            self._keep(parsed, fmt)
        self.report_progress()

    def close(self) -> dict[str, dict[str, Any]]:
        outputs = {f"{name}/data.jsonl": w.close() for name, w in self.writers.items()}
        outputs["report/quarantine.jsonl"] = self.quarantine.close()
        return outputs


def _batches(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    batch: list[Item] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _sample(item: Item, columns: dict[str, str]) -> Any:
    if item.data is None:
        return apply_columns(item.obj, columns)
    try:
        return apply_columns(load_json(decode_line(item.data)), columns)
    except RecordError:
        return None  # a broken line says nothing about the format; it is quarantined later


def file_formats(dataset: Dataset, cfg: PrepareConfig) -> dict[int, str]:
    """The record format of each file (``cfg.format``, or detected from its first records)."""
    formats = {}
    for f in dataset.files:
        if cfg.format != "auto":
            formats[f.index] = cfg.format
            continue
        samples = []
        for item in dataset.records(f):
            samples.append((dataset.location(item.key), _sample(item, cfg.columns)))
            if len(samples) >= SAMPLE:
                break
        try:
            formats[f.index] = detect_file(f.name, samples, cfg.columns)
        except FormatError:
            # Records that are not JSON objects often are not text at all: say that, with the byte offset.
            problem = encoding_problem(f)
            if problem:
                raise FormatError(f"{f.name}: {problem}") from None
            raise
        f.records = 0
    kinds = {kind(fmt): f.name for f in dataset.files for fmt in [formats[f.index]]}
    if len(kinds) > 1:
        raise FormatError(f"{cfg.raw}: mixes dataset kinds: " + ", ".join(f"{k} ({name})" for k, name in kinds.items())
                          + "; SFT, preference pairs and KTO records train different steps: prepare them apart")
    return formats


def _file_batches(dataset: Dataset, formats: dict[int, str], size: int) -> Iterator[tuple[list[Item], str]]:
    for f in dataset.files:
        for batch in _batches(dataset.records(f, size), size):
            yield batch, formats[f.index]


def _process(state: _Run, batches: Iterator[tuple[list[Item], str]], workers: int) -> None:
    columns = state.cfg.columns
    if workers <= 1:
        parse = BatchParser(*state.parser_args())
        for items, fmt in batches:
            state.consume(items, parse(items, fmt, columns), fmt)
        return
    # A bounded window of batches in flight keeps memory flat (Pool.imap would read the whole file
    # ahead); results are consumed in submission order, so output does not depend on timing.
    ctx = mp.get_context("fork")
    with ctx.Pool(workers, initializer=init_worker, initargs=state.parser_args()) as pool:
        window: deque[tuple[list[Item], AsyncResult[BatchResult], str]] = deque()
        for items, fmt in batches:
            window.append((items, pool.apply_async(parse_in_worker, (items, fmt, columns)), fmt))
            if len(window) >= 2 * workers:
                done, pending, done_fmt = window.popleft()
                state.consume(done, pending.get(), done_fmt)
        while window:
            done, pending, done_fmt = window.popleft()
            state.consume(done, pending.get(), done_fmt)


def _check_files(files: list[SourceFile], records: int) -> None:
    if sum(f.records for f in files) != records:
        raise RuntimeError(f"{sum(f.records for f in files)} records read but {records} accounted")
    for f in files:
        if f.kind == "jsonl" and f.records + f.blank_lines != f.lines:
            raise RuntimeError(f"{f.name}: {f.lines} lines read but {f.records} records + "
                               f"{f.blank_lines} blank lines accounted")


def run(cfg: PrepareConfig) -> Result:
    """Process ``cfg.raw`` into the split folders and the quarantine file; see the module docstring.

    Raises ``SourceError`` or ``FormatError`` (both ``ValueError``) naming the file that cannot be read."""
    start = time.perf_counter()
    dataset = Dataset(cfg.raw)
    formats = file_formats(dataset, cfg)
    state = _Run(cfg, dataset)
    try:
        _process(state, _file_batches(dataset, formats, cfg.batch_size), cfg.workers)
    finally:
        outputs = state.close()
    state.stats.check_invariant()
    state.report_progress(final=True)
    stats = state.stats
    if outputs["report/quarantine.jsonl"]["records"] != stats.quarantined + stats.deduplicated:
        raise RuntimeError("quarantine.jsonl line count differs from quarantined + deduplicated")
    _check_files(dataset.files, stats.input_records)
    pii = Counter({name: state.pii.get(name, 0) for name in PII_TYPES})
    files = [{**f.summary(), "format": formats[f.index]} for f in dataset.files]
    return Result(
        state.stats,
        # The runner's digest of the same path, so the new-data trigger can match this card to its run.
        dataset.digest(),
        sum(f.lines for f in dataset.files),
        sum(f.blank_lines for f in dataset.files),
        sum(f.bytes for f in dataset.files),
        pii,
        outputs,
        time.perf_counter() - start,
        files,
        dataset.ignored,
        kind(next(iter(formats.values()), "chat")),
    )


__all__ = ["LENGTH_BINS", "SPLITS", "PrepareConfig", "Result", "Stats", "run"]
