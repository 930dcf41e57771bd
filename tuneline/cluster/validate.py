"""Render every kustomization under k8s/ with kustomize itself and validate each object: schema, then policy,
then the supported-versions table.

Core kinds are checked against the Kubernetes OpenAPI schemas shipped by `kubernetes-validate` in strict mode
(unknown fields are errors), at the oldest Kubernetes minor AKS supports today (k8s/supported.yaml); custom
resources against tuneline.cluster.schemas; every object against tuneline.cluster.policy. Retired or unlisted GPU VM
sizes in any scanned file and out-of-support Kubernetes versions are errors (tuneline.cluster.supported). Each error
names the file, the object (Kind/name) or line, and the field. No cluster is needed.

Run as: python -m tuneline.cluster.validate [DIR ...] [--scan PATH ...]   (default: every kustomization under k8s/)
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import re
import sys
import time
from dataclasses import dataclass
from importlib import resources as importlib_resources
from pathlib import Path

import jsonschema
import referencing
import yaml

from tuneline.cluster import policy, supported
from tuneline.cluster.render import KustomizeError, Resource, find_kustomization, render
from tuneline.cluster.schemas import CRD_SCHEMAS


@dataclass(frozen=True)
class Report:
    kustomizations: int
    objects: int
    errors: list[str]
    warnings: list[str] = ()


@functools.cache
def _schema_dir(version: str) -> Path:
    root = importlib_resources.files("kubernetes_validate") / "kubernetes-json-schema"
    path = Path(str(root)) / f"v{version}-local-strict"
    if not path.is_dir():
        raise ValueError(f"kubernetes-validate has no schemas for Kubernetes {version}: upgrade it")
    return path


@functools.cache
def _definitions_registry(version: str) -> referencing.Registry:
    defs = json.loads((_schema_dir(version) / "_definitions.json").read_text())
    return referencing.Resource.from_contents(defs, default_specification=referencing.jsonschema.DRAFT202012) \
        @ referencing.Registry()


@functools.cache
def _core_validator(api_version: str, kind: str, version: str) -> jsonschema.protocols.Validator | None:
    # Same file naming as kubernetes-validate: rbac.authorization.k8s.io/v1 -> rbac-v1
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    path = _schema_dir(version) / f"{kind.lower()}-{api}.json"
    if not path.is_file():
        return None
    schema = json.loads(path.read_text())
    return jsonschema.Draft202012Validator(schema, registry=_definitions_registry(version))


def _field_path(error: jsonschema.ValidationError) -> str:
    out = ""
    for part in error.absolute_path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    if error.validator == "additionalProperties":
        extra = re.findall(r"'([^']+)' (?:was|were) unexpected", error.message)
        names = re.findall(r"'([^']+)'", error.message.split("(")[-1]) if "unexpected" in error.message else []
        name = extra[0] if extra else (names[0] if names else "")
        if name:
            out = f"{out}.{name}" if out else name
    return out or "<root>"


def _describe(error: jsonschema.ValidationError) -> str:
    if error.validator == "additionalProperties":
        return "unknown field (misspelt?): " + error.message
    return error.message if len(error.message) < 300 else error.message[:300] + "..."


def schema_errors(r: Resource, version: str) -> list[str]:
    """Schema errors of one object, against Kubernetes `version` (x.y.z) for core kinds."""
    api, kind = str(r.obj.get("apiVersion")), r.kind
    crd = CRD_SCHEMAS.get((api, kind))
    if crd is not None:
        validator = jsonschema.Draft202012Validator(crd)
    else:
        validator = _core_validator(api, kind, version)
        if validator is None:
            return [f"{r.source}: {r.ref}: apiVersion/kind: no schema for {api} {kind} "
                    f"(Kubernetes {version} or tuneline.cluster.schemas)"]
    # additionalProperties errors first: a misspelt field is the likeliest cause of the others.
    errors = sorted(validator.iter_errors(r.obj), key=lambda e: (e.validator != "additionalProperties",
                                                                  list(map(str, e.absolute_path))))
    return [f"{r.source}: {r.ref}: {_field_path(e)}: {_describe(e)}" for e in errors]


def _kustomizations(root: Path) -> dict[Path, dict]:
    return {p.parent.resolve(): yaml.safe_load(p.read_text()) or {} for p in root.rglob("kustomization.yaml")}


def kustomization_dirs(root: Path) -> list[Path]:
    """The top-level kustomizations under root: those no other kustomization includes (as a resource or a
    component). A folder included by another one is validated as part of it, with its parent's transformers
    (images, namespace) applied; a Component cannot be built alone."""
    found = _kustomizations(root)
    included: set[Path] = set()
    for d, spec in found.items():
        included |= {(d / entry).resolve() for entry in (spec.get("resources") or []) + (spec.get("components") or [])}
    return sorted(d for d, spec in found.items() if d not in included and spec.get("kind") != "Component")


def component_dirs(root: Path) -> list[Path]:
    """Components that add objects: validated on their own too, so one no overlay uses yet is still checked."""
    return sorted(d for d, spec in _kustomizations(root).items()
                  if spec.get("kind") == "Component" and spec.get("resources"))


def patch_files(root: Path) -> set[Path]:
    """Files the kustomizations under root use as patches: they are rendered into other objects, not on their own."""
    out: set[Path] = set()
    for d, spec in _kustomizations(root).items():
        for entry in (spec.get("patches") or []) + (spec.get("patchesStrategicMerge") or []):
            path = entry.get("path") if isinstance(entry, dict) else entry
            if isinstance(path, str) and "\n" not in path:
                out.add((d / path).resolve())
    return out


def orphan_manifests(root: Path, rendered_sources: set[Path], exclude: set[Path]) -> list[str]:
    """YAML files under root that no kustomization renders: they would never be validated or applied."""
    out = []
    for path in sorted(root.rglob("*.y*ml")):
        if path.name.startswith("kustomization") or path.resolve() in exclude:
            continue
        if path.resolve() not in rendered_sources:
            out.append(f"{path}: not referenced by any kustomization (add it to one, or remove it)")
    return out


def _versions_named(r: Resource) -> list[tuple[str, str]]:
    """(field, Kubernetes version) pairs an object pins: ASO agent pools and managed clusters."""
    spec = r.obj.get("spec") or {}
    return [(f"spec.{key}", str(spec[key])) for key in ("orchestratorVersion", "kubernetesVersion") if key in spec]


DEVICE_PLUGIN_IMAGE = "k8s-device-plugin"


def gpu_stack_problems(resources: list[Resource], directory: Path, gpu_stack: str | None) -> list[supported.Problem]:
    """At most one NVIDIA device plugin per rendering, and none of ours when the GPU Operator brings its own."""
    plugins = [r for r in resources if r.kind == "DaemonSet" and any(
        DEVICE_PLUGIN_IMAGE in str(c.get("image", "")) for c in (policy.pod_spec(r.obj) or {}).get("containers", []))]
    out = []
    if len(plugins) > 1:
        out.append(supported.Problem(str(directory), "two NVIDIA device plugins would register nvidia.com/gpu: "
                                     + ", ".join(f"{r.ref} ({r.source})" for r in plugins)))
    if gpu_stack == "gpu-operator":
        out += [supported.Problem(f"{r.source}: {r.ref}", "k8s/nodepools.yaml sets gpuStack gpu-operator, whose "
                                  "device plugin runs on every GPU node: add components/gpu-operator to the overlay")
                for r in plugins]
    return out


def _gpu_stack(repo_root: Path) -> str | None:
    spec = repo_root / "k8s" / "nodepools.yaml"
    try:
        return str(((yaml.safe_load(spec.read_text()) or {}).get("cluster") or {}).get("gpuStack") or "") or None
    except (OSError, yaml.YAMLError):
        return None


def validate_dirs(dirs: list[Path], repo_root: Path, table: supported.SupportTable, today: dt.date,
                  components: frozenset[Path] = frozenset()) -> tuple[int, list[supported.Problem], set[Path]]:
    problems: list[supported.Problem] = []
    sources: set[Path] = set()
    count = 0
    version = table.oldest_supported(today) + ".0"
    for d in dirs:
        try:
            resources = render(d, component=d in components)
        except KustomizeError as exc:
            problems.append(supported.Problem(str(d), str(exc)))
            continue
        for r in resources:
            sources.add(r.source.resolve())
            r.source = Path(policy.relative(r.source, repo_root))
            count += 1
            problems += [_problem(e) for e in schema_errors(r, version)]
            for field, named in _versions_named(r):
                found = supported.version_problem(named, f"{r.source}: {r.ref}: {field}", table, today)
                problems += [found] if found else []
        problems += [_problem(str(f)) for f in policy.check(resources)]
        problems += gpu_stack_problems(resources, Path(policy.relative(d, repo_root)), _gpu_stack(repo_root))
    return count, problems, sources


def _problem(text: str) -> supported.Problem:
    where, _, message = text.partition(": ")
    return supported.Problem(where, message)


def _spec_versions(path: Path, shown_as: str, table: supported.SupportTable,
                   today: dt.date) -> list[supported.Problem]:
    """The Kubernetes version of a node-pool spec (a YAML file with cluster.kubernetesVersion)."""
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return []
    version = ((doc or {}).get("cluster") or {}).get("kubernetesVersion") if isinstance(doc, dict) else None
    if version is None:
        return []
    found = supported.version_problem(str(version), f"{shown_as}: cluster.kubernetesVersion", table, today)
    return [found] if found else []


def scanned_files(paths: list[Path], table_path: Path) -> list[Path]:
    out = []
    for p in paths:
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        out += [f for f in files if f.is_file() and f.suffix in (".yaml", ".yml", ".md", ".json")
                and f.resolve() != table_path.resolve()]
    return out


def run(targets: list[Path], repo_root: Path, check_orphans: bool, scan: list[Path] | None = None,
        table_path: Path | None = None, today: dt.date | None = None) -> Report:
    """Validate the kustomizations in or under `targets`; also scan `targets` and `scan` for VM sizes."""
    today = today or dt.date.today()
    table_path = table_path or repo_root / supported.DEFAULT_TABLE
    try:
        table = supported.load_table(table_path)
    except (OSError, ValueError) as exc:
        return Report(kustomizations=0, objects=0, errors=[f"{table_path}: cannot read the support table: {exc}"])
    dirs: list[Path] = []
    components: list[Path] = []
    for t in targets:
        if find_kustomization(t) and not check_orphans:
            dirs.append(t)
        else:
            dirs += kustomization_dirs(t)
            components += component_dirs(t)
    count, problems, sources = validate_dirs(dirs + components, repo_root, table, today, frozenset(components))
    for f in scanned_files(list(targets) + list(scan or []), table_path):
        shown = policy.relative(f, repo_root)
        problems += supported.size_problems(f, table, today, shown_as=shown)
        if f.suffix in (".yaml", ".yml"):
            problems += _spec_versions(f, shown, table, today)
    errors = [str(p) for p in problems if not p.warning]
    if check_orphans:
        for t in targets:
            not_objects = {p.resolve() for p in t.rglob("*.y*ml") if _is_not_object(p)} | patch_files(t)
            errors += orphan_manifests(t, sources, not_objects)
    # The same object is checked once per kustomization that includes it; report each finding once.
    return Report(kustomizations=len(dirs) + len(components), objects=count, errors=list(dict.fromkeys(errors)),
                  warnings=list(dict.fromkeys(str(p) for p in problems if p.warning)))


def _is_not_object(path: Path) -> bool:
    """Non-Kubernetes YAML (the node-pool spec) is not rendered; patches are found through the kustomizations."""
    try:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except yaml.YAMLError:
        return False
    return any(not isinstance(d, dict) or "apiVersion" not in d or "kind" not in d for d in docs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Validate tuneline's Kubernetes manifests offline.")
    ap.add_argument("targets", nargs="*", type=Path, default=[Path("k8s")],
                    help="kustomization folders, or trees to search for them (default: k8s)")
    ap.add_argument("--no-orphans", action="store_true",
                    help="do not report YAML files that no kustomization renders")
    ap.add_argument("--scan", type=Path, action="append", default=[],
                    help="also scan this file or tree for retired or unlisted VM sizes and Kubernetes versions")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    check_orphans = not args.no_orphans and all(find_kustomization(t) is None for t in args.targets)
    report = run(args.targets, Path.cwd(), check_orphans, scan=args.scan)
    for warn in report.warnings:
        print(f"warning: {warn}", file=sys.stderr)
    for err in report.errors:
        print(f"error: {err}", file=sys.stderr)
    status = "FAILED" if report.errors else "ok"
    print(f"k8s-validate {status}: {report.kustomizations} kustomizations, {report.objects} objects rendered, "
          f"{len(report.errors)} errors ({time.perf_counter() - start:.1f} s)")
    return 1 if report.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
