"""This machine is a target like the others: compiled to the steps the runner executes, submitted through the same
path as KFP and Azure ML (tuneline.targets.submit), and asked for its run's state."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest
import yaml

from tuneline.targets import registry, submit
from tuneline.targets.local.target import STEPS_FILE

TOY = Path(__file__).resolve().parents[2] / "fixtures" / "toy" / "pipelines" / "toy.yaml"


@pytest.fixture
def settings(tmp_path):
    return submit.SubmitSettings(values={"home": str(tmp_path / "home")})


def test_local_is_a_shipped_target_and_a_submission_choice():
    assert "local" in registry.names() and registry.get("local").name == "local"
    assert "local" in submit.submit_targets()


def test_compiled_steps_are_the_command_lines_the_runner_executes(tmp_path):
    output, _ = submit.compile_submission(TOY, "local", tmp_path / "out", {"count": "7"}, {})
    steps_file = output.folder / "local" / STEPS_FILE
    compiled = yaml.safe_load(steps_file.read_text())
    assert (steps_file.parent / compiled["pipeline"]["path"]).resolve() == TOY
    assert compiled["values"] == {"count": 7}
    assert [s["name"] for s in compiled["steps"]] == ["gen", "check", "publish"]
    gen, check, _ = compiled["steps"]
    assert "7" in shlex.split(gen["command"])  # the compiled-in value, not the default 5
    assert "${{steps.gen.outputs.data}}" in shlex.split(check["command"]) and check["after"] == ["gen"]
    assert compiled["schedule"]["command"] == "tuneline run pipelines/toy.yaml"


def test_a_submitted_local_run_runs_to_the_end_and_reports_its_state(tmp_path, settings):
    done = submit.submit_pipeline(TOY, "local", tmp_path / "out", {"count": "3"}, {"threshold": "1"}, settings)
    assert done.target == "local" and done.run_id, done.lines
    assert submit.run_state("local", done.run_id, settings) == "succeeded"
    assert submit.run_state("local", "no-such-run", settings) is None
    # a dry run plans against the same state folder: everything is cached now
    lines = registry.get("local").submit(tmp_path / "out" / "toy" / "local", "toy", {"threshold": 1}, settings,
                                         dry_run=True)
    assert lines and all(": cached" in line for line in lines), lines


def test_a_local_schedule_is_refused_with_what_to_do_instead(tmp_path, settings):
    submit.compile_submission(TOY, "local", tmp_path / "out", {}, {})
    with pytest.raises(ValueError, match="no scheduler: run `tuneline run` from cron"):
        registry.get("local").submit(tmp_path / "out" / "toy" / "local", "toy", {}, settings, schedule=True)


def test_a_uri_the_runner_cannot_read_is_refused_before_anything_runs(tmp_path, settings):
    target = registry.get("local")
    assert "reads files on this machine" in target.data_problem("data", "s3://bucket/x.jsonl", None, False)
    assert target.data_problem("data", "data/x.jsonl", None, False) is None
