"""Render a kustomization without kubectl: the subset of kustomize that tuneline's own k8s/ tree uses.

Supported kustomization keys: resources (files and directories, recursively), namespace, commonLabels,
commonAnnotations, images (newName / newTag / digest), patches (strategic-merge or JSON 6902, inline or from a
file, with an optional target), patchesStrategicMerge and patchesJson6902. Anything else is an error naming the
file, so a kustomization never renders differently here than it would with `kubectl kustomize`.
Every rendered object remembers the file that declared it, so validation errors can name it.

Run as: python -m tuneline.k8s.kustomize k8s/overlays/dev      (prints the rendered YAML stream)
"""

from __future__ import annotations

import argparse
import copy
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
SUPPORTED_KEYS = {
    "apiVersion", "kind", "resources", "namespace", "commonLabels", "commonAnnotations", "images",
    "patches", "patchesStrategicMerge", "patchesJson6902",
}
CLUSTER_SCOPED = {
    "Namespace", "PriorityClass", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
    "StorageClass", "PersistentVolume", "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration",
    "RuntimeClass", "IngressClass", "CSIDriver",
}
POD_TEMPLATE_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"}
SELECTOR_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet"}


class KustomizeError(ValueError):
    """A kustomization that cannot be rendered; the message names the file and the key."""


@dataclass
class Resource:
    obj: dict[str, Any]
    source: Path
    patched_by: list[Path] = field(default_factory=list)

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


def load_manifests(path: Path) -> list[Resource]:
    try:
        docs = list(yaml.safe_load_all(path.read_text()))
    except yaml.YAMLError as exc:
        raise KustomizeError(f"{path}: not valid YAML: {exc}") from exc
    out = []
    for i, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise KustomizeError(f"{path}: document {i + 1} is not a Kubernetes object (no apiVersion/kind)")
        if not (doc.get("metadata") or {}).get("name"):
            raise KustomizeError(f"{path}: document {i + 1} ({doc['kind']}) has no metadata.name")
        out.append(Resource(obj=doc, source=path))
    return out


def render(directory: Path) -> list[Resource]:
    """All objects of the kustomization in `directory`, fully transformed."""
    directory = Path(directory)
    kfile = find_kustomization(directory)
    if kfile is None:
        raise KustomizeError(f"{directory}: no kustomization.yaml")
    spec = yaml.safe_load(kfile.read_text()) or {}
    unknown = set(spec) - SUPPORTED_KEYS
    if unknown:
        raise KustomizeError(f"{kfile}: unsupported kustomization key(s) {sorted(unknown)} "
                             f"(supported: {sorted(SUPPORTED_KEYS - {'apiVersion', 'kind'})})")
    resources: list[Resource] = []
    for entry in spec.get("resources") or []:
        target = (directory / entry).resolve()
        if target.is_dir():
            resources += render(target)
        elif target.is_file():
            resources += load_manifests(target)
        else:
            raise KustomizeError(f"{kfile}: resources entry {entry!r} does not exist")
    _check_unique(resources, kfile)
    for patch in _collect_patches(spec, directory, kfile):
        patch.apply(resources)
    if spec.get("namespace"):
        _set_namespace(resources, spec["namespace"])
    if spec.get("commonLabels"):
        _add_labels(resources, spec["commonLabels"])
    if spec.get("commonAnnotations"):
        for r in resources:
            r.obj.setdefault("metadata", {}).setdefault("annotations", {}).update(spec["commonAnnotations"])
    for image in spec.get("images") or []:
        _set_image(resources, image, kfile)
    return resources


def _check_unique(resources: list[Resource], kfile: Path) -> None:
    seen: dict[tuple, Path] = {}
    for r in resources:
        key = (r.obj["apiVersion"].split("/")[0], r.kind, r.obj["metadata"].get("namespace"), r.name)
        if key in seen:
            raise KustomizeError(f"{kfile}: {r.ref} declared twice ({seen[key]} and {r.source})")
        seen[key] = r.source


# ---------------------------------------------------------------- patches

@dataclass
class Patch:
    source: Path
    body: Any                     # dict: strategic merge; list: JSON 6902 operations
    target: dict[str, Any] | None

    def matches(self, r: Resource) -> bool:
        t = self.target
        if t is None:  # a strategic-merge patch names its own target
            meta = self.body.get("metadata") or {}
            return r.kind == self.body.get("kind") and r.name == meta.get("name")
        if "kind" in t and t["kind"] != r.kind:
            return False
        if "name" in t and not re.fullmatch(t["name"], r.name):
            return False
        if "namespace" in t and t["namespace"] != r.obj["metadata"].get("namespace"):
            return False
        if "group" in t:
            api = r.obj["apiVersion"]
            group = api.split("/")[0] if "/" in api else ""
            if t["group"] != group:
                return False
        if "labelSelector" in t:
            labels = r.obj["metadata"].get("labels") or {}
            for term in str(t["labelSelector"]).split(","):
                k, _, v = term.partition("=")
                if labels.get(k.strip()) != v.strip():
                    return False
        return True

    def apply(self, resources: list[Resource]) -> None:
        hits = [r for r in resources if self.matches(r)]
        if not hits:
            raise KustomizeError(f"{self.source}: patch matches no object (target {self.target or _ref(self.body)})")
        for r in hits:
            if isinstance(self.body, list):
                r.obj = json6902(r.obj, self.body, self.source)
            else:
                body = {k: v for k, v in self.body.items() if k not in ("apiVersion", "kind")}
                body["metadata"] = {k: v for k, v in (body.get("metadata") or {}).items() if k != "name"}
                r.obj = strategic_merge(r.obj, body)
            r.patched_by.append(self.source)


def _ref(body: Any) -> str:
    if isinstance(body, dict):
        return f"{body.get('kind')}/{(body.get('metadata') or {}).get('name')}"
    return "?"


def _load_patch_body(entry: dict | str, directory: Path, kfile: Path) -> tuple[Any, Path]:
    if isinstance(entry, str):  # patchesStrategicMerge item: a path or an inline YAML document
        path = directory / entry
        if "\n" not in entry and path.is_file():
            return yaml.safe_load(path.read_text()), path
        return yaml.safe_load(entry), kfile
    if "path" in entry:
        path = directory / entry["path"]
        if not path.is_file():
            raise KustomizeError(f"{kfile}: patch file {entry['path']!r} does not exist")
        return yaml.safe_load(path.read_text()), path
    if "patch" in entry:
        return yaml.safe_load(entry["patch"]), kfile
    raise KustomizeError(f"{kfile}: a patch needs `path` or `patch`")


def _collect_patches(spec: dict, directory: Path, kfile: Path) -> list[Patch]:
    patches = []
    for entry in spec.get("patchesStrategicMerge") or []:
        body, src = _load_patch_body(entry, directory, kfile)
        patches.append(Patch(src, body, None))
    for entry in spec.get("patchesJson6902") or []:
        body, src = _load_patch_body(entry, directory, kfile)
        if "target" not in entry:
            raise KustomizeError(f"{kfile}: patchesJson6902 entry needs a target")
        patches.append(Patch(src, body, entry["target"]))
    for entry in spec.get("patches") or []:
        body, src = _load_patch_body(entry, directory, kfile)
        if isinstance(body, list) and "target" not in entry:
            raise KustomizeError(f"{kfile}: a JSON 6902 patch needs a target")
        patches.append(Patch(src, body, entry.get("target")))
    for p in patches:
        if not isinstance(p.body, (dict, list)):
            raise KustomizeError(f"{p.source}: a patch must be a mapping (strategic merge) or a list (JSON 6902)")
    return patches


def strategic_merge(base: Any, patch: Any) -> Any:
    """Strategic-merge subset: maps merge recursively, null deletes a key, lists of named maps merge by name
    (containers, env, volumes, volumeMounts, ports ...), `$patch: delete` removes a named item, other lists
    are replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = copy.deepcopy(base)
        for key, value in patch.items():
            if value is None:
                out.pop(key, None)
            elif key in out:
                out[key] = strategic_merge(out[key], value)
            else:
                out[key] = copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(patch, list) and _named(base) and _named(patch):
        out = copy.deepcopy(base)
        index = {item["name"]: i for i, item in enumerate(out)}
        for item in patch:
            if item.get("$patch") == "delete":
                out = [o for o in out if o["name"] != item["name"]]
                index = {o["name"]: i for i, o in enumerate(out)}
            elif item["name"] in index:
                out[index[item["name"]]] = strategic_merge(out[index[item["name"]]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def _named(items: list) -> bool:
    return bool(items) and all(isinstance(i, dict) and "name" in i for i in items)


def _pointer(path: str, source: Path) -> list[str]:
    if not path.startswith("/"):
        raise KustomizeError(f"{source}: JSON pointer {path!r} must start with '/'")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _walk(doc: Any, parts: list[str], source: Path, path: str) -> Any:
    for part in parts:
        try:
            doc = doc[int(part)] if isinstance(doc, list) else doc[part]
        except (KeyError, IndexError, ValueError, TypeError) as exc:
            raise KustomizeError(f"{source}: JSON 6902 path {path!r} does not exist") from exc
    return doc


def json6902(obj: dict, ops: list[dict], source: Path) -> dict:
    """RFC 6902 add / remove / replace / test on a copy of `obj`."""
    doc = copy.deepcopy(obj)
    for op in ops:
        kind, path = op.get("op"), op.get("path", "")
        parts = _pointer(path, source)
        parent = _walk(doc, parts[:-1], source, path)
        last = parts[-1]
        if kind == "test":
            if _walk(doc, parts, source, path) != op.get("value"):
                raise KustomizeError(f"{source}: JSON 6902 test failed at {path!r}")
        elif kind == "add":
            if isinstance(parent, list):
                parent.insert(len(parent) if last == "-" else int(last), copy.deepcopy(op["value"]))
            else:
                parent[last] = copy.deepcopy(op["value"])
        elif kind in ("remove", "replace"):
            _walk(doc, parts, source, path)  # must exist
            if kind == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            else:
                parent[int(last) if isinstance(parent, list) else last] = copy.deepcopy(op["value"])
        else:
            raise KustomizeError(f"{source}: unsupported JSON 6902 op {kind!r} (add, remove, replace, test)")
    return doc


# ---------------------------------------------------------------- transformers

def _set_namespace(resources: list[Resource], namespace: str) -> None:
    service_accounts = {r.name for r in resources if r.kind == "ServiceAccount"}
    for r in resources:
        if r.kind not in CLUSTER_SCOPED:
            r.obj["metadata"]["namespace"] = namespace
        if r.kind in ("RoleBinding", "ClusterRoleBinding"):
            for subject in r.obj.get("subjects") or []:
                if subject.get("kind") == "ServiceAccount" and subject.get("name") in service_accounts:
                    subject["namespace"] = namespace


def _label_paths(r: Resource) -> list[tuple[list[str], bool]]:
    """(path to a label map, create it if missing) for commonLabels, following kustomize's defaults."""
    paths: list[tuple[list[str], bool]] = [(["metadata", "labels"], True)]
    if r.kind in SELECTOR_KINDS:
        paths += [(["spec", "selector", "matchLabels"], True), (["spec", "template", "metadata", "labels"], True)]
    elif r.kind == "Job":
        paths += [(["spec", "template", "metadata", "labels"], True)]
    elif r.kind == "CronJob":
        paths += [(["spec", "jobTemplate", "metadata", "labels"], True),
                  (["spec", "jobTemplate", "spec", "template", "metadata", "labels"], True)]
    elif r.kind == "Service":
        paths += [(["spec", "selector"], True)]
    elif r.kind == "NetworkPolicy":
        paths += [(["spec", "podSelector", "matchLabels"], False)]
    return paths


def _add_labels(resources: list[Resource], labels: dict[str, str]) -> None:
    for r in resources:
        for path, create in _label_paths(r):
            node = r.obj
            for part in path[:-1]:
                if part not in node:
                    if not create:
                        break
                    node[part] = {}
                node = node[part]
            else:
                if path[-1] in node or create:
                    node.setdefault(path[-1], {}).update(labels)
        if r.kind == "NetworkPolicy":
            # As kustomize does: peers' podSelectors too, where they already select by label. A peer that also
            # has a namespaceSelector then needs the label on the other namespace's pods: avoid such peers.
            for rule in (r.obj.get("spec", {}).get("ingress") or []) + (r.obj.get("spec", {}).get("egress") or []):
                for peer in (rule.get("from") or []) + (rule.get("to") or []):
                    sel = peer.get("podSelector") or {}
                    if "matchLabels" in sel:
                        sel["matchLabels"].update(labels)


def pod_spec(obj: dict) -> dict | None:
    """The pod spec inside a workload object, or None for kinds that hold none."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return spec
    if kind in POD_TEMPLATE_KINDS:
        return (spec.get("template") or {}).get("spec")
    if kind == "CronJob":
        return (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec")
    return None


def pod_spec_path(kind: str) -> str:
    return {"Pod": "spec", "CronJob": "spec.jobTemplate.spec.template.spec"}.get(kind, "spec.template.spec")


def split_image(image: str) -> tuple[str, str | None, str | None]:
    """name, tag, digest of an image reference (a registry port is not a tag)."""
    name, _, digest = image.partition("@")
    tag = None
    if ":" in name.rsplit("/", 1)[-1]:
        name, tag = name.rsplit(":", 1)
    return name, tag, digest or None


def _set_image(resources: list[Resource], entry: dict, kfile: Path) -> None:
    if "name" not in entry:
        raise KustomizeError(f"{kfile}: images entry without `name`")
    for r in resources:
        spec = pod_spec(r.obj)
        if not spec:
            continue
        for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
            name, tag, digest = split_image(str(container.get("image", "")))
            if name != entry["name"]:
                continue
            name = entry.get("newName", name)
            tag = entry.get("newTag", tag)
            digest = entry.get("digest", digest)
            container["image"] = name + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def dump(resources: list[Resource]) -> str:
    return yaml.safe_dump_all([r.obj for r in resources], sort_keys=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Render a kustomization (tuneline's kustomize subset).")
    ap.add_argument("directory", type=Path, help="folder holding kustomization.yaml")
    args = ap.parse_args(argv)
    try:
        sys.stdout.write(dump(render(args.directory)))
    except KustomizeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
