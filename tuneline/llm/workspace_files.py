"""Model files on an Azure ML workspace: where a step's output lives in the workspace's datastore, and reading a
registered version's files back from there.

A workspace's MLflow artifact locations are `azureml://` ones that only azureml-mlflow reads and writes, and
azureml-mlflow cannot be installed beside the pinned MLflow (tuneline/settings.py). So on a workspace a step
writes model files into one of its own outputs, which Azure ML keeps in the workspace's datastore, and the
registered version's `source` is that output's datastore URI.

Where an output lives: a node output bound without `path:` is written to `azureml://datastores/
${{default_datastore}}/paths/azureml/${{name}}/${{output_name}}/` (azure-ai-docs articles/machine-learning/
how-to-manage-inputs-outputs-pipeline.md, "Customize output path"), and `${{name}}` is the job's name, which is
also its run id (`AZUREML_RUN_ID` in the job). The compiled pipeline pins `settings.default_datastore` to
`workspaceblobstore` (tuneline.targets.azureml.compiler), so the URI is known inside the job.

Reading it back: `MLClient.models.download` (azure-ai-ml 1.35.2, operations/_model_operations.py `download`) takes
the version's path, parses it as `azureml://datastores/<datastore>/paths/<prefix>` (`_utils/_storage_utils.py
get_ds_name_and_path_prefix`), and downloads the prefix with the datastore's credentials into
`<dst>/<name>/<last part of the prefix>/`. That call needs Azure (the job's identity, through
DefaultAzureCredential) and cannot run on this machine. The conformance harness's stand-in workspace instead
names, in `DATASTORES_VAR`, the folder that holds each datastore's files, as a mount of the datastore would.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from tuneline.settings import AZUREML_DEFAULT_DATASTORE

DATASTORE_URI = re.compile(r"^azureml://datastores/([^/]+)/paths/(.+?)/?$")
# Set only by the stand-in workspace (tools/conformance): <folder>/<datastore>/<path> holds a datastore's files.
DATASTORES_VAR = "TUNELINE_AZUREML_DATASTORES"
_WORKSPACE_VARS = ("AZUREML_ARM_SUBSCRIPTION", "AZUREML_ARM_RESOURCEGROUP", "AZUREML_ARM_WORKSPACE_NAME")


class WorkspaceFilesError(RuntimeError):
    pass


def output_uri(output: str, *parts: str) -> str:
    """The datastore URI of this job's output `output` (and a path inside it)."""
    job = os.environ.get("AZUREML_RUN_ID")
    if not job:
        raise WorkspaceFilesError("AZUREML_RUN_ID is not set: the output's datastore path names the job, and only "
                                  "an Azure ML job knows its name")
    tail = "/".join(p.strip("/") for p in (output, *parts) if p)
    return f"azureml://datastores/{AZUREML_DEFAULT_DATASTORE}/paths/azureml/{job}/{tail}"


def is_datastore_uri(uri: str) -> bool:
    return DATASTORE_URI.match(uri) is not None


def download(name: str, version: str | int, source: str, dst: Path) -> Path:
    """The folder holding registered version `name`:`version`'s files (its `source`, a datastore URI), in `dst`."""
    match = DATASTORE_URI.match(source)
    if match is None:
        raise WorkspaceFilesError(f"{name}:{version}: source {source!r} is not an azureml://datastores/<name>/"
                                  f"paths/<path> URI")
    datastore, path = match.groups()
    target = dst / name / Path(path).name  # where MLClient.models.download puts a folder
    mounted = os.environ.get(DATASTORES_VAR)
    if mounted:
        folder = Path(mounted) / datastore / path
        if not folder.is_dir():
            raise WorkspaceFilesError(f"{name}:{version}: {source} holds no files ({folder} is not a folder)")
        shutil.copytree(folder, target, dirs_exist_ok=True)
        return target
    _download_with_azure(name, str(version), dst)  # pragma: no cover - needs Azure (module docstring)
    if not target.is_dir():  # pragma: no cover
        raise WorkspaceFilesError(f"{name}:{version}: MLClient.models.download left no folder at {target}")
    return target  # pragma: no cover


def _download_with_azure(name: str, version: str, dst: Path) -> None:  # pragma: no cover - needs Azure
    missing = [k for k in _WORKSPACE_VARS if not os.environ.get(k)]
    if missing:
        raise WorkspaceFilesError(f"cannot name the workspace to download from: {', '.join(missing)} not set "
                                  f"(Azure ML sets them in every job)")
    from azure.ai.ml import MLClient
    from azure.identity import DefaultAzureCredential

    client = MLClient(DefaultAzureCredential(), *(os.environ[k] for k in _WORKSPACE_VARS))
    client.models.download(name=name, version=version, download_path=str(dst))
