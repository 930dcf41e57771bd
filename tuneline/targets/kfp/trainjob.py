"""The Kubeflow Trainer v2 TrainJob a multi-node step runs as (the default `launcher: trainjob`).

The KFP pipeline holds a small launcher step in its place (`tuneline.targets.kfp.launch`), which names, owns, submits
and waits for this object. What it relies on, read in kubeflow/trainer v2.3.0:
- pkg/apis/trainer/v1alpha1/trainjob_types.go: `spec.runtimeRef` names a ClusterTrainingRuntime; `spec.trainer`
  sets the trainer container's image, command, env, `numNodes`, `numProcPerNode` and `resourcesPerNode`;
  `spec.activeDeadlineSeconds` fails the job with reason DeadlineExceeded; everything else about the pods
  (node selector, tolerations, volumes, volume mounts, pod labels and annotations) goes in `spec.runtimePatches`,
  keyed by a manager name; the name must be an RFC 1035 label of at most 63 characters; a finished job has the
  condition `Complete` or `Failed`.
- manifests/base/runtimes/torch_distributed.yaml: the `torch-distributed` runtime has one replicated job `node`
  whose container `node` is the trainer.
- pkg/runtime/framework/plugins/torch/torch.go: the torch plugin gives that container PET_NNODES,
  PET_NPROC_PER_NODE, PET_NODE_RANK, PET_MASTER_ADDR and PET_MASTER_PORT, which torchrun reads.
The runtime has no per-job retry count: a failed job fails the launcher, and a KFP retry of the launcher
replaces it (the step resumes from its checkpoints on the shared volume).
"""

from __future__ import annotations

from typing import Any

from .jobpod import PART_OF, PodParts

API_VERSION = "trainer.kubeflow.org/v1alpha1"
KIND = "TrainJob"
RUNTIME = "torch-distributed"
TRAINER_JOB = "node"        # the runtime's replicated job and container that run the trainer
TRAINER_CONTAINER = "node"
PATCH_MANAGER = "tuneline.dev/compile"


def trainjob_manifest(name: str, step: str, parts: PodParts, nodes: int, processes_per_node: int,
                      deadline_seconds: int | None = None, runtime: str = RUNTIME) -> dict[str, Any]:
    trainer: dict[str, Any] = {"image": parts.image, "command": parts.command, "env": parts.env,
                               "numNodes": nodes, "numProcPerNode": processes_per_node}
    if parts.resources:
        trainer["resourcesPerNode"] = parts.resources
    pod_spec: dict[str, Any] = {"volumes": parts.volumes,
                                "containers": [{"name": TRAINER_CONTAINER, "volumeMounts": parts.mounts}]}
    if parts.node_selector:
        pod_spec["nodeSelector"] = dict(parts.node_selector)
    if parts.tolerations:
        pod_spec["tolerations"] = list(parts.tolerations)
    pod = {"metadata": {"labels": dict(parts.labels), "annotations": dict(parts.annotations)}, "spec": pod_spec}
    patch = {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
        {"name": TRAINER_JOB, "template": {"spec": {"template": pod}}}]}}}}
    spec: dict[str, Any] = {"runtimeRef": {"name": runtime, "apiGroup": "trainer.kubeflow.org",
                                           "kind": "ClusterTrainingRuntime"},
                            "trainer": trainer, "runtimePatches": [patch]}
    if deadline_seconds:
        spec["activeDeadlineSeconds"] = deadline_seconds
    return {"apiVersion": API_VERSION, "kind": KIND,
            "metadata": {"name": name, "labels": {**PART_OF, "tuneline.dev/step": step}}, "spec": spec}


def pod_template_of(manifest: dict[str, Any]) -> dict[str, Any]:
    """The trainer pod as a core/v1 pod template: the runtime patch with the trainer's container filled in
    (what `tuneline cluster check` and the manifest tests read)."""
    trainer = manifest["spec"]["trainer"]
    patch = manifest["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"][0]
    pod = patch["template"]["spec"]["template"]
    spec = {k: v for k, v in pod["spec"].items() if k != "containers"}
    mounts = next(c.get("volumeMounts", []) for c in pod["spec"]["containers"] if c["name"] == TRAINER_CONTAINER)
    container = {"name": TRAINER_CONTAINER, "image": trainer["image"], "command": trainer["command"],
                 "env": trainer.get("env", []), "volumeMounts": mounts}
    if trainer.get("resourcesPerNode"):
        container["resources"] = trainer["resourcesPerNode"]
    return {"metadata": pod.get("metadata", {}), "spec": {**spec, "containers": [container]}}
