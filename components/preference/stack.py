"""One LoRA adapter over the base model from the SFT adapter and the preference adapter trained on top of it.

The preference LoRA trains on the SFT model, which is the SFT adapter merged into the base: W_sft = W0 + s1·B1·A1
(s = lora_alpha / r), and the policy is W_sft + s2·B2·A2. Both terms are low-rank products over the same input, so
the policy is W0 + [B1 | B2]·[s1·A1 ; s2·A2]: one LoRA over the base of rank r1 + r2 and scaling 1
(lora_alpha = r). A module targeted by only one of the two gets zeros in the other's rows. Written so, the
preference step's output is an adapter of the same base as the SFT adapter (and as the champion it challenges),
which a serving engine loads beside the others on one copy of the base, instead of a full model of its own.

This is PEFT's ``add_weighted_adapter(..., combination_type="cat")`` with weights 1 (peft 0.21.2
tuners/lora/model.py: A rows ``weight * scaling[adapter] * lora_A``, B columns ``lora_B`` unscaled, new
``r = lora_alpha = sum of ranks``, the target modules' union), and ``tests/components/test_preference_stack.py``
checks the two give the same tensors. It is done here on the two adapters' state dicts because PEFT's version
needs both adapters injected into one model, that is the base model's weights loaded on the main process: a
second full copy (the policy in training holds the SFT-merged weights, not the base's) to combine a few MB of
adapter, and under FSDP or ZeRO-3 a copy no rank holds at all.

What cannot be stacked so, and is merged into the SFT model instead (``unstackable`` says why): anything whose
delta is not B·A with scaling alpha/r on the base's linear layers (DoRA, rsLoRA's alpha/sqrt(r), rank or alpha
patterns, trained biases or whole modules, trainable tokens, initialisations that rewrite the base weights).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_A, _B = ".lora_A.weight", ".lora_B.weight"

# adapter_config.json fields whose non-default values make the delta something other than s·B·A on a linear layer
# of the base, or train something besides A and B.
_MUST_BE_UNSET = ("modules_to_save", "use_dora", "use_rslora", "rank_pattern", "alpha_pattern", "lora_bias",
                  "trainable_token_indices", "target_parameters", "alora_invocation_tokens", "use_qalora",
                  "layer_replication", "megatron_config", "fan_in_fan_out", "use_bdlora", "arrow_config",
                  "kasa_config", "monteclora_config", "velora_config", "layers_to_transform", "layers_pattern")
# exclude_modules only narrows which layers get a LoRA (train keeps a multimodal model's vision tower out,
# components/train/modelsetup.py ``beside_language_model``): the delta stays s·B·A. The stacked adapter keeps the
# SFT adapter's exclusion, so the trained one must exclude the same modules.
# PiSSA, OLoRA, LoftQ, CorDA, EVA and LoRA-GA initialisations change the base weights the adapter is then trained
# against; only these leave them as they are.
_PLAIN_INIT = (True, False, "gaussian")


def unstackable(sft_dir: Path) -> str | None:
    """Why the adapter in `sft_dir` cannot be stacked with a plain LoRA trained on top of it, or None. A folder
    without adapter_config.json is a full model."""
    path = Path(sft_dir) / CONFIG_FILE
    if not path.is_file():
        return "the SFT model is a full model, not an adapter of a base model"
    cfg = json.loads(path.read_text())
    if cfg.get("peft_type") != "LORA":
        return f"{path}: peft_type {cfg.get('peft_type')!r} is not LORA"
    if cfg.get("bias", "none") != "none":
        return f"{path}: bias {cfg['bias']!r}: it trains biases"
    set_fields = [name for name in _MUST_BE_UNSET if cfg.get(name)]
    if set_fields:
        return f"{path}: {', '.join(f'{n} {cfg[n]!r}' for n in set_fields)}: not a plain LoRA delta"
    if cfg.get("init_lora_weights", True) not in _PLAIN_INIT:
        return f"{path}: init_lora_weights {cfg['init_lora_weights']!r} changes the base weights"
    if not isinstance(cfg.get("target_modules"), list):
        return f"{path}: target_modules {cfg.get('target_modules')!r} is not a list of module names"
    if not (Path(sft_dir) / WEIGHTS_FILE).is_file():
        return f"{Path(sft_dir) / WEIGHTS_FILE} is missing"
    return None


@dataclasses.dataclass(frozen=True)
class Stacked:
    rank: int
    modules: int
    base_model: str


def stack_adapters(sft_dir: Path, top_config, top_state: dict, out_dir: Path) -> Stacked:
    """Write to `out_dir` (adapter_config.json, adapter_model.safetensors) one LoRA over the SFT adapter's base
    equal to the SFT adapter followed by `top_state`, a LoRA trained on the SFT model (`top_config` its
    LoraConfig, `top_state` its weights keyed as PEFT saves them: ``get_peft_model_state_dict``).
    The caller checks ``unstackable(sft_dir)`` first."""
    from peft import LoraConfig
    from safetensors.torch import load_file, save_file

    sft_config = LoraConfig.from_pretrained(str(sft_dir))
    top_problem = _plain(top_config)
    if top_problem:
        raise ValueError(f"the trained adapter cannot be stacked: {top_problem}")
    if sft_config.exclude_modules != top_config.exclude_modules:
        raise ValueError(f"the trained adapter cannot be stacked: it excludes {top_config.exclude_modules!r}, "
                         f"the SFT adapter {sft_config.exclude_modules!r}")
    parts = [(_pairs(load_file(Path(sft_dir) / WEIGHTS_FILE), f"{sft_dir}/{WEIGHTS_FILE}", sft_config.r),
              sft_config),
             (_pairs(top_state, "the trained adapter", top_config.r), top_config)]
    rank = sft_config.r + top_config.r
    state = {}
    for module in sorted(set(parts[0][0]) | set(parts[1][0])):
        present = [(pairs[module], cfg.lora_alpha / cfg.r) for pairs, cfg in parts if module in pairs]
        (a0, b0), _ = present[0]
        a = torch.zeros(rank, a0.shape[1], dtype=torch.float32)
        b = torch.zeros(b0.shape[0], rank, dtype=torch.float32)
        row = 0
        # As PEFT's "cat": each part's rows in order, the scaling on A, zeros after the last one present.
        for (part_a, part_b), scaling in present:
            if part_a.shape[1] != a.shape[1] or part_b.shape[0] != b.shape[0]:
                raise ValueError(f"{module}: the two adapters' matrices do not fit one layer (lora_A "
                                 f"{tuple(a0.shape)} and {tuple(part_a.shape)}, lora_B {tuple(b0.shape)} and "
                                 f"{tuple(part_b.shape)})")
            r = part_a.shape[0]
            a[row:row + r] = part_a * scaling
            b[:, row:row + r] = part_b
            row += r
        state[module + _A], state[module + _B] = a.contiguous(), b.contiguous()
    config = dataclasses.replace(
        sft_config, r=rank, lora_alpha=rank, use_rslora=False, rank_pattern={}, alpha_pattern={},
        target_modules=sorted(set(sft_config.target_modules) | set(top_config.target_modules)),
        init_lora_weights=True, inference_mode=True)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(out_dir))
    save_file(state, str(out_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    return Stacked(rank=rank, modules=len(state) // 2, base_model=sft_config.base_model_name_or_path)


def _plain(cfg) -> str | None:
    """``unstackable``'s checks on a LoraConfig object (the adapter this step trained)."""
    values = cfg.to_dict()
    if values.get("bias", "none") != "none":
        return f"bias {values['bias']!r}"
    set_fields = [name for name in _MUST_BE_UNSET if values.get(name)]
    if set_fields:
        return ", ".join(f"{n} {values[n]!r}" for n in set_fields)
    if isinstance(cfg.target_modules, str):
        return f"target_modules {cfg.target_modules!r} is a pattern"
    return None


def _pairs(state: dict, where: str, rank: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{module: (lora_A, lora_B)}; anything else in the state dict, or another rank, is refused."""
    other = [k for k in state if not k.endswith((_A, _B))]
    if other:
        raise ValueError(f"{where}: holds more than LoRA A and B matrices: {other[:3]}")
    modules = {k[: -len(_A)] for k in state if k.endswith(_A)} | {k[: -len(_B)] for k in state if k.endswith(_B)}
    lone = [m for m in modules if m + _A not in state or m + _B not in state]
    if lone:
        raise ValueError(f"{where}: {lone[:3]} hold only one of lora_A and lora_B")
    odd = [m for m in modules if state[m + _A].shape[0] != rank or state[m + _B].shape[1] != rank]
    if odd:
        raise ValueError(f"{where}: {odd[0]}: lora_A {tuple(state[odd[0] + _A].shape)}, lora_B "
                         f"{tuple(state[odd[0] + _B].shape)}: not of rank r {rank}")
    # On the host in fp32 whatever the training held them as (a GPU; 16 bits when ZeRO-3 consolidated them).
    return {m: tuple(state[m + k].detach().to("cpu", torch.float32) for k in (_A, _B)) for m in modules}
