"""Scoring script of the Azure ML managed online deployment (copied to ``code/score.py``).

Requests, in either shape:
- tuneline's: {"prompts": ["..."], "max_new_tokens": 64} (or {"prompt": "..."}) -> {"outputs": ["..."]};
- OpenAI chat completions, the body `POST /v1/chat/completions` takes on the local endpoint: {"messages":
  [{"role", "content"}], "max_tokens"?, "temperature"?, "top_p"?, "stop"?} -> {"object": "chat.completion",
  "choices": [{"message": {"role": "assistant", "content"}, "finish_reason"}], "usage": {...}}.
Azure ML's scoring route is the endpoint's `/score` (its bearer key or Azure AD token), not `/v1/...`, so an
OpenAI client cannot be pointed at it as it is; the body and the answer are the same as locally. No streaming
(`stream: true` is refused), one choice (`n` > 1 is refused).
Both shapes apply the chat template and, when the request has no system message, the training system prompt
(serving.json beside the weights). The model folder is a merged Hugging Face causal LM with its tokenizer and
chat template, mounted under AZUREML_MODEL_DIR. Only torch and transformers are needed here: the adapter was
merged at deploy time.

Run as (locally, for a check): AZUREML_MODEL_DIR=out/azureml python -c "import score; score.init();
print(score.run('{\\"prompt\\": \\"hi\\"}'))"
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

MAX_NEW_TOKENS_LIMIT = 512
_state: dict = {}


def _model_dir() -> Path:
    root = Path(os.environ.get("AZUREML_MODEL_DIR", "."))
    return root / "model" if (root / "model" / "config.json").is_file() else root


# bf16 tensor cores start with Ampere (sm_80); below it (the default T4 instance is sm_75) bf16 runs emulated,
# many times slower than fp16. The same rule as tuneline.llm.ml.device.choose, repeated here because this file is
# copied alone into the deployment's code folder, where tuneline is not installed.
BF16_MIN_CAPABILITY = (8, 0)


def serving_dtype(capability: tuple[int, int] | None) -> str:
    """The torch dtype name to load the weights in on a GPU of `capability` (None: CPU)."""
    if capability is None:
        return "float32"
    return "bfloat16" if tuple(capability) >= BF16_MIN_CAPABILITY else "float16"


def init() -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = _model_dir()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, serving_dtype(torch.cuda.get_device_capability() if device == "cuda" else None))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device).eval()
    serving_path = folder / "serving.json"
    serving = json.loads(serving_path.read_text()) if serving_path.is_file() else {}
    # chat_template_kwargs: the template variables training rendered with (a fixed date for Llama 3.x).
    _state.update(model=model, tokenizer=tokenizer, device=device, system_prompt=serving.get("system_prompt"),
                  template_kwargs=serving.get("chat_template_kwargs") or {})


def render(conversation: list[dict]) -> str:
    """The prompt text for a conversation: the training system prompt when it has none, the chat template
    with the generation prompt, rendered as in training."""
    system = _state.get("system_prompt")
    messages = ([{"role": "system", "content": system}] if system and conversation[0]["role"] != "system"
                else []) + conversation
    return _state["tokenizer"].apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                   **_state.get("template_kwargs", {}))


def _generate(conversations: list[list[dict]], max_new_tokens: int, temperature: float = 0.0, top_p: float = 1.0):
    """(texts, prompt token counts, completion token counts, finish reasons) for each conversation."""
    import torch

    tokenizer, model = _state["tokenizer"], _state["model"]
    texts = [render(c) for c in conversations]
    batch = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(_state["device"])
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {
        "do_sample": False
    }
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling)
    new = out[:, batch["input_ids"].shape[1] :].tolist()
    eos = tokenizer.eos_token_id
    cut = [row[: row.index(eos)] if eos in row else row for row in new]
    finish = ["stop" if eos in row else "length" for row in new]
    prompt_tokens = batch["attention_mask"].sum(dim=1).tolist()
    decoded = [tokenizer.decode(row, skip_special_tokens=True).strip() for row in cut]
    return decoded, prompt_tokens, [len(row) for row in cut], finish


def _chat(request: dict) -> dict:
    """The OpenAI chat-completions body, answered in its shape."""
    messages = request["messages"]
    if not isinstance(messages, list) or not messages or not all(
        isinstance(m, dict) and m.get("role") in ("system", "developer", "user", "assistant")
        and isinstance(m.get("content"), str) for m in messages
    ):
        return {"error": "messages must be a non-empty list of {role, content: str}"}
    if request.get("stream") or request.get("n", 1) != 1:
        return {"error": "stream and n > 1 are not supported by this deployment"}
    max_tokens = request.get("max_completion_tokens") or request.get("max_tokens") or 64
    if not isinstance(max_tokens, int) or not 1 <= max_tokens <= MAX_NEW_TOKENS_LIMIT:
        return {"error": f"max_tokens must be an integer in [1, {MAX_NEW_TOKENS_LIMIT}]"}
    conversation = [{"role": "system" if m["role"] == "developer" else m["role"], "content": m["content"]}
                    for m in messages]
    texts, prompt, completion, finish = _generate(
        [conversation], max_tokens, float(request.get("temperature") or 0.0), float(request.get("top_p") or 1.0)
    )
    text, reason = texts[0], finish[0]
    stops = request.get("stop") or []
    for stop in [stops] if isinstance(stops, str) else stops:
        if stop and stop in text:
            text, reason = text[: text.index(stop)], "stop"
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": os.environ.get("AZUREML_MODEL_NAME", "tuneline"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}],
        "usage": {"prompt_tokens": prompt[0], "completion_tokens": completion[0],
                  "total_tokens": prompt[0] + completion[0]},
    }


def run(raw_data: str) -> dict:
    try:
        request = json.loads(raw_data)
    except json.JSONDecodeError as exc:
        return {"error": f"request is not JSON: {exc.msg} at column {exc.colno}"}
    if not isinstance(request, dict):
        return {"error": "the request must be a JSON object"}
    if "messages" in request:
        return _chat(request)
    prompts = request.get("prompts", [request["prompt"]] if "prompt" in request else None)
    if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
        return {"error": 'expected {"prompts": ["..."]} or {"prompt": "..."}'}
    max_new_tokens = request.get("max_new_tokens", 64)
    if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
        return {"error": f"max_new_tokens must be an integer in [1, {MAX_NEW_TOKENS_LIMIT}]"}
    texts, _, _, _ = _generate([[{"role": "user", "content": p}] for p in prompts], max_new_tokens)
    return {"outputs": texts}
