"""KServe manifests: valid against the structural CRD schema and, for core kinds, Kubernetes' own schemas in
strict mode; the GPU/spot placement and rollout fields are where AKS expects them."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml
from pydantic import ValidationError

from tuneline.serving.deploy import kserve
from tuneline.serving.deploy.kserve_schema import INFERENCE_SERVICE
from tuneline.serving.deploy.policy import RolloutPolicy

URI = "models:/tuneline-llm/3"


def _isvc(docs: list[dict]) -> dict:
    return next(d for d in docs if d["kind"] == "InferenceService")


def test_canary_manifest_is_valid_and_complete(tmp_path: Path):
    options = kserve.KServeOptions(
        min_replicas=2,
        max_replicas=5,
        service_account="tuneline-serving",
        workload_identity_client_id="00000000-0000-0000-0000-000000000000",
    )
    docs = kserve.manifests(options, RolloutPolicy(strategy="canary", canary_percent=20), URI, 3)
    assert kserve.validate(docs) == []
    path = kserve.write(docs, tmp_path / "isvc.yaml")
    reloaded = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert reloaded == docs
    predictor = _isvc(reloaded)["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 20
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (2, 5)
    assert (
        kserve.GPU_TOLERATION in predictor["tolerations"]
        and kserve.SPOT_TOLERATION in predictor["tolerations"]
    )
    assert {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"} in predictor[
        "tolerations"
    ]
    assert predictor["model"]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert predictor["model"]["modelFormat"] == {"name": "triton"}
    assert predictor["serviceAccountName"] == "tuneline-serving"
    account = next(d for d in reloaded if d["kind"] == "ServiceAccount")
    assert account["metadata"]["annotations"]["azure.workload.identity/client-id"].startswith("0000")


def test_blue_green_omits_canary_and_cpu_only_omits_gpu():
    docs = kserve.manifests(kserve.KServeOptions(gpus=0, spot=False), RolloutPolicy(), URI, 3)
    assert kserve.validate(docs) == []
    predictor = _isvc(docs)["spec"]["predictor"]
    assert "canaryTrafficPercent" not in predictor and "tolerations" not in predictor
    assert "nvidia.com/gpu" not in predictor["model"]["resources"]["requests"]
    assert [d["kind"] for d in docs] == ["InferenceService"]


def test_schema_catches_a_misspelt_field():
    doc = _isvc(kserve.manifests(kserve.KServeOptions(), RolloutPolicy(), URI, 3))
    bad = copy.deepcopy(doc)
    bad["spec"]["predictor"]["canaryTraficPercent"] = 10
    errors = kserve.validate([bad], "isvc.yaml")
    assert len(errors) == 1
    assert errors[0].startswith("isvc.yaml: InferenceService/tuneline-llm: spec.predictor:")
    assert "canaryTraficPercent" in errors[0]
    bad = copy.deepcopy(doc)
    bad["spec"]["predictor"]["tolerations"][0]["effect"] = "NoScheduleX"
    assert "spec.predictor.tolerations.0.effect" in kserve.validate([bad])[0]


def test_core_kinds_are_checked_strictly():
    account = kserve.service_account(kserve.KServeOptions(service_account="sa"))
    assert kserve.validate([account]) == []
    account["automountToken"] = False
    errors = kserve.validate([account], "sa.yaml")
    assert (
        len(errors) == 1
        and "automountToken" in errors[0]
        and errors[0].startswith("sa.yaml: ServiceAccount/sa")
    )


def test_schema_is_a_valid_draft_2020_12_schema():
    jsonschema.Draft202012Validator.check_schema(INFERENCE_SERVICE)


def test_options_are_checked():
    with pytest.raises(ValidationError, match="min_replicas"):
        kserve.KServeOptions(min_replicas=4, max_replicas=2)
    with pytest.raises(ValidationError, match="name"):
        kserve.KServeOptions(name="Tuneline_LLM")
    with pytest.raises(ValidationError, match="storage_uri"):
        kserve.KServeOptions(storage_uri="/local/path")


def test_openai_api_uses_the_huggingface_runtime_on_the_merged_model():
    options = kserve.KServeOptions(api="openai", storage_uri="pvc://tuneline-models/merged")
    docs = kserve.manifests(options, RolloutPolicy(strategy="canary", canary_percent=10), URI, 3)
    assert kserve.validate(docs) == []
    predictor = _isvc(docs)["spec"]["predictor"]
    assert predictor["model"]["modelFormat"] == {"name": "huggingface"}
    assert predictor["model"]["args"] == ["--model_name=tuneline-llm"]  # the `model` field OpenAI clients send
    assert "protocolVersion" not in predictor["model"] and predictor["canaryTrafficPercent"] == 10


def test_the_v2_predictor_runs_on_the_runtime_the_namespace_ships():
    """KServe matches a predictor to a runtime by name, format and protocol: the InferenceService and
    k8s/base/serving/servingruntime.yaml must agree on all three, or the predictor never starts."""
    runtime = yaml.safe_load((Path(__file__).resolve().parents[3] / "k8s" / "base" / "serving" /
                              "servingruntime.yaml").read_text())
    model = _isvc(kserve.manifests(kserve.KServeOptions(), RolloutPolicy(), URI, 3))["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"] == kserve.TRITON_RUNTIME
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    # What KServe copies onto the pod is spec.annotations (ServingRuntimePodSpec), not the runtime's metadata.
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == "8002"
    container = runtime["spec"]["containers"][0]
    assert container["command"] == ["python", "-m", "tuneline.serving.runtime"]
    assert "--model-repository=/mnt/models" in container["args"]  # where KServe's storage initializer puts it
    openai = _isvc(kserve.manifests(kserve.KServeOptions(api="openai"), RolloutPolicy(), URI, 3))
    assert "runtime" not in openai["spec"]["predictor"]["model"]  # KServe's own Hugging Face runtime, by format


@pytest.mark.parametrize(("gpus", "limit", "target"), [(1, 32, 8), (0, 2, 2)])
def test_a_replica_takes_at_most_what_its_engine_holds(gpus: int, limit: int, target: int):
    """Without containerConcurrency Knative's queue-proxy forwards every request to Triton, where the ones past
    what the engine holds wait, unbounded, until their timeout; with it the queue-proxy queues 10x the limit and
    answers 503 past that. The scale target cannot exceed it, or the replica never looks busy enough to scale."""
    docs = kserve.manifests(kserve.KServeOptions(gpus=gpus), RolloutPolicy(), URI, 1)
    assert kserve.validate(docs) == []
    predictor = _isvc(docs)["spec"]["predictor"]
    assert (predictor["containerConcurrency"], predictor["scaleTarget"]) == (limit, target)


def test_container_concurrency_can_be_set_or_lifted():
    lifted = kserve.KServeOptions(container_concurrency=0)
    assert _isvc(kserve.manifests(lifted, RolloutPolicy(), URI, 1))["spec"]["predictor"]["containerConcurrency"] == 0
    assert _isvc(kserve.manifests(lifted, RolloutPolicy(), URI, 1))["spec"]["predictor"]["scaleTarget"] == 8
    with pytest.raises(ValidationError):
        kserve.KServeOptions(container_concurrency=-1)
