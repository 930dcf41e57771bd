"""Render k8s/nodepools.yaml into an idempotent `az aks nodepool` script and into Azure Service Operator v2
ManagedClustersAgentPool resources (the GitOps form).

The script asks Azure what exists (`az aks nodepool show`) and then adds the pool or updates only what
`az aks nodepool update` can change (autoscaler bounds, labels, taints); the spot settings can only be set
when a pool is added. GPU pools start at zero nodes and scale from zero.

AKS gives every spot pool the label and taint kubernetes.azure.com/scalesetpriority=spot, but `--labels` and
`--node-taints` on update replace the whole set, dropping them (Azure/AKS#3152); so do ASO reconciles of
`nodeLabels`/`nodeTaints`. Both renderings therefore always declare them for spot pools.

The spec also renders the cluster autoscaler's priority-expander ConfigMap (spot pools first, on-demand as the
fallback when spot capacity is refused) and records the GPU software stack: `aks-driver` (AKS installs the
driver, k8s/addons installs the device plugin and DCGM exporter) or `gpu-operator` (GPU pools are added with
`--gpu-driver None` and the NVIDIA GPU Operator brings driver, device plugin and exporter; the overlays must
then not deploy k8s/addons' DaemonSets; k8s-validate checks that).

Run as: python -m tuneline.cluster.nodepools --dry-run                 (print the exact az commands, run nothing)
        python -m tuneline.cluster.nodepools                           (run them; needs `az login`)
        python -m tuneline.cluster.nodepools --aso-out k8s/nodepools/aso (rewrite the ASO manifests)
        python -m tuneline.cluster.nodepools --expander-out k8s/addons/autoscaler (rewrite the expander ConfigMap)
"""

from __future__ import annotations

import argparse
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuneline.cluster.yamlmodel import load_yaml_model
from tuneline.settings import SPOT_LABEL, SPOT_TAINT, SPOT_VALUE

DEFAULT_SPEC = Path("k8s/nodepools.yaml")
ASO_API_VERSION = "containerservice.azure.com/v1api20240901"
ASO_NAMESPACE = "tuneline-infra"
SPOT_KEY = SPOT_LABEL
GPU_LABEL = "tuneline.dev/accelerator"
# https://github.com/kubernetes/autoscaler/blob/master/cluster-autoscaler/expander/priority/readme.md
EXPANDER_CONFIGMAP = "cluster-autoscaler-priority-expander"


class Autoscale(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min: int = Field(ge=0)
    max: int = Field(ge=1)

    @model_validator(mode="after")
    def _ordered(self) -> Autoscale:
        if self.min > self.max:
            raise ValueError(f"autoscale.min ({self.min}) is above autoscale.max ({self.max})")
        return self


class Pool(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z][a-z0-9]{0,11}$", description="AKS pool names: 1-12 lowercase alphanumerics")
    mode: Literal["System", "User"]
    vmSize: str
    osSku: Literal["Ubuntu", "AzureLinux"] = "Ubuntu"
    count: int = Field(ge=0)
    autoscale: Autoscale
    priority: Literal["Regular", "Spot"] = "Regular"
    evictionPolicy: Literal["Delete", "Deallocate"] | None = None
    spotMaxPrice: float | None = None
    taints: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    maxPods: int | None = Field(default=None, ge=10, le=250)
    expanderPriority: int | None = Field(default=None, ge=1, le=1000,
                                         description="cluster-autoscaler priority expander: higher scales first")

    @property
    def gpu(self) -> bool:
        return GPU_LABEL in self.labels

    @property
    def all_labels(self) -> dict[str, str]:
        """The labels to declare on create and update, AKS's own spot label included."""
        return dict(sorted((self.labels | ({SPOT_KEY: SPOT_VALUE} if self.priority == "Spot" else {})).items()))

    @property
    def all_taints(self) -> list[str]:
        extra = [SPOT_TAINT] if self.priority == "Spot" and SPOT_TAINT not in self.taints else []
        return list(self.taints) + extra

    @model_validator(mode="after")
    def _consistent(self) -> Pool:
        if self.priority == "Spot":
            if self.mode == "System":
                raise ValueError("a System pool cannot be Spot")
            if self.evictionPolicy is None or self.spotMaxPrice is None:
                raise ValueError("a Spot pool needs evictionPolicy and spotMaxPrice (-1: up to on-demand price)")
        elif self.evictionPolicy is not None or self.spotMaxPrice is not None:
            raise ValueError("evictionPolicy/spotMaxPrice only apply to priority: Spot")
        if self.mode == "System" and self.autoscale.min < 1:
            raise ValueError("a System pool needs autoscale.min >= 1")
        if self.gpu and self.count != 0:
            raise ValueError(f"GPU pool count is {self.count}: create GPU pools with count 0 and let the "
                             "autoscaler add nodes when a GPU pod is pending")
        if not self.autoscale.min <= self.count <= self.autoscale.max:
            raise ValueError(f"count {self.count} is outside autoscale [{self.autoscale.min}, {self.autoscale.max}]")
        for t in self.taints:
            key, _, effect = t.rpartition(":")
            if not key or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
                raise ValueError(f"taint {t!r} is not key[=value]:NoSchedule|PreferNoSchedule|NoExecute")
        return self


class Cluster(BaseModel):
    model_config = ConfigDict(extra="forbid")
    resourceGroup: str
    name: str
    location: str
    kubernetesVersion: str
    gpuStack: Literal["aks-driver", "gpu-operator"] = Field(
        description="aks-driver: AKS installs the NVIDIA driver, k8s/addons the device plugin and DCGM exporter; "
                    "gpu-operator: GPU pools skip the driver (--gpu-driver None), the NVIDIA GPU Operator installs "
                    "driver, device plugin and exporter")


class NodePoolSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cluster: Cluster
    pools: list[Pool]


def load_spec(path: Path = DEFAULT_SPEC) -> NodePoolSpec:
    return load_yaml_model(NodePoolSpec, path)


def _join(args: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in args)


def _target(spec: NodePoolSpec, pool: Pool) -> list[str]:
    return ["--resource-group", spec.cluster.resourceGroup, "--cluster-name", spec.cluster.name,
            "--name", pool.name]


def _labels(labels: dict[str, str]) -> list[str]:
    return ["--labels", *(f"{k}={v}" for k, v in sorted(labels.items()))] if labels else []


def show_command(spec: NodePoolSpec, pool: Pool) -> list[str]:
    return ["az", "aks", "nodepool", "show", *_target(spec, pool), "--query", "enableAutoScaling", "--output", "tsv"]


def add_command(spec: NodePoolSpec, pool: Pool) -> list[str]:
    cmd = ["az", "aks", "nodepool", "add", *_target(spec, pool), "--mode", pool.mode,
           "--node-vm-size", pool.vmSize, "--os-sku", pool.osSku, "--node-count", str(pool.count),
           "--enable-cluster-autoscaler", "--min-count", str(pool.autoscale.min),
           "--max-count", str(pool.autoscale.max), "--kubernetes-version", spec.cluster.kubernetesVersion]
    if pool.priority == "Spot":
        cmd += ["--priority", "Spot", "--eviction-policy", str(pool.evictionPolicy),
                "--spot-max-price", f"{pool.spotMaxPrice:g}"]
    if pool.gpu and spec.cluster.gpuStack == "gpu-operator":
        # https://learn.microsoft.com/azure/aks/nvidia-gpu-operator (az CLI >= 2.72.2)
        cmd += ["--gpu-driver", "None"]
    # On add, AKS puts its spot label and taint on a spot pool itself.
    if pool.taints:
        cmd += ["--node-taints", ",".join(pool.taints)]
    if pool.maxPods:
        cmd += ["--max-pods", str(pool.maxPods)]
    return cmd + _labels(pool.labels)


def update_command(spec: NodePoolSpec, pool: Pool, autoscaler_enabled: bool) -> list[str]:
    flag = "--update-cluster-autoscaler" if autoscaler_enabled else "--enable-cluster-autoscaler"
    # --node-taints and --labels replace the whole set: always pass the declared list (AKS's spot label and
    # taint included) so removed ones go away and AKS's own stay.
    return ["az", "aks", "nodepool", "update", *_target(spec, pool), flag,
            "--min-count", str(pool.autoscale.min), "--max-count", str(pool.autoscale.max),
            "--node-taints", ",".join(pool.all_taints), *_labels(pool.all_labels)]


def script(spec: NodePoolSpec) -> str:
    """A bash script doing what a real run does; `--dry-run | bash` is equivalent to running without it."""
    lines = ["#!/usr/bin/env bash", "# Generated by python -m tuneline.cluster.nodepools from k8s/nodepools.yaml",
             "set -euo pipefail", ""]
    for pool in spec.pools:
        lines += [
            f"# pool {pool.name}: {pool.mode}, {pool.vmSize}, {pool.priority}, autoscale "
            f"{pool.autoscale.min}..{pool.autoscale.max}",
            f"autoscaling=$({_join(show_command(spec, pool))} 2>/dev/null || echo absent)",
            'if [ "$autoscaling" = absent ]; then',
            f"  {_join(add_command(spec, pool))}",
            'elif [ "$autoscaling" = true ]; then',
            f"  {_join(update_command(spec, pool, True))}",
            "else",
            f"  {_join(update_command(spec, pool, False))}",
            "fi", "",
        ]
    return "\n".join(lines)


def apply(spec: NodePoolSpec, runner=subprocess.run) -> None:
    """Bring every pool to its declared state with the az CLI."""
    if shutil.which("az") is None:
        raise RuntimeError("the Azure CLI (az) is not installed; use --dry-run to see the commands")
    for pool in spec.pools:
        shown = runner(show_command(spec, pool), capture_output=True, text=True)
        if shown.returncode != 0:
            cmd = add_command(spec, pool)
        else:
            cmd = update_command(spec, pool, shown.stdout.strip() == "true")
        print("+ " + _join(cmd), flush=True)
        runner(cmd, check=True)


def aso_resources(spec: NodePoolSpec) -> list[dict]:
    """ManagedClustersAgentPool objects owned by the ManagedCluster resource of the same name as the cluster."""
    if spec.cluster.gpuStack == "gpu-operator":
        raise ValueError(f"ASO {ASO_API_VERSION} cannot skip the GPU driver install: with gpuStack gpu-operator "
                         "use the az rendering (--dry-run)")
    out = []
    for pool in spec.pools:
        body: dict = {
            "owner": {"name": spec.cluster.name},
            "azureName": pool.name,
            "mode": pool.mode,
            "type": "VirtualMachineScaleSets",
            "vmSize": pool.vmSize,
            "osType": "Linux",
            "osSKU": pool.osSku,
            "orchestratorVersion": spec.cluster.kubernetesVersion,
            "enableAutoScaling": True,
            "minCount": pool.autoscale.min,
            "maxCount": pool.autoscale.max,
        }
        if pool.gpu:
            # The creation size: without `count` ARM refuses the pool or creates a node
            # (Azure/azure-service-operator#3220); a GPU pool starts empty and the autoscaler sizes it after.
            body["count"] = pool.count
        if pool.priority == "Spot":
            body |= {"scaleSetPriority": "Spot", "scaleSetEvictionPolicy": pool.evictionPolicy,
                     "spotMaxPrice": pool.spotMaxPrice}
        if pool.all_taints:
            body["nodeTaints"] = pool.all_taints
        if pool.all_labels:
            body["nodeLabels"] = pool.all_labels
        if pool.maxPods:
            body["maxPods"] = pool.maxPods
        out.append({
            "apiVersion": ASO_API_VERSION,
            "kind": "ManagedClustersAgentPool",
            "metadata": {"name": f"{spec.cluster.name}-{pool.name}", "namespace": ASO_NAMESPACE},
            "spec": body,
        })
    return out


def aso_files(spec: NodePoolSpec) -> dict[str, str]:
    head = ("# Generated by `python -m tuneline.cluster.nodepools --aso-out k8s/nodepools/aso` "
            "from k8s/nodepools.yaml.\n")
    manifests = head + yaml.safe_dump_all(aso_resources(spec), sort_keys=False)
    kustomization = head + yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["agentpools.yaml"]}, sort_keys=False)
    return {"agentpools.yaml": manifests, "kustomization.yaml": kustomization}


class _BlockDumper(yaml.SafeDumper):
    """Multi-line strings as `|` blocks, so the generated ConfigMap reads like the upstream example."""


_BlockDumper.add_representer(str, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v,
                                                                   style="|" if "\n" in v else None))


def expander_configmap(spec: NodePoolSpec) -> dict:
    """The priority expander's ConfigMap: AKS names a pool's scale set aks-<pool>-<hash>-vmss."""
    tiers: dict[int, list[str]] = {}
    for pool in spec.pools:
        if pool.expanderPriority is not None:
            tiers.setdefault(pool.expanderPriority, []).append(f"^aks-{pool.name}-[0-9]+-vmss$")
    tiers.setdefault(1, []).append(".*")  # every other pool, lowest
    priorities = "".join(f"{p}:\n" + "".join(f"  - {pattern}\n" for pattern in tiers[p])
                         for p in sorted(tiers, reverse=True))
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": EXPANDER_CONFIGMAP, "namespace": "kube-system"},
            "data": {"priorities": priorities}}


def expander_files(spec: NodePoolSpec) -> dict[str, str]:
    head = ("# Generated by `python -m tuneline.cluster.nodepools --expander-out k8s/addons/autoscaler` from "
            "k8s/nodepools.yaml.\n# Takes effect with the cluster autoscaler profile expander=priority "
            "(docs/aks.md, step 5).\n")
    kustomization = head + yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["priority-expander.yaml"]}, sort_keys=False)
    return {"priority-expander.yaml": head + yaml.dump(expander_configmap(spec), Dumper=_BlockDumper, sort_keys=False),
            "kustomization.yaml": kustomization}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Render or apply the AKS node pools declared in k8s/nodepools.yaml.")
    ap.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="node-pool spec (default: %(default)s)")
    ap.add_argument("--dry-run", action="store_true", help="print the az commands as a bash script; run nothing")
    ap.add_argument("--aso-out", type=Path, default=None,
                    help="write Azure Service Operator manifests to this folder instead of running az")
    ap.add_argument("--expander-out", type=Path, default=None,
                    help="write the cluster autoscaler priority-expander ConfigMap to this folder")
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.spec)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.aso_out or args.expander_out:
        for folder, files in ((args.aso_out, aso_files), (args.expander_out, expander_files)):
            if folder:
                folder.mkdir(parents=True, exist_ok=True)
                for name, text in files(spec).items():
                    (folder / name).write_text(text)
                print(f"wrote {', '.join(files(spec))} to {folder}")
        return 0
    if args.dry_run:
        sys.stdout.write(script(spec))
        return 0
    try:
        apply(spec)
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
