"""What the distribution config (accelerate's FSDP / DeepSpeed plugins) asks of the training code.

Read against accelerate 1.15 (accelerator.py ``_prepare_deepspeed``, utils/fsdp_utils.py
``fsdp2_prepare_model``, state.py ``AcceleratorState.__init__``) and transformers 5.23.
"""

from __future__ import annotations

import os
from typing import Any


def is_sharded(acc) -> bool:
    """FSDP or DeepSpeed: the model's parameters (ZeRO-3, FSDP) or optimizer state (ZeRO-1/2) live in shards."""
    from accelerate.utils import DistributedType

    return acc.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def is_fsdp(acc) -> bool:
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.FSDP


def is_deepspeed(acc) -> bool:
    from accelerate.utils import DistributedType

    return acc.distributed_type == DistributedType.DEEPSPEED


def shards_parameters(acc) -> bool:
    """FSDP or ZeRO-3: no rank holds the whole model, so saving it needs a gather that every rank joins."""
    from accelerate.utils import DistributedType

    plugin = acc.state.deepspeed_plugin if acc.distributed_type == DistributedType.DEEPSPEED else None
    return parameters_sharded(acc.distributed_type, plugin)


def parameters_sharded(distributed_type, deepspeed_plugin=None) -> bool:
    """Whether this distribution shards the parameters themselves (FSDP, ZeRO-3), as opposed to only the
    gradients and optimizer state (ZeRO-1/2) or nothing (DDP)."""
    from accelerate.utils import DistributedType

    if distributed_type == DistributedType.FSDP:
        return True
    if distributed_type == DistributedType.DEEPSPEED:
        return deepspeed_plugin.zero_stage == 3
    return False


def fsdp_requested() -> bool:
    """``accelerate launch`` with an FSDP config sets ACCELERATE_USE_FSDP (utils/launch.py prepare_multi_gpu_env)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_cpu_ram_efficient_loading() -> bool:
    """The launcher's FSDP_CPU_RAM_EFFICIENT_LOADING: only rank 0 reads the checkpoint, the others get its
    weights by broadcast inside ``prepare`` (fsdp_utils.py ``fsdp2_load_full_state_dict``)."""
    return fsdp_requested() and os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "false").lower() == "true"


def enable_fsdp_on_cpu(acc) -> bool:
    """Turn a CPU process group started for FSDP into an FSDP one; returns whether it did.

    accelerate switches to FSDP only on accelerator devices (state.py: the FSDP branch of
    ``AcceleratorState.__init__`` is reached for MULTI_GPU/NPU/XPU/..., never MULTI_CPU), so on a machine without
    a GPU an FSDP launch silently trains as plain data parallel. torch's FSDP2 (``fully_shard``) does run on CPU
    over gloo, and that is how the sharded path (meta-device loading, sharded checkpoints, the gathered adapter)
    is exercised without a GPU. On GPUs accelerate's own path is used unchanged.
    """
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    if not fsdp_requested() or acc.distributed_type != DistributedType.MULTI_CPU:
        return False
    plugin = FullyShardedDataParallelPlugin()  # read from the launcher's FSDP_* variables, as accelerate does
    if plugin.fsdp_version != 2:
        raise RuntimeError("FSDP on CPU runs only with fsdp_version: 2 (FSDP1 needs a GPU)")
    from accelerate.state import PartialState

    acc.state.fsdp_plugin = plugin
    acc.state.distributed_type = DistributedType.FSDP
    # As AcceleratorState.__init__ ends: later AcceleratorState() calls copy PartialState's shared state back.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    return True


def name_fsdp_wrap_classes(acc, model) -> list[str] | None:
    """Under FSDP, the layer classes that get their own FSDP unit, set on the plugin before ``prepare``;
    returns them (None when not FSDP)."""
    if not is_fsdp(acc):
        return None
    return fill_wrap_classes(acc.state.fsdp_plugin, model)


def fill_wrap_classes(plugin, model) -> list[str] | None:
    """Wrap the classes of the model's own ``_no_split_modules`` that the model holds, unless the config names
    its classes (``fsdp_transformer_layer_cls_to_wrap``) or wraps otherwise.

    Left unnamed, accelerate takes every class in ``_no_split_modules`` and raises "Could not find the
    transformer layer class" for one the model does not hold (utils/fsdp_utils.py
    ``fsdp2_prepare_auto_wrap_policy``, utils/dataclasses.py ``set_auto_wrap_policy``). A multimodal model
    gathers the list over all its sub-models' classes (transformers 5.23 modeling_utils.py ``post_init``), some
    of them unused: Gemma 3's lists ``SiglipTextEmbeddings`` though its vision tower has no text part. The rule
    stays the model's own (each family's decoder layer; a vision tower's encoder layers are units of their own
    too, so its weights are gathered only if it runs), kept to what accelerate's own lookup,
    ``get_module_class_from_name``, finds in the model."""
    from accelerate.utils.dataclasses import get_module_class_from_name
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    policy = getattr(plugin.auto_wrap_policy, "func", plugin.auto_wrap_policy)
    if policy is not transformer_auto_wrap_policy or plugin.transformer_cls_names_to_wrap is not None:
        return plugin.transformer_cls_names_to_wrap
    declared = sorted(getattr(model, "_no_split_modules", None) or [])
    plugin.transformer_cls_names_to_wrap = [name for name in declared if get_module_class_from_name(model, name)]
    return plugin.transformer_cls_names_to_wrap


def fill_deepspeed_config(acc, per_device_batch: int, grad_accum: int, max_grad_norm: float) -> dict[str, Any]:
    """Give the DeepSpeed config the values accelerate would take from a DataLoader, before ``prepare``.

    A plugin built from an accelerate yaml (no DeepSpeed json) carries ``train_micro_batch_size_per_gpu:
    auto`` and ``train_batch_size: auto`` (utils/dataclasses.py ``DeepSpeedPlugin.__post_init__``), and
    ``_prepare_deepspeed`` raises "requires you to pass at least one of training or evaluation dataloaders"
    when the batch size is "auto" and no DataLoader is prepared -- this loop batches by itself and prepares
    none. Values the config already sets must agree with the training arguments (a clear error otherwise).
    Returns the values filled in.
    """
    plugin = acc.state.deepspeed_plugin
    return fill_deepspeed_plugin(plugin, per_device_batch, grad_accum, max_grad_norm, acc.num_processes)


def configure_deepspeed(acc, per_device_batch: int, grad_accum: int, max_grad_norm: float, *,
                        full_model: bool) -> int:
    """What a DeepSpeed run settles before ``prepare``, for every step that trains under it: the gradient
    accumulation (``deepspeed_grad_accum``), the values accelerate would take from a DataLoader
    (``fill_deepspeed_config``) and, for a full model under ZeRO-3, leave to gather it on save
    (``require_gather_on_save``). Returns the accumulation to train with; ValueError names a disagreement."""
    plugin = acc.state.deepspeed_plugin
    grad_accum = deepspeed_grad_accum(plugin, grad_accum)
    fill_deepspeed_config(acc, per_device_batch, grad_accum, max_grad_norm)
    require_gather_on_save(plugin, full_model=full_model)
    return grad_accum


# The keys this loop owns. A DeepSpeed config's other "auto" values (reduce_bucket_size,
# stage3_prefetch_bucket_size, stage3_param_persistence_threshold: sizes from the model's hidden size) are
# accelerate's to fill in ``_prepare_deepspeed``, after this.
LOOP_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size", "gradient_clipping")


def fill_deepspeed_plugin(plugin, per_device_batch: int, grad_accum: int, max_grad_norm: float,
                          world: int) -> dict[str, Any]:
    values = {
        "train_micro_batch_size_per_gpu": per_device_batch,
        "gradient_accumulation_steps": grad_accum,
        "train_batch_size": per_device_batch * grad_accum * world,
        # The loop's --max-grad-norm; DeepSpeed clips inside its step (0 disables clipping in both).
        "gradient_clipping": max_grad_norm,
    }
    config = plugin.deepspeed_config
    # A DeepSpeed json may leave these out; DeepSpeed then derives the batch from train_batch_size alone and
    # does not clip. The loop's own values are the ones it trains with.
    for key in ("train_micro_batch_size_per_gpu", "gradient_clipping"):
        config.setdefault(key, values[key])
    mismatches: list[str] = []
    for key in LOOP_KEYS:
        plugin.fill_match(key, mismatches, must_match=True, **values)
    if mismatches:
        raise ValueError("the DeepSpeed config disagrees with the training arguments:\n" + "\n".join(mismatches)
                         + "\nset these to auto in the DeepSpeed config, or pass the same values to the train step")
    return values


GATHER_ON_SAVE = "zero_optimization.stage3_gather_16bit_weights_on_model_save"


def require_gather_on_save(plugin, full_model: bool) -> None:
    """Under ZeRO-3, let a full fine-tune's model be gathered to be saved.

    ``accelerator.get_state_dict`` raises after training unless ``stage3_gather_16bit_weights_on_model_save``
    is true (accelerator.py ``get_state_dict``, accelerate 1.15). zero3.yaml sets it (zero3_save_16bit_model),
    but a DeepSpeed json that leaves it out gets DeepSpeed's default, false, and one that says "auto" gets the
    launcher's zero3_save_16bit_model, false unless set (utils/dataclasses.py ``DeepSpeedPlugin.__post_init__``
    fills it when the plugin is built): the whole training would run to fail at the save. The flag only decides
    whether the save may gather, so a full fine-tune sets it. An adapter is gathered without it
    (``gathered_trainable``)."""
    if full_model and plugin.get_value("zero_optimization.stage") == 3:
        plugin.deepspeed_config.setdefault("zero_optimization", {})[GATHER_ON_SAVE.rpartition(".")[2]] = True


def checkpoint_kwargs(deepspeed: bool, method: str) -> tuple[dict, dict]:
    """(``save_state`` kwargs, ``load_state`` kwargs) for a checkpoint of this run.

    A LoRA under DeepSpeed checkpoints its adapter and optimizer state only: the engine's ``save_checkpoint``
    otherwise writes the frozen base too (the whole module state under ZeRO-1/2, every rank's fragment of each
    frozen parameter under ZeRO-3), a full copy of a 70B model on every save. Resuming then loads the module
    non-strictly, the frozen weights being the base model's, loaded at start. transformers 5.23's Trainer does
    the same for PEFT models (trainer.py ``_save_checkpoint``: ``exclude_frozen_parameters=True``;
    ``deepspeed_load_checkpoint(..., load_module_strict=False)``); accelerate passes them to the engine only.
    """
    if deepspeed and method != "full":
        return {"exclude_frozen_parameters": True}, {"load_module_strict": False}
    return {}, {}


def deepspeed_grad_accum(plugin, requested: int) -> int:
    """The gradient accumulation to train with under DeepSpeed: ``--grad-accum``, or the DeepSpeed config's
    ``gradient_accumulation_steps`` when that is a number and ``--grad-accum`` is left at 1. Both set and
    different is an error (the engine would step at another boundary than the loop's)."""
    configured = plugin.deepspeed_config.get("gradient_accumulation_steps", "auto")
    if configured == "auto" or configured == requested:
        return requested
    if not isinstance(configured, int) or configured < 1:
        raise ValueError(f"the DeepSpeed config's gradient_accumulation_steps is {configured!r}: give a positive "
                         "integer or auto")
    if requested == 1:
        return configured
    raise ValueError(f"--grad-accum {requested} but the DeepSpeed config's gradient_accumulation_steps is "
                     f"{configured}: set one of them (auto in the DeepSpeed config takes --grad-accum)")


def save_trainable_sharded(model, optimizer, folder) -> None:
    """Checkpoint the trainable parameters of an FSDP2 model and their optimizer state, each rank its shards.

    accelerate's ``save_state`` writes the whole sharded model, frozen base included: for a LoRA of a 70B model
    140 GB every save_steps, where the adapter and its AdamW moments are a few hundred MB. torch's distributed
    checkpoint (``dcp.save``) of ``get_state_dict(..., ignore_frozen_params=True)`` writes only those; the frozen
    weights come from the base model again on resume. Every rank must call this.
    """
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optimizer_state = get_state_dict(model, _torch_optimizer(optimizer), options=_trainable_only())
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=str(folder))


def load_trainable_sharded(model, optimizer, folder) -> None:
    """Restore what ``save_trainable_sharded`` wrote into this run's FSDP2 model and optimizer."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    inner = _torch_optimizer(optimizer)
    model_state, optimizer_state = get_state_dict(model, inner, options=_trainable_only())
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=str(folder))
    # strict=False: the frozen weights are not in it; they are the base model's, loaded at start.
    set_state_dict(model, inner, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                   options=_trainable_only(strict=False))


def _trainable_only(strict: bool = True):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(ignore_frozen_params=True, strict=strict)


def _torch_optimizer(optimizer):
    """The torch optimizer behind accelerate's wrapper, whose parameters are the model's sharded ones."""
    return getattr(optimizer, "optimizer", optimizer)


def loads_on_meta() -> bool:
    """Whether this process builds the model on the meta device instead of reading the checkpoint.

    Under FSDP with cpu_ram_efficient_loading only the main process needs real weights: ``prepare`` moves the
    model to meta, shards it and broadcasts rank 0's values (fsdp_utils.py ``fsdp2_prepare_model``). transformers
    5.23 still materialises the whole checkpoint on every rank in ``from_pretrained`` (modeling_utils.py only
    special-cases non-persistent buffers on ranks > 0), so 8 ranks of a 70B model would hold 8 x 140 GB of host
    memory; building the others from the config on meta holds none. Rank is the global one: rank 0 is the only
    source of the broadcast. Not for QLoRA: accelerate skips this path for models holding 4-bit weights.
    """
    return fsdp_cpu_ram_efficient_loading() and int(os.environ.get("RANK", "0")) != 0


def gathered_trainable(acc, model) -> dict:
    """The trainable parameters (a LoRA adapter) in full, on the main process; every rank must call this.

    FSDP2: each trainable parameter is a DTensor shard; ``full_tensor`` all-gathers it, so only the adapter
    travels, not the frozen base (``accelerator.get_state_dict`` would gather the whole model to rank 0's host
    memory). ZeRO-3: the engine consolidates the trainable parameters only, one layer at a time, in 16 bits,
    as transformers 5.23's ``Trainer.save_model`` does for a PEFT model (trainer.py:
    ``_zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True)``): ``accelerator.get_state_dict``
    would copy the whole frozen base to rank 0's host memory (140 GB for a 70B model) to keep a few MB of it.
    Either way PEFT keeps the adapter's entries of what it is given. Returns None on other ranks.
    """
    if is_deepspeed(acc):
        return model._zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True)
    if not getattr(acc, "is_fsdp2", False):
        return acc.get_state_dict(model)
    from accelerate.utils.fsdp_utils import fsdp2_canonicalize_names
    from torch.distributed.tensor import DTensor

    out = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        full = param.full_tensor() if isinstance(param, DTensor) else param
        if acc.is_main_process:
            out[name] = full.detach().to("cpu", copy=True)
    # fsdp_activation_checkpointing wraps each decoder layer, which puts "_checkpoint_wrapped_module." into the
    # names; PEFT would match no key of such an adapter when loading it and serve the base model unchanged.
    return fsdp2_canonicalize_names(out)
