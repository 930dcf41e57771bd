"""Deterministic, leakage-free train/validation/test assignment.

A record's split is a pure function of (seed, group key): BLAKE2b of both, read as a number in [0, 1),
is compared with the ratios. Every record sharing a group key therefore lands in the same split, in
any input order and on any machine. The group key is the record's ``conversation_id`` (else ``group``)
field when present, else its content digest; near-duplicates never reach the splits (they are dropped
against the first record of their cluster), so they cannot straddle splits either.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class SplitRatios:
    """Fractions of the groups held out; no defaults here: the step that splits (prepare) declares its own."""

    validation: float
    test: float

    def __post_init__(self) -> None:
        for name in ("validation", "test"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} ratio must be in [0, 1), got {value}")
        if self.validation + self.test >= 1.0:
            raise ValueError(f"validation + test ratios must be < 1, got {self.validation + self.test}")


def unit_hash(seed: str, key: str) -> float:
    digest = hashlib.blake2b(f"{seed}\x00{key}".encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64


def assign_split(group_key: str, ratios: SplitRatios, seed: str = "tuneline") -> str:
    u = unit_hash(seed, group_key)
    if u < ratios.test:
        return "test"
    if u < ratios.test + ratios.validation:
        return "validation"
    return "train"
