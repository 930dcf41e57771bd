"""`--seed`: the earlier pipeline of a loop, run into each store before the compared run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.conformance.__main__ import Seed, main
from tools.conformance.compare import RESUME_REASON, RUN_ID_REASON, volatile_reason
from tuneline.graph import build_graph
from tuneline.spec import load_pipeline

REPO = Path(__file__).resolve().parents[2]


def test_a_seed_takes_the_targets_values_but_reads_its_data_here() -> None:
    graph = Seed(str(REPO / "pipelines" / "finetune.yaml"), {"max_steps": "3"}).graph("kfp")
    # The cluster's deploy target, as the compared run has it: a seed must not start a local endpoint.
    assert graph.params["deploy_target"] == "kserve"
    assert graph.params["max_steps"] == 3
    # The object-store URIs the KFP target imports are this machine's files, which the seed runs on.
    for name in ("dataset", "schema"):
        assert Path(graph.params[name]).is_absolute() and Path(graph.params[name]).is_file(), graph.params[name]


def test_a_seed_keeps_a_data_uri_given_by_set() -> None:
    graph = Seed(str(REPO / "pipelines" / "finetune.yaml"), {"dataset": "/elsewhere/tickets.jsonl"}).graph("kfp")
    assert graph.params["dataset"] == "/elsewhere/tickets.jsonl"


def test_the_azureml_harness_refuses_a_seed_and_says_why(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = main(["azureml", str(REPO / "pipelines" / "feedback.yaml"), "--work", str(tmp_path),
                 "--seed", str(REPO / "pipelines" / "finetune.yaml")])
    assert code == 2
    assert "cannot seed its workspace yet" in capsys.readouterr().err


def test_what_differs_between_two_correct_runs_follows_the_declarations() -> None:
    graph = build_graph(load_pipeline(REPO / "pipelines" / "feedback.yaml"))
    preference = graph.nodes["preference"].component
    assert volatile_reason(preference, "checkpoints") == RESUME_REASON  # resume: true
    assert volatile_reason(preference, "mlflow_run_id") == RUN_ID_REASON
    assert volatile_reason(preference, "model") is None  # what resuming must reproduce
    assert volatile_reason(graph.nodes["evaluate"].component, "metrics") is None
