"""`tuneline validate` rejects what would otherwise fail after training or at deploy, each with file:line:col and
a hint, before any step runs; a folder argument validates every pipeline in it; never a traceback."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from .conftest import REPO, line_of


@pytest.fixture
def project(user) -> Path:
    """The demo pipeline in a repository of the user's own, using the shipped components by name."""
    root = user.folder
    (root / ".git").mkdir()  # a repository: its root is the project root the pipeline's paths start from
    (root / "pipelines").mkdir()
    (root / "data").mkdir()
    for name in ("tickets.jsonl", "tickets.schema.json"):
        shutil.copy(REPO / "data" / "sample" / name, root / "data" / name)
    text = (REPO / "pipelines" / "finetune.yaml").read_text().replace("component: components/", "component: tuneline/")
    (root / "pipelines" / "finetune.yaml").write_text(text.replace("data/sample/", "data/"))
    return root


def mistake(project: Path, old: str, new: str) -> Path:
    path = project / "pipelines" / "finetune.yaml"
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new, 1))
    return path


def rejected(user, path: Path, needle: str, pattern: str) -> str:
    result = user("validate", "pipelines/finetune.yaml")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stdout + result.stderr
    line = line_of(path, needle)
    assert re.search(rf"^pipelines/finetune\.yaml:{line}:\d+: .*{pattern}", result.stderr, re.M), result.stderr
    return result.stderr


def test_the_project_copy_is_valid(user, project):
    result = user("validate", "pipelines/finetune.yaml")
    assert (result.returncode, result.stdout.strip()) == (0, "1 file valid"), result.stderr


def test_a_misspelt_gate_metric(user, project):
    path = mistake(project, 'default: "tuned.{metric} {better} base.{metric}"',
                   'default: "tuned.field_acuracy > base.field_accuracy"')
    rejected(user, path, "  gates:", r"unknown metric 'field_acuracy' at column 7; did you mean 'field_accuracy'")


def test_a_misspelt_win_rate_field(user, project):
    path = mistake(project, 'default: "tuned.{metric} {better} base.{metric}"', 'default: "win_rate.lowr > 0.5"')
    rejected(user, path, "  gates:", r"unknown field 'win_rate.lowr' at column 10; did you mean 'lower'")


def test_a_gate_with_a_wrong_operator(user, project):
    path = mistake(project, 'default: "tuned.{metric} {better} base.{metric}"', 'default: "tuned.{metric} >> 0.5"')
    rejected(user, path, "  gates:", r"operator '>>' at column \d+ is not allowed; use a comparison")
    path = mistake(project, 'default: "tuned.{metric} >> 0.5"', 'default: "tuned.{metric} >= (0.5"')
    rejected(user, path, "  gates:", r"syntax error at column \d+")


def test_an_invalid_smoke_regex(user, project):
    path = mistake(project, """default: '"category"'""", """default: '"category(\\d+'""")
    rejected(user, path, "smoke_expect:", r"not a valid regular expression: missing \), unterminated subpattern")


def test_a_dataset_that_does_not_exist(user, project):
    (project / "data" / "tickets.jsonl").unlink()
    path = project / "pipelines" / "finetune.yaml"
    rejected(user, path, "  dataset:", r"dataset: file not found: data/tickets.jsonl \(a path in the pipeline file "
                                       r"is relative to the project root")


def test_an_unknown_base_model(user, project):
    path = mistake(project, "default: smollm2-135m-instruct", "default: smollm-135m-instruct")
    rejected(user, path, "base_model:", r"unknown base model 'smollm-135m-instruct'.*did you mean "
                                        r"'smollm2-135m-instruct'")


def test_a_folder_argument_validates_every_pipeline_in_it(user, project):
    good = (project / "pipelines" / "finetune.yaml").read_text()
    (project / "pipelines" / "broken.yaml").write_text(good.replace("gate_metric:\n", "gate_metrc:\n", 1))
    result = user("validate", "pipelines")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pipelines/broken.yaml:" in result.stderr and "pipelines/finetune.yaml" not in result.stderr
    (project / "pipelines" / "broken.yaml").unlink()
    result = user("validate", "pipelines")
    assert (result.returncode, result.stdout.strip()) == (0, "1 file valid")
    missing = user("validate", "no-such-folder")
    assert missing.returncode == 2 and "no such file or folder" in missing.stderr and "Traceback" not in missing.stderr


def test_run_refuses_the_same_mistakes_before_any_step(user, project):
    mistake(project, """default: '"category"'""", """default: '(['""")
    result = user("run", "pipelines/finetune.yaml")
    assert result.returncode == 2 and "not a valid regular expression" in result.stderr
    assert not (project / ".tuneline" / "runs").exists()
