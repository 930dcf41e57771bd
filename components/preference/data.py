"""Read a prepared preference split and encode it with the model's chat template.

A split is prepare's preference output (``tuneline.llm.data.preference``): pairs ``{"prompt", "chosen", "rejected"}``
or KTO records ``{"prompt", "completion", "label"}``, each side a list of messages. Each side is encoded as the
conversation prompt + side with ``tuneline.llm.ml.chat.encode`` (the same template handling as ``train``), and only
the side's own tokens are targets: a multi-turn prompt's earlier assistant turns are context here, not answers
to learn. A sequence longer than ``max_seq_len`` keeps its first tokens; a side with no target token left is
dropped with its record, and counted.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneline.llm.data.jsonl import json_lines
from tuneline.llm.ml.chat import IGNORE, Encoded, TemplateError, encode, prompt_ids
from tuneline.llm.ml.data import ROLES, DataError, Example, split_file


@dataclass(frozen=True)
class PreferenceExample:
    id: str
    prompt: list[dict[str, str]]
    chosen: list[dict[str, str]]  # the KTO completion
    rejected: list[dict[str, str]] | None = None  # pairs only
    label: bool | None = None  # kto only


@dataclass(frozen=True)
class PreferenceSplit:
    path: Path
    kind: str  # "pairs" or "kto"
    records: list[PreferenceExample]
    sha256: str


def _messages(where: str, obj: dict[str, Any], name: str) -> list[dict[str, str]]:
    value = obj.get(name)
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field '{name}' must be a non-empty list of messages")
    for i, msg in enumerate(value):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES or not isinstance(msg.get("content"), str):
            raise DataError(f"{where}: {name}[{i}] must be {{'role': one of {list(ROLES)}, 'content': str}}, "
                            f"got {msg!r:.120}")
    return [{"role": m["role"], "content": m["content"]} for m in value]


def _parse(where: str, obj: Any, index: int) -> PreferenceExample:
    if not isinstance(obj, dict):
        raise DataError(f"{where}: a record must be a JSON object")
    ident = str(obj.get("id", index))
    if "chosen" in obj or "rejected" in obj:
        return PreferenceExample(ident, _messages(where, obj, "prompt"), _messages(where, obj, "chosen"),
                                 _messages(where, obj, "rejected"))
    if "label" in obj:
        if not isinstance(obj["label"], bool):
            raise DataError(f"{where}: field 'label' must be true or false, got {obj['label']!r:.40}")
        return PreferenceExample(ident, _messages(where, obj, "prompt"), _messages(where, obj, "completion"),
                                 label=obj["label"])
    hint = " (a chat record: this split is SFT data, for the train step)" if "messages" in obj else ""
    raise DataError(f"{where}: not a preference record: needs 'prompt' with 'chosen'/'rejected', or 'prompt' with "
                    f"'completion'/'label'{hint}")


def read_preference_split(folder: Path | str, limit: int = 0) -> PreferenceSplit:
    """All records of a preference split (the first ``limit`` when > 0); one kind throughout."""
    path = split_file(folder)
    raw = path.read_bytes()
    records: list[PreferenceExample] = []
    kinds: dict[str, int] = {}
    for lineno, obj in json_lines(raw.decode("utf-8").splitlines(), str(path), DataError):
        record = _parse(f"{path}:{lineno}", obj, len(records))
        kinds.setdefault("kto" if record.label is not None else "pairs", lineno)
        if len(kinds) > 1:
            raise DataError(f"{path}:{lineno}: mixes pairs (first at line {kinds.get('pairs')}) and KTO records "
                            f"(first at line {kinds.get('kto')})")
        records.append(record)
        if limit and len(records) >= limit:
            break
    if not records:
        raise DataError(f"{path}: no records")
    return PreferenceSplit(path, next(iter(kinds)), records, hashlib.sha256(raw).hexdigest())


def encode_side(tokenizer, ident: str, prompt: list[dict[str, str]], side: list[dict[str, str]],
                max_seq_len: int) -> Encoded:
    """Prompt + side, with targets on the side's tokens only; ``TemplateError`` when the template refuses it."""
    full = encode(tokenizer, Example(ident, [*prompt, *side]), max_seq_len)
    if not any(m["role"] == "assistant" for m in prompt):
        return full
    context = len(prompt_ids(tokenizer, Example(ident, [*prompt, {"role": "assistant", "content": ""}])))
    labels = [IGNORE] * min(context, len(full.labels)) + full.labels[context:]
    return Encoded(full.id, full.input_ids, labels, full.truncated)


@dataclass(frozen=True)
class EncodedPreference:
    id: str
    chosen: Encoded  # the KTO completion
    rejected: Encoded | None
    label: bool | None
    prompt: list[dict[str, str]]  # kept for KTO's mismatched (prompt, other completion) sequences
    completion: list[dict[str, str]]


def encode_split(tokenizer, split: PreferenceSplit, max_seq_len: int) -> tuple[list[EncodedPreference], dict]:
    """(encoded records, counts of what was truncated, dropped or refused by the chat template)."""
    out: list[EncodedPreference] = []
    counts = {"examples": len(split.records), "truncated": 0, "dropped": 0, "template_quarantined": 0}
    for r in split.records:
        try:
            sides = [encode_side(tokenizer, r.id, r.prompt, s, max_seq_len)
                     for s in ((r.chosen, r.rejected) if r.rejected is not None else (r.chosen,))]
        except TemplateError:
            counts["template_quarantined"] += 1
            continue
        counts["truncated"] += any(s.truncated for s in sides)
        if any(s.n_targets == 0 for s in sides):
            counts["dropped"] += 1
            continue
        out.append(EncodedPreference(r.id, sides[0], sides[1] if len(sides) > 1 else None, r.label, r.prompt,
                                     r.chosen))
    return out, counts
