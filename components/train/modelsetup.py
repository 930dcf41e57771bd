"""Build the model to train: base weights from the catalog, then LoRA / full / QLoRA preparation."""

from __future__ import annotations

import re
import warnings

import torch

from components.train.config import TrainConfig
from tuneline.llm.ml.attention import AUTO
from tuneline.llm.ml.attention import request as request_attention
from tuneline.llm.ml.device import compute_dtype
from tuneline.llm.ml.models import load_causal_lm, load_tokenizer, resolve_model


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


def quantization_config(precision: str, shards_params: bool):
    """The 4-bit config for QLoRA. Where the parameters are sharded (FSDP, DeepSpeed ZeRO-3) the packed 4-bit
    weights are stored in the compute dtype (``bnb_4bit_quant_storage``): FSDP shards floating-point tensors
    only, and accelerate leaves uint8-stored Params4bit out of sharding altogether (fsdp_utils.py
    ``fsdp2_prepare_model``: "Excluding from FSDP2 sharding"), so every GPU would hold the whole quantised model;
    ZeRO-3 needs them stored so too (PEFT v0.21.2 docs/source/accelerate/deepspeed.md, "QLoRA and DeepSpeed
    with ZeRO3": the quant storage dtype equal to the model's). The model's other weights are loaded in the
    same dtype, as the bitsandbytes FSDP-QLoRA guide (docs/source/fsdp_qlora.md) and PEFT's
    docs/source/accelerate/fsdp.md (v0.21.2) require."""
    from transformers import BitsAndBytesConfig

    compute = compute_dtype(precision) if precision != "no" else torch.float16
    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute, bnb_4bit_quant_storage=compute if shards_params else torch.uint8,
    )


def load_dtype(method: str, precision: str) -> torch.dtype:
    """LoRA keeps the frozen base in the compute dtype (adapters stay fp32); full fine-tuning keeps fp32 master
    weights and lets autocast run the matmuls in bf16/fp16; QLoRA's unquantised weights match the 4-bit storage."""
    if method == "full":
        return torch.float32
    if method == "qlora" and precision == "no":
        return torch.float16
    return compute_dtype(precision)


def build(config: TrainConfig, precision: str, device: torch.device, *, attn_implementation: str = AUTO,
          sharded: bool = False, on_meta: bool = False, shards_params: bool = False, base_revision: str | None = None):
    """The model to train and its tokenizer.

    ``sharded``: FSDP or DeepSpeed will place (and shard) the model in ``prepare``; moving the whole model to
    the GPU first would need the unsharded model to fit on one device. ``on_meta``: build the model from its
    config on the meta device instead of reading the checkpoint (``parallel.loads_on_meta``); ``prepare``
    broadcasts rank 0's weights into the shards. Non-persistent buffers (rotary frequencies) stay real, since
    accelerate copies them back after sharding rather than broadcasting them. ``base_revision``: the Hub commit
    the base model resolved to before training started, so the weights loaded are the ones the summary records.
    """
    check_method(config.method)
    path = resolve_model(config.base_model, revision=base_revision)
    tokenizer = load_tokenizer(path, padding_side="right")
    quantization = quantization_config(precision, shards_params) if config.method == "qlora" else None
    dtype = load_dtype(config.method, precision)
    if on_meta and quantization is None:
        model = empty_model(path, dtype, attn_implementation)
    else:
        # Not sharded: each process holds the whole model on its own GPU, so it is read straight onto it.
        direct = not sharded and device.type == "cuda"
        model = load_causal_lm(path, dtype=dtype, quantization_config=quantization,
                               attn_implementation=attn_implementation, device_map={"": device} if direct else None)
    model.config.use_cache = False
    # Under FSDP and ZeRO-3, QLoRA skips prepare_model_for_kbit_training: it casts every unquantised weight to
    # fp32, and the frozen weights are kept in the 4-bit storage dtype there (TRL 1.16's SFT set-up does the same
    # for sharded QLoRA, "FSDP/DS-Zero3", trl/experimental/utils.py).
    sharded_qlora = config.method == "qlora" and shards_params
    if config.method == "qlora" and not sharded_qlora:
        model = prepare_kbit(model, config.gradient_checkpointing)
    elif config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.method in ("lora", "qlora"):
        model = add_lora(model, config)
    else:
        freeze_beside_language_model(model)
    if on_meta:
        materialise_trainable(model)
    if quantization is None and not sharded:
        model.to(device)
    return model, tokenizer


def empty_model(path, dtype: torch.dtype, attn_implementation: str = AUTO):
    """The model of `path`'s config on the meta device, no weight read (``parallel.loads_on_meta``).
    Non-persistent buffers (rotary frequencies) stay real: accelerate copies them back after sharding rather than
    broadcasting them."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights(include_buffers=False):
        config = AutoConfig.from_pretrained(path)
        return AutoModelForCausalLM.from_config(config, dtype=dtype,
                                                attn_implementation=request_attention(config, attn_implementation))


def prepare_kbit(model, gradient_checkpointing: bool):
    """PEFT's preparation of a quantised model, with non-reentrant activation checkpointing: the reentrant
    kind (PEFT's default when given no kwargs, peft/utils/other.py ``prepare_model_for_kbit_training``) needs
    inputs that require grad, recomputes under DDP's hooks twice and cannot skip frozen layers' gradients."""
    from peft import prepare_model_for_kbit_training

    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=gradient_checkpointing,
                                           gradient_checkpointing_kwargs={"use_reentrant": False})


def add_lora(model, config: TrainConfig):
    """Wrap the model with a LoRA adapter whose weights are fp32 whatever the base model's dtype.

    fp32 adapters for sharded QLoRA too: FSDP2 needs one dtype among the trainable parameters only, and mixes
    16-bit frozen with fp32 trainable parameters in one group (accelerate's fsdp2_prepare_model gives the
    MixedPrecisionPolicy that casts them for compute). 16-bit adapters would make the fp16 GradScaler refuse
    ("Attempting to unscale FP16 gradients") and round every bf16 update.
    """
    from peft import LoraConfig, get_peft_model

    beside = beside_language_model(model)
    lora = LoraConfig(
        r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
        target_modules=_targets(config.lora_targets), task_type="CAUSAL_LM", bias="none",
        # A string is matched with re.fullmatch against each module's name (peft v0.21.2
        # tuners/tuners_utils.py ``check_target_module_exists``): every module under those sub-models.
        exclude_modules=_under(beside) if beside else None,
    )
    torch.manual_seed(config.seed)  # adapter initialisation is part of the run's determinism
    with warnings.catch_warnings():
        # The exclusion is a guard: targets that name no module of a vision tower leave it unused, and PEFT
        # warns about that (tuners_utils.py ``inject_adapter``).
        warnings.filterwarnings("ignore", message="You have passed exclude_modules=")
        return get_peft_model(model, lora, autocast_adapter_dtype=True)


def beside_language_model(model) -> list[str]:
    """The names of a multimodal model's sub-models other than its language model and output layer: the vision
    or audio towers and their projectors into the text embedding space. Empty for a text-only model.

    Training data here is text, so those sub-models take no part in the forward pass: a LoRA in them (PEFT's
    all-linear takes every linear layer but the output one, peft v0.21.2 tuners/tuners_utils.py
    ``_maybe_include_all_linear_layers``), or their weights in a full fine-tune, never get a gradient, which
    DDP refuses at the second step and which wastes optimizer state. AutoModelForCausalLM builds such models
    for some checkpoints (Gemma 3 4B and up: ``Gemma3ForConditionalGeneration``, transformers 5.23
    models/auto/modeling_auto.py). The language model is found by ``get_decoder`` (modeling_utils.py: the
    ``language_model`` / ``text_model`` / ``decoder`` sub-model, through the base model), so no family is named:
    everything beside the path from the root down to it is the rest."""
    decoder = model.get_decoder()
    path = next((name for name, module in model.named_modules() if module is decoder), "")
    output = model.get_output_embeddings()
    beside, module, prefix = [], model, ""
    for part in path.split(".") if path else []:
        beside += [prefix + name for name, child in module.named_children() if name != part and child is not output]
        module, prefix = getattr(module, part), f"{prefix}{part}."
    return beside


def _under(names: list[str]) -> str:
    return "(?:" + "|".join(re.escape(name) for name in names) + r")(?:\..*)?"


def freeze_beside_language_model(model) -> None:
    """A full fine-tune trains the language model only (``beside_language_model`` says why)."""
    for name in beside_language_model(model):
        model.get_submodule(name).requires_grad_(False)


def materialise_trainable(model) -> None:
    """Give the trainable parameters of a meta-device model real (uninitialised) CPU storage.

    accelerate's FSDP2 ``prepare`` re-points the optimizer at the sharded parameters by each old parameter's
    ``data_ptr`` (accelerator.py ``_prepare_fsdp2``); on meta every pointer is 0, and all of them would map to one
    parameter. The values do not matter: the broadcast from rank 0 overwrites them. Only the trainable ones need
    storage, as the optimizer holds only those: an adapter, or for a full fine-tune every parameter, where
    ``torch.empty`` only reserves address space (measured: 4 GiB of it adds under 1 MiB of resident memory) and
    ``prepare`` moves the model to meta before anything writes to it.
    """
    for name, param in list(model.named_parameters()):
        if param.requires_grad and param.is_meta:
            owner, _, leaf = name.rpartition(".")
            module = model.get_submodule(owner)
            setattr(module, leaf, torch.nn.Parameter(torch.empty(param.shape, dtype=param.dtype), requires_grad=True))


def parameter_count(model) -> int:
    """The model's parameters as its unquantised weights count them, whatever their storage.

    A ZeRO-3 partitioned parameter reports its full size as ``ds_numel`` (DeepSpeed
    runtime/zero/partition_parameters.py ``_convert_to_deepspeed_param``). A bitsandbytes 4-bit weight
    (``Params4bit``) packs two values in each byte of its storage, so its numel is the packed size: a 1.2B model
    would count 0.75B. transformers 5.23 counts it as numel x 2 x storage element size (modeling_utils.py
    ``num_parameters``), as here; matched by class name, bitsandbytes being a GPU-image dependency."""
    total = 0
    for param in model.parameters():
        count = getattr(param, "ds_numel", param.numel())
        total += count * 2 * param.element_size() if type(param).__name__ == "Params4bit" else count
    return total


def param_groups(model, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        # A ZeRO-3 partitioned parameter holds an empty 1-D tensor; its shape is ds_shape (DeepSpeed
        # runtime/zero/partition_parameters.py).
        ndim = len(getattr(param, "ds_shape", param.shape))
        (no_decay if ndim < 2 or "norm" in name or name.endswith(".bias") else decay).append(param)
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
