"""Deterministic batch plans and collation (padded or padding-free packed).

The order of examples is a pure function of (seed, epoch), so a run's position in its data is fully
described by ``(epoch, step_in_epoch)``: resuming from a checkpoint replays exactly the batches an
uninterrupted run would have seen, without relying on a sampler's hidden state.

With ``world`` ranks, every global batch of ``per_device * world`` examples is split into contiguous
per-rank slices, so N processes with per-device batch B see the same global batches as one process with
batch N*B. The last global batch of an epoch is filled by wrapping around to the epoch's first examples
(as ``DistributedSampler`` does) so that every rank always has work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from tuneline.llm.ml.chat import IGNORE, Encoded


def epoch_order(n: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    if not shuffle:
        return list(range(n))
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=generator).tolist()


def rank_steps(
    n: int, per_device: int, grad_accum: int, world: int, rank: int, seed: int, epoch: int, shuffle: bool = True
) -> list[list[list[int]]]:
    """For one epoch: optimizer steps -> this rank's micro-batches -> example indices."""
    order = epoch_order(n, seed, epoch, shuffle)
    global_batch = per_device * world
    n_batches = -(-n // global_batch)
    padded = order + order[: n_batches * global_batch - n] if n_batches * global_batch > n else order
    while len(padded) < n_batches * global_batch:  # tiny datasets smaller than one global batch
        padded = padded + order[: n_batches * global_batch - len(padded)]
    micro = [
        padded[b * global_batch + rank * per_device: b * global_batch + (rank + 1) * per_device]
        for b in range(n_batches)
    ]
    return [micro[i: i + grad_accum] for i in range(0, len(micro), grad_accum)]


def steps_per_epoch(n: int, per_device: int, grad_accum: int, world: int) -> int:
    batches = math.ceil(n / (per_device * world))
    return math.ceil(batches / grad_accum)


@dataclass
class Batch:
    input_ids: torch.Tensor
    attention_mask: torch.Tensor | None  # None for packed rows: position_ids mark the sequence boundaries
    position_ids: torch.Tensor | None
    targets: torch.Tensor  # next-token targets aligned with input_ids; IGNORE where no loss is taken
    keep: torch.Tensor  # sequence positions where any row has a target (logits are computed only there)
    real_tokens: int
    padded_tokens: int

    @property
    def n_targets(self) -> int:
        return int((self.targets != IGNORE).sum())

    def to(self, device) -> Batch:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Batch(move(self.input_ids), move(self.attention_mask), move(self.position_ids),
                     move(self.targets), move(self.keep), self.real_tokens, self.padded_tokens)


def _shifted(labels: list[int]) -> list[int]:
    # target at position t is the label of token t+1; the last position of each sequence predicts nothing,
    # which also keeps a packed row from learning across sequence boundaries.
    return labels[1:] + [IGNORE]


def collate(examples: list[Encoded], pad_id: int, packing: bool) -> Batch:
    real = sum(len(e.input_ids) for e in examples)
    if packing:
        ids = [t for e in examples for t in e.input_ids]
        pos = [p for e in examples for p in range(len(e.input_ids))]
        tgt = [t for e in examples for t in _shifted(e.labels)]
        targets = torch.tensor([tgt])
        return Batch(torch.tensor([ids]), None, torch.tensor([pos]), targets,
                     (targets[0] != IGNORE).nonzero().flatten(), real, real)
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    targets = torch.full((len(examples), width), IGNORE)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        mask[row, :n] = 1
        targets[row, :n] = torch.tensor(_shifted(e.labels))
    keep = (targets != IGNORE).any(dim=0).nonzero().flatten()
    return Batch(ids, mask, None, targets, keep, real, len(examples) * width)
