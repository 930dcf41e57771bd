"""Render a kustomization with kustomize itself (`kustomize build`, or `kubectl kustomize`), keeping each object's
source file.

The folder is built through a throw-away kustomization that lists it as its only resource and turns on
kustomize's own `buildMetadata: [originAnnotations]`: every object comes back with a
`config.kubernetes.io/origin` annotation naming the file that declared it (or the kustomization whose generator
made it). The annotation is read into `Resource.source` and removed, so what is validated is exactly what
`kubectl apply -k DIR` sends. Nothing here re-implements kustomize.

Run as: python -m tuneline.cluster.render k8s/overlays/dev      (prints the rendered YAML stream)
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
ORIGIN = "config.kubernetes.io/origin"
KLOG_PREFIX = re.compile(r'^[EWI]\d{4} [\d:.]+\s+\d+ \S+\] "command failed" err=<?')
INSTALL_HINT = ("neither `kustomize` nor `kubectl` is on PATH: install kubectl "
                "(https://kubernetes.io/docs/tasks/tools/, it bundles kustomize as `kubectl kustomize`) or "
                "kustomize (https://kubectl.docs.kubernetes.io/installation/kustomize/)")


class KustomizeError(ValueError):
    """A kustomization that cannot be rendered; the message names the folder and carries kustomize's own error."""


@dataclass
class Resource:
    obj: dict[str, Any]
    source: Path

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind", "?"))

    @property
    def name(self) -> str:
        return str((self.obj.get("metadata") or {}).get("name", "?"))

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"


def find_kustomization(directory: Path) -> Path | None:
    for name in KUSTOMIZATION_FILES:
        if (directory / name).is_file():
            return directory / name
    return None


def kustomize_command() -> list[str]:
    """The kustomize build command line to use: standalone kustomize when present, else kubectl's."""
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    raise KustomizeError(INSTALL_HINT)


def build(directory: Path) -> str:
    """The YAML stream kustomize renders for `directory`, exactly as `kubectl apply -k` would send it."""
    return _kustomize(directory, origins=False)[0]


def _kustomize(directory: Path, origins: bool, component: bool = False) -> tuple[str, Path]:
    """kustomize's output for `directory` (a Component: applied to nothing), and the folder its origin paths are
    relative to."""
    directory = Path(directory).resolve()
    if find_kustomization(directory) is None:
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    cmd = kustomize_command()
    with tempfile.TemporaryDirectory(prefix="tuneline-kustomize-") as tmp:
        wrapper = Path(tmp).resolve()
        target = directory
        if origins:
            # kustomize refuses absolute resource paths; a relative path from the wrapper reaches any folder.
            (wrapper / "kustomization.yaml").write_text(yaml.safe_dump({
                "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                "components" if component else "resources": [os.path.relpath(directory, wrapper)],
                "buildMetadata": ["originAnnotations"]}))
            target = wrapper
        done = subprocess.run([*cmd, str(target)], capture_output=True, text=True)
    if done.returncode != 0:
        # kubectl wraps kustomize's message in a klog line (`E1201 20:07:39 ... run.go:72] "command failed" err=`)
        lines = [KLOG_PREFIX.sub("", line).strip() for line in done.stderr.splitlines() if "Warning:" not in line]
        message = " ".join(line for line in lines if line)
        raise KustomizeError(f"{directory}: {' '.join(cmd)} failed: {message.strip() or done.returncode}")
    return done.stdout, wrapper if origins else directory


def _source(obj: dict, wrapper_dir: Path, directory: Path) -> Path:
    annotations = (obj.get("metadata") or {}).get("annotations") or {}
    origin = yaml.safe_load(annotations.pop(ORIGIN, "") or "") or {}
    if not annotations:
        obj["metadata"].pop("annotations", None)
    where = origin.get("path") or origin.get("configuredIn")
    if not where:
        return directory / "kustomization.yaml"
    return Path(os.path.normpath(wrapper_dir / where))


def render(directory: Path, component: bool = False) -> list[Resource]:
    """All objects of the kustomization in `directory`, as kustomize renders them, each with its source file.
    A Component (kind: Component) is rendered on its own, applied to an empty kustomization."""
    directory = Path(directory).resolve()
    stream, wrapper_dir = _kustomize(directory, origins=True, component=component)
    out = []
    for doc in yaml.safe_load_all(stream):
        if isinstance(doc, dict):
            out.append(Resource(obj=doc, source=_source(doc, wrapper_dir, directory)))
    return out


def dump(resources: list[Resource]) -> str:
    return yaml.safe_dump_all([r.obj for r in resources], sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Render a kustomization with kustomize (as `kubectl apply -k` would).")
    ap.add_argument("directory", type=Path, help="folder holding kustomization.yaml")
    args = ap.parse_args(argv)
    try:
        sys.stdout.write(build(args.directory))
    except KustomizeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
