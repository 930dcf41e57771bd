"""The common fine-tuning record formats, their detection, column mapping and conversion to chat messages.

  chat               {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}
                     (OpenAI and Azure ML chat-completion fine-tuning)
  sharegpt           {"conversations": [{"from": "human"|"gpt"|"system", "value": "..."}, ...]}
                     ("user"/"assistant" are accepted as ``from`` too, and role/content keys per turn)
  alpaca             {"instruction": "...", "input": "..."?, "output": "...", "system": "..."?}
                     -> user: instruction, then a blank line and the input when there is one
  prompt_completion  {"prompt": "...", "completion": "...", "system": "..."?}

Preference formats (converted by ``preference``, written as TRL's conversational preference records):

  pairs              {"prompt": str | [messages], "chosen": str | [messages], "rejected": str | [messages]}
                     (TRL; without "prompt", chosen and rejected are whole conversations sharing the prompt)
  sharegpt_pairs     {"conversations": [{"from", "value"}...], "chosen": {"from", "value"}, "rejected": {...}}
                     (LLaMA-Factory's ranking data)
  openai_preference  {"input": {"messages": [...]}, "preferred_output": [messages],
                      "non_preferred_output": [messages]}  (OpenAI preference fine-tuning)
  kto                {"messages" | "conversations" | "prompt"+"completion", "label" | "kto_tag": bool}
                     (TRL's unpaired preference; LLaMA-Factory's kto_tag column)

A preference record is recognised before the SFT format it extends (``conversations`` + ``chosen`` is a pair,
not a ShareGPT conversation). A dataset is one kind throughout: SFT, pairs or kto.

``--columns prompt=text,completion=ground_truth`` renames a file's own columns to these field names first
(Azure ML's text-generation sample has ``text`` and ``ground_truth``); any field above can be mapped,
``system`` included. A mapped source column is consumed; every other key passes through to the output.

Detection is per file, from its first ``SAMPLE`` records: the format whose fields the most records carry.
A file where no sampled record fits any format, or where a second format reaches ``MIXED_SHARE`` of the
sample, is refused with one error naming the file (a mixed file would otherwise be quarantined record by
record for the wrong reason). A stray record of another format is quarantined, naming the missing field.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from tuneline.llm.data.reasons import Reason, RecordError

SFT_FORMATS = ("chat", "sharegpt", "alpaca", "prompt_completion")
PAIR_FORMATS = ("pairs", "sharegpt_pairs", "openai_preference")
PREFERENCE_FORMATS = (*PAIR_FORMATS, "kto")
FORMATS = (*SFT_FORMATS, *PREFERENCE_FORMATS)
FORMAT_CHOICES = ("auto", *FORMATS)
KTO_LABELS = ("label", "kto_tag")
# The fields whose presence marks a format, in detection order: preference formats first, since each extends
# an SFT one with its own fields.
SIGNATURES: dict[str, tuple[str, ...]] = {
    "openai_preference": ("input", "preferred_output", "non_preferred_output"),
    "sharegpt_pairs": ("conversations", "chosen", "rejected"),
    "pairs": ("chosen", "rejected"),
    "chat": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "output"),
    "prompt_completion": ("prompt", "completion"),
}
FIELDS: dict[str, tuple[str, ...]] = {
    "chat": ("messages",),
    "sharegpt": ("conversations",),
    "alpaca": ("instruction", "input", "output", "system"),
    "prompt_completion": ("prompt", "completion", "system"),
    "openai_preference": ("input", "preferred_output", "non_preferred_output"),
    "sharegpt_pairs": ("conversations", "chosen", "rejected", "system"),
    "pairs": ("prompt", "chosen", "rejected"),
    "kto": ("messages", "conversations", "prompt", "completion", *KTO_LABELS),
}
MAPPABLE = ("messages", "conversations", "instruction", "input", "output", "prompt", "completion", "system",
            "chosen", "rejected", "preferred_output", "non_preferred_output", *KTO_LABELS)
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                  "system": "system"}
SAMPLE = 200
MIXED_SHARE = 0.1


class FormatError(ValueError):
    """A file's format cannot be told, or the options are contradictory; the message names the file."""


def parse_columns(text: str) -> dict[str, str]:
    """``"prompt=text,completion=ground_truth"`` -> {"prompt": "text", "completion": "ground_truth"}."""
    mapping: dict[str, str] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        target, sep, source = (s.strip() for s in part.partition("="))
        if not sep or not target or not source:
            raise FormatError(f"--columns: '{part}' is not FIELD=COLUMN (e.g. prompt=text)")
        if target not in MAPPABLE:
            raise FormatError(f"--columns: '{target}' is not a field of any format; one of {', '.join(MAPPABLE)}")
        if target in mapping:
            raise FormatError(f"--columns: '{target}' is mapped twice")
        mapping[target] = source
    return mapping


def apply_columns(obj: Any, columns: dict[str, str]) -> Any:
    if not columns or not isinstance(obj, dict):
        return obj
    sources = set(columns.values())
    out = {k: v for k, v in obj.items() if k not in sources}
    for target, source in columns.items():
        if source in obj:
            out[target] = obj[source]
    return out


def _present(obj: dict[str, Any], key: str) -> bool:
    return obj.get(key) is not None


def kind(fmt: str) -> str:
    """What a format trains: "sft", "pairs" (DPO-style) or "kto" (unpaired, labelled)."""
    return "kto" if fmt == "kto" else "pairs" if fmt in PAIR_FORMATS else "sft"


def detect_record(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    if any(_present(obj, k) for k in KTO_LABELS) and (
            _present(obj, "messages") or _present(obj, "conversations") or _present(obj, "prompt")):
        return "kto"
    for name, keys in SIGNATURES.items():
        if all(_present(obj, k) for k in keys):
            return name
    return None


def detect_file(name: str, samples: list[tuple[str, Any]], columns: dict[str, str]) -> str:
    """The format of a file from (location, decoded record) samples; ``FormatError`` when it cannot tell."""
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    for where, obj in samples:
        fmt = detect_record(obj)
        if fmt is not None:
            counts[fmt] += 1
            first.setdefault(fmt, where)
    if not samples:
        return "chat"  # an empty file: nothing to convert
    from tuneline.step.args import how_to_set  # the hint names --set STEP.INPUT under `tuneline run`

    mapped = f" after {how_to_set('columns', ','.join(f'{k}={v}' for k, v in columns.items()))}" if columns else ""
    if not counts:
        keys = Counter(k for _, obj in samples if isinstance(obj, dict) for k in obj)
        seen = ", ".join(k for k, _ in keys.most_common(8)) or "none (records are not JSON objects)"
        # An example built from the file's own keys, in their order: the likely question, then the answer.
        own = [k for k, _ in keys.most_common(8) if k not in MAPPABLE][:2]
        example = f"prompt={own[0]},completion={own[1]}" if len(own) == 2 else "prompt=text,completion=ground_truth"
        raise FormatError(
            f"{name}: cannot tell the record format{mapped}: none of the first {len(samples)} records has "
            "'messages' (chat), 'conversations' (sharegpt), 'instruction'+'output' (alpaca), "
            "'prompt'+'completion' (prompt_completion), 'chosen'+'rejected' (pairs), "
            "'preferred_output'+'non_preferred_output' (openai_preference) or a 'label' (kto); "
            f"their keys: {seen}. Map your keys to these fields, e.g. "
            f"{how_to_set('columns', example)}, and/or name the format with "
            f"{how_to_set('format', 'FORMAT')} ({', '.join(FORMATS)})")
    (top, n), *rest = counts.most_common()
    mixed = [(fmt, k) for fmt, k in rest if k >= MIXED_SHARE * len(samples)]
    if mixed:
        parts = ", ".join(f"{fmt} {k} (first at {first[fmt]})" for fmt, k in [(top, n), *mixed])
        raise FormatError(
            f"{name}: mixes record formats in its first {len(samples)} records{mapped}: {parts}. Split the file "
            f"by format, or choose one with {how_to_set('format', top)} (records of the others are quarantined)")
    return top


def _text(obj: dict[str, Any], key: str, fmt: str, *, required: bool) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            missing = "missing" if key not in obj else "null"
            raise RecordError(Reason.INVALID_SCHEMA, f"'{key}' is {missing} (needed by the {fmt} format)")
        return None
    if not isinstance(value, str):
        raise RecordError(Reason.INVALID_SCHEMA, f"'{key}' must be a string, got {type(value).__name__}")
    return value


def _turns(obj: dict[str, Any], key: str, fmt: str) -> list[Any]:
    value = obj.get(key)
    if value is None:
        found = detect_record(obj)
        hint = f"; the record looks like {found}, the file is {fmt}" if found else ""
        raise RecordError(Reason.INVALID_SCHEMA, f"'{key}' is missing (needed by the {fmt} format){hint}")
    if not isinstance(value, list) or not value:
        raise RecordError(Reason.INVALID_SCHEMA, f"'{key}' must be a non-empty list")
    return value


def _sharegpt_messages(turns: list[Any]) -> list[Any]:
    messages: list[Any] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RecordError(Reason.INVALID_SCHEMA,
                              f"conversations[{i}] is {type(turn).__name__}, expected an object")
        speaker_key = "from" if "from" in turn else "role"
        speaker = turn.get(speaker_key)
        role = SHAREGPT_ROLES.get(speaker) if isinstance(speaker, str) else None
        if role is None:
            raise RecordError(Reason.UNKNOWN_ROLE, f"conversations[{i}].{speaker_key} is {speaker!r}, expected "
                                                   f"one of {tuple(SHAREGPT_ROLES)}")
        text_key = "value" if "value" in turn else "content"
        value = turn.get(text_key)
        if not isinstance(value, str):
            raise RecordError(Reason.INVALID_SCHEMA, f"conversations[{i}].{text_key} must be a string")
        messages.append({"role": role, "content": value})
    return messages


def to_messages(obj: Any, fmt: str) -> tuple[list[Any], dict[str, Any]]:
    """(raw chat messages, passthrough fields) of one record in format ``fmt``; ``RecordError`` naming the
    field that does not fit. Messages are validated and normalised by ``records.to_record``."""
    if not isinstance(obj, dict):
        raise RecordError(Reason.INVALID_SCHEMA, f"top level is {type(obj).__name__}, expected an object")
    extra = {k: v for k, v in obj.items() if k not in FIELDS[fmt]}
    if fmt == "chat":
        return _turns(obj, "messages", fmt), extra
    if fmt == "sharegpt":
        return _sharegpt_messages(_turns(obj, "conversations", fmt)), extra
    system = _text(obj, "system", fmt, required=False)
    if fmt == "alpaca":
        instruction = _text(obj, "instruction", fmt, required=True)
        given = _text(obj, "input", fmt, required=False)
        user = f"{instruction}\n\n{given}" if given and given.strip() else instruction
        answer = _text(obj, "output", fmt, required=True)
    else:
        user = _text(obj, "prompt", fmt, required=True)
        answer = _text(obj, "completion", fmt, required=True)
    messages: list[Any] = [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    # An empty system column (a CSV cell, a null Parquet value) means "no system prompt", not an empty one.
    if system is not None and system.strip():
        messages.insert(0, {"role": "system", "content": system})
    return messages, extra
