"""Parse and validate one JSONL record into a chat-format ``ChatRecord``.

Accepted shapes:
  chat               {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...],
                      "tools": [...]?}
  prompt/completion  {"prompt": "...", "completion": "...", "system": "..."?}  -> user + assistant turns

Every other top-level key (``id``, ``conversation_id``, ``group``, ``tools``, ``metadata``...) is passed
through unchanged. Message text is normalised (``normalize.normalize_text``) before the checks, so
"   " counts as empty content. A bad record raises ``RecordError`` carrying a machine-readable reason and
a human-readable detail naming the offending message/field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from tuneline.data.normalize import normalize_text

ROLES = ("system", "user", "assistant")
GROUP_FIELDS = ("conversation_id", "group")
_PROMPT_KEYS = ("prompt", "completion", "system")


class Reason(StrEnum):
    INVALID_UTF8 = "invalid_utf8"
    INVALID_JSON = "invalid_json"
    INVALID_SCHEMA = "invalid_schema"
    UNKNOWN_ROLE = "unknown_role"
    EMPTY_CONTENT = "empty_content"
    NO_ASSISTANT_TURN = "no_assistant_turn"
    ASSISTANT_NOT_LAST = "assistant_not_last"
    TOO_MANY_CHARS = "too_many_chars"
    TOO_MANY_TOKENS = "too_many_tokens"
    EXACT_DUPLICATE = "exact_duplicate"
    NEAR_DUPLICATE = "near_duplicate"


DUPLICATE_REASONS = (Reason.EXACT_DUPLICATE, Reason.NEAR_DUPLICATE)
REJECT_REASONS = tuple(r for r in Reason if r not in DUPLICATE_REASONS)


class RecordError(ValueError):
    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Budget:
    """Per-record limits over the normalised message text; 0 disables a limit."""

    max_chars: int = 0
    max_tokens: int = 0


@dataclass(slots=True)
class ChatRecord:
    messages: list[dict[str, Any]]
    extra: dict[str, Any] = field(default_factory=dict)
    chars: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"messages": self.messages, **self.extra}

    def group_key(self) -> str | None:
        """The caller-supplied grouping key (``conversation_id``, else ``group``), if any."""
        for name in GROUP_FIELDS:
            value = self.extra.get(name)
            if value is not None and value != "":
                return f"{name}={value}"
        return None


# Roughly one BPE token per short word or 4-character word piece, and one per punctuation mark: close
# enough to a real tokenizer to enforce a budget without loading one.
_TOKEN_PIECE = re.compile(r"\w{1,4}|[^\w\s]")


def estimate_tokens(text: str) -> int:
    return len(_TOKEN_PIECE.findall(text))


def decode_line(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RecordError(Reason.INVALID_UTF8, f"byte {exc.start}: {exc.reason}") from None


def load_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecordError(Reason.INVALID_JSON, f"{exc.msg} (column {exc.colno})") from None
    except RecursionError:
        raise RecordError(Reason.INVALID_JSON, "nesting too deep") from None


def _raw_messages(obj: dict[str, Any]) -> tuple[list[Any], dict[str, Any]]:
    if "messages" in obj:
        if "prompt" in obj or "completion" in obj:
            raise RecordError(Reason.INVALID_SCHEMA, "has both 'messages' and 'prompt'/'completion'")
        messages = obj["messages"]
        if not isinstance(messages, list) or not messages:
            raise RecordError(Reason.INVALID_SCHEMA, "'messages' must be a non-empty list")
        return messages, {k: v for k, v in obj.items() if k != "messages"}
    if "prompt" in obj and "completion" in obj:
        for key in _PROMPT_KEYS:
            if key in obj and not isinstance(obj[key], str):
                raise RecordError(Reason.INVALID_SCHEMA, f"'{key}' must be a string")
        messages = [
            {"role": "user", "content": obj["prompt"]},
            {"role": "assistant", "content": obj["completion"]},
        ]
        if "system" in obj:
            messages.insert(0, {"role": "system", "content": obj["system"]})
        return messages, {k: v for k, v in obj.items() if k not in _PROMPT_KEYS}
    raise RecordError(Reason.INVALID_SCHEMA, "needs 'messages', or 'prompt' and 'completion'")


def to_record(obj: Any, budget: Budget) -> ChatRecord:
    """Validate a decoded JSON value; raise ``RecordError`` naming the first problem."""
    if not isinstance(obj, dict):
        raise RecordError(Reason.INVALID_SCHEMA, f"top level is {type(obj).__name__}, expected an object")
    raw_messages, extra = _raw_messages(obj)
    messages: list[dict[str, Any]] = []
    chars = 0
    for i, msg in enumerate(raw_messages):
        if not isinstance(msg, dict):
            raise RecordError(
                Reason.INVALID_SCHEMA, f"messages[{i}] is {type(msg).__name__}, expected an object"
            )
        role = msg.get("role")
        if role not in ROLES:
            raise RecordError(Reason.UNKNOWN_ROLE, f"messages[{i}].role is {role!r}, expected one of {ROLES}")
        content = msg.get("content")
        if not isinstance(content, str):
            raise RecordError(Reason.INVALID_SCHEMA, f"messages[{i}].content must be a string")
        content = normalize_text(content)
        if not content:
            raise RecordError(Reason.EMPTY_CONTENT, f"messages[{i}] ({role}) has empty content")
        chars += len(content)
        messages.append({**msg, "content": content})
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise RecordError(Reason.NO_ASSISTANT_TURN, "no message has role 'assistant'")
    if roles[-1] != "assistant":
        raise RecordError(Reason.ASSISTANT_NOT_LAST, f"last message has role {roles[-1]!r}, not 'assistant'")
    if budget.max_chars and chars > budget.max_chars:
        raise RecordError(Reason.TOO_MANY_CHARS, f"{chars} characters > max_chars {budget.max_chars}")
    # Each estimated token covers at least one character, so short records need no counting.
    if budget.max_tokens and chars > budget.max_tokens:
        tokens = sum(estimate_tokens(m["content"]) for m in messages)
        if tokens > budget.max_tokens:
            raise RecordError(Reason.TOO_MANY_TOKENS, f"~{tokens} tokens > max_tokens {budget.max_tokens}")
    return ChatRecord(messages, extra, chars)


def _check_surrogates(text: str, obj: Any) -> None:
    # JSON may spell an unpaired surrogate as an escape; such text cannot be written back as UTF-8.
    if "\\u" in text and re.search(r"\\u[dD][89a-fA-F]", text):
        try:
            json.dumps(obj, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError as exc:
            raise RecordError(Reason.INVALID_UTF8, f"unpaired surrogate escape ({exc.reason})") from None


def parse_line(data: bytes, budget: Budget) -> ChatRecord:
    """Bytes of one JSONL line -> validated ``ChatRecord`` (or ``RecordError``)."""
    text = decode_line(data)
    obj = load_json(text)
    _check_surrogates(text, obj)
    return to_record(obj, budget)
