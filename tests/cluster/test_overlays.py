"""What every overlay renders to, with kustomize itself, together with the node-pool resources: current VM sizes
and Kubernetes versions, GPU metrics that are scraped, GPU pools created empty."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from tuneline.cluster import validate
from tuneline.cluster.render import render

REPO = Path(__file__).resolve().parents[2]
OVERLAYS = sorted(p.parent for p in (REPO / "k8s" / "overlays").glob("*/kustomization.yaml"))
RETIRED = {s["name"] for s in yaml.safe_load((REPO / "k8s" / "supported.yaml").read_text())["vm_sizes"]
           if s["end_of_support"] is not None}


@pytest.fixture(scope="module", params=[p.name for p in OVERLAYS])
def rendered(request) -> list[dict]:
    objects = render(REPO / "k8s" / "overlays" / request.param) + render(REPO / "k8s" / "nodepools" / "aso")
    return [r.obj for r in objects]


def _of(objects: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def test_overlays_exist() -> None:
    assert [p.name for p in OVERLAYS] == ["dev", "prod"]


def test_no_retired_vm_size_and_no_kubernetes_below_1_33(rendered) -> None:
    text = yaml.safe_dump_all(rendered)
    assert RETIRED and not RETIRED & set(re.findall(r"Standard_[A-Za-z0-9_]+", text))
    versions = [o["spec"]["orchestratorVersion"] for o in _of(rendered, "ManagedClustersAgentPool")]
    assert versions and all(tuple(map(int, v.split(".")[:2])) >= (1, 33) for v in versions)


def test_dcgm_exporter_is_scraped_and_names_the_node(rendered) -> None:
    monitors = [o for o in rendered if o["kind"] in ("ServiceMonitor", "PodMonitor")
                and o["metadata"]["name"] == "dcgm-exporter"]
    assert len(monitors) == 1
    monitor = monitors[0]
    assert monitor["apiVersion"] in ("monitoring.coreos.com/v1", "azmonitoring.coreos.com/v1")
    service = _of(rendered, "Service", "dcgm-exporter")[0]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert service["metadata"]["namespace"] in monitor["spec"]["namespaceSelector"]["matchNames"]
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert any(e["port"] in ports for e in monitor["spec"]["endpoints"])
    daemonset = _of(rendered, "DaemonSet", "dcgm-exporter")[0]
    env = {e["name"]: e for e in daemonset["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"


def test_aso_gpu_pools_are_created_empty(rendered) -> None:
    gpu = [o["spec"] for o in _of(rendered, "ManagedClustersAgentPool")
           if "tuneline.dev/accelerator" in o["spec"].get("nodeLabels", {})]
    assert len(gpu) == 2 and all(p["count"] == 0 and p["minCount"] == 0 and p["enableAutoScaling"] for p in gpu)


def test_alerts_do_not_fire_on_a_full_gpu_memory() -> None:
    rule = yaml.safe_load((REPO / "k8s/components/monitoring/kube-prometheus-stack/prometheusrule.yaml").read_text())
    rules = {r["alert"]: r["expr"] for r in rule["spec"]["groups"][0]["rules"]}
    assert {"GPUXidError", "GPUThermalThrottling", "GPUPowerThrottling", "GPUDoubleBitECCErrors",
            "GPUIdleWhileTrainingPodRuns"} <= set(rules)
    assert not any("FB_USED" in expr for expr in rules.values())
    # every DCGM field an alert or the dashboard reads is one the exporter is told to collect
    counters = {line.split(",")[0] for line in (REPO / "k8s/addons/dcgm-exporter/counters.csv").read_text()
                .splitlines() if line and not line.startswith("#")}
    dashboard = json.loads((REPO / "k8s/components/monitoring/kube-prometheus-stack/gpu-pools-dashboard.json")
                           .read_text())
    exprs = list(rules.values()) + [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = set(re.findall(r"DCGM_(?:FI|EXP)_[A-Z_]+", " ".join(exprs)))
    # The last XID seen never resets (NVIDIA/dcgm-exporter#500): an alert on it would fire until a restart.
    assert "DCGM_FI_DEV_XID_ERRORS" not in " ".join(rules.values())
    assert used and used <= counters, used - counters


def test_gpu_operator_component_removes_our_device_plugin(tmp_path: Path) -> None:
    overlay = tmp_path / "k8s" / "overlays" / "operator"
    overlay.mkdir(parents=True)
    for part in ("addons", "components"):
        (tmp_path / "k8s" / part).symlink_to(REPO / "k8s" / part)
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "resources": ["../../addons"], "components": ["../../components/gpu-operator"]}))
    kinds = {(r.kind, r.name) for r in render(overlay)}
    assert ("DaemonSet", "nvidia-device-plugin") not in kinds and ("DaemonSet", "dcgm-exporter") not in kinds
    plugin = [r for r in render(REPO / "k8s" / "overlays" / "dev") if r.name == "nvidia-device-plugin"]
    errors = validate.gpu_stack_problems(plugin, Path("k8s/overlays/dev"), "gpu-operator")
    assert [str(e) for e in errors] == [
        "k8s/addons/nvidia-device-plugin/daemonset.yaml: DaemonSet/nvidia-device-plugin: k8s/nodepools.yaml sets "
        "gpuStack gpu-operator, whose device plugin runs on every GPU node: add components/gpu-operator to the "
        "overlay"] if str(plugin[0].source).startswith("k8s/") else errors


def test_mlflow_runs_behind_authentication(rendered) -> None:
    mlflow = _of(rendered, "Deployment", "mlflow")[0]["spec"]["template"]["spec"]["containers"][0]
    assert mlflow["command"] == ["mlflow", "server"] and "--app-name=basic-auth" in mlflow["args"]
    env = {e["name"]: e for e in mlflow["env"]}
    for name in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-db"  # from Key Vault, never literal
    mounts = {m["mountPath"] for m in mlflow["volumeMounts"]}
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"].startswith("/mnt/secrets/") and "/mnt/secrets" in mounts
    ingress = _of(rendered, "NetworkPolicy", "mlflow-ingress")[0]
    assert ingress["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/name"] == "mlflow"


def test_retrain_cronjob_submits_to_a_platform_with_a_read_only_root(rendered) -> None:
    cron = _of(rendered, "CronJob", "tuneline-retrain")[0]
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    command = container["command"]
    assert command[:3] == ["tuneline", "trigger", "check"] and "--run" not in command
    assert command[command.index("--submit") + 1] in ("kfp", "azureml")
    assert "dataset=$(TUNELINE_DATASET_URI)" in command  # the run reads the store, not the image's sample
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    env = {e["name"]: e for e in container["env"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = {m["mountPath"] for m in container["volumeMounts"] if "emptyDir" in volumes[m["name"]]}
    assert env["TUNELINE_HOME"]["value"].startswith("/tmp") and "/tmp" in writable
    assert env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "mlflow-credentials"
    token = volumes["kfp-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "pipelines.kubeflow.org"


def test_pipeline_pods_act_as_no_azure_identity(rendered) -> None:
    # Any step could otherwise read what that identity may: the pipeline's pods need no Azure token at all.
    accounts = _of(rendered, "ServiceAccount", "tuneline-pipeline")
    assert {o["metadata"]["namespace"] for o in accounts} == {"kubeflow", "tuneline"}
    assert not [o for o in accounts if "azure.workload.identity/client-id" in (o["metadata"].get("annotations") or {})]


def test_throttling_fractions_use_the_counters_unit() -> None:
    # DCGM's *_VIOLATION counters count nanoseconds (NVIDIA/dcgm-exporter etc/default-counters.csv since
    # 4.4.2-4.7.1): a rate divided by anything but 1e9 is not a fraction of time, and an alert on it misfires.
    per_second = {"ns": "1e9", "us": "1e6", "ms": "1e3"}
    units = {line.split(",")[0].strip(): re.search(r"\(in (\w+)\)", line).group(1)
             for line in (REPO / "k8s/addons/dcgm-exporter/counters.csv").read_text().splitlines()
             if "_VIOLATION" in line and not line.startswith("#")}
    assert units and set(units.values()) == {"ns"}
    folder = REPO / "k8s/components/monitoring/kube-prometheus-stack"
    rule = yaml.safe_load((folder / "prometheusrule.yaml").read_text())
    dashboard = json.loads((folder / "gpu-pools-dashboard.json").read_text())
    exprs = [r["expr"] for r in rule["spec"]["groups"][0]["rules"]] + [
        t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    divided = [(m.group(1), m.group(2)) for e in exprs
               for m in re.finditer(r"(DCGM_FI_DEV_\w+_VIOLATION)\b[^/]*/\s*([0-9.e]+)", e)]
    assert len(divided) >= 4
    assert [d for d in divided if d[1] != per_second[units[d[0]]]] == []
