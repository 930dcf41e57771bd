"""Scoring script of the Azure ML managed online deployment (copied to ``code/score.py``).

Request:  {"prompts": ["..."], "max_new_tokens": 64}      (or {"prompt": "..."})
Response: {"outputs": ["..."]}
The model folder is a merged Hugging Face causal LM with its tokenizer and chat template, mounted under
AZUREML_MODEL_DIR. Only torch and transformers are needed here: the adapter was merged at deploy time.

Run as (locally, for a check): AZUREML_MODEL_DIR=out/azureml python -c "import score; score.init();
print(score.run('{\\"prompt\\": \\"hi\\"}'))"
"""

from __future__ import annotations

import json
import os
from pathlib import Path

MAX_NEW_TOKENS_LIMIT = 512
_state: dict = {}


def _model_dir() -> Path:
    root = Path(os.environ.get("AZUREML_MODEL_DIR", "."))
    return root / "model" if (root / "model" / "config.json").is_file() else root


def init() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _model_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    _state.update(model=model, tokenizer=tokenizer, device=device)


def run(raw_data: str) -> dict:
    import torch

    try:
        request = json.loads(raw_data)
    except json.JSONDecodeError as exc:
        return {"error": f"request is not JSON: {exc.msg} at column {exc.colno}"}
    prompts = request.get("prompts", [request["prompt"]] if "prompt" in request else None)
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        return {"error": 'expected {"prompts": ["..."]} or {"prompt": "..."}'}
    max_new_tokens = request.get("max_new_tokens", 64)
    if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        return {"error": f"max_new_tokens must be an integer in [1, {MAX_NEW_TOKENS_LIMIT}]"}
    tokenizer, model = _state["tokenizer"], _state["model"]
    texts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True
        )
        for p in prompts
    ]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(_state["device"])
    with torch.no_grad():
        out = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    new = out[:, batch["input_ids"].shape[1] :]
    return {"outputs": [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]}
