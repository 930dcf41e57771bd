"""How a training step shards when another launcher started its processes (torchrun, a Kubeflow Trainer TrainJob,
Azure ML's distribution): ``--distribution fsdp|zero2|zero3`` as ``accelerate launch --config_file`` would.

``accelerate launch`` does not pass its config file to the training processes: it turns it into environment
variables (``ACCELERATE_USE_FSDP`` and ``FSDP_*``; ``ACCELERATE_USE_DEEPSPEED``, ``ACCELERATE_CONFIG_DS_FIELDS``
and ``ACCELERATE_DEEPSPEED_*``), from which each process's ``Accelerator()`` builds its FSDP or DeepSpeed plugin
(accelerate 1.15, ``utils/launch.py``: ``prepare_multi_gpu_env`` and ``prepare_deepspeed_cmd_env``; the defaults
of the keys a file leaves out are ``commands/launch.py``'s argument defaults). A compiled multi-node step is
started by torchrun, which sets none of them, so it trained as plain data parallel whatever the user wanted. Here
each process sets the same variables from the same file, ``components/train/accelerate/<name>.yaml``, before its
Accelerator exists. The mapping is written out rather than computed by accelerate's launcher, whose config
parsing is private (``_validate_launch_command``); ``tests/components/test_train_distribution.py`` compares it
with accelerate's own result for every shipped file, so a new accelerate that changes it fails there.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

import yaml

CONFIGS = Path(__file__).resolve().parent / "accelerate"
CHOICES = ("auto", "ddp", "fsdp", "zero2", "zero3")

# accelerate launch's defaults for the FSDP keys a config file may leave out (commands/launch.py, 1.15).
_FSDP_DEFAULTS = {
    "sharding_strategy": "FULL_SHARD", "reshard_after_forward": True, "offload_params": False,
    "min_num_params": 100_000_000, "forward_prefetch": False, "use_orig_params": True,
    "cpu_ram_efficient_loading": True, "sync_module_states": True, "activation_checkpointing": False,
    "activation_checkpointing_offload": False,
}
_FSDP_OPTIONAL = {"auto_wrap_policy": "FSDP_AUTO_WRAP_POLICY", "transformer_layer_cls_to_wrap":
                  "FSDP_TRANSFORMER_CLS_TO_WRAP", "backward_prefetch": "FSDP_BACKWARD_PREFETCH",
                  "state_dict_type": "FSDP_STATE_DICT_TYPE"}
_DEEPSPEED_KEYS = {"zero_stage": "ACCELERATE_DEEPSPEED_ZERO_STAGE",
                   "gradient_accumulation_steps": "ACCELERATE_GRADIENT_ACCUMULATION_STEPS",
                   "gradient_clipping": "ACCELERATE_GRADIENT_CLIPPING",
                   "offload_optimizer_device": "ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE",
                   "offload_param_device": "ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE",
                   "zero3_init_flag": "ACCELERATE_DEEPSPEED_ZERO3_INIT",
                   "zero3_save_16bit_model": "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL",
                   "deepspeed_config_file": "ACCELERATE_DEEPSPEED_CONFIG_FILE"}
LAUNCHER_KEYS = ("ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED")


def _text(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def launch_env(name: str) -> dict[str, str]:
    """The variables ``accelerate launch --config_file accelerate/<name>.yaml`` gives each process, for the
    sharding keys; mixed precision is the train step's own choice (``tuneline.llm.ml.device``) and is left out."""
    if name not in CHOICES[2:]:
        raise ValueError(f"distribution {name!r}: one of {', '.join(CHOICES)}")
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    if config["distributed_type"] == "FSDP":
        fsdp = {k.removeprefix("fsdp_"): v for k, v in (config.get("fsdp_config") or {}).items()}
        env = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": _text(fsdp.get("version", 1))}
        for key, default in _FSDP_DEFAULTS.items():
            env[f"FSDP_{key.upper()}"] = _text(fsdp.get(key, default))
        env.update({var: _text(fsdp[key]) for key, var in _FSDP_OPTIONAL.items() if fsdp.get(key) is not None})
        return env
    if config["distributed_type"] == "DEEPSPEED":
        deepspeed = config.get("deepspeed_config") or {}
        env = {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_CONFIG_DS_FIELDS": ",".join(deepspeed).lower()}
        env.update({var: _text(deepspeed[key]) for key, var in _DEEPSPEED_KEYS.items() if key in deepspeed})
        return env
    raise ValueError(f"{CONFIGS / name}.yaml: distributed_type {config['distributed_type']} is not sharded")


def apply(name: str, environ: MutableMapping[str, str] | None = None) -> None:
    """Set `name`'s variables in this process (before the Accelerator is made). ``auto`` keeps what the launcher
    set; ``ddp`` asks for none; a launcher that already chose a different sharding is an error, not overridden."""
    environ = os.environ if environ is None else environ
    launched = next((k for k in LAUNCHER_KEYS if environ.get(k, "").lower() == "true"), None)
    if name == "auto":
        return
    wanted = {} if name == "ddp" else launch_env(name)
    if launched and launched not in wanted:
        raise ValueError(f"--distribution {name}, but the launcher set {launched}=true (accelerate launch with a "
                         "config file): use one or the other")
    if launched:
        return  # accelerate launch already set this sharding from its own config file
    environ.update(wanted)
