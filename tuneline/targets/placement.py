"""Where a step's pod runs on Kubernetes: resources, node selectors, tolerations, shared memory.

One description feeds both the KFP task (through kfp-kubernetes) and the multi-node job's pods (jobpod.py), so a
multi-node step lands on the same nodes with the same limits as a single-node one would.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..graph import Node, PipelineGraph
from ..settings import CHECKPOINT_MOUNT, SPOT_LABEL, SPOT_VALUE  # noqa: F401  (CHECKPOINT_MOUNT: re-exported)
from ..spec.models import KubeflowCompute, Toleration

GPU_RESOURCE = "nvidia.com/gpu"
# The taint our AKS GPU pools carry (k8s/nodepools.yaml) and the one AKS puts on every spot pool.
GPU_TOLERATION = Toleration(key="sku", operator="Equal", value="gpu", effect="NoSchedule")
SPOT_TOLERATION = Toleration(key=SPOT_LABEL, operator="Equal", value=SPOT_VALUE, effect="NoSchedule")
ACCELERATOR_LABEL = "tuneline.dev/accelerator"


@dataclass
class Placement:
    cpu: str | None = None
    memory: str | None = None
    gpus: int = 0
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[Toleration] = field(default_factory=list)
    prefer_spot: bool = False
    shm: str | None = None
    use_shm: bool = False
    nodes: int = 1
    processes_per_node: int = 1
    launcher: str = "trainjob"

    @property
    def distributed(self) -> bool:
        return self.nodes > 1 or self.processes_per_node > 1


def _quantity(value: float | str | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def placement(graph: PipelineGraph, node: Node) -> Placement:
    """Profile values win over the component's own `resources:`."""
    profile = graph.compute(node)
    kf = profile.kubeflow if profile and profile.kubeflow else KubeflowCompute()
    res = node.component.spec.resources
    gpus = kf.gpus or res.gpus
    place = Placement(cpu=_quantity(kf.cpu if kf.cpu is not None else res.cpu), memory=kf.memory or res.memory,
                      gpus=gpus, node_selector=dict(kf.node_selector), prefer_spot=kf.spot, shm=kf.shm,
                      nodes=kf.nodes, processes_per_node=kf.processes_per_node,
                      launcher=kf.launcher)
    if kf.accelerator:
        place.node_selector.setdefault(ACCELERATOR_LABEL, kf.accelerator)
    tolerations = ([GPU_TOLERATION] if gpus else []) + ([SPOT_TOLERATION] if kf.spot else []) + list(kf.tolerations)
    seen = set()
    for tol in tolerations:
        key = (tol.key, tol.operator, tol.value, tol.effect)
        if key not in seen:
            seen.add(key)
            place.tolerations.append(tol)
    # Data loader workers and NCCL use /dev/shm; a container's default 64 MiB makes training crash or crawl.
    place.use_shm = bool(kf.shm) or gpus > 0
    return place


def resumable(node: Node) -> bool:
    """A step with a `resume: true` output keeps its checkpoint store on the shared volume."""
    return bool(node.component.spec.resume_outputs)


def loads_models(node: Node) -> bool:
    """A step with an input of kind model_ref, or whose component declares `loads_models`, may download a model
    from the Hugging Face Hub."""
    spec = node.component.spec
    return spec.loads_models or any(value.kind == "model_ref" for value in spec.inputs.values())
