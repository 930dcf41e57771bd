"""The cluster's MLflow for the KFP harness: the server k8s/base/mlflow runs, in the project's control image, and the
ConfigMap and Secret through which compiled steps reach it.

Run as (a library): with ClusterMlflow.start(engine, folder, repo) as mlflow:
                        mlflow.give_pods_their_env(package); DockerRunner(extra_hosts=mlflow.hosts)

What comes from the project's own files, so that a change there is what the harness runs:
- the server's container: image, command, args and env of `k8s/base/mlflow/deployment.yaml`, with `$(VAR)`
  expanded as the kubelet expands it (so `MLFLOW_SERVER_ALLOWED_HOSTS`, the Host allow-list, is the manifest's);
- the auth config docs/aks.md step 3 writes into Key Vault (`default_permission = NO_PERMISSIONS`), mounted where
  the Deployment's `MLFLOW_AUTH_CONFIG_PATH` points;
- the pipeline's user, created as docs/aks.md step 10 creates it (`get_app_client("basic-auth").create_user`, as
  the admin, through a port-forward), and the Secret `tuneline-mlflow-login` holding its login;
- the ConfigMap `tuneline-mlflow` (k8s/kubeflow/mlflow-configmap.yaml): its URI names the Service, which every
  task container resolves to the server's container (`hosts`), as cluster DNS would.

Each task gets these only as its compiled kfp-kubernetes spec asks (`configMapAsEnv`, `secretAsEnv`;
`give_pods_their_env`): a step compiled without the Secret has no login and MLflow answers 401, as on the cluster,
and an object or key that does not exist stops the run before the task starts, as the kubelet refuses such a pod
(CreateContainerConfigError).

Where it differs from the cluster, and why:
- The Deployment's `valueFrom` values (backend store URI, admin password, CSRF key) come from Key Vault through
  the CSI driver there; here a SQLite file in the server's folder and fresh random values.
- `MLFLOW_ARTIFACTS_DESTINATION` is a `wasbs://` container there and a folder of the server here; the steps see
  the same thing either way, `mlflow-artifacts:` URIs the server proxies (`--serve-artifacts`).
- The port-forward is a port published on 127.0.0.1; its `host:port` joins `MLFLOW_PUBLIC_HOSTS`, the
  Deployment's own list of names people reach it by from outside (`localhost:5000` there).
- The pod's securityContext (read-only root filesystem, dropped capabilities) is not applied; the server runs as
  the image's user.
"""

from __future__ import annotations

import re
import secrets
import socket
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from tuneline.targets.kfp.options import DEFAULT_MLFLOW_SECRET, MLFLOW_SECRET_KEYS

from .envvars import environment
from .kfp import IMAGE_REGISTRY, IMAGE_TAG, KfpRunBroken
from .podman import Container, PodmanService

DEPLOYMENT = Path("k8s/base/mlflow/deployment.yaml")
SERVICE = Path("k8s/base/mlflow/service.yaml")
NAMESPACE_FROM = Path("k8s/base/kustomization.yaml")  # its `namespace:` is the Service's
CONFIG_MAP = Path("k8s/kubeflow/mlflow-configmap.yaml")
PIPELINE_USER = "tuneline-pipeline"  # docs/aks.md step 10
ADMIN_USER_VAR = "MLFLOW_AUTH_ADMIN_USERNAME"
SERVER_ROOT = "/var/lib/tuneline-mlflow"  # the server's folder inside its container
# The Deployment's values that Key Vault fills on the cluster, and what stands in for each here.
SECRET_STAND_INS = {
    "MLFLOW_BACKEND_STORE_URI": lambda: f"sqlite:///{SERVER_ROOT}/mlflow.db",
    "MLFLOW_AUTH_ADMIN_PASSWORD": lambda: secrets.token_urlsafe(24),
    "MLFLOW_FLASK_SERVER_SECRET_KEY": lambda: secrets.token_hex(32),
}
# docs/aks.md step 3, with the auth database a SQLite file beside the store.
AUTH_INI = ("[mlflow]\ndefault_permission = NO_PERMISSIONS\ndatabase_uri = sqlite:///{root}/auth.db\n"
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)")
START_TIMEOUT_S = 180


def _expand(text: str, env: dict[str, str]) -> str:
    """`$(NAME)` replaced by an earlier variable's value; an unknown name is left as written, as the kubelet does."""
    return VAR.sub(lambda m: env.get(m.group(1), m.group(0)), text)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServerSpec:
    """The MLflow container of the Deployment, with its variables resolved for this machine."""

    image: str
    command: list[str]
    env: dict[str, str]
    port: int
    user: str  # the pod's runAsUser:runAsGroup
    read_only_root: bool  # the container's readOnlyRootFilesystem; its emptyDir mounts stay writable
    writable: list[str]  # mount paths of the pod's emptyDir volumes
    cap_drop: list[str]

    @classmethod
    def read(cls, repo: Path, public_host: str) -> ServerSpec:
        doc = yaml.safe_load((repo / DEPLOYMENT).read_text())
        pod = doc["spec"]["template"]["spec"]
        container = next(c for c in pod["containers"] if c["name"] == "mlflow")
        env: dict[str, str] = {}
        for item in container.get("env", []):
            name = item["name"]
            if "value" in item:
                env[name] = _expand(str(item["value"]), env)
            elif name in SECRET_STAND_INS:
                env[name] = SECRET_STAND_INS[name]()
            else:
                raise KfpRunBroken(f"{DEPLOYMENT}: the mlflow container reads {name} from "
                                   f"{next(iter(item['valueFrom']))}, which this harness has no stand-in for")
            if name == "MLFLOW_PUBLIC_HOSTS":
                env[name] = f"{env[name]},{public_host}"
            elif name == "MLFLOW_ARTIFACTS_DESTINATION":
                env[name] = f"{SERVER_ROOT}/artifacts"
            elif name == "MLFLOW_AUTH_CONFIG_PATH":
                env[name] = f"{SERVER_ROOT}/auth/{Path(env[name]).name}"
        command = [_expand(str(a), env) for a in [*container.get("command", []), *container.get("args", [])]]
        port = int(container["ports"][0]["containerPort"])
        image = container["image"].split(":")[0].split("@")[0]
        pod_security, security = pod.get("securityContext", {}), container.get("securityContext", {})
        empty_dirs = {v["name"] for v in pod.get("volumes", []) if "emptyDir" in v}
        writable = [m["mountPath"] for m in container.get("volumeMounts", []) if m["name"] in empty_dirs]
        user = f"{pod_security.get('runAsUser', '')}:{pod_security.get('runAsGroup', '')}".strip(":")
        return cls(f"{IMAGE_REGISTRY}/{image.split('/', 1)[1]}:{IMAGE_TAG}", command, env, port, user,
                   bool(security.get("readOnlyRootFilesystem")), writable,
                   list(security.get("capabilities", {}).get("drop", [])))


def service_hosts(repo: Path) -> tuple[set[str], int]:
    """The names a pod in another namespace reaches the MLflow Service by, and the Service's port."""
    service = yaml.safe_load((repo / SERVICE).read_text())
    namespace = yaml.safe_load((repo / NAMESPACE_FROM).read_text())["namespace"]
    name = service["metadata"]["name"]
    return ({f"{name}.{namespace}", f"{name}.{namespace}.svc", f"{name}.{namespace}.svc.cluster.local"},
            int(service["spec"]["ports"][0]["port"]))


def read_config_map(repo: Path) -> tuple[dict[str, Any], str]:
    """The ConfigMap the pods read, and the Service host its URI names, checked against the Service."""
    config_map = yaml.safe_load((repo / CONFIG_MAP).read_text())
    service = urlsplit(config_map["data"]["MLFLOW_TRACKING_URI"])
    names, port = service_hosts(repo)
    # The pods run in the kubeflow namespace: a short name (`mlflow`) would not resolve there.
    if service.hostname not in names or service.port != port:
        raise KfpRunBroken(f"{CONFIG_MAP}: MLFLOW_TRACKING_URI names {service.hostname}:{service.port}; a pod in "
                           f"another namespace reaches the Service ({SERVICE}) as one of "
                           f"{', '.join(sorted(names))} on port {port}")
    return config_map, str(service.hostname)


@dataclass
class ClusterMlflow:
    """The running server, the objects pods read (name -> data), and how containers reach the Service."""

    engine: PodmanService
    folder: Path
    repo: Path
    container: Container | None = None
    host_port: int = 0
    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    hosts: dict[str, str] = field(default_factory=dict)  # Service name -> the server container's address
    admin: tuple[str, str] = ("", "")

    @classmethod
    def start(cls, engine: PodmanService, folder: Path, repo: Path) -> ClusterMlflow:
        self = cls(engine, folder.resolve(), repo)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    @property
    def host_uri(self) -> str:
        """The server as the port-forward of docs/aks.md step 10 reaches it from the machine running kubectl."""
        return f"http://127.0.0.1:{self.host_port}"

    def host_env(self) -> dict[str, str | None]:
        """What a process on this machine needs to act as the pipeline's user (the seed of a loop)."""
        return {"MLFLOW_TRACKING_URI": self.host_uri, **self.secrets[DEFAULT_MLFLOW_SECRET]}

    def _start(self) -> None:
        config_map, service_host = read_config_map(self.repo)  # before anything starts: a wrong name fails fast
        self.host_port = _free_port()
        spec = ServerSpec.read(self.repo, f"127.0.0.1:{self.host_port}")
        (self.folder / "auth").mkdir(parents=True, exist_ok=True)
        (self.folder / "artifacts").mkdir(exist_ok=True)
        (self.folder / "auth" / Path(spec.env["MLFLOW_AUTH_CONFIG_PATH"]).name).write_text(
            AUTH_INI.format(root=SERVER_ROOT))
        for path in [self.folder, *self.folder.rglob("*")]:
            path.chmod(0o777 if path.is_dir() else 0o644)  # the image's user writes the stores
        if not self.engine.has_image(spec.image):
            raise KfpRunBroken(f"image {spec.image} (the mlflow Deployment's) is not built: run `make images`")
        self.container = self.engine.start_container(
            spec.image, spec.command, env=spec.env, mounts={self.folder: SERVER_ROOT}, user=spec.user or None,
            ports={f"{spec.port}/tcp": ("127.0.0.1", self.host_port)},
            # the pod's securityContext: a write outside its emptyDir volumes fails here as it would there
            options={"read_only": spec.read_only_root, "tmpfs": {path: "" for path in spec.writable},
                     "cap_drop": spec.cap_drop})
        self._wait()
        self.admin = (spec.env[ADMIN_USER_VAR], spec.env["MLFLOW_AUTH_ADMIN_PASSWORD"])
        password = secrets.token_urlsafe(24)
        self._create_user(PIPELINE_USER, password)
        self.secrets[DEFAULT_MLFLOW_SECRET] = dict(zip(MLFLOW_SECRET_KEYS, (PIPELINE_USER, password), strict=True))
        self.config_maps[config_map["metadata"]["name"]] = dict(config_map["data"])
        self.hosts[service_host] = self.container.address()

    def _wait(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            assert self.container is not None
            if not self.container.running():
                raise KfpRunBroken(f"the mlflow server exited: {self.container.logs()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.host_uri}/health", timeout=2) as reply:
                    if reply.status == 200:
                        return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(1)
        raise KfpRunBroken(f"the mlflow server did not answer within {START_TIMEOUT_S}s")

    def _create_user(self, name: str, password: str) -> None:
        from mlflow.server import get_app_client

        user, admin_password = self.admin
        with environment({"MLFLOW_TRACKING_USERNAME": user, "MLFLOW_TRACKING_PASSWORD": admin_password}):
            get_app_client("basic-auth", tracking_uri=self.host_uri).create_user(name, password)

    def give_pods_their_env(self, package: Path) -> dict[str, list[str]]:
        """Add to each executor's container env what its kfp-kubernetes `configMapAsEnv` and `secretAsEnv` read
        from these objects, as the pod spec KFP's driver builds would; returns {executor: variables given}."""
        docs = list(yaml.safe_load_all(package.read_text()))
        platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
        given: dict[str, list[str]] = {}
        for label, executor in docs[0]["deploymentSpec"]["executors"].items():
            if "container" not in executor:
                continue
            config = platform.get(label, {})
            values = [*self._values(label, config.get("configMapAsEnv", []), "ConfigMap", self.config_maps,
                                    "configMapName", "configMapKey"),
                      *self._values(label, config.get("secretAsEnv", []), "Secret", self.secrets,
                                    "secretName", "secretKey")]
            executor["container"].setdefault("env", []).extend({"name": k, "value": v} for k, v in values)
            given[label] = [k for k, _ in values]
        package.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        return given

    @staticmethod
    def _values(label: str, entries: list[dict[str, Any]], kind: str, objects: dict[str, dict[str, str]],
                name_key: str, data_key: str) -> list[tuple[str, str]]:
        values = []
        for entry in entries:
            # KFP's driver takes the name parameter first and the plain name only without one
            # (backend/src/v2/driver/k8s.go, SecretAsEnv and ConfigMapAsEnv)
            parameter = entry.get(f"{name_key}Parameter")
            name = (parameter.get("runtimeValue", {}).get("constant") if parameter is not None
                    else entry.get(name_key))
            if name is None:  # named by a pipeline input at run time (kfp-kubernetes' `...NameParameter`)
                raise KfpRunBroken(f"{label}: takes its {kind}'s name from a pipeline input, which this harness "
                                   f"does not resolve: {entry}")
            data = objects.get(name)
            optional = bool(entry.get("optional"))
            if data is None:
                if optional:
                    continue
                raise KfpRunBroken(f"{label}: reads {kind} '{name}', which nothing creates in the namespace the "
                                   f"pods run in; the kubelet would not start the pod (CreateContainerConfigError)")
            for pair in entry.get("keyToEnv", []):
                if pair[data_key] not in data:
                    if optional:
                        continue
                    raise KfpRunBroken(f"{label}: {kind} '{name}' has no key {pair[data_key]}")
                values.append((pair["envVar"], data[pair[data_key]]))
        return values

    def stop(self) -> None:
        if self.container is not None:
            self.container.kill(9)
            self.container.remove()
            self.container = None

    def __enter__(self) -> ClusterMlflow:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
