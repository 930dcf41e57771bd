"""The typed DAG: which steps may be answered from a cache, whatever executes them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tuneline.graph import build_graph
from tuneline.spec import load_pipeline
from tuneline.spec.model_uri import is_moving_reference
from tuneline.targets.build import compile_graph
from tuneline.targets.options import CompileOptions

FEEDBACK = Path("pipelines/feedback.yaml")


@pytest.mark.parametrize(("uri", "moves"), [
    ("models:/tuneline-tickets@champion", True), ("models:/tuneline-tickets/latest", True),
    ("models:/tuneline-tickets/Production", True), ("models:/tuneline-tickets/3", False),
    ("smollm2-135m-instruct", False), ("runs:/abc/model", False), ("data/sample/tickets.jsonl", False)])
def test_a_reference_moves_when_the_registry_picks_its_version_at_read_time(uri: str, moves: bool):
    assert is_moving_reference(uri) is moves


def test_a_step_reading_the_champion_by_alias_is_never_answered_from_a_cache():
    """preference trains the champion further and evaluate judges against it, both `cache: true`: a resubmission
    after a promotion was answered with a challenger trained from, and judged against, the old champion, since no
    cache key (KFP's, Azure ML's or the local runner's) sees an alias move."""
    graph = build_graph(load_pipeline(FEEDBACK))
    assert graph.nodes["preference"].moving_inputs == {"sft_model_uri": "models:/tuneline-tickets@champion"}
    assert not graph.nodes["preference"].cache_enabled and not graph.nodes["evaluate"].cache_enabled
    assert graph.nodes["preference"].declares_cache  # the component's own choice stands where nothing moves
    assert graph.nodes["prepare"].cache_enabled


def test_a_pinned_version_keeps_the_cache():
    graph = build_graph(load_pipeline(FEEDBACK, {"champion": "models:/tuneline-tickets/7"}))
    assert graph.nodes["preference"].cache_enabled and graph.nodes["evaluate"].cache_enabled


def test_both_compiled_targets_turn_caching_off_for_it(tmp_path: Path):
    out = compile_graph(build_graph(load_pipeline(FEEDBACK)), ("kfp", "azureml"), tmp_path, CompileOptions())
    kfp = next(yaml.safe_load_all((out.folder / "kfp" / "pipeline.yaml").read_text()))
    tasks = kfp["root"]["dag"]["tasks"]
    assert tasks["preference"].get("cachingOptions", {}).get("enableCache", False) is False
    assert tasks["prepare"]["cachingOptions"]["enableCache"] is True
    component = yaml.safe_load((out.folder / "azureml" / "components" / "preference.yml").read_text())
    assert component["is_deterministic"] is False
