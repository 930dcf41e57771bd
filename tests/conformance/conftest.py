from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The Azure ML harness's stand-in workspace: a real MLflow server reached as a workspace's tracking endpoint."""
    from tools.conformance.workspace_mlflow import WorkspaceMlflow

    with WorkspaceMlflow(tmp_path_factory.mktemp("workspace")) as ws:
        yield ws
