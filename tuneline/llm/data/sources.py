"""Read the records of a dataset file, or of a folder of files, as a stream with their locations.

File types (by extension, optionally followed by ``.gz`` or ``.zst``/``.zstd``):
  ``.jsonl`` ``.ndjson``  JSON Lines; a ``.json`` file whose first non-blank character is not ``[``
                          is read as JSON Lines too, as ``datasets`` does
  ``.json``               a JSON array of records
  ``.csv`` ``.tsv``       a header row, then one record per row; every cell is read as text
  ``.parquet``            one record per row (Parquet compresses internally; no outer compression)
A folder is read file by file in sorted path order, recursively; hidden files (``.gitattributes``...)
and files of other types (``README.md``, ``dataset_info.json`` is a JSON *object* and fails as one) are
listed in ``Dataset.ignored`` rather than silently read or dropped.

Libraries do the decoding: pyarrow decompresses (``pyarrow.input_stream``), parses CSV (``pyarrow.csv``,
streaming blocks) and reads Parquet row groups in batches (``pyarrow.parquet.ParquetFile.iter_batches``), so
memory stays bounded whatever the file size. Two readers are written here, and why:
  * JSON Lines: a numbered line reader over the decompressed byte stream (``jsonl.LineReader``).
    ``pyarrow.json`` and ``datasets`` fail a whole block on one bad line and report no line numbers;
    here one bad line is one quarantined record that names its line.
  * JSON arrays: ``json.JSONDecoder.raw_decode`` over a sliding text buffer, one element at a time.
    The standard library only decodes a whole document (``datasets`` loads the whole file into memory);
    this keeps memory to the largest element and gives each element its row and line.

Every record has a *location*: the file's display name and a line (JSON Lines: 1-based, counting blank
lines, as an editor shows it) or a row (JSON arrays: the element's 1-based index; CSV, Parquet: the 1-based
data row, header excluded). It is
packed into one integer key, ``file index << 40 | number``, so the dedup indexes stay small.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneline.llm.data.jsonl import LineReader
from tuneline.step.digest import file_sha256, path_sha256

COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
KINDS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".tsv": "csv",
         ".parquet": "parquet"}
_NUMBER_BITS = 40
_NUMBER_MASK = (1 << _NUMBER_BITS) - 1
_JSON_CHUNK = 1 << 20
_HEAD_BYTES = 1 << 20  # how much of a file `encoding_problem` and the delimiter check look at
_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"), (codecs.BOM_UTF16_LE, "UTF-16"),
         (codecs.BOM_UTF16_BE, "UTF-16"))
_DELIMITER_NAMES = {";": "';'", "\t": "tab", "|": "'|'", ",": "comma"}


class SourceError(ValueError):
    """A file cannot be read as a dataset at all; the message names the file (and the line where known)."""


@dataclass(slots=True)
class Item:
    """One record as read: raw JSON bytes (JSON Lines, decoded later, in a worker) or a decoded object."""

    key: int
    data: bytes | None = None
    obj: Any = None
    raw: str | None = None  # source text of an array element or a CSV row, kept for the quarantine
    error: str | None = None  # a row the CSV parser refused: why


@dataclass
class SourceFile:
    index: int
    path: Path
    name: str  # as shown in locations: the file name, or the path relative to the input folder
    kind: str  # jsonl, json (array), csv, parquet
    compression: str | None
    unit: str  # "line" or "row"
    sha256: str = ""
    bytes: int = 0
    lines: int = 0
    blank_lines: int = 0
    records: int = 0

    def key(self, number: int) -> int:
        return (self.index << _NUMBER_BITS) | number

    def parquet_rows(self) -> int:
        """The rows of a Parquet file, from its footer (no data is read)."""
        return _open_parquet(self).metadata.num_rows

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"file": self.name, "type": self.kind, "compression": self.compression,
                               "sha256": self.sha256, "bytes": self.bytes, "records": self.records}
        if self.kind == "jsonl":
            out.update(lines=self.lines, blank_lines=self.blank_lines)
        return out


def file_kind(path: Path) -> tuple[str, str | None] | None:
    """(kind, compression) from the file name, or None for a file type that is not read."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = COMPRESSIONS.get(suffixes[-1]) if suffixes else None
    if compression:
        suffixes = suffixes[:-1]
    kind = KINDS.get(suffixes[-1]) if suffixes else None
    if kind is None or (kind == "parquet" and compression):
        return None
    return kind, compression


def _open_text_bytes(path: Path, compression: str | None) -> io.BufferedReader:
    import pyarrow as pa

    # pyarrow's streams are unbuffered for readline; BufferedReader makes line iteration fast.
    return io.BufferedReader(pa.input_stream(str(path), compression=compression), 1 << 20)  # type: ignore[arg-type]


def _head(f: SourceFile) -> bytes:
    with _open_text_bytes(f.path, f.compression) as fh:
        return fh.read(_HEAD_BYTES)


def encoding_problem(f: SourceFile) -> str | None:
    """Why the start of a text file is not UTF-8 (a UTF-16 byte-order mark, binary data, an invalid byte with its
    byte offset), as the one reason a file's records cannot be read; None when it is UTF-8."""
    head = _head(f)
    where = " of the decompressed data" if f.compression else ""
    for bom, name in _BOMS:
        if head.startswith(bom):
            return f"is {name} text (byte-order mark at byte 0), not UTF-8: save it as UTF-8"
    nul = head.find(b"\0")
    if nul >= 0:
        return (f"is not text: a NUL byte at byte offset {nul}{where} (binary data, or UTF-16 without a "
                "byte-order mark); expected UTF-8 JSON Lines, JSON, CSV or a .parquet file")
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head, final=len(head) < _HEAD_BYTES)
    except UnicodeDecodeError as exc:
        line = head.count(b"\n", 0, exc.start) + 1
        return (f"is not UTF-8 text: byte 0x{head[exc.start]:02x} at byte offset {exc.start}{where} (line {line}: "
                f"{exc.reason}); save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)")
    return None


def _delimiter_problem(f: SourceFile, names: list[str], delimiter: str) -> str | None:
    """A header read as one column that another delimiter splits: the file is not separated the way its
    extension says (a `;`-separated .csv, as spreadsheets save it in many locales)."""
    if len(names) != 1:
        return None
    sample = _head(f).decode("utf-8", errors="replace")
    try:
        found = csv.Sniffer().sniff(sample, delimiters=";\t|,").delimiter
    except csv.Error:
        return None
    columns = next(csv.reader([names[0]], delimiter=found), [])
    if found == delimiter or len(columns) < 2:
        return None
    expected = "tab-separated (.tsv)" if delimiter == "\t" else "comma-separated (.csv)"
    fix = ("name it .tsv" if found == "\t" else
           f"save it {'comma' if delimiter == ',' else 'tab'}-separated (tuneline reads .csv files with commas "
           "and .tsv files with tabs)")
    return (f"looks {_DELIMITER_NAMES.get(found, repr(found))}-separated: its header {names[0]!r} is one column "
            f"when read as {expected}, {len(columns)} columns ({', '.join(columns[:6])}) when split at "
            f"{found!r}; {fix}")


class Dataset:
    """The files of ``path`` (a file or a folder) and their records, in order."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.ignored: list[str] = []
        if self.path.is_dir():
            candidates = sorted(p for p in self.path.rglob("*") if p.is_file())
            names = [p.relative_to(self.path).as_posix() for p in candidates]
        else:
            candidates, names = [self.path], [self.path.name]
        self.files: list[SourceFile] = []
        for path_, name in zip(candidates, names, strict=True):
            kind = file_kind(path_)
            hidden = any(part.startswith(".") for part in Path(name).parts)
            if kind is None or (hidden and self.path.is_dir()):
                if self.path.is_dir():
                    self.ignored.append(name)
                    continue
                raise SourceError(
                    f"{name}: unsupported file type; expected .jsonl, .json, .csv, .tsv or .parquet "
                    "(optionally .gz or .zst compressed), or a folder of them")
            self.files.append(SourceFile(len(self.files), path_, name, kind[0], kind[1],
                                         "line" if kind[0] == "jsonl" else "row"))
        if not self.files:
            raise SourceError(f"{self.path}: no .jsonl, .json, .csv, .tsv or .parquet files in this folder"
                              + (f" (ignored: {', '.join(self.ignored[:5])})" if self.ignored else ""))

    def location(self, key: int) -> str:
        f = self.files[key >> _NUMBER_BITS]
        return f"{f.name} {f.unit} {key & _NUMBER_MASK}"

    def where(self, key: int) -> dict[str, Any]:
        f = self.files[key >> _NUMBER_BITS]
        return {"file": f.name, f.unit: key & _NUMBER_MASK}

    def count_records(self) -> int:
        """Records in every file, counted as the prepare step counts its input: every record the readers yield
        (a malformed one too, since prepare quarantines it), no blank line. Parquet answers from its footer."""
        total = 0
        for f in self.files:
            if f.kind == "parquet":
                total += f.parquet_rows()
            else:
                total += sum(1 for _ in self.records(f))
        return total

    def digest(self) -> str:
        """The runner's digest of this path (files this reader ignores included), reusing the digests of the
        files read so far."""
        return path_sha256(self.path, {f.path: f.sha256 for f in self.files if f.sha256})

    def records(self, f: SourceFile, batch_rows: int = 512) -> Iterator[Item]:
        """The records of one file. Counters on ``f`` (bytes, lines, records...) are final afterwards."""
        f.sha256 = file_sha256(f.path)
        f.bytes = f.path.stat().st_size
        reader = {"jsonl": self._jsonl, "json": self._json, "csv": self._csv, "parquet": self._parquet}[f.kind]
        for item in reader(f, batch_rows):
            f.records += 1
            yield item

    # ------------------------------------------------------------------------------------------ readers

    def _jsonl(self, f: SourceFile, batch_rows: int) -> Iterator[Item]:
        with _open_text_bytes(f.path, f.compression) as fh:
            lines = LineReader(f.path, stream=fh)
            for line in lines:
                yield Item(f.key(line.lineno), data=line.data)
            f.lines, f.blank_lines = lines.lines, lines.blank_lines

    def _json(self, f: SourceFile, batch_rows: int) -> Iterator[Item]:
        with _open_text_bytes(f.path, f.compression) as raw:
            text = io.TextIOWrapper(raw, encoding="utf-8-sig")
            try:
                head = text.read(_JSON_CHUNK)
            except UnicodeDecodeError as exc:
                raise SourceError(f"{f.name}: {encoding_problem(f) or f'not valid UTF-8 ({exc.reason})'}") from None
            if head.lstrip().startswith("["):
                yield from self._json_array(f, text, head)
                return
        # Not an array: JSON Lines under a .json name (how `datasets` reads it too).
        f.kind, f.unit = "jsonl", "line"
        yield from self._jsonl(f, batch_rows)

    def _json_array(self, f: SourceFile, text: io.TextIOWrapper, buf: str) -> Iterator[Item]:
        decoder = json.JSONDecoder()
        pos = buf.index("[") + 1
        line = 1 + buf.count("\n", 0, pos)
        row = 0
        eof = False

        def skip(chars: str) -> None:
            nonlocal pos, line, buf, eof
            while True:
                while pos < len(buf) and buf[pos] in chars:
                    line += buf[pos] == "\n"
                    pos += 1
                if pos < len(buf) or eof:
                    return
                more = text.read(_JSON_CHUNK)
                eof = not more
                buf, pos = more, 0

        while True:
            skip(" \t\r\n")
            if pos < len(buf) and buf[pos] == "]":
                return
            if eof:
                raise SourceError(f"{f.name} line {line}: the JSON array is not closed with ']'")
            while True:  # decode one element, reading more text until it is complete
                try:
                    obj, end = decoder.raw_decode(buf, pos)
                    if end == len(buf) and not eof:
                        raise ValueError("element may continue")
                    break
                except ValueError as exc:
                    if eof:
                        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
                        raise SourceError(f"{f.name} line {line}: invalid JSON array element ({detail})") from None
                    more = text.read(_JSON_CHUNK)
                    eof = not more
                    buf = buf[pos:] + more
                    pos = 0
            row += 1
            element = buf[pos:end]
            yield Item(f.key(row), obj=obj, raw=element)
            line += element.count("\n")
            pos = end
            skip(" \t\r\n")
            if pos < len(buf) and buf[pos] == ",":
                pos += 1
            elif pos < len(buf) and buf[pos] == "]":
                return
            else:
                raise SourceError(f"{f.name} line {line}: expected ',' or ']' after array element {row}")

    def _csv(self, f: SourceFile, batch_rows: int) -> Iterator[Item]:
        import pyarrow as pa
        import pyarrow.csv as pacsv

        delimiter = "\t" if f.path.name.lower().split(".")[-2 if f.compression else -1] == "tsv" else ","
        with _open_text_bytes(f.path, f.compression) as fh:
            header = fh.readline().decode("utf-8-sig", errors="replace")
        names = next(csv.reader([header], delimiter=delimiter), [])
        if not names or not any(n.strip() for n in names):
            return
        problem = _delimiter_problem(f, names, delimiter)
        if problem:
            raise SourceError(f"{f.name}: {problem}")
        invalid: list[tuple[int, str, str]] = []

        def on_invalid(row: Any) -> str:
            # ``number`` is the physical row, the header being row 1 (known because use_threads=False).
            invalid.append((max((row.number or 0) - 1, 0), row.text,
                            f"{row.actual_columns} cells where the header has {row.expected_columns}"))
            return "skip"

        stream = pa.input_stream(str(f.path), compression=f.compression)  # type: ignore[arg-type]
        try:
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(use_threads=False, block_size=4 << 20, encoding="utf8"),
                parse_options=pacsv.ParseOptions(delimiter=delimiter, newlines_in_values=True,
                                                 invalid_row_handler=on_invalid),
                convert_options=pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()),
                                                     strings_can_be_null=False, quoted_strings_can_be_null=False),
            )
            yield from self._csv_rows(f, reader, invalid)
        except pa.ArrowInvalid as exc:
            # pyarrow refuses a whole file for one byte that is not UTF-8 ("CSV conversion error to string:
            # invalid UTF8 data"), with no byte offset: say where, or at least what to check.
            problem = encoding_problem(f) if "UTF8" in str(exc) else None
            raise SourceError(f"{f.name}: {problem or f'cannot be read as CSV ({exc})'}") from None

    def _csv_rows(self, f: SourceFile, reader: Any, invalid: list[tuple[int, str, str]]) -> Iterator[Item]:
        row = 0
        skipped: set[int] = set()
        for batch in reader:
            for number, text, why in invalid:
                skipped.add(number)
                yield Item(f.key(number), raw=text, error=why)
            invalid.clear()
            for record in batch.to_pylist():
                row += 1
                while row in skipped:
                    row += 1
                yield Item(f.key(row), obj=record)
        for number, text, why in invalid:
            yield Item(f.key(number), raw=text, error=why)

    def _parquet(self, f: SourceFile, batch_rows: int) -> Iterator[Item]:
        row = 0
        for batch in _open_parquet(f).iter_batches(batch_size=batch_rows):
            for record in batch.to_pylist():
                row += 1
                yield Item(f.key(row), obj=record)


def _open_parquet(f: SourceFile) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(f.path)
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError for a file that is not Parquet
        raise SourceError(f"{f.name}: not a readable Parquet file ({exc})") from None


def raw_text(item: Item) -> str:
    """The record's source text for the quarantine (JSON for a table row)."""
    if item.raw is not None:
        return item.raw
    return json.dumps(item.obj, ensure_ascii=False, default=str)
