"""Exact and near-duplicate detection over a stream of records.

``ExactDeduper`` keys a record by a 128-bit BLAKE2b digest of its canonical JSON (normalised, redacted
messages plus ``tools``), so a record differing only in ``id`` or in whitespace is a duplicate.

``NearDeduper`` indexes MinHash signatures in datasketch's ``MinHashLSH``. A near-duplicate must also give
the same final answer (``answer_key``: case-folded, whitespace-collapsed): two records that teach different
answers are not duplicates however alike their wording (a templated ticket whose priority changes with one
sentence), while an edited copy of a record keeps its answer. The cost: a copy whose answer was edited as
well is not caught (the default threshold, 0.85, and ``bench/neardup_bench.py`` are measured with this rule).
LSH is tuned to favour recall (false-negative weight 0.9): a missed near-duplicate is a silent leak, a false
candidate only costs a check, and every candidate is verified by its estimated Jaccard similarity (fraction of
equal signature values) before a record is dropped. Band keys are compressed to 64-bit hashes to cut index memory.
Signatures of indexed records are kept in fixed-size uint32 blocks for that verification.
"""

from __future__ import annotations

import hashlib
import json
from array import array
from typing import Any

import numpy as np
from datasketch import LeanMinHash, MinHashLSH

from tuneline.data.minhash import Signer

# (false positive weight, false negative weight) for datasketch's band/row optimiser.
LSH_WEIGHTS = (0.1, 0.9)
_BLOCK_ROWS = 1 << 16


def record_digest(messages: list[dict[str, Any]], tools: Any = None) -> bytes:
    """Digest of the roles, contents and tools; other message keys and record metadata do not count."""
    h = hashlib.blake2b(digest_size=16)
    for m in messages:
        # Length-prefixing makes the encoding unambiguous without escaping the text.
        content = m["content"].encode("utf-8", "surrogatepass")
        h.update(f"{m['role']}:{len(content)}:".encode())
        h.update(content)
    if tools is not None:
        h.update(
            b"tools:" + json.dumps(tools, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass")
        )
    return h.digest()


class ExactDeduper:
    def __init__(self) -> None:
        self._first_line: dict[bytes, int] = {}

    def original_of(self, digest: bytes) -> int | None:
        """Line number of the earlier kept record with this digest, or None."""
        return self._first_line.get(digest)

    def add(self, digest: bytes, lineno: int) -> None:
        self._first_line.setdefault(digest, lineno)

    def __len__(self) -> int:
        return len(self._first_line)


def _band_key(band: bytes) -> int:
    # Python's 64-bit hash of the band bytes: fast, and smaller than the bytes as a dict key. It is
    # salted per process, but the index lives in one process and every candidate is verified, so a
    # collision could only cost a verification, never change a result.
    return hash(band)


def answer_key(answer: str) -> int:
    """64-bit key of a record's final answer, blind to case and whitespace (as the shingles are)."""
    text = " ".join(answer.split()).lower().encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little")


class NearDeduper:
    """Finds, for each new signature, an indexed one with estimated Jaccard >= ``threshold`` and the same
    answer key (0 for every record when answers are not compared)."""

    def __init__(self, signer: Signer, threshold: float = 0.85) -> None:
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        self.signer = signer
        self.threshold = threshold
        self.lsh = MinHashLSH(
            threshold=threshold, num_perm=signer.num_perm, weights=LSH_WEIGHTS, hashfunc=_band_key
        )
        self._min_equal = int(np.ceil(threshold * signer.num_perm - 1e-9))
        self._blocks: list[np.ndarray] = []
        self._lines = array("q")
        self._answers = array("Q")

    def __len__(self) -> int:
        return len(self._lines)

    def _signature(self, key: int) -> np.ndarray:
        return self._blocks[key // _BLOCK_ROWS][key % _BLOCK_ROWS]

    def check_and_add(self, signature: np.ndarray, lineno: int, answer: int = 0) -> tuple[int, float] | None:
        """If an indexed record with the same ``answer`` key is a near-duplicate of ``signature``, return (its
        line number or location key, estimated Jaccard); otherwise index ``signature`` under ``lineno``."""
        lean = self.signer.lean(signature)
        hit = self._best_match(lean, signature, answer)
        if hit is None:
            self._add(lean, signature, lineno, answer)
        return hit

    def _best_match(self, lean: LeanMinHash, signature: np.ndarray, answer: int) -> tuple[int, float] | None:
        best: tuple[int, int] | None = None
        for key in self.lsh.query(lean):
            if self._answers[key] != answer:
                continue
            equal = int(np.count_nonzero(self._signature(key) == signature))
            if equal >= self._min_equal and (best is None or (equal, -key) > (best[1], -best[0])):
                best = (key, equal)
        if best is None:
            return None
        return self._lines[best[0]], best[1] / self.signer.num_perm

    def _add(self, lean: LeanMinHash, signature: np.ndarray, lineno: int, answer: int) -> None:
        key = len(self._lines)
        if key % _BLOCK_ROWS == 0:
            self._blocks.append(np.empty((_BLOCK_ROWS, self.signer.num_perm), dtype=np.uint32))
        self._blocks[-1][key % _BLOCK_ROWS] = signature
        self._lines.append(lineno)
        self._answers.append(answer)
        self.lsh.insert(key, lean, check_duplication=False)
