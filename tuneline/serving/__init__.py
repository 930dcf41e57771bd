"""Serving: a real Triton Inference Server (bundled by nvidia-pytriton) behind a bearer-token proxy.

- `repository`: writes the Triton model repository (Python backend) from an HF folder or LoRA adapter;
  the cluster's `triton` target serves the same repository.
- `env`: the serve venv (numpy<2 for pytriton) and where its tritonserver binary lives.
- `local`: runs tritonserver and the proxy as detached processes; `python -m tuneline.serving stop`.
- `proxy`: the auth reverse proxy; `auth`: the token; `smoke`: tritonclient smoke test.
- `rollout`: blue/green deploy with smoke tests, used by the deploy component.
- `limits` (every limit, with docs/serving.md), `guard` (body size and read timeouts), `supervisor` (restarts a
  dead engine), `ratings` (feedback on served requests only), `engine_http` (Triton on a unix socket).

Locally we run the `tritonserver` binary from the pytriton wheel on a plain model repository rather than
pytriton's bind-a-function API: the repository (config.pbtxt + Python-backend model.py + HF folder) is then
exactly what the cluster's Triton serves, dynamic batching and instance groups are Triton's own, and the
server is an ordinary process we can detach, health-check and stop.

Health routes (`/v2/health/*`) are open for probes; everything else through the proxy needs the token.

The names below load lazily, so `python -m tuneline.serving.<module>` does not import its module twice.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RepositoryError": "repository",
    "RepositorySpec": "repository",
    "write_repository": "repository",
    "RolloutResult": "rollout",
    "rollout": "rollout",
    "ServeError": "local",
    "status": "local",
    "stop_all": "local",
    "SmokeResult": "smoke",
    "smoke_test": "smoke",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tuneline.serving' has no attribute {name!r}")
    return getattr(importlib.import_module(f"tuneline.serving.{_EXPORTS[name]}"), name)
