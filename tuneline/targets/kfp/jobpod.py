"""The pod of a multi-node step's job, as parts that a TrainJob and a PyTorchJob each place their own way.

Both jobs run the step's image with the same resources, environment, volumes (the shared checkpoint PVC, and
/dev/shm for NCCL and data loaders), node selector and tolerations as a single-node KFP task would get
(`placement.py`); only where each API takes them differs (`trainjob.py`, `pytorchjob.py`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from ..placement import CHECKPOINT_MOUNT, GPU_RESOURCE, Placement
from .options import HF_SECRET_KEYS, MLFLOW_CONFIG_KEYS, MLFLOW_SECRET_KEYS

PART_OF = {"app.kubernetes.io/part-of": "tuneline"}
# The job's pods talk to each other (rendezvous, NCCL) and must finish: an Istio sidecar would keep a finished
# pod running and intercept the rendezvous port. Istio reads the label on the pod (the annotation of the same
# name is its older form, and what KFP puts on its own pods):
# https://istio.io/latest/docs/setup/additional-setup/sidecar-injection/#controlling-the-injection-policy
NO_SIDECAR = {"sidecar.istio.io/inject": "false"}
# A DNS-1035 label (RFC 1035): what a TrainJob's name must be (kubeflow/trainer
# pkg/apis/trainer/v1alpha1/trainjob_types.go) and what the job's Services and pod hostnames are built from.
DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
# Pods and Services are named after the job (`<name>-node-0-0`, `<name>-master-0`), and those names must stay
# DNS labels of at most 63 characters: the compiled name keeps to 39, the launcher adds `-<8 hex>` per run.
NAME_PREFIX_MAX = 39


def dns_1035(text: str, limit: int = NAME_PREFIX_MAX) -> str:
    """`text` as a DNS-1035 label of at most `limit` characters (`demo-train_llm` -> `demo-train-llm`)."""
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower())
    name = re.sub(r"-{2,}", "-", name).strip("-")
    if not name or not name[0].isalpha():
        name = f"j-{name}"
    name = name[:limit].rstrip("-")
    if not DNS_1035.match(name):
        raise ValueError(f"cannot make a DNS-1035 label of {text!r}")
    return name


@dataclass
class PodParts:
    image: str
    command: list[str]
    env: list[dict[str, Any]]
    resources: dict[str, Any]
    volumes: list[dict[str, Any]]
    mounts: list[dict[str, Any]]
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    labels: dict[str, str] = field(default_factory=lambda: {**PART_OF, **NO_SIDECAR})
    annotations: dict[str, str] = field(default_factory=lambda: dict(NO_SIDECAR))


def pod_parts(image: str, command: list[str], place: Placement, env: dict[str, str], pvc: str,
              mlflow_secret: str | None, mlflow_config_map: str | None, hf_secret: str | None = None) -> PodParts:
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
    if hf_secret:
        env_list += [{"name": key, "valueFrom": {"secretKeyRef": {"name": hf_secret, "key": key}}}
                     for key in HF_SECRET_KEYS]
    mounts = [{"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT}]
    volumes: list[dict[str, Any]] = [{"name": "checkpoints", "persistentVolumeClaim": {"claimName": pvc}}]
    if place.use_shm:
        mounts.append({"name": "dshm", "mountPath": "/dev/shm"})
        volumes.append({"name": "dshm", "emptyDir": {"medium": "Memory", **({"sizeLimit": place.shm}
                                                                             if place.shm else {})}})
    return PodParts(image=image, command=command, env=env_list,
                    resources={"limits": limits, "requests": dict(limits)} if limits else {},
                    volumes=volumes, mounts=mounts, node_selector=dict(place.node_selector),
                    tolerations=[t.model_dump(exclude_none=True) for t in place.tolerations])
