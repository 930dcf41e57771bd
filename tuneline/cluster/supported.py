"""The supported-versions table (k8s/supported.yaml) and the checks `make k8s-validate` runs against it.

- A retired Azure VM size named in any scanned YAML file is an error naming the file, the line and the
  replacement; so is a GPU size (Standard_N...) the table does not list, so a new size comes with its source.
- A Kubernetes version (the node-pool spec's `kubernetesVersion`, an ASO pool's `orchestratorVersion`) must be a
  minor AKS supports today; within WARN_DAYS of its end of support it is a warning.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from tuneline.cluster.yamlmodel import load_yaml_model

DEFAULT_TABLE = Path("k8s/supported.yaml")
WARN_DAYS = 60
GPU_SIZE = re.compile(r"\bStandard_N[A-Za-z0-9_]+")


class KubernetesVersion(BaseModel):
    model_config = ConfigDict(extra="forbid")
    minor: str
    aks_ga: str | dt.date | None = None
    end_of_support: dt.date


class KubernetesTable(BaseModel):
    model_config = ConfigDict(extra="forbid")
    source: str
    versions: list[KubernetesVersion]


class VmSize(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str
    gpus: int
    gpu: str
    end_of_support: dt.date | None
    replacement: str | None = None
    source: str


class SupportTable(BaseModel):
    model_config = ConfigDict(extra="forbid")
    checked: dt.date
    kubernetes: KubernetesTable
    vm_sizes: list[VmSize]
    # Kubeflow Pipelines / Trainer / Kubeflow releases: typed and checked by tools.conformance.kfp_backend.
    kubeflow: dict[str, Any] | None = None

    def size(self, name: str) -> VmSize | None:
        return next((s for s in self.vm_sizes if s.name == name), None)

    def version(self, version: str) -> KubernetesVersion | None:
        minor = ".".join(str(version).split(".")[:2])
        return next((v for v in self.kubernetes.versions if v.minor == minor), None)

    def oldest_supported(self, today: dt.date) -> str:
        live = [v for v in self.kubernetes.versions if v.end_of_support >= today]
        if not live:
            raise ValueError("no Kubernetes version in the table is supported today: refresh k8s/supported.yaml")
        return min(live, key=lambda v: tuple(map(int, v.minor.split(".")))).minor


@dataclass(frozen=True)
class Problem:
    where: str
    message: str
    warning: bool = False

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


def load_table(path: Path = DEFAULT_TABLE) -> SupportTable:
    return load_yaml_model(SupportTable, path)


def size_problems(path: Path, table: SupportTable, today: dt.date, shown_as: str | None = None) -> list[Problem]:
    """Every retired or unlisted GPU VM size named in the file, by line."""
    out = []
    for lineno, line in enumerate(Path(path).read_text().splitlines(), start=1):
        for name in GPU_SIZE.findall(line):
            where = f"{shown_as or path}:{lineno}"
            size = table.size(name)
            if size is None:
                out.append(Problem(where, f"GPU VM size {name} is not in {DEFAULT_TABLE}: add it there with its "
                                          "source and end-of-support date"))
            elif size.end_of_support is not None and size.end_of_support <= today:
                out.append(Problem(where, f"VM size {name} was retired on {size.end_of_support} ({size.source}); "
                                          f"use {size.replacement or 'a current size'}"))
            elif size.end_of_support is not None and (size.end_of_support - today).days <= WARN_DAYS:
                out.append(Problem(where, f"VM size {name} retires on {size.end_of_support} ({size.source})",
                                   warning=True))
    return out


def version_problem(version: str, where: str, table: SupportTable, today: dt.date) -> Problem | None:
    entry = table.version(version)
    supported = [v.minor for v in table.kubernetes.versions if v.end_of_support >= today]
    if entry is None:
        return Problem(where, f"Kubernetes {version} is not in {DEFAULT_TABLE} (supported today: "
                              f"{', '.join(supported)}; {table.kubernetes.source})")
    if entry.end_of_support < today:
        return Problem(where, f"Kubernetes {version} left AKS support on {entry.end_of_support} (supported today: "
                              f"{', '.join(supported)}; {table.kubernetes.source})")
    if (entry.end_of_support - today).days <= WARN_DAYS:
        return Problem(where, f"Kubernetes {version} leaves AKS support on {entry.end_of_support}: plan the "
                              "upgrade", warning=True)
    return None
