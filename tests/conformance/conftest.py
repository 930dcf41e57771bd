from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGES = ("localhost/tuneline/train-cpu:dev", "localhost/tuneline/control:dev")  # what `make images` builds here


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """The Azure ML harness's stand-in workspace: a real MLflow server reached as a workspace's tracking endpoint."""
    from tools.conformance.workspace_mlflow import WorkspaceMlflow

    with WorkspaceMlflow(tmp_path_factory.mktemp("workspace")) as ws:
        yield ws


def _why_no_images() -> str | None:
    if os.geteuid() != 0 or shutil.which("podman") is None:
        return "needs root and podman"
    for image in IMAGES:
        if subprocess.run(["podman", "image", "exists", image], capture_output=True).returncode != 0:
            return f"{image} is not built (make images)"
    return None


@pytest.fixture(scope="module")
def image_engine(tmp_path_factory):
    """A podman service, once the project's images are here and hold this working tree's code; skips otherwise
    (`make conformance` builds them first)."""
    why = _why_no_images()
    if why:
        pytest.skip(why)
    from tools.conformance.images import StaleImage, check_images
    from tools.conformance.podman import PodmanService

    with PodmanService.start(tmp_path_factory.mktemp("podman")) as engine:
        try:
            check_images(engine, IMAGES, REPO)
        except StaleImage as exc:
            pytest.skip(str(exc))
        yield engine
