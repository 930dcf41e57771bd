"""What tests ask of a rendered overlay: its objects by kind, name and namespace (label selectors and
NetworkPolicy answers: tuneline.cluster.netpol, which `tuneline cluster check` uses too)."""

from __future__ import annotations

from pathlib import Path

from tuneline.cluster.render import render

REPO = Path(__file__).resolve().parents[2]


def overlay(name: str) -> list[dict]:
    return [r.obj for r in render(REPO / "k8s" / "overlays" / name)]


def of(objects: list[dict], kind: str, name: str | None = None, namespace: str | None = None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
            and (namespace is None or o["metadata"].get("namespace") == namespace)]
