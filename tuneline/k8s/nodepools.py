"""Render k8s/nodepools.yaml into an idempotent `az aks nodepool` script and into Azure Service Operator v2
ManagedClustersAgentPool resources (the GitOps form).

The script asks Azure what exists (`az aks nodepool show`) and then adds the pool or updates only what
`az aks nodepool update` can change (autoscaler bounds, labels, taints); the spot settings can only be set
when a pool is added.

Run as: python -m tuneline.k8s.nodepools --dry-run                 (print the exact az commands, run nothing)
        python -m tuneline.k8s.nodepools                           (run them; needs `az login`)
        python -m tuneline.k8s.nodepools --aso-out k8s/nodepools/aso (rewrite the ASO manifests)
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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

DEFAULT_SPEC = Path("k8s/nodepools.yaml")
ASO_API_VERSION = "containerservice.azure.com/v1api20240901"
ASO_NAMESPACE = "tuneline-infra"


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


class NodePoolSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    cluster: Cluster
    pools: list[Pool]


def load_spec(path: Path = DEFAULT_SPEC) -> NodePoolSpec:
    try:
        return NodePoolSpec.model_validate(yaml.safe_load(Path(path).read_text()))
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ValueError(f"{path}: {problems}") from exc


def _join(args: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in args)


def _target(spec: NodePoolSpec, pool: Pool) -> list[str]:
    return ["--resource-group", spec.cluster.resourceGroup, "--cluster-name", spec.cluster.name,
            "--name", pool.name]


def _labels(pool: Pool) -> list[str]:
    return ["--labels", *(f"{k}={v}" for k, v in sorted(pool.labels.items()))] if pool.labels else []


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
    if pool.taints:
        cmd += ["--node-taints", ",".join(pool.taints)]
    if pool.maxPods:
        cmd += ["--max-pods", str(pool.maxPods)]
    return cmd + _labels(pool)


def update_command(spec: NodePoolSpec, pool: Pool, autoscaler_enabled: bool) -> list[str]:
    flag = "--update-cluster-autoscaler" if autoscaler_enabled else "--enable-cluster-autoscaler"
    # An empty --node-taints clears taints: always pass the declared list so removed taints go away.
    return ["az", "aks", "nodepool", "update", *_target(spec, pool), flag,
            "--min-count", str(pool.autoscale.min), "--max-count", str(pool.autoscale.max),
            "--node-taints", ",".join(pool.taints), *_labels(pool)]


def script(spec: NodePoolSpec) -> str:
    """A bash script doing what a real run does; `--dry-run | bash` is equivalent to running without it."""
    lines = ["#!/usr/bin/env bash", "# Generated by python -m tuneline.k8s.nodepools from k8s/nodepools.yaml",
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
            # No `count`: the cluster autoscaler owns it, and ASO would otherwise reset it on every reconcile.
            "enableAutoScaling": True,
            "minCount": pool.autoscale.min,
            "maxCount": pool.autoscale.max,
        }
        if pool.priority == "Spot":
            body |= {"scaleSetPriority": "Spot", "scaleSetEvictionPolicy": pool.evictionPolicy,
                     "spotMaxPrice": pool.spotMaxPrice}
        if pool.taints:
            body["nodeTaints"] = list(pool.taints)
        if pool.labels:
            body["nodeLabels"] = dict(sorted(pool.labels.items()))
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
    head = "# Generated by `python -m tuneline.k8s.nodepools --aso-out k8s/nodepools/aso` from k8s/nodepools.yaml.\n"
    manifests = head + yaml.safe_dump_all(aso_resources(spec), sort_keys=False)
    kustomization = head + yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["agentpools.yaml"]}, sort_keys=False)
    return {"agentpools.yaml": manifests, "kustomization.yaml": kustomization}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Render or apply the AKS node pools declared in k8s/nodepools.yaml.")
    ap.add_argument("--spec", type=Path, default=DEFAULT_SPEC, help="node-pool spec (default: %(default)s)")
    ap.add_argument("--dry-run", action="store_true", help="print the az commands as a bash script; run nothing")
    ap.add_argument("--aso-out", type=Path, default=None,
                    help="write Azure Service Operator manifests to this folder instead of running az")
    args = ap.parse_args(argv)
    try:
        spec = load_spec(args.spec)
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.aso_out:
        args.aso_out.mkdir(parents=True, exist_ok=True)
        for name, text in aso_files(spec).items():
            (args.aso_out / name).write_text(text)
        print(f"wrote {len(spec.pools)} ManagedClustersAgentPool objects to {args.aso_out}")
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
