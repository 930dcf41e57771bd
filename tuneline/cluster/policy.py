"""Cluster policies every rendered object must meet, each finding naming file, object and field.

- restricted Pod Security Standard for every pod template (runAsNonRoot, no privilege escalation, capabilities
  drop ALL, seccomp RuntimeDefault, no host namespaces/ports/hostPath), and a read-only root filesystem for every
  container. A workload that truly needs more carries the annotation `tuneline.dev/pss-exception: <why>`; only
  the workloads in PSS_EXCEPTIONS (the NVIDIA device plugin and DCGM exporter, which talk to kubelet sockets on
  the node) may carry it, and they are still held to no privileged mode, no privilege escalation, drop ALL,
  RuntimeDefault seccomp and a read-only root filesystem.
- no plaintext secrets: no Secret with data/stringData, no credential-looking env value or ConfigMap value.
- GPU pods (requesting nvidia.com/gpu or selecting GPU nodes) tolerate the GPU taint, and spot pods the spot taint.
- every image pinned by a sha256 digest (not a placeholder).
- every Blob CSI volume authenticates with an Entra ID identity (managed identity, or a workload identity token),
  never with the storage account key the driver otherwise fetches.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneline import settings
from tuneline.cluster.render import Resource
from tuneline.settings import SPOT_LABEL, SPOT_VALUE

EXCEPTION_ANNOTATION = "tuneline.dev/pss-exception"
# (kind, namespace, name) of the only workloads that may relax the restricted profile.
PSS_EXCEPTIONS = {
    ("DaemonSet", "kube-system", "nvidia-device-plugin"),   # registers on /var/lib/kubelet/device-plugins
    ("DaemonSet", "kube-system", "dcgm-exporter"),          # reads /var/lib/kubelet/pod-resources, DCGM profiling
}
GPU_RESOURCE = "nvidia.com/gpu"
GPU_TAINT = ("sku", "gpu")
SPOT_TAINT = (SPOT_LABEL, SPOT_VALUE)
GPU_NODE_LABELS = {"tuneline.dev/accelerator", "accelerator"}
SPOT_NODE_LABELS = {(SPOT_LABEL, SPOT_VALUE), ("tuneline.dev/pool", "gpuspot"),
                    ("agentpool", "gpuspot")}
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
PLACEHOLDER_DIGEST = "@sha256:" + "0" * 64
SECRET_NAME = re.compile(r"(PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|ACCESS_?KEY|ACCOUNT_?KEY|CONNECTION_?STRING|"
                         r"CREDENTIAL|PRIVATE_?KEY|CLIENT_?SECRET)", re.IGNORECASE)
SECRET_VALUE = re.compile(r"([a-z][a-z0-9+.-]*://[^/\s:@]+:[^/\s@]+@)|(AccountKey=)|(SharedAccessSignature=)|"
                          r"(-----BEGIN [A-Z ]*PRIVATE KEY-----)|(\bsig=[A-Za-z0-9%]{20,})", re.IGNORECASE)


POD_TEMPLATE_KINDS = {"Deployment", "DaemonSet", "StatefulSet", "ReplicaSet", "Job"}


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


@dataclass(frozen=True)
class Finding:
    source: str
    ref: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.ref}: {self.field}: {self.message}"


def _finding(r: Resource, field: str, message: str) -> Finding:
    return Finding(str(r.source), r.ref, field, message)


def check(resources: list[Resource]) -> list[Finding]:
    out: list[Finding] = []
    for r in resources:
        out += check_secrets(r)
        out += check_blob_volume(r)
        spec = pod_spec(r.obj)
        if spec is not None:
            base = pod_spec_path(r.kind)
            out += check_pod_security(r, spec, base)
            out += check_gpu_tolerations(r, spec, base)
            out += check_digests(r, spec, base)
    return out


def _containers(spec: dict, base: str) -> list[tuple[str, dict]]:
    out = []
    for group in ("initContainers", "containers"):
        for i, c in enumerate(spec.get(group) or []):
            out.append((f"{base}.{group}[{i}]", c))
    return out


def check_pod_security(r: Resource, spec: dict, base: str) -> list[Finding]:
    out: list[Finding] = []
    meta = r.obj.get("metadata") or {}
    annotations = meta.get("annotations") or {}
    excepted = bool(str(annotations.get(EXCEPTION_ANNOTATION, "")).strip())
    if EXCEPTION_ANNOTATION in annotations and (r.kind, meta.get("namespace"), r.name) not in PSS_EXCEPTIONS:
        allowed = ", ".join(f"{k}/{n} in {ns}" for k, ns, n in sorted(PSS_EXCEPTIONS))
        out.append(_finding(r, f"metadata.annotations.{EXCEPTION_ANNOTATION}",
                            f"only {allowed} may relax Pod Security (tuneline.cluster.policy.PSS_EXCEPTIONS); "
                            "this workload must meet the restricted profile"))
        excepted = False
    pod_sc = spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            out.append(_finding(r, f"{base}.{key}", "host namespaces are not allowed (restricted PSS)"))
    if not excepted:
        for i, vol in enumerate(spec.get("volumes") or []):
            if "hostPath" in vol:
                out.append(_finding(r, f"{base}.volumes[{i}].hostPath",
                                    f"hostPath volumes are not allowed (restricted PSS); document a need with "
                                    f"the {EXCEPTION_ANNOTATION} annotation"))
    for path, c in _containers(spec, base):
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            out.append(_finding(r, f"{path}.securityContext.privileged", "privileged containers are not allowed"))
        if sc.get("allowPrivilegeEscalation") is not False:
            out.append(_finding(r, f"{path}.securityContext.allowPrivilegeEscalation", "must be false"))
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            out.append(_finding(r, f"{path}.securityContext.capabilities.drop", "must contain ALL"))
        added = set(caps.get("add") or []) - {"NET_BIND_SERVICE"}
        if added and not excepted:
            out.append(_finding(r, f"{path}.securityContext.capabilities.add",
                                f"only NET_BIND_SERVICE may be added, not {sorted(added)}"))
        seccomp = (sc.get("seccompProfile") or pod_sc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            out.append(_finding(r, f"{path}.securityContext.seccompProfile.type",
                                f"must be RuntimeDefault or Localhost (here or at {base}.securityContext), "
                                f"got {seccomp!r}"))
        if sc.get("readOnlyRootFilesystem") is not True:
            out.append(_finding(r, f"{path}.securityContext.readOnlyRootFilesystem",
                                "must be true: write to an emptyDir or a volume, not the image"))
        for j, port in enumerate(c.get("ports") or []):
            if port.get("hostPort"):
                out.append(_finding(r, f"{path}.ports[{j}].hostPort", "host ports are not allowed"))
        if excepted:
            continue
        non_root = sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot"))
        if non_root is not True:
            out.append(_finding(r, f"{path}.securityContext.runAsNonRoot",
                                f"must be true (here or at {base}.securityContext): containers may not run as "
                                f"root; got {non_root!r}"))
        user = sc.get("runAsUser", pod_sc.get("runAsUser"))
        if user == 0:
            out.append(_finding(r, f"{path}.securityContext.runAsUser", "UID 0 (root) is not allowed"))
    return out


def _tolerates(spec: dict, taint: tuple[str, str]) -> bool:
    for t in spec.get("tolerations") or []:
        if t.get("effect") not in (None, "", "NoSchedule"):
            continue
        if t.get("operator") == "Exists" and t.get("key") in (None, "", taint[0]):
            return True
        if t.get("key") == taint[0] and t.get("value") == taint[1]:
            return True
    return False


def _selected_labels(spec: dict) -> set[tuple[str, str]]:
    labels = {(k, str(v)) for k, v in (spec.get("nodeSelector") or {}).items()}
    required = (((spec.get("affinity") or {}).get("nodeAffinity") or {})
                .get("requiredDuringSchedulingIgnoredDuringExecution") or {})
    for term in required.get("nodeSelectorTerms") or []:
        for expr in term.get("matchExpressions") or []:
            if expr.get("operator") == "In":
                labels |= {(expr["key"], str(v)) for v in expr.get("values") or []}
            elif expr.get("operator") == "Exists":
                labels.add((expr["key"], "*"))
    return labels


def check_gpu_tolerations(r: Resource, spec: dict, base: str) -> list[Finding]:
    wants_gpu = any(
        GPU_RESOURCE in ((c.get("resources") or {}).get(kind) or {})
        for _, c in _containers(spec, base) for kind in ("limits", "requests"))
    selected = _selected_labels(spec)
    on_gpu_nodes = wants_gpu or any(k in GPU_NODE_LABELS for k, _ in selected)
    on_spot = bool(selected & SPOT_NODE_LABELS)
    out = []
    if on_gpu_nodes and not _tolerates(spec, GPU_TAINT):
        out.append(_finding(r, f"{base}.tolerations",
                            "a GPU pod must tolerate the GPU node taint sku=gpu:NoSchedule"))
    if on_spot and not _tolerates(spec, SPOT_TAINT):
        out.append(_finding(r, f"{base}.tolerations", "a pod selecting spot nodes must tolerate "
                            + settings.SPOT_TAINT))
    return out


def check_digests(r: Resource, spec: dict, base: str) -> list[Finding]:
    out = []
    for path, c in _containers(spec, base):
        image = str(c.get("image", ""))
        if not DIGEST.search(image):
            out.append(_finding(r, f"{path}.image", f"image {image!r} is not pinned by digest (@sha256:...)"))
        elif image.endswith(PLACEHOLDER_DIGEST):
            out.append(_finding(r, f"{path}.image", f"image {image!r} carries the all-zero placeholder digest"))
    return out


BLOB_CSI_DRIVER = "blob.csi.azure.com"


def check_blob_volume(r: Resource) -> list[Finding]:
    """A Blob CSI PersistentVolume must say how it authenticates without the account key. Left unset, the driver
    reads a key Secret or fetches the key with the cluster identity (kubernetes-sigs/blob-csi-driver v1.27,
    pkg/blob/blob.go GetAuthEnv): a credential for the whole account, and one the kubelet identity's data-plane
    role cannot get. `AzureStorageAuthType: MSI` (the kubelet or a named managed identity) or
    `mountWithWorkloadIdentityToken: "true"` with a `clientID` keep it to Entra ID roles."""
    csi = (r.obj.get("spec") or {}).get("csi") or {}
    if r.kind != "PersistentVolume" or csi.get("driver") != BLOB_CSI_DRIVER:
        return []
    attrs = {str(k).lower(): str(v) for k, v in (csi.get("volumeAttributes") or {}).items()}
    out = []
    if attrs.get("protocol", "fuse").lower() == "nfs":
        return []
    if csi.get("nodeStageSecretRef") or csi.get("nodePublishSecretRef") or "secretname" in attrs:
        out.append(_finding(r, "spec.csi", "a Blob CSI volume must not read an account key or SAS from a Secret; "
                                           "use AzureStorageAuthType: MSI"))
    msi = attrs.get("azurestorageauthtype", "").lower() == "msi"
    token = attrs.get("mountwithworkloadidentitytoken", "").lower() == "true" and attrs.get("clientid")
    if not (msi or token):
        out.append(_finding(r, "spec.csi.volumeAttributes.AzureStorageAuthType",
                            "unset: the Blob CSI driver would mount with the storage account key; set it to MSI "
                            "(kubelet identity with a Storage Blob Data role on the container)"))
    return out


def _credential_like(value: Any) -> bool:
    return isinstance(value, str) and bool(SECRET_VALUE.search(value))


def check_secrets(r: Resource) -> list[Finding]:
    out = []
    if r.kind == "Secret":
        for key in ("data", "stringData"):
            if r.obj.get(key):
                out.append(_finding(r, key, "plaintext secret in a manifest: keep it in Key Vault and mount it "
                                            "with a SecretProviderClass"))
    if r.kind == "ConfigMap":
        for key, value in (r.obj.get("data") or {}).items():
            if _credential_like(value):
                out.append(_finding(r, f"data.{key}", "looks like a credential; ConfigMaps are not secret"))
    spec = pod_spec(r.obj)
    if spec is None:
        return out
    for path, c in _containers(spec, pod_spec_path(r.kind)):
        for i, env in enumerate(c.get("env") or []):
            if "value" not in env:
                continue
            name, value = str(env.get("name", "")), env.get("value")
            if (SECRET_NAME.search(name) and value not in (None, "")) or _credential_like(value):
                out.append(_finding(r, f"{path}.env[{i}].value",
                                    f"env {name!r} holds a literal credential: use valueFrom.secretKeyRef"))
    return out


def relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)
