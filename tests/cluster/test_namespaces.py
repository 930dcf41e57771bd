"""Every namespace tuneline runs pods in has a Pod Security level, a GPU quota and NetworkPolicies; the quotas fit
the GPU pools; Kubeflow Pipelines' unauthenticated API is reachable only by KFP itself and the retraining
CronJob; the InferenceService the deploy step renders is admitted, reachable and stored where the overlay says."""

from __future__ import annotations

import pytest
import yaml

from tests.cluster.cluster import REPO, of, overlay
from tuneline.cluster import policy
from tuneline.cluster.netpol import ingress_allowed, selects
from tuneline.cluster.render import Resource
from tuneline.serving.deploy import kserve
from tuneline.serving.deploy.policy import RolloutPolicy

WORKLOAD_NAMESPACES = {"tuneline": "restricted", "kubeflow": "baseline"}


@pytest.fixture(scope="module", params=["dev", "prod"])
def rendered(request) -> list[dict]:
    return overlay(request.param)


def _gpus(quota: dict) -> int:
    return int(quota["spec"]["hard"].get("requests.nvidia.com/gpu", 0))


def test_each_workload_namespace_has_pod_security_quota_and_policies(rendered) -> None:
    for name, level in WORKLOAD_NAMESPACES.items():
        labels = of(rendered, "Namespace", name)[0]["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == level, name
        assert labels.get("pod-security.kubernetes.io/warn") == "restricted", name
        quotas = of(rendered, "ResourceQuota", namespace=name)
        assert quotas and all(_gpus(q) >= 1 for q in quotas), name
        assert of(rendered, "NetworkPolicy", namespace=name), name


def test_gpu_quotas_fit_the_pools(rendered) -> None:
    pools = yaml.safe_load((REPO / "k8s" / "nodepools.yaml").read_text())["pools"]
    skus = yaml.safe_load((REPO / "config" / "skus.yaml").read_text())["skus"]
    capacity = sum(p["autoscale"]["max"] * skus[p["vmSize"]]["gpus"] for p in pools
                   if "tuneline.dev/accelerator" in (p.get("labels") or {}))
    total = sum(_gpus(q) for q in of(rendered, "ResourceQuota"))
    assert 0 < total <= capacity, f"GPU quotas add up to {total}, the pools hold {capacity}"


def _pod_labels(obj: dict) -> dict[str, str]:
    spec = obj["spec"]
    template = (spec.get("jobTemplate") or {}).get("spec", spec)["template"]
    return template["metadata"]["labels"]


def test_kfp_api_is_fenced(rendered) -> None:
    api = {"app": "ml-pipeline", "app.kubernetes.io/name": "ml-pipeline"}  # KFP 2.5.0 manifests' labels
    retrain = _pod_labels(of(rendered, "CronJob", "tuneline-retrain")[0])
    mlflow = _pod_labels(of(rendered, "Deployment", "mlflow")[0])
    assert ingress_allowed(rendered, "kubeflow", api, 8888, "tuneline", retrain)
    assert ingress_allowed(rendered, "kubeflow", api, 8888, "kubeflow", {"app": "ml-pipeline-ui"})
    assert not ingress_allowed(rendered, "kubeflow", api, 8888, "tuneline", mlflow)
    assert not ingress_allowed(rendered, "kubeflow", api, 8888, "default", retrain)
    assert not ingress_allowed(rendered, "kubeflow", api, 8887, "tuneline", retrain)


def _predictor_pod(isvc: dict) -> Resource:
    """The pod KServe (Serverless) makes of the predictor: its inline pod fields, the model as kserve-container,
    and the labels KServe puts on it."""
    predictor = isvc["spec"]["predictor"]
    container = {"name": "kserve-container", "image": "runtime@sha256:" + "ab" * 32,
                 **{k: v for k, v in predictor["model"].items() if k in ("resources", "securityContext", "args")}}
    spec = {k: v for k, v in predictor.items() if k not in ("model", "minReplicas", "maxReplicas", "scaleMetric",
                                                           "scaleTarget", "canaryTrafficPercent")}
    labels = {"serving.kserve.io/inferenceservice": isvc["metadata"]["name"], "component": "predictor"}
    meta = {"name": "predictor", "namespace": "tuneline", "labels": labels}
    obj = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {**spec, "containers": [container]}}
    return Resource(obj=obj, source=REPO / "tuneline" / "serving" / "deploy" / "kserve.py")


@pytest.mark.parametrize("api", ["v2", "openai"])
def test_rendered_inference_service_runs_in_the_tuneline_namespace(rendered, api: str) -> None:
    options = kserve.KServeOptions(api=api)
    isvc = next(d for d in kserve.manifests(options, RolloutPolicy(), "models:/tuneline-tickets/1", 1)
                if d["kind"] == "InferenceService")
    namespace = isvc["metadata"]["namespace"]
    assert of(rendered, "Namespace", namespace)
    pod = _predictor_pod(isvc)
    # The restricted Pod Security Standard the namespace enforces; a read-only root is this repository's own
    # rule on top, not the standard's, and the runtime images write their caches under /.
    findings = [f for f in policy.check_pod_security(pod, pod.obj["spec"], "spec")
                if not f.field.endswith("readOnlyRootFilesystem")]
    assert findings == []
    labels = pod.obj["metadata"]["labels"]
    for source in ("knative-serving", "istio-system"):
        assert ingress_allowed(rendered, namespace, labels, 8012, source, {}), source
    assert ingress_allowed(rendered, namespace, labels, 9090, "knative-serving", {})
    assert not ingress_allowed(rendered, namespace, labels, 8012, "kubeflow", {})
    assert of(rendered, "PriorityClass", pod.obj["spec"]["priorityClassName"])
    claim = options.storage_uri.removeprefix("pvc://").split("/")[0]
    pvc = of(rendered, "PersistentVolumeClaim", claim, namespace)
    assert pvc, f"{options.storage_uri}: no PersistentVolumeClaim {claim} in {namespace}"
    volume = of(rendered, "PersistentVolume", pvc[0]["spec"]["volumeName"])[0]
    assert volume["spec"]["csi"]["volumeAttributes"]["AzureStorageAuthType"] == "MSI"
    quota = [q for q in of(rendered, "ResourceQuota", namespace=namespace) if _gpus(q)]
    assert quota and _gpus(quota[0]) >= 2 * options.gpus  # old and new revision side by side during a rollout


def test_selector_semantics() -> None:
    assert selects({}, {"a": "1"}) and selects({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": "1"})
    assert not selects({"matchLabels": {"a": "2"}}, {"a": "1"})
    assert not selects({"matchExpressions": [{"key": "a", "operator": "In", "values": ["2"]}]}, {"a": "1"})
