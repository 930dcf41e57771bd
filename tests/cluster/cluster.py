"""What tests ask of a rendered overlay the way the API server would answer it: label selectors, namespaces,
which NetworkPolicy lets a packet in. Kubernetes semantics from
https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors and
https://kubernetes.io/docs/concepts/services-networking/network-policies/ (policies add up; a pod no policy
selects for a direction is open in that direction)."""

from __future__ import annotations

from pathlib import Path

from tuneline.cluster.render import render

REPO = Path(__file__).resolve().parents[2]


def overlay(name: str) -> list[dict]:
    return [r.obj for r in render(REPO / "k8s" / "overlays" / name)]


def of(objects: list[dict], kind: str, name: str | None = None, namespace: str | None = None) -> list[dict]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
            and (namespace is None or o["metadata"].get("namespace") == namespace)]


def selects(selector: dict | None, labels: dict[str, str]) -> bool:
    """Whether a LabelSelector matches a label set; an empty selector matches everything."""
    selector = selector or {}
    if any(labels.get(k) != str(v) for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], [str(v) for v in expr.get("values") or []]
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def namespace_labels(name: str) -> dict[str, str]:
    return {"kubernetes.io/metadata.name": name}  # set by the API server on every namespace


def ingress_allowed(objects: list[dict], namespace: str, pod_labels: dict[str, str], port: int,
                    from_namespace: str, from_labels: dict[str, str]) -> bool:
    """Whether NetworkPolicies in `namespace` admit TCP `port` to a pod with `pod_labels` from a pod with
    `from_labels` in `from_namespace`."""
    policies = [p for p in of(objects, "NetworkPolicy", namespace=namespace)
                if "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
                and selects(p["spec"]["podSelector"], pod_labels)]
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get("ingress") or []:
            ports = rule.get("ports")
            if ports and not any(p.get("port") in (port, None) for p in ports):
                continue
            peers = rule.get("from")
            if peers is None:
                return True
            for peer in peers:
                if "ipBlock" in peer:
                    continue
                ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
                ns_ok = selects(ns_sel, namespace_labels(from_namespace)) if ns_sel is not None \
                    else from_namespace == namespace
                if ns_ok and (pod_sel is None or selects(pod_sel, from_labels)):
                    return True
    return False
