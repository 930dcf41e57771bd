"""The policy to train and its reference.

Starting point: the base model, or an SFT model (``--sft-model``: train's output). An SFT LoRA adapter is merged
into its base first, so the new LoRA adapter trains on top of the SFT model and "adapter disabled" *is* the SFT
model; training the SFT adapter itself instead would make the base model the reference.

Reference: with LoRA the policy with its adapter disabled (peft's ``disable_adapter()`` context), so no second
copy of the weights is held, as TRL does for a new adapter (dpo_trainer.py ``use_adapter``). A full fine-tune has
nothing to disable: its reference is a frozen copy taken before training (and before a resumed run loads its
checkpoint), as TRL's ``create_model_from_path`` reference.

Under a distribution the LoRA reference stays the policy with its adapter disabled: ``disable_adapter`` flips a
flag on PEFT's LoRA layers (peft 0.21.2 peft_model.py ``disable_adapter``, tuners/tuners_utils.py
``BaseTuner._enable_adapter_layers``), which are the same module objects after DDP wraps the model and after FSDP2
shards it in place, and the reference is scored through the unwrapped module (no DDP gradient hooks; FSDP2's
gathers still run, on every rank together). A full fine-tune's reference is sharded like the policy under FSDP
(``place_reference``) and refused under ZeRO-3.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from components.train.modelsetup import (
    add_lora,
    empty_model,
    freeze_beside_language_model,
    load_dtype,
    materialise_trainable,
)
from tuneline.llm.ml.models import (
    load_causal_lm,
    load_tokenizer,
    merge_lora,
    read_summary,
    resolve_model,
    resolve_summary_base,
)


def start_point(base_model: str, sft_model: Path | None) -> tuple[str, str]:
    """(what the run starts from, in words; the base model the SFT model was tuned from)."""
    if sft_model is None:
        return base_model, base_model
    summary = read_summary(sft_model)
    return f"{summary.get('base_model', base_model)} + SFT {sft_model.name}", summary.get("base_model", base_model)


def _load(config, dtype, on_meta: bool = False, base_revision: str | None = None):
    """(start model, tokenizer). ``on_meta``: the start model's architecture without its weights (train's
    ``modelsetup.empty_model``); an SFT adapter merged into its base has the base's config. ``base_revision``:
    the Hub commit a base model without SFT resolved to before the process group started."""
    if config.sft_model is None:
        path = resolve_model(config.base_model, revision=base_revision)
        model = empty_model(path, dtype) if on_meta else load_causal_lm(path, dtype=dtype)
        return model, load_tokenizer(path, padding_side="right")
    sft = Path(config.sft_model)
    tokenizer = load_tokenizer(sft, padding_side="right")
    if (sft / "adapter_config.json").is_file():
        summary = read_summary(sft)
        # At the Hub commit the SFT model was trained on, when its summary records one.
        base = resolve_summary_base(summary) if summary.get("base_model") else resolve_model(config.base_model)
        return (empty_model(base, dtype) if on_meta else merge_lora(base, sft, dtype=dtype)), tokenizer
    return (empty_model(sft, dtype) if on_meta else load_causal_lm(sft, dtype=dtype)), tokenizer


def build(config, precision: str, device: torch.device, *, sharded: bool = False, on_meta: bool = False,
          base_revision: str | None = None):
    """(policy, reference or None for LoRA, tokenizer).

    ``sharded``: FSDP or DeepSpeed places the policy in ``prepare`` (as train's ``modelsetup.build``), so it stays
    on the host here. A full fine-tune's reference is placed by ``place_reference`` once the process group knows
    the distribution. ``on_meta`` (train's ``parallel.loads_on_meta``: FSDP with cpu_ram_efficient_loading, a rank
    other than 0): nothing is read, neither policy nor reference holds a weight in host memory, and FSDP's
    preparation broadcasts rank 0's values into both; only the trainable parameters get (uninitialised) storage,
    for accelerate to map the optimizer's parameters (train's ``modelsetup.materialise_trainable``)."""
    dtype = load_dtype(config.method, precision)
    model, tokenizer = _load(config, dtype, on_meta, base_revision)
    model.config.use_cache = False
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    reference = None
    if config.method == "lora":
        model = add_lora(model, config)
    else:
        freeze_beside_language_model(model)  # as train's full fine-tune: a vision tower gets no gradient on text
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    if on_meta:
        materialise_trainable(model)
    if not sharded:
        model.to(device)
    return model, reference, tokenizer


class ReferenceUnsupported(ValueError):
    """The distribution cannot hold this run's reference model."""


def check_reference(method: str, distributed_type, deepspeed_plugin=None) -> None:
    """Refuse, before any model is loaded, a full fine-tune under ZeRO-3: its frozen reference would need a
    DeepSpeed inference engine of its own (TRL 1.16 ``prepare_deepspeed``), which this step does not build, and
    an unsharded copy on every GPU is what ZeRO-3 was chosen to avoid. A LoRA's reference is the policy itself."""
    from components.train.parallel import parameters_sharded

    if method == "full" and deepspeed_plugin is not None and parameters_sharded(distributed_type, deepspeed_plugin):
        raise ReferenceUnsupported(
            "--method full under ZeRO-3: the frozen reference copy cannot be sharded by this step; use "
            "--distribution fsdp (the reference is sharded like the policy) or --method lora (the reference is "
            "the policy with its adapter disabled)")


def place_reference(acc, reference):
    """Put a full fine-tune's frozen reference where the policy is. Under FSDP it is sharded as the policy is, by
    accelerate's own FSDP2 preparation (utils/fsdp_utils.py ``fsdp2_prepare_model``: one unit per decoder layer,
    the plugin's mixed precision, rank 0's weights broadcast with cpu_ram_efficient_loading); it needs no
    optimizer, and every rank then runs its forward passes together, as the policy's. Otherwise (one process,
    DDP, ZeRO-1/2) each process holds a copy, as TRL does below ZeRO-3."""
    from components.train import parallel

    if reference is None:
        return None
    if parallel.is_fsdp(acc):
        from accelerate.utils.fsdp_utils import fsdp2_prepare_model

        if not getattr(acc, "is_fsdp2", False):
            raise ReferenceUnsupported("--method full under FSDP needs fsdp_version: 2 for its reference model")
        return fsdp2_prepare_model(acc, reference).eval()
    return reference.to(acc.device)


def held_as(reference) -> str:
    """How this process holds the reference, read from the module itself: the policy with its adapter disabled,
    sharded (FSDP2 turns each parameter into a DTensor shard), or a whole copy."""
    if reference is None:
        return "policy with adapter disabled"
    from torch.distributed.tensor import DTensor

    return "sharded" if any(isinstance(p, DTensor) for p in reference.parameters()) else "copy"


def merged_policy(config, adapter_state: dict, precision: str):
    """The start model with the trained adapter merged into it, built on the host from the adapter's gathered
    weights: a sharded run's policy cannot be merged in place (its weights are shards). Main process only."""
    model, _ = _load(config, load_dtype(config.method, precision))
    policy = add_lora(model, config)
    missing, unexpected = policy.load_state_dict(adapter_state, strict=False)
    lora_missing = [k for k in missing if "lora_" in k]
    if unexpected or lora_missing:
        raise RuntimeError(f"the gathered adapter does not match the model: missing {lora_missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
    return policy.merge_and_unload()


@contextmanager
def reference_of(policy, reference):
    """The module to score the reference with, inside a context where it is the reference."""
    if reference is not None:
        yield reference
        return
    with policy.disable_adapter() if hasattr(policy, "disable_adapter") else nullcontext():
        yield policy
