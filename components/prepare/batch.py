"""Per-batch work that needs no global state: parse, validate, normalise, redact, digest and MinHash-sign.

It runs in the main process or in worker processes (``--workers``); its output is plain picklable data
and does not depend on which process made it, so the outputs are byte-identical for any worker count.
The order-dependent part (dedup against earlier records, split assignment, writing) stays in
``pipeline``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tuneline.llm.data.dedup import answer_key, band_keys, record_digest
from tuneline.llm.data.minhash import Signer, shingle_text
from tuneline.llm.data.pii import Redactor
from tuneline.llm.data.preference import PreferenceRecord, parse_any_line, parse_any_object
from tuneline.llm.data.quality import QualityRules
from tuneline.llm.data.records import GROUP_FIELDS, Budget, ChatRecord, Reason, RecordError
from tuneline.llm.data.sources import Item

_KEEP_VERBATIM = frozenset(("id", *GROUP_FIELDS))


@dataclass(slots=True)
class Parsed:
    index: int  # position in the batch
    key: int  # the record's location (``sources.Dataset.location``)
    record: ChatRecord | PreferenceRecord
    digest: bytes  # what exact dedup compares: the content; a pair's prompt; a KTO record's prompt + completion
    had_pii: bool
    answer: int  # ``dedup.answer_key`` of the final assistant turn (0 for a pair: near-dedup on the prompt)
    prompt: bytes | None = None  # a preference record's prompt digest: its split group


@dataclass(slots=True)
class BatchResult:
    rejected: list[tuple[Item, Reason, str]] = field(default_factory=list)
    parsed: list[Parsed] = field(default_factory=list)
    signatures: np.ndarray | None = None  # one row per ``parsed`` entry when near-dedup is on
    band_keys: list[list[int]] | None = None  # LSH band keys of each signature (``dedup.band_keys``)
    pii: Counter[str] = field(default_factory=Counter)


def near_dup_text(record: ChatRecord | PreferenceRecord) -> bytes:
    # System prompts are excluded: they are shared by many records and would inflate every similarity.
    # A pair is compared on its prompt alone; a KTO record on its prompt and completion.
    if isinstance(record, PreferenceRecord):
        turns = record.prompt if record.kind == "pairs" else [*record.prompt, *record.chosen]
    else:
        turns = record.messages
    return shingle_text("\n".join(m["content"] for m in turns if m["role"] != "system"))


def _digests(record: ChatRecord | PreferenceRecord) -> tuple[bytes, int, bytes | None]:
    """(dedup digest, answer key, prompt digest) of a record; see ``Parsed``."""
    tools = record.extra.get("tools")
    if isinstance(record, ChatRecord):
        return record_digest(record.messages, tools), answer_key(record.messages[-1]["content"]), None
    prompt = record_digest(record.prompt, tools)
    if record.kind == "pairs":
        return prompt, 0, prompt
    return (record_digest([*record.prompt, *record.chosen], tools), answer_key(record.chosen[-1]["content"]),
            prompt)


@dataclass(frozen=True, slots=True)
class Checks:
    """What every batch is checked against; the same in every worker."""

    budget: Budget
    rules: QualityRules
    redact_pii: bool
    lsh_bands: tuple[int, int] = (0, 0)  # (bands, rows) of the near-dup index; (0, 0) when it is off


class BatchParser:
    def __init__(self, checks: Checks, signer: Signer | None) -> None:
        self.checks = checks
        self.signer = signer
        self.redactor = Redactor()

    def _redact_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.redactor.redact(value)
        if isinstance(value, list):
            return [self._redact_value(v) for v in value]
        if isinstance(value, dict):
            return {k: self._redact_value(v) for k, v in value.items()}
        return value

    def _redact(self, record: ChatRecord | PreferenceRecord) -> bool:
        before = sum(self.redactor.counts.values())
        messages = record.messages if isinstance(record, ChatRecord) else [m for s in record.sides() for m in s]
        # Most records hold nothing to redact: one scan of all their messages tells.
        if self.redactor.may_redact("\n".join(m["content"] for m in messages)):
            for msg in messages:
                msg["content"] = self.redactor.redact(msg["content"])
        for key, value in record.extra.items():
            if key not in _KEEP_VERBATIM:
                record.extra[key] = self._redact_value(value)
        return sum(self.redactor.counts.values()) != before

    def _parse(self, item: Item, fmt: str, columns: dict[str, str]) -> ChatRecord | PreferenceRecord:
        c = self.checks
        if item.error is not None:
            raise RecordError(Reason.INVALID_ROW, item.error)
        if item.data is not None:
            return parse_any_line(item.data, c.budget, fmt, columns, c.rules)
        return parse_any_object(item.obj, c.budget, fmt, columns, c.rules, source=item.raw)

    def __call__(self, items: list[Item], fmt: str, columns: dict[str, str]) -> BatchResult:
        out = BatchResult()
        self.redactor.counts = out.pii
        for index, item in enumerate(items):
            try:
                record = self._parse(item, fmt, columns)
            except RecordError as err:
                out.rejected.append((item, err.reason, err.detail))
                continue
            had_pii = self._redact(record) if self.checks.redact_pii else False
            digest, answer, prompt = _digests(record)
            out.parsed.append(Parsed(index, item.key, record, digest, had_pii, answer, prompt))
        if self.signer is not None:
            out.signatures = self.signer.sign_many([near_dup_text(p.record) for p in out.parsed])
            out.band_keys = band_keys(out.signatures, *self.checks.lsh_bands).tolist()
        return out


# Worker-process state: one parser per process, built once by the pool initializer.
_WORKER: BatchParser | None = None


def init_worker(checks: Checks, signer: Signer | None) -> None:
    global _WORKER
    _WORKER = BatchParser(checks, signer)


def parse_in_worker(items: list[Item], fmt: str, columns: dict[str, str]) -> BatchResult:
    assert _WORKER is not None, "init_worker was not called in this process"
    return _WORKER(items, fmt, columns)
