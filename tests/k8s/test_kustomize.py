"""The kustomize subset: resources, namespace, commonLabels, images, strategic-merge and JSON 6902 patches."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tuneline.k8s.kustomize import KustomizeError, json6902, render, split_image, strategic_merge

DEPLOY = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api"},
    "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "api"}},
             "template": {"metadata": {"labels": {"app": "api"}},
                          "spec": {"containers": [{"name": "api", "image": "reg/api:1.0",
                                                   "env": [{"name": "A", "value": "1"}]},
                                                  {"name": "sidecar", "image": "reg/side:2"}]}}},
}
SERVICE = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "api"},
           "spec": {"selector": {"app": "api"}, "ports": [{"port": 80}]}}


def _write(path: Path, data, many: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(data) if many else yaml.safe_dump(data))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    _write(tmp_path / "base" / "app.yaml", [DEPLOY, SERVICE], many=True)
    _write(tmp_path / "base" / "kustomization.yaml", {"resources": ["app.yaml"], "namespace": "apps"})
    return tmp_path


def test_overlay_applies_every_transformer(tree: Path) -> None:
    _write(tree / "overlay" / "replicas.yaml", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api"},
        "spec": {"replicas": 3, "template": {"spec": {"containers": [
            {"name": "api", "env": [{"name": "B", "value": "2"}]}]}}}})
    _write(tree / "overlay" / "kustomization.yaml", {
        "resources": ["../base"],
        "commonLabels": {"env": "dev"},
        "images": [{"name": "reg/api", "newName": "acr.io/api", "digest": "sha256:" + "1" * 64}],
        "patches": [
            {"path": "replicas.yaml"},
            {"target": {"kind": "Service", "name": "api"},
             "patch": "- op: replace\n  path: /spec/ports/0/port\n  value: 8080\n"},
        ],
    })
    deploy, service = render(tree / "overlay")
    assert deploy.obj["metadata"] == {"name": "api", "namespace": "apps", "labels": {"env": "dev"}}
    assert deploy.obj["spec"]["replicas"] == 3
    assert deploy.obj["spec"]["selector"]["matchLabels"] == {"app": "api", "env": "dev"}
    assert deploy.obj["spec"]["template"]["metadata"]["labels"] == {"app": "api", "env": "dev"}
    api, sidecar = deploy.obj["spec"]["template"]["spec"]["containers"]
    assert api["image"] == "acr.io/api:1.0@sha256:" + "1" * 64
    assert api["env"] == [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}]
    assert sidecar == {"name": "sidecar", "image": "reg/side:2"}
    assert service.obj["spec"] == {"selector": {"app": "api", "env": "dev"}, "ports": [{"port": 8080}]}
    assert deploy.source == (tree / "base" / "app.yaml").resolve()
    assert deploy.patched_by == [tree / "overlay" / "replicas.yaml"]


def test_unsupported_key_names_the_file(tree: Path) -> None:
    _write(tree / "overlay" / "kustomization.yaml", {"resources": ["../base"], "namePrefix": "x-"})
    with pytest.raises(KustomizeError, match=r"overlay/kustomization.yaml: unsupported kustomization key\(s\) "
                                             r"\['namePrefix'\]"):
        render(tree / "overlay")


def test_patch_without_a_match_is_an_error(tree: Path) -> None:
    _write(tree / "overlay" / "kustomization.yaml", {
        "resources": ["../base"],
        "patches": [{"patch": "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: nope}\nspec: {replicas: 2}\n"}]})
    with pytest.raises(KustomizeError, match="patch matches no object"):
        render(tree / "overlay")


def test_missing_resource_and_duplicate_object(tree: Path) -> None:
    _write(tree / "a" / "kustomization.yaml", {"resources": ["missing.yaml"]})
    with pytest.raises(KustomizeError, match="'missing.yaml' does not exist"):
        render(tree / "a")
    _write(tree / "b" / "kustomization.yaml", {"resources": ["../base/app.yaml", "../base/app.yaml"]})
    with pytest.raises(KustomizeError, match="Deployment/api declared twice"):
        render(tree / "b")


def test_strategic_merge_deletes_and_replaces() -> None:
    base = {"a": {"b": 1, "c": 2}, "items": [{"name": "x", "v": 1}, {"name": "y", "v": 2}], "args": ["1", "2"]}
    patch = {"a": {"c": None}, "items": [{"name": "y", "$patch": "delete"}, {"name": "z", "v": 3}], "args": ["9"]}
    assert strategic_merge(base, patch) == {"a": {"b": 1}, "items": [{"name": "x", "v": 1}, {"name": "z", "v": 3}],
                                            "args": ["9"]}
    assert base["a"] == {"b": 1, "c": 2}  # inputs untouched


def test_json6902_operations() -> None:
    doc = {"spec": {"list": [1, 2], "a/b": {"x": 1}}}
    ops = [{"op": "add", "path": "/spec/list/-", "value": 3},
           {"op": "add", "path": "/spec/list/0", "value": 0},
           {"op": "test", "path": "/spec/a~1b/x", "value": 1},
           {"op": "replace", "path": "/spec/a~1b/x", "value": 5},
           {"op": "remove", "path": "/spec/list/1"}]
    assert json6902(doc, ops, Path("p.yaml")) == {"spec": {"list": [0, 2, 3], "a/b": {"x": 5}}}
    with pytest.raises(KustomizeError, match=r"p.yaml: JSON 6902 path '/spec/nope/x' does not exist"):
        json6902(doc, [{"op": "replace", "path": "/spec/nope/x", "value": 1}], Path("p.yaml"))
    with pytest.raises(KustomizeError, match="unsupported JSON 6902 op 'move'"):
        json6902(doc, [{"op": "move", "path": "/spec/list"}], Path("p.yaml"))


@pytest.mark.parametrize("image,expected", [
    ("nginx", ("nginx", None, None)),
    ("reg:5000/team/app:1.2", ("reg:5000/team/app", "1.2", None)),
    ("reg/app:1@sha256:" + "a" * 64, ("reg/app", "1", "sha256:" + "a" * 64)),
])
def test_split_image(image: str, expected: tuple) -> None:
    assert split_image(image) == expected
