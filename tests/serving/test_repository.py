from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tuneline.serving.repository import (
    HF_SUBDIR,
    SERVING_FILE,
    RepositoryError,
    RepositorySpec,
    adapter_name,
    adapter_problem,
    add_adapter,
    lora_room,
    machine_spec,
    render_config,
    served_adapters,
    write_repository,
)


def test_config_with_dynamic_batching_and_cpu_instances() -> None:
    text = render_config(RepositorySpec(model_name="m1", preferred_batch_sizes=(4, 8), max_queue_delay_us=700))
    assert 'name: "m1"' in text and 'backend: "python"' in text
    assert "max_batch_size: 32" in text
    assert "preferred_batch_size: [ 4, 8 ]" in text
    assert "max_queue_delay_microseconds: 700" in text
    assert "kind: KIND_CPU" in text
    assert 'name: "max_new_tokens" data_type: TYPE_INT32 dims: [ 1 ] optional: true' in text


def test_config_declares_the_openai_inputs_and_usage_outputs() -> None:
    text = render_config(RepositorySpec())
    for name in ("prompt_format", "temperature", "top_p", "stop"):
        assert f'name: "{name}"' in text and "optional: true" in text
    for name in ("prompt_tokens", "completion_tokens", "finish_reason"):
        assert f'name: "{name}"' in text
    # Requests carry their deadline to Triton's queue as the `timeout` parameter.
    assert "allow_timeout_override: true" in text
    # Streaming: a decoupled twin with a `stream` switch, dynamically batched too, loading the same weights.
    assert 'name: "stream" data_type: TYPE_BOOL' in text and "decoupled" not in text
    twin = render_config(RepositorySpec(), decoupled=True)
    assert 'name: "tuneline-llm-stream"' in twin and "model_transaction_policy { decoupled: true }" in twin
    assert "dynamic_batching {" in twin and '"weights_dir" value: { string_value: "../../tuneline-llm/1" }' in twin


@pytest.mark.parametrize(("cores", "instances", "threads"), [(1, 1, 1), (2, 1, 2), (8, 1, 8), (16, 2, 8), (20, 3, 6)])
def test_machine_spec_covers_the_cores_and_says_why(cores: int, instances: int, threads: int) -> None:
    spec = machine_spec(cores, model_name="m")
    assert (spec.instance_count, spec.torch_threads) == (instances, threads)
    text = render_config(spec)
    assert f"# {instances} instance(s) x {threads} torch thread(s) = the {cores} core(s)" in text
    assert text.index("# ") < text.index("instance_group")
    assert f'key: "torch_threads" value: {{ string_value: "{threads}" }}' in text
    assert "max_queue_delay_microseconds: 50000" in text and "serve-tuning.json" in text


def test_config_for_the_cluster_uses_gpu_and_can_drop_batching() -> None:
    text = render_config(RepositorySpec(instance_kind="gpu", instance_count=2, dynamic_batching=False))
    assert "{ count: 2 kind: KIND_GPU }" in text
    assert "dynamic_batching" not in text
    # vLLM would reserve 0.92 of the card by default; the coupled model's weights share it.
    twin = render_config(RepositorySpec(instance_kind="gpu", instance_count=2), decoupled=True)
    assert "{ count: 1 kind: KIND_GPU }" in twin
    assert 'key: "gpu_memory_utilization" value: { string_value: "0.6" }' in twin
    assert "gpu_memory_utilization" not in render_config(RepositorySpec(), decoupled=True)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (RepositorySpec(model_name="bad name"), "model_name"),
        (RepositorySpec(max_batch_size=4, preferred_batch_sizes=(8,)), "preferred_batch_sizes"),
        (RepositorySpec(max_new_tokens_default=0), "max_new_tokens_default"),
        (RepositorySpec(engine="tgi"), "engine"),
        (RepositorySpec(response_schema='{"type": 3}'), "response_schema is not a valid JSON schema"),
        (RepositorySpec(response_schema='{"type": '), "response_schema: line 1: invalid JSON"),
        (RepositorySpec(response_schema="[]"), "response_schema must be a JSON schema object"),
        (RepositorySpec(gpu_memory_utilization=0.99), "gpu_memory_utilization"),
    ],
)
def test_bad_spec_names_the_field(spec: RepositorySpec, field: str) -> None:
    with pytest.raises(RepositoryError, match=field):
        render_config(spec)


@pytest.mark.slow
def test_full_model_is_shipped_beside_model_py(tiny_model: Path, tmp_path: Path) -> None:
    root = write_repository(tiny_model, tmp_path / "repo", RepositorySpec(model_name="llm"))
    assert root == tmp_path / "repo" / "llm"
    assert (root / "config.pbtxt").read_text().startswith('name: "llm"')
    assert "class TritonPythonModel" in (root / "1" / "model.py").read_text()
    shipped = root / "1" / HF_SUBDIR
    assert json.loads((shipped / "config.json").read_text())["model_type"] == "llama"
    assert (shipped / "tokenizer.json").is_file() and (shipped / "model.safetensors").is_file()
    # model.py renders prompts with training's template variables (Llama 3.x's date, Qwen3 without thinking).
    serving = json.loads((root / "1" / "serving.json").read_text())
    assert serving["chat_template_kwargs"] == {"date_string": "26 Jul 2024", "enable_thinking": False}
    # Rewriting replaces the folder instead of merging into it.
    (shipped / "stale.txt").write_text("x")
    write_repository(tiny_model, tmp_path / "repo", RepositorySpec(model_name="llm"))
    assert not (shipped / "stale.txt").exists()


@pytest.mark.slow
def test_lora_adapter_is_merged_into_its_base_when_asked(tiny_model: Path, tiny_adapter: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    root = write_repository(tiny_adapter, tmp_path / "repo", RepositorySpec(adapters="merged"),
                            base_model_dir=tiny_model)
    assert json.loads((root / "1" / SERVING_FILE).read_text())["merged"] == "adapters=merged on cpu"
    merged_dir = root / "1" / HF_SUBDIR
    assert not (merged_dir / "adapter_config.json").exists()
    merged = load_file(merged_dir / "model.safetensors")
    base = load_file(tiny_model / "model.safetensors")
    key = "model.layers.0.self_attn.q_proj.weight"
    assert merged[key].shape == base[key].shape
    assert (merged[key] - base[key]).abs().max().item() > 1e-3  # the LoRA delta is in the weights
    assert (merged_dir / "tokenizer.json").is_file()


def test_invalid_config_json_reports_file_and_line(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{\n  "model_type": "llama",\n  oops\n}\n')
    with pytest.raises(RepositoryError, match=r"config.json:3: invalid JSON"):
        write_repository(broken, tmp_path / "repo")


def test_model_without_tokenizer_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(RepositoryError, match="no tokenizer files"):
        write_repository(tmp_path / "m", tmp_path / "repo")
    assert not (tmp_path / "repo" / "tuneline-llm").exists()


def test_folder_without_model_files_is_rejected(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(RepositoryError, match="neither config.json"):
        write_repository(tmp_path / "empty", tmp_path / "repo")
    with pytest.raises(RepositoryError, match="does not exist"):
        write_repository(tmp_path / "missing", tmp_path / "repo")


def test_adapter_with_missing_base_is_rejected(tmp_path: Path) -> None:
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tmp_path / "nowhere")}))
    with pytest.raises(RepositoryError, match="no config.json"):
        write_repository(adapter, tmp_path / "repo")
    (adapter / "adapter_config.json").write_text("{}")
    with pytest.raises(RepositoryError, match="base_model_name_or_path is empty"):
        write_repository(adapter, tmp_path / "repo")


@pytest.mark.parametrize("engine", ["vllm", "transformers"])
def test_streaming_twin_ships_the_chosen_engine(engine: str, tiny_model: Path, tmp_path: Path) -> None:
    write_repository(tiny_model, tmp_path / "repo", RepositorySpec(model_name="llm", engine=engine))
    twin = tmp_path / "repo" / "llm-stream"
    model_py = (twin / "1" / "model.py").read_text()
    assert ("AsyncLLM" in model_py) == (engine == "vllm")
    # The vLLM model carries plain generate beside it, the fallback it names when vLLM cannot be imported.
    assert (twin / "1" / "transformers_model.py").is_file() == (engine == "vllm")
    assert f'key: "engine" value: {{ string_value: "{engine}" }}' in (twin / "config.pbtxt").read_text()
    assert "engine" not in (tmp_path / "repo" / "llm" / "config.pbtxt").read_text()


def test_lora_adapter_is_served_beside_an_unchanged_base(tiny_model: Path, tiny_adapter: Path, tmp_path: Path) -> None:
    root = write_repository(tiny_adapter, tmp_path / "repo", RepositorySpec(adapters="shared"),
                            base_model_dir=tiny_model, adapter="m-1")
    version = root / "1"
    assert (version / HF_SUBDIR / "model.safetensors").read_bytes() == (tiny_model / "model.safetensors").read_bytes()
    assert (version / "adapters" / "m-1" / "adapter_config.json").is_file()
    assert json.loads((version / SERVING_FILE).read_text())["adapter"] == "m-1"
    assert served_adapters(root) == ["m-1"]
    assert 'name: "adapter" data_type: TYPE_STRING' in (root / "config.pbtxt").read_text()


def _adapter_copy(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "adapter_config.json").read_text())
    (dst / "adapter_config.json").write_text(json.dumps({**cfg, **changes}))
    return dst


def test_a_later_adapter_joins_only_the_same_base_and_settings(tiny_model: Path, tiny_adapter: Path,
                                                                heavier_tiny_model: Path, tmp_path: Path) -> None:
    spec = RepositorySpec(adapters="shared")
    root = write_repository(tiny_adapter, tmp_path / "repo", spec, base_model_dir=tiny_model, adapter="m-1")
    second = _adapter_copy(tiny_adapter, tmp_path / "second")
    assert add_adapter(root, second, "m-2", spec, base_model_dir=tiny_model) is None
    assert served_adapters(root) == ["m-1", "m-2"]
    assert "is not the base being served" in add_adapter(root, second, "m-3", spec, base_model_dir=heavier_tiny_model)
    # Same config, other weights (a base and its instruct variant share a config.json): refused too.
    from tests.support.tinymodel import build_tiny_llama

    twin = build_tiny_llama(tmp_path / "twin", seed=7)
    assert (twin / "config.json").read_text() == (tiny_model / "config.json").read_text()
    assert "(weights differ)" in add_adapter(root, second, "m-3", spec, base_model_dir=twin)
    templated = _adapter_copy(tiny_adapter, tmp_path / "templated")
    (templated / "chat_template.jinja").write_text("{{ messages }}")
    assert "chat template differs" in add_adapter(root, templated, "m-3", spec, base_model_dir=tiny_model)
    schema = RepositorySpec(adapters="shared", response_schema='{"type": "object"}')
    assert "response schema differ" in add_adapter(root, second, "m-3", schema, base_model_dir=tiny_model)
    wide = _adapter_copy(tiny_adapter, tmp_path / "wide", r=128)
    # The engine was started with room for the first adapter's rank (4: vLLM's 8, on CPU).
    assert json.loads((root / "1" / SERVING_FILE).read_text())["max_lora_rank"] == 8
    assert 'key: "max_lora_rank" value: { string_value: "8" }' in (root / "config.pbtxt").read_text()
    assert add_adapter(root, wide, "m-3", spec, base_model_dir=tiny_model) == (
        "its rank 128 is over the engine's max_lora_rank 8")
    saved = _adapter_copy(tiny_adapter, tmp_path / "saved", modules_to_save=["lm_head"])
    assert "trains whole modules (lm_head)" in add_adapter(root, saved, "m-3", spec, base_model_dir=tiny_model)
    assert served_adapters(root) == ["m-1", "m-2"]  # nothing half-added
    full = write_repository(tiny_model, tmp_path / "full", spec)
    assert add_adapter(full, second, "m-2", spec, base_model_dir=tiny_model) == (
        "the running model is not a base serving adapters")


def test_an_adapter_the_engine_cannot_load_is_merged_and_says_why(tiny_model: Path, tiny_adapter: Path,
                                                                  tmp_path: Path) -> None:
    dora = _adapter_copy(tiny_adapter, tmp_path / "dora", use_dora=True)
    root = write_repository(dora, tmp_path / "repo", RepositorySpec(adapters="shared"), base_model_dir=tiny_model)
    assert json.loads((root / "1" / SERVING_FILE).read_text())["merged"] == (
        "it is a DoRA adapter, which vLLM's LoRA cannot load")
    assert served_adapters(root) == []


@pytest.mark.parametrize(("label", "name"), [("models:/tuneline-tickets/3", "tuneline-tickets-3"),
                                             ("models:/t@champion", "t-champion"), ("///", "default")])
def test_adapter_names_come_from_labels(label: str, name: str) -> None:
    assert adapter_name(label) == name


def test_adapters_are_shared_on_a_gpu_and_merged_on_cpu_unless_asked(tiny_model: Path, tiny_adapter: Path,
                                                                     tmp_path: Path) -> None:
    assert RepositorySpec(instance_kind="gpu").shares_adapters and not RepositorySpec().shares_adapters
    root = write_repository(tiny_adapter, tmp_path / "repo", RepositorySpec(), base_model_dir=tiny_model)
    assert json.loads((root / "1" / SERVING_FILE).read_text())["merged"] == "adapters=auto on cpu"
    second = tmp_path / "second"
    shutil.copytree(tiny_adapter, second)
    assert add_adapter(root, second, "m-2", RepositorySpec(), base_model_dir=tiny_model).startswith(
        "adapters=auto on cpu: each version is merged")
    with pytest.raises(RepositoryError, match="adapters must be one of auto, shared, merged"):
        RepositorySpec(adapters="both").validate()


def test_the_engines_lora_room_is_the_adapters_rank_on_cpu_and_headroom_on_a_gpu() -> None:
    assert lora_room(RepositorySpec(), 16) == 16 and lora_room(RepositorySpec(), 24) == 32
    assert lora_room(RepositorySpec(instance_kind="gpu"), 16) == 64 and lora_room(RepositorySpec(instance_kind="gpu"),
                                                                                  100) == 128
    assert lora_room(RepositorySpec(max_lora_rank=256), 16) == 256


@pytest.mark.parametrize(("changes", "reason"), [
    ({"rank_pattern": {"q_proj": 8}}, "it sets rank_pattern"),
    ({"alpha_pattern": {"q_proj": 16}}, "it sets alpha_pattern"),
    ({"target_modules": ["q_proj", "lm_head"]}, "it targets lm_head"),
    ({"target_modules": ".*proj"}, "target_modules is a pattern"),
])
def test_adapters_vllm_would_misread_or_fail_on_are_merged(tiny_adapter: Path, tmp_path: Path, changes: dict,
                                                           reason: str) -> None:
    adapter = _adapter_copy(tiny_adapter, tmp_path / "a", **changes)
    assert reason in adapter_problem(adapter, RepositorySpec(adapters="shared"))
