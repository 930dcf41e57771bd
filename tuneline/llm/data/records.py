"""Parse and validate one record, in any of the formats of ``formats``, into a chat-format ``ChatRecord``.

The record is first converted to chat messages (``formats.to_messages``), then checked: roles, non-empty
content, an assistant turn last, the quality rules of ``quality`` (no user turn, empty answer, degenerate
repetition) and the length budgets, in that order, so a record is quarantined for its real flaw before its
length. Every other top-level key (``id``, ``conversation_id``, ``group``, ``tools``, ``metadata``...) is
passed through unchanged. Message text is normalised (``normalize.normalize_text``) before the checks, so
"   " counts as empty content. A bad record raises ``RecordError`` carrying a machine-readable reason and a
human-readable detail naming the offending field.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from tuneline.llm.data.formats import apply_columns, detect_record, to_messages
from tuneline.llm.data.normalize import normalize_text
from tuneline.llm.data.quality import QualityRules, answer_chars, has_answer_chars, repetition
from tuneline.llm.data.reasons import DUPLICATE_REASONS, REJECT_REASONS, Reason, RecordError

ROLES = ("system", "user", "assistant")
GROUP_FIELDS = ("conversation_id", "group")
_FLAT_FIELDS = {"alpaca": {"system": "system", "user": "instruction", "assistant": "output"},
                "prompt_completion": {"system": "system", "user": "prompt", "assistant": "completion"}}
_DEFAULT_RULES = QualityRules()

__all__ = ["DUPLICATE_REASONS", "GROUP_FIELDS", "REJECT_REASONS", "ROLES", "Budget", "ChatRecord", "Reason",
           "RecordError", "estimate_tokens", "parse_line", "parse_object", "to_record"]


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


def _field(fmt: str, i: int, role: str) -> str:
    """How the record's own schema names message ``i``: messages[1], conversations[1], 'output'..."""
    if fmt in _FLAT_FIELDS:
        return f"'{_FLAT_FIELDS[fmt].get(role, role)}'"
    return f"{'conversations' if fmt == 'sharegpt' else 'messages'}[{i}]"


def _quality(messages: list[dict[str, Any]], fmt: str, rules: QualityRules) -> None:
    roles = [m["role"] for m in messages]
    first_answer = roles.index("assistant")
    if rules.require_user_turn and "user" not in roles[:first_answer]:
        raise RecordError(Reason.NO_USER_TURN, f"{_field(fmt, first_answer, 'assistant')} (assistant) has no "
                                               "user turn before it")
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        if rules.min_answer_chars and not has_answer_chars(m["content"], rules.min_answer_chars):
            raise RecordError(Reason.EMPTY_ANSWER, f"{_field(fmt, i, 'assistant')} has {answer_chars(m['content'])} "
                              f"letters or digits after normalisation (min_answer_chars {rules.min_answer_chars})")
        broken = repetition(m["content"], rules.max_repetition)
        if broken is not None:
            rule, value, limit = broken
            raise RecordError(Reason.DEGENERATE_REPETITION,
                              f"{_field(fmt, i, 'assistant')}: {rule} {value:.2f} > {limit:.2f}")


def to_record(obj: Any, budget: Budget, fmt: str = "auto", rules: QualityRules = _DEFAULT_RULES) -> ChatRecord:
    """Validate a decoded record of format ``fmt`` ("auto": per record); raise ``RecordError`` naming the first
    problem."""
    if fmt == "auto":
        fmt = detect_record(obj) or ""
        if not fmt:
            if not isinstance(obj, dict):
                raise RecordError(Reason.INVALID_SCHEMA,
                                  f"top level is {type(obj).__name__}, expected an object")
            raise RecordError(Reason.INVALID_SCHEMA, "needs 'messages', 'conversations', 'instruction' and "
                                                     "'output', or 'prompt' and 'completion'")
    raw_messages, extra = to_messages(obj, fmt)
    messages: list[dict[str, Any]] = []
    chars = 0
    for i, msg in enumerate(raw_messages):
        # The field's name is only spelled out for an error message (most records have none).
        if not isinstance(msg, dict):
            raise RecordError(Reason.INVALID_SCHEMA, f"{_field(fmt, i, '')} is {type(msg).__name__}, expected "
                                                     "an object")
        role = msg.get("role")
        if role not in ROLES:
            raise RecordError(Reason.UNKNOWN_ROLE, f"{_field(fmt, i, msg.get('role', ''))}.role is {role!r}, "
                                                   f"expected one of {ROLES}")
        content = msg.get("content")
        if not isinstance(content, str):
            raise RecordError(Reason.INVALID_SCHEMA, f"{_field(fmt, i, role)}.content must be a string")
        content = normalize_text(content)
        if not content:
            raise RecordError(Reason.EMPTY_CONTENT, f"{_field(fmt, i, role)} ({role}) has empty content")
        chars += len(content)
        messages.append({**msg, "content": content})
    roles = [m["role"] for m in messages]
    if "assistant" not in roles:
        raise RecordError(Reason.NO_ASSISTANT_TURN, "no message has role 'assistant'")
    if roles[-1] != "assistant":
        raise RecordError(Reason.ASSISTANT_NOT_LAST, f"last message has role {roles[-1]!r}, not 'assistant'")
    _quality(messages, fmt, rules)
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


def parse_object(obj: Any, budget: Budget, fmt: str = "auto", columns: dict[str, str] | None = None,
                 rules: QualityRules = _DEFAULT_RULES, source: str | None = None) -> ChatRecord:
    """A decoded record (a table row, a JSON array element) -> ``ChatRecord``; ``source`` is its JSON text."""
    if source is not None:
        _check_surrogates(source, obj)
    return to_record(apply_columns(obj, columns or {}), budget, fmt, rules)


def parse_line(data: bytes, budget: Budget, fmt: str = "auto", columns: dict[str, str] | None = None,
               rules: QualityRules = _DEFAULT_RULES) -> ChatRecord:
    """Bytes of one JSONL line -> validated ``ChatRecord`` (or ``RecordError``)."""
    text = decode_line(data)
    obj = load_json(text)
    return parse_object(obj, budget, fmt, columns, rules, source=text)
