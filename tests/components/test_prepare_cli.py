"""The prepare component as the runner calls it: a subprocess with command-line flags."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
COMPONENT = REPO / "components" / "prepare" / "component.yaml"


def prepare(tmp: Path, raw: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    outs = [f"--{name}-out" for name in ("train", "validation", "test", "report")]
    args = [
        a
        for name, flag in zip(("train", "validation", "test", "report"), outs, strict=True)
        for a in (flag, str(tmp / name))
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "components.prepare", "--raw", str(raw), *args, *extra],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )


def line(user: str, answer: str = "ok", **extra) -> str:
    return json.dumps(
        {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}], **extra}
    )


def test_end_to_end_on_small_file(tmp_path):
    raw = tmp_path / "raw.jsonl"
    rows = [line(f"question number {i} about my order", id=i) for i in range(30)] + ["{oops", line("", "x")]
    raw.write_text("\n".join(rows) + "\n")
    proc = prepare(
        tmp_path,
        raw,
        "--validation-ratio",
        "0.2",
        "--test-ratio",
        "0.2",
        "--redact-pii",
        "false",
        "--near-dup-threshold",
        "0.9",
    )
    assert proc.returncode == 0, proc.stderr
    card = json.loads((tmp_path / "report" / "data_card.json").read_text())
    assert card["counts"]["kept"] == 30 and card["counts"]["quarantined"] == 2
    assert card["parameters"]["redact_pii"] is False and card["parameters"]["near_dup_threshold"] == 0.9
    for split in ("train", "validation", "test"):
        assert (tmp_path / split / "data.jsonl").is_file()
    assert (tmp_path / "report" / "data_card.md").is_file()
    assert "kept 30" in proc.stderr


def test_missing_input_names_the_file(tmp_path):
    proc = prepare(tmp_path, tmp_path / "nope.jsonl")
    assert proc.returncode == 2
    assert "nope.jsonl" in proc.stderr and "not found" in proc.stderr


def test_zero_survivors_fail_with_reasons(tmp_path):
    raw = tmp_path / "bad.jsonl"
    raw.write_text("{broken\n" + json.dumps({"messages": [{"role": "user", "content": "hi"}]}) + "\n")
    proc = prepare(tmp_path, raw)
    assert proc.returncode == 1
    assert (
        "bad.jsonl" in proc.stderr
        and "invalid_json 1" in proc.stderr
        and "no_assistant_turn 1" in proc.stderr
    )
    assert (tmp_path / "report" / "quarantine.jsonl").read_text().count("\n") == 2


def test_bad_boolean_is_a_usage_error(tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text(line("hi") + "\n")
    proc = prepare(tmp_path, raw, "--redact-pii", "maybe")
    assert proc.returncode == 2 and "input 'redact_pii': 'maybe' is not a boolean" in proc.stderr


def test_component_yaml_declares_the_interface():
    spec = yaml.safe_load(COMPONENT.read_text())
    assert spec["name"] == "prepare" and spec["environment"] == "train-cpu"
    assert {k: v["type"] for k, v in spec["outputs"].items()} == {
        "train": "uri_folder",
        "validation": "uri_folder",
        "test": "uri_folder",
        "report": "uri_folder",
    }
    assert spec["inputs"]["raw"]["type"] == "uri_file"
    assert spec["inputs"]["near_dup_threshold"] == {
        **spec["inputs"]["near_dup_threshold"],
        "type": "number",
        "min": 0,
        "max": 1,
        "default": 0.85,
    }
