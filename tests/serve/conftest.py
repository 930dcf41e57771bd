"""Fixtures for the serving tests: tiny random models and a live deployment (real Triton + proxy)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tinymodel import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tinymodel import build_tiny_lora_adapter

    return build_tiny_lora_adapter(tiny_model, tmp_path_factory.mktemp("tiny-lora"))


@pytest.fixture(scope="session")
def serve_venv():
    """The shared serve venv (built once by `make serve-venv`); skipped only if it cannot be built."""
    from tuneline.serve.env import ServeEnvError, ensure_serve_venv

    os.environ.setdefault("TUNELINE_SERVE_VENV", str(REPO / ".tuneline" / "serve-venv"))
    try:
        return ensure_serve_venv()
    except ServeEnvError as exc:
        pytest.skip(f"serve venv cannot be created (pip could not install nvidia-pytriton & co): {exc}")
