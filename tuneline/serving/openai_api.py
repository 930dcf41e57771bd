"""The OpenAI-compatible request and response shapes the proxy speaks, translated to and from one v2 infer call.

Routes (served by `tuneline.serving.proxy` on the same endpoint and bearer token as everything else):
- `POST /v1/chat/completions`: `messages` (system/developer/user/assistant; text content or text parts),
  `max_tokens` / `max_completion_tokens`, `temperature`, `top_p`, `stop`, `stream` (+ `stream_options.
  include_usage`), `response_format` (`text`, `json_object`, `json_schema`: the engine constrains decoding to
  the JSON grammar or the schema; a server running the plain-generate fallback refuses it with 400).
  The model applies the chat template and system prompt it was trained with (a request
  without a system message gets the training one).
- `POST /v1/completions`: `prompt` (string or list), the same sampling fields; raw text, no template, as the
  OpenAI API defines it. `max_tokens` defaults to 16 there, as in OpenAI's API.
- `GET /v1/models`: the one served model.

What is not supported is refused with 400 rather than ignored when it would change the answer: `n` > 1,
`tools`, `logprobs`, `echo`, `best_of` > 1. Decoding is greedy unless `temperature` > 0 (the OpenAI API
defaults to 1.0; an omitted temperature here keeps the model's own greedy decoding, like vLLM's use of the
model's generation defaults).

`stream: true` answers with server-sent events in OpenAI's chunk format and ends with `data: [DONE]`: one
chunk per piece of text as the model produces it (the Triton model is decoupled and streams through Triton's
generate_stream endpoint, and the proxy relays each piece as it arrives; see `tuneline.serving.proxy`), then
a chunk with the finish reason, and with `stream_options.include_usage` a last one holding `usage`.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from tuneline.serving.repository import schema_problem

COMPLETIONS_DEFAULT_MAX_TOKENS = 16


class ApiError(Exception):
    """A request the API refuses; `status`, `param` and `code` follow OpenAI's error object."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.param, self.code = status, param, code

    def body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        return {"error": {"message": str(self), "type": kind, "param": self.param, "code": self.code}}


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[_Part] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        bad = [p.type for p in self.content if p.type != "text"]
        if bad:
            raise ApiError(f"only text content parts are supported, got {bad[0]!r}", param="messages")
        return "".join(p.text or "" for p in self.content)


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str = ""
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(1, ge=1)
    logprobs: Any = None
    tools: list | None = None
    response_format: dict[str, Any] | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and len(value) > 4:
            raise ValueError("at most 4 stop sequences")
        return value


class _ChatBody(_Sampling):
    messages: list[_Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class _CompletionBody(_Sampling):
    prompt: str | list[str]
    echo: bool = False
    best_of: int | None = None


@dataclass
class Generation:
    """What one OpenAI request asks Triton for: one row per prompt, all decoded alike."""

    kind: Literal["chat", "completion"]
    model: str
    texts: list[str]  # text_input rows
    prompt_format: str  # "messages" or "raw"
    max_tokens: int | None
    temperature: float
    top_p: float
    stop: list[str]
    stream: bool = False
    include_usage: bool = False
    guide: str = ""  # the engine's `guide` input: "" or the JSON of {"json_object": true} / {"json": schema}
    log_prompts: list[Any] = field(default_factory=list)  # what the request log records per row
    length_field: str = "max_tokens"  # what the request calls the generation budget, for error messages


def _validate(model: type[BaseModel], body: bytes) -> Any:
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        if first["type"] == "json_invalid":
            raise ApiError(f"invalid JSON body: {first['msg']}") from None
        raise ApiError(f"{where}: {first['msg']}" if where else first["msg"], param=where) from None


def _common(req: _Sampling) -> dict:
    if req.n != 1:
        raise ApiError("n > 1 is not supported: send one request per sample", param="n")
    if req.tools:
        raise ApiError("tools are not supported by this model server", param="tools")
    if req.logprobs not in (None, False):
        raise ApiError("logprobs are not supported by this model server", param="logprobs")
    stop = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
    if any(not s for s in stop):
        raise ApiError("stop sequences must be non-empty", param="stop")
    return {
        "model": req.model,
        "guide": _guide(req.response_format),
        "temperature": req.temperature or 0.0,
        "top_p": req.top_p if req.top_p is not None else 1.0,
        "stop": stop,
        "stream": req.stream,
        "include_usage": bool((req.stream_options or {}).get("include_usage")),
    }


def _guide(response_format: dict[str, Any] | None) -> str:
    """OpenAI's `response_format` as the engine's `guide` input; a schema that is not one is refused here."""
    kind = (response_format or {}).get("type", "text")
    if kind == "text":
        return ""
    if kind == "json_object":
        return json.dumps({"json_object": True})
    if kind != "json_schema":
        raise ApiError(f"response_format.type must be text, json_object or json_schema, got {kind!r}",
                       param="response_format.type")
    schema = (response_format.get("json_schema") or {}).get("schema")
    problem = schema_problem(schema)
    if problem:
        raise ApiError(f"response_format.json_schema.schema {problem}", param="response_format.json_schema.schema")
    return json.dumps({"json": schema})


def parse_chat(body: bytes) -> Generation:
    req = _validate(_ChatBody, body)
    messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in req.messages]
    if messages[-1]["role"] == "assistant":
        raise ApiError("the last message must not be the assistant's: nothing to answer", param="messages")
    return Generation(
        kind="chat",
        texts=[json.dumps(messages, ensure_ascii=False)],
        prompt_format="messages",
        max_tokens=req.max_completion_tokens or req.max_tokens,
        log_prompts=[messages],
        **_common(req),
    )


def parse_completion(body: bytes) -> Generation:
    req = _validate(_CompletionBody, body)
    if req.echo:
        raise ApiError("echo is not supported", param="echo")
    if req.best_of not in (None, 1):
        raise ApiError("best_of > 1 is not supported", param="best_of")
    prompts = [req.prompt] if isinstance(req.prompt, str) else list(req.prompt)
    if not prompts:
        raise ApiError("prompt must not be an empty list", param="prompt")
    return Generation(
        kind="completion",
        texts=prompts,
        prompt_format="raw",
        max_tokens=req.max_tokens or COMPLETIONS_DEFAULT_MAX_TOKENS,
        log_prompts=prompts,
        **_common(req),
    )


@dataclass
class Result:
    """Triton's answer, one entry per row."""

    texts: list[str]
    prompt_tokens: list[int]
    completion_tokens: list[int]
    finish_reasons: list[str]

    def usage(self) -> dict:
        prompt, completion = sum(self.prompt_tokens), sum(self.completion_tokens)
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _ids(kind: str) -> tuple[str, int]:
    return f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}", int(time.time())


def response(gen: Generation, result: Result, model: str) -> dict:
    rid, created = _ids(gen.kind)
    if gen.kind == "chat":
        choices = [
            {
                "index": 0,
                "message": {"role": "assistant", "content": result.texts[0]},
                "logprobs": None,
                "finish_reason": result.finish_reasons[0],
            }
        ]
        obj = "chat.completion"
    else:
        choices = [
            {"index": i, "text": t, "logprobs": None, "finish_reason": f}
            for i, (t, f) in enumerate(zip(result.texts, result.finish_reasons, strict=True))
        ]
        obj = "text_completion"
    return {"id": rid, "object": obj, "created": created, "model": model, "choices": choices, "usage": result.usage()}


class StreamWriter:
    """Server-sent events in OpenAI's chunk format for one streamed answer (one choice per prompt)."""

    def __init__(self, gen: Generation, model: str) -> None:
        self.gen, self.model = gen, model
        self.rid, self.created = _ids(gen.kind)
        self.obj = "chat.completion.chunk" if gen.kind == "chat" else "text_completion"

    def _event(self, choices: list[dict], usage: dict | None = None) -> bytes:
        chunk: dict[str, Any] = {"id": self.rid, "object": self.obj, "created": self.created, "model": self.model,
                                 "choices": choices}
        if self.gen.include_usage:
            chunk["usage"] = usage
        return f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode()

    def start(self, index: int) -> bytes:
        """The opening chunk of a choice (chat: the assistant role; a completion has none)."""
        if self.gen.kind != "chat":
            return b""
        return self._event([{"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])

    def piece(self, index: int, text: str) -> bytes:
        if self.gen.kind == "chat":
            return self._event([{"index": index, "delta": {"content": text}, "finish_reason": None}])
        return self._event([{"index": index, "text": text, "logprobs": None, "finish_reason": None}])

    def finish(self, index: int, reason: str) -> bytes:
        if self.gen.kind == "chat":
            return self._event([{"index": index, "delta": {}, "finish_reason": reason}])
        return self._event([{"index": index, "text": "", "logprobs": None, "finish_reason": reason}])

    def end(self, result: Result) -> bytes:
        """The usage chunk (when asked for) and `[DONE]`."""
        usage = self._event([], result.usage()) if self.gen.include_usage else b""
        return usage + b"data: [DONE]\n\n"

    @staticmethod
    def error(message: str, status: int = 500) -> bytes:
        """An error event: the status line went out with the first chunk, so a failure later says so here."""
        return f"data: {json.dumps(ApiError(message, status).body())}\n\n".encode()


def models_list(model: str, created: float, adapters: tuple[str, ...] = ()) -> dict:
    """The deployment's name (traffic split as the routes say) and each served adapter's (that version only)."""
    entries = [{"id": name, "object": "model", "created": int(created), "owned_by": "tuneline"}
               for name in (model, *adapters)]
    return {"object": "list", "data": entries}
