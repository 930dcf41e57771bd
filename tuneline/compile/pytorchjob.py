"""The Kubeflow Training Operator PyTorchJob a multi-node step runs as.

The KFP pipeline holds a small launcher step in its place (`tuneline.compile.launch`): it stages the inputs on
the shared checkpoint volume, fills in this manifest's command, submits it and waits. Master and workers run
the step's own command through torchrun; the operator sets PET_NNODES / PET_NODE_RANK / PET_MASTER_ADDR,
which torchrun reads.
"""

from __future__ import annotations

from typing import Any

from .options import MLFLOW_CONFIG_KEYS, MLFLOW_SECRET_KEYS
from .placement import CHECKPOINT_MOUNT, GPU_RESOURCE, Placement

API_VERSION = "kubeflow.org/v1"
CONTAINER = "pytorch"  # the operator finds the training container by this name


def _pod_template(image: str, command: list[str], place: Placement, env: dict[str, str], pvc: str,
                  mlflow_secret: str | None, mlflow_config_map: str | None) -> dict[str, Any]:
    limits: dict[str, Any] = {}
    if place.cpu:
        limits["cpu"] = place.cpu
    if place.memory:
        limits["memory"] = place.memory
    if place.gpus:
        limits[GPU_RESOURCE] = place.gpus
    env_list: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in env.items()]
    if mlflow_config_map:
        env_list += [{"name": key, "valueFrom": {"configMapKeyRef": {"name": mlflow_config_map, "key": key}}}
                     for key in MLFLOW_CONFIG_KEYS]
    if mlflow_secret:
        env_list += [{"name": key, "valueFrom": {"secretKeyRef": {"name": mlflow_secret, "key": key}}}
                     for key in MLFLOW_SECRET_KEYS]
    mounts = [{"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT}]
    volumes: list[dict[str, Any]] = [{"name": "checkpoints", "persistentVolumeClaim": {"claimName": pvc}}]
    if place.use_shm:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", **({"sizeLimit": place.shm}
                                                                             if place.shm else {})}})
    container: dict[str, Any] = {"name": CONTAINER, "image": image, "command": command, "env": env_list,
                                 "volumeMounts": mounts}
    if limits:
        container["resources"] = {"limits": limits, "requests": dict(limits)}
    spec: dict[str, Any] = {"containers": [container], "volumes": volumes}
    if place.node_selector:
        spec["nodeSelector"] = dict(place.node_selector)
    if place.tolerations:
        spec["tolerations"] = [t.model_dump(exclude_none=True) for t in place.tolerations]
    return {"metadata": {"labels": {"app.kubernetes.io/part-of": "tuneline"}}, "spec": spec}


def pytorchjob_manifest(name: str, step: str, image: str, command: list[str], place: Placement,
                        env: dict[str, str], pvc: str, mlflow_secret: str | None, mlflow_config_map: str | None,
                        backoff_limit: int = 0) -> dict[str, Any]:
    template = _pod_template(image, command, place, env, pvc, mlflow_secret, mlflow_config_map)
    replicas: dict[str, Any] = {"Master": {"replicas": 1, "restartPolicy": "OnFailure", "template": template}}
    if place.nodes > 1:
        replicas["Worker"] = {"replicas": place.nodes - 1, "restartPolicy": "OnFailure", "template": template}
    return {
        "apiVersion": API_VERSION,
        "kind": "PyTorchJob",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "tuneline", "tuneline.dev/step": step}},
        "spec": {
            "nprocPerNode": str(place.processes_per_node),
            "runPolicy": {"backoffLimit": backoff_limit, "cleanPodPolicy": "None"},
            "pytorchReplicaSpecs": replicas,
        },
    }
