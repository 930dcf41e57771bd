"""Batched greedy generation (left padding) and teacher-forced perplexity on the reference answers."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from tuneline.llm.ml.chat import IGNORE, encode, prompt_ids
from tuneline.llm.ml.data import Example


def stop_ids(model, tokenizer) -> list[int]:
    """Every token that ends an answer: the model's generation_config eos ids and the tokenizer's eos.

    Passing only ``tokenizer.eos_token_id`` to ``generate`` replaces the generation config's list (transformers
    generation/utils.py ``_prepare_generation_config``: keyword arguments update the generation config): Gemma's
    tokenizer eos is ``<eos>`` while its turns end with ``<end_of_turn>``, which only the generation config lists
    (google/gemma-3-1b-it generation_config.json ``eos_token_id: [1, 106]``), and every answer would run to
    ``max_new_tokens``."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [configured]
    return list(dict.fromkeys(i for i in [*ids, tokenizer.eos_token_id] if i is not None))


@torch.no_grad()
def generate(model, tokenizer, records: list[Example], max_new_tokens: int, batch_size: int,
             on_batch: Callable[[int], None] | None = None) -> list[str]:
    """Greedy answers in the order of `records`; `on_batch(done)` is called after each batch."""
    pad = tokenizer.pad_token_id
    eos = stop_ids(model, tokenizer)
    device = next(model.parameters()).device
    # Longest prompts first: batches of similar length waste less compute on padding.
    prompts = [prompt_ids(tokenizer, r) for r in records]
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[str] = [""] * len(records)
    for start in range(0, len(order), batch_size):
        idx = order[start: start + batch_size]
        width = max(len(prompts[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, width - len(prompts[i]):] = torch.tensor(prompts[i])
            mask[row, width - len(prompts[i]):] = 1
        generated = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), do_sample=False,
                                   max_new_tokens=max_new_tokens, pad_token_id=pad, eos_token_id=eos,
                                   temperature=None, top_p=None, top_k=None)
        for row, i in enumerate(idx):
            out[i] = tokenizer.decode(generated[row, width:], skip_special_tokens=True).strip()
        if on_batch is not None:
            on_batch(min(start + batch_size, len(order)))
    return out


@torch.no_grad()
def perplexity(model, tokenizer, records: list[Example], max_seq_len: int, batch_size: int) -> float:
    """exp(mean cross-entropy) over the reference answer tokens, given the prompt."""
    device = next(model.parameters()).device
    encoded = [encode(tokenizer, r, max_seq_len) for r in records]
    total, count = 0.0, 0
    for start in range(0, len(encoded), batch_size):
        chunk = encoded[start: start + batch_size]
        width = max(len(e.input_ids) for e in chunk)
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        labels = torch.full_like(ids, IGNORE)
        for row, e in enumerate(chunk):
            n = len(e.input_ids)
            ids[row, :n], mask[row, :n], labels[row, :n] = torch.tensor(e.input_ids), 1, torch.tensor(e.labels)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten().to(device),
                               ignore_index=IGNORE, reduction="sum")
        total += float(loss)
        count += int((labels[:, 1:] != IGNORE).sum())
    return math.exp(total / max(count, 1))
