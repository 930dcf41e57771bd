"""The compile options only Kubeflow Pipelines reads (they differ per cluster), declared once: the dataclass the
compiler reads, and the flags `tuneline compile`, `tuneline submit` and `trigger check --submit` offer for it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...settings import HF_SECRET_FLAG, HF_TOKEN_VAR
from ..base import Setting

DEFAULT_MLFLOW_CONFIG_MAP = "tuneline-mlflow"  # k8s/kubeflow/ creates it where KFP runs the pods
# The tracking server's login for pipeline pods (MLFLOW_TRACKING_USERNAME/_PASSWORD): the in-cluster MLflow runs
# behind basic auth, so every MLflow-using step needs one. A plain Secret in the pods' namespace, created once
# (docs/aks.md); `--mlflow-secret ''` compiles without it, for a tracking server without authentication.
DEFAULT_MLFLOW_SECRET: str | None = "tuneline-mlflow-login"
DEFAULT_CHECKPOINT_PVC = "tuneline-checkpoints"
# Hugging Face Hub downloads of the steps that load a model (an input of kind model_ref) go to one cache on the
# checkpoint volume, shared by every step and run: train and evaluate of a 16 GB model download it once.
HF_CACHE_DIR = "hf-cache"
# A Secret with key HF_TOKEN for gated Hub models (meta-llama/..., google/gemma-...), given with --hf-secret.
# Not by default: KFP 2.14's API server refuses optional Secret references (see kfp.py _drop_unset_optional),
# and a required one would stop every pod on a cluster without it.
HF_SECRET_KEYS = (HF_TOKEN_VAR,)
DEFAULT_KFP_SERVICE_ACCOUNT = "tuneline-pipeline"  # k8s/kubeflow/ creates it; runs are submitted with it
# KFP's own default (backend/src/v2/config/env.go, 2.14.0 to 2.17.0); a cluster whose kfp-launcher ConfigMap sets
# another `defaultPipelineRoot` compiles with that one (--kfp-pipeline-root), since imports must share its bucket.
DEFAULT_KFP_PIPELINE_ROOT = "minio://mlpipeline/v2/artifacts"
# Keys of the MLflow ConfigMap and Secret, each exposed under the same environment variable name.
MLFLOW_CONFIG_KEYS = ("MLFLOW_TRACKING_URI",)
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@dataclass(frozen=True)
class KfpOptions:
    mlflow_config_map: str | None = DEFAULT_MLFLOW_CONFIG_MAP
    mlflow_secret: str | None = DEFAULT_MLFLOW_SECRET
    checkpoint_pvc: str = DEFAULT_CHECKPOINT_PVC
    hf_secret: str | None = None                 # Secret with HF_TOKEN for the steps that load a model
    pipeline_root: str = DEFAULT_KFP_PIPELINE_ROOT  # where the cluster's KFP keeps artifacts


COMPILE_SETTINGS = (
    Setting("mlflow_config_map", ("--mlflow-config-map",), "Kubernetes ConfigMap with MLFLOW_TRACKING_URI "
            f"(k8s/kubeflow/ creates it; default: {DEFAULT_MLFLOW_CONFIG_MAP}); '' for none"),
    Setting("mlflow_secret", ("--mlflow-secret",), "Kubernetes Secret with MLFLOW_TRACKING_USERNAME/_PASSWORD for "
            f"the tracking server's basic auth (default: {DEFAULT_MLFLOW_SECRET}); '' for none"),
    Setting("checkpoint_pvc", ("--checkpoint-pvc",), "PersistentVolumeClaim mounted on resumable steps and on steps "
            f"that load a model (their Hugging Face cache lives there; default: {DEFAULT_CHECKPOINT_PVC})"),
    Setting("hf_secret", (HF_SECRET_FLAG,), "Kubernetes Secret with HF_TOKEN, given to the steps that load a model "
            "(gated Hub models need it); default: none"),
    Setting("pipeline_root", ("--kfp-pipeline-root",), "the cluster's KFP pipeline root (kfp-launcher ConfigMap "
            f"defaultPipelineRoot; default: {DEFAULT_KFP_PIPELINE_ROOT}): imported data must be in its bucket"),
)


def kfp_options(values: dict[str, Any]) -> KfpOptions:
    """From the flags' values by setting name: None is not given (the default), '' is none."""
    given = {name: (value or None) for name, value in values.items() if value is not None}
    return KfpOptions(**given)
