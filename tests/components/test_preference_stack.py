"""Stacking the preference LoRA on the SFT adapter (components/preference/stack.py) on a tiny random Llama: the one
adapter over the base gives the weights of the SFT model with the preference LoRA merged, the same tensors as
PEFT's own "cat" combination, and an SFT adapter it cannot stack is refused with the reason."""

import json
import shutil

import pytest
import torch

from components.preference.stack import stack_adapters, unstackable
from tests.support.tinymodel import build_tiny_llama, build_tiny_lora_adapter


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("stack")
    base = build_tiny_llama(root / "base")
    # The SFT adapter: q_proj and v_proj, r 4, alpha 8 (scaling 2), random B.
    sft = build_tiny_lora_adapter(base, root / "sft")
    return root, base, sft


def _top(sft_model, seed: int = 3):
    """A LoRA on the SFT model (merged) with a rank, scaling and targets of its own, random A and B: the adapter
    the preference step trains. Returns the PeftModel, its config and its state dict as PEFT saves it."""
    from peft import LoraConfig, get_peft_model
    from peft.utils import get_peft_model_state_dict

    config = LoraConfig(r=2, lora_alpha=3, target_modules=["q_proj", "k_proj", "down_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(sft_model, config)
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, 0.5)
    return model, model.peft_config["default"], get_peft_model_state_dict(model, save_embedding_layers=False)


def _weights(model) -> dict:
    return {k: v.detach().float() for k, v in model.state_dict().items()}


def test_the_stacked_adapter_merged_into_the_base_is_the_sft_model_with_the_preference_lora_merged(tiny):
    from peft import PeftModel

    from tuneline.llm.ml.models import load_causal_lm, merge_lora

    root, base, sft = tiny
    top, top_config, top_state = _top(merge_lora(base, sft, dtype=torch.float32))
    expected = _weights(top.merge_and_unload())
    stacked = stack_adapters(sft, top_config, top_state, root / "stacked")
    assert (stacked.rank, stacked.modules) == (6, 2 * (3 + 1))  # q_proj in both; v, k, down in one
    cfg = json.loads((root / "stacked" / "adapter_config.json").read_text())
    assert (cfg["r"], cfg["lora_alpha"], cfg["use_rslora"]) == (6, 6, False)
    assert sorted(cfg["target_modules"]) == ["down_proj", "k_proj", "q_proj", "v_proj"]
    assert cfg["base_model_name_or_path"] == json.loads((sft / "adapter_config.json").read_text())[
        "base_model_name_or_path"]
    got = _weights(PeftModel.from_pretrained(load_causal_lm(base, dtype=torch.float32), root / "stacked")
                   .merge_and_unload())
    assert got.keys() == expected.keys()
    worst = max((got[k] - expected[k]).abs().max().item() for k in got)
    changed = max((expected[k] - v).abs().max().item() for k, v in _weights(load_causal_lm(base)).items())
    assert worst < 1e-5 and changed > 0.1, (worst, changed)


def test_the_stacked_tensors_are_peft_add_weighted_adapter_cat(tiny):
    from peft import PeftModel
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    from tuneline.llm.ml.models import load_causal_lm, merge_lora

    root, base, sft = tiny
    _, top_config, top_state = _top(merge_lora(base, sft, dtype=torch.float32), seed=4)
    stack_adapters(sft, top_config, top_state, root / "stacked-cat")
    # PEFT's way: both adapters on one copy of the base, combined by concatenation with weights 1.
    model = PeftModel.from_pretrained(load_causal_lm(base, dtype=torch.float32), sft, adapter_name="sft")
    model.add_adapter("top", top_config)
    set_peft_model_state_dict(model, top_state, adapter_name="top")
    model.add_weighted_adapter(["sft", "top"], [1.0, 1.0], "stacked", combination_type="cat")
    model.save_pretrained(root / "peft-cat", selected_adapters=["stacked"])
    peft_cat, ours = load_file(root / "peft-cat" / "stacked" / "adapter_model.safetensors"), load_file(
        root / "stacked-cat" / "adapter_model.safetensors")
    assert peft_cat.keys() == ours.keys() and ours
    for name in ours:
        torch.testing.assert_close(ours[name], peft_cat[name], rtol=0, atol=1e-6)
    assert json.loads((root / "peft-cat" / "stacked" / "adapter_config.json").read_text())["r"] == 6


@pytest.mark.parametrize("field, value, says", [
    ("modules_to_save", ["lm_head"], "modules_to_save"),
    ("use_rslora", True, "use_rslora"),
    ("use_dora", True, "use_dora"),
    ("rank_pattern", {"q_proj": 8}, "rank_pattern"),
    ("bias", "all", "trains biases"),
    ("init_lora_weights", "pissa", "changes the base weights"),
    ("target_modules", ".*q_proj", "not a list"),
])
def test_an_adapter_that_is_not_a_plain_lora_is_not_stacked(tiny, tmp_path, field, value, says):
    _, _, sft = tiny
    assert unstackable(sft) is None
    odd = tmp_path / "odd"
    shutil.copytree(sft, odd)
    cfg = json.loads((odd / "adapter_config.json").read_text())
    (odd / "adapter_config.json").write_text(json.dumps({**cfg, field: value}))
    reason = unstackable(odd)
    assert reason is not None and says in reason and str(odd / "adapter_config.json") in reason


def test_a_full_sft_model_is_not_stacked(tiny):
    _, base, _ = tiny
    assert unstackable(base) == "the SFT model is a full model, not an adapter of a base model"


def test_an_adapter_with_more_than_lora_matrices_is_refused(tiny, tmp_path):
    root, base, sft = tiny
    from peft import LoraConfig

    config = LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj"])
    state = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": torch.zeros(2, 32),
             "base_model.model.lm_head.weight": torch.zeros(4, 32)}
    with pytest.raises(ValueError, match="more than LoRA A and B"):
        stack_adapters(sft, config, state, tmp_path / "out")
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    with pytest.raises(ValueError, match=r"the trained adapter: .*q_proj: lora_A \(3, 32\), lora_B \(32, 3\): not "
                                         r"of rank r 2"):
        stack_adapters(sft, config, {f"{q}.lora_A.weight": torch.zeros(3, 32),
                                     f"{q}.lora_B.weight": torch.zeros(32, 3)}, tmp_path / "out")
    with pytest.raises(ValueError, match="use_dora"):
        stack_adapters(sft, LoraConfig(r=2, lora_alpha=2, target_modules=["q_proj"], use_dora=True), {}, tmp_path)


def test_a_lora_that_keeps_a_multimodal_models_vision_tower_out_is_stacked(tmp_path):
    """train's LoRA on an image-text model excludes the vision tower (modelsetup.beside_language_model): still a
    plain delta on the language model's layers, so the preference step stacks it instead of merging."""
    from peft.utils import get_peft_model_state_dict

    from components.train import modelsetup
    from tests.components.test_train_modelsetup import _config
    from tests.support.tinymodel import tiny_gemma3

    config = _config("--lora-targets", "q_proj,v_proj")
    sft = modelsetup.add_lora(tiny_gemma3(), config)
    sft.save_pretrained(tmp_path / "sft")
    assert json.loads((tmp_path / "sft" / "adapter_config.json").read_text())["exclude_modules"]
    assert unstackable(tmp_path / "sft") is None
    top = modelsetup.add_lora(tiny_gemma3(seed=1), config)
    stacked = stack_adapters(tmp_path / "sft", top.peft_config["default"], get_peft_model_state_dict(top),
                             tmp_path / "stacked")
    assert stacked.modules == 2 * 2  # q_proj and v_proj of two language-model layers, nothing in the tower
    other = modelsetup.add_lora(tiny_gemma3(seed=1), config)
    other.peft_config["default"].exclude_modules = None
    with pytest.raises(ValueError, match="excludes None"):
        stack_adapters(tmp_path / "sft", other.peft_config["default"], get_peft_model_state_dict(top),
                       tmp_path / "other")


def test_a_full_preference_fine_tune_of_a_multimodal_model_trains_its_language_model_only(tmp_path):
    """As train's full fine-tune (test_train_modelsetup.py): the vision tower would get no gradient on text, which
    DDP refuses at the second step."""
    from types import SimpleNamespace

    from components.preference import model as preference_model
    from tests.llm.ml.families import FAMILIES, tokenizer
    from tests.support.tinymodel import tiny_gemma3

    tiny_gemma3().save_pretrained(tmp_path / "gemma3")
    tokenizer(FAMILIES["gemma3"]).save_pretrained(tmp_path / "gemma3")
    config = SimpleNamespace(method="full", gradient_checkpointing=False, sft_model=None,
                             base_model=str(tmp_path / "gemma3"))
    policy, reference, _ = preference_model.build(config, "no", torch.device("cpu"))
    trainable = [name for name, p in policy.named_parameters() if p.requires_grad]
    assert trainable and all("language_model" in name or "lm_head" in name for name in trainable), [
        n for n in trainable if "language_model" not in n][:3]
    assert not any(p.requires_grad for p in reference.parameters())
