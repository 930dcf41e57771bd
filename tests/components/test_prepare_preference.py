"""Preference data through the prepare command line: TRL pairs, LLaMA-Factory ShareGPT pairs, OpenAI preference
records and unpaired KTO records, auto-detected, validated with field-level reasons, redacted on every side,
deduplicated and split on the prompt."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tests.components.test_prepare_formats import accounted, prepare

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "preference"


def reasons(quarantine: list[dict]) -> dict[int, tuple[str, str]]:
    return {q.get("line", q.get("row")): (q["reason"], q["detail"]) for q in quarantine}


def test_trl_pairs_plain_and_conversational_with_field_level_reasons(tmp_path):
    code, card, kept, quarantine = prepare(tmp_path, FIXTURES / "trl_pairs.jsonl")
    assert code == 0 and accounted(card)
    assert card["kind"] == "pairs" and card["formats"] == {"pairs": {"read": 15, "kept": 9}}
    assert card["input"]["files"][0]["format"] == "pairs"
    assert reasons(quarantine) == {
        10: ("chosen_equals_rejected", "'chosen' and 'rejected' are the same text after normalisation"),
        11: ("empty_side", "'rejected' is empty after normalisation"),
        12: ("prompt_mismatch", "chosen[0] and rejected[0] differ: the two conversations must share their prompt"),
        13: ("exact_duplicate", "same prompt as trl_pairs.jsonl line 1"),
        14: ("invalid_schema", "'rejected' is missing (needed by the pairs format)"),
        15: ("invalid_schema", "chosen[0].role is 'user': this side holds only the answer (assistant turns)"),
    }
    assert card["rejected"]["chosen_equals_rejected"] == 1 and card["rejected"]["prompt_mismatch"] == 1
    by_id = {r["id"]: r for r in kept}
    # Plain strings become one-turn conversations; an implicit prompt is the two conversations' shared prefix.
    assert by_id["t0"]["prompt"] == [{"role": "user", "content": "What is the capital of France?"}]
    assert by_id["t0"]["chosen"] == [{"role": "assistant", "content": "The capital of France is Paris."}]
    assert [m["role"] for m in by_id["t2"]["prompt"]] == ["system", "user"]
    assert by_id["t2"]["rejected"] == [{"role": "assistant", "content": "Kenya has no capital."}]
    assert by_id["pii"]["chosen"][0]["content"] == "Write to support at <EMAIL>, or call <PHONE>."


def test_llamafactory_sharegpt_pairs_are_accepted_where_sft_quarantined_them(tmp_path):
    code, card, kept, quarantine = prepare(tmp_path, FIXTURES / "llamafactory_pairs.json")
    assert code == 0 and accounted(card)
    assert card["formats"] == {"sharegpt_pairs": {"read": 12, "kept": 8}}
    assert reasons(quarantine) == {
        9: ("empty_side", "'rejected' is empty after normalisation"),
        10: ("chosen_equals_rejected", "'chosen' and 'rejected' are the same text after normalisation"),
        11: ("unknown_role", "conversations[0].from is 'robot', expected one of "
                             "('human', 'user', 'gpt', 'assistant', 'system')"),
        12: ("exact_duplicate", "same prompt as llamafactory_pairs.json row 1"),
    }
    assert kept[0].keys() == {"prompt", "chosen", "rejected"}
    # Read as plain ShareGPT (the override), the same file trains nothing: no record has an answer turn.
    code, card, _, _ = prepare(tmp_path / "sft", FIXTURES / "llamafactory_pairs.json", "--format", "sharegpt")
    assert code == 1 and card["counts"]["kept"] == 0 and card["rejected"]["no_assistant_turn"] == 11


def test_openai_preference_records(tmp_path):
    code, card, kept, quarantine = prepare(tmp_path, FIXTURES / "openai_preference.jsonl")
    assert code == 0 and accounted(card)
    assert card["formats"] == {"openai_preference": {"read": 11, "kept": 9}}
    assert reasons(quarantine) == {
        9: ("invalid_schema", "'non_preferred_output' is missing (needed by the openai_preference format)"),
        11: ("chosen_equals_rejected",
             "'preferred_output' and 'non_preferred_output' are the same text after normalisation"),
    }
    bern = next(r for r in kept if "Bern" in r["prompt"][0]["content"])
    assert bern["prompt"][0]["content"] == "Call me at <PHONE> and tell me where Bern is."
    assert bern["chosen"] == [{"role": "assistant", "content": "Bern is in Switzerland."}]


def test_kto_records_with_label_or_kto_tag(tmp_path):
    code, card, kept, quarantine = prepare(tmp_path, FIXTURES / "kto.jsonl")
    assert code == 0 and accounted(card)
    assert card["kind"] == "kto" and card["formats"] == {"kto": {"read": 20, "kept": 17}}
    assert reasons(quarantine) == {
        17: ("invalid_label", "'label' is 'maybe', expected true or false"),
        18: ("assistant_not_last", "last turn of 'messages' has role 'user', not 'assistant'"),
        19: ("exact_duplicate", "same content as kto.jsonl line 1"),
    }
    assert all(r.keys() == {"prompt", "completion", "label"} for r in kept)
    assert sum(r["label"] for r in kept) == 9 and sum(not r["label"] for r in kept) == 8
    greece = next(r for r in kept if r["prompt"][0]["content"] == "Capital of Greece?")
    assert greece["completion"] == [{"role": "assistant", "content": "Athens"}] and greece["label"] is True


def test_a_folder_of_all_pair_formats_counts_each(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("trl_pairs.jsonl", "llamafactory_pairs.json", "openai_preference.jsonl"):
        shutil.copy(FIXTURES / name, raw / name)
    code, card, kept, _ = prepare(tmp_path, raw)
    assert code == 0 and accounted(card)
    assert card["formats"] == {"openai_preference": {"read": 11, "kept": 9}, "pairs": {"read": 15, "kept": 9},
                               "sharegpt_pairs": {"read": 12, "kept": 8}}
    assert len(kept) == 26
    md = (tmp_path / "out" / "report" / "data_card.md").read_text()
    assert "| sharegpt_pairs | 12 | 8 |" in md and "| chosen_equals_rejected | 3 |" in md


def test_sft_and_preference_files_are_not_mixed(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    shutil.copy(FIXTURES / "kto.jsonl", raw / "kto.jsonl")
    (raw / "chat.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "Hi"},
                                                             {"role": "assistant", "content": "Hello"}]}) + "\n")
    code, card, _, _ = prepare(tmp_path, raw)
    assert code == 2 and card == {}


def test_pii_is_redacted_on_every_side(tmp_path):
    raw = tmp_path / "pii.jsonl"
    raw.write_text(json.dumps({"prompt": "My mail is ann.lee@example.org, what now?",
                               "chosen": "We will write to ann.lee@example.org.",
                               "rejected": "Mail bob@example.net instead."}) + "\n")
    code, card, kept, _ = prepare(tmp_path, raw)
    assert code == 0 and card["pii"]["by_type"]["EMAIL"] == 3 and card["pii"]["records_with_pii"] == 1
    assert "@" not in json.dumps(kept) and json.dumps(kept).count("<EMAIL>") == 3


def test_no_prompt_lands_in_two_splits(tmp_path):
    # Ten completions per prompt, rated either way: each prompt's records must share one split.
    rows = [{"prompt": f"Question {p}?", "completion": f"Answer {p}.{c}", "label": c % 2 == 0}
            for p in range(40) for c in range(10)]
    raw = tmp_path / "kto.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, card, _, _ = prepare(tmp_path, raw, "--validation-ratio", "0.3", "--test-ratio", "0.3",
                               "--near-dup", "false")
    assert code == 0 and card["counts"]["kept"] == 400
    splits: dict[str, set[str]] = {}
    for name in ("train", "validation", "test"):
        for line in (tmp_path / "out" / name / "data.jsonl").read_text().splitlines():
            splits.setdefault(json.loads(line)["prompt"][0]["content"], set()).add(name)
    assert len(splits) == 40 and all(len(s) == 1 for s in splits.values())
    assert {s for v in splits.values() for s in v} == {"train", "validation", "test"}


def test_near_duplicate_prompts_of_pairs_are_deduplicated(tmp_path):
    base = "Explain in two sentences why the sky looks blue on a clear afternoon in summer"
    rows = [{"prompt": base + ".", "chosen": "Rayleigh scattering.", "rejected": "Paint."},
            {"prompt": base + "!", "chosen": "Short waves scatter more.", "rejected": "Magic."}]
    raw = tmp_path / "pairs.jsonl"
    raw.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code, card, kept, quarantine = prepare(tmp_path, raw)
    assert code == 0 and len(kept) == 1 and quarantine[0]["reason"] == "near_duplicate"


def test_the_demo_preference_set_prepares_under_the_pipelines_gate_metric(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    demo = root / "data" / "sample" / "tickets-preference.jsonl"
    check = subprocess.run([sys.executable, str(root / "scripts" / "make_preference_data.py"), "--check"],
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    # pipelines/preference.yaml passes the SFT gate metric to both prepare steps: preference data skips that check.
    code, card, kept, _ = prepare(tmp_path, demo, "--gate-metric", "field_accuracy")
    assert code == 0 and accounted(card) and card["formats"]["pairs"]["read"] == 400
    sft = set()
    for line in (root / "data" / "sample" / "tickets.jsonl").read_text().splitlines():
        try:
            sft.add(json.loads(line)["messages"][1]["content"])
        except (ValueError, KeyError, IndexError, TypeError):
            continue  # the SFT file's deliberately broken lines
    pairs = [json.loads(line) for line in demo.read_text().splitlines()]
    assert len(sft) >= 500 and not sft & {r["prompt"][-1]["content"] for r in pairs}  # no prompt was an SFT example
