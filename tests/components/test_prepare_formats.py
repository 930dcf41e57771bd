"""Bring-your-own data: the common fine-tuning formats and file types, column mapping and quality rules,
through the prepare command line (in-process, the same ``main`` the component runs)."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from components.prepare.__main__ import main
from tuneline.llm.data.sources import Dataset
from tuneline.step.digest import path_sha256

ALPACA = [
    {"instruction": f"Give the capital of country number {i}.", "input": "" if i % 2 else f"Context {i}.",
     "output": f"The capital of country {i} is city {i * 7}."}
    for i in range(20)
]


def prepare(tmp: Path, raw: Path, *flags: str) -> tuple[int, dict, list[dict], list[dict]]:
    """(exit code, data card, kept records, quarantine rows)."""
    out = tmp / "out"
    code = main(["--raw", str(raw), *(a for n in ("train", "validation", "test", "report")
                                     for a in (f"--{n}-out", str(out / n))), *flags])
    card_path = out / "report" / "data_card.json"
    if not card_path.is_file():
        return code, {}, [], []
    kept = [json.loads(line) for n in ("train", "validation", "test")
            for line in (out / n / "data.jsonl").read_text().splitlines()]
    quarantine = [json.loads(line) for line in (out / "report" / "quarantine.jsonl").read_text().splitlines()]
    return code, json.loads(card_path.read_text()), kept, quarantine


def accounted(card: dict) -> bool:
    c = card["counts"]
    return c["kept"] + c["quarantined"] + c["deduplicated"] == c["input_records"]


def write_alpaca(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".csv":
        with path.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["instruction", "input", "output"])
            writer.writeheader()
            writer.writerows(rows)
    elif path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("name", ["alpaca.jsonl", "alpaca.csv", "alpaca.parquet"])
def test_alpaca_rows_in_each_file_type_are_prepared_without_flags(tmp_path, name):
    rows = [*ALPACA, ALPACA[3], {"instruction": "Say hi.", "input": "", "output": "   "}]
    code, card, kept, quarantine = prepare(tmp_path, write_alpaca(tmp_path / name, rows))
    assert code == 0 and accounted(card)
    assert card["counts"] == {**card["counts"], "input_records": 22, "kept": 20, "quarantined": 1,
                              "deduplicated": 1}
    assert card["input"]["files"][0]["format"] == "alpaca"
    assert Dataset(tmp_path / name).count_records() == 22  # what the new-data trigger counts (Parquet: its footer)
    by_user = {r["messages"][0]["content"]: r["messages"][1]["content"] for r in kept}
    assert by_user["Give the capital of country number 1."] == "The capital of country 1 is city 7."
    assert by_user["Give the capital of country number 2.\n\nContext 2."] == "The capital of country 2 is city 14."
    unit = "line" if name.endswith(".jsonl") else "row"
    empty = next(q for q in quarantine if q["reason"] == "empty_content")
    assert empty[unit] == 22 and empty["file"] == name and empty["detail"] == "'output' (assistant) has empty content"
    dup = next(q for q in quarantine if q["reason"] == "exact_duplicate")
    assert dup[unit] == 21 and dup["duplicate_of"] == {"file": name, unit: 4}


def test_sharegpt_json_array_is_prepared_without_flags(tmp_path):
    convs = [{"id": f"c{i}", "conversations": [
        {"from": "system", "value": "Answer briefly."},
        {"from": "human", "value": f"What is {i} plus {i}?"},
        {"from": "gpt", "value": f"{i} plus {i} is {2 * i}."},
    ]} for i in range(12)]
    convs.append({"conversations": [{"from": "user", "value": "Hi there"}, {"from": "assistant", "value": "Hello!"}]})
    convs.append({"conversations": [{"from": "human", "value": "Call it"}, {"from": "tool", "value": "42"}]})
    raw = tmp_path / "chats.json"
    raw.write_text(json.dumps(convs, indent=2))
    code, card, kept, quarantine = prepare(tmp_path, raw)
    assert code == 0 and accounted(card)
    assert (card["counts"]["input_records"], card["counts"]["kept"], card["counts"]["quarantined"]) == (14, 13, 1)
    assert card["input"]["files"][0] == {**card["input"]["files"][0], "type": "json", "format": "sharegpt"}
    first = next(r for r in kept if r.get("id") == "c3")
    assert [m["role"] for m in first["messages"]] == ["system", "user", "assistant"]
    assert first["messages"][2]["content"] == "3 plus 3 is 6."
    (bad,) = quarantine
    assert bad["row"] == 14 and bad["reason"] == "unknown_role" and "conversations[1].from is 'tool'" in bad["detail"]


def test_azure_ml_text_generation_sample_is_mapped_with_columns(tmp_path):
    raw = tmp_path / "train.jsonl"
    raw.write_text("".join(json.dumps({"text": f"Summarize the dialog.\n#Person1#: Hello {i}.\n#Person2#: Hi {i}.",
                                       "ground_truth": f"Two people greet each other, {i}."}) + "\n"
                           for i in range(10)))
    code, card, _, _ = prepare(tmp_path, raw)
    assert code == 2 and card == {}  # undetectable: one error, nothing quarantined
    code, card, kept, _ = prepare(tmp_path, raw, "--columns", "prompt=text,completion=ground_truth")
    assert code == 0 and accounted(card) and card["counts"]["kept"] == 10
    assert card["input"]["files"][0]["format"] == "prompt_completion"
    record = next(r for r in kept if "Hello 4." in r["messages"][0]["content"])
    assert record == {"messages": [
        {"role": "user", "content": "Summarize the dialog.\n#Person1#: Hello 4.\n#Person2#: Hi 4."},
        {"role": "assistant", "content": "Two people greet each other, 4."}]}


def test_a_system_column_can_be_mapped(tmp_path):
    raw = write_alpaca(tmp_path / "rows.parquet", [{"q": "Name a colour.", "a": "Blue.", "sys": "Be terse."}])
    code, _, kept, _ = prepare(tmp_path, raw, "--columns", "prompt=q,completion=a,system=sys")
    assert code == 0
    assert [m["role"] for m in kept[0]["messages"]] == ["system", "user", "assistant"]


def test_undetectable_and_mixed_files_get_one_error_naming_the_file(tmp_path, capsys):
    raw = tmp_path / "odd.jsonl"
    raw.write_text("".join(json.dumps({"question": "q", "answer": "a"}) + "\n" for _ in range(5)))
    assert prepare(tmp_path, raw)[0] == 2
    err = capsys.readouterr().err
    assert "odd.jsonl: cannot tell the record format" in err and "their keys: question, answer" in err
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text("".join(json.dumps(r) + "\n" for r in [
        *({"prompt": f"p{i}", "completion": f"c{i}"} for i in range(5)), *ALPACA[:5]]))
    assert prepare(tmp_path, mixed)[0] == 2
    err = capsys.readouterr().err
    assert "mixed.jsonl: mixes record formats" in err and "alpaca 5 (first at mixed.jsonl line 6)" in err
    code, card, _, quarantine = prepare(tmp_path, mixed, "--format", "alpaca")
    assert code == 0 and card["counts"]["quarantined"] == 5
    assert quarantine[0]["detail"] == "'instruction' is missing (needed by the alpaca format)"


def test_an_unknown_shape_names_the_keys_and_a_mapping_from_them(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TUNELINE_STEP", raising=False)
    raw = tmp_path / "odd.jsonl"
    raw.write_text("".join(json.dumps({"question": "q", "answer": "a", "id": i}) + "\n" for i in range(5)))
    assert prepare(tmp_path, raw)[0] == 2
    err = capsys.readouterr().err
    assert "their keys: question, answer, id" in err
    assert "(chat, sharegpt, alpaca, prompt_completion, pairs, sharegpt_pairs, openai_preference, kto)" in err
    assert "--columns prompt=question,completion=answer" in err and "--format FORMAT" in err
    # Under `tuneline run` (which names the step) the same message names the --set that passes those inputs
    monkeypatch.setenv("TUNELINE_STEP", "prep")
    assert prepare(tmp_path, raw)[0] == 2
    err = capsys.readouterr().err
    assert "--set prep.columns=prompt=question,completion=answer" in err and "--set prep.format=FORMAT" in err
    assert "--columns" not in err and "--format" not in err


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("semi.csv", b"question;answer\nWhat is 2+2?;4\n", "looks ';'-separated: its header 'question;answer' is one "
     "column when read as comma-separated (.csv), 2 columns (question, answer) when split at ';'"),
    ("tabs.csv", b"question\tanswer\nWhat is 2+2?\t4\n", "looks tab-separated"),
    ("latin.jsonl", '{"prompt": "Café?", "completion": "oui"}\n'.encode("latin-1") * 3,
     "is not UTF-8 text: byte 0xe9 at byte offset 15 (line 1: invalid continuation byte); save it as UTF-8"),
    ("latin.csv", "prompt,completion\nCafé?,oui\n".encode("latin-1"),
     "is not UTF-8 text: byte 0xe9 at byte offset 21 (line 2: invalid continuation byte)"),
    ("latin.json", '[{"prompt": "Café?", "completion": "oui"}]'.encode("latin-1"), "is not UTF-8 text: byte 0xe9"),
    ("wide.jsonl", '{"prompt": "a", "completion": "b"}\n'.encode("utf-16"), "is UTF-16 text (byte-order mark"),
    ("image.jsonl", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 4, "is not text: a NUL byte at byte offset 8"),
    ("packed.jsonl.gz", gzip.compress(b"\x00\x01\x02" * 10), "byte offset 0 of the decompressed data"),
])
def test_an_unreadable_file_says_why(tmp_path, capsys, name, content, reason):
    raw = tmp_path / name
    raw.write_bytes(content)
    assert prepare(tmp_path, raw)[0] == 2
    err = capsys.readouterr().err
    assert f"prepare: {name}: " in err and reason in err, err
    assert "cannot tell the record format" not in err and "invalid parameters" not in err


def test_a_one_column_csv_is_not_taken_for_another_delimiter(tmp_path, capsys):
    raw = tmp_path / "one.csv"
    raw.write_text("prompt\nWhat is 2+2?\n")
    assert prepare(tmp_path, raw)[0] == 2
    err = capsys.readouterr().err
    assert "cannot tell the record format" in err and "their keys: prompt" in err and "separated" not in err


def test_without_length_limits_the_quality_rules_still_catch_each_flaw(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": f"Question {i}?"},
                      {"role": "assistant", "content": f"Answer {i}."}]} for i in range(8)
    ] + [
        {"messages": [{"role": "system", "content": "You are helpful."},
                      {"role": "assistant", "content": "Hello, how can I help?"}]},
        {"messages": [{"role": "user", "content": "What should I eat?"},
                      {"role": "assistant", "content": " ".join(["Eat a banana!"] * 2000)}]},
        {"messages": [{"role": "user", "content": "Anything?"}, {"role": "assistant", "content": "...\u200b"}]},
    ]
    raw = tmp_path / "chat.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, card, kept, quarantine = prepare(tmp_path, raw, "--max-chars", "0", "--max-tokens", "0")
    assert code == 0 and accounted(card) and len(kept) == 8
    reasons = {q["line"]: (q["reason"], q["detail"]) for q in quarantine}
    assert reasons[9] == ("no_user_turn", "messages[1] (assistant) has no user turn before it")
    assert reasons[10][0] == "degenerate_repetition"
    assert reasons[10][1].startswith("messages[1]: duplicate 5-gram character fraction 0.96 > 0.15")
    assert reasons[11][0] == "empty_answer"
    assert card["quality_rules"]["no_user_turn"]["quarantined"] == 1
    assert card["quality_rules"]["degenerate_repetition"] == {"max_repetition": 0.15, "quarantined": 1}
    assert card["quality_rules"]["empty_answer"]["quarantined"] == 1
    off = ["--require-user-turn", "false", "--max-repetition", "0", "--min-answer-chars", "0"]
    code, card, kept, _ = prepare(tmp_path, raw, "--max-chars", "0", "--max-tokens", "0", *off)
    assert len(kept) == 11


def test_compressed_files_and_folders_of_shards(tmp_path):
    shards = tmp_path / "shards"
    (shards / "part").mkdir(parents=True)
    with gzip.open(shards / "a.jsonl.gz", "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in ALPACA[:10])
    with pa.output_stream(str(shards / "part" / "b.csv.zst"), compression="zstd") as fh:
        fh.write(b"instruction,input,output\n" + "".join(
            f'"{r["instruction"]}","{r["input"]}","{r["output"]}"\n' for r in ALPACA[10:]).encode()
            + b'"too","many","cells","here"\n')
    (shards / "README.md").write_text("# shards\n")
    code, card, kept, quarantine = prepare(tmp_path, shards)
    assert code == 0 and accounted(card)
    assert [(f["file"], f["compression"], f["records"]) for f in card["input"]["files"]] == [
        ("a.jsonl.gz", "gzip", 10), ("part/b.csv.zst", "zstd", 11)]
    assert card["input"]["ignored_files"] == ["README.md"] and len(kept) == 20
    (bad,) = quarantine
    assert (bad["file"], bad["row"], bad["reason"]) == ("part/b.csv.zst", 11, "invalid_row")
    assert bad["detail"] == "4 cells where the header has 3"
    # The card's digest is the runner's digest of the same folder (README included), which the new-data
    # trigger matches against run records; its record count is what count_records reads from the folder.
    assert card["input"]["sha256"] == path_sha256(shards)
    assert Dataset(shards).count_records() == card["counts"]["input_records"] == 21


def test_default_near_dup_threshold_removes_one_token_edits_but_keeps_templated_records(tmp_path):
    def rec(user: str, priority: str = "medium") -> dict:
        return {"messages": [{"role": "user", "content": user},
                             {"role": "assistant", "content": json.dumps({"priority": priority})}]}

    base = "My NovaBook laptop will not turn on after the latest update. Could you help me with this?"
    rows = [
        rec(base),
        rec(base + " !"),                                   # one-token edit: removed
        rec(base.replace("latest", "lastest")),             # a typo: removed
        rec(base + " Not important.", priority="low"),      # same template, different answer: kept
        rec("My Slate tablet will not turn on after the recent reset. Could you help me with this?"),  # kept
    ]
    raw = tmp_path / "tickets.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, card, kept, quarantine = prepare(tmp_path, raw)
    assert card["parameters"]["near_dup_threshold"] == 0.85
    assert sorted(q["line"] for q in quarantine if q["reason"] == "near_duplicate") == [2, 3]
    assert len(kept) == 3


def test_a_gate_metric_the_data_cannot_produce_fails_before_training(tmp_path, capsys):
    raw = tmp_path / "summaries.jsonl"
    raw.write_text("".join(json.dumps({"prompt": f"Summarize dialog {i}.", "completion": f"They meet at {i}."}) + "\n"
                           for i in range(10)))
    assert prepare(tmp_path, raw, "--gate-metric", "field_accuracy")[0] == 2
    err = capsys.readouterr().err
    assert "gate_metric 'field_accuracy' cannot be computed" in err and "its answers are not all JSON objects" in err
    assert prepare(tmp_path, raw, "--gate-metric", "rouge_l")[0] == 0
