"""The Kubeflow Training Operator (v1) PyTorchJob a multi-node step runs as with `launcher: pytorchjob`.

The v1 operator is the legacy API (Kubeflow Trainer v2's TrainJob, `trainjob.py`, is the default); it stays for
clusters that still run it. The KFP pipeline holds a small launcher step in its place (`tuneline.targets.kfp.launch`):
it stages the inputs on the shared checkpoint volume, fills in this manifest's name, owner and command, submits
it and waits. Master and workers run the step's own command through torchrun; the operator sets PET_NNODES /
PET_NODE_RANK / PET_MASTER_ADDR, which torchrun reads. Fields: kubeflow/training-operator
pkg/apis/kubeflow.org/v1 (pytorch_types.go, common_types.go: `runPolicy.activeDeadlineSeconds`, `backoffLimit`).
"""

from __future__ import annotations

from typing import Any

from .jobpod import PART_OF, PodParts

API_VERSION = "kubeflow.org/v1"
KIND = "PyTorchJob"
CONTAINER = "pytorch"  # the operator finds the training container by this name


def _pod_template(parts: PodParts) -> dict[str, Any]:
    container: dict[str, Any] = {"name": CONTAINER, "image": parts.image, "command": parts.command,
                                 "env": parts.env, "volumeMounts": parts.mounts}
    if parts.resources:
        container["resources"] = parts.resources
    spec: dict[str, Any] = {"containers": [container], "volumes": parts.volumes}
    if parts.node_selector:
        spec["nodeSelector"] = dict(parts.node_selector)
    if parts.tolerations:
        spec["tolerations"] = list(parts.tolerations)
    return {"metadata": {"labels": dict(parts.labels), "annotations": dict(parts.annotations)}, "spec": spec}


def pytorchjob_manifest(name: str, step: str, parts: PodParts, nodes: int, processes_per_node: int,
                        backoff_limit: int = 0, deadline_seconds: int | None = None) -> dict[str, Any]:
    template = _pod_template(parts)
    replicas: dict[str, Any] = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template}}
    if nodes > 1:
        replicas["Worker"] = {"replicas": nodes - 1, "restartPolicy": "OnFailure", "template": template}
    run_policy: dict[str, Any] = {"backoffLimit": backoff_limit, "cleanPodPolicy": "None"}
    if deadline_seconds:
        run_policy["activeDeadlineSeconds"] = deadline_seconds
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": name, "labels": {**PART_OF, "tuneline.dev/step": step}},
        "spec": {
            "nprocPerNode": str(processes_per_node),
            "runPolicy": run_policy,
            "pytorchReplicaSpecs": replicas,
        },
    }
