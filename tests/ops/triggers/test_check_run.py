"""`tuneline trigger check [--run]` end to end on a small project: data grows past the threshold, a run
starts,
and the next check says no with the reason. Decisions land in a real MLflow store."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from tests.support.tickets import ticket_records
from tuneline.targets.local.record import list_runs

from .conftest import write_records


@pytest.mark.slow
def test_new_data_drives_a_run_then_quiets_down(project, ops_cli, tmp_path):
    code, out, err = ops_cli("run", "pipelines/grow.yaml")
    assert code == 0, err

    code, out, _ = ops_cli("trigger", "check", "pipelines/grow.yaml")
    assert code == 0
    assert "retrain: no" in out and "tickets.jsonl unchanged since run" in out

    write_records(project / "data" / "tickets.jsonl", ticket_records(5, seed=2), mode="a")  # 12.5% new
    code, out, _ = ops_cli("trigger", "check", "pipelines/grow.yaml", "--json")
    decision = json.loads(out)
    assert code == 0 and decision["retrain"] is False
    new_data = decision["results"][0]
    assert new_data["metrics"]["new_records"] == 5 and new_data["metrics"]["baseline_records"] == 40

    write_records(project / "data" / "tickets.jsonl", ticket_records(3, seed=3), mode="a")  # 8/40 = 20%
    code, out, err = ops_cli("trigger", "check", "pipelines/grow.yaml", "--run")
    assert code == 10, out + err
    assert "retrain: YES (new_data fired)" in out and "40 -> 48 records" in out and "20.0% new" in out
    runs = list_runs(project / ".tuneline" / "runs")
    assert len(runs) == 2 and runs[-1]["status"] == "succeeded"
    assert f"pipeline run {runs[-1]['run_id']}: succeeded" in out

    code, out, _ = ops_cli("trigger", "check", "pipelines/grow.yaml")
    assert code == 0
    assert f"tickets.jsonl unchanged since run {runs[-1]['run_id']} (48 records)" in out

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tuneline-triggers")
    checks = client.search_runs([experiment.experiment_id], order_by=["attribute.start_time ASC"])
    assert [r.data.tags["tuneline.trigger.retrain"] for r in checks] == ["false", "false", "true", "false"]
    fired = checks[2]
    assert fired.data.tags["tuneline.trigger.pipeline_run"] == runs[-1]["run_id"]
    assert fired.data.metrics["new_data.new_fraction"] == 0.2
    assert fired.data.params["trigger.new_data_fraction"] == "0.15"
    local = client.download_artifacts(fired.info.run_id, "decision.json", str(tmp_path))
    saved = json.loads(open(local).read())
    assert saved["fired"] == ["new_data"] and saved["pipeline_run"]["status"] == "succeeded"


def test_first_check_without_any_run_fires_and_exit_zero_maps_it(project, ops_cli):
    code, out, _ = ops_cli("trigger", "check", "pipelines/grow.yaml", "--no-record", "--exit-zero")
    assert code == 0 and "no successful run of 'grow' yet; 40 records" in out
    code, _, _ = ops_cli("trigger", "check", "pipelines/grow.yaml", "--no-record")
    assert code == 10


def test_a_bad_dataset_param_is_a_clear_error(project, ops_cli):
    code, _, err = ops_cli(
        "trigger", "check", "pipelines/grow.yaml", "--no-record", "--dataset-param", "nope"
    )
    assert code == 2 and "no parameter 'nope'" in err and "grow.yaml" in err


def test_new_data_counts_records_as_prepare_reads_them(project, ops_cli):
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(ticket_records(9, seed=5)), project / "data" / "tickets.parquet")
    with gzip.open(project / "data" / "tickets.jsonl.gz", "wt") as fh:  # blank lines are not records
        fh.writelines(json.dumps(r) + "\n\n" for r in ticket_records(6, seed=4))
    for name, records in (("tickets.parquet", 9), ("tickets.jsonl.gz", 6)):
        code, out, err = ops_cli("trigger", "check", "pipelines/grow.yaml", "--set", f"dataset=data/{name}",
                                 "--no-record", "--exit-zero")
        assert code == 0, err
        assert f"no successful run of 'grow' yet; {records} records" in out
    (project / "data" / "broken.parquet").write_text("not parquet\n")
    code, _, err = ops_cli("trigger", "check", "pipelines/grow.yaml", "--set", "dataset=data/broken.parquet",
                           "--no-record")
    assert code == 2 and "parameter 'dataset': broken.parquet: not a readable Parquet file" in err
