"""The feedback loop: log served requests, store ratings, export highly rated interactions as training data.

Run as: tuneline feedback rate REQUEST_ID 5
        tuneline feedback export --min-rating 4 --out data/feedback.jsonl

- ``RequestLogger`` appends one JSON line per request/response, PII-redacted with
  ``tuneline.data.pii.Redactor`` before anything touches the disk. Files rotate by size: ``requests.jsonl``
  is the live file, ``requests.jsonl.1`` the newest full one, up to ``requests.jsonl.<keep>``.
  Logging is opt-in: ``RequestLogger.from_env()`` returns None unless ``TUNELINE_REQUEST_LOG`` names a file.
- ``RatingStore`` is an append-only JSONL of ``{"id", "rating", "time"}``; a request's newest rating wins.
- ``export`` joins the two and writes chat JSONL records, the pipeline's input format.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneline.data.jsonl import read_jsonl
from tuneline.data.pii import Redactor

ENV_LOG = "TUNELINE_REQUEST_LOG"
ENV_MAX_BYTES = "TUNELINE_REQUEST_LOG_MAX_BYTES"
ENV_KEEP = "TUNELINE_REQUEST_LOG_KEEP"
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_KEEP = 5


class FeedbackError(ValueError):
    """A log, rating file or argument is unusable; the message names the file and line."""


@dataclass(frozen=True)
class LoggedRequest:
    id: str
    time: float
    model: str
    messages: list[dict[str, str]]  # the conversation sent, ending with the user turn
    response: str
    latency_ms: float | None = None
    redactions: dict[str, int] = field(default_factory=dict)

    @property
    def prompt(self) -> str:
        """The text of the user turns: what drift detection compares with the training prompts."""
        return "\n".join(m["content"] for m in self.messages if m["role"] == "user")


# ---------------------------------------------------------------------------------------------- logger


class RequestLogger:
    """Thread-safe, size-rotated JSONL request log. One instance per serving process."""

    def __init__(
        self,
        path: Path | str,
        max_bytes: int = DEFAULT_MAX_BYTES,
        keep: int = DEFAULT_KEEP,
        redact: bool = True,
    ) -> None:
        if max_bytes < 1024:
            raise FeedbackError(f"request log max_bytes must be >= 1024, got {max_bytes}")
        if keep < 0:
            raise FeedbackError(f"request log keep must be >= 0, got {keep}")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.keep = keep
        self.redact = redact
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> RequestLogger | None:
        env = os.environ if environ is None else environ
        path = env.get(ENV_LOG, "").strip()
        if not path:
            return None
        try:
            max_bytes = int(env.get(ENV_MAX_BYTES, DEFAULT_MAX_BYTES))
            keep = int(env.get(ENV_KEEP, DEFAULT_KEEP))
        except ValueError as exc:
            raise FeedbackError(f"{ENV_MAX_BYTES}/{ENV_KEEP} must be integers: {exc}") from None
        return cls(path, max_bytes=max_bytes, keep=keep)

    def log(
        self,
        prompt: str | list[dict[str, str]],
        response: str,
        *,
        model: str = "",
        request_id: str | None = None,
        latency_ms: float | None = None,
    ) -> str:
        """Record one interaction and return its request id (the key a rating refers to).

        ``prompt`` is the user text, or the chat messages sent (ending with a user turn).
        """
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        for i, message in enumerate(messages):
            if (
                not isinstance(message, dict)
                or message.get("role") not in ("system", "user", "assistant")
                or not isinstance(message.get("content"), str)
            ):
                raise FeedbackError(
                    f"messages[{i}] must be {{'role': system|user|assistant, 'content': str}}"
                )
        redactor = Redactor()
        if self.redact:
            messages = [{"role": m["role"], "content": redactor.redact(m["content"])} for m in messages]
            response = redactor.redact(response)
        entry = LoggedRequest(
            id=request_id or uuid.uuid4().hex,
            time=time.time(),
            model=model,
            messages=messages,
            response=response,
            latency_ms=latency_ms,
            redactions=dict(redactor.counts),
        )
        line = (json.dumps(asdict(entry), ensure_ascii=False) + "\n").encode()
        with self._lock:
            size = self.path.stat().st_size if self.path.exists() else 0
            if size and size + len(line) > self.max_bytes:
                self._rotate()
            with self.path.open("ab") as fh:
                fh.write(line)
        return entry.id

    def _rotate(self) -> None:
        if self.keep == 0:
            self.path.unlink(missing_ok=True)
            return
        oldest = self.path.with_name(f"{self.path.name}.{self.keep}")
        oldest.unlink(missing_ok=True)
        for n in range(self.keep - 1, 0, -1):
            src = self.path.with_name(f"{self.path.name}.{n}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{n + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))


def log_files(path: Path | str) -> list[Path]:
    """The live log and its rotated files, oldest first."""
    path = Path(path)
    rotated = []
    for candidate in path.parent.glob(f"{path.name}.*"):
        suffix = candidate.name[len(path.name) + 1 :]
        if suffix.isdigit():
            rotated.append((int(suffix), candidate))
    files = [p for _, p in sorted(rotated, reverse=True)]
    return files + ([path] if path.exists() else [])


def read_requests(path: Path | str) -> Iterator[LoggedRequest]:
    """Every logged request, oldest first; a malformed line raises FeedbackError naming file and line."""
    for file in log_files(path):
        for lineno, obj in read_jsonl(file, FeedbackError):
            try:
                yield LoggedRequest(
                    id=str(obj["id"]),
                    time=float(obj["time"]),
                    model=str(obj.get("model", "")),
                    messages=[{"role": m["role"], "content": m["content"]} for m in obj["messages"]],
                    response=str(obj["response"]),
                    latency_ms=obj.get("latency_ms"),
                    redactions=dict(obj.get("redactions") or {}),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise FeedbackError(f"{file}:{lineno}: not a request record (field {exc})") from None


# ---------------------------------------------------------------------------------------------- ratings


class RatingStore:
    """Request id -> rating 1-5, kept as an append-only JSONL so concurrent raters never rewrite the file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()

    def rate(self, request_id: str, rating: int, comment: str = "") -> None:
        if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
            raise FeedbackError(f"rating must be an integer from 1 to 5, got {rating!r}")
        if not request_id or not request_id.strip():
            raise FeedbackError("request id is empty")
        entry: dict[str, Any] = {"id": request_id, "rating": rating, "time": time.time()}
        if comment:
            entry["comment"] = comment
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, ensure_ascii=False) + "\n")

    def ratings(self) -> dict[str, int]:
        found: dict[str, int] = {}
        if not self.path.exists():
            return found
        for lineno, obj in read_jsonl(self.path, FeedbackError):
            try:
                rating = obj["rating"]
                request_id = str(obj["id"])
            except (KeyError, TypeError):
                raise FeedbackError(f'{self.path}:{lineno}: expected {{"id": ..., "rating": 1-5}}') from None
            if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
                raise FeedbackError(f"{self.path}:{lineno}: field 'rating' must be 1-5, got {rating!r}")
            found[request_id] = rating
        return found


# ---------------------------------------------------------------------------------------------- export


@dataclass(frozen=True)
class ExportResult:
    written: int
    rated: int
    logged: int
    unmatched_ratings: int  # ratings whose request is no longer in the (rotated) log


def export(
    log_path: Path | str,
    ratings_path: Path | str,
    out: Path | str,
    min_rating: int = 4,
    system: str | None = None,
) -> ExportResult:
    """Write interactions rated >= ``min_rating`` as chat JSONL (id, messages, rating, source, model)."""
    if not 1 <= min_rating <= 5:
        raise FeedbackError(f"--min-rating must be 1-5, got {min_rating}")
    ratings = RatingStore(ratings_path).ratings()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = logged = 0
    seen: set[str] = set()
    logged_ids: set[str] = set()
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for request in read_requests(log_path):
            logged += 1
            logged_ids.add(request.id)
            rating = ratings.get(request.id)
            if rating is None or rating < min_rating or request.id in seen or not request.response.strip():
                continue
            seen.add(request.id)
            messages = list(request.messages)
            if system and not any(m["role"] == "system" for m in messages):
                messages.insert(0, {"role": "system", "content": system})
            record = {
                "id": f"feedback-{request.id}",
                "messages": [*messages, {"role": "assistant", "content": request.response}],
                "rating": rating,
                "source": "feedback",
                "model": request.model,
            }
            fh.write(json.dumps(record, ensure_ascii=False) + "\n")
            written += 1
    os.replace(tmp, out)
    unmatched = sum(1 for r in ratings if r not in logged_ids and ratings[r] >= min_rating)
    return ExportResult(written=written, rated=len(ratings), logged=logged, unmatched_ratings=unmatched)
