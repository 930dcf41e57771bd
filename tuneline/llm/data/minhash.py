"""Vectorised MinHash signatures, value-for-value equal to datasketch 2.0's ``affine32`` scheme.

Why not ``MinHash.update_batch``: it calls a Python hash function once per shingle, which dominates the
cost of near-duplicate detection. Here a text's shingles are hashed with numpy in one go:

* shingles are overlapping ``k``-byte windows of the UTF-8 text after case-folding and whitespace
  collapsing (byte n-grams need no tokenizer and work for any script);
* a window's bytes, read as a little-endian integer (injective for k <= 8), are hashed to 32 bits by
  multiply-shift: ``(x * C mod 2^64) >> 32``  (``shingle_hash32`` is the same function for one shingle);
* datasketch's own permutation step follows: the MurmurHash3 32-bit finalizer, then ``a * h + b`` in
  wrapping uint32 with datasketch's ``(a, b)``, and the column-wise minimum.

``tests/llm/data/test_minhash.py`` checks the signatures equal ``MinHash.update_batch`` fed the same shingles
and ``shingle_hash32``. Signatures of many texts are computed in one batch so numpy's per-call overhead
is paid per batch, and long texts are processed in chunks to bound memory.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from datasketch import LeanMinHash, MinHash

SCHEME = "affine32"
_MUL = np.uint64(0x9E3779B97F4A7C15)  # odd 64-bit constant (golden ratio) for multiply-shift
_SHIFT32 = np.uint64(32)
_CHUNK_ROWS = 1 << 14  # shingles per permutation block: 16k x 128 x 4 bytes = 8 MiB


def shingle_text(text: str) -> bytes:
    """The byte string whose windows are the shingles: case-folded, whitespace collapsed."""
    return " ".join(text.split()).lower().encode("utf-8")


def shingle_hash32(shingle: bytes) -> int:
    """32-bit hash of one shingle (the scalar twin of the vectorised hash)."""
    return ((int.from_bytes(shingle, "little") * int(_MUL)) & 0xFFFFFFFFFFFFFFFF) >> 32


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


class Signer:
    """Computes MinHash signatures (uint32 arrays of length ``num_perm``) for texts."""

    def __init__(self, num_perm: int = 128, seed: int = 1, shingle_bytes: int = 5) -> None:
        if not 1 <= shingle_bytes <= 8:
            raise ValueError("shingle_bytes must be between 1 and 8")
        self.num_perm = num_perm
        self.seed = seed
        self.k = shingle_bytes
        template = MinHash(num_perm=num_perm, seed=seed, scheme=SCHEME)
        self.permutations = template.permutations
        self._a = template.permutations[0].astype(np.uint32)[:, None]
        self._b = template.permutations[1].astype(np.uint32)[:, None]
        self._weights = np.uint64(1) << (np.arange(shingle_bytes, dtype=np.uint64) * np.uint64(8))

    def shingles(self, data: bytes) -> list[bytes]:
        """The shingles of ``shingle_text`` output, as bytes (used by tests and for tiny texts)."""
        if len(data) <= self.k:
            return [data]
        return [data[i : i + self.k] for i in range(len(data) - self.k + 1)]

    def _hashes(self, data: bytes) -> np.ndarray:
        if len(data) <= self.k:
            return np.array([shingle_hash32(data)], dtype=np.uint32)
        buf = np.frombuffer(data, dtype=np.uint8).astype(np.uint64)
        n = len(data) - self.k + 1
        x = buf[:n] * self._weights[0]
        for j in range(1, self.k):
            x += buf[j : j + n] * self._weights[j]
        return ((x * _MUL) >> _SHIFT32).astype(np.uint32)

    def _batch_hashes(self, texts: Sequence[bytes]) -> tuple[np.ndarray, np.ndarray]:
        """(shingle hashes of all texts, in order; shingles per text): ``_hashes`` of each text, concatenated,
        computed over the texts joined into one buffer so numpy is called a few times per batch, not per text.
        Windows that straddle two texts are dropped; a text of at most ``k`` bytes is one shingle, as in
        ``_hashes``."""
        lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
        long = lengths > self.k
        sizes = np.where(long, lengths - self.k + 1, 1)
        buf = np.frombuffer(b"".join(texts) + bytes(self.k), dtype=np.uint8).astype(np.uint64)
        n = len(buf) - self.k + 1
        x = buf[:n] * self._weights[0]
        for j in range(1, self.k):
            x += buf[j : j + n] * self._weights[j]
        starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
        # The first window of each shingle of each long text: ``sizes`` windows from its start.
        firsts = np.repeat(starts[long], sizes[long])
        within = np.arange(len(firsts)) - np.repeat(np.cumsum(sizes[long]) - sizes[long], sizes[long])
        hv = np.empty(int(sizes.sum()), dtype=np.uint32)
        dest = np.ones(len(hv), dtype=bool)
        offsets = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        dest[offsets[~long]] = False
        hv[dest] = ((x[firsts + within] * _MUL) >> _SHIFT32).astype(np.uint32)
        for i in np.flatnonzero(~long):
            hv[offsets[i]] = shingle_hash32(texts[i])
        return hv, sizes

    def sign_many(self, texts: Sequence[bytes]) -> np.ndarray:
        """Signatures for many shingle texts at once: an array of shape (len(texts), num_perm)."""
        out = np.empty((len(texts), self.num_perm), dtype=np.uint32)
        if not texts:
            return out
        hashes, sizes = self._batch_hashes(texts)
        hv = _fmix32(hashes)
        starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
        # The product is laid out (num_perm x shingles) so the per-text minimum runs along contiguous
        # memory (reduceat along axis 0 of the transpose is ~5x slower). Blocks hold whole texts and stay
        # under _CHUNK_ROWS shingles unless one text alone is longer; that text is reduced in chunks.
        i = 0
        while i < len(texts):
            j, rows = i, 0
            while j < len(texts) and (rows == 0 or rows + sizes[j] <= _CHUNK_ROWS):
                rows += int(sizes[j])
                j += 1
            lo = int(starts[i])
            if j - i == 1 and rows > _CHUNK_ROWS:
                acc = np.full(self.num_perm, np.iinfo(np.uint32).max, dtype=np.uint32)
                for s in range(lo, lo + rows, _CHUNK_ROWS):
                    np.minimum(
                        acc, self._permute(hv[s : min(s + _CHUNK_ROWS, lo + rows)]).min(axis=1), out=acc
                    )
                out[i] = acc
            else:
                out[i:j] = np.minimum.reduceat(self._permute(hv[lo : lo + rows]), starts[i:j] - lo, axis=1).T
            i = j
        return out

    def _permute(self, hv: np.ndarray) -> np.ndarray:
        block = self._a * hv[None, :]
        block += self._b
        return block

    def lean(self, signature: np.ndarray) -> LeanMinHash:
        """Wrap a signature as a datasketch ``LeanMinHash`` (what ``MinHashLSH`` indexes)."""
        return LeanMinHash(seed=self.seed, hashvalues=signature, scheme=SCHEME)
