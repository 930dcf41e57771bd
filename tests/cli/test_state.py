"""Paths are the user's and state lives where one rule says: `--home`, else $TUNELINE_HOME, else `.tuneline/` in
the nearest folder at or above the current one holding `.tuneline/` or `components/`, else the current folder."""

from __future__ import annotations

import json
from pathlib import Path

from .conftest import REPO
from .test_own_data import FINETUNE, write_jsonl


def test_runs_list_from_the_folder_run_was_started_in_and_below_finds_the_run(user):
    write_jsonl(user.folder / "tickets.ndjson", range(30), ("prompt", "completion"))
    done = user("run", FINETUNE, "--only", "prepare", "--set", "dataset=tickets.ndjson", "--set",
                "gate_metric=rouge_l")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"state folder: {user.folder / '.tuneline'}" in done.stdout
    assert (user.folder / ".tuneline" / "runs").is_dir()
    assert not any(p.name == ".tuneline" for p in (REPO / "pipelines").iterdir())
    listed = user("runs", "list", "--json")
    assert [r["pipeline"] for r in json.loads(listed.stdout)] == ["finetune-demo"]
    below = user.folder / "notes" / "deeper"
    below.mkdir(parents=True)
    assert json.loads(user("runs", "list", "--json", cwd=below).stdout)[0]["pipeline"] == "finetune-demo"


def test_tuneline_home_wins_and_an_empty_folder_says_where_it_looked(user, tmp_path: Path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    empty = user("runs", "list", cwd=elsewhere)
    assert empty.returncode == 0
    assert f"{elsewhere / '.tuneline'} does not exist" in empty.stdout and "TUNELINE_HOME" in empty.stdout
    write_jsonl(user.folder / "t.jsonl", range(30), ("prompt", "completion"))
    shared = tmp_path / "shared-state"
    env = {"TUNELINE_HOME": str(shared)}
    assert user("run", FINETUNE, "--only", "prepare", "--set", "dataset=t.jsonl", "--set", "gate_metric=rouge_l",
                env=env).returncode == 0
    assert not (user.folder / ".tuneline").exists()
    assert json.loads(user("runs", "list", "--json", cwd=elsewhere, env=env).stdout)[0]["pipeline"] == "finetune-demo"


def test_a_missing_file_names_the_folder_it_was_looked_for_in_without_a_log_line(user):
    result = user("run", FINETUNE, "--set", "dataset=tickets.ndjson")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"file not found: {user.folder / 'tickets.ndjson'}" in result.stderr
    assert "log: None" not in result.stderr and "(no log)" not in result.stderr
    assert not (user.folder / ".tuneline" / "runs").exists()  # refused before any step ran


def test_a_step_that_fails_before_starting_prints_no_log_line(tmp_path: Path, capsys):
    from tuneline.targets.local import record as rec
    from tuneline.targets.local.report import print_report

    record = rec.RunRecord(run_id="r1", pipeline="p", pipeline_path="p.yaml", folder=str(tmp_path), params={},
                           order=["prepare"], tuneline_version="0",
                           steps={"prepare": rec.StepRecord(name="prepare", component="prepare")})
    record.steps["prepare"].status = rec.FAILED
    record.steps["prepare"].reason = "input 'raw' (parameter 'dataset'): file not found: x.csv"
    record.status, record.duration_s = rec.FAILED, 0.1
    print_report(record)
    err = capsys.readouterr().err
    assert "file not found: x.csv" in err and "log:" not in err and "(no log)" not in err
