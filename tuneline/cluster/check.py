"""`tuneline cluster check`: would every compiled step run on the cluster that k8s/ provisions?

Run as: tuneline cluster check pipelines/*.yaml            (exit 2 with `pipeline:step: message` lines)
        tuneline cluster check pipelines/finetune.yaml --pools k8s/nodepools.yaml --k8s k8s/overlays/dev

Each pipeline is compiled (KFP and Azure ML) into a scratch folder, and what the compiled files ask for is read
back: the KFP executors' images, resources, node selectors and tolerations (kfp-kubernetes' platform spec), the
Secrets/PVCs/ConfigMaps they mount, the pod templates of multi-node jobs, and the Azure ML environments. Then:

- a pod fits a node pool of k8s/nodepools.yaml when its node selector is a subset of the pool's labels (with the
  labels AKS puts on every node: `agentpool`, `kubernetes.azure.com/agentpool`, and
  `kubernetes.azure.com/scalesetpriority: spot` on spot pools; https://learn.microsoft.com/azure/aks/use-labels),
  its tolerations cover every taint of the pool (spot pools also carry
  `kubernetes.azure.com/scalesetpriority=spot:NoSchedule`; https://learn.microsoft.com/azure/aks/spot-node-pool),
  and its requests fit what one node of the pool's VM size can allocate (config/skus.yaml, less the AKS
  reservations: https://learn.microsoft.com/azure/aks/node-resource-reservations);
- every Secret, PersistentVolumeClaim, ServiceAccount and ConfigMap a pod references must be rendered by k8s/
  (`kubectl kustomize`, through tuneline.cluster.render) in the namespace where the pods run: standalone Kubeflow
  Pipelines runs pipeline pods in `kubeflow` (multi-user installs: the profile's namespace, `--namespace`);
- a multi-node step's launcher runs as the run's ServiceAccount (`--service-account`, the one runs are submitted
  with): it must exist there with its token mounted, and the Roles bound to it must grant every call the launcher
  makes for that job kind (`tuneline.targets.kfp.launch.PERMISSIONS`), by the RBAC rule-matching of
  https://kubernetes.io/docs/reference/access-authn-authz/rbac/ (`*` matches all);
- every image must be `<registry>/<name>` of an environments/<name>/ that has a Dockerfile, in the registry the
  overlay pulls from (its kustomize `images:` newName for the control image) and pinned by a sha256 digest (the
  overlay's image lock, ConfigMap tuneline-images), and every Azure ML environment the name and version that
  environments/<name>/environment.yaml registers;
- the run's ServiceAccount must be granted what Kubeflow Pipelines' own pods ask the API for, since KFP runs the
  root driver, drivers, launchers and importers under it (KFP_RUNTIME_PERMISSIONS: each verb with the
  kubeflow/pipelines source that makes the call);
- a Secret or ConfigMap a pod reads must be created by k8s/, by KFP's install or by a
  `kubectl create` in docs/aks.md; a Secret that the Secrets Store CSI driver only mirrors counts just for the pod
  that mounts the SecretProviderClass itself: for any other pod it exists only while some pod mounts it;
- what the retraining CronJob submits is compiled from its own command line (env expanded as the kubelet does,
  ConfigMap files it mounts), as `tuneline trigger check --submit` compiles it (tuneline.targets.submit), and checked as
  above; the Azure ML retrain-check job (`tuneline trigger azureml-schedule`) is compiled from the files the
  control image holds (its Dockerfile's COPY lines), where it runs;
- on Azure ML, every cluster's VM size must be in config/skus.yaml, a distributed step must start one process
  per GPU of that size, and each cluster name must have one definition (size, tier, node limit) across all the
  pipelines checked together, since a workspace holds one cluster per name;
- every data URI a submitted run imports must be filled by something in k8s/ or the docs (an upload into that
  bucket or container), and be one the target can read.
What pods read and what fills the data: tuneline.cluster.reads; the CronJob's and the Azure ML job's
submissions: tuneline.cluster.submit.
No API server is needed or contacted: this is the scheduler's and the kubelet's admission arithmetic, done offline.
"""

from __future__ import annotations

import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..settings import SPOT_LABEL, SPOT_VALUE
from ..spec import SpecError
from ..spec.models import quantity
from ..targets import CompileError
from ..targets.kfp.options import DEFAULT_KFP_SERVICE_ACCOUNT, KfpOptions
from .reads import Rendered, docs_created, pipeline_root, reach_problems, reference_problem

DEFAULT_POOLS = Path("k8s/nodepools.yaml")
DEFAULT_SKUS = Path("config/skus.yaml")
DEFAULT_K8S = Path("k8s/overlays")
SPOT_TAINT = (SPOT_LABEL, SPOT_VALUE, "NoSchedule")
DEFAULT_MAX_PODS = 110  # AKS's default for kubenet and Azure CNI Overlay
EVICTION_MIB = 100      # AKS 1.29+: memory.available<100Mi
@dataclass(frozen=True)
class Sku:
    name: str
    vcpus: int
    memory_gib: float
    gpus: int

    def allocatable(self, max_pods: int) -> tuple[float, float]:
        """(cores, bytes) a node offers pods after the AKS kube-reserved CPU and memory and the eviction margin."""
        steps = [(1, 0.06), (1, 0.04), (2, 0.02), (4, 0.01), (8, 0.01), (16, 0.01), (32, 0.01)]  # per-core table
        reserved_cores, counted = 0.0, 0
        for cores, share in steps:
            take = min(cores, self.vcpus - counted)
            if take <= 0:
                break
            reserved_cores += take * share
            counted += take
        reserved_cores += max(0, self.vcpus - counted) * 0.005
        total = self.memory_gib * 2**30
        reserved_mem = min(20 * 2**20 * max_pods + 50 * 2**20, 0.25 * total) + EVICTION_MIB * 2**20
        return self.vcpus - reserved_cores, total - reserved_mem


def load_skus(path: Path = DEFAULT_SKUS) -> dict[str, Sku]:
    rows = yaml.safe_load(path.read_text())["skus"]
    return {name: Sku(name=name, vcpus=r["vcpus"], memory_gib=r["memory_gib"], gpus=r["gpus"])
            for name, r in rows.items()}


@dataclass
class PodNeeds:
    step: str
    kind: str                               # "pod" or the multi-node job's kind
    image: str | None = None
    cpu: float = 0.0
    memory: float = 0.0
    gpus: int = 0
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[dict[str, Any]] = field(default_factory=list)
    refs: set[tuple[str, str]] = field(default_factory=set)  # (kind, name): Secret, PersistentVolumeClaim, ...
    labels: dict[str, str] = field(default_factory=dict)    # the pod's own labels that the compiled spec sets


# ---------------------------------------------------------------------------------------------- compiled files

def _requests(resources: dict[str, Any]) -> tuple[float, float, int]:
    cpu = resources.get("resourceCpuRequest") or resources.get("resourceCpuLimit")
    mem = resources.get("resourceMemoryRequest") or resources.get("resourceMemoryLimit")
    acc = resources.get("accelerator") or {}
    gpus = int(acc.get("resourceCount") or acc.get("count") or 0)
    return (quantity(cpu) if cpu else 0.0), (quantity(mem) if mem else 0.0), gpus


def kfp_pods(pipeline_file: Path) -> list[PodNeeds]:
    docs = list(yaml.safe_load_all(pipeline_file.read_text()))
    spec, platform = docs[0], (docs[1] if len(docs) > 1 else {})
    k8s = ((platform.get("platforms") or {}).get("kubernetes") or {}).get("deploymentSpec", {}).get("executors", {})
    executors = spec["deploymentSpec"]["executors"]
    pods = []
    for task in spec["root"]["dag"]["tasks"].values():
        component = spec["components"][task["componentRef"]["name"]]
        label = component.get("executorLabel")
        if label not in executors or "container" not in executors[label]:
            continue
        container = executors[label]["container"]
        if container.get("image", "").startswith("python:") and "importer" in label:
            continue
        pod = PodNeeds(step=task["taskInfo"]["name"], kind="pod", image=container.get("image"))
        pod.cpu, pod.memory, pod.gpus = _requests(container.get("resources") or {})
        extra = k8s.get(label, {})
        pod.node_selector = dict((extra.get("nodeSelector") or {}).get("labels") or {})
        pod.tolerations = list(extra.get("tolerations") or [])
        pod.labels = {k: str(v) for k, v in ((extra.get("podMetadata") or {}).get("labels") or {}).items()}
        for secret in extra.get("secretAsEnv", []) + extra.get("secretAsVolume", []):
            pod.refs.add(("Secret", secret.get("secretName") or secret["secretNameParameter"]["runtimeValue"]
                          ["constant"]))
        for pvc in extra.get("pvcMount", []):
            pod.refs.add(("PersistentVolumeClaim", pvc.get("constant") or pvc["pvcNameParameter"]["runtimeValue"]
                          ["constant"]))
        for cm in extra.get("configMapAsEnv", []) + extra.get("configMapAsVolume", []):
            pod.refs.add(("ConfigMap", cm.get("configMapName") or cm["configMapNameParameter"]["runtimeValue"]
                          ["constant"]))
        pods.append(pod)
    return pods


def job_pods(manifest_file: Path, step: str) -> list[PodNeeds]:
    """The pod templates of a multi-node step's job (PyTorchJob replica specs, or a TrainJob's pod spec)."""
    from ..targets.kfp.trainjob import KIND as TRAINJOB
    from ..targets.kfp.trainjob import pod_template_of

    manifest = yaml.safe_load(manifest_file.read_text())
    if manifest.get("kind") == TRAINJOB:
        templates = [pod_template_of(manifest)]
    else:
        templates = [r["template"] for r in (manifest.get("spec", {}).get("pytorchReplicaSpecs") or {}).values()]
    pods = []
    for template in templates:
        spec = template.get("spec", {})
        pod = PodNeeds(step=step, kind=manifest.get("kind", "job"),
                       labels=dict((template.get("metadata") or {}).get("labels") or {}))
        if spec.get("serviceAccountName"):
            pod.refs.add(("ServiceAccount", spec["serviceAccountName"]))
        for container in spec.get("containers", []):
            pod.image = container.get("image")
            req = (container.get("resources") or {}).get("requests") or (container.get("resources") or {}).get(
                "limits") or {}
            pod.cpu += quantity(req["cpu"]) if "cpu" in req else 0.0
            pod.memory += quantity(req["memory"]) if "memory" in req else 0.0
            pod.gpus += int(req.get("nvidia.com/gpu", 0))
            for env in container.get("env", []):
                source = env.get("valueFrom") or {}
                if "secretKeyRef" in source:
                    pod.refs.add(("Secret", source["secretKeyRef"]["name"]))
                if "configMapKeyRef" in source:
                    pod.refs.add(("ConfigMap", source["configMapKeyRef"]["name"]))
        pod.node_selector = dict(spec.get("nodeSelector") or {})
        pod.tolerations = list(spec.get("tolerations") or [])
        for volume in spec.get("volumes", []):
            if "persistentVolumeClaim" in volume:
                pod.refs.add(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
            if "secret" in volume:
                pod.refs.add(("Secret", volume["secret"]["secretName"]))
            if "configMap" in volume:
                pod.refs.add(("ConfigMap", volume["configMap"]["name"]))
        pods.append(pod)
    return pods


# ---------------------------------------------------------------------------------------------- checks

def pool_labels(pool: Any) -> dict[str, str]:
    labels = {"agentpool": pool.name, "kubernetes.azure.com/agentpool": pool.name, "kubernetes.io/os": "linux",
              "node.kubernetes.io/instance-type": pool.vmSize}
    if pool.priority == "Spot":
        labels[SPOT_LABEL] = SPOT_VALUE
    labels.update(pool.labels)
    return labels


def pool_taints(pool: Any) -> list[tuple[str, str, str]]:
    taints = []
    for text in pool.taints:
        head, _, effect = text.rpartition(":")
        key, _, value = head.partition("=")
        taints.append((key, value, effect))
    if pool.priority == "Spot" and SPOT_TAINT not in taints:
        taints.append(SPOT_TAINT)
    return taints


def tolerates(tolerations: list[dict[str, Any]], taint: tuple[str, str, str]) -> bool:
    """Kubernetes' rule: same key (or empty key with Exists), Equal value or Exists, same effect or none."""
    key, value, effect = taint
    for tol in tolerations:
        if tol.get("effect") not in (None, "", effect):
            continue
        if tol.get("operator") == "Exists":
            if not tol.get("key") or tol.get("key") == key:
                return True
        elif tol.get("key") == key and str(tol.get("value", "")) == value:
            return True
    return False


def _gib(value: float) -> str:
    return f"{value / 2**30:.1f}Gi"


def pool_misfit(pod: PodNeeds, pool: Any, skus: dict[str, Sku]) -> str | None:
    """Why `pod` cannot be scheduled on `pool` (None when it can)."""
    labels = pool_labels(pool)
    wrong = {k: v for k, v in pod.node_selector.items() if labels.get(k) != v}
    if wrong:
        return "node selector " + ", ".join(f"{k}={v}" for k, v in sorted(wrong.items())) + " is not a label of it" \
            + "".join(f" (it has {k}={labels[k]})" for k in sorted(wrong) if k in labels)
    untolerated = [t for t in pool_taints(pool) if not tolerates(pod.tolerations, t)]
    if untolerated:
        return "no toleration for its taint " + ", ".join(f"{k}={v}:{e}" for k, v, e in untolerated)
    sku = skus.get(pool.vmSize)
    if sku is None:
        return f"its VM size {pool.vmSize} is not in config/skus.yaml"
    cores, memory = sku.allocatable(pool.maxPods or DEFAULT_MAX_PODS)
    if pod.gpus > sku.gpus:
        return f"requests {pod.gpus} GPUs, a {sku.name} node has {sku.gpus}"
    if pod.cpu > cores:
        return f"requests {pod.cpu:g} CPUs, a {sku.name} node can allocate {cores:.2f}"
    if pod.memory > memory:
        return f"requests {_gib(pod.memory)} memory, a {sku.name} node can allocate {_gib(memory)}"
    return None


def placement_problems(pod: PodNeeds, pools: list[Any], skus: dict[str, Sku]) -> list[str]:
    reasons = {pool.name: pool_misfit(pod, pool, skus) for pool in pools}
    if any(why is None for why in reasons.values()):
        return []
    where = "" if pod.kind == "pod" else f" ({pod.kind} pod)"
    return [f"no node pool can run it{where}: " + "; ".join(f"{name}: {why}" for name, why in reasons.items())]


def rendered_objects(k8s_dirs: list[Path]) -> dict[Path, Rendered]:
    """{kustomization: its objects} rendered by kustomize itself."""
    from .render import render

    out = {}
    for folder in k8s_dirs:
        rendered = Rendered()
        for resource in render(folder):
            meta = resource.obj.get("metadata") or {}
            rendered.bodies[(resource.kind, meta.get("namespace", "default"), resource.name)] = resource.obj
        out[folder] = rendered
    return out


def _grants(rule: dict[str, Any], group: str, resource: str, verb: str, name: str | None = None) -> bool:
    """RBAC's rule match; a rule with resourceNames grants only those objects (so never a call on any object)."""
    def has(values: Any, wanted: str) -> bool:
        return "*" in (values or []) or wanted in (values or [])
    names = rule.get("resourceNames") or []
    if names and (name is None or name not in names):
        return False
    return has(rule.get("apiGroups"), group) and has(rule.get("resources"), resource) and has(rule.get("verbs"), verb)


def bound_rules(account: str, namespace: str, rendered: Rendered) -> list[dict[str, Any]]:
    """Every rule of the Roles and ClusterRoles that RoleBindings in `namespace` bind to the ServiceAccount."""
    rules: list[dict[str, Any]] = []
    for (kind, ns, _), body in rendered.bodies.items():
        if kind != "RoleBinding" or ns != namespace:
            continue
        if not any(s.get("kind") == "ServiceAccount" and s.get("name") == account
                   and s.get("namespace", ns) == namespace for s in body.get("subjects") or []):
            continue
        ref = body.get("roleRef") or {}
        role_ns = namespace if ref.get("kind") == "Role" else "default"
        role = rendered.bodies.get((ref.get("kind", ""), role_ns, ref.get("name", "")))
        rules += (role or {}).get("rules") or []
    return rules


# What Kubeflow Pipelines' own pods ask the API server for, as the run's ServiceAccount (KFP runs the root driver,
# every driver, launcher and importer under it): (apiGroup, resource, verb, object name or None, who, source).
# Read in kubeflow/pipelines at 2.4.0, 2.5.0 and 2.17.0; KFP's own pipeline-runner Role
# (manifests/kustomize/base/pipeline/pipeline-runner-role.yaml) grants all of these.
KFP_RUNTIME_PERMISSIONS: tuple[tuple[str, str, str, str | None, str, str], ...] = (
    ("", "configmaps", "get", "kfp-launcher", "the root driver, every driver and importer",
     "backend/src/v2/config/env.go FromConfigMap (2.4.0/2.5.0 driver/driver.go RootDAG, 2.17.0 "
     "driver/root_dag.go): NotFound is tolerated, Forbidden fails the run"),
    ("", "secrets", "get", "mlpipeline-minio-artifact", "every launcher that moves an artifact",
     "backend/src/v2/objectstore/object_store.go getS3BucketCredential, for the default pipeline root "
     "minio://mlpipeline/v2/artifacts (backend/src/v2/config/env.go minioArtifactSecretName)"),
    ("", "pods", "get", None, "the launcher of a retried attempt",
     "backend/src/v2/component/launcher_v2.go retryIndexFromPodAnnotation (2.17.0)"),
    ("argoproj.io", "workflowtaskresults", "create", None, "Argo's executor in every pod",
     "https://argo-workflows.readthedocs.io/en/latest/workflow-rbac/"),
    ("argoproj.io", "workflowtaskresults", "patch", None, "Argo's executor in every pod",
     "https://argo-workflows.readthedocs.io/en/latest/workflow-rbac/"),
)
def runtime_problems(account: str, namespace: str, rendered: Rendered, folder: Path) -> list[str]:
    """Why KFP's driver, launcher or importer, running as `account`, would be refused an API call."""
    sa = rendered.bodies.get(("ServiceAccount", namespace, account))
    if sa is None:
        return [f"runs are submitted with ServiceAccount {account}, which {folder} does not create in namespace "
                f"{namespace}: KFP runs the run's driver, launcher and importer pods as it"]
    problems = []
    if sa.get("automountServiceAccountToken") is False:
        problems.append(f"ServiceAccount {account} sets automountServiceAccountToken: false: KFP's driver and "
                        f"launcher, which run as it, have no token for the API ({folder})")
    rules = bound_rules(account, namespace, rendered)
    for group, resource, verb, name, who, source in KFP_RUNTIME_PERMISSIONS:
        if not any(_grants(r, group, resource, verb, name) for r in rules):
            what = f"{resource}/{name}" if name else resource
            problems.append(f"ServiceAccount {account} may not {verb} {what}{f' ({group})' if group else ''} in "
                            f"{namespace}, which {who} needs ({source}): no Role bound to it grants it ({folder})")
    return problems


def launcher_problems(job_kind: str, account: str, namespace: str, rendered: Rendered, folder: Path) -> list[str]:
    """Why the launcher of a `job_kind` job, running as `account`, could not make its API calls."""
    from ..targets.kfp.launch import PERMISSIONS

    sa = rendered.bodies.get(("ServiceAccount", namespace, account))
    if sa is None:
        return [f"the {job_kind} launcher runs as ServiceAccount {account}, which {folder} does not create in "
                f"namespace {namespace}"]
    problems = []
    if sa.get("automountServiceAccountToken") is False:
        problems.append(f"ServiceAccount {account} (the {job_kind} launcher's) sets automountServiceAccountToken: "
                        f"false, so the launcher has no token for the API ({folder})")
    rules = bound_rules(account, namespace, rendered)
    for group, resource, verbs in PERMISSIONS[job_kind]:
        missing = [v for v in verbs if not any(_grants(r, group, resource, v) for r in rules)]
        if missing:
            problems.append(f"the {job_kind} launcher (ServiceAccount {account}) may not {'/'.join(missing)} "
                            f"{resource}{f' ({group})' if group else ''}: no Role bound to it in {namespace} grants "
                            f"it ({folder})")
    return problems


def environment_registry(root: Path) -> tuple[set[str], set[str]]:
    """(image names environments/ builds, `azureml:<name>:<version>` it registers)."""
    images, registered = set(), set()
    for folder in sorted((root / "environments").glob("*/")):
        if (folder / "Dockerfile").is_file():
            images.add(folder.name)
        env_file = folder / "environment.yaml"
        if env_file.is_file():
            body = yaml.safe_load(env_file.read_text())
            registered.add(f"azureml:{body['name']}:{body['version']}")
    return images, registered


_PINNED = re.compile(r"@sha256:[0-9a-f]{64}$")


def image_problem(image: str | None, images: set[str], registry: str | None = None) -> str | None:
    """Why `image` is not one of ours: not built from environments/, outside `registry` (the one the overlay's
    image lock names), or not pinned by digest (a tag can be moved to other bytes; a digest cannot)."""
    if not image:
        return "names no image"
    path = image.split("@", 1)[0]
    last = path.rsplit("/", 1)[-1]
    name = last.split(":", 1)[0]
    if name not in images:
        return f"image {image} is not built from environments/ (it builds {', '.join(sorted(images))})"
    if registry is not None and not image.startswith(registry.rstrip("/") + "/"):
        return f"image {image} is not in the registry {registry} the overlay names (ConfigMap {IMAGE_LOCK_MAP})"
    if registry is not None and not _PINNED.search(image):
        return f"image {image} is not pinned by a sha256 digest"
    return None


# ---------------------------------------------------------------------------------------------- checks

IMAGE_LOCK_MAP = "tuneline-images"     # k8s/base/retrain: the image lock the CronJob compiles with
IMAGE_LOCK_KEY = "images.yaml"
APP_NAMESPACE = "tuneline"
DOCS = (Path("docs/aks.md"),)


@dataclass
class CheckResult:
    problems: list[str]
    pods: int


def overlay_registry(rendered: Rendered) -> str | None:
    """The registry an overlay pulls tuneline's images from: that of the CronJob's control image, which the
    overlay's kustomize `images:` entry names (newName)."""
    for (kind, _, _), body in sorted(rendered.bodies.items()):
        if kind != "CronJob":
            continue
        spec = body["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        for container in spec.get("containers") or []:
            image = container.get("image") or ""
            if (container.get("command") or [""])[0] == "tuneline" and "/" in image:
                return image.split("@", 1)[0].split(":", 1)[0].rsplit("/", 1)[0]
    return None


def overlay_lock(rendered: Rendered, scratch: Path) -> Any:
    """The image lock an overlay gives the CronJob (its `tuneline-images` ConfigMap), or None."""
    from ..targets.images import load_image_lock

    body = rendered.bodies.get(("ConfigMap", APP_NAMESPACE, IMAGE_LOCK_MAP))
    text = ((body or {}).get("data") or {}).get(IMAGE_LOCK_KEY)
    if text is None:
        return None
    path = scratch / f"{IMAGE_LOCK_MAP}.yaml"
    path.write_text(text)
    return load_image_lock(path)


def compiled_problems(label: str, out_folder: Path, root: Path, pools: list[Any], skus: dict[str, Sku],
                      folder: Path, rendered: Rendered, namespace: str, account: str,
                      registry: str | None, docs_objects: set[tuple[str, str, str]]) -> tuple[list[str], int]:
    """Everything the compiled KFP package in `out_folder/kfp` asks of the cluster `folder` renders."""
    images, _ = environment_registry(root)
    problems = [f"{label}: {p}" for p in runtime_problems(account, namespace, rendered, folder)]
    pods = kfp_pods(out_folder / "kfp" / "pipeline.yaml")
    for manifest in sorted((out_folder / "kfp").glob("*job-*.yaml")):
        step = manifest.stem.split("-", 1)[1]
        pods += job_pods(manifest, step)
        job_kind = yaml.safe_load(manifest.read_text())["kind"]
        problems += [f"{label}:{step}: {p}" for p in launcher_problems(job_kind, account, namespace, rendered,
                                                                         folder)]
    for pod in pods:
        where = f"{label}:{pod.step}"
        problems += [f"{where}: {p}" for p in placement_problems(pod, pools, skus)]
        why = image_problem(pod.image, images, registry)
        if why:
            problems.append(f"{where}: {why} ({folder})" if registry else f"{where}: {why}")
        for kind, name in sorted(pod.refs):
            why = reference_problem(kind, name, namespace, rendered, folder, docs_objects,
                                    pipeline_namespace=namespace)
            if why:
                problems.append(f"{where}: {why}")
        config_maps = {name for kind, name in pod.refs if kind == "ConfigMap"}
        problems += [f"{where}: {p} ({folder})" for p in reach_problems(rendered, namespace, pod.labels, config_maps)]
    return problems, len(pods)


def check_pipeline(path: Path, pools: list[Any], skus: dict[str, Sku], objects: dict[Path, Rendered],
                   namespace: str, root: Path, account: str = DEFAULT_KFP_SERVICE_ACCOUNT) -> CheckResult:
    """Compile `path` as each overlay's CronJob would (its image lock), and check it against that overlay."""
    from ..graph import build_graph
    from ..spec import load_pipeline
    from ..targets.build import compile_graph
    from ..targets.options import CompileOptions

    graph = build_graph(load_pipeline(path))
    images, registered = environment_registry(root)
    docs_objects = docs_created([root / d for d in DOCS])
    problems: list[str] = []
    pods = 0
    for folder, rendered in objects.items():
        with tempfile.TemporaryDirectory() as scratch:
            lock = overlay_lock(rendered, Path(scratch))
            options = CompileOptions(image_lock=lock,
                                     platform={"kfp": KfpOptions(pipeline_root=pipeline_root(rendered, namespace))})
            out = compile_graph(graph, ("kfp", "azureml"), Path(scratch) / "out", options)
            registry = overlay_registry(rendered) or (lock.registry if lock else None)
            found, pods = compiled_problems(str(path), out.folder, root, pools, skus, folder, rendered, namespace,
                                            account, registry, docs_objects)
            if lock is None:
                found.append(f"{path}: {folder} gives no image lock (ConfigMap {IMAGE_LOCK_MAP} in "
                             f"{APP_NAMESPACE}): the images cannot be pinned to its registry by digest")
            problems += found
            problems += azureml_environment_problems(str(path), out.folder, registered, images, registry)
            problems += azureml_compute_problems(str(path), out.folder, skus)
    return CheckResult(problems=list(dict.fromkeys(problems)), pods=pods)


def azureml_environment_problems(label: str, folder: Path, registered: set[str], images: set[str],
                                 registry: str | None = None) -> list[str]:
    """Each compiled Azure ML component in `folder` whose environment cannot be pulled as built: an inline image
    (what tuneline.targets.azureml.compiler writes: the step's KFP image) is held to the pods' rules, a named
    environment must be one environments/ registers."""
    problems = []
    for component in sorted((folder / "azureml" / "components").glob("*.yml")):
        env = yaml.safe_load(component.read_text()).get("environment")
        if isinstance(env, dict) and env.get("image"):
            why = image_problem(env["image"], images, registry)
            if why:
                problems.append(f"{label}:{component.stem}: Azure ML environment: {why}")
        elif env not in registered:
            problems.append(f"{label}:{component.stem}: Azure ML environment {env} is not one that environments/ "
                            f"registers ({', '.join(sorted(registered)) or 'none'})")
    return problems


def azureml_compute_problems(label: str, folder: Path, skus: dict[str, Sku]) -> list[str]:
    """Each compiled Azure ML step whose cluster's VM size (its compute/*.yml) is not in config/skus.yaml, or
    whose PyTorch distribution starts another number of processes per node than the size has GPUs: fewer leaves
    GPUs idle (a billed ND96asr_v4 has 8), more puts two processes on one GPU."""
    sizes = {}
    for path in sorted((folder / "azureml" / "compute").glob("*.yml")):
        body = yaml.safe_load(path.read_text())
        sizes[body["name"]] = body["size"]
    problems = []
    for cluster, size in sorted(sizes.items()):
        if size not in skus:
            problems.append(f"{label}: Azure ML cluster '{cluster}' is {size}, which is not in config/skus.yaml: "
                            f"add a row with its source")
    job = yaml.safe_load((folder / "azureml" / "pipeline_job.yml").read_text())
    for step, body in job["jobs"].items():
        size = sizes.get(str(body.get("compute", "")).removeprefix("azureml:"))
        sku = skus.get(size) if size else None
        distribution = body.get("distribution")
        if sku is None or not sku.gpus or not distribution:  # one process by choice (evaluate) is not a misfit
            continue
        processes = distribution.get("process_count_per_instance", 1)
        if processes != sku.gpus:
            problems.append(f"{label}:{step}: Azure ML starts {processes} process(es) per node, a {size} node has "
                            f"{sku.gpus} GPUs: set the profile's azureml processes_per_node to {sku.gpus}")
    return problems


def kustomizations(target: Path) -> list[Path]:
    from .render import find_kustomization

    if find_kustomization(target):
        return [target]
    return sorted(p for p in target.iterdir() if p.is_dir() and find_kustomization(p))


def cluster_conflicts_of(paths: list[str]) -> list[str]:
    """Print and return the Azure ML clusters the pipelines define differently (a pipeline that does not load is
    reported by its own check below)."""
    from ..graph import build_graph
    from ..spec import load_pipeline
    from ..targets.azureml.compiler import cluster_conflicts

    graphs = []
    for path in paths:
        try:
            graphs.append(build_graph(load_pipeline(Path(path))))
        except (SpecError, CompileError):
            continue
    try:
        problems = cluster_conflicts(graphs)
    except CompileError as exc:
        problems = [str(exc)]
    for problem in problems:
        print(problem, file=sys.stderr)
    return problems
