"""Where the serving runtime finds its model repository: KServe's explicit `--model-repository` as before, else the
one folder Azure ML mounted under AZUREML_MODEL_DIR (the registered folder keeps its name there), else /mnt/models.
The runtime's whole command against a real tritonserver: tests/serving/deploy/test_azureml_serving.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tuneline.serving import runtime


def _repository(folder: Path) -> Path:
    (folder / "tuneline-llm" / "1").mkdir(parents=True)
    (folder / "tuneline-llm" / "config.pbtxt").write_text('name: "tuneline-llm"\n')
    return folder


def test_an_explicit_repository_wins(tmp_path: Path):
    """KServe's ServingRuntime passes --model-repository=/mnt/models: AZUREML_MODEL_DIR never overrides it."""
    given = Path("/mnt/models")
    assert runtime.model_repository(given, {"AZUREML_MODEL_DIR": str(tmp_path)}) == given
    assert runtime.model_repository(None, {}) == runtime.KSERVE_MOUNT


def test_the_registered_folder_is_found_below_the_model_dir(tmp_path: Path):
    model_dir = tmp_path / "azureml-models" / "tuneline-llm-triton" / "3"
    repo = _repository(model_dir / "repository")
    assert runtime.model_repository(None, {"AZUREML_MODEL_DIR": str(model_dir)}) == repo
    # A repository mounted as the model dir itself is taken as it is.
    assert runtime.find_repository(repo) == repo


def test_no_repository_or_two_are_named(tmp_path: Path):
    (tmp_path / "empty" / "model").mkdir(parents=True)
    with pytest.raises(runtime.RepositoryNotFound, match=r"empty: no Triton model repository there"):
        runtime.find_repository(tmp_path / "empty")
    _repository(tmp_path / "two" / "a")
    _repository(tmp_path / "two" / "b")
    with pytest.raises(runtime.RepositoryNotFound, match=r"2 repositories \(a, b\)"):
        runtime.find_repository(tmp_path / "two")
    with pytest.raises(runtime.RepositoryNotFound, match="AZUREML_MODEL_DIR=.*missing: no such folder"):
        runtime.model_repository(None, {"AZUREML_MODEL_DIR": str(tmp_path / "missing")})


def test_main_exits_2_naming_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch):
    monkeypatch.setenv("AZUREML_MODEL_DIR", str(tmp_path))
    assert runtime.main([]) == 2
    assert f"AZUREML_MODEL_DIR={tmp_path}: no Triton model repository" in capsys.readouterr().err
