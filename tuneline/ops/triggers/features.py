"""Cheap per-prompt features for drift detection, and readers for the prompts of a dataset.

The features need no tokenizer and no model, so a check over thousands of requests takes milliseconds:
character count, word count, share of digits and share of non-ASCII characters.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from ...llm.data.jsonl import read_jsonl

FEATURES = ("chars", "words", "digit_share", "non_ascii_share")


class DataFileError(ValueError):
    """A dataset file cannot be read; the message names file and line."""


def text_features(text: str) -> tuple[float, float, float, float]:
    n = len(text)
    if n == 0:
        return 0.0, 0.0, 0.0, 0.0
    digits = sum(ch.isdigit() for ch in text)
    non_ascii = sum(ord(ch) > 127 for ch in text)
    return float(n), float(len(text.split())), digits / n, non_ascii / n


def feature_matrix(texts: Iterable[str]) -> dict[str, np.ndarray]:
    rows = np.array([text_features(t) for t in texts], dtype=float).reshape(-1, len(FEATURES))
    return {name: rows[:, i] for i, name in enumerate(FEATURES)}


def record_prompt(obj: object) -> str:
    """The user text of a chat or prompt/completion record ('' when it has none)."""
    if not isinstance(obj, dict):
        return ""
    if isinstance(obj.get("messages"), list):
        return "\n".join(
            m["content"]
            for m in obj["messages"]
            if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str)
        )
    prompt = obj.get("prompt")
    return prompt if isinstance(prompt, str) else ""


def dataset_prompts(path: Path | str) -> list[str]:
    """User prompts of a chat JSONL file (or of ``data.jsonl`` in a split folder)."""
    path = Path(path)
    if path.is_dir():
        path = path / "data.jsonl"
    if not path.is_file():
        raise DataFileError(f"{path}: dataset file not found")
    prompts = (record_prompt(obj) for _, obj in read_jsonl(path, DataFileError))
    return [text for text in prompts if text]
