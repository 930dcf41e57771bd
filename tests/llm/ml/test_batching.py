import torch

from tuneline.llm.ml.batching import collate, rank_steps, steps_per_epoch
from tuneline.llm.ml.chat import IGNORE, Encoded


def test_ranks_split_each_global_batch_of_the_single_process_plan():
    single = rank_steps(10, per_device=4, grad_accum=1, world=1, rank=0, seed=3, epoch=1)
    r0 = rank_steps(10, per_device=2, grad_accum=1, world=2, rank=0, seed=3, epoch=1)
    r1 = rank_steps(10, per_device=2, grad_accum=1, world=2, rank=1, seed=3, epoch=1)
    assert [s[0] for s in single] == [a[0] + b[0] for a, b in zip(r0, r1, strict=True)]
    assert len(single) == steps_per_epoch(10, 4, 1, 1) == 3
    assert len(single[-1][0]) == 4  # the last batch wraps around instead of being short


def test_order_depends_on_seed_and_epoch_only():
    a = rank_steps(20, 4, 2, 1, 0, seed=1, epoch=0)
    assert a == rank_steps(20, 4, 2, 1, 0, seed=1, epoch=0)
    assert a != rank_steps(20, 4, 2, 1, 0, seed=1, epoch=1)
    assert [len(step) for step in a] == [2, 2, 1]


def test_packed_and_padded_batches_hold_the_same_targets():
    examples = [Encoded("a", [1, 2, 3], [IGNORE, 2, 3], False), Encoded("b", [4, 5], [IGNORE, 5], False)]
    padded = collate(examples, pad_id=0, packing=False)
    packed = collate(examples, pad_id=0, packing=True)
    assert padded.targets.tolist() == [[2, 3, IGNORE], [5, IGNORE, IGNORE]]
    assert packed.targets.tolist() == [[2, 3, IGNORE, 5, IGNORE]]  # no target across the boundary
    assert packed.position_ids.tolist() == [[0, 1, 2, 0, 1]] and packed.attention_mask is None
    assert padded.n_targets == packed.n_targets == 3
    assert (padded.real_tokens, padded.padded_tokens) == (5, 6)
    assert torch.equal(packed.keep, torch.tensor([0, 1, 3]))
