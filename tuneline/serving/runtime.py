"""The serve image's model server on a cluster: tritonserver (as the nvidia-pytriton wheel bundles it) on a model
repository, listening on all interfaces, as KServe's `tuneline-triton` ServingRuntime starts it.

KServe's stock Triton runtime runs NVIDIA's image, which lacks what the repository's Python-backend model imports
(vLLM, transformers, peft): the repository the `triton` target writes needs the serve image, where that tritonserver
has no fixed path and its Python backend needs the stub for the image's Python staged beside it
(tuneline.serving.env.triton_install). This entry finds both and replaces itself with tritonserver, so the pod's
main process is the server and gets the kubelet's SIGTERM itself. The image stages the backend at build time
(`--stage-only`): at run time the venv is not writable by the pod's user.

Run as: python -m tuneline.serving.runtime --model-repository /mnt/models [--http-port 8080] [--grpc-port 9000]
        python -m tuneline.serving.runtime --stage-only
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tuneline.serving.env import TritonInstall, triton_install


def command(install: TritonInstall, repository: Path, http_port: int, grpc_port: int, metrics_port: int) -> list[str]:
    """tritonserver's arguments: KServe's ports (8080 HTTP, 9000 gRPC, the Triton runtime's), the repository's models
    loaded at start (`--model-control-mode=none`, as KServe's Triton runtime runs it), their config.pbtxt as
    written (no auto-complete)."""
    return [
        str(install.tritonserver),
        f"--model-repository={repository}",
        f"--backend-directory={install.backend_dir}",
        "--http-address=0.0.0.0",
        f"--http-port={http_port}",
        "--allow-grpc=true",
        f"--grpc-port={grpc_port}",
        "--allow-metrics=true",
        f"--metrics-port={metrics_port}",
        "--model-control-mode=none",
        "--disable-auto-complete-config",
        "--log-verbose=0",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuneline.serving.runtime", description=__doc__.splitlines()[0])
    parser.add_argument("--model-repository", type=Path, default=Path("/mnt/models"),
                        help="the Triton model repository (KServe's storage initializer puts it at /mnt/models)")
    parser.add_argument("--http-port", type=int, default=8080)
    parser.add_argument("--grpc-port", type=int, default=9000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--stage-only", action="store_true",
                        help="stage the Python backend for this interpreter and exit (the image's build step)")
    args = parser.parse_args(argv)
    install = triton_install(Path(sys.prefix))
    if args.stage_only:
        print(f"tritonserver {install.tritonserver}; Python backend staged in {install.backend_dir}")
        return 0
    if not args.model_repository.is_dir():
        print(f"error: --model-repository {args.model_repository}: no such folder", file=sys.stderr)
        return 2
    argv_ = command(install, args.model_repository.resolve(), args.http_port, args.grpc_port, args.metrics_port)
    os.execve(argv_[0], argv_, install.environment())
    return 0  # not reached: execve replaces this process


if __name__ == "__main__":
    sys.exit(main())
