"""--distribution sets in each process what `accelerate launch --config_file` would, so a step that torchrun starts
(every compiled multi-process step) shards as the config file says."""

from __future__ import annotations

import pytest

from components.train import distribution

SHARDED = ("fsdp", "zero2", "zero3")


def _accelerate_launch_env(name: str) -> dict[str, str]:
    """The oracle: accelerate's own launcher turning the same file into variables (its private parsing is fine in
    a test; the product does not call it)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(
        ["--config_file", str(distribution.CONFIGS / f"{name}.yaml"), "--num_processes", "2", "train.py"])
    args, defaults, mixed_precision_from_config = _validate_launch_command(args)
    if args.use_deepspeed:
        # As launch_command does before it calls the DeepSpeed launcher (commands/launch.py).
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mixed_precision_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return env


@pytest.mark.parametrize("name", SHARDED)
def test_the_variables_are_accelerate_launchs_own(name):
    ours = distribution.launch_env(name)
    theirs = _accelerate_launch_env(name)
    sharding = {k: v for k, v in theirs.items() if k.startswith("FSDP_") or k in ours or (
        k.startswith("ACCELERATE_") and ("FSDP" in k or "DEEPSPEED" in k or k.startswith("ACCELERATE_GRADIENT")
                                         or k == "ACCELERATE_CONFIG_DS_FIELDS"))}
    if name != "fsdp":  # mixed precision is the step's own choice; accelerate lists it only when the file sets it
        sharding["ACCELERATE_CONFIG_DS_FIELDS"] = ",".join(
            f for f in sharding["ACCELERATE_CONFIG_DS_FIELDS"].split(",") if f != "mixed_precision")
    assert ours == sharding


def test_apply_keeps_the_launchers_choice_and_refuses_a_conflict():
    env = {}
    distribution.apply("auto", env)
    distribution.apply("ddp", env)
    assert env == {}
    distribution.apply("fsdp", env)
    assert env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_VERSION"] == "2"
    distribution.apply("fsdp", env)  # launched with it already: unchanged
    with pytest.raises(ValueError, match="the launcher set ACCELERATE_USE_FSDP=true"):
        distribution.apply("zero3", env)
    with pytest.raises(ValueError, match="one of auto, ddp"):
        distribution.launch_env("zero1")
