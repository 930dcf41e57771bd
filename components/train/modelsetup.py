"""Build the model to train: base weights from the catalog, then LoRA / full / QLoRA preparation."""

from __future__ import annotations

import torch

from components.train.config import TrainConfig
from tuneline.ml.device import compute_dtype
from tuneline.ml.models import load_causal_lm, load_tokenizer, resolve_model


class MethodUnavailable(RuntimeError):
    """The requested method cannot run on this machine."""


def check_method(method: str) -> None:
    """Fail before any model is loaded when the method cannot run here."""
    if method != "qlora":
        return
    if not torch.cuda.is_available():
        raise MethodUnavailable(
            "method 'qlora' quantises the base model to 4 bits with bitsandbytes, which needs a CUDA GPU; "
            "this machine has none. Use --method lora (or full) on CPU."
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as err:
        raise MethodUnavailable("method 'qlora' needs the bitsandbytes package (train-gpu image)") from err


def _targets(spec: str):
    spec = spec.strip()
    return "all-linear" if spec == "all-linear" else [t.strip() for t in spec.split(",") if t.strip()]


def build(config: TrainConfig, precision: str, device: torch.device):
    check_method(config.method)
    path = resolve_model(config.base_model)
    tokenizer = load_tokenizer(path, padding_side="right")
    quantization = None
    # LoRA keeps the frozen base in the compute dtype (adapters stay fp32); full fine-tuning keeps fp32
    # master weights and lets autocast run the matmuls in bf16/fp16.
    dtype = torch.float32 if config.method == "full" else compute_dtype(precision)
    if config.method == "qlora":
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype(precision) if precision != "no" else torch.float16,
        )
    model = load_causal_lm(path, dtype=dtype, quantization_config=quantization)
    model.config.use_cache = False
    if config.method == "qlora":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.method in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
            target_modules=_targets(config.lora_targets), task_type="CAUSAL_LM", bias="none",
        )
        torch.manual_seed(config.seed)  # adapter initialisation is part of the run's determinism
        model = get_peft_model(model, lora)
    if quantization is None:
        model.to(device)
    return model, tokenizer


def param_groups(model, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim < 2 or "norm" in name or name.endswith(".bias") else decay).append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    wanted = {n for n, p in params.items() if p.requires_grad}
    if set(state) != wanted:
        missing, extra = sorted(wanted - set(state))[:3], sorted(set(state) - wanted)[:3]
        raise RuntimeError(f"checkpoint does not match the model: missing {missing}, unexpected {extra}")
    with torch.no_grad():
        for name, tensor in state.items():
            params[name].copy_(tensor.to(params[name].device, params[name].dtype))
