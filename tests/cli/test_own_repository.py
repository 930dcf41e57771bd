"""Your own repository: `tuneline init` in an empty folder, then `tuneline run` there with the repository's own
component and shipped ones (`component: tuneline/<name>`), resolved from the installed package."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from .conftest import line_of


def test_init_then_run_a_custom_and_a_shipped_component(user):
    repo = user.folder / "my-tuning"
    made = user("init", "my-tuning")
    assert made.returncode == 0, made.stderr
    pipeline = repo / "pipelines" / "my-tuning.yaml"
    assert "component: tuneline/prepare" in pipeline.read_text()
    assert "component: components/inspect_data" in pipeline.read_text()
    assert user("init", "my-tuning").returncode == 2  # never overwrites

    checked = user("validate", "pipelines", cwd=repo)
    assert checked.returncode == 0 and "1 file valid" in checked.stdout, checked.stderr

    plan = user("run", "pipelines/my-tuning.yaml", "--dry-run", cwd=repo)
    assert plan.returncode == 0, plan.stderr
    assert "4 steps would run, 0 from the cache" in plan.stdout and "tuneline/train" in plan.stdout
    assert not (repo / ".tuneline" / "runs").exists()  # a plan runs nothing

    early = user("run", "pipelines/my-tuning.yaml", "--only", "inspect", "--dry-run", cwd=repo)
    assert re.search(r"^  prepare\s+not cached\s+tuneline/prepare\s+--only inspect needs its cached result",
                     early.stdout, re.M), early.stdout
    first = user("run", "pipelines/my-tuning.yaml", "--only", "prepare", cwd=repo)
    assert first.returncode == 0, first.stdout + first.stderr
    custom = user("run", "pipelines/my-tuning.yaml", "--only", "inspect", cwd=repo)
    assert custom.returncode == 0, custom.stdout + custom.stderr
    assert "training records" in custom.stdout  # the custom component's summary
    # ... and the figures it last reported through $TUNELINE_PROGRESS stay in the run table's note
    assert re.search(r"^inspect\s+✔ succeeded .*record \d+/\d+  mean_answer_chars \d", custom.stdout, re.M), \
        custom.stdout
    record = json.loads(user("runs", "show", "latest", "--json", cwd=repo).stdout)
    assert record["steps"]["prepare"]["status"] == "cached"
    assert record["steps"]["inspect"]["status"] == "succeeded"
    assert record["steps"]["inspect"]["outputs"]["records"]["value"] >= 10

    again = user("run", "pipelines/my-tuning.yaml", "--dry-run", cwd=repo)
    assert "2 steps would run, 2 from the cache" in again.stdout, again.stdout


def test_a_shipped_component_name_that_does_not_exist_is_named_with_the_list(user):
    repo = user.folder
    (repo / "components").mkdir()
    (repo / "pipelines").mkdir()
    pipeline = repo / "pipelines" / "p.yaml"
    pipeline.write_text("name: p\nsteps:\n  prep:\n    component: tuneline/prepair\n    inputs: {raw: x.jsonl}\n"
                        "  other:\n    component: components/prepare\n    inputs: {raw: x.jsonl}\n")
    result = user("validate", "pipelines/p.yaml")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"pipelines/p.yaml:{line_of(pipeline, 'tuneline/prepair')}:" in result.stderr
    assert "no shipped component 'prepair'; did you mean 'prepare'?" in result.stderr
    assert "is `component: tuneline/prepare`" in result.stderr  # a folder name that is a shipped component's


def test_components_lists_shipped_and_own_and_shows_inputs(user):
    assert user("init", ".").returncode == 0
    listed = user("components")
    assert listed.returncode == 0
    assert "tuneline/prepare" in listed.stdout and "components/inspect_data" in listed.stdout
    shown = user("components", "tuneline/prepare")
    assert shown.returncode == 0 and "columns" in shown.stdout and "--set STEP.INPUT=VALUE" in shown.stdout
    assert user("components", "nope").returncode == 1


def test_the_shipped_components_are_the_packaged_ones():
    from tuneline.spec.load import SHIPPED_COMPONENTS, shipped_components

    assert {"prepare", "train", "evaluate", "register", "deploy"} <= set(shipped_components())
    assert (SHIPPED_COMPONENTS / "__init__.py").is_file()  # the `components` package pyproject ships
    assert Path(__import__("components").__file__).resolve().parent == SHIPPED_COMPONENTS


@pytest.mark.slow
def test_a_wheel_install_resolves_the_shipped_components(user, tmp_path: Path):
    """Installed from a wheel (no checkout anywhere), `component: tuneline/prepare` still resolves: the wheel
    carries each component.yaml beside its code."""
    import shutil
    import subprocess
    import sys

    from .conftest import REPO

    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    for package in ("tuneline", "components"):
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels)], check=True, capture_output=True, cwd=source, timeout=600)
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                    *map(str, wheels.glob("*.whl"))], check=True, capture_output=True, timeout=600)
    assert user("init", "mine").returncode == 0
    env = {"PYTHONPATH": str(site)}  # the installed copy, not this checkout
    where = user("components", "tuneline/prepare", cwd=user.folder / "mine", env=env)
    assert where.returncode == 0, where.stderr
    assert str(site / "components" / "prepare" / "component.yaml") in where.stdout
    checked = user("validate", "pipelines", cwd=user.folder / "mine", env=env)
    assert checked.returncode == 0 and "1 file valid" in checked.stdout, checked.stderr


def test_a_repository_without_a_price_table_gets_no_cost_line(tmp_path: Path):
    from tuneline.ops.cost.comparison import cost_comparison
    from tuneline.targets.local import record as rec

    (tmp_path / "components").mkdir()
    (tmp_path / "pipelines").mkdir()
    record = rec.RunRecord(run_id="r1", pipeline="p", pipeline_path=str(tmp_path / "pipelines" / "p.yaml"),
                           folder=str(tmp_path / ".tuneline" / "runs" / "r1"), params={}, order=["train"],
                           tuneline_version="0",
                           steps={"train": rec.StepRecord(name="train", component="train", role="train")})
    record.steps["train"].status = rec.SUCCEEDED
    assert cost_comparison(record) is None  # not "(no cost comparison: price table not found ...)"
