"""Exact and near-duplicate detection over a stream of records.

``ExactDeduper`` keys a record by a 128-bit BLAKE2b digest of its canonical JSON (normalised, redacted
messages plus ``tools``), so a record differing only in ``id`` or in whitespace is a duplicate.

``NearDeduper`` indexes MinHash signatures with LSH banding. A near-duplicate must also give
the same final answer (``answer_key``: case-folded, whitespace-collapsed): two records that teach different
answers are not duplicates however alike their wording (a templated ticket whose priority changes with one
sentence), while an edited copy of a record keeps its answer. The cost: a copy whose answer was edited as
well is not caught (the default threshold, 0.85, and ``bench/neardup_bench.py`` are measured with this rule).
LSH is tuned to favour recall (false-negative weight 0.9): a missed near-duplicate is a silent leak, a false
candidate only costs a check, and every candidate is verified by its estimated Jaccard similarity (fraction of
equal signature values) before a record is dropped. For that verification the signatures of indexed records
are kept in fixed-size blocks of their low 16 bits: two unequal 32-bit values share their low 16 bits with odds
2^-16, which moves an estimate by (1 - J) / 65536 on average, far below the 1/128 step of the estimate itself,
and halves the largest part of the index (256 bytes a record instead of 512).

The banding is datasketch's ``MinHashLSH`` scheme: the same band count and rows per band from datasketch's own
optimiser (``_optimal_param``, 11 x 11 for 128 permutations at 0.85), and a record is a candidate when any band
of its signature equals that band of an indexed one. Why not ``MinHashLSH`` itself: it hashes each band of each
record in Python (``bytes(...).byteswap()`` and a hash call per band, a set per bucket, and a second per-key
table), which profiled as ~40 % of the prepare step. Here the band keys of a whole batch are computed in
numpy (``band_keys``: a 64-bit multiply-add hash of a band's values, so equal bands always get equal keys;
a collision of unequal bands, at odds of about 2^-64, only adds a candidate, verified like any other) and a
bucket holds one int until a second record shares it.
"""

from __future__ import annotations

import functools
import hashlib
import json
from array import array
from typing import Any

import numpy as np

from tuneline.llm.data.minhash import Signer

# (false positive weight, false negative weight) for datasketch's band/row optimiser.
LSH_WEIGHTS = (0.1, 0.9)
_BLOCK_ROWS = 1 << 16


@functools.cache
def _band_multipliers(rows: int) -> np.ndarray:
    """Odd 64-bit multipliers of the band hash, one per row of a band, from a fixed seed."""
    rng = np.random.default_rng(20240917)
    return rng.integers(0, 2**63, size=rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) as datasketch's ``MinHashLSH`` picks them for these settings."""
    from datasketch.lsh import _optimal_param

    bands, rows = _optimal_param(threshold, num_perm, *LSH_WEIGHTS)
    return int(bands), int(rows)


def band_keys(signatures: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """64-bit keys of each band of each signature: an array of shape (len(signatures), bands)."""
    sig = signatures[:, : bands * rows].astype(np.uint64).reshape(len(signatures), bands, rows)
    with np.errstate(over="ignore"):
        keys = (sig * _band_multipliers(rows)).sum(axis=2, dtype=np.uint64)
        keys ^= keys >> np.uint64(31)
        keys *= np.uint64(0xBF58476D1CE4E5B9)
        keys ^= keys >> np.uint64(29)
    return keys


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
        self.bands, self.rows = lsh_bands(threshold, signer.num_perm)
        # band -> {band key: index of the one record in that bucket, or ~i for the records in _shared[i]}.
        # The dicts hold ints only, so the garbage collector leaves them untracked: with a container per shared
        # bucket in them, each full collection walked the whole index (a 1M-record Parquet run spent 43 s of
        # 159 s in its 135 full collections; 5 s of 103 s with this layout).
        self._buckets: list[dict[int, int]] = [{} for _ in range(self.bands)]
        self._shared: list[array] = []
        self._min_equal = int(np.ceil(threshold * signer.num_perm - 1e-9))
        self._blocks: list[np.ndarray] = []
        self._lines = array("q")
        self._answers = array("Q")

    def __len__(self) -> int:
        return len(self._lines)

    def band_keys(self, signatures: np.ndarray) -> list[list[int]]:
        """The band keys of a batch of signatures, as ``check_and_add`` takes them (computable in a worker)."""
        return band_keys(signatures, self.bands, self.rows).tolist()

    def _signature(self, key: int) -> np.ndarray:
        return self._blocks[key // _BLOCK_ROWS][key % _BLOCK_ROWS]

    def check_and_add(self, signature: np.ndarray, lineno: int, answer: int = 0,
                      keys: list[int] | None = None) -> tuple[int, float] | None:
        """If an indexed record with the same ``answer`` key is a near-duplicate of ``signature``, return (its
        line number or location key, estimated Jaccard); otherwise index ``signature`` under ``lineno``.
        ``keys``: the signature's band keys when already computed for its batch."""
        if keys is None:
            keys = self.band_keys(signature[None, :])[0]
        hit = self._best_match(keys, signature, answer)
        if hit is None:
            self._add(keys, signature, lineno, answer)
        return hit

    def _candidates(self, keys: list[int]) -> set[int]:
        found: set[int] = set()
        for bucket, key in zip(self._buckets, keys, strict=True):
            held = bucket.get(key)
            if held is None:
                continue
            if held >= 0:
                found.add(held)
            else:
                found.update(self._shared[~held])
        return found

    def _best_match(self, keys: list[int], signature: np.ndarray, answer: int) -> tuple[int, float] | None:
        best: tuple[int, int] | None = None
        low = signature.astype(np.uint16)
        for key in self._candidates(keys):
            if self._answers[key] != answer:
                continue
            equal = int(np.count_nonzero(self._signature(key) == low))
            if equal >= self._min_equal and (best is None or (equal, -key) > (best[1], -best[0])):
                best = (key, equal)
        if best is None:
            return None
        return self._lines[best[0]], best[1] / self.signer.num_perm

    def _add(self, keys: list[int], signature: np.ndarray, lineno: int, answer: int) -> None:
        key = len(self._lines)
        if key % _BLOCK_ROWS == 0:
            self._blocks.append(np.empty((_BLOCK_ROWS, self.signer.num_perm), dtype=np.uint16))
        self._blocks[-1][key % _BLOCK_ROWS] = signature.astype(np.uint16)  # the low 16 bits
        self._lines.append(lineno)
        self._answers.append(answer)
        for bucket, band in zip(self._buckets, keys, strict=True):
            held = bucket.setdefault(band, key)
            if held is key:
                continue
            if held >= 0:
                bucket[band] = ~len(self._shared)
                self._shared.append(array("q", (held, key)))
            else:
                self._shared[~held].append(key)
