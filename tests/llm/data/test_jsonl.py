import hashlib

from tuneline.llm.data.jsonl import LineReader, escape_bytes


def test_bom_crlf_blank_lines_and_hash(tmp_path):
    data = b'\xef\xbb\xbf{"a": 1}\r\n\r\n   \n{"b": 2}\n\xff\n{"c": 3}'
    path = tmp_path / "x.jsonl"
    path.write_bytes(data)
    reader = LineReader(path)
    got = [(line.lineno, line.data) for line in reader]
    assert got == [(1, b'{"a": 1}'), (4, b'{"b": 2}'), (5, b"\xff"), (6, b'{"c": 3}')]
    assert (reader.lines, reader.blank_lines, reader.bytes) == (6, 2, len(data))
    assert reader.sha256 == hashlib.sha256(data).hexdigest()


def test_escape_bytes_keeps_valid_text():
    assert escape_bytes(b"ok \xff caf\xc3\xa9") == "ok \\xff café"


def test_json_lines_skip_blank_lines_and_name_a_bad_one(tmp_path):
    import pytest

    from tuneline.llm.data.jsonl import read_jsonl

    path = tmp_path / "x.jsonl"
    path.write_text('{"a": 1}\n\n[2]\n{oops\n')
    rows = read_jsonl(path, KeyError)
    assert next(rows) == (1, {"a": 1}) and next(rows) == (3, [2])
    with pytest.raises(KeyError, match=r"x.jsonl:4: invalid JSON"):
        next(rows)
