"""`tuneline cluster check`: the repository's pipelines fit the cluster k8s/ provisions; broken copies do not."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tuneline.cli.main import main
from tuneline.cluster.check import Sku, load_skus, quantity, tolerates

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """The repository's pipelines, components, environments, k8s/ and SKU table in a scratch project."""
    root = tmp_path / "project"
    for folder in ("pipelines", "components", "environments", "k8s", "config", "data", "docs"):
        shutil.copytree(REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(root)
    return root


def test_every_pipeline_fits_the_cluster(project, capsys):
    assert main(["cluster", "check", *sorted(str(p) for p in Path("pipelines").glob("*.yaml"))]) == 0
    out = capsys.readouterr().out
    # five steps and the fingerprint task after each of the two data imports
    assert "pipelines/finetune.yaml: 7 pods fit the cluster" in out
    # and what the retraining CronJob of each overlay submits
    assert "CronJob tuneline/tuneline-retrain (k8s/overlays/prod): checked what `tuneline trigger check " \
           "pipelines/finetune.yaml ...` submits" in out


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
    assert "\npipelines/finetune.yaml:train: no node pool can run it: " in err
    assert err.startswith("CronJob tuneline/tuneline-retrain (k8s/overlays/dev):train: no node pool can run it: ")
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
    assert "pipelines/finetune.yaml:register: image tunelinedev.azurecr.io/tuneline/control@sha256:" in err
    assert "is not built from environments/" in err
    assert "pipelines/finetune.yaml:register: Azure ML environment: image tunelinedev.azurecr.io/tuneline/control@" \
           "sha256:" in err


def test_allocatable_is_below_the_vm_and_every_pool_size_is_known():
    sku = Sku("Standard_NC24ads_A100_v4", vcpus=24, memory_gib=220, gpus=1)
    cores, memory = sku.allocatable(max_pods=30)
    assert 23.5 < cores < 24 and memory < 220 * 2**30
    assert quantity("16Gi") == 16 * 2**30 and quantity("500m") == 0.5 and quantity("2") == 2
    from tuneline.cluster.nodepools import load_spec

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


CRONJOB = Path("k8s/base/retrain/cronjob.yaml")


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new))


def _check(*pipelines: str) -> int:
    return main(["cluster", "check", *(pipelines or ("pipelines/finetune.yaml",))])


def test_the_cronjobs_mounted_dataset_compiled_into_the_run_names_the_cronjob(project, capsys):
    """What the CronJob ran before: its --set of the mounted path went into the compile, which KFP refuses."""
    _edit(project / CRONJOB,
          "                - --submit-param\n                - dataset=$(TUNELINE_DATASET_URI)\n", "")
    assert _check() == 2
    err = capsys.readouterr().err
    assert "CronJob tuneline/tuneline-retrain (k8s/overlays/prod): its submission (kfp) does not compile: " in err
    assert "'/mnt/data/tickets.jsonl' cannot be imported on KFP" in err


def test_a_pipeline_serviceaccount_without_kfps_runtime_rules_is_refused(project, capsys):
    kustomization = project / "k8s" / "kubeflow" / "kustomization.yaml"
    _edit(kustomization, "  - kfp-runtime-rbac.yaml\n", "")
    assert _check() == 2
    err = capsys.readouterr().err
    assert "ServiceAccount tuneline-pipeline may not get configmaps/kfp-launcher in kubeflow, which the root " \
           "driver" in err
    assert "may not get secrets/mlpipeline-minio-artifact in kubeflow" in err
    assert "backend/src/v2/config/env.go FromConfigMap" in err


def test_a_role_for_another_configmap_does_not_count(project, capsys):
    _edit(project / "k8s" / "kubeflow" / "kfp-runtime-rbac.yaml", '["kfp-launcher"]', '["kfp-launcher-v2"]')
    assert _check() == 2
    assert "may not get configmaps/kfp-launcher in kubeflow" in capsys.readouterr().err


def test_a_mlflow_secret_mirrored_by_the_csi_driver_or_created_by_nobody_is_refused(project, capsys):
    docs = project / "docs" / "aks.md"
    created = re.compile(r"kubectl\s+(-n kubeflow\s+)?create secret generic tuneline-mlflow-login")
    assert created.search(docs.read_text())
    docs.write_text(created.sub("true", docs.read_text()))
    assert _check() == 2
    err = capsys.readouterr().err
    assert "CronJob tuneline/tuneline-retrain (k8s/overlays/dev):train: Secret tuneline-mlflow-login is not " \
           "created in namespace kubeflow by k8s/overlays/dev, KFP's install or the docs" in err
    # a Key Vault mirror in kubeflow: it exists only while some pod mounts it
    spc = project / "k8s" / "base" / "retrain" / "secretproviderclass.yaml"
    (project / "k8s" / "kubeflow" / "mirror.yaml").write_text(
        spc.read_text().replace("name: mlflow-client", "name: mlflow-pipeline")
        .replace("secretName: mlflow-credentials", "secretName: tuneline-mlflow-login"))
    _edit(project / "k8s" / "kubeflow" / "kustomization.yaml", "  - checkpoints-pvc.yaml\n",
          "  - checkpoints-pvc.yaml\n  - mirror.yaml\n")
    assert _check() == 2
    assert "train: Secret tuneline-mlflow-login in kubeflow is only a mirror of SecretProviderClass " \
           "mlflow-pipeline: it exists while some other pod mounts that volume" in capsys.readouterr().err


def test_the_cronjob_submitting_without_the_mlflow_secret_is_refused(project, capsys):
    _edit(project / CRONJOB, "                - tuneline-mlflow-login\n", "                - ''\n")
    _edit(project / CRONJOB, "                - ''\n", "                - tuneline-mlflow-logins\n")
    assert _check() == 2
    assert "train: Secret tuneline-mlflow-logins is not created in namespace kubeflow" in capsys.readouterr().err


def test_images_without_the_lock_or_outside_the_registry_are_refused(project, capsys):
    _edit(project / CRONJOB, "                - --images\n                - /etc/tuneline/images.yaml\n", "")
    assert _check() == 2
    err = capsys.readouterr().err
    assert "CronJob tuneline/tuneline-retrain (k8s/overlays/prod):train: image " \
           "tunelineacr.azurecr.io/tuneline/train-gpu:0.1.0 is not in the registry tunelineprod.azurecr.io/tuneline " \
           "the overlay names" in err
    patch = project / "k8s" / "overlays" / "prod" / "patches" / "images.yaml"
    _edit(patch, "registry: tunelineprod.azurecr.io/tuneline", "registry: docker.io/tuneline")
    assert _check() == 2
    assert "pipelines/finetune.yaml:train: image docker.io/tuneline/train-gpu@sha256:" in capsys.readouterr().err


def test_an_image_tag_instead_of_a_digest_is_refused(project, capsys):
    path = project / "pipelines" / "finetune.yaml"
    from tuneline.cluster.check import image_problem

    assert image_problem("acr.io/t/train-gpu:0.1.0", {"train-gpu"}, "acr.io/t") == \
        "image acr.io/t/train-gpu:0.1.0 is not pinned by a sha256 digest"
    assert image_problem("acr.io/t/train-gpu@sha256:" + "a" * 64, {"train-gpu"}, "acr.io/t") is None
    assert path.is_file()


def test_azureml_submission_with_an_object_store_dataset_or_unregistered_environment_is_refused(project, capsys):
    """The CronJob switched to --submit azureml, as the docs offer: a minio:// dataset Azure ML cannot read."""
    _edit(project / CRONJOB, "                - kfp\n", "                - azureml\n")
    assert _check() == 2
    assert "CronJob tuneline/tuneline-retrain (k8s/overlays/dev): its submission (azureml) does not compile: " \
           "pipelines/finetune.yaml: parameter 'dataset' = minio://mlpipeline/tuneline-data/tickets.jsonl: Azure ML " \
           "cannot read a minio:// URI" in capsys.readouterr().err


def test_azureml_environments_resolve_in_the_control_image(project, capsys, monkeypatch):
    """The Azure ML retrain-check job compiles in the control image, which has no environments/ folder: an
    environment name that resolves only from that folder is caught."""
    from tuneline.targets.azureml import compiler as azureml

    monkeypatch.setattr(azureml, "component_environment", lambda options, name: f"azureml:{name}@latest")
    assert _check() == 2
    assert "Azure ML job finetune-demo-retrain-check (tuneline trigger azureml-schedule pipelines/finetune.yaml)" \
           ":train: Azure ML environment azureml:train-gpu@latest is not one that environments/ registers" \
           in capsys.readouterr().err


def test_a_dataset_nothing_fills_is_refused(project, capsys):
    """The bucket is KFP's own, filled with artifacts: only an upload into the dataset's folder counts."""
    _edit(project / "docs" / "aks.md", "kfp/mlpipeline/tuneline-data/", "kfp/mlpipeline/other-folder/")
    assert _check() == 2
    assert "CronJob tuneline/tuneline-retrain (k8s/overlays/dev): parameter 'dataset': nothing in k8s/ or the docs " \
           "writes data to minio://mlpipeline/tuneline-data/tickets.jsonl" in capsys.readouterr().err


def test_a_dataset_outside_the_pipeline_roots_bucket_is_refused(project, capsys):
    """A bucket of its own, uploaded as the docs once did: KFP's launcher has no credentials for it."""
    _edit(project / "docs" / "aks.md", "kfp/mlpipeline/tuneline-data/", "kfp/tuneline-data/")
    _edit(project / CRONJOB, "value: minio://mlpipeline/tuneline-data/", "value: minio://tuneline-data/")
    assert _check() == 2
    assert "CronJob tuneline/tuneline-retrain (k8s/overlays/dev): its submission (kfp) does not compile: " \
           "pipelines/finetune.yaml: parameter 'dataset' = minio://tuneline-data/tickets.jsonl: KFP cannot import " \
           "it: it is not in the pipeline root's bucket (minio://mlpipeline/v2/artifacts)" in capsys.readouterr().err


def test_the_pipeline_root_comes_from_a_rendered_kfp_launcher_config_map(project, capsys):
    (project / "k8s" / "kubeflow" / "kfp-launcher.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: kfp-launcher, namespace: kubeflow}\n"
        "data: {defaultPipelineRoot: 's3://artifacts/v2'}\n")
    _edit(project / "k8s" / "kubeflow" / "kustomization.yaml", "  - checkpoints-pvc.yaml\n",
          "  - checkpoints-pvc.yaml\n  - kfp-launcher.yaml\n")
    assert _check() == 2
    assert "params.dataset.target_defaults.kfp: 'minio://mlpipeline/tuneline-data/tickets.jsonl' cannot be " \
           "imported on KFP: it is not in the pipeline root's bucket (s3://artifacts/v2)" in capsys.readouterr().err


def test_a_pod_reading_a_csi_mirror_it_does_not_mount_is_refused(project, capsys):
    """The CronJob reads mlflow-credentials, which exists only while a pod mounts SecretProviderClass
    mlflow-client: it mounts that volume itself, so the Secret is there when its container starts. Without the
    mount it would depend on some other pod."""
    _edit(project / CRONJOB, "                - name: mlflow-client\n                  mountPath: /mnt/secrets\n"
                             "                  readOnly: true\n", "")
    text = (project / CRONJOB).read_text()
    (project / CRONJOB).write_text(text[:text.index("            - name: mlflow-client\n              csi:")])
    assert _check() == 2
    assert "CronJob tuneline/tuneline-retrain (k8s/overlays/dev): Secret mlflow-credentials in tuneline is only a " \
           "mirror of SecretProviderClass mlflow-client" in capsys.readouterr().err


def test_a_submit_path_that_compiles_the_checks_own_values_again_is_caught(project, capsys, monkeypatch):
    """The bug itself, back in tuneline.targets.submit: the CronJob's --set of its mounted data compiled into the
    run."""
    from tuneline.targets import submit

    monkeypatch.setattr(submit, "submission_values", lambda target, sets, run_params: (dict(sets), dict(run_params)))
    assert _check() == 2
    assert "CronJob tuneline/tuneline-retrain (k8s/overlays/dev): its submission (kfp) does not compile: " \
           "pipelines/finetune.yaml:10:5: params.dataset (from --set dataset=...): '/mnt/data/tickets.jsonl' " \
           "cannot be imported on KFP" in capsys.readouterr().err


def test_the_retrain_check_jobs_own_environment_must_be_registered(project, capsys, monkeypatch):
    import functools

    from tuneline.targets.azureml import retrain as azureml

    monkeypatch.setattr(azureml, "ScheduleOptions",
                        functools.partial(azureml.ScheduleOptions, environment="azureml:control@latest"))
    assert _check() == 2
    assert "Azure ML job finetune-demo-retrain-check (tuneline trigger azureml-schedule pipelines/finetune.yaml): " \
           "its own environment azureml:control@latest is not one that environments/ registers" \
           in capsys.readouterr().err


def test_an_azureml_distributed_step_starts_one_process_per_gpu_of_its_vm_size(tmp_path):
    """finetune-multinode ran 4 processes per Standard_ND96asr_v4 node, which has 8 A100s: half of them idle."""
    from tuneline.cluster.check import azureml_compute_problems
    from tuneline.graph import build_graph
    from tuneline.spec import load_pipeline
    from tuneline.targets.build import compile_graph
    from tuneline.targets.options import CompileOptions

    skus = load_skus(REPO / "config" / "skus.yaml")
    source = REPO / "pipelines" / "finetune-multinode.yaml"
    out = compile_graph(build_graph(load_pipeline(source)), ("azureml",), tmp_path / "repo", CompileOptions())
    assert azureml_compute_problems("finetune-multinode.yaml", out.folder, skus) == []
    text = source.read_text()
    assert "Standard_ND96asr_v4, nodes: 2, processes_per_node: 8" in text
    shutil.copytree(REPO / "components", tmp_path / "components", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "environments", tmp_path / "environments")
    shutil.copytree(REPO / "data", tmp_path / "data")
    (tmp_path / "pipelines").mkdir()
    half = tmp_path / "pipelines" / source.name
    half.write_text(text.replace("processes_per_node: 8", "processes_per_node: 4"))
    out = compile_graph(build_graph(load_pipeline(half)), ("azureml",), tmp_path / "half", CompileOptions())
    problems = azureml_compute_problems("finetune-multinode.yaml", out.folder, skus)
    assert problems == ["finetune-multinode.yaml:train: Azure ML starts 4 process(es) per node, a Standard_ND96asr_v4 "
                        "node has 8 GPUs: set the profile's azureml processes_per_node to 8"]


MLFLOW_INGRESS_KUBEFLOW_PEER = """        # Kubeflow Pipelines runs the step pods in its own namespace.
        - namespaceSelector:
            matchLabels:
              kubernetes.io/metadata.name: kubeflow
"""


def test_pipeline_pods_that_netpol_keeps_from_mlflow_are_refused(project, capsys):
    """The ConfigMap and the Secret were there, so every check passed, but with the `kubeflow` peer gone from
    mlflow-ingress (as after moving pipeline pods to a profile namespace) train, evaluate and register time out
    connecting to MLflow on the cluster."""
    _edit(project / "k8s" / "base" / "network" / "networkpolicies.yaml", MLFLOW_INGRESS_KUBEFLOW_PEER, "")
    assert _check() == 2
    err = capsys.readouterr().err
    assert ("pipelines/finetune.yaml:train: ConfigMap tuneline-mlflow MLFLOW_TRACKING_URI names Service "
            "mlflow.tuneline:5000, which a pod in namespace kubeflow cannot reach: no NetworkPolicy rule admits it "
            "(ingress in tuneline: default-deny-all, mlflow-ingress) (k8s/overlays/dev)") in err


def test_a_default_deny_egress_where_pipeline_pods_run_is_refused(project, capsys):
    deny = project / "k8s" / "kubeflow" / "deny-egress.yaml"
    deny.write_text("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny-egress}\n"
                    "spec: {podSelector: {}, policyTypes: [Egress]}\n")
    _edit(project / "k8s" / "kubeflow" / "kustomization.yaml", "  - networkpolicy.yaml\n",
          "  - networkpolicy.yaml\n  - deny-egress.yaml\n")
    assert _check() == 2
    assert "no NetworkPolicy rule admits it (egress in kubeflow: deny-egress)" in capsys.readouterr().err
