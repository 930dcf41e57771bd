"""Execute a compiled KFP package with the KFP SDK's own local orchestrator, each task in a container of the
project's images, and collect every step's outputs for the comparison with `tuneline run`.

Run as: python -m tools.conformance kfp pipelines/finetune.yaml --set base_model=tiny-random-llama

What runs what (kfp 2.17.0, sdk/python/kfp/ in github.com/kubeflow/pipelines at tag 2.17.0):
- `kfp.components.load_component_from_file` loads the compiled `pipeline.yaml`; calling it under
  `kfp.local.init(runner=kfp.local.DockerRunner(...))` runs `local/pipeline_orchestrator.py` and
  `local/orchestrator/dag_orchestrator.py`: tasks in topological order, arguments from the pipeline's inputs and
  the upstream tasks' outputs, importers by `local/importer_handler.py`, placeholders (`{{$.inputs...}}`, and
  Concat and IfPresent, which the compiler no longer emits: K10) by `local/placeholder_utils.py`, and output
  parameters read back by `local/executor_output_utils.py` (`special_dsl_outputpath_read`: a STRING file
  verbatim, every other type as JSON, as the backend's launcher does).
- Every task runs in the image the IR names, through podman's Docker API (`tools.conformance.podman`, whose
  relay keeps each container until `wait` has returned its exit status), as the image's own user (uid 10001),
  with `local/docker_task_handler.py` bind-mounting the pipeline root at the same path. The images must hold
  this working tree's tuneline/ and components/ (`check_images`); an image a CPU machine does not build
  (train-gpu) is replaced by the CPU image with the same components (`cpu_stand_ins`), and a project other than
  this repository (the toy fixture) has its components/ mounted over the image's.

Where kfp.local falls short of the KFP backend, and what stands in for it here
(tests/targets/compile/test_kfp_backend.py checks each on the compiled IR, since nothing here can run the backend):
K1 Output artifacts of container components. kfp.local registers only the artifacts a task lists in its
   executor output file (`executor_output_utils.get_outputs_for_task`), which only KFP's Python executor
   writes; the backend's launcher registers every declared output artifact of a successful task
   (backend/src/v2/component/launcher_v2.go, `uploadOutputArtifacts` over `executorInput.Outputs.Artifacts`).
   Without it no container component's artifact reaches the next task. `_register_declared_artifacts` does what
   the launcher does, with KFP's own conversion (`runtime_artifact_to_dsl_artifact`); this is the one piece of
   kfp.local this harness changes.
K2 Output folders. The launcher creates the parent folder of every output file (`prepareOutputFolders` in
   launcher_v2.go); kfp.local creates none, so the program must (the gate wrapper, `tuneline.step.outputs.write_value`
   and the components do). The pipeline root is made writable for the image's user: on a pod that is the
   per-pod scratch the launcher prepares.
K3 Importer URIs. The backend's importer takes object-store URIs only and the launcher downloads them to
   /gcs/, /s3/ or /minio/ (backend/src/v2/component/importer_launcher.go; `Artifact._get_path` in
   sdk/python/kfp/dsl/types/artifact_types.py maps the prefixes); kfp.local takes the URI as a local path
   (`importer_handler.get_importer_uri`). The compiled defaults stay object-store URIs (the compiler refuses
   anything else); the run passes local copies of the same files, staged under the pipeline root (the stand-in
   bucket, mounted into every container), as run arguments, as a user submitting a run with other values would.
K4 Kubernetes platform spec (kfp-kubernetes): PVC mounts, tolerations, node selectors, node affinity,
   ConfigMap and Secret env, field-path env (TUNELINE_RUN_ID), the /dev/shm emptyDir and activeDeadlineSeconds
   are all ignored: nothing in `kfp/local/` reads `platform_spec`. Two of them are applied here before the run:
   each executor's `configMapAsEnv` and `secretAsEnv` become its container env, read from the objects the
   cluster has (tools.conformance.cluster_mlflow: the ConfigMap of k8s/kubeflow, the login Secret docs/aks.md
   creates, both for the cluster's own MLflow server run from its Deployment), and each container resolves the
   Service the ConfigMap names (`hosts`); a host folder is bind-mounted at each PVC's mount path
   (`pvc_mounts`), as the checkpoint volume would be.
K5 Resources. CPU/memory requests and limits and accelerator type/count are warned about and ignored
   (`orchestrator/task_executor.py`, `_warn_local_only_noops`).
K6 Caching. Off here (`enable_caching` defaults to False); kfp.local's cache key is component name, image,
   command and arguments (`local/cache.py`), the backend's is input artifact *names*, parameter values, output
   specs and the container spec (backend/src/v2/cacheutils/cache.go, `GenerateCacheKey`).
K7 Retries. kfp.local re-runs a failed task in the same process with the policy's backoff
   (`orchestrator/task_executor.py`); the backend starts a new pod per attempt (Argo `retryStrategy`), which is
   what the checkpoint PVC is for.
K8 One task at a time, in this process; no namespace, ServiceAccount or pod labels.
K9 An optional input with no value. The backend's driver leaves it out of the executor input; kfp.local passes
   it as null and `executor_input_utils.executor_input_to_dict` fails on a null integer (int(None)). The compiler
   leaves such inputs out of each step's component (they can never be set there) and drops their `$[[...]]`
   blocks, so neither sees one.
K10 Placeholders. kfp.local resolves `{"Concat": ...}` and `{"IfPresent": ...}` (`placeholder_utils.py`) and fills
   a component's defaults before anything else. The backend's launcher only replaces plain keys inside each
   argument (never the first one, from 2.14.0), passes Concat and IfPresent on as literal text (2.17.0's driver
   resolves IfPresent of parameters only), and from 2.17.0 its driver fails on an input parameter the task does
   not pass, defaults included (tools.conformance.kfp_backend cites each). So a package that passes here can
   still hand a step `{"Concat": ...}` on a cluster: the compiler emits neither, passes every default from the
   task, and test_k10 in tests/targets/compile/test_kfp_backend.py resolves every command as each supported backend
   version does and compares it with `tuneline run`'s.
K11 Backend versions. kfp.local is one SDK version; the cluster runs the backend listed in k8s/supported.yaml.
   test_k11 checks each executor's platform spec against the fields the oldest supported driver knows and
   applies, test_k12 that every supported version retries tasks.
K12 Pod deletion and SIGTERM. kfp.local never loses a container. On the backend a pod deleted with its node is an
   Argo Error, and the `retryStrategy` KFP compiles sets no `retryPolicy`, so Argo's default (OnFailure) does not
   retry it (backend/src/v2/compiler/argocompiler/container.go, all versions read); and a SIGTERM reaches the
   step only together with the launcher that runs it, which exits at once and takes the container down
   (docs/kubeflow-versions.md, "Eviction"). Nothing here stands in for either.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneline.graph import PipelineGraph
from tuneline.spec import Literal, ParamRef
from tuneline.step.gate import SKIP_MARKER, SKIPPED
from tuneline.targets.build import compile_graph
from tuneline.targets.options import CompileOptions

from .images import IMAGE_ROOT, StaleImage
from .images import check_images as check_tree
from .kfp_backend import package_problems
from .podman import PodmanService

IMAGE_REGISTRY = "localhost/tuneline"  # what environments/build.sh tags (buildah's localhost/ prefix)
IMAGE_TAG = "dev"
STORE = "store"  # the stand-in object store under the pipeline root (K3)


class KfpRunBroken(Exception):
    """The compiled package cannot be run here, or kfp.local reports a failure."""


@dataclass
class TaskResult:
    name: str
    status: str                                   # succeeded | skipped | failed | not-run
    outputs: dict[str, Any] = field(default_factory=dict)  # output name -> dsl.Artifact or parsed value


def task_name(step: str) -> str:
    """The IR task name of a step, as kfp's compiler spells it."""
    from kfp.dsl import utils

    return utils.maybe_rename_for_k8s(step)


def artifact_params(graph: PipelineGraph) -> list[str]:
    """Pipeline parameters that feed an artifact input: each one becomes an importer in the IR."""
    names = []
    for node in graph.nodes.values():
        for name, binding in node.bindings.items():
            if node.input_type(name).is_artifact:
                if isinstance(binding, Literal):
                    raise KfpRunBroken(f"step '{node.name}' input '{name}' is a literal path; kfp.local would "
                                       f"read it on this machine, not from the store (bind it to a parameter)")
                if isinstance(binding, ParamRef) and binding.name not in names:
                    names.append(binding.name)
    return names


def stage_data(graph: PipelineGraph, root: Path) -> dict[str, str]:
    """Copy each artifact parameter's local value into the stand-in store; {param: absolute path} (K3)."""
    staged = {}
    for name in artifact_params(graph):
        value = str(graph.params[name])
        source = Path(value) if os.path.isabs(value) else graph.pipeline.root / value
        if not source.exists():
            raise KfpRunBroken(f"parameter '{name}': {source} does not exist")
        target = root / STORE / name / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.is_dir():
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
        staged[name] = str(target)
    return staged


@contextmanager
def _patched(owner: Any, name: str, wrap: Callable[[Any], Any]) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, wrap(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


def _register_declared_artifacts(original: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """K1: after kfp.local's own collection, every declared output artifact of the (successful) task."""
    from kfp.local import executor_output_utils

    def collect(executor_input: Any, component_spec: Any) -> dict[str, Any]:
        outputs = original(executor_input=executor_input, component_spec=component_spec)
        for key, artifact_list in executor_input.outputs.artifacts.items():
            if key in outputs or not artifact_list.artifacts:
                continue
            runtime = artifact_list.artifacts[0]
            if not os.path.exists(runtime.uri):
                continue  # the launcher would fail the upload; the comparison reports it missing
            outputs[key] = executor_output_utils.runtime_artifact_to_dsl_artifact(runtime)
        return outputs

    return collect


def _record_task_outputs(store: dict[str, dict[str, Any]]) -> Callable[[Any], Any]:
    """Read-only tap on what the DAG orchestrator hands to downstream tasks."""

    def wrap(original: Callable[..., None]) -> Callable[..., None]:
        def put_task_output(self: Any, task: str, key: str, value: Any) -> None:
            store.setdefault(task, {})[key] = value
            return original(self, task, key, value)

        return put_task_output

    return wrap


@dataclass
class KfpLocalRun:
    graph: PipelineGraph
    work: Path
    engine: PodmanService
    env: dict[str, str] = field(default_factory=dict)  # this harness's variables, over every container's (K4)
    mounts: dict[Path, str] = field(default_factory=dict)  # host folder -> container path, read-only
    hosts: dict[str, str] = field(default_factory=dict)  # name -> address, as cluster DNS resolves a Service

    def compile(self, repo: Path) -> Path:
        """The package as `tuneline compile` writes it, with one edit: an image this CPU machine does not build
        (`cpu_buildable: false` in environments/images.yaml) is replaced by the CPU image that holds all of its
        components (train-gpu by train-cpu: the same requirements but the CUDA torch wheel)."""
        options = CompileOptions(image_registry=IMAGE_REGISTRY, image_tag=IMAGE_TAG)
        out = compile_graph(self.graph, ("kfp",), self.work / "compiled", options)
        package = out.folder / "kfp" / "pipeline.yaml"
        text = package.read_text()
        for image, stand_in in cpu_stand_ins(repo).items():
            text = text.replace(f"image: {IMAGE_REGISTRY}/{image}:{IMAGE_TAG}\n",
                                f"image: {IMAGE_REGISTRY}/{stand_in}:{IMAGE_TAG}\n")
        package.write_text(text)
        problems = package_problems(package)  # K10, K11: kfp.local would run what the backend cannot
        if problems:
            raise KfpRunBroken("the package would fail on the KFP backend:\n  " + "\n  ".join(problems))
        return package

    def check_images(self, package: Path, repo: Path) -> list[str]:
        """Every image the IR names exists and carries this working tree's tuneline/ and components/ (a stale image
        would test old code); returns the images."""
        import yaml

        spec = next(yaml.safe_load_all(package.read_text()))
        images = sorted({e["container"]["image"] for e in spec["deploymentSpec"]["executors"].values()
                         if "container" in e})
        try:
            check_tree(self.engine, images, repo)
        except StaleImage as exc:
            raise KfpRunBroken(str(exc)) from None
        return images

    def run(self, package: Path, arguments: dict[str, Any], root: Path,
            cache_root: Path | None = None) -> dict[str, TaskResult]:
        """Execute `package` with `arguments`; with `cache_root`, kfp.local's own task cache is on (K6)."""
        import docker
        from kfp import local
        from kfp.components import load_component_from_file
        from kfp.local import executor_output_utils, io

        root.mkdir(parents=True, exist_ok=True)
        for folder in [root, *root.rglob("*")]:
            if folder.is_dir():
                folder.chmod(0o777)  # K2: the image's user writes its outputs here
        mounts = [docker.types.Mount(target=target, source=str(host.resolve()), type="bind", read_only=True)
                  for host, target in self.mounts.items()]
        for name, path in pvc_mounts(package).items():  # K4: a host folder stands in for each PVC
            volume = root / "pvc" / name
            volume.mkdir(parents=True, exist_ok=True)
            volume.chmod(0o777)
            mounts.append(docker.types.Mount(target=path, source=str(volume), type="bind", read_only=False))
        recorded: dict[str, dict[str, Any]] = {}
        saved_host = os.environ.get("DOCKER_HOST")
        os.environ["DOCKER_HOST"] = self.engine.docker_host  # docker.from_env() in docker_task_handler.py
        umask = os.umask(0)  # folders kfp.local creates stay writable for uid 10001 (K2)
        try:
            local.init(runner=local.DockerRunner(environment=dict(self.env), mounts=mounts,
                                                   extra_hosts=dict(self.hosts)),
                       pipeline_root=str(root), raise_on_error=False, enable_caching=cache_root is not None,
                       cache_root=str(cache_root) if cache_root else None)
            pipeline = load_component_from_file(str(package))
            with _patched(executor_output_utils, "get_outputs_for_task", _register_declared_artifacts), \
                    _patched(io.IOStore, "put_task_output", _record_task_outputs(recorded)):
                pipeline(**arguments)
        finally:
            os.umask(umask)
            if saved_host is None:
                os.environ.pop("DOCKER_HOST", None)
            else:
                os.environ["DOCKER_HOST"] = saved_host
        return self._results(recorded)

    def _results(self, recorded: dict[str, dict[str, Any]]) -> dict[str, TaskResult]:
        results: dict[str, TaskResult] = {}
        failed_seen = False
        for step in self.graph.order:
            node = self.graph.nodes[step]
            outputs = recorded.get(task_name(step))
            if outputs is None:
                results[step] = TaskResult(step, "not-run" if failed_seen else "failed")
                failed_seen = True
                continue
            status = "succeeded"
            if node.condition is not None:
                gate = results[node.condition.step].outputs.get(node.condition.output)
                if gate is False:
                    status = "skipped"
                    self._check_skip_markers(step, outputs)
            results[step] = TaskResult(step, status, outputs)
        return results

    def _check_skip_markers(self, step: str, outputs: dict[str, Any]) -> None:
        """A gated-off task must leave the gate wrapper's markers, or it ran when it should not have."""
        for name, spec in self.graph.nodes[step].component.spec.outputs.items():
            value = outputs.get(name)
            if not spec.type.is_artifact or value is None:
                continue
            path = Path(value.path)
            marker = path / SKIP_MARKER if path.is_dir() else path
            if not marker.is_file() or SKIPPED not in marker.read_text():
                raise KfpRunBroken(f"step '{step}' had a false gate but its output '{name}' holds no skip marker")


def pvc_mounts(package: Path) -> dict[str, str]:
    """{PVC name: mount path} of every task's kfp-kubernetes `pvcMount` in the package's platform spec."""
    import yaml

    docs = list(yaml.safe_load_all(package.read_text()))
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if len(docs) > 1 else {}
    return {m["constant"]: m["mountPath"] for config in executors.values() for m in config.get("pvcMount", [])
            if "constant" in m}


def cpu_stand_ins(repo: Path) -> dict[str, str]:
    """{image not built on a CPU machine: the CPU-buildable image whose components include all of its own}."""
    import yaml

    images = yaml.safe_load((repo / "environments" / "images.yaml").read_text())["images"]
    buildable = {n: set(i.get("components", [])) for n, i in images.items() if i.get("cpu_buildable")}
    stand_ins = {}
    for name, image in images.items():
        if image.get("cpu_buildable"):
            continue
        wanted = set(image.get("components", []))
        match = next((b for b, components in buildable.items() if wanted <= components), None)
        if match:
            stand_ins[name] = match
    return stand_ins


def output_of(results: dict[str, TaskResult], graph: PipelineGraph) -> Callable[[str, str], Any]:
    """compare.compare_steps' view of a task output: a Path for an artifact, the parsed value otherwise."""

    def output(step: str, name: str) -> Any:
        result = results.get(step)
        if result is None or name not in result.outputs:
            return None
        value = result.outputs[name]
        if graph.nodes[step].component.spec.outputs[name].type.is_artifact:
            return Path(value.path)
        return value

    return output


def image_mounts(graph: PipelineGraph, repo: Path) -> dict[Path, str]:
    """A project other than this repository (the toy fixture) brings its own components/: mount it where the
    image keeps the repository's, read-only. The repository's own components are in the images already."""
    if graph.pipeline.root.resolve() == repo.resolve():
        return {}
    return {graph.pipeline.root / "components": f"{IMAGE_ROOT}/components"}
