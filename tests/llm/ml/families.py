"""Tiny random models of the common chat-model families, each with its maker's chat template (no Hub access).

Each family keeps the architecture of its maker's config (model type, attention layout, norms, rope settings,
tied or untied embeddings, biases) and its special tokens, shrunk to 2 layers and hidden size 64, with a
byte-level tokenizer built in-process, as ``tuneline.llm.ml.models`` builds ``tiny-random-llama``.
Templates: tests/fixtures/chat-templates (README there names where each is published).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TEMPLATES = Path(__file__).resolve().parents[2] / "fixtures" / "chat-templates"
TINY = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 2048}


@dataclass(frozen=True)
class Family:
    name: str
    template: str
    config_class: str  # transformers config class of the maker's config.json model_type
    bos: str | None
    eos: str
    pad: str
    specials: tuple[str, ...]
    config: dict  # architecture fields of the maker's config.json kept in the tiny model
    # Added tokens the maker's tokenizer_config.json declares with "special": false: decoding keeps them.
    plain_added: tuple[str, ...] = ()
    # generation_config.json eos_token_id, where the maker's lists more than the tokenizer's eos.
    generation_eos: tuple[str, ...] = ()


FAMILIES = {
    f.name: f
    for f in (
        # meta-llama/Llama-3.1-8B-Instruct config.json
        Family("llama3", "llama-3.3-instruct.jinja", "LlamaConfig", "<|begin_of_text|>", "<|eot_id|>",
               "<|finetune_right_pad_id|>", ("<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"),
               {"rope_theta": 500000.0, "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False,
                "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}),
        # Qwen/Qwen2.5-7B-Instruct config.json (qkv biases are part of the qwen2 architecture)
        Family("qwen2.5", "qwen2.5-instruct.jinja", "Qwen2Config", None, "<|im_end|>", "<|endoftext|>",
               ("<|im_start|>",),
               {"rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": False,
                "use_sliding_window": False}),
        # Qwen/Qwen3-8B config.json (q/k norms and an explicit head_dim are part of the qwen3 architecture);
        # its tokenizer_config.json adds <think> and </think> as ordinary ("special": false) tokens.
        Family("qwen3", "qwen3.jinja", "Qwen3Config", None, "<|im_end|>", "<|endoftext|>", ("<|im_start|>",),
               {"rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "hidden_act": "silu", "tie_word_embeddings": False,
                "head_dim": 16, "attention_bias": False},
               plain_added=("<think>", "</think>")),
        # mistralai/Mistral-7B-Instruct-v0.3 config.json
        Family("mistral", "mistral-7b-instruct-v0.3.jinja", "MistralConfig", "<s>", "</s>", "<unk>",
               ("[INST]", "[/INST]"),
               {"rope_theta": 1000000.0, "rms_norm_eps": 1e-5, "hidden_act": "silu", "tie_word_embeddings": False,
                "sliding_window": None}),
        # google/gemma-3-1b-it config.json (gemma3_text: sliding + global attention, scaled embeddings); its
        # tokenizer's eos is <eos>, while turns end with <end_of_turn>: generation_config.json stops on both.
        Family("gemma3", "gemma-3-it.jinja", "Gemma3TextConfig", "<bos>", "<eos>", "<pad>",
               ("<start_of_turn>", "<end_of_turn>"),
               {"head_dim": 16, "hidden_activation": "gelu_pytorch_tanh", "query_pre_attn_scalar": 16,
                "sliding_window": 512, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
                "tie_word_embeddings": True},
               generation_eos=("<eos>", "<end_of_turn>")),
    )
}


def tokenizer(family: Family):
    """Byte-level BPE without merges, the family's special tokens and its maker's chat template."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    core = Tokenizer(BPE(vocab={s: i for i, s in enumerate(alphabet)}, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    kwargs = {"bos_token": family.bos} if family.bos else {}
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, eos_token=family.eos, pad_token=family.pad,
        additional_special_tokens=list(family.specials), chat_template=(TEMPLATES / family.template).read_text(),
        model_max_length=2048, **kwargs,
    )
    tok.add_tokens(list(family.plain_added), special_tokens=False)
    return tok


def build(family: Family, out: Path, seed: int = 0) -> Path:
    """Write a complete model folder (random weights, deterministic from ``seed``) and return it."""
    import torch
    import transformers

    tok = tokenizer(family)
    config = getattr(transformers, family.config_class)(
        vocab_size=len(tok), pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
        bos_token_id=tok.bos_token_id, **{**TINY, **family.config},
    )
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    torch.random.set_rng_state(state)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = (tok.convert_tokens_to_ids(list(family.generation_eos))
                                            if family.generation_eos else tok.eos_token_id)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


SYSTEM = {"role": "system", "content": "Answer in JSON."}
TURNS = [{"role": "user", "content": "Printer is jammed"}, {"role": "assistant", "content": '{"team": "hw"}'},
         {"role": "user", "content": "Login fails"}, {"role": "assistant", "content": '{"team": "it"}'}]
# The record shapes every family must train on: with and without a system message, single- and multi-turn.
SHAPES = {
    "single": TURNS[:2],
    "single+system": [SYSTEM, *TURNS[:2]],
    "multi": TURNS,
    "multi+system": [SYSTEM, *TURNS],
}
