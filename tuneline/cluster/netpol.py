"""Whether the NetworkPolicies a kustomization renders let one pod open a TCP connection to another.

Kubernetes semantics (https://kubernetes.io/docs/concepts/services-networking/network-policies/): policies add up;
a pod that no policy of its namespace selects for a direction is open in that direction; a connection needs the
source's egress and the destination's ingress both to allow it. Label selectors as in
https://kubernetes.io/docs/concepts/overview/working-with-objects/labels/#label-selectors. A namespace's labels
are taken to be the one the API server sets on every namespace (`kubernetes.io/metadata.name`): the peers this
project writes select namespaces by it alone. `ipBlock` peers match no pod here: pod IPs are not known offline
(and the policy API leaves pod-to-pod traffic through an ipBlock implementation-defined).
Hand-written because no Python library evaluates NetworkPolicies offline; the CNI enforces them on the cluster.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


def selects(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
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


def _policies(objects: Iterable[Mapping[str, Any]], namespace: str, labels: Mapping[str, str],
              direction: str) -> list[Mapping[str, Any]]:
    return [p for p in objects if p.get("kind") == "NetworkPolicy"
            and (p.get("metadata") or {}).get("namespace") == namespace
            and direction in p["spec"].get("policyTypes", ["Ingress"])
            and selects(p["spec"].get("podSelector"), labels)]


def _peer_matches(peer: Mapping[str, Any], policy_namespace: str, namespace: str, labels: Mapping[str, str]) -> bool:
    if "ipBlock" in peer:
        return False
    ns_sel, pod_sel = peer.get("namespaceSelector"), peer.get("podSelector")
    ns_ok = selects(ns_sel, namespace_labels(namespace)) if ns_sel is not None else namespace == policy_namespace
    return ns_ok and (pod_sel is None or selects(pod_sel, labels))


def _rules_allow(policies: list[Mapping[str, Any]], rules_key: str, peers_key: str, port: int,
                 peer_namespace: str, peer_labels: Mapping[str, str]) -> bool:
    if not policies:
        return True
    for policy in policies:
        for rule in policy["spec"].get(rules_key) or []:
            ports = rule.get("ports")
            if ports and not any(p.get("port") in (port, None) for p in ports):
                continue
            peers = rule.get(peers_key)
            if peers is None or any(_peer_matches(peer, policy["metadata"]["namespace"], peer_namespace, peer_labels)
                                    for peer in peers):
                return True
    return False


def ingress_allowed(objects: Iterable[Mapping[str, Any]], namespace: str, pod_labels: Mapping[str, str], port: int,
                    from_namespace: str, from_labels: Mapping[str, str]) -> bool:
    """Whether the policies of `namespace` admit TCP `port` to a pod with `pod_labels` from a pod with
    `from_labels` in `from_namespace`."""
    objects = list(objects)
    return _rules_allow(_policies(objects, namespace, pod_labels, "Ingress"), "ingress", "from", port,
                        from_namespace, from_labels)


def egress_allowed(objects: Iterable[Mapping[str, Any]], namespace: str, pod_labels: Mapping[str, str], port: int,
                   to_namespace: str, to_labels: Mapping[str, str]) -> bool:
    """Whether the policies of `namespace` let a pod with `pod_labels` open TCP `port` to a pod with `to_labels`
    in `to_namespace`."""
    objects = list(objects)
    return _rules_allow(_policies(objects, namespace, pod_labels, "Egress"), "egress", "to", port,
                        to_namespace, to_labels)


def closed_directions(objects: Iterable[Mapping[str, Any]], source: tuple[str, Mapping[str, str]],
                      target: tuple[str, Mapping[str, str]], port: int) -> list[str]:
    """For each direction that keeps `source` (namespace, labels) from TCP `port` of `target`: which policies
    select that end and admit nothing of it ("ingress in tuneline: default-deny-all, mlflow-ingress"); [] when the
    connection is allowed."""
    objects = list(objects)
    (src_ns, src_labels), (dst_ns, dst_labels) = source, target
    closed = []
    if not egress_allowed(objects, src_ns, src_labels, port, dst_ns, dst_labels):
        names = [p["metadata"]["name"] for p in _policies(objects, src_ns, src_labels, "Egress")]
        closed.append(f"egress in {src_ns}: {', '.join(sorted(names))}")
    if not ingress_allowed(objects, dst_ns, dst_labels, port, src_ns, src_labels):
        names = [p["metadata"]["name"] for p in _policies(objects, dst_ns, dst_labels, "Ingress")]
        closed.append(f"ingress in {dst_ns}: {', '.join(sorted(names))}")
    return closed
