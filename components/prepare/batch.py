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

from tuneline.data.dedup import record_digest
from tuneline.data.jsonl import RawLine
from tuneline.data.minhash import Signer, shingle_text
from tuneline.data.pii import Redactor
from tuneline.data.records import GROUP_FIELDS, Budget, ChatRecord, Reason, RecordError, parse_line

_KEEP_VERBATIM = frozenset(("id", *GROUP_FIELDS))


@dataclass(slots=True)
class Parsed:
    line: RawLine
    record: ChatRecord
    digest: bytes
    had_pii: bool


@dataclass(slots=True)
class BatchResult:
    rejected: list[tuple[RawLine, Reason, str]] = field(default_factory=list)
    parsed: list[Parsed] = field(default_factory=list)
    signatures: np.ndarray | None = None  # one row per ``parsed`` entry when near-dedup is on
    pii: Counter[str] = field(default_factory=Counter)


def near_dup_text(record: ChatRecord) -> bytes:
    # System prompts are excluded: they are shared by many records and would inflate every similarity.
    return shingle_text("\n".join(m["content"] for m in record.messages if m["role"] != "system"))


class BatchParser:
    def __init__(self, budget: Budget, redact_pii: bool, signer: Signer | None) -> None:
        self.budget = budget
        self.redact_pii = redact_pii
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

    def _redact(self, record: ChatRecord) -> bool:
        before = sum(self.redactor.counts.values())
        for msg in record.messages:
            msg["content"] = self.redactor.redact(msg["content"])
        for key, value in record.extra.items():
            if key not in _KEEP_VERBATIM:
                record.extra[key] = self._redact_value(value)
        return sum(self.redactor.counts.values()) != before

    def __call__(self, lines: list[RawLine]) -> BatchResult:
        out = BatchResult()
        self.redactor.counts = out.pii
        for line in lines:
            try:
                record = parse_line(line.data, self.budget)
            except RecordError as err:
                out.rejected.append((line, err.reason, err.detail))
                continue
            had_pii = self._redact(record) if self.redact_pii else False
            digest = record_digest(record.messages, record.extra.get("tools"))
            out.parsed.append(Parsed(line, record, digest, had_pii))
        if self.signer is not None:
            out.signatures = self.signer.sign_many([near_dup_text(p.record) for p in out.parsed])
        return out


# Worker-process state: one parser per process, built once by the pool initializer.
_WORKER: BatchParser | None = None


def init_worker(budget: Budget, redact_pii: bool, signer: Signer | None) -> None:
    global _WORKER
    _WORKER = BatchParser(budget, redact_pii, signer)


def parse_in_worker(lines: list[RawLine]) -> BatchResult:
    assert _WORKER is not None, "init_worker was not called in this process"
    return _WORKER(lines)
