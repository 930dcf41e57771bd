"""The serve image's model server on a cluster: tritonserver (as the nvidia-pytriton wheel bundles it) on a model
repository, listening on all interfaces, as KServe's `tuneline-triton` ServingRuntime starts it and as the serve
image's own command starts it in an Azure ML online deployment.

KServe's stock Triton runtime runs NVIDIA's image, which lacks what the repository's Python-backend model imports
(vLLM, transformers, peft): the repository the `triton` target writes needs the serve image, where that tritonserver
has no fixed path and its Python backend needs the stub for the image's Python staged beside it
(tuneline.serving.env.triton_install). This entry finds both and replaces itself with tritonserver, so the pod's
main process is the server and gets the kubelet's SIGTERM itself. The image stages the backend at build time
(`--stage-only`): at run time the venv is not writable by the pod's user.

Where the repository is: `--model-repository` (KServe's ServingRuntime passes its storage initializer's
`/mnt/models`). Without it, under `AZUREML_MODEL_DIR` when that is set: an Azure ML deployment cannot pass arguments
to a custom container (it runs the image's command), and mounts the registered model folder read-only under the
folder that variable names (`/var/azureml-app/azureml-models/<model>/<version>`), the registered folder keeping its
own name below it (azure-ai-docs concept-online-deployment-model-specification.md; azureml-examples
cli/endpoints/online/custom-container/triton/single-model, whose `models/model_1` is served from the mount as the
repository's `model_1`). So the repository is looked for there and one folder down, and must be the only one.
Otherwise `/mnt/models`.

Run as: python -m tuneline.serving.runtime --model-repository /mnt/models [--http-port 8080] [--grpc-port 9000]
        python -m tuneline.serving.runtime          (the serve image's command: Azure ML, AZUREML_MODEL_DIR)
        python -m tuneline.serving.runtime --stage-only
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tuneline.serving.env import TritonInstall, triton_install

KSERVE_MOUNT = Path("/mnt/models")
AZUREML_MODEL_DIR = "AZUREML_MODEL_DIR"
HTTP_PORT = 8080  # KServe's Triton runtime's, and the port the Azure ML deployment's routes name


class RepositoryNotFound(LookupError):
    """No single Triton model repository where the runtime looked; the message names the folder."""


def _holds_models(folder: Path) -> bool:
    return any((child / "config.pbtxt").is_file() for child in folder.iterdir() if child.is_dir())


def find_repository(model_dir: Path) -> Path:
    """The Triton repository (a folder whose subfolders hold config.pbtxt) at `model_dir` or one folder below it:
    where Azure ML mounts a registered folder (see the module docstring)."""
    if not model_dir.is_dir():
        raise RepositoryNotFound(f"{AZUREML_MODEL_DIR}={model_dir}: no such folder")
    if _holds_models(model_dir):
        return model_dir
    found = sorted(child for child in model_dir.iterdir() if child.is_dir() and _holds_models(child))
    if len(found) != 1:
        names = ", ".join(p.name for p in found)
        what = f"{len(found)} repositories ({names})" if found else "no Triton model repository"
        raise RepositoryNotFound(f"{AZUREML_MODEL_DIR}={model_dir}: {what} there or one folder below "
                                 "(a repository is a folder of <model>/config.pbtxt)")
    return found[0]


def model_repository(given: Path | None, environ: dict[str, str]) -> Path:
    """`--model-repository` if given; else the one under AZUREML_MODEL_DIR when that is set; else KServe's mount."""
    if given is not None:
        return given
    if environ.get(AZUREML_MODEL_DIR):
        return find_repository(Path(environ[AZUREML_MODEL_DIR]))
    return KSERVE_MOUNT


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
    parser.add_argument("--model-repository", type=Path, default=None,
                        help="the Triton model repository (KServe's storage initializer puts it at /mnt/models); "
                             f"default: the one under ${AZUREML_MODEL_DIR} when set, else {KSERVE_MOUNT}")
    parser.add_argument("--http-port", type=int, default=HTTP_PORT)
    parser.add_argument("--grpc-port", type=int, default=9000)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--stage-only", action="store_true",
                        help="stage the Python backend for this interpreter and exit (the image's build step)")
    args = parser.parse_args(argv)
    if args.stage_only:
        install = triton_install(Path(sys.prefix))
        print(f"tritonserver {install.tritonserver}; Python backend staged in {install.backend_dir}")
        return 0
    try:
        repository = model_repository(args.model_repository, dict(os.environ))
    except RepositoryNotFound as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not repository.is_dir():
        print(f"error: --model-repository {repository}: no such folder", file=sys.stderr)
        return 2
    install = triton_install(Path(sys.prefix))
    print(f"tuneline.serving.runtime: serving the model repository {repository}", flush=True)
    argv_ = command(install, repository.resolve(), args.http_port, args.grpc_port, args.metrics_port)
    os.execve(argv_[0], argv_, install.environment())
    return 0  # not reached: execve replaces this process


if __name__ == "__main__":
    sys.exit(main())
