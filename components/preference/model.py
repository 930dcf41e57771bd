"""The policy to train and its reference.

Starting point: the base model, or an SFT model (``--sft-model``: train's output). An SFT LoRA adapter is merged
into its base first, so the new LoRA adapter trains on top of the SFT model and "adapter disabled" *is* the SFT
model; training the SFT adapter itself instead would make the base model the reference.

Reference: with LoRA the policy with its adapter disabled (peft's ``disable_adapter()`` context), so no second
copy of the weights is held, as TRL does for a new adapter (dpo_trainer.py ``use_adapter``). A full fine-tune has
nothing to disable: its reference is a frozen copy taken before training (and before a resumed run loads its
checkpoint), as TRL's ``create_model_from_path`` reference.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from components.train.modelsetup import _targets, load_dtype
from tuneline.llm.ml.models import load_causal_lm, load_tokenizer, merge_lora, read_summary, resolve_model


def start_point(base_model: str, sft_model: Path | None) -> tuple[str, str]:
    """(what the run starts from, in words; the base model the SFT model was tuned from)."""
    if sft_model is None:
        return base_model, base_model
    summary = read_summary(sft_model)
    return f"{summary.get('base_model', base_model)} + SFT {sft_model.name}", summary.get("base_model", base_model)


def _load(config, dtype):
    if config.sft_model is None:
        path = resolve_model(config.base_model)
        return load_causal_lm(path, dtype=dtype), load_tokenizer(path, padding_side="right")
    sft = Path(config.sft_model)
    tokenizer = load_tokenizer(sft, padding_side="right")
    if (sft / "adapter_config.json").is_file():
        base = read_summary(sft).get("base_model", config.base_model)
        return merge_lora(resolve_model(base), sft, dtype=dtype), tokenizer
    return load_causal_lm(sft, dtype=dtype), tokenizer


def build(config, precision: str, device: torch.device):
    """(policy, reference or None for LoRA, tokenizer)."""
    dtype = load_dtype(config.method, precision)
    model, tokenizer = _load(config, dtype)
    model.config.use_cache = False
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    reference = None
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                          target_modules=_targets(config.lora_targets), task_type="CAUSAL_LM", bias="none")
        torch.manual_seed(config.seed)  # adapter initialisation is part of the run's determinism
        model = get_peft_model(model, lora)
    else:
        reference = copy.deepcopy(model).eval().requires_grad_(False).to(device)
    model.to(device)
    return model, reference, tokenizer


@contextmanager
def reference_of(policy, reference):
    """The module to score the reference with, inside a context where it is the reference."""
    if reference is not None:
        yield reference
        return
    with policy.disable_adapter() if hasattr(policy, "disable_adapter") else nullcontext():
        yield policy
