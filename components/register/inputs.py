"""Read and check the register step's inputs: the train folder's summary and the evaluate step's metrics.

Every error names the file and the field at fault.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from tuneline.llm.ml.models import SUMMARY_FILE


class InputError(ValueError):
    """An input file is missing or malformed; the message names the file and field."""


def _read_json(path: Path) -> object:
    if not path.is_file():
        raise InputError(f"{path}: file not found")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}:{exc.lineno}:{exc.colno}: invalid JSON: {exc.msg}") from exc


@dataclass(frozen=True)
class TrainedModel:
    folder: Path
    base_model: str
    method: str
    is_adapter: bool
    hyperparameters: dict = field(default_factory=dict)
    data_sha256: str = ""
    train_run_id: str = ""
    summary: dict = field(default_factory=dict)


def read_trained_model(folder: Path) -> TrainedModel:
    if not folder.is_dir():
        raise InputError(f"{folder}: model folder not found")
    path = folder / SUMMARY_FILE
    summary = _read_json(path)
    if not isinstance(summary, dict):
        raise InputError(f"{path}: expected a JSON object")
    for key in ("base_model", "method"):
        if not isinstance(summary.get(key), str) or not summary[key]:
            raise InputError(f"{path}: field '{key}' is missing or not a non-empty string")
    is_adapter = (folder / "adapter_config.json").is_file()
    if not is_adapter and not (folder / "config.json").is_file():
        raise InputError(f"{folder}: neither adapter_config.json (LoRA adapter) nor config.json (full model)")
    hyper = summary.get("hyperparameters") or {}
    if not isinstance(hyper, dict):
        raise InputError(f"{path}: field 'hyperparameters' must be an object")
    data = summary.get("data") or {}
    data_sha = (
        (data.get("train_sha256") if isinstance(data, dict) else None) or summary.get("data_sha256") or ""
    )
    return TrainedModel(
        folder=folder,
        base_model=summary["base_model"],
        method=summary["method"],
        is_adapter=is_adapter,
        hyperparameters=hyper,
        data_sha256=str(data_sha),
        train_run_id=str(summary.get("mlflow_run_id") or ""),
        summary=summary,
    )


@dataclass(frozen=True)
class Evaluation:
    path: Path
    models: dict[str, dict[str, float]]  # "base", "tuned", optionally "champion" -> metric -> value
    gates: dict
    test_sha256: str = ""
    champion_version: int | None = None  # the registry version scored as "champion", when recorded

    def value(self, model: str, metric: str) -> float:
        scores = self.models.get(model)
        if scores is None:
            raise InputError(
                f"{self.path}: no metrics for model '{model}' (has: {', '.join(sorted(self.models))})"
            )
        if metric not in scores:
            raise InputError(
                f"{self.path}: field '{model}.{metric}' not found "
                f"(metrics of {model}: {', '.join(sorted(scores))})"
            )
        return scores[metric]


def read_evaluation(path: Path) -> Evaluation:
    """The evaluate step's document: ``{"models": {"base": {...}, "tuned": {...}}, "gates": ...}``; the flat
    form
    ``{"base": {...}, "tuned": {...}}`` is accepted too."""
    doc = _read_json(path)
    if not isinstance(doc, dict):
        raise InputError(f"{path}: expected a JSON object")
    raw = doc.get("models", {k: v for k, v in doc.items() if k in ("base", "tuned", "champion")})
    if not isinstance(raw, dict) or "tuned" not in raw:
        raise InputError(f"{path}: field 'models.tuned' (the tuned model's metrics) is missing")
    models: dict[str, dict[str, float]] = {}
    for model, scores in raw.items():
        if not isinstance(scores, dict):
            raise InputError(f"{path}: field 'models.{model}' must be an object of metric -> number")
        clean: dict[str, float] = {}
        for metric, value in scores.items():
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise InputError(f"{path}: field 'models.{model}.{metric}' must be a number, got {value!r}")
            if math.isfinite(float(value)):
                clean[metric] = float(value)
        models[model] = clean
    gates = doc.get("gates") if isinstance(doc.get("gates"), dict) else {}
    version = doc.get("champion_version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
        raise InputError(f"{path}: field 'champion_version' must be an integer, got {version!r}")
    return Evaluation(
        path=path,
        models=models,
        gates=gates,
        test_sha256=str(doc.get("test_sha256") or ""),
        champion_version=version,
    )
