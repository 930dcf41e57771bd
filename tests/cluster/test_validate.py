"""k8s-validate: the repository's manifests pass; each kind of bad manifest fails naming file, object and field."""

from __future__ import annotations

import copy
import datetime as dt
from pathlib import Path

import pytest
import yaml

from tuneline.cluster import validate

REPO = Path(__file__).resolve().parents[2]
TABLE = REPO / "k8s" / "supported.yaml"
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
                    "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                        "readOnlyRootFilesystem": True},
                }],
            },
        },
    },
}


def _kustomization(tmp_path: Path, *objects: dict, namespace: str = "demo") -> Path:
    (tmp_path / "objects.yaml").write_text(yaml.safe_dump_all(list(objects), sort_keys=False))
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(
        {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
         "namespace": namespace, "resources": ["objects.yaml"]}))
    return tmp_path


def _errors(tmp_path: Path, *objects: dict, today: dt.date | None = None, namespace: str = "demo") -> list[str]:
    return validate.run([_kustomization(tmp_path, *objects, namespace=namespace)], tmp_path, check_orphans=False,
                        table_path=TABLE, today=today).errors


def _container(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]["containers"][0]


def test_repository_manifests_pass() -> None:
    scan = [REPO / "pipelines", REPO / "config", REPO / "docs" / "aks.md"]
    report = validate.run([REPO / "k8s"], REPO, check_orphans=True, scan=scan)
    assert report.errors == []
    # overlays/dev, overlays/prod, jobs/gpu-smoke, nodepools/aso, and the four components that add objects
    assert report.kustomizations == 8
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
    plugin["kind"] = "DaemonSet"
    plugin["metadata"] = {"name": "nvidia-device-plugin", "namespace": "kube-system",
                          "annotations": {"tuneline.dev/pss-exception": "registers with the kubelet socket"}}
    spec = plugin["spec"]["template"]["spec"]
    spec["securityContext"] = {"runAsUser": 0, "seccompProfile": {"type": "RuntimeDefault"}}
    spec["volumes"] = [{"name": "dp", "hostPath": {"path": "/var/lib/kubelet/device-plugins"}}]
    assert _errors(tmp_path, plugin, namespace="kube-system") == []
    _container(plugin)["securityContext"]["privileged"] = True
    assert any("securityContext.privileged" in e for e in _errors(tmp_path, plugin, namespace="kube-system"))


def test_unknown_kind_is_reported(tmp_path: Path) -> None:
    odd = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}, "spec": {}}
    assert _errors(tmp_path, odd, today=dt.date(2026, 12, 1)) == [
        "objects.yaml: Widget/w: apiVersion/kind: no schema for example.com/v1 Widget "
        "(Kubernetes 1.35.0 or tuneline.cluster.schemas)"]


def test_unlisted_pss_exception_names_the_file(tmp_path: Path) -> None:
    sneaky = copy.deepcopy(GOOD_DEPLOYMENT)
    sneaky["metadata"]["annotations"] = {"tuneline.dev/pss-exception": "needs the host"}
    sneaky["spec"]["template"]["spec"]["volumes"] = [{"name": "h", "hostPath": {"path": "/var/run"}}]
    errors = _errors(tmp_path, sneaky)
    assert any(e.startswith("objects.yaml: Deployment/web: metadata.annotations.tuneline.dev/pss-exception: only "
                            "DaemonSet/dcgm-exporter in kube-system, DaemonSet/nvidia-device-plugin in kube-system "
                            "may relax Pod Security") for e in errors), errors
    # and the annotation buys nothing: the hostPath is still refused
    assert any("spec.template.spec.volumes[0].hostPath: hostPath volumes are not allowed" in e for e in errors)


def test_writable_root_filesystem(tmp_path: Path) -> None:
    bad = copy.deepcopy(GOOD_DEPLOYMENT)
    del _container(bad)["securityContext"]["readOnlyRootFilesystem"]
    assert _errors(tmp_path, bad) == [
        "objects.yaml: Deployment/web: spec.template.spec.containers[0].securityContext.readOnlyRootFilesystem: "
        "must be true: write to an emptyDir or a volume, not the image"]


def test_retired_vm_size_names_the_file_and_line(tmp_path: Path) -> None:
    pools = {"apiVersion": "containerservice.azure.com/v1api20240901", "kind": "ManagedClustersAgentPool",
             "metadata": {"name": "gpu", "namespace": "infra"},
             "spec": {"owner": {"name": "aks"}, "azureName": "gpu", "mode": "User", "vmSize": "Standard_NC6s_v3",
                      "count": 0, "enableAutoScaling": True, "minCount": 0, "maxCount": 2,
                      "orchestratorVersion": "1.36"}}
    errors = _errors(tmp_path, pools, today=dt.date(2026, 12, 1))
    line = next(i for i, text in enumerate((tmp_path / "objects.yaml").read_text().splitlines(), 1)
                if "Standard_NC6s_v3" in text)
    assert errors == [f"objects.yaml:{line}: VM size Standard_NC6s_v3 was retired on 2025-09-30 "
                      "(https://learn.microsoft.com/azure/virtual-machines/ncv3-nc6s-nc12s-nc24s-retirement); "
                      "use Standard_NC24ads_A100_v4"]
    pools["spec"]["vmSize"] = "Standard_NC99zz_B900_v9"
    assert _errors(tmp_path, pools, today=dt.date(2026, 12, 1)) == [
        f"objects.yaml:{line}: GPU VM size Standard_NC99zz_B900_v9 is not in k8s/supported.yaml: add it there with "
        "its source and end-of-support date"]


def test_out_of_support_kubernetes_version(tmp_path: Path) -> None:
    pools = {"apiVersion": "containerservice.azure.com/v1api20240901", "kind": "ManagedClustersAgentPool",
             "metadata": {"name": "gpu", "namespace": "infra"},
             "spec": {"owner": {"name": "aks"}, "azureName": "gpu", "mode": "User",
                      "vmSize": "Standard_NC24ads_A100_v4", "count": 0, "enableAutoScaling": True, "minCount": 0,
                      "maxCount": 2, "orchestratorVersion": "1.31"}}
    errors = _errors(tmp_path, pools, today=dt.date(2026, 12, 1))
    assert errors == ["objects.yaml: ManagedClustersAgentPool/gpu: spec.orchestratorVersion: Kubernetes 1.31 left "
                      "AKS support on 2025-11-01 (supported today: 1.35, 1.36, 1.37; "
                      "https://learn.microsoft.com/azure/aks/supported-kubernetes-versions)"]
    pools["spec"]["orchestratorVersion"] = "1.36"
    assert _errors(tmp_path, pools, today=dt.date(2026, 12, 1)) == []
    # the same manifest fails once 1.36 leaves support: the table keeps the repository current
    assert "left AKS support on 2027-06-30" in _errors(tmp_path, pools, today=dt.date(2027, 7, 1))[0]


def test_main_fails_on_a_retired_size_in_a_scanned_file(tmp_path: Path, capsys, monkeypatch) -> None:
    monkeypatch.chdir(REPO)
    pipeline = tmp_path / "pipelines" / "gpu.yaml"
    pipeline.parent.mkdir()
    pipeline.write_text("compute:\n  gpu:\n    azureml: {cluster: gpu, instance_type: Standard_NC6s_v3}\n")
    assert validate.main(["k8s", "--scan", str(pipeline)]) == 1
    err = capsys.readouterr().err
    assert f"error: {pipeline}:3: VM size Standard_NC6s_v3 was retired on 2025-09-30" in err


def test_orphan_manifest_is_reported(tmp_path: Path) -> None:
    (tmp_path / "app").mkdir()
    _kustomization(tmp_path / "app", GOOD_DEPLOYMENT)
    (tmp_path / "app" / "forgotten.yaml").write_text(yaml.safe_dump(GOOD_DEPLOYMENT))
    errors = validate.run([tmp_path], tmp_path, check_orphans=True, table_path=TABLE).errors
    assert errors == [f"{tmp_path / 'app' / 'forgotten.yaml'}: not referenced by any kustomization "
                      "(add it to one, or remove it)"]


def test_blob_volume_without_identity_auth_is_refused(tmp_path: Path) -> None:
    # What data-pvc.yaml held before: the driver would fetch the account key, which the kubelet identity cannot.
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": "data"},
          "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadOnlyMany"],
                   "csi": {"driver": "blob.csi.azure.com", "volumeHandle": "data",
                           "volumeAttributes": {"storageAccount": "acct", "containerName": "data"}}}}
    errors = _errors(tmp_path, pv)
    assert errors == ["objects.yaml: PersistentVolume/data: spec.csi.volumeAttributes.AzureStorageAuthType: unset: "
                      "the Blob CSI driver would mount with the storage account key; set it to MSI (kubelet "
                      "identity with a Storage Blob Data role on the container)"]
    pv["spec"]["csi"]["volumeAttributes"]["AzureStorageAuthType"] = "MSI"
    assert _errors(tmp_path, pv) == []
    pv["spec"]["csi"]["nodeStageSecretRef"] = {"name": "account-key", "namespace": "demo"}
    assert [e.split(": ")[2] for e in _errors(tmp_path, pv)] == ["spec.csi"]
