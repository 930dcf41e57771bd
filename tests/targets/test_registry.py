"""Targets are found by folder, and a fourth one plugs in without an edit to tuneline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.targets.fixtures.outline_target import TARGET as OUTLINE
from tuneline.graph import build_graph
from tuneline.spec import load_pipeline
from tuneline.spec.targets import TARGETS_FOLDER, compile_targets
from tuneline.targets import CompileError, registry, submit
from tuneline.targets.build import compile_graph
from tuneline.targets.options import CompileOptions

TOY = Path(__file__).resolve().parents[1] / "fixtures" / "toy" / "pipelines" / "toy.yaml"


@pytest.fixture
def outline():
    registry.register(OUTLINE)
    yield OUTLINE
    registry.unregister(OUTLINE.name)


def test_the_shipped_targets_are_the_folders_that_hold_a_target_module():
    folders = sorted(p.parent.name for p in TARGETS_FOLDER.glob("*/target.py"))
    assert list(compile_targets()) == folders and {"kfp", "azureml"} <= set(folders)
    for name in folders:
        assert registry.get(name).name == name


def test_a_fourth_target_registered_from_a_test_folder_compiles_the_toy_fixture(outline, tmp_path):
    graph = build_graph(load_pipeline(TOY))
    output = compile_graph(graph, ("outline",), tmp_path / "out", CompileOptions())
    assert output.files == [tmp_path / "out" / "outline" / "outline.json"]
    outline_file = json.loads(output.files[0].read_text())
    assert [s["step"] for s in outline_file["steps"]] == graph.order
    assert all(s["command"] for s in outline_file["steps"])
    assert "outline" in registry.names()


def test_a_fourth_target_is_submitted_through_the_same_path(outline, tmp_path):
    done = submit.submit_pipeline(TOY, "outline", tmp_path / "submit", {}, {}, submit.SubmitSettings())
    assert done.target == "outline" and done.run_id == "toy" and done.lines[0] == "outline toy"


def test_a_fourth_target_is_a_choice_of_tuneline_submit_with_the_flags_it_declares(outline, tmp_path, capsys):
    import argparse

    from tuneline.cli.compile import add_commands

    parser = argparse.ArgumentParser(prog="tuneline")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["submit", str(TOY), "--target", "outline", "--outline-note", "from its own flag",
                              "--out", str(tmp_path)])
    assert args.handler(args) == 0
    assert capsys.readouterr().out.splitlines()[::2] == ["outline toy", "  from its own flag"]


def test_an_unknown_target_names_the_known_ones():
    with pytest.raises(CompileError, match="unknown target 'nowhere'; one of azureml, kfp"):
        registry.get("nowhere")
