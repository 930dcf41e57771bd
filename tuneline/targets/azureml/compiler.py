"""Compile a pipeline graph to Azure ML: one command component YAML per step, a pipeline job, a schedule.

The files are written as plain YAML (importing azure-ai-ml costs seconds); the tests load every one of them
with azure-ai-ml's own loaders and `_validate()`, with no private or preview feature flag set. `code:` is the
project root, relative to the file.

What Azure ML's runtime does with a command, and how the compiled command meets it (each rule is cited, and
executed, in `tools.conformance.azureml`):
- it pastes each input's value or mounted path into the command text and runs the text in a shell, so every
  placeholder is single-quoted here: a value with spaces stays one argument and `"category"` keeps its quotes;
- components have no primitive outputs, so a value output (a boolean gate, a model URI) is a `uri_folder` holding
  the value in a file named `value`, and an input bound to one reads that file with `$(cat ...)`;
- there is no supported condition node (`if_else` needs a private-preview flag), so a `when:` step takes the gate
  folder as an input and `tuneline.step.gate` runs its command only when the gate is true;
- `resources.instance_type` applies to Kubernetes compute only; on AmlCompute the VM size belongs to the cluster,
  so each cluster with an `instance_type` gets a `compute/<cluster>.yml` to create it with;
- a `resume: true` output (checkpoints) is `rw_mount`ed at a datastore path without `${{name}}`, so a job
  submitted again mounts the same folder, and the command runs behind `tuneline.step.resume`, which keys a
  store inside it by the step's inputs (`checkpoint_output`);
- a command node has no retry setting (only parallel jobs have `retry_settings`), so `retry: {max, backoff_seconds,
  on}` applies to local and KFP runs, and `retries:` is reported as a compile-time warning here;
- spot is a property of the cluster, not of a job: a profile with `spot: true` writes its compute file with
  `tier: low_priority` (AmlCompute's `tier`, azure-ai-ml `_schema/compute/aml_compute.py`). Azure ML does not
  restart a job whose low-priority node is preempted: the job fails and has to be submitted again
  (azure-ai-docs articles/machine-learning/how-to-create-attach-compute-cluster.md, "Use low-priority VMs"), and
  no retry setting applies to a command node (`tuneline submit --resubmit-preempted N` watches the job and
  submits it again: tuneline.targets.azureml.submit.resubmission). What a resubmission resumes from is the
  `resume: true` outputs above (the same rw_mount path for every submission); a spot step without one is warned
  about, since it starts over;
- each step's environment is its image, inline (`environment: {image: <registry>/<env>:<tag>}`): the same image
  string the KFP compiler writes, resolvable wherever the job is compiled (the control image has no
  environments/ folder) and needing nothing registered in the workspace first, only pull access to the registry
  (an ACR attached to the workspace, or the workspace identity with AcrPull). The default registry is Docker
  Hub's `tuneline/` namespace, which is warned about.
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ...graph import Node, PipelineGraph
from ...settings import AZUREML_DEFAULT_DATASTORE, HF_TOKEN_SECRET_VAR, TELEMETRY_OFF
from ...spec import Literal, OutputRef, ParamRef
from ...spec.command import OptionalBlock, Ref, Token
from ...spec.models import IOType
from ...step.gate import GATE_INPUT, GATE_MODULE, VALUE_FILE
from .. import CompileError
from ..images import DEFAULT_REGISTRY, deploy_image_env
from ..options import CompileOptions
from ..placement import loads_models, resumable
from ..stores import resume_items
from .options import AzureMLOptions
from .schedule import azureml_schedule

COMPONENT_SCHEMA = "https://azuremlschemas.azureedge.net/latest/commandComponent.schema.json"
PIPELINE_SCHEMA = "https://azuremlschemas.azureedge.net/latest/pipelineJob.schema.json"
COMPUTE_SCHEMA = "https://azuremlschemas.azureedge.net/latest/amlCompute.schema.json"
JOB_FILE = "pipeline_job.yml"
SCHEDULE_FILE = "schedule.yml"
_TYPES = {IOType.model: "custom_model"}  # the rest keep their names
_URI = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # azureml:, https:, abfss:, wasbs: ... left untouched
VALUE_FOLDER = "uri_folder"  # what a value output (and an input bound to one) becomes
CHECKPOINT_PATH = "tuneline/checkpoints"  # datastore folder of `resume: true` outputs (checkpoint_output)
LOW_PRIORITY, DEDICATED = "low_priority", "dedicated"  # AmlCompute `tier` values (azure-ai-ml ComputeTier)


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def default_compute(options: CompileOptions) -> str:
    """The compute of steps without an azureml compute profile (--azureml-compute)."""
    return options.of("azureml", AzureMLOptions()).compute


def hf_token_env(node: Node, options: CompileOptions) -> dict[str, str]:
    """The Key Vault secret holding HF_TOKEN, by URI, for a step that may download a gated Hub model: the step reads
    it with the compute's managed identity (tuneline/llm/ml/hubaccess.py), Azure ML's documented way for a job to
    get a secret (azure-ai-docs how-to-use-secrets-in-runs.md), as a job's environment variables are kept in plain
    text in its definition."""
    secret = options.of("azureml", AzureMLOptions()).hf_token_secret
    return {HF_TOKEN_SECRET_VAR: secret} if secret and loads_models(node) else {}


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


def azure_name(name: str) -> str:
    """Azure ML component names allow lower-case letters, digits and underscores."""
    return name.replace("-", "_")


def reads_value_file(node: Node, name: str) -> bool:
    """A value input fed by an upstream value output: on Azure ML it arrives as the folder holding the value."""
    return isinstance(node.bindings.get(name), OutputRef) and not node.input_type(name).is_artifact


def _io_type(graph: PipelineGraph, node: Node, name: str) -> str:
    kind = node.component.spec.inputs[name].type
    binding = node.bindings.get(name)
    if reads_value_file(node, name):
        return VALUE_FOLDER
    if kind.is_artifact and isinstance(binding, OutputRef):
        # Azure ML refuses a uri_folder output into a custom_model input; our spec allows it.
        kind = graph.nodes[binding.step].component.spec.outputs[binding.output].type
    return _TYPES.get(kind, kind.value)


def _quoted(ref: Ref, node: Node) -> str:
    """One placeholder as shell text. Azure ML pastes the value in; single quotes keep it one literal word."""
    if ref.kind == "inputs":
        if reads_value_file(node, ref.name):
            return f"\"$(cat '${{{{inputs.{ref.name}}}}}/{VALUE_FILE}')\""
        return f"'${{{{inputs.{ref.name}}}}}'"
    out = node.component.spec.outputs[ref.name]
    suffix = "" if out.type.is_artifact else f"/{VALUE_FILE}"
    return f"'${{{{outputs.{ref.name}}}}}{suffix}'"


def _word(token: Token, node: Node) -> str:
    return "".join(_quoted(p, node) if isinstance(p, Ref) else shlex.quote(p) for p in token)


def azureml_command(graph: PipelineGraph, node: Node) -> str:
    """The component's command as Azure ML should run it: quoted placeholders, value files, and the gate."""
    items = node.component.spec.command_items
    if resumable(node):
        items = resume_items(graph, node, in_output=True) + items
    words: list[str] = []
    for item in items:
        if isinstance(item, OptionalBlock):
            words.append("$[[" + " ".join(_word(t, node) for t in item.tokens) + "]]")
        else:
            words.append(_word(item, node))
    if node.condition is None:
        return " ".join(words)
    gate = ["python", "-m", GATE_MODULE, "--gate", f"'${{{{inputs.{GATE_INPUT}}}}}'"]
    for name, out in node.component.spec.outputs.items():
        kind = ("folder" if out.type.is_folder else "file") if out.type.is_artifact else out.type.value
        gate += ["--skip", f"{name}:{kind}:" + _quoted(Ref("outputs", name), node)]
    return " ".join(gate + ["--"] + words)


def component_environment(options: CompileOptions, environment: str) -> dict[str, str]:
    """The step's image inline, the same string its KFP container runs: it resolves wherever the job is compiled
    (the control image has no environments/ folder to name a registered environment from), and an image lock
    pins it by digest for both targets."""
    return {"image": options.images.image(environment)}


def component_dict(graph: PipelineGraph, node: Node, options: CompileOptions, code: str) -> dict[str, Any]:
    spec = node.component.spec
    inputs: dict[str, Any] = {}
    for name, item in spec.inputs.items():
        entry: dict[str, Any] = {"type": _io_type(graph, node, name)}
        if reads_value_file(node, name):
            entry["description"] = (f"{item.description + ' ' if item.description else ''}"
                                    f"(the {item.type.value} in {VALUE_FILE} of the upstream value folder)")
            inputs[name] = entry
            continue
        if item.description:
            entry["description"] = item.description
        if item.default is not None:
            entry["default"] = item.default
        if item.optional or (item.default is not None and not item.type.is_artifact):
            entry["optional"] = True
        if item.min is not None:
            entry["min"] = int(item.min) if item.type == IOType.integer else item.min
        if item.max is not None:
            entry["max"] = int(item.max) if item.type == IOType.integer else item.max
        if item.enum is not None:
            entry["enum"] = list(item.enum)
        inputs[name] = entry
    if node.condition is not None:
        if GATE_INPUT in inputs:
            raise CompileError(f"step '{node.name}': input name '{GATE_INPUT}' is reserved for the `when:` gate")
        inputs[GATE_INPUT] = {"type": VALUE_FOLDER, "description": f"gate: runs only when {node.condition} is true"}
    outputs: dict[str, Any] = {}
    for name, item in spec.outputs.items():
        if item.type.is_artifact:
            entry = {"type": _TYPES.get(item.type, item.type.value)}
            if item.description:
                entry["description"] = item.description
        else:
            # Azure ML components have no primitive outputs: the value goes into a file in a folder.
            entry = {"type": VALUE_FOLDER, "description": f"{item.description + ' ' if item.description else ''}"
                                                          f"({item.type.value} in {VALUE_FILE})"}
        outputs[name] = entry
    return {
        "$schema": COMPONENT_SCHEMA,
        "type": "command",
        "name": azure_name(spec.name),
        "version": spec.version,
        "display_name": spec.name,
        "description": spec.description or spec.name,
        "is_deterministic": node.cache_enabled,
        "inputs": inputs,
        "outputs": outputs,
        "code": code,
        "environment": component_environment(options, node.environment),
        "command": azureml_command(graph, node),
    }


def checkpoint_output(graph: PipelineGraph, node: Node, output: str) -> dict[str, Any]:
    """A `resume: true` output: read-write mounted at a datastore path that does not change between jobs.

    rw_mount writes through to the datastore as the job writes (how-to-read-write-data-v2, "Supported modes"), so
    checkpoints survive a preempted or killed job. The default output path holds `${{name}}`, the job's own name
    (how-to-manage-inputs-outputs-pipeline, "Customize output path"), which a re-submitted job does not share;
    this path names only the pipeline, the step and the output. The resume wrapper keys a folder inside it by the
    step's inputs (tuneline.step.resume), so a job with other inputs never resumes another's checkpoints.
    """
    return {"type": "uri_folder", "mode": "rw_mount",
            "path": f"azureml://datastores/${{{{default_datastore}}}}/paths/{CHECKPOINT_PATH}/{graph.name}/"
                    f"{node.name}/{output}/"}


def _check_quotable(where: str, value: Any) -> None:
    if isinstance(value, str) and "'" in value:
        raise CompileError(f"{where}: Azure ML pastes values into the command's shell text, and a value holding a "
                           f"single quote cannot be quoted there: {value!r}")


def _input_value(graph: PipelineGraph, node: Node, name: str) -> Any:
    binding = node.bindings[name]
    if isinstance(binding, ParamRef):
        return f"${{{{parent.inputs.{binding.name}}}}}"
    if isinstance(binding, OutputRef):
        return f"${{{{parent.jobs.{binding.step}.outputs.{binding.output}}}}}"
    assert isinstance(binding, Literal)
    kind = node.input_type(name)
    if kind.is_artifact:
        return {"type": _TYPES.get(kind, kind.value), "path": binding.value}
    _check_quotable(f"step '{node.name}' input '{name}'", binding.value)
    return binding.value


def _local_path(value: str, root: Path, job_dir: Path) -> str:
    if _URI.match(value) or os.path.isabs(value):
        return value
    return os.path.relpath(root / value, job_dir)


def _warnings(graph: PipelineGraph, options: CompileOptions) -> list[str]:
    out = []
    unsized: set[str] = set()
    where = graph.pipeline.path.name
    for name in graph.order:
        node = graph.nodes[name]
        if node.retries:
            out.append(f"{where}:{name}: retries: {node.retries} is not applied on Azure ML "
                       f"(a command job has no retry setting: its first failure, a preemption included, fails the "
                       f"pipeline until it is submitted again)")
        profile = graph.compute(node)
        aml = profile.azureml if profile else None
        if aml is not None and aml.spot and not resumable(node):
            out.append(f"{where}:{name}: runs on low-priority cluster '{aml.cluster}' but has no `resume: true` "
                       f"output: submitted again after a preemption, it starts from the beginning")
        if aml is not None and not aml.instance_type and aml.cluster not in unsized:
            unsized.add(aml.cluster)
            tier = " with `tier: low_priority`" if aml.spot else ""
            out.append(f"{where}:{name}: cluster '{aml.cluster}' has no instance_type, so no compute file is written "
                       f"for it and `tuneline submit` cannot create it: create it yourself{tier} before submitting")
    if graph.pipeline.spec.schedule is not None:
        for name, spec in graph.pipeline.spec.params.items():
            value = graph.params[name]
            if spec.type.is_artifact and isinstance(value, str) and not _URI.match(value):
                out.append(f"{where}: parameter '{name}' is the local path {value}: a scheduled job reads the copy "
                           f"uploaded when the schedule is created; give data that changes as an "
                           f"azureml://datastores/<store>/paths/<path> URI")
    if options.images.registry == DEFAULT_REGISTRY:
        out.append(f"{where}: images come from the default registry '{DEFAULT_REGISTRY}/' (Docker Hub): set "
                   f"`images.registry` or --image-registry to the registry your workspace pulls from")
    return out


def scheduled_job(job_file: str) -> dict[str, Any]:
    """The schedule's job: the pipeline job with `force_rerun: true`.

    Every scheduled run gets the same inputs (the same data paths; a local path is uploaded once, when the
    schedule is created), and Azure ML reuses a deterministic node's earlier outputs when its inputs and settings
    are unchanged (reference-yaml-component-command `is_deterministic`), so without it each run after the first
    would reuse the first one's model: a schedule that never retrains. The override is merged into the job file
    (reference-yaml-schedule `create_job`: a job file plus `settings`; azure-ai-ml
    `_schema/schedule/create_job.py`, `BaseCreateJobSchema.make`).
    """
    return {"type": "pipeline", "job": job_file, "settings": {"force_rerun": True}}


def compute_dicts(graph: PipelineGraph) -> dict[str, dict[str, Any]]:
    """AmlCompute clusters to create, one per cluster whose profile names an `instance_type` (its VM size)."""
    clusters: dict[str, dict[str, Any]] = {}
    for profile_name, profile in graph.pipeline.spec.compute.items():
        aml = profile.azureml
        if aml is None or not aml.instance_type:
            continue
        known = clusters.get(aml.cluster)
        if known is not None and known["size"] != aml.instance_type:
            raise CompileError(f"compute profile '{profile_name}': cluster '{aml.cluster}' is "
                               f"{known['size']} in another profile, not {aml.instance_type}")
        tier = LOW_PRIORITY if aml.spot else DEDICATED
        if known is not None and known["tier"] != tier:
            raise CompileError(f"compute profile '{profile_name}': cluster '{aml.cluster}' is {known['tier']} in "
                               f"another profile, not {tier} (spot is a property of the whole cluster)")
        nodes = max(aml.nodes, known["max_instances"] if known else 1)
        clusters[aml.cluster] = {"$schema": COMPUTE_SCHEMA, "name": aml.cluster, "type": "amlcompute",
                                 "size": aml.instance_type, "tier": tier, "min_instances": 0,
                                 "max_instances": nodes, "idle_time_before_scale_down": 600}
    return clusters


def cluster_conflicts(graphs: list[PipelineGraph]) -> list[str]:
    """Clusters that two pipelines define differently. A workspace has one cluster per name, and whichever
    pipeline is submitted first creates it (`tuneline submit` refuses a later tier mismatch; a size or node-count
    mismatch would silently run the other pipeline on the first one's VMs), so across the pipelines of a project
    each cluster name must have one VM size, one tier and one node limit."""
    seen: dict[str, tuple[str, dict[str, Any]]] = {}
    problems = []
    for graph in graphs:
        where = graph.pipeline.path.name
        for cluster, body in compute_dicts(graph).items():
            wanted = {k: body[k] for k in ("size", "tier", "max_instances")}
            if cluster not in seen:
                seen[cluster] = (where, wanted)
            elif seen[cluster][1] != wanted:
                first, known = seen[cluster]
                problems.append(f"{where}: cluster '{cluster}' is {wanted} here but {known} in {first}: one "
                                f"workspace cluster cannot be both; name the cluster differently in one profile")
    return problems


def pipeline_dict(graph: PipelineGraph, options: CompileOptions, job_dir: Path,
                  component_files: dict[str, str]) -> dict[str, Any]:
    root = graph.pipeline.root
    inputs: dict[str, Any] = {}
    for name, spec in graph.pipeline.spec.params.items():
        value = graph.params[name]
        if spec.type.is_artifact:
            inputs[name] = {"type": _TYPES.get(spec.type, spec.type.value), "path": _local_path(value, root, job_dir)}
        else:
            _check_quotable(f"parameter '{name}'", value)
            inputs[name] = value
    jobs: dict[str, Any] = {}
    for name in graph.order:
        node = graph.nodes[name]
        job: dict[str, Any] = {"type": "command", "component": component_files[name]}
        profile = graph.compute(node)
        aml = profile.azureml if profile else None
        job["compute"] = f"azureml:{aml.cluster if aml else default_compute(options)}"
        values = {}
        for input_name in node.bindings:
            value = _input_value(graph, node, input_name)
            if isinstance(value, dict) and "path" in value:
                value["path"] = _local_path(value["path"], root, job_dir)
            values[input_name] = value
        if node.condition is not None:
            values[GATE_INPUT] = f"${{{{parent.jobs.{node.condition.step}.outputs.{node.condition.output}}}}}"
        if values:
            job["inputs"] = values
        if resumable(node):
            job["outputs"] = {name: checkpoint_output(graph, node, name) for name in node.component.spec.resume_outputs}
        if aml is not None:
            # instance_type is for Kubernetes compute only; an AmlCompute cluster has one VM size (compute/*.yml).
            resources: dict[str, Any] = {"instance_count": aml.nodes}
            if aml.shm_size:
                resources["shm_size"] = aml.shm_size
            job["resources"] = resources
            if aml.nodes > 1 or aml.processes_per_node > 1:
                job["distribution"] = {"type": "pytorch", "process_count_per_instance": aml.processes_per_node}
        if node.step.timeout_seconds:
            job["limits"] = {"timeout": int(node.step.timeout_seconds)}
        job["environment_variables"] = {"TUNELINE_STEP": name, **TELEMETRY_OFF,
                                        **deploy_image_env(node.component.spec.deploys_image, options.images),
                                        **hf_token_env(node, options)}
        jobs[name] = job
    return {
        "$schema": PIPELINE_SCHEMA,
        "type": "pipeline",
        "display_name": graph.name,
        "experiment_name": graph.name,
        "description": graph.pipeline.spec.description or graph.name,
        "inputs": inputs,
        # default_datastore pinned: a step that registers its output's files names their datastore URI, which
        # holds the default datastore (tuneline.llm.workspace_files), and a workspace's default may be another.
        "settings": {"default_compute": f"azureml:{default_compute(options)}",
                     "default_datastore": f"azureml:{AZUREML_DEFAULT_DATASTORE}", "force_rerun": options.no_cache,
                     "continue_on_step_failure": False},
        "jobs": jobs,
    }


@dataclass
class AzureMLResult:
    job: Path
    components: dict[str, Path]
    schedule: Path | None
    computes: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def compile_azureml(graph: PipelineGraph, out: Path, options: CompileOptions) -> AzureMLResult:
    """Write `out/components/<step>.yml`, `out/pipeline_job.yml`, `out/compute/<cluster>.yml` and, with a
    schedule, `out/schedule.yml`."""
    (out / "components").mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    refs: dict[str, str] = {}
    for name in graph.order:
        node = graph.nodes[name]
        path = out / "components" / f"{name}.yml"
        code = os.path.relpath(graph.pipeline.root, path.parent)
        path.write_text(f"# Step '{name}' of pipeline '{graph.name}' (component {node.component.spec.name}).\n"
                        + dump_yaml(component_dict(graph, node, options, code)))
        files[name] = path
        refs[name] = f"./components/{name}.yml"
    job = out / JOB_FILE
    header = (f"# Azure ML pipeline job compiled from {graph.pipeline.path.name}.\n"
              f"# Run as: az ml job create --file {JOB_FILE}   (or: tuneline submit --target azureml ...)\n")
    job.write_text(header + dump_yaml(pipeline_dict(graph, options, out, refs)))
    computes = []
    for cluster, body in compute_dicts(graph).items():
        (out / "compute").mkdir(exist_ok=True)
        path = out / "compute" / f"{cluster}.yml"
        path.write_text(f"# Run as: az ml compute create --file compute/{cluster}.yml   (once per workspace)\n"
                        + dump_yaml(body))
        computes.append(path)
    schedule_path = None
    if graph.pipeline.spec.schedule is not None:
        schedule_path = out / SCHEDULE_FILE
        body = azureml_schedule(graph.pipeline.spec.schedule, graph.name, f"./{JOB_FILE}")
        body["create_job"] = scheduled_job(body["create_job"])
        schedule_path.write_text(f"# Run as: az ml schedule create --file {SCHEDULE_FILE}\n" + dump_yaml(body))
    return AzureMLResult(job=job, components=files, schedule=schedule_path, computes=computes,
                         warnings=_warnings(graph, options))
