"""Triton Python-backend model: batched greedy generation with a Hugging Face causal LM.

`tuneline.serve.repository` copies this file to `<repo>/<model>/1/model.py`; Triton imports it inside
its Python backend stub (serve venv locally, the serving image on a cluster), never the project venv.
It loads the HF folder shipped beside it (`1/<hf_model_dir>`, named in config.pbtxt's parameters).

Inputs (BYTES prompt, optional INT32 max_new_tokens) and output (BYTES text) each carry the batch dim.
With dynamic batching Triton hands `execute` several requests at once: all their prompts go through
one left-padded `generate` call, then each request gets back its own rows.

Run as: loaded by tritonserver (see tuneline.serve.local); not run directly.
"""

from __future__ import annotations

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


def _param(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def _invalid_argument(message: str):
    # INVALID_ARG maps to HTTP 400; older stubs only know the message-only constructor (HTTP 500).
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        hf_dir = os.path.join(version_dir, _param(config, "hf_model_dir", "hf_model"))
        self.default_new_tokens = int(_param(config, "max_new_tokens_default", "32"))
        self.limit_new_tokens = int(_param(config, "max_new_tokens_limit", "256"))
        threads = int(_param(config, "torch_threads", "0"))
        if threads > 0:
            torch.set_num_threads(threads)
        if args.get("model_instance_kind") == "GPU":
            self.device = f"cuda:{args['model_instance_device_id']}"
            dtype = torch.bfloat16
        else:
            self.device = "cpu"
            dtype = torch.float32
        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        self.model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).to(self.device).eval()
        tok = self.tokenizer
        self.pad_id = next(i for i in (tok.pad_token_id, tok.eos_token_id, 0) if i is not None)
        # An empty prompt still needs one position to condition on.
        self.start_id = next(i for i in (tok.bos_token_id, tok.eos_token_id, self.pad_id) if i is not None)
        self.eos_id = tok.eos_token_id
        serving_path = os.path.join(version_dir, "serving.json")
        serving = json.load(open(serving_path)) if os.path.isfile(serving_path) else {}
        # A tuned instruct model only answers well inside the chat format it was trained on.
        self.use_chat = bool(serving.get("chat_template", True)) and bool(getattr(tok, "chat_template", None))
        self.system_prompt = serving.get("system_prompt")

    def _encode(self, prompt: str) -> list[int]:
        if not self.use_chat:
            return self.tokenizer(prompt, add_special_tokens=True)["input_ids"] or [self.start_id]
        messages = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        messages.append({"role": "user", "content": prompt})
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"] or [self.start_id]

    def _request_inputs(self, request) -> tuple[list[str], list[int]]:
        texts = pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)
        prompts = [t.decode("utf-8", errors="replace") if isinstance(t, bytes) else str(t) for t in texts]
        limits_tensor = pb_utils.get_input_tensor_by_name(request, "max_new_tokens")
        if limits_tensor is None:
            limits = [self.default_new_tokens] * len(prompts)
        else:
            flat = limits_tensor.as_numpy().reshape(-1).tolist()
            limits = flat if len(flat) == len(prompts) else [flat[0]] * len(prompts)
        for n in limits:
            if not 1 <= int(n) <= self.limit_new_tokens:
                raise ValueError(f"max_new_tokens must be in [1, {self.limit_new_tokens}], got {n}")
        return prompts, [int(n) for n in limits]

    def _generate(self, prompts: list[str], limits: list[int]) -> list[str]:
        torch = self.torch
        encoded = [self._encode(p) for p in prompts]
        width = max(len(ids) for ids in encoded)
        # Left padding: decoder-only models continue from the last position of each row.
        input_ids = torch.full((len(encoded), width), self.pad_id, dtype=torch.long)
        attention = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, ids in enumerate(encoded):
            input_ids[row, width - len(ids) :] = torch.tensor(ids, dtype=torch.long)
            attention[row, width - len(ids) :] = 1
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids.to(self.device),
                attention_mask=attention.to(self.device),
                max_new_tokens=max(limits),
                do_sample=False,
                pad_token_id=self.pad_id,
            )
        texts = []
        for row, limit in enumerate(limits):
            new_tokens = out[row, width : width + limit].tolist()
            if self.eos_id is not None and self.eos_id in new_tokens:
                new_tokens = new_tokens[: new_tokens.index(self.eos_id)]
            texts.append(self.tokenizer.decode(new_tokens, skip_special_tokens=True))
        return texts

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        prompts: list[str] = []
        limits: list[int] = []
        spans: list[tuple[int, int, int]] = []  # (request index, first row, row count)
        for i, request in enumerate(requests):
            try:
                p, n = self._request_inputs(request)
            except (ValueError, TypeError) as exc:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=_invalid_argument(str(exc)))
                continue
            spans.append((i, len(prompts), len(p)))
            prompts.extend(p)
            limits.extend(n)
        if prompts:
            try:
                texts = self._generate(prompts, limits)
            except Exception as exc:  # noqa: BLE001 - any failure must become an error response, not a crash
                for i, _, _ in spans:
                    responses[i] = pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(f"generation failed: {exc}")
                    )
                return responses
            for i, first, count in spans:
                rows = np.array([t.encode("utf-8") for t in texts[first : first + count]], dtype=np.object_)
                tensor = pb_utils.Tensor("text_output", rows.reshape(count, 1))
                responses[i] = pb_utils.InferenceResponse(output_tensors=[tensor])
        return responses

    def finalize(self) -> None:
        self.model = None
