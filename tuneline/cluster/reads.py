"""What the pods k8s/ renders and the pipelines compile to read, and whether something creates it for good.

Run as: tuneline cluster check pipelines/*.yaml            (this module holds part of its rules)

A Secret, ConfigMap or PersistentVolumeClaim a pod needs to start must be created by the rendered manifests, by
Kubeflow Pipelines' own install (KFP_INSTALL_CREATES) or by a `kubectl create` command of the docs. A Secret that
the Secrets Store CSI driver only mirrors from a SecretProviderClass (`secretObjects`) exists while some pod mounts
that volume and is deleted after the last one stops
(https://secrets-store-csi-driver.sigs.k8s.io/topics/sync-as-kubernetes-secret): it counts only for a pod that
mounts the SecretProviderClass itself. A data URI a submitted run imports must be one the docs or k8s/ fill. A
Service a ConfigMap's URL names (the MLflow tracking URI) must be reachable from the pod through the NetworkPolicies
the manifests render.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

KFP_NAMESPACE = "kubeflow"


@dataclass
class Rendered:
    """What one kustomization creates: `(kind, namespace, name) in rendered`, and each object's body."""
    bodies: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)

    def __contains__(self, key: object) -> bool:
        return key in self.bodies


# What a Kubeflow Pipelines install creates where pipeline pods run, which pods and the backend read:
# (kind, name) -> the KFP manifest that creates it in `kubeflow` (manifests/kustomize at 2.4.0, 2.5.0 and 2.17.0);
# a multi-user install's profile controller creates both in each profile namespace
# (manifests/kustomize/base/installs/multi-user/pipelines-profile-controller/sync.py).
KFP_INSTALL_CREATES = {
    ("Secret", "mlpipeline-minio-artifact"): "manifests/kustomize/third-party/minio/base/"
                                            "mlpipeline-minio-artifact-secret.yaml",
    ("ConfigMap", "kfp-launcher"): "manifests/kustomize/base/pipeline/kfp-launcher-configmap.yaml",
}


def pipeline_root(rendered: Rendered, namespace: str) -> str:
    """Where KFP keeps artifacts for pods in `namespace`: the kfp-launcher ConfigMap's `defaultPipelineRoot` when
    the manifests set one, else KFP's default (backend/src/v2/config/env.go); imported data must share its bucket."""
    from ..targets.kfp.options import DEFAULT_KFP_PIPELINE_ROOT

    body = rendered.bodies.get(("ConfigMap", namespace, "kfp-launcher")) or {}
    return (body.get("data") or {}).get("defaultPipelineRoot") or DEFAULT_KFP_PIPELINE_ROOT


def docs_created(docs: list[Path]) -> set[tuple[str, str, str]]:
    """(kind, namespace, name) of the Secrets and ConfigMaps the docs' commands create (`kubectl create secret
    ... NAME --namespace NS`, `kubectl create configmap ...`), continuation lines joined."""
    created = set()
    for doc in docs:
        if not doc.is_file():
            continue
        text = re.sub(r"\\\n\s*", " ", doc.read_text())
        for line in text.splitlines():
            found = re.search(r"kubectl\s.*?\bcreate\s+(secret\s+[a-z-]+|configmap)\s+([a-z0-9][a-z0-9.-]*)", line)
            if not found:
                continue
            ns = re.search(r"(?:-n|--namespace)[=\s]+([a-z0-9-]+)", line)
            kind = "Secret" if found.group(1).startswith("secret") else "ConfigMap"
            created.add((kind, ns.group(1) if ns else "default", found.group(2)))
    return created


def csi_mirrors(rendered: Rendered, namespace: str) -> dict[str, str]:
    """{Secret name: SecretProviderClass} for Secrets the Secrets Store CSI driver mirrors in `namespace`: such a
    Secret exists only while a pod mounts that SecretProviderClass's volume
    (https://secrets-store-csi-driver.sigs.k8s.io/topics/sync-as-kubernetes-secret)."""
    out = {}
    for (kind, ns, name), body in rendered.bodies.items():
        if kind == "SecretProviderClass" and ns == namespace:
            for mirrored in (body.get("spec") or {}).get("secretObjects") or []:
                out[mirrored.get("secretName", "")] = name
    return out


def reference_problem(kind: str, name: str, namespace: str, rendered: Rendered, folder: Path,
                      docs_objects: set[tuple[str, str, str]], own_csi: set[str] = frozenset(),
                      pipeline_namespace: str = KFP_NAMESPACE) -> str | None:
    """Why an object a pod reads may be missing when the pod starts (None when something creates it for good).
    `own_csi` are the SecretProviderClasses the pod mounts itself (its own mirror is there when it starts);
    `pipeline_namespace` is where KFP runs pipeline pods, so where its install creates what they read."""
    if (kind, namespace, name) in rendered or (kind, namespace, name) in docs_objects:
        return None
    if namespace == pipeline_namespace and (kind, name) in KFP_INSTALL_CREATES:
        return None
    mirrors = csi_mirrors(rendered, namespace) if kind == "Secret" else {}
    if name in mirrors:
        if mirrors[name] in own_csi:
            return None
        return (f"{kind} {name} in {namespace} is only a mirror of SecretProviderClass {mirrors[name]}: it exists "
                f"while some other pod mounts that volume, and is deleted when the last one stops ({folder})")
    return f"{kind} {name} is not created in namespace {namespace} by {folder}, KFP's install or the docs"


# ---------------------------------------------------------------------------------------------- data

_BLOB_URL = re.compile(r"^https://([a-z0-9]+)\.blob\.core\.windows\.net/([^/]+)/")


def docs_filled(docs: list[Path]) -> set[tuple[str, str]]:
    """(scheme, where) the docs' commands write data into, `where` a prefix of `bucket/key`: `az storage blob
    upload[-batch]` into a container (scheme `blob`, `CONTAINER/`), `mc cp|mirror ... ALIAS/BUCKET/PATH` into an
    S3/MinIO bucket (schemes `minio` and `s3`; a destination ending in `/` is a folder, else one object),
    `az ml data create` / `az ml datastore upload` (scheme `azureml`)."""
    filled = set()
    for doc in docs:
        if not doc.is_file():
            continue
        text = re.sub(r"\\\n\s*", " ", doc.read_text())
        for line in text.splitlines():
            if re.search(r"\baz storage blob (upload|upload-batch|copy start)\b", line):
                container = re.search(r"(?:--container-name|--destination-container|-c|--destination|-d)[=\s]+"
                                      r"([a-z0-9-]+)", line)
                if container:
                    filled.add(("blob", container.group(1) + "/"))
            command = re.search(r"\bmc\s+(cp|mirror)\s+(.*)$", line)
            if command:  # the last word is the destination ALIAS/BUCKET/...
                words = [w for w in command.group(2).split() if not w.startswith("-")]
                dest = re.match(r"^[A-Za-z0-9_-]+/([a-z0-9.-]+(?:/\S*)?)$", words[-1]) if words else None
                if dest:
                    where = dest.group(1)
                    if command.group(1) == "mirror" or len(words) > 2 or "/" not in where:
                        where = where.rstrip("/") + "/"  # a folder: what is copied lands under it
                    filled.update({("minio", where), ("s3", where)})
            if re.search(r"\baz ml data create\b", line):
                filled.add(("azureml", ""))
    return filled


def dataset_problem(uri: str, filled: set[tuple[str, str]]) -> str | None:
    """Why nothing puts data at `uri` (None when k8s/ or the docs write under its folder or to it, or it is a path
    of the repository, which the image and Azure ML's code snapshot carry)."""
    if "://" not in uri:
        return None
    scheme, rest = uri.split("://", 1)
    if _BLOB_URL.match(uri):
        scheme, rest = "blob", rest.split("/", 1)[1]  # CONTAINER/PATH
    elif scheme == "azureml":
        rest = ""
    for kind, where in filled:
        if kind == scheme and (rest == where or (where == "" or where.endswith("/")) and rest.startswith(where)):
            return None
    return f"nothing in k8s/ or the docs writes data to {uri}: the run would import from an empty store"


WORKLOADS = ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")
CSI_SECRETS_DRIVER = "secrets-store.csi.k8s.io"


def pod_spec_of(body: dict[str, Any]) -> dict[str, Any]:
    spec = body.get("spec") or {}
    if body.get("kind") == "CronJob":
        spec = (spec.get("jobTemplate") or {}).get("spec") or {}
    return (spec.get("template") or {}).get("spec") or {}


def pod_reads(spec: dict[str, Any]) -> tuple[set[tuple[str, str]], set[str]]:
    """((kind, name) of every Secret, ConfigMap and PVC a pod needs to start, the SecretProviderClasses it mounts).
    References marked `optional: true` are left out: the kubelet starts the pod without them."""
    refs: set[tuple[str, str]] = set()
    own_csi: set[str] = set()
    for container in (spec.get("containers") or []) + (spec.get("initContainers") or []):
        for var in container.get("env") or []:
            source = var.get("valueFrom") or {}
            for key, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                if key in source and not source[key].get("optional"):
                    refs.add((kind, source[key]["name"]))
        for source in container.get("envFrom") or []:
            for key, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
                if key in source and not source[key].get("optional"):
                    refs.add((kind, source[key]["name"]))
    for volume in spec.get("volumes") or []:
        if "secret" in volume and not volume["secret"].get("optional"):
            refs.add(("Secret", volume["secret"]["secretName"]))
        if "configMap" in volume and not volume["configMap"].get("optional"):
            refs.add(("ConfigMap", volume["configMap"]["name"]))
        if "persistentVolumeClaim" in volume:
            refs.add(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
        for source in (volume.get("projected") or {}).get("sources") or []:
            for key, kind in (("secret", "Secret"), ("configMap", "ConfigMap")):
                if key in source and not source[key].get("optional"):
                    refs.add((kind, source[key]["name"]))
        csi = volume.get("csi") or {}
        if csi.get("driver") == CSI_SECRETS_DRIVER:
            own_csi.add((csi.get("volumeAttributes") or {}).get("secretProviderClass", ""))
    return refs, own_csi


def workload_problems(folder: Path, rendered: Rendered, docs_objects: set[tuple[str, str, str]]) -> list[str]:
    """Every Secret, ConfigMap and PVC the pods of `folder`'s workloads read: something must create it for good
    (a CSI mirror counts only for the pod that mounts its SecretProviderClass itself)."""
    problems = []
    for (kind, ns, name), body in sorted(rendered.bodies.items()):
        if kind not in WORKLOADS:
            continue
        refs, own_csi = pod_reads(pod_spec_of(body))
        for ref_kind, ref_name in sorted(refs):
            why = reference_problem(ref_kind, ref_name, ns, rendered, folder, docs_objects, own_csi)
            if why:
                problems.append(f"{kind} {ns}/{name} ({folder}): {why}")
    return problems


# ---------------------------------------------------------------------------------------------- network paths

_SERVICE_URL = re.compile(r"^https?://([a-z0-9-]+)\.([a-z0-9-]+)\.svc(?:\.cluster\.local)?(?::(\d+))?(?:/|$)")


def service_urls(rendered: Rendered, namespace: str, config_map: str) -> list[tuple[str, str, str, int]]:
    """(key, service, service namespace, port) for each in-cluster Service URL a ConfigMap in `namespace` holds."""
    data = (rendered.bodies.get(("ConfigMap", namespace, config_map)) or {}).get("data") or {}
    found = []
    for key, value in sorted(data.items()):
        url = _SERVICE_URL.match(str(value))
        if url:
            scheme_port = 443 if str(value).startswith("https") else 80
            found.append((key, url.group(1), url.group(2), int(url.group(3) or scheme_port)))
    return found


def service_backends(rendered: Rendered, namespace: str, service: str, port: int) -> list[tuple[dict, int]]:
    """(pod labels, container port) of each workload's pod template behind `service`'s `port`."""
    body = rendered.bodies.get(("Service", namespace, service)) or {}
    spec = body.get("spec") or {}
    selector = spec.get("selector") or {}
    entry = next((p for p in spec.get("ports") or [] if int(p.get("port", 0)) == port), None)
    if not selector or entry is None:
        return []
    target = entry.get("targetPort", port)
    backends = []
    for (kind, ns, _name), workload in rendered.bodies.items():
        if ns != namespace or kind not in ("Deployment", "StatefulSet"):
            continue
        template = (workload.get("spec") or {}).get("template") or {}
        labels = (template.get("metadata") or {}).get("labels") or {}
        if any(labels.get(k) != v for k, v in selector.items()):
            continue
        container_port = target
        if isinstance(target, str):  # a named port: the container port of that name
            ports = [p for c in (template.get("spec") or {}).get("containers") or [] for p in c.get("ports") or []]
            container_port = next((p["containerPort"] for p in ports if p.get("name") == target), 0)
        backends.append((dict(labels), int(container_port)))
    return backends


def reach_problems(rendered: Rendered, namespace: str, labels: dict[str, str], config_maps: set[str]) -> list[str]:
    """Why a pod in `namespace` with `labels` cannot connect to a Service a ConfigMap it reads points to (an
    MLflow tracking URI): the NetworkPolicies the manifests render close the path (tuneline.cluster.netpol).
    A URL to a Service the manifests do not render is left alone: the Service may belong to another install."""
    from .netpol import closed_directions

    problems = []
    objects = list(rendered.bodies.values())
    for config_map in sorted(config_maps):
        for key, service, service_ns, port in service_urls(rendered, namespace, config_map):
            for backend_labels, container_port in service_backends(rendered, service_ns, service, port):
                closed = closed_directions(objects, (namespace, labels), (service_ns, backend_labels),
                                           container_port)
                if closed:
                    problems.append(
                        f"ConfigMap {config_map} {key} names Service {service}.{service_ns}:{port}, which a pod in "
                        f"namespace {namespace} cannot reach: no NetworkPolicy rule admits it "
                        f"({'; '.join(closed)})")
    return problems
