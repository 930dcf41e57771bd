"""The attention kernel is transformers' to pick per model class; what it picked is what gets recorded."""

import pytest
import torch

from tests.llm.ml.families import FAMILIES, tokenizer
from tuneline.llm.ml.attention import AUTO, EAGER, FLASH, request, resolved
from tuneline.llm.ml.device import choose
from tuneline.llm.ml.models import load_causal_lm

# Gemma 2 declares no SDPA support (its attention logits are soft-capped): asking for sdpa by name raised.
GEMMA2 = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
          "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 300, "sliding_window": 16}


@pytest.fixture(scope="module")
def gemma2(tmp_path_factory):
    from transformers import AutoModelForCausalLM, Gemma2Config

    out = tmp_path_factory.mktemp("gemma2")
    tok = tokenizer(FAMILIES["gemma3"])  # Gemma 2 and 3 share the turn format and special tokens
    config = Gemma2Config(**{**GEMMA2, "vocab_size": max(GEMMA2["vocab_size"], len(tok))},
                          pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _forward(model) -> torch.Tensor:
    ids = torch.tensor([[2, 40, 41, 42]])
    return model(input_ids=ids, attention_mask=torch.ones_like(ids)).logits


def test_the_loader_lets_transformers_fall_back_to_eager(gemma2):
    model = load_causal_lm(gemma2)  # was: ValueError "does not support ... scaled_dot_product_attention"
    assert resolved(model) == "eager"
    assert torch.isfinite(_forward(model)).all()


def test_the_train_build_loads_it_with_lora_and_records_eager(gemma2):
    from components.train import modelsetup
    from components.train.config import parse_args

    chosen = choose(None)
    config = parse_args(["--train", "x", "--base-model", str(gemma2), "--model-out", "m", "--checkpoints", "c",
                         "--mlflow-run-id-out", "r", "--method", "lora"])
    model, _ = modelsetup.build(config, chosen.mixed_precision, torch.device("cpu"),
                                attn_implementation=chosen.attention_request)
    assert any("lora_" in n for n, _ in model.named_parameters())
    assert torch.isfinite(_forward(model)).all()
    recorded = chosen.with_attention(resolved(model))
    assert recorded.as_params()["attn_implementation"] == "eager"
    assert recorded.as_params()["attention_request"] == AUTO
    assert "attention eager (requested auto)" in recorded.describe()
    # The meta-device build (FSDP) resolves the same way.
    assert resolved(modelsetup.empty_model(gemma2, torch.float32, chosen.attention_request)) == "eager"


def test_flash_attention_is_only_requested_from_classes_that_take_it():
    from transformers import Gemma2Config, GptOssConfig, LlamaConfig

    assert request(LlamaConfig(), FLASH) == FLASH
    assert request(Gemma2Config(), FLASH) == FLASH  # FlashAttention-2 supports the soft-cap
    # gpt-oss lists only Hub kernels as its flash implementations: transformers would swap the request for a
    # download, so transformers' default (eager: gpt-oss has no SDPA either) is kept.
    assert request(GptOssConfig(), FLASH) is None
    assert request(LlamaConfig(), AUTO) is None and request(LlamaConfig(), None) is None


def test_soft_capped_attention_is_asked_for_eager_by_name_unless_flash_runs_it():
    # transformers 5.17 (a GPU machine's stack, bench/gpu_stack.txt) would pick SDPA for Gemma 2 by itself and
    # drop the soft-cap; only an explicit request keeps the pretrained model's attention there.
    from transformers import Gemma2Config, Gemma3Config, Gemma3TextConfig

    assert request(Gemma2Config(), AUTO) == EAGER
    assert request(Gemma2Config(), FLASH) == FLASH
    assert request(Gemma2Config(attn_logit_softcapping=None), AUTO) is None
    assert request(Gemma3TextConfig(), AUTO) is None  # Gemma 3 normalises queries and keys instead
    assert request(Gemma3Config(text_config={"attn_logit_softcapping": 30.0}), AUTO) == EAGER
