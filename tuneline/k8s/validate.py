"""Render every kustomization under k8s/ with kustomize itself and validate each object: schema, then policy.

Core kinds are checked against the Kubernetes OpenAPI schemas shipped by `kubernetes-validate` in strict mode
(unknown fields are errors); custom resources against tuneline.k8s.schemas; every object against
tuneline.k8s.policy. Each error names the file, the object (Kind/name) and the field. No cluster is needed.

Run as: python -m tuneline.k8s.validate [DIR ...]     (default: every kustomization under k8s/)
"""

from __future__ import annotations

import argparse
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

from tuneline.k8s import policy
from tuneline.k8s.render import KustomizeError, Resource, find_kustomization, render
from tuneline.k8s.schemas import CRD_SCHEMAS

# The oldest AKS minor version we support; objects must validate there.
KUBERNETES_VERSION = "1.31.0"


@dataclass(frozen=True)
class Report:
    kustomizations: int
    objects: int
    errors: list[str]


@functools.cache
def _schema_dir() -> Path:
    root = importlib_resources.files("kubernetes_validate") / "kubernetes-json-schema"
    return Path(str(root)) / f"v{KUBERNETES_VERSION}-local-strict"


@functools.cache
def _definitions_registry() -> referencing.Registry:
    defs = json.loads((_schema_dir() / "_definitions.json").read_text())
    return referencing.Resource.from_contents(defs, default_specification=referencing.jsonschema.DRAFT202012) \
        @ referencing.Registry()


@functools.cache
def _core_validator(api_version: str, kind: str) -> jsonschema.protocols.Validator | None:
    # Same file naming as kubernetes-validate: rbac.authorization.k8s.io/v1 -> rbac-v1
    api = re.sub(r"^([^./]*)(?:\.[^/]*)?/", r"\1-", api_version)
    path = _schema_dir() / f"{kind.lower()}-{api}.json"
    if not path.is_file():
        return None
    schema = json.loads(path.read_text())
    return jsonschema.Draft202012Validator(schema, registry=_definitions_registry())


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


def schema_errors(r: Resource) -> list[str]:
    api, kind = str(r.obj.get("apiVersion")), r.kind
    crd = CRD_SCHEMAS.get((api, kind))
    if crd is not None:
        validator = jsonschema.Draft202012Validator(crd)
    else:
        validator = _core_validator(api, kind)
        if validator is None:
            return [f"{r.source}: {r.ref}: apiVersion/kind: no schema for {api} {kind} "
                    f"(Kubernetes {KUBERNETES_VERSION} or tuneline.k8s.schemas)"]
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


def validate_dirs(dirs: list[Path], repo_root: Path) -> tuple[int, list[str], set[Path]]:
    errors: list[str] = []
    sources: set[Path] = set()
    count = 0
    for d in dirs:
        try:
            resources = render(d)
        except KustomizeError as exc:
            errors.append(str(exc))
            continue
        for r in resources:
            sources.add(r.source.resolve())
            r.source = Path(policy.relative(r.source, repo_root))
            count += 1
            errors += schema_errors(r)
        errors += [str(f) for f in policy.check(resources)]
    # The same object is checked once per kustomization that includes it; report each error once.
    return count, list(dict.fromkeys(errors)), sources


def run(targets: list[Path], repo_root: Path, check_orphans: bool) -> Report:
    dirs: list[Path] = []
    for t in targets:
        dirs += [t] if find_kustomization(t) and not check_orphans else kustomization_dirs(t)
    count, errors, sources = validate_dirs(dirs, repo_root)
    if check_orphans:
        for t in targets:
            not_objects = {p.resolve() for p in t.rglob("*.y*ml") if _is_not_object(p)} | patch_files(t)
            errors += orphan_manifests(t, sources, not_objects)
    return Report(kustomizations=len(dirs), objects=count, errors=errors)


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
    args = ap.parse_args(argv)
    start = time.perf_counter()
    check_orphans = not args.no_orphans and all(find_kustomization(t) is None for t in args.targets)
    report = run(args.targets, Path.cwd(), check_orphans)
    for err in report.errors:
        print(f"error: {err}", file=sys.stderr)
    status = "FAILED" if report.errors else "ok"
    print(f"k8s-validate {status}: {report.kustomizations} kustomizations, {report.objects} objects rendered, "
          f"{len(report.errors)} errors ({time.perf_counter() - start:.1f} s)")
    return 1 if report.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
