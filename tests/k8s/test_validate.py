"""k8s-validate: the repository's manifests pass; each kind of bad manifest fails naming file, object and field."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from tuneline.k8s import validate

REPO = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "ab" * 32

GOOD_DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web"},
    "spec": {
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {
                "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                    "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{
                    "name": "web",
                    "image": f"example.azurecr.io/web@{DIGEST}",
                    "env": [{"name": "LOG_LEVEL", "value": "info"}],
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
                }],
            },
        },
    },
}


def _kustomization(tmp_path: Path, *objects: dict) -> Path:
    (tmp_path / "objects.yaml").write_text(yaml.safe_dump_all(list(objects), sort_keys=False))
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
         "namespace": "demo", "resources": ["objects.yaml"]}))
    return tmp_path


def _errors(tmp_path: Path, *objects: dict) -> list[str]:
    return validate.run([_kustomization(tmp_path, *objects)], tmp_path, check_orphans=False).errors


def _container(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]["containers"][0]


def test_repository_manifests_pass() -> None:
    report = validate.run([REPO / "k8s"], REPO, check_orphans=True)
    assert report.errors == []
    # overlays/dev, overlays/prod, jobs/gpu-smoke, nodepools/aso
    assert report.kustomizations == 4
    assert report.objects >= 50


def test_main_prints_summary_and_exit_code(capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    assert validate.main(["k8s"]) == 0
    assert "k8s-validate ok" in capsys.readouterr().out


def test_good_fixture_passes(tmp_path: Path) -> None:
    assert _errors(tmp_path, GOOD_DEPLOYMENT) == []


def test_misspelt_field_names_file_object_and_field(tmp_path: Path) -> None:
    bad = copy.deepcopy(GOOD_DEPLOYMENT)
    sc = bad["spec"]["template"]["spec"]["securityContext"]
    sc["runAsNonRot"] = sc.pop("runAsNonRoot")
    errors = _errors(tmp_path, bad)
    assert any("objects.yaml: Deployment/web: spec.template.spec.securityContext.runAsNonRot: unknown field" in e
               for e in errors), errors


def test_misspelt_field_in_custom_resource(tmp_path: Path) -> None:
    rule = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule", "metadata": {"name": "r"},
            "spec": {"groups": [{"name": "g", "rules": [{"alert": "A", "expresion": "up == 0"}]}]}}
    errors = _errors(tmp_path, rule)
    assert any("PrometheusRule/r: spec.groups[0].rules[0].expresion: unknown field" in e for e in errors), errors


def test_missing_gpu_toleration(tmp_path: Path) -> None:
    bad = copy.deepcopy(GOOD_DEPLOYMENT)
    _container(bad)["resources"] = {"limits": {"nvidia.com/gpu": 1}}
    errors = _errors(tmp_path, bad)
    assert errors == ["objects.yaml: Deployment/web: spec.template.spec.tolerations: a GPU pod must tolerate "
                      "the GPU node taint sku=gpu:NoSchedule"]
    bad["spec"]["template"]["spec"]["tolerations"] = [
        {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]
    assert _errors(tmp_path, bad) == []


def test_plaintext_secret_object(tmp_path: Path) -> None:
    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "db"},
              "stringData": {"password": "hunter2"}}
    errors = _errors(tmp_path, secret)
    assert any(e.startswith("objects.yaml: Secret/db: stringData: plaintext secret") for e in errors), errors


def test_plaintext_credential_in_env(tmp_path: Path) -> None:
    bad = copy.deepcopy(GOOD_DEPLOYMENT)
    _container(bad)["env"] = [
        {"name": "DATABASE_URL", "value": "postgresql://mlflow:s3cret@db:5432/mlflow"},
        {"name": "API_TOKEN", "value": "abc123"},
    ]
    errors = _errors(tmp_path, bad)
    assert "objects.yaml: Deployment/web: spec.template.spec.containers[0].env[0].value: env 'DATABASE_URL' " \
           "holds a literal credential: use valueFrom.secretKeyRef" in errors
    assert any("containers[0].env[1].value: env 'API_TOKEN'" in e for e in errors)


def test_root_container(tmp_path: Path) -> None:
    bad = copy.deepcopy(GOOD_DEPLOYMENT)
    bad["spec"]["template"]["spec"]["securityContext"] = {"runAsUser": 0,
                                                         "seccompProfile": {"type": "RuntimeDefault"}}
    errors = _errors(tmp_path, bad)
    assert any("Deployment/web: spec.template.spec.containers[0].securityContext.runAsNonRoot: must be true" in e
               for e in errors), errors
    assert any("containers[0].securityContext.runAsUser: UID 0 (root) is not allowed" in e for e in errors)


def test_privilege_escalation_and_capabilities(tmp_path: Path) -> None:
    bad = copy.deepcopy(GOOD_DEPLOYMENT)
    _container(bad)["securityContext"] = {"capabilities": {"add": ["NET_ADMIN"]}}
    fields = {e.split(": ")[2] for e in _errors(tmp_path, bad)}
    base = "spec.template.spec.containers[0].securityContext"
    assert {f"{base}.allowPrivilegeEscalation", f"{base}.capabilities.drop", f"{base}.capabilities.add"} <= fields


def test_unpinned_image(tmp_path: Path) -> None:
    bad = copy.deepcopy(GOOD_DEPLOYMENT)
    _container(bad)["image"] = "example.azurecr.io/web:1.0"
    errors = _errors(tmp_path, bad)
    assert errors == ["objects.yaml: Deployment/web: spec.template.spec.containers[0].image: image "
                      "'example.azurecr.io/web:1.0' is not pinned by digest (@sha256:...)"]


def test_pss_exception_still_requires_the_basics(tmp_path: Path) -> None:
    plugin = copy.deepcopy(GOOD_DEPLOYMENT)
    plugin["metadata"]["annotations"] = {"tuneline.dev/pss-exception": "registers with the kubelet socket"}
    spec = plugin["spec"]["template"]["spec"]
    spec["securityContext"] = {"runAsUser": 0, "seccompProfile": {"type": "RuntimeDefault"}}
    spec["volumes"] = [{"name": "dp", "hostPath": {"path": "/var/lib/kubelet/device-plugins"}}]
    assert _errors(tmp_path, plugin) == []
    _container(plugin)["securityContext"]["privileged"] = True
    assert any("securityContext.privileged" in e for e in _errors(tmp_path, plugin))


def test_unknown_kind_is_reported(tmp_path: Path) -> None:
    odd = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}}
    assert _errors(tmp_path, odd) == ["objects.yaml: Widget/w: apiVersion/kind: no schema for example.com/v1 "
                                      "Widget (Kubernetes 1.31.0 or tuneline.k8s.schemas)"]


def test_orphan_manifest_is_reported(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    _kustomization(tmp_path / "app", GOOD_DEPLOYMENT)
    (tmp_path / "app" / "forgotten.yaml").write_text(yaml.safe_dump(GOOD_DEPLOYMENT))
    errors = validate.run([tmp_path], tmp_path, check_orphans=True).errors
    assert errors == [f"{tmp_path / 'app' / 'forgotten.yaml'}: not referenced by any kustomization "
                      "(add it to one, or remove it)"]
