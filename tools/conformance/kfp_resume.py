"""Kill -> retry -> resume of a compiled KFP task through its checkpoint PVC, in a container of the project's image.

Run as: python -m tools.conformance.kfp_resume pipelines/finetune.yaml --set base_model=tiny-random-llama \
            --set max_steps=12 --set max_seq_len=768     (what `make conformance` runs)

kfp.local ignores the Kubernetes platform spec (PVC mounts among it), so a retried task there could not find the
checkpoints of the attempt before it. This harness runs the compiled task the way the backend would start two
pods for it (an Argo retry), one after the other, on the same PVC:
- the task is the compiled package's executor for each step with a `resume: true` output: its image, its command
  and its container env, with placeholders resolved by kfp.local's own code (`executor_input_utils` and
  `placeholder_utils.replace_placeholders`, sdk/python/kfp/local/ in kubeflow/pipelines 2.17.0) from the
  upstream outputs of a local run;
- the PVC is a host folder bind-mounted (podman, `tools.conformance.podman`) at the `pvcMount` path of the task's
  Kubernetes executor config; each attempt gets its own output folder (a pod's scratch), so only the volume
  carries anything from one attempt to the next;
- env that kfp-kubernetes fills at run time: the ConfigMap's and the Secret's, from the cluster's MLflow server
  (`tools.conformance.cluster_mlflow`, as in the conformance run), and TUNELINE_RUN_ID (the same for both
  attempts, as for a retry);
- the first attempt gets SIGTERM, as the kubelet sends a pod being evicted, once a checkpoint is on the volume; the
  second runs to the end and must say `resumed from <the newest checkpoint>`; its model output is compared with
  an uninterrupted local run of the same step.

Where this differs from a cluster: the container's main process here is the compiled command itself; on a KFP pod
it is the launcher (`/kfp-launcher/launch`), which runs the command with Go's `exec.Command` and does not pass
SIGTERM on (backend/src/v2/component/launcher_v2.go, `execute`), so there a preempted step keeps only its periodic
checkpoints (`save_steps`), not the one it would write on SIGTERM. Images come from `make images` (the registry and
tag every harness uses, tools.conformance.kfp IMAGE_REGISTRY and IMAGE_TAG); an environment that cannot be built on
a CPU machine (`cpu_buildable: false` in environments/images.yaml) runs in a CPU image that holds the same
component.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tuneline.graph import PipelineGraph, build_graph
from tuneline.spec import OutputRef, SpecError, load_pipeline
from tuneline.spec.load import parse_set_pairs
from tuneline.targets.build import compile_graph
from tuneline.targets.local import record as rec
from tuneline.targets.local.runner import LocalRunner, RunOptions
from tuneline.targets.options import CompileOptions

from .cluster_mlflow import ClusterMlflow
from .compare import artifact_difference
from .kfp import IMAGE_REGISTRY, IMAGE_TAG, KfpRunBroken
from .podman import PodmanService

REPO = Path(__file__).resolve().parents[2]  # whose environments/ `make images` builds
RUN_ID = "kfp-resume-run"  # `pipeline/runid` of the pod: a retry keeps it
KILL_TIMEOUT_S = 600.0


class ResumeBroken(Exception):
    """The task could not be run, was not killed after a checkpoint, or did not resume."""


@dataclass
class Attempt:
    exit_code: int
    logs: str
    task_root: Path
    seconds: float
    entries: list[str]  # what the volume held for the task when the attempt ended


@dataclass
class ResumeResult:
    step: str
    killed: Attempt
    retried: Attempt
    resumed_from: str
    model_difference: dict[str, str | None]

    def line(self) -> str:
        number = re.search(r"(\d+)\D*$", self.resumed_from)
        at = f" at step {int(number.group(1))}" if number else ""
        resumed = f" at step {int(number.group(1)) + 1}" if number else f" from {self.resumed_from}"
        same = all(d is None for d in self.model_difference.values())
        outputs = ", ".join(self.model_difference)
        return (f"kfp checkpoint resume: {self.step} killed{at} (exit {self.killed.exit_code}, "
                f"{self.killed.seconds:.0f}s), resumed{resumed} ({self.retried.seconds:.0f}s); {outputs}: "
                f"{'the same as' if same else 'DIFFERENT from'} an uninterrupted local run")


def _documents(package: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    docs = list(yaml.safe_load_all(package.read_text()))
    return docs[0], (docs[1] if len(docs) > 1 else {})


def cpu_image(image: str, root: Path) -> str:
    """`image`, or a CPU-buildable image holding the same components when its environment is GPU-only."""
    catalog = yaml.safe_load((root / "environments" / "images.yaml").read_text())["images"]
    name, _, tag = image.rpartition("/")[2].partition(":")
    entry = catalog.get(name)
    if entry is None or entry.get("cpu_buildable", False):
        return image
    wanted = set(entry.get("components", []))
    for other, spec in catalog.items():
        if spec.get("cpu_buildable") and wanted <= set(spec.get("components", [])):
            return image.replace(f"/{name}:", f"/{other}:")
    raise ResumeBroken(f"{image}: no CPU-buildable image in environments/images.yaml holds {sorted(wanted)}")


def _local_runs(graph: PipelineGraph, step: str, home: Path) -> rec.RunRecord:
    """Run the step's ancestors, then the step itself uninterrupted, locally (the reference and the inputs)."""
    order = [n for n in graph.order if n in graph.upstream_closure({step})]
    record = None
    for name in order:
        record = LocalRunner(graph, RunOptions(home=home, only_step=name)).run()
        if record.steps[name].status not in (rec.SUCCEEDED, rec.CACHED):
            raise ResumeBroken(f"the local run of '{name}' {record.steps[name].status}: {record.steps[name].reason}")
    assert record is not None
    return record


def home_of(local: rec.RunRecord) -> Path:
    """The state folder of a local run (`<home>/runs/<run id>`)."""
    return Path(local.folder).parents[1]


def _arguments(graph: PipelineGraph, step: str, local: rec.RunRecord, component_spec: Any) -> dict[str, Any]:
    """The task's arguments as the driver would resolve them: upstream artifacts and parameter values."""
    from kfp import dsl

    classes = {"system.Model": dsl.Model, "system.Dataset": dsl.Dataset}
    node = graph.nodes[step]
    arguments: dict[str, Any] = {}
    for name, binding in node.bindings.items():
        if isinstance(binding, OutputRef):
            produced = local.steps[binding.step].outputs[binding.output]
            if "path" in produced:
                title = component_spec.input_definitions.artifacts[name].artifact_type.schema_title
                arguments[name] = classes.get(title, dsl.Artifact)(name=name, uri=produced["path"], metadata={})
            else:
                arguments[name] = produced["value"]
        elif node.input_type(name).is_artifact:
            raise ResumeBroken(f"step '{step}' input '{name}': an imported artifact is not supported here")
        else:
            arguments[name] = graph.resolve_literal(binding)
    missing = [p for p, d in component_spec.input_definitions.parameters.items()
               if p not in arguments and not d.is_optional and not d.HasField("default_value")]
    if missing:
        raise ResumeBroken(f"step '{step}': no value for the task's parameters {missing}")
    return arguments


class TaskRun:
    """One compiled task, started as pods of it would be (see the module docstring)."""

    def __init__(self, graph: PipelineGraph, step: str, package: Path, local: rec.RunRecord, work: Path,
                 engine: PodmanService, hosts: dict[str, str]):
        from google.protobuf import json_format
        from kfp.pipeline_spec import pipeline_spec_pb2

        self.graph, self.step, self.local, self.work, self.engine = graph, step, local, work, engine
        self.hosts = hosts  # the Service names the ConfigMap's URI uses
        spec, platform = _documents(package)
        task = spec["root"]["dag"]["tasks"][step]
        component_name = task["componentRef"]["name"]
        self.component_name = component_name
        self.component_spec = json_format.ParseDict(spec["components"][component_name],
                                                    pipeline_spec_pb2.ComponentSpec())
        executor = spec["components"][component_name]["executorLabel"]
        self.executor = json_format.ParseDict(spec["deploymentSpec"]["executors"][executor],
                                              pipeline_spec_pb2.PipelineDeploymentConfig.ExecutorSpec())
        k8s = (platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {})
               .get("executors", {}).get(executor, {}))
        mounts = [m["mountPath"] for m in k8s.get("pvcMount", [])]
        if len(mounts) != 1:
            raise ResumeBroken(f"step '{step}': expected one PVC mount in the compiled task, found {mounts}")
        self.pvc_path = mounts[0]
        self.field_env = [e["name"] for e in k8s.get("fieldPathAsEnv", [])]
        self.image = cpu_image(self.executor.container.image, REPO)
        self.pvc = work / "pvc"
        self.pipeline_root = work / "pipeline-root"
        # The local run's state folder: its model cache is the base model an image would carry, at the same path,
        # so files that name the base model's folder (PEFT's README) agree with the local run's.
        self.home = home_of(local)
        for folder in (self.pvc, self.pipeline_root):
            folder.mkdir(parents=True, exist_ok=True)
            folder.chmod(0o777)  # the image's user (uid 10001) writes here, as on the pod's volumes
        for folder, _dirs, files in os.walk(self.home):  # model cache locks and temporary files, likewise
            os.chmod(folder, 0o777)
            for name in files:
                os.chmod(os.path.join(folder, name), 0o666)

    def _command_and_env(self, attempt: int) -> tuple[list[str], dict[str, str], Path]:
        from kfp.local import executor_input_utils, placeholder_utils
        from kfp.local.task_dispatcher import _extract_container_env_vars

        pipeline_resource = f"{self.graph.name}-attempt-{attempt}"  # a pod's own scratch
        task_resource = executor_input_utils.get_local_task_resource_name(self.component_name)
        task_root = Path(executor_input_utils.construct_local_task_root(str(self.pipeline_root), pipeline_resource,
                                                                       task_resource))
        executor_input = executor_input_utils.construct_executor_input(
            self.component_spec, _arguments(self.graph, self.step, self.local, self.component_spec),
            str(task_root), block_input_artifact=False)
        executor_input_dict = executor_input_utils.executor_input_to_dict(executor_input, self.component_spec)
        container = self.executor.container
        command = placeholder_utils.replace_placeholders(
            list(container.command) + list(container.args), executor_input_dict, pipeline_resource, task_resource,
            str(self.pipeline_root), RUN_ID)
        env = dict(_extract_container_env_vars(container))  # the ConfigMap's and Secret's too (run_resume)
        for name in self.field_env:
            env[name] = RUN_ID
        env["TUNELINE_HOME"] = str(self.home)  # the local run's model cache: the base model an image would carry
        env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", "1")
        env["PYTHONHASHSEED"] = os.environ.get("PYTHONHASHSEED", "0")  # as the local run (conformance __main__)
        old_umask = os.umask(0)
        try:
            task_root.mkdir(parents=True, exist_ok=True)  # launcher: prepareOutputFolders
            for out in executor_input_dict["outputs"].get("artifacts", {}).values():
                Path(out["artifacts"][0]["uri"]).parent.mkdir(parents=True, exist_ok=True)
        finally:
            os.umask(old_umask)
        return command, env, task_root

    def _mounts(self) -> dict[Path, str]:
        mounts = {self.pvc: self.pvc_path, self.pipeline_root: str(self.pipeline_root.resolve()),
                  self.home: str(self.home.resolve())}
        for binding in self.graph.nodes[self.step].bindings.values():
            if isinstance(binding, OutputRef):
                produced = self.local.steps[binding.step].outputs[binding.output]
                if "path" in produced:
                    mounts[Path(produced["path"])] = str(Path(produced["path"]).resolve())
        return mounts

    def entries(self) -> list[str]:
        """What the volume holds for the task: `<pvc>/<key>/<output>/<entry>`, hidden (in-progress) ones left out."""
        return sorted(p.name for key in self.pvc.iterdir() if key.is_dir() for out in key.iterdir() if out.is_dir()
                      for p in out.iterdir() if not p.name.startswith("."))

    def attempt(self, number: int, kill_after_checkpoint: bool) -> Attempt:
        command, env, task_root = self._command_and_env(number)
        read_only = [p for p in self._mounts() if p not in (self.pvc, self.pipeline_root, self.home)]
        started = time.time()
        container = self.engine.start_container(self.image, command, mounts=self._mounts(), env=env,
                                                read_only_mounts=read_only, name=f"kfp-resume-{os.getpid()}-{number}",
                                                hosts=self.hosts)
        try:
            if kill_after_checkpoint:
                deadline = time.time() + KILL_TIMEOUT_S
                checked = time.time()
                while not self.entries():
                    if time.time() - checked > 2:  # an API round trip: not on every look at the volume
                        checked = time.time()
                        container.handle.reload()
                        if container.handle.status == "exited" or checked > deadline:
                            raise ResumeBroken(f"step '{self.step}' ended or timed out before a checkpoint reached "
                                               f"the volume:\n{container.logs()[-3000:]}")
                    time.sleep(0.05)
                container.kill(signal.SIGTERM)  # the kubelet's first signal to an evicted pod
            code = container.wait(timeout=KILL_TIMEOUT_S)
            logs = container.logs()
        finally:
            container.remove()
        return Attempt(code, logs, task_root, time.time() - started, self.entries())


def run_resume(graph: PipelineGraph, work: Path, engine: PodmanService,
               mlflow: ClusterMlflow) -> list[ResumeResult]:
    steps = [n for n in graph.order if graph.nodes[n].component.spec.resume_outputs]
    if not steps:
        raise ResumeBroken(f"{graph.pipeline.path}: no step has a resume: true output")
    options = CompileOptions(image_registry=IMAGE_REGISTRY, image_tag=IMAGE_TAG)
    package = compile_graph(graph, ("kfp",), work / "compiled", options).folder / "kfp" / "pipeline.yaml"
    mlflow.give_pods_their_env(package)
    results = []
    for step in steps:
        local = _local_runs(graph, step, work / "local")
        task = TaskRun(graph, step, package, local, work / "kfp" / step, engine, mlflow.hosts)
        if not engine.has_image(task.image):
            raise ResumeBroken(f"image {task.image} is not built: run `make images` (TAG={IMAGE_TAG})")
        killed = task.attempt(1, kill_after_checkpoint=True)
        if killed.exit_code == 0 or not killed.entries:
            raise ResumeBroken(f"step '{step}': the killed attempt exited {killed.exit_code} with "
                               f"{killed.entries or 'nothing'} on the volume:\n{killed.logs[-3000:]}")
        retried = task.attempt(2, kill_after_checkpoint=False)
        newest = killed.entries[-1]
        if retried.exit_code != 0 or f"resumed from {newest}" not in retried.logs:
            raise ResumeBroken(f"step '{step}': the retried attempt exited {retried.exit_code} and did not say "
                               f"'resumed from {newest}':\n{retried.logs[-3000:]}")
        if retried.entries:
            raise ResumeBroken(f"step '{step}': the store stayed on the volume after success: {retried.entries}")
        differences = {}
        for name, spec in graph.nodes[step].component.spec.outputs.items():
            if not spec.type.is_artifact or spec.resume:
                continue
            produced = retried.task_root / name
            mine = Path(local.steps[step].outputs[name]["path"])
            differences[name] = artifact_difference(mine, produced) if produced.exists() else "missing"
        results.append(ResumeResult(step, killed, retried, newest, differences))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.conformance.kfp_resume",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("pipeline", help="pipeline YAML")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", help="parameter override")
    parser.add_argument("--work", default="build/conformance", help="scratch folder (emptied first)")
    args = parser.parse_args(argv)
    try:
        graph = build_graph(load_pipeline(args.pipeline, parse_set_pairs(args.set)))
    except SpecError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    work = Path(args.work).resolve() / Path(args.pipeline).stem / "kfp-resume"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    os.environ.setdefault("PYTHONHASHSEED", "0")
    saved = os.environ.pop("MLFLOW_TRACKING_URI", None)  # the local run keeps its own store under work/local
    try:
        with PodmanService.start(work / "podman") as engine, \
                ClusterMlflow.start(engine, work / "mlflow", REPO) as mlflow:
            results = run_resume(graph, work, engine, mlflow)
    except (ResumeBroken, KfpRunBroken) as exc:
        print(f"{args.pipeline}: kfp checkpoint resume: {exc}", file=sys.stderr)
        return 1
    finally:
        if saved is not None:
            os.environ["MLFLOW_TRACKING_URI"] = saved
    for result in results:
        print(result.line())
    return 0 if all(d is None for r in results for d in r.model_difference.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
