"""The train component's model set-up: what it trains of a multimodal model, how it counts parameters, and which
parameters decay."""

import pytest
import torch

from components.train import modelsetup
from components.train.config import learning_rate, parse_args
from tests.support.tinymodel import tiny_gemma3


def _config(*extra):
    return parse_args(["--train", "x", "--model-out", "m", "--checkpoints", "c", "--mlflow-run-id-out", "r", *extra])


def _text_step(model):
    """A text-only forward and backward, as the train loop runs on chat data."""
    ids = torch.randint(1, 300, (2, 12))
    model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=ids).loss.backward()


def _outside_language_model(name: str) -> bool:
    return ".vision_tower." in name or ".multi_modal_projector." in name


@pytest.mark.parametrize("targets", ["all-linear", "q_proj,v_proj"])
def test_lora_on_a_multimodal_model_trains_its_language_model_only(targets):
    base = tiny_gemma3()
    assert type(base).__name__ == "Gemma3ForConditionalGeneration"
    model = modelsetup.add_lora(base, _config("--lora-targets", targets, "--lora-dropout", "0"))
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not [n for n in trainable if _outside_language_model(n)]
    assert all(".language_model.layers." in n for n in trainable)
    _text_step(model)
    # What DDP requires at every step: each trainable parameter got a gradient.
    assert [n for n, p in trainable.items() if p.grad is None] == []


def test_a_full_fine_tune_of_a_multimodal_model_trains_its_language_model_only():
    model = tiny_gemma3()
    modelsetup.freeze_beside_language_model(model)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and not [n for n in trainable if _outside_language_model(n)]
    assert any(".language_model.embed_tokens." in n for n in trainable)
    _text_step(model)
    assert [n for n, p in trainable.items() if p.grad is None] == []


def test_a_text_only_model_has_nothing_beside_its_language_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2))
    assert modelsetup.beside_language_model(model) == []
    assert modelsetup.beside_language_model(tiny_gemma3()) == ["model.vision_tower", "model.multi_modal_projector"]


class Params4bit(torch.nn.Parameter):
    """bitsandbytes' 4-bit weight as it looks from outside: two values packed in each byte of its storage."""

    quant_storage = torch.uint8


def _quantise(linear: torch.nn.Linear) -> None:
    packed = torch.empty(linear.weight.numel() // 2, 1, dtype=torch.uint8, device=linear.weight.device)
    linear.weight = Params4bit(packed, requires_grad=False)


def test_a_4bit_weight_counts_as_its_unquantised_size():
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.Linear(32, 8, bias=False))
    unquantised = sum(p.numel() for p in model.parameters())
    _quantise(model[0])
    assert sum(p.numel() for p in model.parameters()) < unquantised  # the packed storage
    assert modelsetup.parameter_count(model) == unquantised


def test_a_4bit_model_of_a_billion_parameters_gets_the_large_model_learning_rate():
    model = torch.nn.Linear(40_000, 25_000, bias=False, device="meta")  # 1.0B weights, no memory
    _quantise(model)
    count = modelsetup.parameter_count(model)
    assert count == 1_000_000_000
    assert learning_rate(_config("--method", "qlora"), count) == 2e-4


def test_a_zero3_partitioned_matrix_decays():
    model = torch.nn.Linear(4, 4)
    # What DeepSpeed ZeRO-3 leaves of a partitioned parameter: empty 1-D data, the shape in ds_shape.
    model.weight.data = torch.empty(0)
    model.weight.ds_shape = torch.Size((4, 4))
    decay, no_decay = modelsetup.param_groups(model, weight_decay=0.1)
    assert decay["params"] == [model.weight] and decay["weight_decay"] == 0.1
    assert no_decay["params"] == [model.bias]
