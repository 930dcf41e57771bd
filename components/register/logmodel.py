"""Log a train-step folder as an MLflow pyfunc model (adapter + base reference, or adapter + bundled base).

Why an adapter plus a base reference rather than merged weights: a LoRA version then costs megabytes in the
registry instead of a full copy of the base per version, the base is shared and pinned by a weights sha256
that loading checks, and the train folder (with training_summary.json) stays intact for evaluate's champion
comparison. Serving merges anyway (the pyfunc at load, the Triton repository writer at deploy). Where the
loader will not have tuneline (a foreign serving stack), ``--base-weights bundle`` makes a version
self-contained.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path
from typing import Literal

from components.register.inputs import TrainedModel
from tuneline.llm.registry import weights_sha256

PYFUNC_FILE = Path(__file__).with_name("pyfunc_model.py")
# What the pyfunc imports at load; pinned to this environment's versions.
_REQUIREMENTS = ("mlflow", "torch", "transformers", "peft", "tokenizers", "safetensors", "pandas")


def pip_requirements() -> list[str]:
    pins = []
    for dist in _REQUIREMENTS:
        try:
            pins.append(f"{dist}=={metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pins.append(dist)
    return pins


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string")]),  # unnamed: a plain list of prompts is valid input
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema(
            [ParamSpec("max_new_tokens", "long", 64), ParamSpec("system_prompt", "string", "")]
        ),
    )


def base_reference(trained: TrainedModel, mode: Literal["reference", "bundle"]) -> tuple[Path | None, str]:
    """(base folder to bundle or None, base weights sha256 or "") for an adapter; (None, "") for full
    weights."""
    if not trained.is_adapter:
        return None, ""
    from tuneline.llm.ml.models import resolve_summary_base

    base = resolve_summary_base(trained.summary)
    return (base if mode == "bundle" else None), weights_sha256(base)


def _model_kwargs(trained: TrainedModel, mode: Literal["reference", "bundle"], system_prompt: str):
    bundled, base_sha = base_reference(trained, mode)
    artifacts = {"model": str(trained.folder)}
    if bundled is not None:
        artifacts["base"] = str(bundled)
    return dict(
        python_model=str(PYFUNC_FILE),
        artifacts=artifacts,
        model_config={
            "base_model": trained.base_model,
            "base_weights_sha256": base_sha,
            "system_prompt": system_prompt,
        },
        signature=signature(),
        pip_requirements=pip_requirements(),
    ), base_sha


def log_pyfunc(trained: TrainedModel, mode: Literal["reference", "bundle"], system_prompt: str = ""):
    """Log into the active MLflow run; returns (ModelInfo, base weights sha256)."""
    import mlflow

    kwargs, base_sha = _model_kwargs(trained, mode, system_prompt)
    return mlflow.pyfunc.log_model(name="model", **kwargs), base_sha


def save_pyfunc(trained: TrainedModel, path: Path, mode: Literal["reference", "bundle"],
                system_prompt: str = "") -> str:
    """The same model saved as a folder at `path` (an Azure ML workspace keeps it as a step output, since only
    azureml-mlflow could upload it to the workspace's artifact store); returns the base weights sha256."""
    import mlflow

    kwargs, base_sha = _model_kwargs(trained, mode, system_prompt)
    mlflow.pyfunc.save_model(path=str(path), **kwargs)
    return base_sha
