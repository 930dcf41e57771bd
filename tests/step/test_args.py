"""A component program's arguments come from its component.yaml and nowhere else."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuneline.spec.command import PLACEHOLDER
from tuneline.step.args import command_flags, component_program

REPO = Path(__file__).resolve().parents[2]
COMPONENTS = sorted(p.parent for p in (REPO / "components").glob("*/component.yaml"))


@pytest.mark.parametrize("folder", COMPONENTS, ids=lambda p: p.name)
def test_every_placeholder_has_its_flag_and_defaults_are_the_spec_s(folder: Path):
    program = component_program(folder)
    flags = command_flags(program.spec)
    assert set(flags) == set(PLACEHOLDER.findall(program.spec.command))
    parser = program.parser()
    known = {opt for action in parser._actions for opt in action.option_strings}
    assert set(flags.values()) <= known
    defaults = {a.dest: a.default for a in parser._actions}
    for name, spec in program.spec.inputs.items():
        assert defaults[name] == spec.default, name


def _scratch_prepare(tmp_path: Path) -> Path:
    """A copy of the prepare component with one more input, declared only in its component.yaml."""
    root = tmp_path / "project"
    shutil.copytree(REPO / "components" / "prepare", root / "components" / "prepare",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "components" / "__init__.py", root / "components" / "__init__.py")
    path = root / "components" / "prepare" / "component.yaml"
    spec = yaml.safe_load(path.read_text())
    spec["inputs"]["min_turns"] = {"type": "integer", "min": 0, "default": 1, "description": "turns a record needs"}
    spec["command"] += " --min-turns ${{inputs.min_turns}}"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return root


def _run_prepare(root: Path, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    raw = tmp_path / "raw.jsonl"
    raw.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"question {i}"},
                                                    {"role": "assistant", "content": "answer"}]}) + "\n"
                           for i in range(12)))
    outs = [a for name in ("train", "validation", "test", "report") for a in (f"--{name}-out", str(tmp_path / name))]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{REPO}"}
    return subprocess.run([sys.executable, "-m", "components.prepare", "--raw", str(raw), *outs, *extra],
                          cwd=root, env=env, capture_output=True, text=True, timeout=120)


def test_an_input_declared_only_in_component_yaml_is_accepted_and_checked(tmp_path: Path):
    root = _scratch_prepare(tmp_path)
    accepted = _run_prepare(root, tmp_path, "--min-turns", "2")
    assert accepted.returncode == 0, accepted.stderr
    assert (tmp_path / "train" / "data.jsonl").is_file()
    refused = _run_prepare(root, tmp_path, "--min-turns", "-1")
    assert refused.returncode == 2
    assert "--min-turns: input 'min_turns': -1 is below the minimum 0" in refused.stderr


def test_values_are_typed_and_optional_inputs_default_to_none():
    program = component_program(REPO / "components" / "evaluate")
    args = program.parse(["--test", "t", "--model", "m", "--passed-out", "p", "--metrics-out", "x",
                          "--report-out", "r", "--max-examples", "3"])
    assert args.max_examples == 3 and args.schema is None and args.champion_uri is None
    assert args.test == Path("t") and args.metrics == Path("x")
    assert args.parameters()["max_examples"] == 3 and "test" not in args.parameters()


def test_enum_and_missing_values_are_refused_by_name(capsys):
    program = component_program(REPO / "components" / "train")
    with pytest.raises(SystemExit) as exit_info:
        program.parse(["--train", "t", "--model-out", "m", "--checkpoints", "c", "--mlflow-run-id-out", "r",
                       "--method", "dpo"])
    assert exit_info.value.code == 2
    assert "input 'method': 'dpo' is not one of ['lora', 'full', 'qlora']" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        program.parse(["--train", "t"])
    assert "--model-out" in capsys.readouterr().err


def test_help_shows_description_default_and_range(capsys):
    with pytest.raises(SystemExit):
        component_program(REPO / "components" / "prepare").parse(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "of a near-duplicate with the same answer; range [0, 1]; default: 0.85" in out
