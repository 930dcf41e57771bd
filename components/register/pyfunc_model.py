"""The MLflow pyfunc flavour of a tuneline model (MLflow "models from code": this file is stored with each
version and executed when the version is loaded).

Load as: mlflow.pyfunc.load_model("models:/<name>@candidate").predict(["Where is my invoice?"],
         params={"max_new_tokens": 32})

Artifacts of a version:
- ``model``: the train step's folder: a PEFT LoRA adapter (or full weights), tokenizer, training_summary.json;
- ``base`` (only when registered with ``--base-weights bundle``): the adapter's base model.
Without a bundled base the adapter's base is resolved by name through ``tuneline.llm.ml.models`` (catalog cache
under TUNELINE_HOME, a local folder, or the Hub) and checked against the weights fingerprint recorded in the
model config at registration. The adapter is merged once at load, so generation runs at base-model speed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import mlflow
from mlflow.pyfunc import PythonModel


def _prompts(model_input) -> list[str]:
    """Accept a DataFrame with a ``prompt`` column, a list of strings, a dict or a single string."""
    if hasattr(model_input, "columns"):
        column = "prompt" if "prompt" in model_input.columns else model_input.columns[0]
        return [str(v) for v in model_input[column].tolist()]
    if isinstance(model_input, str):
        return [model_input]
    if isinstance(model_input, dict):
        value = model_input.get("prompt", next(iter(model_input.values()), []))
        return [value] if isinstance(value, str) else [str(v) for v in value]
    return [str(v) for v in model_input]


class TunelineChatModel(PythonModel):
    """Chat-templated greedy generation with the tuned model."""

    def load_context(self, context) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        config = dict(context.model_config or {})
        model_dir = Path(context.artifacts["model"])
        summary = json.loads((model_dir / "training_summary.json").read_text())
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
        if (model_dir / "adapter_config.json").is_file():
            from tuneline.llm.ml.models import merge_lora

            self.model = merge_lora(self._base_dir(context, config, summary), model_dir, dtype=dtype)
        else:
            self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype)
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model.to(self.device).eval()
        self.default_system = config.get("system_prompt", "")
        # The template variables training and evaluation rendered with (a fixed date_string: Llama 3.x prints
        # "Today Date" from strftime_now otherwise, and the served prompt would differ from the trained one).
        self.template_kwargs = summary.get("chat_template_kwargs") or {}

    @staticmethod
    def _base_dir(context, config: dict, summary: dict) -> Path:
        if "base" in context.artifacts:
            return Path(context.artifacts["base"])
        try:
            from tuneline.llm.ml.models import resolve_summary_base
            from tuneline.llm.registry import weights_sha256
        except ImportError as exc:
            raise RuntimeError(
                f"this version references its base model {summary.get('base_model')!r} by name, which needs "
                "the "
                "tuneline package to resolve; install tuneline, or register with --base-weights bundle"
            ) from exc
        base = resolve_summary_base(summary)  # at the Hub commit training used, when it recorded one
        expected = config.get("base_weights_sha256")
        if expected and os.environ.get("TUNELINE_SKIP_BASE_CHECK") != "1":
            actual = weights_sha256(base)
            if actual != expected:
                raise RuntimeError(
                    f"base model {summary['base_model']!r} at {base} has weights sha256 {actual[:12]}..., "
                    "but this "
                    f"version was trained on {expected[:12]}... (TUNELINE_SKIP_BASE_CHECK=1 overrides)"
                )
        return base

    def render(self, messages: list[dict[str, str]]) -> str:
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                  **getattr(self, "template_kwargs", {}))

    def predict(self, context, model_input, params: dict | None = None) -> list[str]:
        import torch

        params = params or {}
        max_new_tokens = int(params.get("max_new_tokens", 64))
        system = params.get("system_prompt") or self.default_system
        prompts = _prompts(model_input)
        if not prompts:
            return []
        texts = [self.render(([{"role": "system", "content": system}] if system else [])
                             + [{"role": "user", "content": prompt}]) for prompt in prompts]
        batch = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(
            self.device
        )
        with torch.no_grad():
            out = self.model.generate(
                **batch,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new_tokens = out[:, batch["input_ids"].shape[1] :]
        return [t.strip() for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


mlflow.models.set_model(TunelineChatModel())
