"""What the endpoint keeps of its traffic: the request log and the ratings users give its answers.

- ``RequestLogger`` appends one JSON line per request/response, PII-redacted with
  ``tuneline.llm.data.pii.LogRedactor`` before anything touches the disk. Files rotate by size: ``requests.jsonl``
  is the live file, ``requests.jsonl.1`` the newest full one, up to ``requests.jsonl.<keep>``.
  Logging is opt-in: ``RequestLogger.from_env()`` returns None unless ``TUNELINE_REQUEST_LOG`` names a file.
- ``RatingStore`` is an append-only JSONL of ``{"id", "rating", "time", "comment"?, "correction"?}``; a
  request's newest rating wins, correction included. Ratings through the endpoint (``once=True``) are one per
  request, by the token that made the request (``by``: a digest of it, never the token), for a request the
  server logged; comments and corrections are bounded and redacted like the log.

Identity: the local endpoint has one bearer token, so every holder of it is one client; ``by`` keeps a
rating tied to the token in use when the request was served (a rotated token cannot rate older requests).
Files are created 0600 in 0700 folders: they hold what users typed. The export of both as training data is
``tuneline.ops.feedback``; the retraining triggers read them too.
"""


from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tuneline.llm.data.jsonl import read_jsonl
from tuneline.llm.data.pii import LogRedactor
from tuneline.settings import REQUEST_LOG_ENV

ENV_LOG = REQUEST_LOG_ENV
RATINGS_FILE = "ratings.jsonl"  # the endpoint's rating store, beside the request log it rates against
ENV_MAX_BYTES = "TUNELINE_REQUEST_LOG_MAX_BYTES"
ENV_KEEP = "TUNELINE_REQUEST_LOG_KEEP"
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_KEEP = 5
MAX_COMMENT_CHARS = 2000
MAX_CORRECTION_CHARS = 16_000  # an answer, not a remark: room for a long one, still a bounded line
PENDING_MAX_BYTES = 4 * 1024 * 1024  # request-log lines held in memory while the disk is full


def token_digest(token: str) -> str:
    """Who made a request, as logged: enough to tell tokens apart, useless for authenticating."""
    return hashlib.sha256(token.encode()).hexdigest()[:16]


def _private_parent(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.chmod(path.parent, 0o700)


def _append(path: Path, data: bytes) -> None:
    """Append whole lines or nothing: a write cut short by a full disk is taken back, so a reader never
    meets half a JSON line."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        size = os.fstat(fd).st_size
        try:
            written = os.write(fd, data)
        except OSError:
            os.ftruncate(fd, size)
            raise
        if written != len(data):
            os.ftruncate(fd, size)
            raise OSError(errno.ENOSPC, f"{path}: only {written} of {len(data)} bytes written")
    finally:
        os.close(fd)


class FeedbackError(ValueError):
    """A log, rating file or argument is unusable; the message names the file and line."""


class AlreadyRated(FeedbackError):
    """The endpoint takes one rating per request."""


@dataclass(frozen=True)
class LoggedRequest:
    id: str
    time: float
    model: str
    messages: list[dict[str, str]]  # the conversation sent, ending with the user turn
    response: str
    latency_ms: float | None = None
    redactions: dict[str, int] = field(default_factory=dict)
    by: str = ""  # token_digest of the token that made the request ("" when not served by the endpoint)

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
        self._pending: deque[bytes] = deque()  # lines not yet written (a full disk); see _flush
        self.write_errors = 0
        self.dropped = 0
        self.last_error = ""
        _private_parent(self.path)

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
        by: str = "",
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
        redactor = LogRedactor()
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
            by=by,
        )
        record = asdict(entry)
        if not record["by"]:
            del record["by"]
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
        with self._lock:
            self._pending.append(line)
            self._flush()
        return entry.id

    def _flush(self) -> None:
        """Write the pending lines, oldest first. A full disk (or a file size limit) keeps them pending, up
        to PENDING_MAX_BYTES, and they are written with the next line once there is room: the request was
        answered all the same; past that bound the oldest are dropped and counted in `dropped`."""
        while self._pending:
            line = self._pending[0]
            try:
                size = self.path.stat().st_size if self.path.exists() else 0
                if size and size + len(line) > self.max_bytes:
                    self._rotate()
                _append(self.path, line)
            except OSError as exc:
                self.write_errors += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                while sum(len(x) for x in self._pending) > PENDING_MAX_BYTES:
                    self._pending.popleft()
                    self.dropped += 1
                return
            self._pending.popleft()

    @property
    def pending(self) -> int:
        return len(self._pending)

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
                    by=str(obj.get("by", "")),
                )
            except (KeyError, TypeError, ValueError) as exc:
                raise FeedbackError(f"{file}:{lineno}: not a request record (field {exc})") from None


# ---------------------------------------------------------------------------------------------- ratings


@dataclass(frozen=True)
class Rating:
    """A request's newest rating: a re-rating replaces the whole judgement, its correction included."""

    rating: int
    by: str = ""  # token digest of the rater ("" for an operator's rating)
    correction: str = ""  # the answer the rater says was right ("" for none), redacted like the log


class RatingStore:
    """Request id -> rating 1-5, kept as an append-only JSONL so concurrent raters never rewrite the file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._rated: set[str] | None = None  # ids rated once through the endpoint, loaded on first use

    def rate(self, request_id: str, rating: int, comment: str = "", *, once: bool = False, by: str = "",
             correction: str = "") -> None:
        """Append a rating. `once`: refuse a second rating of the same request (the endpoint's rule);
        `by`: the rater's token digest, checked against the request's at export; `correction`: the answer
        that should have been served, a preference pair's chosen side at export."""
        if isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5:
            raise FeedbackError(f"rating must be an integer from 1 to 5, got {rating!r}")
        if not request_id or not request_id.strip():
            raise FeedbackError("request id is empty")
        if not isinstance(comment, str) or len(comment) > MAX_COMMENT_CHARS:
            raise FeedbackError(f"comment must be a string of at most {MAX_COMMENT_CHARS} characters")
        if not isinstance(correction, str) or len(correction) > MAX_CORRECTION_CHARS:
            raise FeedbackError(f"correction must be a string of at most {MAX_CORRECTION_CHARS} characters")
        if correction and not correction.strip():
            raise FeedbackError("correction is blank: give the answer that should have been served, or none")
        entry: dict[str, Any] = {"id": request_id, "rating": rating, "time": time.time()}
        if comment:
            entry["comment"] = LogRedactor().redact(comment)
        if correction:
            entry["correction"] = LogRedactor().redact(correction)
        if by:
            entry["by"] = by
        _private_parent(self.path)
        with self._lock:
            if once:
                if self._rated is None:
                    self._rated = {r for r, _ in self._entries() if r} if self.path.exists() else set()
                if request_id in self._rated:
                    raise AlreadyRated(f"request {request_id} is already rated")
                self._rated.add(request_id)
            _append(self.path, (json.dumps(entry, ensure_ascii=False) + "\n").encode())

    def _entries(self) -> Iterator[tuple[str, dict]]:
        for _, obj in read_jsonl(self.path, FeedbackError):
            yield (str(obj.get("id", "")) if isinstance(obj, dict) else ""), obj

    def raters(self) -> dict[str, str]:
        """Request id -> the token digest of its newest rating ("" for an operator's rating)."""
        return {rid: r.by for rid, r in self.entries().items()}

    def ratings(self) -> dict[str, int]:
        return {rid: r.rating for rid, r in self.entries().items()}

    def entries(self) -> dict[str, Rating]:
        """Request id -> its newest rating; a malformed line raises FeedbackError naming file, line and field."""
        found: dict[str, Rating] = {}
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
            correction = obj.get("correction", "")
            if not isinstance(correction, str):
                raise FeedbackError(f"{self.path}:{lineno}: field 'correction' must be a string")
            found[request_id] = Rating(rating, str(obj.get("by", "")), correction)
        return found
