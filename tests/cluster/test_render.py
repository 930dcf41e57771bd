"""Rendering with kustomize itself: each object keeps its source file, and kustomize's own semantics hold (the
cases a hand-written subset got wrong: keyed list merges, `$patch: replace`, labels on selectors)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tuneline.cluster.render import INSTALL_HINT, KustomizeError, build, render

DEPLOY = {
    "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api", "annotations": {"team": "ml"}},
    "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "api"}},
             "template": {"metadata": {"labels": {"app": "api"}},
                          "spec": {"containers": [{"name": "api", "image": "reg/api:1.0",
                                                   "ports": [{"name": "http", "containerPort": 8080}],
                                                   "volumeMounts": [{"name": "a", "mountPath": "/a"}]}],
                                   "volumes": [{"name": "a", "emptyDir": {}}, {"name": "b", "emptyDir": {}}]}}},
}
PDB = {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "api"},
       "spec": {"minAvailable": 1, "selector": {"matchLabels": {"app": "api"}}}}


def _write(path: Path, data, many: bool = False) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump_all(data) if many else yaml.safe_dump(data))


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    _write(tmp_path / "base" / "app.yaml", [DEPLOY], many=True)
    _write(tmp_path / "base" / "pdb.yaml", PDB)
    _write(tmp_path / "base" / "kustomization.yaml", {"resources": ["app.yaml", "pdb.yaml"], "namespace": "apps"})
    _write(tmp_path / "overlay" / "ports.yaml", {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "api"},
        "spec": {"template": {"spec": {
            "containers": [{"name": "api", "ports": [{"name": "metrics", "containerPort": 9090}]}],
            "volumes": [{"$patch": "replace"}, {"name": "a", "emptyDir": {"medium": "Memory"}}]}}}})
    _write(tmp_path / "overlay" / "kustomization.yaml", {
        "resources": ["../base"],
        "labels": [{"pairs": {"env": "prod"}, "includeSelectors": True}],
        "patches": [{"path": "ports.yaml"}]})
    return tmp_path


def test_objects_keep_their_source_file_and_lose_the_origin_annotation(tree: Path) -> None:
    deploy, pdb = sorted(render(tree / "overlay"), key=lambda r: r.kind)
    assert deploy.source == (tree / "base" / "app.yaml").resolve()
    assert pdb.source == (tree / "base" / "pdb.yaml").resolve()
    assert deploy.obj["metadata"]["annotations"] == {"team": "ml"}
    assert "annotations" not in pdb.obj["metadata"]
    assert "config.kubernetes.io/origin" not in build(tree / "overlay")


def test_kustomize_semantics(tree: Path) -> None:
    deploy, pdb = sorted(render(tree / "overlay"), key=lambda r: r.kind)
    container = deploy.obj["spec"]["template"]["spec"]["containers"][0]
    # ports merge by containerPort (not replaced); `$patch: replace` replaces the whole list and is not an item
    assert sorted(p["containerPort"] for p in container["ports"]) == [8080, 9090]
    assert deploy.obj["spec"]["template"]["spec"]["volumes"] == [{"name": "a", "emptyDir": {"medium": "Memory"}}]
    assert pdb.obj["spec"]["selector"]["matchLabels"] == {"app": "api", "env": "prod"}
    assert deploy.obj["metadata"]["namespace"] == pdb.obj["metadata"]["namespace"] == "apps"


def test_kustomize_error_names_the_folder(tmp_path: Path) -> None:
    _write(tmp_path / "a" / "kustomization.yaml", {"resources": ["missing.yaml"]})
    with pytest.raises(KustomizeError, match=r"/a: (kubectl kustomize|kustomize build) failed: .*missing.yaml"):
        render(tmp_path / "a")
    with pytest.raises(KustomizeError, match="no kustomization.yaml"):
        render(tmp_path)


def test_without_kustomize_or_kubectl_the_error_says_how_to_install(tree: Path, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(KustomizeError) as info:
        render(tree / "overlay")
    assert str(info.value) == INSTALL_HINT
    assert "https://kubernetes.io/docs/tasks/tools/" in INSTALL_HINT
