"""`--seed`: the earlier pipeline of a loop, run into each store before the compared run."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.conformance.__main__ import Seed, SeedFailed, main, seed_workspace
from tools.conformance.compare import RESUME_REASON, RUN_ID_REASON, volatile_reason
from tuneline.graph import build_graph
from tuneline.spec import load_pipeline

REPO = Path(__file__).resolve().parents[2]
TOY = REPO / "tests" / "fixtures" / "toy" / "pipelines" / "toy.yaml"


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


@pytest.mark.slow
@pytest.mark.heavy
def test_an_azureml_seed_runs_as_the_workspaces_jobs_into_the_datastores_given(image_engine, tmp_path: Path,
                                                                               workspace) -> None:
    # What the compared run's jobs then read a registered version's files from: the same datastores (R8a).
    datastores = tmp_path / "datastores"
    seed_workspace(Seed(str(TOY), {"count": "5"}), tmp_path / "azureml", workspace, {}, datastores, image_engine)
    with workspace.client() as client:
        runs = client.search_runs([client.get_experiment_by_name("toy").experiment_id])
    jobs = {r.info.run_name: r.info.run_id for r in runs}
    assert set(jobs) == {"gen", "check", "publish"}
    data = datastores / "workspaceblobstore" / "azureml" / jobs["gen"] / "data"
    assert len(list(data.iterdir())) == 1 and len((next(data.iterdir())).read_text().splitlines()) == 5
    assert (tmp_path / "azureml" / "seed" / "jobs" / "publish" / "log.txt").is_file()


@pytest.mark.slow
@pytest.mark.heavy
def test_a_seed_node_that_fails_as_an_azureml_job_is_named_with_its_reason(image_engine, toy: Path,
                                                                           workspace) -> None:
    pipeline = toy / "pipelines" / "failing.yaml"
    # Azure ML does not retry a node (R7), so the component's retry policy does not save it there. The marker
    # is in the job's code snapshot (its working folder), which every job gets afresh.
    pipeline.write_text(FAILING)
    with pytest.raises(SeedFailed, match=r"(?s)failing.yaml as Azure ML jobs failed \(no node finished\): "
                                         r"node 'flaky' exited with code 137:.*attempt 1: failing on purpose"):
        seed_workspace(Seed(str(pipeline), {}), toy / "work", workspace, {}, toy / "datastores", image_engine)


FAILING = """
name: failing
steps:
  flaky:
    component: components/flaky
    inputs: {marker: marker, fail_times: 5, exit_code: 137}
"""


@pytest.mark.heavy
def test_the_azureml_harness_seeds_both_runs_then_compares(image_engine, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture) -> None:
    assert main(["azureml", str(TOY), "--work", str(tmp_path), "--seed", str(TOY), "--seed-set", "count=2"]) == 0
    assert "azureml conformance: 3/3 steps match local" in capsys.readouterr().out
    work = tmp_path / "toy" / "azureml"
    # Each run's seed ran first: tuneline run into the local home, the compiled seed as the workspace's jobs.
    assert len(list((work / "local" / "runs").iterdir())) == 2
    assert "wrote 2 lines" in (work / "azureml" / "seed" / "jobs" / "gen" / "log.txt").read_text()


def test_what_differs_between_two_correct_runs_follows_the_declarations() -> None:
    graph = build_graph(load_pipeline(REPO / "pipelines" / "feedback.yaml"))
    preference = graph.nodes["preference"].component
    assert volatile_reason(preference, "checkpoints") == RESUME_REASON  # resume: true
    assert volatile_reason(preference, "mlflow_run_id") == RUN_ID_REASON
    assert volatile_reason(preference, "model") is None  # what resuming must reproduce
    assert volatile_reason(graph.nodes["evaluate"].component, "metrics") is None
