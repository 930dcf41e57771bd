"""Read JSONL: numbered byte lines hashed as they stream past (the prepare step), or decoded objects.

Lines are read as bytes and decoded one at a time, so one line of invalid UTF-8 is one rejected record
rather than a crash of the whole file. A UTF-8 byte-order mark at the start of the file is dropped;
"\\r\\n" and "\\n" both end a line. A *blank line* (only whitespace) is not a record: it is counted and
reported, but it is not a record that could be kept or quarantined. Line numbers are 1-based and count
every physical line, blank ones included, so they match what an editor shows.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

_BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True, slots=True)
class RawLine:
    lineno: int
    data: bytes  # the line without its terminator


class LineReader:
    """Iterate over the non-blank lines of ``path``; afterwards ``sha256``, ``lines`` and ``blank_lines``
    describe the whole file."""

    def __init__(self, path: Path | str, stream: BinaryIO | None = None) -> None:
        self.path = Path(path)
        self.stream = stream  # an open (e.g. decompressing) byte stream of ``path``, read instead of it
        self._sha = hashlib.sha256()
        self.lines = 0
        self.blank_lines = 0
        self.bytes = 0

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def __iter__(self) -> Iterator[RawLine]:
        update = self._sha.update
        with self.path.open("rb") if self.stream is None else nullcontext(self.stream) as fh:
            for lineno, line in enumerate(fh, start=1):
                update(line)
                self.bytes += len(line)
                self.lines = lineno
                if lineno == 1 and line.startswith(_BOM):
                    line = line[len(_BOM) :]
                if line.endswith(b"\n"):
                    line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
                if not line.strip():
                    self.blank_lines += 1
                    continue
                yield RawLine(lineno, line)


def escape_bytes(data: bytes) -> str:
    """Text for a line that is not valid UTF-8: valid parts as text, bad bytes as ``\\xNN``."""
    return data.decode("utf-8", errors="backslashreplace")


def json_lines(lines: Iterable[str], where: str, error: type[Exception] = ValueError) -> Iterator[tuple[int, Any]]:
    """(line number, decoded value) of each non-blank line; a line that is not JSON raises `error` with
    `where:line: invalid JSON (...)`."""
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield lineno, json.loads(line)
        except json.JSONDecodeError as exc:
            raise error(f"{where}:{lineno}: invalid JSON ({exc.msg} at column {exc.colno})") from None


def read_jsonl(path: Path | str, error: type[Exception] = ValueError) -> Iterator[tuple[int, Any]]:
    """`json_lines` over a UTF-8 text file (undecodable bytes replaced)."""
    with Path(path).open(encoding="utf-8", errors="replace") as fh:
        yield from json_lines(fh, str(path), error)
