"""Read a prepared split (``<dir>/data.jsonl`` of chat records) for training and evaluation.

The prepare step has already validated and normalised the records; this reader still checks the shape it
relies on (a list of role/content messages ending with an assistant turn) and names file, line and field
when a record does not fit, because a split may also come from a user's own folder.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneline.llm.data.jsonl import json_lines

DATA_FILE = "data.jsonl"
ROLES = ("system", "user", "assistant")


class DataError(ValueError):
    """A split folder or one of its records is unusable."""


@dataclass(frozen=True)
class Example:
    id: str
    messages: list[dict[str, str]]

    @property
    def prompt(self) -> list[dict[str, str]]:
        return self.messages[:-1]

    @property
    def answer(self) -> str:
        return self.messages[-1]["content"]


@dataclass(frozen=True)
class Split:
    path: Path
    records: list[Example]
    sha256: str


def split_file(folder: Path | str) -> Path:
    folder = Path(folder)
    path = folder / DATA_FILE if folder.is_dir() else folder
    if not path.is_file():
        raise DataError(f"{folder}: expected a folder holding {DATA_FILE} (or a JSONL file)")
    return path


def _parse(path: Path, lineno: int, obj: Any, index: int) -> Example:
    where = f"{path}:{lineno}"
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list) or not obj["messages"]:
        raise DataError(f"{where}: field 'messages' must be a non-empty list")
    for i, msg in enumerate(obj["messages"]):
        if not isinstance(msg, dict) or msg.get("role") not in ROLES or not isinstance(msg.get("content"), str):
            raise DataError(
                f"{where}: messages[{i}] must be {{'role': one of {list(ROLES)}, 'content': str}}, got {msg!r:.120}"
            )
    if obj["messages"][-1]["role"] != "assistant":
        raise DataError(f"{where}: messages[-1].role must be 'assistant' (the answer to learn)")
    messages = [{"role": m["role"], "content": m["content"]} for m in obj["messages"]]
    return Example(id=str(obj.get("id", index)), messages=messages)


def read_split(folder: Path | str, limit: int = 0) -> Split:
    """All records of a split (the first ``limit`` when > 0) and the sha256 of the file's bytes."""
    path = split_file(folder)
    raw = path.read_bytes()
    records: list[Example] = []
    for lineno, obj in json_lines(raw.decode("utf-8").splitlines(), str(path), DataError):
        records.append(_parse(path, lineno, obj, len(records)))
        if limit and len(records) >= limit:
            break
    if not records:
        raise DataError(f"{path}: no records")
    return Split(path=path, records=records, sha256=hashlib.sha256(raw).hexdigest())
