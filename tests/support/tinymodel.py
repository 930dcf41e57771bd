"""A tiny random Llama with an in-process byte-level BPE tokenizer, for tests and the serving benchmark.

Everything is built locally (no hub download); the weights are random but seeded, so generation is
deterministic. Needs torch, transformers and tokenizers (the project's `ml` extra).

Run as: python -m tests.support.tinymodel OUT_DIR [--hidden-size 32] [--layers 2] [--adapter ADAPTER_DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path

_CORPUS = (
    "Classify the support ticket and answer with JSON. The printer is offline again. "
    "My invoice shows the wrong amount. I cannot log in after the password reset. "
    "Please cancel my subscription. The app crashes when I upload a photo. "
    '{"category": "billing", "priority": "high"} {"category": "account"} '
)


def build_tokenizer(out_dir: Path, vocab_size: int = 320):
    """Train a byte-level BPE on a fixed corpus and save it as a transformers fast tokenizer."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        [_CORPUS] * 4,
        vocab_size=vocab_size,
        min_frequency=1,
        special_tokens=["<s>", "</s>", "<pad>"],
        show_progress=False,
    )
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def build_tiny_llama(out_dir: Path, *, hidden_size: int = 32, layers: int = 2, seed: int = 0) -> Path:
    """Write a random LlamaForCausalLM (config, safetensors weights, tokenizer) to `out_dir`."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(out_dir)
    return out_dir


def tiny_gemma3(seed: int = 0):
    """What AutoModelForCausalLM builds for a Gemma 3 4B-27B checkpoint (Gemma3ForConditionalGeneration: a SigLIP
    vision tower, its projector into the text embeddings and the language model), at toy size, in memory."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma3Config

    config = Gemma3Config(
        text_config={"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 300, "sliding_window": 16},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 28, "patch_size": 14},
        mm_tokens_per_image=4)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config)


def build_tiny_lora_adapter(base_dir: Path, out_dir: Path, *, seed: int = 1) -> Path:
    """Write a PEFT LoRA adapter over `base_dir`; its B matrices are random, so merging changes weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir)
    peft_model = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    )
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.5)
    peft_model.save_pretrained(out_dir)
    return Path(out_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.support.tinymodel", description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="folder to write the model to")
    parser.add_argument("--hidden-size", type=int, default=32, help="hidden size (default 32)")
    parser.add_argument("--layers", type=int, default=2, help="decoder layers (default 2)")
    parser.add_argument("--adapter", type=Path, default=None, help="also write a LoRA adapter over it here")
    args = parser.parse_args(argv)
    build_tiny_llama(args.out_dir, hidden_size=args.hidden_size, layers=args.layers)
    if args.adapter:
        build_tiny_lora_adapter(args.out_dir, args.adapter)
    print(args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
