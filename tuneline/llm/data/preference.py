"""Parse and validate one preference record (``formats.PREFERENCE_FORMATS``) into a ``PreferenceRecord``.

Every preference format is written out in TRL's conversational preference shape, so the preference step
reads one shape whatever came in:

  pairs  {"prompt": [messages], "chosen": [assistant messages], "rejected": [assistant messages], ...extra}
  kto    {"prompt": [messages], "completion": [assistant messages], "label": true|false, ...extra}

(TRL's dataset formats: https://huggingface.co/docs/trl/dataset_formats, "preference" and "unpaired
preference", conversational.) The checks, in order, each naming the field: the prompt's turns (roles,
non-empty content, a user turn, ending on a user turn), each side (assistant turns, not empty:
``empty_side``), for pairs without an explicit prompt the two conversations' shared prompt
(``prompt_mismatch`` names the first turn that differs), chosen differing from rejected
(``chosen_equals_rejected``), the KTO label (``invalid_label``), the answer quality rules on the side that
is trained towards (chosen; a desirable KTO completion) and the length budgets over the prompt and its
longer side. Message text is normalised first, as for chat records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tuneline.llm.data.formats import (
    FIELDS,
    KTO_LABELS,
    PREFERENCE_FORMATS,
    SIGNATURES,
    _sharegpt_messages,
    apply_columns,
    detect_record,
    kind,
)
from tuneline.llm.data.normalize import normalize_text
from tuneline.llm.data.quality import QualityRules, answer_chars, has_answer_chars, repetition
from tuneline.llm.data.reasons import Reason, RecordError
from tuneline.llm.data.records import (
    ROLES,
    Budget,
    ChatRecord,
    _check_surrogates,
    decode_line,
    estimate_tokens,
    load_json,
    parse_object,
)

_DEFAULT_RULES = QualityRules()
_LABEL_TEXT = {"true": True, "1": True, "false": False, "0": False}  # CSV cells carry labels as text


@dataclass(slots=True)
class PreferenceRecord:
    fmt: str
    prompt: list[dict[str, Any]]
    chosen: list[dict[str, Any]] = field(default_factory=list)  # pairs; for kto, the completion
    rejected: list[dict[str, Any]] = field(default_factory=list)  # pairs only
    label: bool | None = None  # kto only
    extra: dict[str, Any] = field(default_factory=dict)
    chars: int = 0

    @property
    def kind(self) -> str:
        return kind(self.fmt)

    def sides(self) -> list[list[dict[str, Any]]]:
        """Every message list of the record (for redaction)."""
        return [self.prompt, self.chosen, self.rejected] if self.kind == "pairs" else [self.prompt, self.chosen]

    def to_json(self) -> dict[str, Any]:
        if self.kind == "pairs":
            return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected, **self.extra}
        return {"prompt": self.prompt, "completion": self.chosen, "label": self.label, **self.extra}


def _messages(value: Any, name: str, *, string_role: str | None = None) -> list[dict[str, Any]]:
    """A message list (or, with ``string_role``, a plain string as one such message), roles checked, content
    normalised; an empty-content turn is kept (empty) for the caller to judge."""
    if isinstance(value, str) and string_role is not None:
        return [{"role": string_role, "content": normalize_text(value)}]
    if isinstance(value, dict) and string_role is not None:
        value = [value]
    if not isinstance(value, list) or not value:
        raise RecordError(Reason.INVALID_SCHEMA, f"'{name}' must be a {'string or ' if string_role else ''}"
                                                 "non-empty list of messages")
    out = []
    for i, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise RecordError(Reason.INVALID_SCHEMA, f"{name}[{i}] is {type(msg).__name__}, expected an object")
        role = msg.get("role")
        if role not in ROLES:
            raise RecordError(Reason.UNKNOWN_ROLE, f"{name}[{i}].role is {role!r}, expected one of {ROLES}")
        content = msg.get("content")
        if not isinstance(content, str):
            raise RecordError(Reason.INVALID_SCHEMA, f"{name}[{i}].content must be a string")
        out.append({**msg, "content": normalize_text(content)})
    return out


def _check_prompt(prompt: list[dict[str, Any]], name: str, rules: QualityRules) -> None:
    for i, m in enumerate(prompt):
        if not m["content"]:
            raise RecordError(Reason.EMPTY_CONTENT, f"{name}[{i}] ({m['role']}) has empty content")
    roles = [m["role"] for m in prompt]
    if rules.require_user_turn and "user" not in roles:
        raise RecordError(Reason.NO_USER_TURN, f"'{name}' has no user turn")
    if roles[-1] == "assistant":
        raise RecordError(Reason.INVALID_SCHEMA, f"'{name}' ends with an assistant turn; the answer belongs in "
                                                 "the chosen/rejected (or completion) side")


def _check_side(side: list[dict[str, Any]], name: str) -> None:
    for i, m in enumerate(side):
        if m["role"] != "assistant":
            raise RecordError(Reason.INVALID_SCHEMA, f"{name}[{i}].role is {m['role']!r}: this side holds only "
                                                     "the answer (assistant turns)")
    if not any(m["content"] for m in side):
        raise RecordError(Reason.EMPTY_SIDE, f"'{name}' is empty after normalisation")


def _split_prompt(chosen: list[dict[str, Any]], rejected: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The prompt two whole conversations share (all but their final turn); ``prompt_mismatch`` otherwise."""
    pc, pr = chosen[:-1], rejected[:-1]
    if not pc:
        raise RecordError(Reason.NO_USER_TURN, "'chosen' has no prompt turns before its answer (and there is no "
                                               "'prompt')")
    for i, (a, b) in enumerate(zip(pc, pr, strict=False)):
        if (a["role"], a["content"]) != (b["role"], b["content"]):
            raise RecordError(Reason.PROMPT_MISMATCH, f"chosen[{i}] and rejected[{i}] differ: the two "
                                                      "conversations must share their prompt")
    if len(pc) != len(pr):
        raise RecordError(Reason.PROMPT_MISMATCH, f"chosen has {len(pc)} prompt turns, rejected {len(pr)}: the "
                                                  "two conversations must share their prompt")
    return pc


def _label(obj: dict[str, Any]) -> tuple[str, bool]:
    key = next(k for k in KTO_LABELS if obj.get(k) is not None)
    value = obj[key]
    if isinstance(value, str):
        value = _LABEL_TEXT.get(value.strip().lower(), value)
    if not isinstance(value, bool):
        raise RecordError(Reason.INVALID_LABEL, f"'{key}' is {value!r}, expected true or false")
    return key, value


def _fields(obj: dict[str, Any], fmt: str) -> tuple[list, list, list, bool | None, tuple[str, str, str]]:
    """(prompt, chosen, rejected, label, (prompt, chosen, rejected field names)) before the checks."""
    if fmt == "openai_preference":
        given = obj.get("input")
        if not isinstance(given, dict):
            raise RecordError(Reason.INVALID_SCHEMA, "'input' must be an object with 'messages'")
        names = ("input.messages", "preferred_output", "non_preferred_output")
        return (_messages(given.get("messages"), names[0]), _messages(obj.get(names[1]), names[1]),
                _messages(obj.get(names[2]), names[2]), None, names)
    if fmt == "sharegpt_pairs":
        turns = obj.get("conversations")
        if not isinstance(turns, list) or not turns:
            raise RecordError(Reason.INVALID_SCHEMA, "'conversations' must be a non-empty list")
        prompt = _messages(_sharegpt_messages(turns), "conversations")
        system = obj.get("system")
        if isinstance(system, str) and system.strip() and prompt[0]["role"] != "system":
            prompt.insert(0, {"role": "system", "content": normalize_text(system)})
        sides = []
        for name in ("chosen", "rejected"):
            value = obj.get(name)
            value = value if isinstance(value, list) else [value] if isinstance(value, dict | str) else value
            if isinstance(value, list) and all(isinstance(v, dict) for v in value):
                value = _sharegpt_messages(value)
            sides.append(_messages(value, name, string_role="assistant"))
        return prompt, sides[0], sides[1], None, ("conversations", "chosen", "rejected")
    if fmt == "pairs":
        chosen = _messages(obj.get("chosen"), "chosen", string_role="assistant")
        rejected = _messages(obj.get("rejected"), "rejected", string_role="assistant")
        if obj.get("prompt") is None:
            prompt = _split_prompt(chosen, rejected)
            return prompt, chosen[len(prompt):], rejected[len(prompt):], None, ("chosen", "chosen", "rejected")
        return (_messages(obj["prompt"], "prompt", string_role="user"), chosen, rejected, None,
                ("prompt", "chosen", "rejected"))
    # kto
    _, label = _label(obj)
    if obj.get("prompt") is not None:
        prompt = _messages(obj["prompt"], "prompt", string_role="user")
        completion = _messages(obj.get("completion"), "completion", string_role="assistant")
        return prompt, completion, [], label, ("prompt", "completion", "")
    if obj.get("messages") is not None:
        turns, name = _messages(obj["messages"], "messages"), "messages"
    else:
        raw = obj.get("conversations")
        if not isinstance(raw, list) or not raw:
            raise RecordError(Reason.INVALID_SCHEMA, "'conversations' must be a non-empty list")
        turns, name = _messages(_sharegpt_messages(raw), "conversations"), "conversations"
    if turns[-1]["role"] != "assistant":
        raise RecordError(Reason.ASSISTANT_NOT_LAST, f"last turn of '{name}' has role {turns[-1]['role']!r}, "
                                                     "not 'assistant'")
    return turns[:-1] or [], turns[-1:], [], label, (name, name, "")


def _quality(side: list[dict[str, Any]], name: str, rules: QualityRules) -> None:
    for i, m in enumerate(side):
        if rules.min_answer_chars and not has_answer_chars(m["content"], rules.min_answer_chars):
            raise RecordError(Reason.EMPTY_ANSWER, f"{name}[{i}] has {answer_chars(m['content'])} letters or "
                              f"digits after normalisation (min_answer_chars {rules.min_answer_chars})")
        broken = repetition(m["content"], rules.max_repetition)
        if broken is not None:
            rule, value, limit = broken
            raise RecordError(Reason.DEGENERATE_REPETITION, f"{name}[{i}]: {rule} {value:.2f} > {limit:.2f}")


def to_preference(obj: Any, budget: Budget, fmt: str, rules: QualityRules = _DEFAULT_RULES) -> PreferenceRecord:
    """Validate a decoded record of preference format ``fmt``; ``RecordError`` naming the first problem."""
    if not isinstance(obj, dict):
        raise RecordError(Reason.INVALID_SCHEMA, f"top level is {type(obj).__name__}, expected an object")
    for key in SIGNATURES.get(fmt, ()):
        if obj.get(key) is None:
            found = detect_record(obj)
            hint = f"; the record looks like {found}, the file is {fmt}" if found else ""
            raise RecordError(Reason.INVALID_SCHEMA, f"'{key}' is missing (needed by the {fmt} format){hint}")
    if fmt == "kto" and not any(obj.get(k) is not None for k in KTO_LABELS):
        raise RecordError(Reason.INVALID_LABEL, "'label' (or 'kto_tag') is missing (needed by the kto format)")
    extra = {k: v for k, v in obj.items() if k not in FIELDS[fmt]}
    if fmt == "openai_preference" and isinstance(obj.get("input"), dict) and "tools" in obj["input"]:
        extra.setdefault("tools", obj["input"]["tools"])
    prompt, chosen, rejected, label, names = _fields(obj, fmt)
    if not prompt:
        raise RecordError(Reason.NO_USER_TURN, f"'{names[0]}' has no prompt turns before the answer")
    _check_prompt(prompt, names[0], rules)
    _check_side(chosen, names[1])
    if fmt != "kto":
        _check_side(rejected, names[2])
        if [m["content"] for m in chosen] == [m["content"] for m in rejected]:
            raise RecordError(Reason.CHOSEN_EQUALS_REJECTED, f"'{names[1]}' and '{names[2]}' are the same text "
                                                             "after normalisation")
    if label is not False:  # a rejected side, or an undesirable completion, may well be degenerate
        _quality(chosen, names[1], rules)
    chars = sum(len(m["content"]) for m in prompt) + max(
        sum(len(m["content"]) for m in side) for side in (chosen, rejected or chosen))
    if budget.max_chars and chars > budget.max_chars:
        raise RecordError(Reason.TOO_MANY_CHARS, f"{chars} characters > max_chars {budget.max_chars} (prompt "
                                                 "and its longer side)")
    if budget.max_tokens and chars > budget.max_tokens:
        tokens = sum(estimate_tokens(m["content"]) for m in prompt) + max(
            sum(estimate_tokens(m["content"]) for m in side) for side in (chosen, rejected or chosen))
        if tokens > budget.max_tokens:
            raise RecordError(Reason.TOO_MANY_TOKENS, f"~{tokens} tokens > max_tokens {budget.max_tokens}")
    return PreferenceRecord(fmt, prompt, chosen, rejected, label, extra, chars)


def parse_any_object(obj: Any, budget: Budget, fmt: str = "auto", columns: dict[str, str] | None = None,
                     rules: QualityRules = _DEFAULT_RULES,
                     source: str | None = None) -> ChatRecord | PreferenceRecord:
    """A decoded record of any format -> ``ChatRecord`` or ``PreferenceRecord``."""
    mapped = apply_columns(obj, columns or {})
    found = detect_record(mapped) if fmt == "auto" else fmt
    if found in PREFERENCE_FORMATS:
        if source is not None:
            _check_surrogates(source, obj)
        return to_preference(mapped, budget, found, rules)
    return parse_object(obj, budget, fmt, columns, rules, source)


def parse_any_line(data: bytes, budget: Budget, fmt: str = "auto", columns: dict[str, str] | None = None,
                   rules: QualityRules = _DEFAULT_RULES) -> ChatRecord | PreferenceRecord:
    """Bytes of one JSONL line of any format -> a validated record (or ``RecordError``)."""
    text = decode_line(data)
    return parse_any_object(load_json(text), budget, fmt, columns, rules, source=text)
