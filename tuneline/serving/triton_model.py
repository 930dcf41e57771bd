"""Triton Python-backend model: batched greedy generation with a Hugging Face causal LM.

`tuneline.serving.repository` copies this file to `<repo>/<model>/1/model.py` and to its decoupled twin
`<repo>/<model>-stream/1/model.py`; Triton imports it inside its Python backend stub (serve venv locally, the
serving image on a cluster), never the project venv. It loads the HF folder shipped beside the first one
(`1/<hf_model_dir>`, named in config.pbtxt's parameters; the twin reaches it through `weights_dir`).

Inputs, each with the batch dim (all but `text_input` optional):
    text_input      BYTES  the prompt: a bare user turn, a JSON message list, or raw text (`prompt_format`)
    max_new_tokens  INT32  generation budget (default and limit come from config.pbtxt's parameters)
    prompt_format   BYTES  "chat" (default: the user turn under the training system prompt and chat template),
                           "messages" (text_input is a JSON list of {role, content}; the training system
                           prompt is added when the list has none) or "raw" (no template, as /v1/completions)
    temperature     FP32   <= 0 or absent: greedy; > 0: sampling at that temperature
    top_p           FP32   nucleus sampling mass (sampling only)
    stop            BYTES  JSON list of strings; the text is cut before the first one
    stream          BOOL   (decoupled twin only) one response per new piece of text instead of one at the end
    adapter         BYTES  which LoRA adapter under `1/adapters/` answers (default: serving.json's `adapter`);
                           rows of one batch may name different adapters (PEFT's mixed-adapter batches)
Outputs: text_output (BYTES; a streamed response holds only its new piece), prompt_tokens and
completion_tokens (INT32, for OpenAI `usage`), finish_reason (BYTES: "stop" or "length"; "" while streaming).

With dynamic batching Triton hands `execute` several requests at once: rows that decode alike (greedy, or
the same temperature/top_p) go through one left-padded `generate` call, then each request gets its rows.
A StoppingCriteria is the per-token hook that finishes rows (EOS, stop string, budget) and streams pieces.

Run as: loaded by tritonserver (see tuneline.serving.local); not run directly.
"""

from __future__ import annotations

import json
import os
import re
import sys

import numpy as np
import triton_python_backend_utils as pb_utils


def _stop_ids(hf_dir: str, tok) -> set[int]:
    """The tokens that end an answer: generation_config.json's eos ids and the tokenizer's eos. Gemma's tokenizer eos
    is <eos> while its turns end with <end_of_turn>, listed only in generation_config.json (google/gemma-3-1b-it:
    eos_token_id [1, 106]); generate stops on that list, so each row must finish on it too (as
    tuneline.llm.ml.generate.stop_ids does for evaluation; this file runs without the tuneline package)."""
    from transformers import GenerationConfig

    try:
        configured = GenerationConfig.from_pretrained(hf_dir).eos_token_id
    except OSError:  # no generation_config.json
        configured = None
    ids = configured if isinstance(configured, list) else [configured]
    return {i for i in [*ids, tok.eos_token_id] if i is not None}


def _param(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def _text(value) -> str:
    return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)


def _invalid_argument(message: str):
    # INVALID_ARG maps to HTTP 400; older stubs only know the message-only constructor (HTTP 500).
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None)
    return pb_utils.TritonError(message, code) if code is not None else pb_utils.TritonError(message)


_ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def _step_hook_class():
    from transformers import StoppingCriteria

    class Step(StoppingCriteria):
        """Called by `generate` with the sequences so far after each decode step: takes each row's new token,
        lets `step` send what is ready, and answers which rows are finished."""

        def __init__(self, model, group: list[dict], step) -> None:
            self.model, self.group, self.step = model, group, step

        def __call__(self, ids, scores, **kwargs):
            for r, token in zip(self.group, ids[:, -1].tolist(), strict=True):
                if not r["done"]:
                    self.model._advance(r, token)
            self.step(self.group)
            return self.model.torch.tensor([r["done"] for r in self.group], dtype=self.model.torch.bool,
                                           device=ids.device)

    return Step


def _guide(text: str) -> dict | None:
    """The `guide` input: "" (free text), {"json_object": true} or {"json": <JSON schema object>}."""
    if not text:
        return None
    try:
        guide = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"guide is not JSON: {exc.msg}") from None
    if guide == {"json_object": True} or (isinstance(guide, dict) and list(guide) == ["json"]
                                          and isinstance(guide["json"], dict)):
        return guide
    raise ValueError('guide must be {"json_object": true} or {"json": <a JSON schema object>}')


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        config = self._load_tokenizer_only(args)
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
        self._step_class = _step_hook_class()
        self.model = AutoModelForCausalLM.from_pretrained(self.hf_dir, dtype=dtype).to(self.device).eval()
        self.loaded_adapters: set[str] = set()
        if self.default_adapter:
            from peft import PeftModel

            # One base in memory; each adapter adds only its LoRA matrices, loaded when first named.
            self.model = PeftModel.from_pretrained(self.model, self.adapter_path(self.default_adapter),
                                                   adapter_name=self.default_adapter).eval()
            self.loaded_adapters.add(self.default_adapter)

    def _load_tokenizer_only(self, args: dict) -> dict:
        """Everything but the weights: tokenizer, limits, chat settings (vllm_model.py renders prompts with it).
        Returns the parsed config.pbtxt."""
        from transformers import AutoConfig, AutoTokenizer

        config = json.loads(args["model_config"])
        # The `-stream` twin names its sibling's version folder: the weights are shipped once.
        version_dir = os.path.join(args["model_repository"], args["model_version"], _param(config, "weights_dir", "."))
        self.hf_dir = hf_dir = os.path.join(version_dir, _param(config, "hf_model_dir", "hf_model"))
        self.decoupled = bool(config.get("model_transaction_policy", {}).get("decoupled", False))
        self.default_new_tokens = int(_param(config, "max_new_tokens_default", "32"))
        self.limit_new_tokens = int(_param(config, "max_new_tokens_limit", "256"))
        self.tokenizer = AutoTokenizer.from_pretrained(hf_dir)
        tok = self.tokenizer
        self.pad_id = next(i for i in (tok.pad_token_id, tok.eos_token_id, 0) if i is not None)
        # An empty prompt still needs one position to condition on.
        self.start_id = next(i for i in (tok.bos_token_id, tok.eos_token_id, self.pad_id) if i is not None)
        self.eos_ids = _stop_ids(hf_dir, tok)
        # Prompt and new tokens must fit the positions the model was built for: past them a model either fails
        # or degrades, after having spent the whole prompt's compute. Checked before generation.
        model_config = AutoConfig.from_pretrained(hf_dir)
        self.context = int(getattr(model_config, "max_position_embeddings", 0) or 0) or None
        serving_path = os.path.join(version_dir, "serving.json")
        serving = json.load(open(serving_path)) if os.path.isfile(serving_path) else {}
        # A tuned instruct model only answers well inside the chat format it was trained on.
        self.use_chat = bool(serving.get("chat_template", True)) and bool(getattr(tok, "chat_template", None))
        self.system_prompt = serving.get("system_prompt")
        # The deployment's response schema: the vLLM twin constrains every answer without a response_format of
        # its own to it; plain generate cannot, and says so at load (vllm_model.py).
        self.default_guide = _guide(json.dumps(serving["guide"])) if serving.get("guide") else None
        # LoRA adapters served on this one base (repository.py `add_adapter` puts later versions beside it).
        self.default_adapter = serving.get("adapter") or None
        self.adapters_dir = os.path.join(version_dir, "adapters")
        # The template variables training rendered with (a fixed date for Llama 3.x), so prompts match training's.
        self.template_kwargs = serving.get("chat_template_kwargs") or {}
        return config

    def adapter_path(self, name: str) -> str:
        return os.path.join(self.adapters_dir, name)

    def _adapter(self, name: str) -> str | None:
        """The adapter a row is answered by: the one it names (which must be in place), else the default."""
        if not name:
            return self.default_adapter
        if not self.default_adapter:
            raise ValueError(f"adapter {name!r}: this model serves no adapters")
        if not _ADAPTER_NAME.match(name) or not os.path.isfile(os.path.join(self.adapter_path(name),
                                                                           "adapter_config.json")):
            served = sorted(n for n in os.listdir(self.adapters_dir) if not n.startswith("."))
            raise ValueError(f"adapter {name!r} is not served here (adapters: {', '.join(served)})")
        return name

    def _unload_removed_adapters(self, wanted: set[str]) -> None:
        """Drop the adapters whose folder was removed (tuneline/serving/housekeeping.py) from memory: rows naming
        them are refused (`_adapter`), so their matrices only hold memory. Safe here: an instance runs one execute
        at a time, and the adapters of this batch's rows, checked before their folder went, are kept for it."""
        for name in sorted(self.loaded_adapters - wanted - {self.default_adapter}):
            if not os.path.isdir(self.adapter_path(name)):
                self.model.delete_adapter(name)  # PEFT's PeftModel.delete_adapter
                self.loaded_adapters.discard(name)
                print(f"adapter {name!r} unloaded: its folder was removed", file=sys.stderr, flush=True)

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
        rendered = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                                      **self.template_kwargs)
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
        guides = self._column(request, "guide", n, "", _text)
        adapters = self._column(request, "adapter", n, "", _text)
        stream = bool(self._column(request, "stream", 1, False, bool)[0])
        rows = []
        for text, limit, fmt, temp, top_p, stop, guide, adapter in zip(texts, limits, formats, temps, top_ps, stops,
                                                                        guides, adapters, strict=True):
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
            if self.context is not None and len(ids) + limit > self.context:
                raise ValueError(f"the prompt is {len(ids)} tokens; with max_new_tokens {limit} it exceeds this "
                                 f"model's context of {self.context} tokens")
            rows.append({"ids": ids, "limit": limit, "sampling": sampling, "stop": stop_list, "stream": stream,
                         "guide": _guide(guide), "adapter": self._adapter(adapter)})
        return rows

    def _generate(self, rows: list[dict], step) -> None:
        """Generate every row; `step(rows)` runs after each new token (it may send responses and finish rows).

        Rows that decode alike share one left-padded `generate` call. A StoppingCriteria is the per-token
        hook: transformers calls it with the sequences so far after each decode step and stops a row when
        it answers True for it (its later positions are padding), and the whole call once all rows are done.
        """
        torch = self.torch
        from transformers import StoppingCriteriaList

        if self.default_adapter:
            self._unload_removed_adapters({r["adapter"] for r in rows})
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
            hook = self._step_class(self, group, step)
            if self.default_adapter:
                for name in {r["adapter"] for r in group} - self.loaded_adapters:
                    self.model.load_adapter(self.adapter_path(name), adapter_name=name)
                    self.loaded_adapters.add(name)
                # Each row through its own adapter in the one batch (PEFT's mixed-adapter inference).
                decode["adapter_names"] = [r["adapter"] for r in group]
            with torch.inference_mode():
                self.model.generate(
                    input_ids=input_ids.to(self.device),
                    attention_mask=attention.to(self.device),
                    max_new_tokens=max(r["limit"] for r in group),
                    pad_token_id=self.pad_id,
                    stopping_criteria=StoppingCriteriaList([hook]),
                    **decode,
                )
            for r in group:  # generate may end early on its own (all rows at EOS in the same step)
                if not r["done"]:
                    self._finish(r, "length")
            step(group)

    def _advance(self, row: dict, token: int) -> None:
        """Take one new token into `row`: EOS, a stop string or the budget finishes it."""
        if token in self.eos_ids:
            self._finish(row, "stop")
            return
        row["tokens"].append(token)
        if row["stop"] or row["stream"]:
            text = self.tokenizer.decode(row["tokens"], skip_special_tokens=True)
            cut = min((text.find(s) for s in row["stop"] if s in text), default=-1)
            if cut >= 0:
                row["text"] = text[:cut]
                self._finish(row, "stop", retokenize=True)
                return
            row["text"] = text
        if len(row["tokens"]) >= row["limit"]:
            self._finish(row, "length")

    def _finish(self, row: dict, reason: str, *, retokenize: bool = False) -> None:
        if not retokenize:
            row["text"] = self.tokenizer.decode(row["tokens"], skip_special_tokens=True)
        else:  # cut at a stop string: count the tokens of what is kept
            row["tokens"] = self.tokenizer(row["text"], add_special_tokens=False)["input_ids"]
        row.update(done=True, finish_reason=reason)

    def _ready_text(self, row: dict) -> str:
        """What a streaming row may send now: its text, less a tail that could still become a stop string
        (held back until it is sure) or an incomplete UTF-8 character."""
        text = row["text"]
        if not row["done"]:
            if text.endswith("\ufffd"):
                text = text.rstrip("\ufffd")
            hold = max((len(s) - 1 for s in row["stop"]), default=0)
            if hold:
                text = text[: max(len(row["sent"]), len(text) - hold)]
        return text

    def _response(self, rows: list[dict], texts: list[str]):
        def strings(values):
            return np.array([v.encode("utf-8") for v in values], dtype=np.object_).reshape(len(rows), 1)

        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor("text_output", strings(texts)),
                pb_utils.Tensor("prompt_tokens", np.array([[len(r["ids"])] for r in rows], np.int32)),
                pb_utils.Tensor("completion_tokens", np.array([[len(r["tokens"])] for r in rows], np.int32)),
                pb_utils.Tensor("finish_reason", strings([r["finish_reason"] if r["done"] else "" for r in rows])),
            ]
        )

    def execute(self, requests: list) -> list | None:
        """Generate for a batch of requests; how the answers go back depends on the transaction policy.

        Decoupled (the `-stream` model): each request's responses go through its own response sender and
        execute returns None. A request asking to stream gets one response per new piece of text (its
        `text_output` holds only the new piece) and a last one with its finish reason; any other gets one
        response as soon as its rows are done, while the rest of the batch keeps generating. Every request ends
        with the TRITONSERVER_RESPONSE_COMPLETE_FINAL flag, and one whose client went away (its sender reports
        cancelled) stops generating. Coupled: one response per request, returned in order. See the Python
        backend's "Decoupled mode" and "Request Cancellation Handling" (github.com/triton-inference-server/
        python_backend, README.md).
        """
        responses: list = [None] * len(requests)
        final = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
        jobs: list[dict] = []
        rows: list[dict] = []
        for index, request in enumerate(requests):
            sender = request.get_response_sender() if self.decoupled else None
            job = {"index": index, "sender": sender, "open": True, "steps": 0}
            try:
                job["rows"] = self._request_rows(request)
                if any(row["guide"] for row in job["rows"]):
                    raise ValueError("response_format needs an engine that constrains decoding (vLLM); this model "
                                     "server runs plain generate, which cannot (see the engine named at its load)")
            except (ValueError, TypeError) as exc:
                self._send(job, pb_utils.InferenceResponse(output_tensors=[], error=_invalid_argument(str(exc))),
                           responses)
                continue
            for r in job["rows"]:
                r.update(job=job, tokens=[], text="", sent="", done=False, finish_reason="")
                r["stream"] = r["stream"] and self.decoupled
            jobs.append(job)
            rows.extend(job["rows"])

        def step(group: list[dict]) -> None:
            for job in {id(r["job"]): r["job"] for r in group}.values():
                if not job["open"]:
                    continue
                mine = job["rows"]
                job["steps"] += 1
                # Asking the server whether the client left costs a round trip: every 8 tokens is enough.
                if job["sender"] is not None and job["steps"] % 8 == 0 and job["sender"].is_cancelled():
                    for r in mine:
                        r.update(done=True, finish_reason="cancelled")
                    job["open"] = False
                    job["sender"].send(flags=final)
                    continue
                done = all(r["done"] for r in mine)
                if mine[0]["stream"]:
                    ready = [self._ready_text(r) for r in mine]
                    pieces = [t[len(r["sent"]) :] for t, r in zip(ready, mine, strict=True)]
                    if any(pieces) or done:
                        for r, t in zip(mine, ready, strict=True):
                            r["sent"] = t
                        self._send(job, self._response(mine, pieces), responses, last=done)
                elif done:
                    self._send(job, self._response(mine, [r["text"] for r in mine]), responses)

        if rows:
            try:
                self._generate(rows, step)
            except Exception as exc:  # noqa: BLE001 - any failure must become an error response, not a crash
                error = pb_utils.TritonError(f"generation failed: {exc}")
                for job in jobs:
                    if job["open"]:
                        self._send(job, pb_utils.InferenceResponse(output_tensors=[], error=error), responses)
        return None if self.decoupled else responses

    @staticmethod
    def _send(job: dict, response, responses: list, *, last: bool = True) -> None:
        """Send (decoupled) or keep for returning (coupled) one response of `job`; `last` closes it."""
        if job["sender"] is not None:
            job["sender"].send(response, flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL if last else 0)
        else:
            responses[job["index"]] = response
        if last:
            job["open"] = False

    def finalize(self) -> None:
        self.model = None
