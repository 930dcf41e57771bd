"""KServe InferenceService for AKS serving the Triton model repository that the `triton` target writes.

The predictor runs on the GPU spot pool: it tolerates the GPU taint ``sku=gpu:NoSchedule`` and AKS's spot
taint ``kubernetes.azure.com/scalesetpriority=spot:NoSchedule``, requests ``nvidia.com/gpu``, autoscales
between min and max replicas, and under the canary strategy sets ``canaryTrafficPercent`` so KServe splits
traffic between the new and the previous ready revision (Serverless mode, which canary needs).

Two request shapes, by ``api``:
- ``v2`` (default): the ``tuneline-triton`` ServingRuntime (k8s/base/serving/servingruntime.yaml: tritonserver in
  the project's serve image, with vLLM as the engine) on the Triton model repository (the ``triton`` target's
  output); the Open Inference Protocol, whose generate route of the engine's model
  (``/v2/models/<name>-stream/generate``) the deploy record names, as the Azure ML deployment's scoring route.
  KServe's own Triton runtime runs NVIDIA's image, which lacks the packages the repository's model imports.
- ``openai``: KServe's Hugging Face runtime on the merged model folder; it serves OpenAI's completions and
  chat completions at ``/openai/v1/completions`` and ``/openai/v1/chat/completions`` (KServe docs, "GenAI
  Serving Runtime": OpenAI routes carry the ``openai`` prefix unless KSERVE_OPENAI_ROUTE_PREFIX changes it),
  the request shape of the local endpoint's ``/v1/chat/completions``. The runtime applies the tokenizer's
  chat template; the training system prompt is not added for you there: send it as the system message.

The predictor meets the restricted Pod Security Standard that the ``tuneline`` namespace enforces
(k8s/base/namespace): non-root UID 1000 (the ``triton-server`` user of NVIDIA's Triton images, and the user
KServe's Hugging Face server image runs as), no privilege escalation, every capability dropped, the RuntimeDefault
seccomp profile. Knative's queue-proxy sidecar sets the same for itself. It runs at the ``tuneline-serving``
priority (k8s/addons/priorityclasses.yaml), so a serving pod preempts training for a GPU. The namespace's
``serving-ingress`` NetworkPolicy (k8s/base/serving) lets Knative's activator and gateway reach it.

Manifests are validated before they are written: the InferenceService against `kserve_schema`, core kinds
against the Kubernetes OpenAPI schemas of `kubernetes-validate` in strict mode.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import jsonschema
import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuneline.serving.deploy.kserve_schema import CRD_SCHEMAS
from tuneline.serving.deploy.policy import RolloutPolicy
from tuneline.serving.limits import ENGINE_CONCURRENCY
from tuneline.settings import SPOT_LABEL, SPOT_VALUE

KUBERNETES_VERSION = "1.35.0"  # the oldest AKS minor supported today (k8s/supported.yaml)
GPU_TOLERATION = {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}
SERVING_UID = 1000
POD_SECURITY = {
    "runAsNonRoot": True,
    "runAsUser": SERVING_UID,
    "runAsGroup": SERVING_UID,
    "fsGroup": SERVING_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
PRIORITY_CLASS = "tuneline-serving"
TRITON_RUNTIME = "tuneline-triton"  # k8s/base/serving/servingruntime.yaml
SPOT_TOLERATION = {
    "key": SPOT_LABEL,
    "operator": "Equal",
    "value": SPOT_VALUE,
    "effect": "NoSchedule",
}


class KServeOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(default="tuneline-llm", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=45)
    namespace: str = Field(default="tuneline", pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", max_length=63)
    storage_uri: str = Field(
        default="pvc://tuneline-models/triton",
        pattern=r"^(pvc|gs|s3|https?|hf|oci)://.+",
        description="where the Triton model repository (the triton target's output) lives",
    )
    runtime: str | None = Field(
        default=None, description="ServingRuntime name; None: tuneline-triton for api v2, KServe's pick for openai"
    )
    api: Literal["v2", "openai"] = Field(
        default="v2", description="v2: Triton runtime on the repository; openai: Hugging Face runtime on the model"
    )
    gpus: int = Field(default=1, ge=0)
    cpu: str = "4"
    memory: str = "16Gi"
    min_replicas: int = Field(default=1, ge=0)
    max_replicas: int = Field(default=3, ge=1)
    scale_target: int = Field(
        default=8, ge=1, description="concurrent requests per replica before scaling out"
    )
    container_concurrency: int | None = Field(
        default=None, ge=0,
        description="requests a replica works on at once (Knative's hard limit; 0: none); None: by instance kind",
    )
    spot: bool = True
    node_selector: dict[str, str] = Field(default_factory=dict)
    service_account: str | None = Field(default=None, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    workload_identity_client_id: str | None = None

    @model_validator(mode="after")
    def _replicas(self) -> KServeOptions:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) exceeds max_replicas ({self.max_replicas})")
        if self.workload_identity_client_id and not self.service_account:
            raise ValueError(
                "workload_identity_client_id needs service_account (the identity is bound to it)"
            )
        return self


    @property
    def concurrency(self) -> int:
        if self.container_concurrency is not None:
            return self.container_concurrency
        return ENGINE_CONCURRENCY["gpu" if self.gpus else "cpu"]


def inference_service(
    options: KServeOptions, policy: RolloutPolicy, model_uri: str, version: int | None
) -> dict[str, Any]:
    resources: dict[str, dict[str, Any]] = {
        "requests": {"cpu": options.cpu, "memory": options.memory},
        "limits": {"memory": options.memory},
    }
    if options.gpus:
        for part in resources.values():
            part["nvidia.com/gpu"] = str(options.gpus)
    if options.api == "openai":
        model: dict[str, Any] = {
            "modelFormat": {"name": "huggingface"},
            "args": [f"--model_name={options.name}"],
            "storageUri": options.storage_uri,
            "resources": resources,
            "securityContext": dict(CONTAINER_SECURITY),
        }
    else:
        model = {
            "modelFormat": {"name": "triton"},
            "protocolVersion": "v2",
            "storageUri": options.storage_uri,
            "resources": resources,
            "securityContext": dict(CONTAINER_SECURITY),
        }
    runtime = options.runtime or (TRITON_RUNTIME if options.api == "v2" else None)
    if runtime:
        model["runtime"] = runtime
    tolerations = ([GPU_TOLERATION] if options.gpus else []) + ([SPOT_TOLERATION] if options.spot else [])
    predictor: dict[str, Any] = {
        "minReplicas": options.min_replicas,
        "maxReplicas": options.max_replicas,
        "scaleMetric": "concurrency",
        # A replica never holds more than the hard limit below, so a target above it would never scale out.
        "scaleTarget": min(options.scale_target, options.concurrency) if options.concurrency else options.scale_target,
        # The hard limit Knative's queue-proxy holds in front of the server: it queues up to 10x this many and answers
        # 503 past that (knative/serving pkg/queue/sharedmain/main.go `buildBreaker`: QueueDepth 10 x
        # ContainerConcurrency; pkg/queue/breaker.go ErrRequestQueueFull), where without it every request reaches
        # Triton and waits there, unbounded, until its timeout.
        "containerConcurrency": options.concurrency,
        "priorityClassName": PRIORITY_CLASS,
        "securityContext": {**POD_SECURITY, "seccompProfile": dict(POD_SECURITY["seccompProfile"])},
        "model": model,
    }
    if tolerations:
        predictor["tolerations"] = [dict(t) for t in tolerations]
    if options.node_selector:
        predictor["nodeSelector"] = dict(options.node_selector)
    if options.service_account:
        predictor["serviceAccountName"] = options.service_account
    canary = policy.kserve_canary_percent()
    if canary is not None:
        predictor["canaryTrafficPercent"] = canary
    labels = {"app.kubernetes.io/name": options.name, "app.kubernetes.io/part-of": "tuneline"}
    if version is not None:
        labels["tuneline.io/model-version"] = str(version)
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": {
            "name": options.name,
            "namespace": options.namespace,
            "labels": labels,
            "annotations": {
                "serving.kserve.io/deploymentMode": "Serverless",
                "tuneline.io/model-uri": model_uri,
                "tuneline.io/rollout-strategy": policy.strategy,
            },
        },
        "spec": {"predictor": predictor},
    }


def service_account(options: KServeOptions) -> dict[str, Any] | None:
    if not options.service_account:
        return None
    meta: dict[str, Any] = {
        "name": options.service_account,
        "namespace": options.namespace,
        "labels": {"app.kubernetes.io/part-of": "tuneline"},
    }
    if options.workload_identity_client_id:
        # AKS workload identity: the storage initializer reads the repository with this managed identity.
        meta["annotations"] = {"azure.workload.identity/client-id": options.workload_identity_client_id}
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta}


def manifests(
    options: KServeOptions, policy: RolloutPolicy, model_uri: str, version: int | None
) -> list[dict]:
    docs = [service_account(options), inference_service(options, policy, model_uri, version)]
    return [d for d in docs if d is not None]


def _path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "<root>"


def validate(docs: list[dict], source: str = "<manifest>") -> list[str]:
    """Errors as ``source: Kind/name: field: message``; empty when every document is valid."""
    import kubernetes_validate

    errors: list[str] = []
    for doc in docs:
        ref = f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"
        schema = CRD_SCHEMAS.get((str(doc.get("apiVersion")), str(doc.get("kind"))))
        if schema is not None:
            for err in sorted(
                jsonschema.Draft202012Validator(schema).iter_errors(doc),
                key=lambda e: list(map(str, e.absolute_path)),
            ):
                errors.append(f"{source}: {ref}: {_path(err)}: {err.message}")
            continue
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as err:
            errors.append(f"{source}: {ref}: {_path(err)}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{source}: {ref}: no schema for {doc.get('apiVersion')} {doc.get('kind')}")
    return errors


def write(docs: list[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (
        "# Generated by the tuneline deploy step (target kserve). Apply with: kubectl apply -f "
        f"{path.name}\n# The storageUri must hold the Triton model repository (the triton target writes it), "
        "or for api openai the merged model folder.\n"
    )
    path.write_text(header + yaml.safe_dump_all(docs, sort_keys=False, explicit_start=True))
    return path
