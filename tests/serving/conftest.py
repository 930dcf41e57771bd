"""Fixtures for the serving tests: tiny random models and a live deployment (real Triton + proxy)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tinymodel import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def heavier_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Still tiny, but 32 x 256 tokens take seconds here: long enough to leave a request while it generates."""
    from tests.support.tinymodel import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama-192x6"), hidden_size=192, layers=6)


@pytest.fixture(scope="session")
def tiny_adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.support.tinymodel import build_tiny_lora_adapter

    return build_tiny_lora_adapter(tiny_model, tmp_path_factory.mktemp("tiny-lora"))


@pytest.fixture(scope="session")
def serve_venv():
    """The shared serve venv (built once by `make serve-venv`); skipped only if it cannot be built."""
    from tuneline.serving.env import ServeEnvError, ensure_serve_venv

    os.environ.setdefault("TUNELINE_SERVE_VENV", str(REPO / ".tuneline" / "serve-venv"))
    try:
        return ensure_serve_venv()
    except ServeEnvError as exc:
        pytest.skip(f"serve venv cannot be created (pip could not install nvidia-pytriton & co): {exc}")


@contextlib.contextmanager
def running_proxy(state_dir: Path, token: str, limits=None) -> Iterator[int]:
    """The real proxy app under uvicorn in a thread of this process; yields its port."""
    import socket
    import threading
    import time

    import uvicorn

    from tuneline.serving.proxy import Proxy, ProxyLimits, build_app, uvicorn_config

    limits = limits or ProxyLimits()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn_config(build_app(Proxy(state_dir, token, limits)), limits))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
