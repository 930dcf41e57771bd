"""Hostile YAML is refused with a clear message and bounded memory (bench/spec_bench.py times it)."""

from __future__ import annotations

import resource
from pathlib import Path

import pytest

from tuneline.spec import SpecError
from tuneline.spec.yamlsafe import MAX_BYTES, load_yaml, load_yaml_text


def refused(text_or_path, match: str) -> None:
    with pytest.raises(SpecError, match=match) as info:
        if isinstance(text_or_path, Path):
            load_yaml(text_or_path)
        else:
            load_yaml_text(text_or_path, "hostile.yaml")
    assert all(p.line >= 1 and p.col >= 1 for p in info.value.problems)


def test_alias_bomb_is_refused_fast_and_small():
    levels = ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 10):  # 10**10 nodes once expanded
        levels.append(f"{chr(97 + i)}: &{chr(97 + i)} [" + ", ".join([f"*{chr(96 + i)}"] * 10) + "]")
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    refused("\n".join(levels), "alias bomb")
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mb < 200


def test_oversized_file_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.yaml"
    with path.open("wb") as fh:
        fh.truncate(MAX_BYTES + 1)
    refused(path, "limited to")


DEEP_FLOW = "a: " + "[" * 5000 + "]" * 5000
DEEP_BLOCK = "a:\n" + "".join(" " * i + "- \n" for i in range(200))


@pytest.mark.parametrize("text", [DEEP_FLOW, DEEP_BLOCK])
def test_deep_nesting_is_refused(text):
    refused(text, "nesting deeper than")


def test_invalid_utf8_names_the_position(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"name: ok\ndescription: caf\xe9\n")
    with pytest.raises(SpecError) as info:
        load_yaml(path)
    (problem,) = info.value.problems
    assert (problem.line, problem.col) == (2, 17)
    assert "not valid UTF-8 (byte 0xe9)" in problem.message


def test_bom_and_crlf_are_accepted(tmp_path):
    path = tmp_path / "windows.yaml"
    path.write_bytes("\ufeffname: ok\r\nsteps:\r\n  a: 1\r\n".encode())
    loaded = load_yaml(path)
    assert loaded.data == {"name": "ok", "steps": {"a": 1}}
    assert loaded.where(("steps", "a")) == (3, 6)


def test_syntax_error_has_a_position():
    with pytest.raises(SpecError) as info:
        load_yaml_text("a: [1, 2\nb: 3\n", "broken.yaml")
    assert str(info.value).startswith("broken.yaml:")
    assert "invalid YAML" in str(info.value)


def test_merge_keys_still_work():
    loaded = load_yaml_text("base: &b {cpu: 1}\ngpu:\n  <<: *b\n  gpus: 1\n", "merge.yaml")
    assert loaded.data["gpu"] == {"cpu": 1, "gpus": 1}


def test_non_mapping_document_is_a_problem(tmp_path, cli):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    code, _, err = cli("validate", str(path))
    assert code == 2 and "expected a mapping at the top of the file, got list" in err
