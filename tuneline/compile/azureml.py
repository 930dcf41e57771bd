"""Compile a pipeline graph to Azure ML: one command component YAML per step, a pipeline job, a schedule.

The files are written as plain YAML (importing azure-ai-ml costs seconds); the tests load every one of them
with azure-ai-ml's own loaders and `_validate()`. Command templates already use Azure ML's placeholder syntax,
so each component runs the step's command text unchanged. `code:` is the project root, relative to the file.
`when:` becomes an `if_else` control node testing a boolean output marked `is_control` (this needs
AZURE_ML_CLI_PRIVATE_FEATURES_ENABLED=true where the job is validated or submitted).

Retries are not carried over: a command node of an Azure ML pipeline job has no retry setting (only
parallel jobs have `retry_settings`), so `retry: {max, backoff_seconds, on}` applies to local and KFP runs;
on Azure ML a failed step fails the pipeline job, whatever its exit code.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ..graph import Node, PipelineGraph
from ..spec import Literal, OutputRef, ParamRef
from ..spec.models import IOType
from . import CompileError
from .options import CompileOptions
from .placement import resumable
from .schedule import azureml_schedule

COMPONENT_SCHEMA = "https://azuremlschemas.azureedge.net/latest/commandComponent.schema.json"
PIPELINE_SCHEMA = "https://azuremlschemas.azureedge.net/latest/pipelineJob.schema.json"
JOB_FILE = "pipeline_job.yml"
SCHEDULE_FILE = "schedule.yml"
_TYPES = {IOType.model: "custom_model"}  # the rest keep their names
_URI = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # azureml:, https:, abfss:, wasbs: ... left untouched


class _Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(data: Any) -> str:
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)


def azure_name(name: str) -> str:
    """Azure ML component names allow lower-case letters, digits and underscores."""
    return name.replace("-", "_")


def _io_type(graph: PipelineGraph, node: Node, name: str) -> str:
    kind = node.component.spec.inputs[name].type
    binding = node.bindings.get(name)
    if kind.is_artifact and isinstance(binding, OutputRef):
        # Azure ML refuses a uri_folder output into a custom_model input; our spec allows it.
        kind = graph.nodes[binding.step].component.spec.outputs[binding.output].type
    return _TYPES.get(kind, kind.value)


def component_dict(graph: PipelineGraph, node: Node, options: CompileOptions, code: str) -> dict[str, Any]:
    spec = node.component.spec
    inputs: dict[str, Any] = {}
    for name, item in spec.inputs.items():
        entry: dict[str, Any] = {"type": _io_type(graph, node, name)}
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
    outputs: dict[str, Any] = {}
    for name, item in spec.outputs.items():
        entry = {"type": _TYPES.get(item.type, item.type.value)}
        if item.description:
            entry["description"] = item.description
        if not item.type.is_artifact:
            # Azure ML passes small values between steps only as control outputs.
            entry["is_control"] = True
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
        "environment": options.images.azureml_environment(spec.environment),
        "command": " ".join(spec.command.split()),
    }


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
    return binding.value


def _local_path(value: str, root: Path, job_dir: Path) -> str:
    if _URI.match(value) or os.path.isabs(value):
        return value
    return os.path.relpath(root / value, job_dir)


def pipeline_dict(graph: PipelineGraph, options: CompileOptions, job_dir: Path,
                  component_files: dict[str, str]) -> dict[str, Any]:
    root = graph.pipeline.root
    inputs: dict[str, Any] = {}
    for name, spec in graph.pipeline.spec.params.items():
        value = graph.params[name]
        if spec.type.is_artifact:
            inputs[name] = {"type": _TYPES.get(spec.type, spec.type.value), "path": _local_path(value, root, job_dir)}
        else:
            inputs[name] = value
    jobs: dict[str, Any] = {}
    for name in graph.order:
        node = graph.nodes[name]
        job: dict[str, Any] = {"type": "command", "component": component_files[name]}
        profile = graph.compute(node)
        aml = profile.azureml if profile else None
        job["compute"] = f"azureml:{aml.cluster if aml else options.azureml_compute}"
        if node.bindings:
            values = {}
            for input_name in node.bindings:
                value = _input_value(graph, node, input_name)
                if isinstance(value, dict) and "path" in value:
                    value["path"] = _local_path(value["path"], root, job_dir)
                values[input_name] = value
            job["inputs"] = values
        if resumable(node):
            # Read-write mounted so a preempted, restarted job finds the checkpoints it already wrote.
            job["outputs"] = {"checkpoints": {"mode": "rw_mount"}}
        if aml is not None:
            resources: dict[str, Any] = {"instance_count": aml.nodes}
            if aml.instance_type:
                resources["instance_type"] = aml.instance_type
            if aml.shm_size:
                resources["shm_size"] = aml.shm_size
            job["resources"] = resources
            if aml.nodes > 1 or aml.processes_per_node > 1:
                job["distribution"] = {"type": "pytorch", "process_count_per_instance": aml.processes_per_node}
        if node.step.timeout_seconds:
            job["limits"] = {"timeout": int(node.step.timeout_seconds)}
        job["environment_variables"] = {"TUNELINE_STEP": name, "MLFLOW_DISABLE_TELEMETRY": "true"}
        jobs[name] = job
    for condition, names in _condition_groups(graph).items():
        key = f"when_{condition.step}_{condition.output}"
        if key in jobs:
            raise CompileError(f"step name '{key}' clashes with the condition node Azure ML needs")
        jobs[key] = {"type": "if_else",
                     "condition": f"${{{{parent.jobs.{condition.step}.outputs.{condition.output}}}}}",
                     "true_block": [f"${{{{parent.jobs.{n}}}}}" for n in names]}
    return {
        "$schema": PIPELINE_SCHEMA,
        "type": "pipeline",
        "display_name": graph.name,
        "experiment_name": graph.name,
        "description": graph.pipeline.spec.description or graph.name,
        "inputs": inputs,
        "settings": {"default_compute": f"azureml:{options.azureml_compute}", "force_rerun": options.no_cache,
                     "continue_on_step_failure": False},
        "jobs": jobs,
    }


def _condition_groups(graph: PipelineGraph) -> dict[OutputRef, list[str]]:
    groups: dict[OutputRef, list[str]] = {}
    for name in graph.order:
        cond = graph.nodes[name].condition
        if cond is not None:
            groups.setdefault(cond, []).append(name)
    return groups


@dataclass
class AzureMLResult:
    job: Path
    components: dict[str, Path]
    schedule: Path | None


def compile_azureml(graph: PipelineGraph, out: Path, options: CompileOptions) -> AzureMLResult:
    """Write `out/components/<step>.yml`, `out/pipeline_job.yml` and, with a schedule, `out/schedule.yml`."""
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
    schedule_path = None
    if graph.pipeline.spec.schedule is not None:
        schedule_path = out / SCHEDULE_FILE
        schedule_path.write_text(f"# Run as: az ml schedule create --file {SCHEDULE_FILE}\n" + dump_yaml(
            azureml_schedule(graph.pipeline.spec.schedule, graph.name, f"./{JOB_FILE}")))
    return AzureMLResult(job=job, components=files, schedule=schedule_path)
