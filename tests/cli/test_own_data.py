"""Your own data, from the folder it is in: other column names, other keys, a folder of files, a base model folder.

Every override the README shows works from `--set`: a pipeline parameter (`--set dataset=qa.csv`) or one step's
input (`--set prepare.columns=prompt=question,completion=answer`); relative paths start from the current folder.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .conftest import REPO

FINETUNE = str(REPO / "pipelines" / "finetune.yaml")


def write_csv(path: Path, rows: int = 30) -> None:
    lines = ["question,answer"] + [f'"What is {i} times {i * 7 + 3}?",{i * (i * 7 + 3)}' for i in range(1, rows + 1)]
    path.write_text("\n".join(lines) + "\n")


def write_jsonl(path: Path, rows: range, keys: tuple[str, str] = ("q", "a")) -> None:
    path.write_text("".join(json.dumps({keys[0]: f"Spell {n * 13 + 5} backwards.", keys[1]: str(n * 13 + 5)[::-1]})
                            + "\n" for n in rows))


def prepared(user, run_id: str = "latest") -> dict:
    shown = user("runs", "show", run_id, "--json")
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["steps"]["prepare"]["status"] == "succeeded", record["steps"]["prepare"]
    return record


def train_records(record: dict) -> int:
    split = Path(record["steps"]["prepare"]["outputs"]["train"]["path"], "data.jsonl")
    return len(split.read_text().splitlines())


@pytest.mark.slow
def test_a_csv_with_other_column_names_is_mapped_with_a_step_input(user):
    write_csv(user.folder / "qa.csv")
    bare = user("run", FINETUNE, "--only", "prepare", "--set", "dataset=qa.csv", "--set", "gate_metric=rouge_l")
    assert bare.returncode == 1  # prepare cannot tell which column is the prompt
    assert "log: None" not in bare.stderr
    # prepare's own message names the --set that passes what it asks for, built from the file's columns ...
    assert "their keys: question, answer" in bare.stderr
    assert "--set prepare.columns=prompt=question,completion=answer" in bare.stderr
    assert "--columns" not in bare.stderr  # ... not the program's flag, and no second, generic hint
    assert "set one of its inputs with --set prepare.INPUT=VALUE" not in bare.stderr

    done = user("run", FINETUNE, "--only", "prepare", "--set", "dataset=qa.csv", "--set", "gate_metric=rouge_l",
                "--set", "prepare.columns=prompt=question,completion=answer")
    assert done.returncode == 0, done.stdout + done.stderr
    record = prepared(user)
    assert record["steps"]["prepare"]["inputs"]["raw"]["path"] == str(user.folder / "qa.csv")
    assert record["steps"]["prepare"]["inputs"]["columns"] == {"value": "prompt=question,completion=answer"}
    assert train_records(record) > 15


def test_jsonl_with_other_keys_and_an_explicit_format(user):
    write_jsonl(user.folder / "pairs.jsonl", range(30))
    done = user("run", FINETUNE, "--only", "prepare", "--set", "dataset=pairs.jsonl", "--set", "gate_metric=rouge_l",
                "--set", "prepare.format=prompt_completion", "--set", "prepare.columns=prompt=q,completion=a")
    assert done.returncode == 0, done.stdout + done.stderr
    assert train_records(prepared(user)) > 15


@pytest.mark.slow
def test_a_folder_of_files(user):
    shards = user.folder / "shards"
    shards.mkdir()
    write_jsonl(shards / "part-1.jsonl", range(20), ("prompt", "completion"))
    write_jsonl(shards / "part-2.jsonl", range(20, 40), ("prompt", "completion"))
    done = user("run", FINETUNE, "--only", "prepare", "--set", "dataset=shards", "--set", "gate_metric=rouge_l")
    assert done.returncode == 0, done.stdout + done.stderr
    record = prepared(user)
    assert record["steps"]["prepare"]["inputs"]["raw"]["path"] == str(shards)
    assert train_records(record) > 25
    # The same folder given to the step's input directly, rather than through the parameter
    direct = user("run", FINETUNE, "--only", "prepare", "--set", "prepare.raw=shards", "--set", "gate_metric=rouge_l")
    assert direct.returncode == 0, direct.stdout + direct.stderr
    assert prepared(user)["steps"]["prepare"]["status"] == "succeeded"
    not_a_file = user("validate", FINETUNE, "--set", "schema=shards")
    assert not_a_file.returncode == 2
    assert "is a folder, but evaluate.schema and deploy.response_schema take a single file" in not_a_file.stderr
    not_a_file = user("validate", FINETUNE, "--set", "evaluate.schema=shards")
    assert not_a_file.returncode == 2 and "is a folder, but evaluate.schema takes a single file" in not_a_file.stderr


def test_a_bare_name_that_is_a_step_input_says_how_to_set_it(user):
    result = user("run", FINETUNE, "--set", "columns=prompt=question,completion=answer")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--set columns: no such parameter" in result.stderr
    assert "--set prepare.columns=" in result.stderr
    wrong = user("validate", FINETUNE, "--set", "prepare.colums=prompt=a")
    assert wrong.returncode == 2 and "did you mean 'columns'" in wrong.stderr
    typed = user("validate", FINETUNE, "--set", "prepare.format=csv")
    assert typed.returncode == 2 and "is not one of" in typed.stderr


def test_a_base_model_folder_is_relative_to_the_current_folder_and_a_hub_id_says_it_downloads(user):
    model = user.folder / "my-model"
    model.mkdir()
    not_a_model = user("validate", FINETUNE, "--set", "base_model=my-model")
    assert not_a_model.returncode == 2 and "no config.json" in not_a_model.stderr
    (model / "config.json").write_text("{}")
    assert user("validate", FINETUNE, "--set", "base_model=my-model").returncode == 0

    hub = user("validate", FINETUNE, "--set", "base_model=example-org/example-model")
    assert hub.returncode == 0, hub.stderr
    assert "download it from the Hugging Face Hub" in hub.stderr and "needs network" in hub.stderr
    offline = user("validate", FINETUNE, "--set", "base_model=example-org/example-model",
                   env={"HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 2 and "HF_HUB_OFFLINE" in offline.stderr


def test_prepare_reports_its_counts_in_the_run_table_and_runs_show(user):
    data = user.folder / "pairs.jsonl"
    write_jsonl(data, range(30), ("prompt", "completion"))
    with data.open("a") as fh:
        fh.write('{"prompt": "broken\n')  # quarantined: invalid JSON
        fh.write(json.dumps({"prompt": "Spell 5 backwards.", "completion": "5"}) + "\n")  # a duplicate of line 1
    done = user("run", FINETUNE, "--only", "prepare", "--set", "dataset=pairs.jsonl", "--set", "gate_metric=rouge_l")
    assert done.returncode == 0, done.stdout + done.stderr
    counts = "record 32/32  kept 30  quarantined 1  deduplicated 1"
    assert re.search(rf"^prepare\s+✔ succeeded .*{counts}$", done.stdout, re.M), done.stdout
    shown = user("runs", "show", "latest")
    assert re.search(rf"^step prepare: succeeded .*\n    reported: {counts}$", shown.stdout, re.M), shown.stdout
    card = json.loads(Path(prepared(user)["steps"]["prepare"]["outputs"]["report"]["path"], "data_card.json")
                      .read_text())
    assert card["counts"]["kept"] == 30 and card["counts"]["quarantined"] == 1  # the same figures as the card's


@pytest.mark.parametrize(("name", "content", "reason"), [
    ("semi.csv", b"question;answer\nWhat is 2+2?;4\n", "semi.csv: looks ';'-separated: its header"),
    ("latin.jsonl", '{"prompt": "Caf\u00e9?", "completion": "oui"}\n'.encode("latin-1") * 3,
     "latin.jsonl: is not UTF-8 text: byte 0xe9 at byte offset 15 (line 1"),
])
def test_an_unreadable_file_says_why_in_the_run_report(user, name, content, reason):
    (user.folder / name).write_bytes(content)
    result = user("run", FINETUNE, "--only", "prepare", "--set", f"dataset={name}", "--set", "gate_metric=rouge_l")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert f"prepare: {reason}" in result.stderr, result.stderr
    assert "cannot tell the record format" not in result.stderr
    assert "--set prepare.INPUT" not in result.stderr  # the file is the fix, not an input: one message, no hint


def test_a_step_message_naming_its_own_flag_gets_the_set_that_passes_it(user):
    write_jsonl(user.folder / "pairs.jsonl", range(5), ("prompt", "completion"))
    result = user("run", FINETUNE, "--only", "prepare", "--set", "dataset=pairs.jsonl", "--set", "prepare.columns=q")
    assert result.returncode == 1 and "prepare: --columns: 'q' is not FIELD=COLUMN" in result.stderr
    assert "set one of its inputs with --set prepare.INPUT=VALUE (the program's --flag-name is input flag_name" \
        in result.stderr
