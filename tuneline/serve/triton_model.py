"""Triton Python-backend model: batched greedy generation with a Hugging Face causal LM.

`tuneline.serve.repository` copies this file to `<repo>/<model>/1/model.py`; Triton imports it inside
its Python backend stub (serve venv locally, the serving image on a cluster), never the project venv.
It loads the HF folder shipped beside it (`1/<hf_model_dir>`, named in config.pbtxt's parameters).

Inputs, each with the batch dim (all but `text_input` optional):
    text_input      BYTES  the prompt: a bare user turn, a JSON message list, or raw text (`prompt_format`)
    max_new_tokens  INT32  generation budget (default and limit come from config.pbtxt's parameters)
    prompt_format   BYTES  "chat" (default: the user turn under the training system prompt and chat template),
                           "messages" (text_input is a JSON list of {role, content}; the training system
                           prompt is added when the list has none) or "raw" (no template, as /v1/completions)
    temperature     FP32   <= 0 or absent: greedy; > 0: sampling at that temperature
    top_p           FP32   nucleus sampling mass (sampling only)
    stop            BYTES  JSON list of strings; the text is cut before the first one
Outputs: text_output (BYTES), prompt_tokens and completion_tokens (INT32, for OpenAI `usage`),
finish_reason (BYTES: "stop" or "length").

With dynamic batching Triton hands `execute` several requests at once: rows that decode alike (greedy, or
the same temperature/top_p) go through one left-padded `generate` call, then each request gets its rows.

Run as: loaded by tritonserver (see tuneline.serve.local); not run directly.
"""

from __future__ import annotations

import json
import os

import numpy as np
import triton_python_backend_utils as pb_utils


def _param(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def _text(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


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

    def _messages(self, text: str, prompt_format: str) -> list[dict] | None:
        """The chat messages for a row, or None for a raw prompt."""
        if prompt_format == "raw":
            return None
        if prompt_format == "messages":
            try:
                messages = json.loads(text)
            except json.JSONDecodeError as exc:
                raise ValueError(f"text_input is not a JSON message list: {exc.msg}") from None
            if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages
            ):
                raise ValueError("text_input must be a non-empty JSON list of {role: str, content: str}")
            messages = [{"role": m["role"], "content": m["content"]} for m in messages]
        elif prompt_format == "chat":
            messages = [{"role": "user", "content": text}]
        else:
            raise ValueError(f"prompt_format must be chat, messages or raw, got {prompt_format!r}")
        if self.system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def _encode(self, text: str, prompt_format: str = "chat") -> list[int]:
        messages = self._messages(text, prompt_format)
        if messages is not None and not self.use_chat:
            # A tokenizer without a chat template: a bare prompt as it is, a conversation as plain lines.
            if prompt_format == "messages":
                text = "\n".join(f"{m['role']}: {m['content']}" for m in messages) + "\nassistant:"
            messages = None
        if messages is None:
            return self.tokenizer(text, add_special_tokens=True)["input_ids"] or [self.start_id]
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return self.tokenizer(rendered, add_special_tokens=False)["input_ids"] or [self.start_id]

    def _column(self, request, name: str, rows: int, default, convert):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is None:
            return [default] * rows
        flat = [convert(v) for v in tensor.as_numpy().reshape(-1).tolist()]
        return flat if len(flat) == rows else [flat[0]] * rows

    def _request_rows(self, request) -> list[dict]:
        """One dict per batch row of `request`: encoded prompt and how to decode it. Raises ValueError."""
        texts = [_text(t) for t in pb_utils.get_input_tensor_by_name(request, "text_input").as_numpy().reshape(-1)]
        n = len(texts)
        limits = self._column(request, "max_new_tokens", n, self.default_new_tokens, int)
        formats = self._column(request, "prompt_format", n, "chat", _text)
        temps = self._column(request, "temperature", n, 0.0, float)
        top_ps = self._column(request, "top_p", n, 1.0, float)
        stops = self._column(request, "stop", n, "[]", _text)
        rows = []
        for text, limit, fmt, temp, top_p, stop in zip(texts, limits, formats, temps, top_ps, stops, strict=True):
            if not 1 <= limit <= self.limit_new_tokens:
                raise ValueError(f"max_new_tokens must be in [1, {self.limit_new_tokens}], got {limit}")
            if not 0.0 < top_p <= 1.0:
                raise ValueError(f"top_p must be in (0, 1], got {top_p}")
            try:
                stop_list = json.loads(stop or "[]")
            except json.JSONDecodeError:
                stop_list = None
            if not isinstance(stop_list, list) or not all(isinstance(s, str) and s for s in stop_list):
                raise ValueError("stop must be a JSON list of non-empty strings")
            sampling = (round(temp, 4), round(top_p, 4)) if temp > 0 else None
            ids = self._encode(text, fmt or "chat")
            rows.append({"ids": ids, "limit": limit, "sampling": sampling, "stop": stop_list})
        return rows

    def _generate(self, rows: list[dict]) -> None:
        """Fill each row's text, completion_tokens and finish_reason; rows that decode alike share a call."""
        torch = self.torch
        groups: dict = {}
        for row in rows:
            groups.setdefault(row["sampling"], []).append(row)
        for sampling, group in groups.items():
            width = max(len(r["ids"]) for r in group)
            # Left padding: decoder-only models continue from the last position of each row.
            input_ids = torch.full((len(group), width), self.pad_id, dtype=torch.long)
            attention = torch.zeros((len(group), width), dtype=torch.long)
            for i, r in enumerate(group):
                input_ids[i, width - len(r["ids"]) :] = torch.tensor(r["ids"], dtype=torch.long)
                attention[i, width - len(r["ids"]) :] = 1
            decode = {"do_sample": False} if sampling is None else {
                "do_sample": True, "temperature": sampling[0], "top_p": sampling[1]
            }
            with torch.inference_mode():
                out = self.model.generate(
                    input_ids=input_ids.to(self.device),
                    attention_mask=attention.to(self.device),
                    max_new_tokens=max(r["limit"] for r in group),
                    pad_token_id=self.pad_id,
                    **decode,
                )
            for i, r in enumerate(group):
                new_tokens = out[i, width : width + r["limit"]].tolist()
                finish = "length"
                if self.eos_id is not None and self.eos_id in new_tokens:
                    new_tokens, finish = new_tokens[: new_tokens.index(self.eos_id)], "stop"
                text = self.tokenizer.decode(new_tokens, skip_special_tokens=True)
                cut = min((text.find(s) for s in r["stop"] if s in text), default=-1)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
                    new_tokens = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                r.update(text=text, completion_tokens=len(new_tokens), finish_reason=finish)

    def execute(self, requests: list) -> list:
        responses: list = [None] * len(requests)
        rows: list[dict] = []
        spans: list[tuple[int, int, int]] = []  # (request index, first row, row count)
        for i, request in enumerate(requests):
            try:
                mine = self._request_rows(request)
            except (ValueError, TypeError) as exc:
                responses[i] = pb_utils.InferenceResponse(output_tensors=[], error=_invalid_argument(str(exc)))
                continue
            spans.append((i, len(rows), len(mine)))
            rows.extend(mine)
        if rows:
            try:
                self._generate(rows)
            except Exception as exc:  # noqa: BLE001 - any failure must become an error response, not a crash
                for i, _, _ in spans:
                    responses[i] = pb_utils.InferenceResponse(
                        output_tensors=[], error=pb_utils.TritonError(f"generation failed: {exc}")
                    )
                return responses
            for i, first, count in spans:
                mine = rows[first : first + count]

                def column(key: str, dtype, mine=mine, count=count):
                    values = [r[key].encode("utf-8") if dtype is np.object_ else r[key] for r in mine]
                    return np.array(values, dtype=dtype).reshape(count, 1)

                responses[i] = pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("text_output", column("text", np.object_)),
                        pb_utils.Tensor("prompt_tokens", np.array([[len(r["ids"])] for r in mine], np.int32)),
                        pb_utils.Tensor("completion_tokens", column("completion_tokens", np.int32)),
                        pb_utils.Tensor("finish_reason", column("finish_reason", np.object_)),
                    ]
                )
        return responses

    def finalize(self) -> None:
        self.model = None
