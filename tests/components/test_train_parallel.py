"""The distribution configs as accelerate's launcher turns them into plugins, against what the train code builds.

DeepSpeed and a GPU are absent here: the plugins are built the way ``accelerate launch`` builds them (its own
argument parsing and environment preparation), and the code is tested up to ``prepare``.
"""

import os
from pathlib import Path

import pytest
import torch

from components.train import parallel

CONFIGS = Path(__file__).resolve().parents[2] / "components" / "train" / "accelerate"


def launcher_env(config: str) -> dict[str, str]:
    """The ACCELERATE_* / FSDP_* variables ``accelerate launch --config_file <config>`` gives each process."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(CONFIGS / config), "-m", "components.train"])
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate/commands/launch.py launch_command does before deepspeed_launcher
        fields = list(defaults.deepspeed_config.keys()) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
    else:
        env = prepare_multi_gpu_env(args)
    return {k: v for k, v in env.items() if k.startswith(("ACCELERATE_", "FSDP_"))}


@pytest.fixture
def launched(monkeypatch):
    def apply(config):
        for key in [k for k in os.environ if k.startswith(("ACCELERATE_", "FSDP_"))]:
            monkeypatch.delenv(key)
        for key, value in launcher_env(config).items():
            monkeypatch.setenv(key, value)

    return apply


@pytest.mark.parametrize("config", ["zero2.yaml", "zero3.yaml"])
def test_deepspeed_batch_size_is_filled_before_prepare(config, launched):
    from accelerate.utils import DeepSpeedPlugin

    launched(config)
    plugin = DeepSpeedPlugin()
    # What accelerator.py _prepare_deepspeed refuses without a DataLoader:
    assert plugin.is_auto("train_micro_batch_size_per_gpu")
    parallel.fill_deepspeed_plugin(plugin, per_device_batch=8, grad_accum=1, max_grad_norm=0.5, world=4)
    assert not plugin.is_auto("train_micro_batch_size_per_gpu") and not plugin.is_auto("train_batch_size")
    assert plugin.get_value("train_micro_batch_size_per_gpu") == 8
    assert plugin.get_value("train_batch_size") == 32
    assert plugin.get_value("gradient_clipping") == 0.5  # the loop's --max-grad-norm, not accelerate's 1.0
    assert plugin.get_value("zero_optimization.stage") == int(config[4])


def test_deepspeed_config_that_disagrees_with_the_arguments_is_named(launched):
    from accelerate.utils import DeepSpeedPlugin

    launched("zero2.yaml")
    plugin = DeepSpeedPlugin()
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = 4
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu=4 vs arg train_micro_batch_size_per_gpu=8"):
        parallel.fill_deepspeed_plugin(plugin, per_device_batch=8, grad_accum=1, max_grad_norm=1.0, world=2)


def _tiny(family: str):
    import transformers

    common = dict(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=64)
    config_cls, model_cls, layer = {
        "llama": ("LlamaConfig", "LlamaForCausalLM", "LlamaDecoderLayer"),
        "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", "Qwen2DecoderLayer"),
        "mistral": ("MistralConfig", "MistralForCausalLM", "MistralDecoderLayer"),
        "gemma": ("GemmaConfig", "GemmaForCausalLM", "GemmaDecoderLayer"),
    }[family]
    config = getattr(transformers, config_cls)(**common, **({"head_dim": 8} if family == "gemma" else {}))
    torch.manual_seed(0)
    return getattr(transformers, model_cls)(config), layer


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral", "gemma"])
def test_fsdp_wraps_each_familys_decoder_layer(family, launched):
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy
    from peft import LoraConfig, get_peft_model

    launched("fsdp.yaml")
    assert parallel.fsdp_requested() and parallel.fsdp_cpu_ram_efficient_loading()
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    model, layer = _tiny(family)
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert parallel.fill_wrap_classes(plugin, model) == [layer]
    # As fsdp2_prepare_model does: the policy decides which submodules get their own FSDP unit.
    plugin.set_auto_wrap_policy(model)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = [type(m).__name__ for m in model.modules() if policy(m)]
    assert wrapped == [layer, layer]


def test_fsdp_wraps_a_multimodal_models_layers_it_holds(launched):
    """Gemma 3's _no_split_modules, gathered over its sub-models, names SiglipTextEmbeddings, which its vision
    tower lacks: accelerate refused the model."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    from components.train.config import parse_args
    from components.train.modelsetup import add_lora
    from tests.support.tinymodel import tiny_gemma3

    launched("fsdp.yaml")
    plugin = FullyShardedDataParallelPlugin()
    config = parse_args(["--train", "x", "--model-out", "m", "--checkpoints", "c", "--mlflow-run-id-out", "r"])
    model = add_lora(tiny_gemma3(), config)
    assert "SiglipTextEmbeddings" in model._no_split_modules
    assert parallel.fill_wrap_classes(plugin, model) == [
        "Gemma3DecoderLayer", "SiglipEncoderLayer", "SiglipMultiheadAttentionPoolingHead", "SiglipVisionEmbeddings"]
    plugin.set_auto_wrap_policy(model)
    policy = fsdp2_prepare_auto_wrap_policy(plugin, model)
    wrapped = [type(m).__name__ for m in model.modules() if policy(m)]
    assert wrapped.count("Gemma3DecoderLayer") == 2 and "SiglipEncoderLayer" in wrapped


def test_wrap_classes_named_in_the_config_are_kept(launched, monkeypatch):
    from accelerate.utils import FullyShardedDataParallelPlugin

    launched("fsdp.yaml")
    monkeypatch.setenv("FSDP_TRANSFORMER_CLS_TO_WRAP", "LlamaDecoderLayer")
    plugin = FullyShardedDataParallelPlugin()
    model, _ = _tiny("llama")
    assert parallel.fill_wrap_classes(plugin, model) == ["LlamaDecoderLayer"]


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_qlora_under_fsdp_stores_4bit_weights_in_the_compute_dtype(precision, dtype):
    from components.train.modelsetup import load_dtype, quantization_config

    sharded = quantization_config(precision, shards_params=True)
    # FSDP shards floating-point storage only; uint8-stored 4-bit weights stay whole on every GPU.
    assert sharded.bnb_4bit_quant_storage == dtype == sharded.bnb_4bit_compute_dtype
    assert load_dtype("qlora", precision) == dtype  # the unquantised weights match it
    assert sharded.load_in_4bit and sharded.bnb_4bit_quant_type == "nf4"
    assert quantization_config(precision, shards_params=False).bnb_4bit_quant_storage == torch.uint8


@pytest.mark.parametrize("method", ["lora", "full"])
def test_a_rank_other_than_0_builds_its_model_on_meta(method, tmp_path, monkeypatch):
    """Under FSDP with cpu_ram_efficient_loading: no checkpoint read, no frozen weight in host memory; trainable
    parameters get storage (accelerate maps optimizer parameters by data_ptr), rotary buffers stay real."""
    from components.train.config import parse_args
    from components.train.modelsetup import build

    monkeypatch.setenv("TUNELINE_HOME", str(tmp_path))
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "true")
    monkeypatch.setenv("RANK", "1")
    assert parallel.loads_on_meta()
    config = parse_args(["--train", "x", "--base-model", "tiny-random-llama", "--model-out", "m",
                         "--checkpoints", "c", "--mlflow-run-id-out", "r", "--method", method])
    model, _ = build(config, "no", torch.device("cpu"), sharded=True, on_meta=True, shards_params=True)
    params = dict(model.named_parameters())
    frozen = [p for p in params.values() if not p.requires_grad]
    trainable = [p for p in params.values() if p.requires_grad]
    assert all(p.is_meta for p in frozen) and (bool(frozen) == (method == "lora"))
    assert trainable and not any(p.is_meta for p in trainable)
    assert len({p.data_ptr() for p in trainable}) == len(trainable)
    assert not any(b.is_meta for b in model.buffers())
    monkeypatch.setenv("RANK", "0")
    assert not parallel.loads_on_meta()


def test_a_learning_rate_far_above_the_methods_usual_range_is_warned_about():
    from components.train.config import learning_rate_warning, parse_args

    def config(*extra):
        return parse_args(["--train", "x", "--model-out", "m", "--checkpoints", "c", "--mlflow-run-id-out", "r",
                           *extra])

    eight_b = 8_030_000_000
    full = config("--method", "full", "--learning-rate", "2e-3")
    assert "high for method full on a model of 8.0B" in learning_rate_warning(full, eight_b)
    assert "high for method lora" in learning_rate_warning(config("--learning-rate", "2e-3"), eight_b)
    assert learning_rate_warning(config(), eight_b) is None  # unset: a rate that suits the model is picked
    assert learning_rate_warning(config("--method", "full", "--learning-rate", "2e-5"), eight_b) is None
    assert learning_rate_warning(config("--learning-rate", "2e-4"), eight_b) is None
    assert learning_rate_warning(config("--learning-rate", "2e-3"), 135_000_000) is None  # the demo model's rate


def test_the_default_learning_rate_follows_method_and_model_size():
    from components.train.config import learning_rate, parse_args

    def config(*extra):
        return parse_args(["--train", "x", "--model-out", "m", "--checkpoints", "c", "--mlflow-run-id-out", "r",
                           *extra])

    assert config().learning_rate is None  # unset by default: picked by model
    assert learning_rate(config(), 8_030_000_000) == 2e-4
    assert learning_rate(config("--method", "qlora"), 70_550_000_000) == 2e-4
    assert learning_rate(config("--method", "full"), 8_030_000_000) == 2e-5
    assert learning_rate(config(), 135_000_000) == 2e-3  # the demo model's LoRA
    assert learning_rate(config("--learning-rate", "5e-4"), 8_030_000_000) == 5e-4  # given: kept
    assert config().max_steps == 0 and config().max_seq_len >= 2048  # an epoch of real-length examples


# The shape of the ZeRO-3 json in transformers' and accelerate's DeepSpeed docs: hidden-size-dependent "auto"s
# that accelerate fills from the model in _prepare_deepspeed, after the loop's own keys.
HF_ZERO3 = {"bf16": {"enabled": "auto"}, "gradient_accumulation_steps": "auto", "gradient_clipping": "auto",
            "train_batch_size": "auto", "train_micro_batch_size_per_gpu": "auto",
            "zero_optimization": {"stage": 3, "overlap_comm": True, "reduce_bucket_size": "auto",
                                  "stage3_prefetch_bucket_size": "auto",
                                  "stage3_param_persistence_threshold": "auto",
                                  "stage3_gather_16bit_weights_on_model_save": True}}


def test_an_hf_style_deepspeed_json_gets_the_loops_values_and_keeps_accelerates_autos():
    import copy

    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin(hf_ds_config=copy.deepcopy(HF_ZERO3))
    plugin.set_mixed_precision("bf16")
    parallel.fill_deepspeed_plugin(plugin, per_device_batch=4, grad_accum=2, max_grad_norm=1.0, world=8)
    assert plugin.get_value("train_batch_size") == 64 and plugin.get_value("gradient_accumulation_steps") == 2
    assert plugin.get_value("gradient_clipping") == 1.0
    for key in ("reduce_bucket_size", "stage3_prefetch_bucket_size", "stage3_param_persistence_threshold"):
        assert plugin.is_auto(f"zero_optimization.{key}")  # for _prepare_deepspeed, which knows the model


@pytest.mark.parametrize("config", ["zero2.yaml", "zero3.yaml"])
def test_grad_accum_drives_deepspeeds_accumulation_from_the_shipped_configs(config, launched):
    from accelerate.utils import DeepSpeedPlugin

    launched(config)
    plugin = DeepSpeedPlugin()
    assert parallel.deepspeed_grad_accum(plugin, 4) == 4
    parallel.fill_deepspeed_plugin(plugin, per_device_batch=2, grad_accum=4, max_grad_norm=1.0, world=2)
    assert plugin.get_value("gradient_accumulation_steps") == 4 and plugin.get_value("train_batch_size") == 16


def test_deepspeed_accumulation_set_in_its_config_is_taken_unless_grad_accum_disagrees():
    from accelerate.utils import DeepSpeedPlugin

    plugin = DeepSpeedPlugin(hf_ds_config={**HF_ZERO3, "gradient_accumulation_steps": 4})
    assert parallel.deepspeed_grad_accum(plugin, 1) == 4  # --grad-accum left at its default
    assert parallel.deepspeed_grad_accum(plugin, 4) == 4
    parallel.fill_deepspeed_plugin(plugin, per_device_batch=2, grad_accum=4, max_grad_norm=1.0, world=2)
    with pytest.raises(ValueError, match="--grad-accum 2 but the DeepSpeed config's gradient_accumulation_steps is 4"):
        parallel.deepspeed_grad_accum(plugin, 2)


@pytest.mark.parametrize("setting", ["absent", "auto", False])
def test_zero3_lets_a_full_fine_tune_be_gathered_whatever_the_json_says(setting):
    import copy

    from accelerate.utils import DeepSpeedPlugin

    ds = copy.deepcopy(HF_ZERO3)
    if setting == "absent":
        del ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"]
    else:
        ds["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] = setting
    plugin = DeepSpeedPlugin(hf_ds_config=ds)
    parallel.require_gather_on_save(plugin, full_model=True)
    # accelerator.get_state_dict refuses at the end of training unless this is true.
    assert plugin.get_value(parallel.GATHER_ON_SAVE) is True


def test_zero3_yaml_keeps_its_gather_flag(launched):
    from accelerate.utils import DeepSpeedPlugin

    launched("zero3.yaml")
    plugin = DeepSpeedPlugin()
    parallel.require_gather_on_save(plugin, full_model=True)
    assert plugin.get_value(parallel.GATHER_ON_SAVE) is True


def test_a_lora_checkpoint_under_deepspeed_leaves_the_frozen_base_out():
    save, load = parallel.checkpoint_kwargs(deepspeed=True, method="lora")
    assert save == {"exclude_frozen_parameters": True} and load == {"load_module_strict": False}
    assert parallel.checkpoint_kwargs(deepspeed=True, method="qlora")[0] == save
    assert parallel.checkpoint_kwargs(deepspeed=True, method="full") == ({}, {})  # the weights are what it trains
    assert parallel.checkpoint_kwargs(deepspeed=False, method="lora") == ({}, {})


def test_peft_writes_the_adapter_from_the_trainable_parameters_alone(tmp_path):
    # What the ZeRO-3 engine's _zero3_consolidated_16bit_state_dict(exclude_frozen_parameters=True) returns on
    # rank 0: each trainable parameter under its name in the module tree, nothing of the frozen base. (The engine
    # itself needs deepspeed and a GPU.) PEFT must write from it the adapter it writes from the whole model.
    from peft import LoraConfig, get_peft_model
    from safetensors.torch import load_file

    model, _ = _tiny("llama")
    model = get_peft_model(model, LoraConfig(r=4, target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_()
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    model.save_pretrained(tmp_path / "own", save_embedding_layers=False)
    model.save_pretrained(tmp_path / "gathered", save_embedding_layers=False, state_dict=trainable)
    own = load_file(tmp_path / "own" / "adapter_model.safetensors")
    gathered = load_file(tmp_path / "gathered" / "adapter_model.safetensors")
    assert own.keys() == gathered.keys() and len(own) == len(trainable)
    assert all(torch.equal(own[k], gathered[k]) for k in own)


@pytest.mark.parametrize("config,sharded", [("zero3.yaml", True), ("zero2.yaml", False), ("fsdp.yaml", True)])
def test_qlora_stores_4bit_weights_in_the_compute_dtype_wherever_parameters_are_sharded(config, sharded, launched):
    # ZeRO-3 partitions parameters as FSDP does: the 4-bit weights must be stored in the compute dtype there too
    # (PEFT's "QLoRA and DeepSpeed with ZeRO3"), where ZeRO-2 keeps whole parameters on every rank.
    from accelerate.utils import DeepSpeedPlugin, DistributedType

    from components.train.modelsetup import quantization_config

    launched(config)
    if config == "fsdp.yaml":
        kind, plugin = DistributedType.FSDP, None
    else:
        kind, plugin = DistributedType.DEEPSPEED, DeepSpeedPlugin()
    assert parallel.parameters_sharded(kind, plugin) is sharded
    storage = quantization_config("bf16", parallel.parameters_sharded(kind, plugin)).bnb_4bit_quant_storage
    assert storage == (torch.bfloat16 if sharded else torch.uint8)
