"""Settings of one compilation that do not belong in the pipeline YAML (they differ per cluster or run)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..spec.models import Images
from .images import ImageLock, ImagePlan, resolve_images

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
HF_SECRET_KEYS = ("HF_TOKEN",)
DEFAULT_KFP_SERVICE_ACCOUNT = "tuneline-pipeline"  # k8s/kubeflow/ creates it; runs are submitted with it
DEFAULT_AZUREML_COMPUTE = "cpu-cluster"
# KFP's own default (backend/src/v2/config/env.go, 2.14.0 to 2.17.0); a cluster whose kfp-launcher ConfigMap sets
# another `defaultPipelineRoot` compiles with that one (--kfp-pipeline-root), since imports must share its bucket.
DEFAULT_KFP_PIPELINE_ROOT = "minio://mlpipeline/v2/artifacts"
# Keys of the MLflow ConfigMap and Secret, each exposed under the same environment variable name.
MLFLOW_CONFIG_KEYS = ("MLFLOW_TRACKING_URI",)
MLFLOW_SECRET_KEYS = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")


@dataclass(frozen=True)
class CompileOptions:
    image_registry: str | None = None            # wins over the pipeline's `images.registry`
    image_tag: str | None = None                 # wins over the pipeline's `images.tag`
    production: bool = False                     # refuse mutable or missing image tags
    image_lock: ImageLock | None = None          # a digest per environment (--images FILE); wins over both
    images: ImagePlan = field(default_factory=lambda: resolve_images(None))  # resolved per pipeline
    no_cache: bool = False                       # every step's cache off, whatever the spec says
    mlflow_config_map: str | None = DEFAULT_MLFLOW_CONFIG_MAP
    mlflow_secret: str | None = DEFAULT_MLFLOW_SECRET
    checkpoint_pvc: str = DEFAULT_CHECKPOINT_PVC
    hf_secret: str | None = None                 # Secret with HF_TOKEN for the steps that load a model
    azureml_compute: str = DEFAULT_AZUREML_COMPUTE  # for steps without an azureml compute profile
    kfp_pipeline_root: str = DEFAULT_KFP_PIPELINE_ROOT  # where the cluster's KFP keeps artifacts

    def for_pipeline(self, spec_images: Images | None) -> CompileOptions:
        plan = resolve_images(spec_images, self.image_registry, self.image_tag, self.production,
                              self.image_lock)
        return replace(self, images=plan)
