"""`tuneline cluster check`: the repository's pipelines fit the cluster k8s/ provisions; broken copies do not."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tuneline.cli import main
from tuneline.compile.clustercheck import Sku, load_skus, quantity, tolerates

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """The repository's pipelines, components, environments, k8s/ and SKU table in a scratch project."""
    root = tmp_path / "project"
    for folder in ("pipelines", "components", "environments", "k8s", "config", "data"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(root)
    return root


def test_every_pipeline_fits_the_cluster(project, capsys):
    assert main(["cluster", "check", *sorted(str(p) for p in Path("pipelines").glob("*.yaml"))]) == 0
    # five steps and the fingerprint task after each of the two data imports
    assert "pipelines/finetune.yaml: 7 pods fit the cluster" in capsys.readouterr().out


def test_sixty_four_gpus_per_node_fit_no_pool(project, capsys):
    path = project / "pipelines" / "finetune.yaml"
    path.write_text(path.read_text().replace("kubeflow: {gpus: 1, accelerator", "kubeflow: {gpus: 64, accelerator"))
    assert main(["cluster", "check", "pipelines/finetune.yaml"]) == 2
    err = capsys.readouterr().err
    assert "pipelines/finetune.yaml:train: no node pool can run it:" in err
    assert "gpuspot: requests 64 GPUs, a Standard_NC24ads_A100_v4 node has 1" in err


def test_a_node_label_no_pool_has_names_the_step(project, capsys):
    path = project / "pipelines" / "finetune.yaml"
    path.write_text(path.read_text().replace("accelerator: nvidia-a100, spot", "accelerator: nvidia-a100, "
                                                               "node_selector: {agentpool: tpu}, spot"))
    assert main(["cluster", "check", "pipelines/finetune.yaml"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pipelines/finetune.yaml:train: no node pool can run it: ")
    assert "gpuspot: node selector agentpool=tpu is not a label of it (it has agentpool=gpuspot)" in err


def test_untolerated_taint_missing_pvc_and_unbuilt_image_are_reported(project, capsys):
    (project / "k8s" / "kubeflow" / "checkpoints-pvc.yaml").write_text("")
    kustomization = project / "k8s" / "kubeflow" / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("  - checkpoints-pvc.yaml\n", ""))
    shutil.rmtree(project / "environments" / "control")
    pools = project / "k8s" / "nodepools.yaml"
    pools.write_text(pools.read_text().replace('taints: ["sku=gpu:NoSchedule"]', 'taints: ["sku=gpu:NoSchedule", '
                                               '"team=ml:NoSchedule"]'))
    assert main(["cluster", "check", "pipelines/finetune.yaml"]) == 2
    err = capsys.readouterr().err
    assert "gpuspot: no toleration for its taint team=ml:NoSchedule" in err
    assert "pipelines/finetune.yaml:train: PersistentVolumeClaim tuneline-checkpoints is not created in namespace " \
           "kubeflow by k8s/overlays/dev" in err
    assert "pipelines/finetune.yaml:register: image tuneline/control:latest is not built from environments/" in err
    assert "pipelines/finetune.yaml:register: Azure ML environment: image tuneline/control:latest is not built " \
           "from environments/" in err


def test_allocatable_is_below_the_vm_and_every_pool_size_is_known():
    sku = Sku("Standard_NC24ads_A100_v4", vcpus=24, memory_gib=220, gpus=1)
    cores, memory = sku.allocatable(max_pods=30)
    assert 23.5 < cores < 24 and memory < 220 * 2**30
    assert quantity("16Gi") == 16 * 2**30 and quantity("500m") == 0.5 and quantity("2") == 2
    from tuneline.k8s.nodepools import load_spec

    assert {p.vmSize for p in load_spec(REPO / "k8s" / "nodepools.yaml").pools} <= set(load_skus(REPO / "config"
                                                                                                  / "skus.yaml"))


def test_tolerations_follow_the_kubernetes_matching_rule():
    taint = ("sku", "gpu", "NoSchedule")
    assert tolerates([{"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}], taint)
    assert tolerates([{"key": "sku", "operator": "Exists"}], taint)
    assert tolerates([{"operator": "Exists"}], taint)
    assert not tolerates([{"key": "sku", "operator": "Equal", "value": "cpu", "effect": "NoSchedule"}], taint)
    assert not tolerates([{"key": "sku", "operator": "Exists", "effect": "NoExecute"}], taint)


def test_a_multinode_launcher_without_its_role_names_the_step(project, capsys):
    kustomization = project / "k8s" / "kubeflow" / "kustomization.yaml"
    kustomization.write_text(kustomization.read_text().replace("  - launcher-rbac.yaml\n", ""))
    assert main(["cluster", "check", "pipelines/finetune-multinode.yaml"]) == 2
    err = capsys.readouterr().err
    assert "pipelines/finetune-multinode.yaml:train: the TrainJob launcher (ServiceAccount tuneline-pipeline) may " \
           "not create/get/patch/delete trainjobs (trainer.kubeflow.org): no Role bound to it in kubeflow" in err
    assert "may not get pods/log" in err
