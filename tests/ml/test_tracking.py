"""tuneline.ml.tracking on a real MLflow store: an Azure ML artifact root it cannot upload to is noted on the run
instead of failing the step after its work is done; any other artifact root is uploaded to."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneline.ml.tracking import Run


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
