"""The prepare pipeline in-process on hostile input: accounting, reasons, outputs, splits."""

import base64
import hashlib
import json
import random
from pathlib import Path

import pytest

from components.prepare.card import write_card
from components.prepare.pipeline import PrepareConfig, run
from tuneline.llm.data.records import Budget
from tuneline.llm.data.split import SplitRatios

SYSTEM = "Classify the ticket."


def chat(user: str, answer: str = '{"category": "billing"}', **extra) -> str:
    return json.dumps(
        {
            "messages": [
                {"role": "system", "content": SYSTEM},
                {"role": "user", "content": user},
                {"role": "assistant", "content": answer},
            ],
            **extra,
        }
    )


def ticket(i: int) -> str:
    rng = random.Random(i)
    words = "router laptop invoice refund login screen battery package order charge update account".split()
    return f"Ticket {i}: " + " ".join(rng.choices(words, k=18)) + "."


def hostile_file(path: Path) -> dict[str, int]:
    """Writes a nasty file; returns the number of records expected per reason."""
    near_src = (
        "My NovaBook laptop does not start after the update, I tried holding the power button "
        "and charging it overnight but the screen stays black."
    )
    lines: list[bytes] = [
        b"\xef\xbb\xbf" + chat(ticket(0)).encode(),  # BOM on the first line
        chat(ticket(1)).encode(),
        b"",  # blank
        b"   \t",  # blank
        b'{"messages": [{"role": "user", "content": "broken',  # invalid_json
        b'{"messages": [{"role": "user", "content": "caf\xe9"}]}',  # invalid_utf8 (latin-1 byte)
        json.dumps({"text": "no messages"}).encode(),  # invalid_schema
        json.dumps(
            {"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}
        ).encode(),  # unknown_role
        chat("   ").encode(),  # empty_content
        json.dumps({"messages": [{"role": "user", "content": "hello?"}]}).encode(),  # no_assistant_turn
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"},
                ]
            }
        ).encode(),  # assistant_not_last
        chat("x" * (1 << 20)).encode(),  # a 1 MB line: too_many_chars
        chat(ticket(1), id="dup-of-line-2").encode(),  # exact_duplicate (only id differs)
        chat(near_src).encode(),
        chat(near_src.upper().replace(" ", "  ")).encode(),  # near_duplicate: case and spacing
        chat("Refund to GB82 WEST 1234 5698 7654 32, mail a.b@example.com, call +1 415-555-0100").encode(),
        # A stray record of another format in a chat file: quarantined, naming the missing field.
        json.dumps({"prompt": "Where is my order 12?", "completion": "shipping"}).encode(),
    ]
    lines += [chat(ticket(i)).encode() for i in range(2, 40)]
    path.write_bytes(b"\r\n".join(lines[:10]) + b"\r\n" + b"\n".join(lines[10:]) + b"\n")
    return {
        "invalid_json": 1,
        "invalid_utf8": 1,
        "invalid_row": 0,
        "invalid_schema": 2,
        "unknown_role": 1,
        "empty_content": 1,
        "no_assistant_turn": 1,
        "assistant_not_last": 1,
        "no_user_turn": 0,
        "empty_answer": 0,
        "degenerate_repetition": 0,
        "too_many_chars": 1,
        "too_many_tokens": 0,
        "exact_duplicate": 1,
        "near_duplicate": 1,
    }


def config(tmp: Path, raw: Path, **kw) -> PrepareConfig:
    return PrepareConfig.for_files(raw, tmp, **kw)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@pytest.fixture
def hostile(tmp_path):
    raw = tmp_path / "raw.jsonl"
    expected = hostile_file(raw)
    cfg = config(tmp_path / "out", raw, budget=Budget(max_chars=20_000, max_tokens=0))
    result = run(cfg)
    card = write_card(cfg, result)
    return raw, cfg, result, card, expected


def test_invariant_and_reasons_on_hostile_input(hostile):
    raw, cfg, result, card, expected = hostile
    c = card["counts"]
    assert c["input_records"] == 53 and card["input"]["blank_lines"] == 2 and card["input"]["lines"] == 55
    assert c["kept"] + c["quarantined"] + c["deduplicated"] == c["input_records"] and c["invariant_holds"]
    assert {**card["rejected"], **card["duplicates"]} == expected
    assert c["deduplicated"] == 2 and c["quarantined"] == 9 and c["kept"] == 42
    assert sum(card["splits"].values()) == 42
    assert card["input"]["files"][0]["format"] == "chat"


def test_quarantine_keeps_raw_lines_and_line_numbers(hostile):
    raw, cfg, *_ = hostile
    q = {row["reason"]: row for row in read_jsonl(cfg.report_out / "quarantine.jsonl")}
    assert q["invalid_json"]["line"] == 5 and q["invalid_json"]["raw"].startswith('{"messages"')
    assert q["invalid_json"]["file"] == "raw.jsonl"
    bad = q["invalid_utf8"]
    assert bad["line"] == 6 and "caf\\xe9" in bad["raw"] and bad["raw_escaped"] is True
    source_line = raw.read_bytes().split(b"\r\n")[5]
    assert base64.b64decode(bad["raw_base64"]) == source_line
    assert len(q["too_many_chars"]["raw"]) > 1 << 20
    assert q["exact_duplicate"]["duplicate_of"] == {"file": "raw.jsonl", "line": 2}
    assert q["exact_duplicate"]["detail"] == "same content as raw.jsonl line 2"
    assert q["near_duplicate"]["duplicate_of"]["line"] == q["near_duplicate"]["line"] - 1
    assert "messages[0].role is 'robot'" in q["unknown_role"]["detail"]


def test_outputs_are_chat_records_redacted_and_hashed(hostile):
    _, cfg, result, card, _ = hostile
    kept = []
    for split in ("train", "validation", "test"):
        path = cfg.outputs()[split] / "data.jsonl"
        assert (
            card["outputs"][f"{split}/data.jsonl"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        )
        kept += read_jsonl(path)
    assert len(kept) == 42 and all(r["messages"][-1]["role"] == "assistant" for r in kept)
    text = json.dumps(kept)
    assert "<IBAN>" in text and "<EMAIL>" in text and "<PHONE>" in text and "a.b@example.com" not in text
    assert card["pii"]["by_type"]["IBAN"] == 1 and card["pii"]["records_with_pii"] == 1
    stray = [r for r in read_jsonl(cfg.report_out / "quarantine.jsonl") if "order 12" in r["raw"]]
    assert stray[0]["detail"] == ("'messages' is missing (needed by the chat format); the record looks like "
                                  "prompt_completion, the file is chat")
    assert card["input"]["sha256"] == hashlib.sha256(cfg.raw.read_bytes()).hexdigest()
    md = (cfg.report_out / "data_card.md").read_text()
    assert "| 42 | 9 | 2 | 53 |" in md


def test_pii_redaction_can_be_turned_off(tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_text(chat("mail me: x.y@example.com") + "\n")
    cfg = config(tmp_path, raw, redact_pii=False)
    run(cfg)
    out = "".join((p / "data.jsonl").read_text() for p in cfg.outputs().values())
    assert "x.y@example.com" in out


def test_splits_are_deterministic_order_free_and_group_leakage_free(tmp_path):
    records = [chat(ticket(i), id=f"r{i}", conversation_id=f"c{i // 4}") for i in range(400)]
    shuffled = records[:]
    random.Random(1).shuffle(shuffled)
    where = []
    for name, rows in (("a", records), ("b", shuffled)):
        raw = tmp_path / f"{name}.jsonl"
        raw.write_text("\n".join(rows) + "\n")
        cfg = config(tmp_path / name, raw, ratios=SplitRatios(validation=0.2, test=0.2))
        run(cfg)
        where.append(
            {
                r["id"]: (split, r["conversation_id"])
                for split, p in cfg.outputs().items()
                for r in read_jsonl(p / "data.jsonl")
            }
        )
    assert where[0] == where[1] and len(where[0]) == 400
    split_of_group: dict[str, set[str]] = {}
    for split, group in where[0].values():
        split_of_group.setdefault(group, set()).add(split)
    assert all(len(s) == 1 for s in split_of_group.values())
    assert {s for (s,) in split_of_group.values()} == {"train", "validation", "test"}


def test_same_input_gives_byte_identical_outputs(tmp_path):
    raw = tmp_path / "raw.jsonl"
    hostile_file(raw)
    a, b = (run(config(tmp_path / n, raw)) for n in ("a", "b"))
    assert a.outputs == b.outputs


def test_empty_and_blank_only_files(tmp_path):
    raw = tmp_path / "raw.jsonl"
    raw.write_bytes(b"\n  \r\n\n")
    result = run(config(tmp_path, raw))
    assert (result.stats.input_records, result.blank_lines, result.stats.kept) == (0, 3, 0)


def test_worker_processes_give_identical_outputs(tmp_path):
    raw = tmp_path / "raw.jsonl"
    hostile_file(raw)
    one = run(config(tmp_path / "one", raw, batch_size=8))
    two = run(config(tmp_path / "two", raw, batch_size=8, workers=2))
    assert one.outputs == two.outputs
    assert one.stats == two.stats and one.pii_counts == two.pii_counts


def test_long_record_is_signed_in_chunks_and_kept_when_budgets_are_off(tmp_path):
    raw = tmp_path / "raw.jsonl"
    big = " ".join(f"w{i}" for i in range(40_000))  # ~250 KB: many MinHash chunks
    raw.write_text(chat(big) + "\n" + chat(big + " extra") + "\n")
    cfg = config(tmp_path, raw, budget=Budget(max_chars=0, max_tokens=0))
    result = run(cfg)
    assert result.stats.kept == 1 and result.stats.reasons["near_duplicate"] == 1
    assert result.stats.length_histogram[-1] == 1


def test_progress_reports_counts_per_batch_and_the_total_at_the_end(tmp_path, monkeypatch):
    import components.prepare.pipeline as pipeline

    raw = tmp_path / "raw.jsonl"
    expected = hostile_file(raw)
    progress = tmp_path / "progress.jsonl"
    monkeypatch.setenv("TUNELINE_PROGRESS", str(progress))
    monkeypatch.setattr(pipeline, "PROGRESS_EVERY_S", 0.0)  # every batch, so each one is seen
    result = run(config(tmp_path / "out", raw, batch_size=8))
    lines = [json.loads(line) for line in progress.read_text().splitlines()]
    assert len(lines) == -(-53 // 8) + 1  # one per batch, then the final one
    assert [line["current"] for line in lines] == sorted(line["current"] for line in lines)
    for line in lines:  # every record read so far is accounted for in each report
        m = line["metrics"]
        assert m["kept"] + m["quarantined"] + m["deduplicated"] == line["current"], line
        assert line["unit"] == "record"
    assert all(line["total"] >= line["current"] for line in lines)  # an estimate until the end, never below
    s = result.stats
    assert lines[-1]["current"] == lines[-1]["total"] == 53 == s.input_records
    assert lines[-1]["metrics"] == {"kept": s.kept, "quarantined": s.quarantined, "deduplicated": s.deduplicated}
    assert s.quarantined + s.deduplicated == sum(expected.values())


def test_progress_is_throttled(tmp_path, monkeypatch):
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(chat(ticket(i)) + "\n" for i in range(400)))
    progress = tmp_path / "progress.jsonl"
    monkeypatch.setenv("TUNELINE_PROGRESS", str(progress))
    import time

    from components.prepare.pipeline import PROGRESS_EVERY_S

    started = time.monotonic()
    run(config(tmp_path / "out", raw, batch_size=4))  # 100 batches
    elapsed = time.monotonic() - started
    reports = len(progress.read_text().splitlines())
    assert 1 <= reports <= elapsed / PROGRESS_EVERY_S + 1, (reports, elapsed)  # one per half second, then the last
    assert reports < 100


@pytest.mark.parametrize(("name", "expect"), [("rows.jsonl", "estimated"), ("rows.parquet", "exact"),
                                              ("rows.jsonl.gz", "unknown")])
def test_progress_total_before_the_end(tmp_path, monkeypatch, name, expect):
    """The total the run table's bar and ETA need, without reading the input twice: Parquet's footer, a JSON
    Lines file's size over the bytes per record so far; a compressed file's is unknown until the end."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    import components.prepare.pipeline as pipeline

    lines = [chat(ticket(i)) for i in range(400)]
    raw = tmp_path / name
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist([json.loads(line) for line in lines]), raw)
    else:
        data = "".join(line + "\n" for line in lines).encode()
        raw.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    progress = tmp_path / "progress.jsonl"
    monkeypatch.setenv("TUNELINE_PROGRESS", str(progress))
    monkeypatch.setattr(pipeline, "PROGRESS_EVERY_S", 0.0)
    run(config(tmp_path / "out", raw, batch_size=50))
    reports = [json.loads(line) for line in progress.read_text().splitlines()]
    assert reports[-1]["current"] == reports[-1]["total"] == 400
    early = [r["total"] for r in reports[:-1]]
    if expect == "exact":
        assert early == [400] * len(early)
    elif expect == "estimated":
        assert all(abs(total - 400) <= 20 for total in early), early  # records of similar size
    else:
        assert early == [None] * len(early)
