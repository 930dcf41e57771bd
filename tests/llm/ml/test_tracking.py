"""tuneline.llm.ml.tracking on a real MLflow store: an Azure ML artifact root it cannot upload to is noted on the run
instead of failing the step after its work is done; any other artifact root is uploaded to."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneline.llm.ml.tracking import Run


@pytest.fixture
def store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TUNELINE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    from tuneline import settings

    return settings.mlflow_client()


def test_an_azureml_artifact_root_is_noted_not_failed(store, tmp_path: Path, capsys):
    # What a workspace gives its runs: an azureml:// artifact root (MLflow keeps whatever the experiment names).
    store.create_experiment("aml", artifact_location="azureml://experiments/aml/runs")
    summary = tmp_path / "training_summary.json"
    summary.write_text("{}")
    run = Run(experiment="aml", run_name="train")
    assert run.client.get_run(run.run_id).info.artifact_uri.startswith("azureml://")
    run.log_artifact(summary, "model")
    tags = run.client.get_run(run.run_id).data.tags
    assert "azureml-mlflow" in tags["tuneline.artifact_not_uploaded.model/training_summary.json"]
    assert "model/training_summary.json not uploaded" in capsys.readouterr().err
    import mlflow

    # What the step met before: MLflow itself has no repository for the scheme.
    with pytest.raises(mlflow.exceptions.MlflowException, match="azureml"):
        run.client.log_artifact(run.run_id, str(summary))


def test_other_artifact_roots_are_uploaded(store, tmp_path: Path):
    summary = tmp_path / "training_summary.json"
    summary.write_text("{}")
    run = Run(experiment="local", run_name="train")
    run.log_artifact(summary, "model")
    assert [f.path for f in run.client.list_artifacts(run.run_id, "model")] == ["model/training_summary.json"]


def test_in_an_azure_ml_job_steps_log_into_the_jobs_own_run(store, monkeypatch: pytest.MonkeyPatch):
    """Azure ML creates a run per job (MLFLOW_RUN_ID) and shows its metrics on the job's page; steps created runs
    of their own in experiment `tuneline`, and evaluate set the finished train job's run back to RUNNING."""
    job_experiment = store.create_experiment("finetune")
    train_job = store.create_run(job_experiment, run_name="train").info.run_id
    store.set_terminated(train_job, "FINISHED")
    evaluate_job = store.create_run(job_experiment, run_name="evaluate").info.run_id
    monkeypatch.setenv("AZUREML_RUN_ID", evaluate_job)
    monkeypatch.setenv("MLFLOW_RUN_ID", evaluate_job)
    run = Run(run_id=train_job, experiment="tuneline", run_name="evaluate")
    assert run.run_id == evaluate_job
    run.log_metrics({"eval.tuned.field_accuracy": 0.9})
    run.finish()
    evaluated = store.get_run(evaluate_job)
    assert evaluated.data.metrics == {"eval.tuned.field_accuracy": 0.9}
    assert evaluated.data.tags["tuneline.for_run"] == train_job
    assert evaluated.info.status == "RUNNING"  # Azure ML ends the job's run with the job
    assert store.get_run(train_job).info.status == "FINISHED"
    assert store.get_experiment_by_name("tuneline") is None
    monkeypatch.delenv("AZUREML_RUN_ID")  # anywhere else MLFLOW_RUN_ID alone is not a job's run
    own = Run(experiment="tuneline", run_name="train")
    assert own.run_id != evaluate_job and store.get_run(own.run_id).info.experiment_id != job_experiment
