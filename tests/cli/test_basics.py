"""What users of az ml, the KFP SDK or Axolotl expect on day one: --version, logs, runs rm / gc, the base
models by name, and shell completion."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

import tuneline


def test_version(user):
    result = user("--version")
    assert (result.returncode, result.stdout.strip()) == (0, f"tuneline {tuneline.__version__}")


@pytest.mark.slow
def test_logs_rm_and_gc_on_a_project_of_ones_own(user):
    assert user("init", ".").returncode == 0
    pipeline = "pipelines/work.yaml"
    assert user("run", pipeline, "--only", "prepare").returncode == 0
    first = json.loads(user("runs", "show", "latest", "--json").stdout)["run_id"]
    assert user("run", pipeline, "--only", "inspect").returncode == 0
    second = json.loads(user("runs", "show", "latest", "--json").stdout)["run_id"]

    logs = user("logs", first, "prepare")
    assert logs.returncode == 0 and "python -m components.prepare" in logs.stdout
    every = user("logs", second)  # prepare came from the cache: no process, said so
    assert "── prepare (cached)" in every.stdout and "(no log: step 'prepare' started no process: it came from "\
                                                   "the cache)" in every.stdout
    tail = user("logs", "latest", "inspect", "--tail", "1").stdout.splitlines()
    assert len(tail) == 1 and "components/inspect_data/inspect_data.py" in tail[0]
    assert user("logs", second, "nope").returncode == 1

    planned = user("runs", "gc", "--keep", "1", "--dry-run")
    assert planned.returncode == 0 and planned.stdout.startswith("would remove 1 folder")
    assert len(json.loads(user("runs", "list", "--json").stdout)) == 2
    # The kept run reused prepare's cache entry and made inspect's: both stay.
    done = user("runs", "gc", "--keep", "1")
    assert done.stdout.startswith("removed 1 folder"), done.stdout
    assert [r["run_id"] for r in json.loads(user("runs", "list", "--json").stdout)] == [second]
    plan = user("run", pipeline, "--dry-run").stdout
    assert "2 steps would run, 2 from the cache" in plan, plan

    assert user("runs", "rm", second).returncode == 0
    assert "no runs yet" in user("runs", "list").stdout
    assert user("runs", "rm", second).returncode == 1


def test_models_lists_the_catalog_and_what_else_base_model_takes(user):
    result = user("models")
    assert result.returncode == 0
    assert re.search(r"^smollm2-135m-instruct\s+(yes|first use)", result.stdout, re.M)
    assert "Hub id org/name" in result.stdout


def test_bash_completion_completes_commands_and_options(user, tmp_path: Path):
    script = user("completion", "bash")
    assert script.returncode == 0
    (tmp_path / "complete.sh").write_text(script.stdout)

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        probe = (f"source {tmp_path / 'complete.sh'}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; "
                 "_tuneline; printf '%s\\n' \"${COMPREPLY[@]}\"")
        return subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True).stdout.split()

    assert complete("tuneline", "ru") == ["run", "runs"]
    assert "--dry-run" in complete("tuneline", "run", "pipelines/x.yaml", "--d")
    assert complete("tuneline", "runs", "g") == ["gc"]


def test_the_cli_reference_names_every_command():
    import argparse

    from tuneline.cli.main import build_parser

    text = (Path(__file__).resolve().parents[2] / "docs" / "cli.md").read_text()
    missing = []

    def walk(parser: argparse.ArgumentParser, path: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    nested = any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
                    if not nested and f"`{path} {name}" not in text:
                        missing.append(f"{path} {name}")
                    walk(sub, f"{path} {name}")

    walk(build_parser(), "tuneline")
    assert not missing, f"docs/cli.md does not show: {missing}"
