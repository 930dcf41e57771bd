"""Compile a pipeline graph to a Kubeflow Pipelines v2 package (IR YAML) with kfp and kfp-kubernetes.

Each step becomes one container component that runs the step's own command line: artifacts are
`Input[Dataset|Model]` / `Output[...]` paths, small values are parameters, and a value output (a boolean gate)
is a `dsl.OutputPath(<type>)` file the program writes JSON to, which KFP reads back as an output parameter.
Every command starts behind `tuneline.step.outdirs`, so folder outputs exist as they do locally and on Azure ML.
`when:` is not a `dsl.If`: the step takes the gate as a boolean input and `tuneline.step.gate` runs its command
only when the gate is true, as on Azure ML, so every target has one semantics for conditions (the spec validator's).
Data from outside the pipeline (an artifact parameter or literal) comes in through a `dsl.importer`, which takes
object-store URIs only (`gs://`, `s3://`, `minio://`: backend/src/v2/component/importer_launcher.go and
`Artifact._get_path` in kfp/dsl/types/artifact_types.py), and only from the pipeline root's bucket: KFP's
launcher opens the root's bucket with the object store's credentials and any other one with none
(backend/src/v2/component/launcher_v2.go fetchNonDefaultBuckets, 2.14.0 to 2.17.0; a `minio://` bucket then has
no driver at all). Anything else is refused at compile time with the file, line and field it came from.
Each import is followed by a `fingerprint` task (`tuneline.step.fingerprint`)
whose content digest is a parameter of every step reading the data, so KFP's name-based cache sees the content.
A step with a `resume: true` output mounts the checkpoint PVC, gets `TUNELINE_CHECKPOINT_ROOT`, and runs behind
`tuneline.step.resume`, which keeps its checkpoints on the volume under a key of its inputs: an output artifact
path is per-pod scratch, gone when a preempted pod is retried. A step that loads a model (an input of kind
model_ref) mounts it too and keeps its Hugging Face cache there (`HF_HOME`), with `HF_TOKEN` from `--hf-secret`.
A multi-node step becomes a launcher task that runs it as a Kubeflow Trainer TrainJob (`trainjob.py`, the default)
or a PyTorchJob (`pytorchjob.py`); see `launch.py`. The launcher task runs in the control image, which has the
`kubernetes` client (the job's pods run the step's own image).
"""

from __future__ import annotations

import inspect
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kfp import compiler, dsl, kubernetes
from kfp.dsl import Dataset, Input, Model, Output

from ...graph import Node, PipelineGraph
from ...settings import SPOT_LABEL, SPOT_VALUE, TELEMETRY_OFF
from ...spec import Literal, OutputRef, ParamRef, Problem, SpecError
from ...spec.command import Item, OptionalBlock, Ref, Token, leading_words
from ...spec.models import IOType
from ...step.fingerprint import FINGERPRINT_MODULE
from ...step.gate import GATE_INPUT, GATE_MODULE
from ...step.outdirs import OUTDIRS_MODULE
from .. import PIPELINE_FILE, CompileError
from ..command import torchrun_prefix
from ..images import deploy_image_env
from ..options import CompileOptions
from ..placement import CHECKPOINT_MOUNT, GPU_RESOURCE, Placement, loads_models, placement, resumable
from ..stores import resume_items
from .jobpod import dns_1035, pod_parts
from .launch import LAUNCH_MODULE, POD_NAME_ENV, POD_UID_ENV, staged_command
from .options import (
    DEFAULT_KFP_PIPELINE_ROOT,
    HF_CACHE_DIR,
    HF_SECRET_KEYS,
    MLFLOW_CONFIG_KEYS,
    MLFLOW_SECRET_KEYS,
    KfpOptions,
)
from .pytorchjob import pytorchjob_manifest
from .trainjob import trainjob_manifest

_VALUE_TYPES: dict[IOType, type] = {IOType.string: str, IOType.integer: int, IOType.number: float,
                                    IOType.boolean: bool}
_KW = inspect.Parameter.KEYWORD_ONLY
OBJECT_STORE_PREFIXES = ("gs://", "s3://", "minio://")  # what the backend's importer and launcher can fetch
FINGERPRINT_PREFIX = "tuneline_sha256_"  # + input name: the digest parameter of an imported artifact input
# The image the multi-node launcher task runs in: environments/control installs the `kubernetes` client
# (pyproject.toml's `platform` extra), which the training images do not carry.
LAUNCHER_ENVIRONMENT = "control"
RETRY_ATTEMPT_WITHOUT_TIMEOUT = 24 * 3600
RETRY_SCHEDULING_ALLOWANCE = 3600


def artifact_class(kind: IOType) -> type:
    return Model if kind == IOType.model else Dataset


@dataclass
class _Port:
    name: str
    kind: IOType
    is_output: bool
    artifact_kind: IOType | None = None  # the type the KFP edge carries (its producer's, when bound)


def _ports(graph: PipelineGraph, node: Node) -> list[_Port]:
    ports = []
    for name, spec in node.component.spec.inputs.items():
        binding = node.bindings.get(name)
        if binding is None and spec.optional and spec.default is None:
            # Never set (each step's component is its own): its `$[[...]]` block is dropped at compile time, so
            # the backend never sees it (tools.conformance.kfp_backend). kfp.local would pass it on as null and
            # fail (`executor_input_to_dict` casts a null integer with int(); tools.conformance.kfp, K9).
            continue
        kind = spec.type
        if isinstance(binding, OutputRef):
            # KFP type-checks edges strictly; our spec lets a uri_folder feed a model input, an integer a number.
            kind_carried = graph.nodes[binding.step].component.spec.outputs[binding.output].type
        else:
            kind_carried = kind
        ports.append(_Port(name, kind, False, kind_carried))
    ports += [_Port(name, spec.type, True, spec.type) for name, spec in node.component.spec.outputs.items()]
    if node.condition is not None:
        if GATE_INPUT in {p.name for p in ports}:
            raise CompileError(f"step '{node.name}': input name '{GATE_INPUT}' is reserved for the `when:` gate")
        ports.append(_Port(GATE_INPUT, IOType.boolean, False, IOType.boolean))
    for name in imported_inputs(node):
        if name.startswith(FINGERPRINT_PREFIX):
            raise CompileError(f"step '{node.name}': input names starting '{FINGERPRINT_PREFIX}' are reserved")
        ports.append(_Port(FINGERPRINT_PREFIX + name, IOType.string, False, IOType.string))
    return ports


def imported_inputs(node: Node) -> list[str]:
    """Artifact inputs bound to a parameter or literal: KFP imports them from a URI."""
    return [name for name, binding in node.bindings.items()
            if node.input_type(name).is_artifact and not isinstance(binding, OutputRef)]


def _is_internal(port: _Port) -> bool:
    """Inputs the compiler adds (the gate, data fingerprints), not the component's own."""
    return port.name == GATE_INPUT or port.name.startswith(FINGERPRINT_PREFIX)


def _annotation(port: _Port, optional: bool) -> Any:
    if port.is_output:
        if port.kind.is_artifact:
            return Output[artifact_class(port.artifact_kind)]
        return dsl.OutputPath(_VALUE_TYPES[port.kind])
    base = Input[artifact_class(port.artifact_kind)] if port.kind.is_artifact else _VALUE_TYPES[port.artifact_kind]
    return typing.Optional[base] if optional else base  # noqa: UP007,UP045 - kfp reads typing.Optional


def _parameter(node: Node, port: _Port) -> inspect.Parameter:
    if port.name in ("self",) or not port.name.isidentifier():
        raise CompileError(f"step '{node.name}': '{port.name}' cannot be a KFP parameter name")
    try:
        if port.is_output or _is_internal(port):
            return inspect.Parameter(port.name, _KW, annotation=_annotation(port, False))
        spec = node.component.spec.inputs[port.name]
        bound = port.name in node.bindings
        if spec.default is not None and not bound:
            return inspect.Parameter(port.name, _KW, annotation=_annotation(port, False), default=spec.default)
        if spec.optional and not bound:
            return inspect.Parameter(port.name, _KW, annotation=_annotation(port, True), default=None)
        return inspect.Parameter(port.name, _KW, annotation=_annotation(port, False))
    except ValueError as exc:  # a Python keyword used as a name
        raise CompileError(f"step '{node.name}': '{port.name}' cannot be a KFP parameter name: {exc}") from None


def _placeholder(ref: Ref, ports: dict[str, _Port], args: dict[str, Any]) -> Any:
    port = ports[ref.name]
    value = args[ref.name]
    return value.path if port.kind.is_artifact else value


def _kfp_token(token: Token, ports: dict[str, _Port], args: dict[str, Any]) -> str:
    """One argv element as plain text: a reference becomes the placeholder string the backend's launcher replaces
    (`strings.ReplaceAll` on every argument, backend/src/v2/component/launcher_v2.go), so text around it stays.
    Never a `{"Concat": ...}`: neither the driver nor the launcher resolves one (kfp.local does)."""
    return "".join(p if isinstance(p, str) else str(_placeholder(p, ports, args)) for p in token)


def _kfp_items(items: list[Item], ports: dict[str, _Port], args: dict[str, Any]) -> list[str]:
    """Optional blocks are decided here, not by an `{"IfPresent": ...}` placeholder, which the backend resolves only
    from 2.17.0 and only for parameters (backend/src/v2/driver/util.go, `resolveCondition`). At compile time the
    answer is already known: every input that has a port is bound or has a default, and the task passes it (see
    `_Builder._build_dag`), so it is present on every run; an input with no port is never set (see `_ports`)."""
    out: list[str] = []
    for item in items:
        if isinstance(item, OptionalBlock):
            if all(name in ports for name in item.inputs):
                out.extend(_kfp_token(t, ports, args) for t in item.tokens)
        else:
            out.append(_kfp_token(item, ports, args))
    return out


def _container_component(name: str, params: list[inspect.Parameter], build: Any) -> Any:
    def component(*args: Any) -> dsl.ContainerSpec:
        return build(dict(zip([p.name for p in params], args, strict=True)))

    component.__name__ = name
    component.__doc__ = None
    component.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    return dsl.container_component(component)


def _launcher_items(node: Node, ports: list[_Port], manifest: dict[str, Any], place: Placement) -> list[Item]:
    """The launcher's own command: every input and output of the step handed over as name=value."""
    items: list[Item] = [("python",), ("-m",), (LAUNCH_MODULE,), ("--step",), (node.name,),
                         ("--nodes",), (str(place.nodes),), ("--procs",), (str(place.processes_per_node),),
                         ("--template",), (node.component.spec.command,),
                         ("--manifest",), (json.dumps(manifest, sort_keys=True, separators=(",", ":")),)]
    for port in ports:
        if _is_internal(port):
            continue  # the gate wrapper reads the gate; a fingerprint only keys the cache
        flag = "--output" if port.is_output else ("--artifact" if port.kind.is_artifact else "--value")
        pair: tuple[Token, ...] = ((flag,), (f"{port.name}=", Ref("outputs" if port.is_output else "inputs",
                                                                 port.name)))
        spec = None if port.is_output else node.component.spec.inputs[port.name]
        if spec is not None and spec.optional and spec.default is None and port.name not in node.bindings:
            items.append(OptionalBlock((port.name,), pair))
        else:
            items.extend(pair)
    return items


def _gated(items: list[Item], ports: list[_Port]) -> list[Item]:
    """The command behind the gate wrapper, which fills every output when the gate is false."""
    gate: list[Item] = [("python",), ("-m",), (GATE_MODULE,), ("--gate",), (Ref("inputs", GATE_INPUT),)]
    for port in ports:
        if port.is_output:
            kind = ("folder" if port.kind.is_folder else "file") if port.kind.is_artifact else port.kind.value
            gate += [("--skip",), (f"{port.name}:{kind}:", Ref("outputs", port.name))]
    return gate + [("--",)] + items


def store_bucket(uri: Any) -> tuple[str, str] | None:
    """(scheme, bucket) of an object-store URI, None for anything else."""
    text = str(uri)
    prefix = next((p for p in OBJECT_STORE_PREFIXES if text.startswith(p)), None)
    if prefix is None:
        return None
    return prefix, text[len(prefix):].partition("/")[0]


def bucket_problem(uri: Any, pipeline_root: str = DEFAULT_KFP_PIPELINE_ROOT) -> str | None:
    """Why KFP's launcher cannot read the object-store URI `uri` where artifacts live under `pipeline_root`.
    The launcher hands the store's credentials only to the pipeline root's bucket; any other bucket is opened
    without them: `blob.OpenBucket("minio://...")` has no driver (only gcsblob and s3blob are linked), and an
    s3:// or gs:// one would need credentials in the pod's environment, which no compiled pod has
    (launcher_v2.go fetchNonDefaultBuckets and objectstore/object_store.go OpenBucket, 2.14.0; 2.17.0 builds a
    default AWS client that does not reach the in-cluster store)."""
    found, root = store_bucket(uri), store_bucket(pipeline_root)
    if found is None or root is None or found == root:
        return None
    return (f"it is not in the pipeline root's bucket ({pipeline_root}), and KFP's launcher opens any other bucket "
            f"without the object store's credentials; put the data under {root[0]}{root[1]}/")


def importer_uri_problem(uri: Any, pipeline_root: str = DEFAULT_KFP_PIPELINE_ROOT) -> str | None:
    text = str(uri)
    prefix = next((p for p in OBJECT_STORE_PREFIXES if text.startswith(p)), None)
    if prefix is None:
        return "KFP's importer takes object-store URIs only (gs://, s3://, minio://)"
    bucket, _, key = text[len(prefix):].partition("/")
    if not bucket or not key:
        return f"expected {prefix}<bucket>/<path>"
    return bucket_problem(text, pipeline_root)


def _root_bucket(pipeline_root: str) -> str:
    found = store_bucket(pipeline_root)
    return f"{found[0]}{found[1]}" if found else "s3://<bucket>"


def check_importable(graph: PipelineGraph, pipeline_root: str = DEFAULT_KFP_PIPELINE_ROOT) -> None:
    """Every URI an importer would get at its compiled default must be one the backend can fetch from a cluster
    whose artifacts live under `pipeline_root`; the error names the file, line and field the value comes from (a
    parameter's `default`/`target_defaults`, a step input, or --set)."""
    pipeline = graph.pipeline
    problems: list[Problem] = []
    seen: set[Any] = set()
    for node in graph.nodes.values():
        for name in imported_inputs(node):
            binding = node.bindings[name]
            if isinstance(binding, ParamRef):
                value = graph.params[binding.name]
                spec = pipeline.spec.params[binding.name]
                if "kfp" in spec.target_defaults and value == spec.target_defaults["kfp"]:
                    loc: tuple[Any, ...] = ("params", binding.name, "target_defaults", "kfp")
                elif value == spec.default:
                    loc = ("params", binding.name, "default")
                else:
                    loc = ("params", binding.name)
                field_name = f"params.{binding.name}" + ("" if len(loc) == 2 else "." + ".".join(loc[2:]))
                origin = "" if len(loc) > 2 else f" (from --set {binding.name}=...)"
                hint = (f"give it `target_defaults: {{kfp: {_root_bucket(pipeline_root)}/<path>}}` or "
                        f"--set {binding.name}=<URI> at compile time")
            else:
                value = binding.value
                loc = ("steps", node.name, "inputs", name)
                field_name, origin = f"steps.{node.name}.inputs.{name}", ""
                hint = "bind it to a pipeline parameter with an object-store URI for kfp"
            problem = importer_uri_problem(value, pipeline_root)
            if problem and loc not in seen:
                seen.add(loc)
                problems.append(pipeline.source.problem(loc, f"{field_name}{origin}: '{value}' cannot be imported "
                                                             f"on KFP: {problem}; {hint}"))
    if problems:
        raise SpecError(problems)


def _with_output_folders(items: list[Item], ports: list[_Port]) -> list[Item]:
    """The command behind `tuneline.step.outdirs`, which creates every folder output and file output's folder
    first: KFP's launcher creates only their parents."""
    prefix: list[Item] = [("python",), ("-m",), (OUTDIRS_MODULE,)]
    for port in ports:
        if port.is_output:
            prefix += [("--folder" if port.kind.is_folder else "--file",), (Ref("outputs", port.name),)]
    return prefix + [("--",)] + items


@dataclass
class KfpResult:
    pipeline: Path
    manifests: list[Path]


class _Builder:
    def __init__(self, graph: PipelineGraph, options: CompileOptions):
        self.graph = graph
        self.options = options
        self.kfp = options.of("kfp", KfpOptions())
        self.components: dict[str, Any] = {}
        self.manifests: dict[str, dict[str, Any]] = {}
        self.placements = {name: placement(graph, graph.nodes[name]) for name in graph.order}
        self._fingerprints: dict[Any, Any] = {}
        check_importable(graph, self.kfp.pipeline_root)
        for name in graph.order:
            self.components[name] = self._component(graph.nodes[name])

    def image(self, node: Node) -> str:
        return self.options.images.image(node.environment)

    def _component(self, node: Node) -> Any:
        ports = _ports(self.graph, node)
        by_name = {p.name: p for p in ports}
        params = [_parameter(node, p) for p in ports]
        place = self.placements[node.name]
        items = node.component.spec.command_items
        image = self.image(node)
        if place.nodes > 1:
            manifest = self._manifest(node, place, items)
            self.manifests[node.name] = manifest
            items = _launcher_items(node, ports, manifest, place)
            image = self.options.images.image(LAUNCHER_ENVIRONMENT)
        elif place.processes_per_node > 1:
            words = leading_words(items)
            items = [(w,) for w in torchrun_prefix(words, 1, place.processes_per_node)] + items[1:]
        if place.nodes == 1 and resumable(node):
            # The output path is per-pod scratch: the wrapper keys a store on the PVC ($TUNELINE_CHECKPOINT_ROOT).
            items = resume_items(self.graph, node, in_output=False) + items
        if node.condition is not None:
            items = _gated(items, ports)
        items = _with_output_folders(items, ports)

        def build(args: dict[str, Any]) -> dsl.ContainerSpec:
            return dsl.ContainerSpec(image=image, command=_kfp_items(items, by_name, args))

        return _container_component(node.name, params, build)

    def _manifest(self, node: Node, place: Placement, items: list[Item]) -> dict[str, Any]:
        """The TrainJob or PyTorchJob as it would run with the pipeline's current parameter values (the launcher
        names it per run and re-renders the command with the run's values)."""
        torchrun_prefix(leading_words(items), place.nodes, place.processes_per_node)  # refuses non-python early
        values = {name: (f"<{b.step}.{b.output}>" if isinstance(b, OutputRef) else self.graph.resolve_literal(b))
                  for name, b in node.bindings.items() if not node.input_type(name).is_artifact}
        artifacts = [name for name, b in node.bindings.items() if node.input_type(name).is_artifact]
        command = staged_command(node.component.spec, values, artifacts, f"{CHECKPOINT_MOUNT}/$(TUNELINE_RUN_ID)/"
                                 f"{node.name}", place.nodes, place.processes_per_node)
        parts = pod_parts(self.image(node), command, place, self._env(node, place), self.kfp.checkpoint_pvc,
                          self.kfp.mlflow_secret, self.kfp.mlflow_config_map,
                          hf_secret=self.kfp.hf_secret if loads_models(node) else None)
        name = dns_1035(f"{self.graph.name}-{node.name}")
        deadline = int(node.step.timeout_seconds) if node.step.timeout_seconds else None
        if place.launcher == "pytorchjob":
            return pytorchjob_manifest(name, node.name, parts, place.nodes, place.processes_per_node,
                                       backoff_limit=node.retries, deadline_seconds=deadline)
        return trainjob_manifest(name, node.name, parts, place.nodes, place.processes_per_node,
                                 deadline_seconds=deadline)

    def _env(self, node: Node, place: Placement) -> dict[str, str]:
        env = {"TUNELINE_STEP": node.name, **TELEMETRY_OFF, "PYTHONUNBUFFERED": "1",
               **deploy_image_env(node.component.spec.deploys_image, self.options.images)}
        if resumable(node) or place.nodes > 1:
            env["TUNELINE_CHECKPOINT_ROOT"] = CHECKPOINT_MOUNT
        if loads_models(node):
            env["HF_HOME"] = f"{CHECKPOINT_MOUNT}/{HF_CACHE_DIR}"
        return env

    # ------------------------------------------------------------------------------------------ pipeline

    def pipeline_function(self) -> Any:
        graph = self.graph
        params = []
        for name, spec in graph.pipeline.spec.params.items():
            kind = str if spec.type.is_artifact else _VALUE_TYPES[spec.type]
            params.append(inspect.Parameter(name, _KW, annotation=kind, default=graph.params[name]))

        def body(*args: Any) -> None:
            self._build_dag(dict(zip([p.name for p in params], args, strict=True)))

        body.__name__ = graph.name.replace("-", "_")
        body.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        return dsl.pipeline(name=graph.name, description=graph.pipeline.spec.description or None)(body)

    def _fingerprint_component(self, kind: IOType, image: str) -> Any:
        key = (artifact_class(kind), image)
        if key not in self._fingerprints:
            params = [inspect.Parameter("data", _KW, annotation=Input[artifact_class(kind)]),
                      inspect.Parameter("sha256", _KW, annotation=dsl.OutputPath(str))]

            def build(args: dict[str, Any]) -> dsl.ContainerSpec:
                return dsl.ContainerSpec(image=image, command=["python", "-m", FINGERPRINT_MODULE,
                                                               args["data"].path, args["sha256"]])

            self._fingerprints[key] = _container_component("fingerprint", params, build)
        return self._fingerprints[key]

    def _build_dag(self, pargs: dict[str, Any]) -> None:
        tasks: dict[str, Any] = {}
        imported: dict[Any, tuple[Any, Any]] = {}

        def artifact_from(key: Any, uri: Any, kind: IOType, label: str, node: Node) -> tuple[Any, Any]:
            if key not in imported:
                task = dsl.importer(artifact_uri=uri, artifact_class=artifact_class(kind), reimport=False)
                task.set_display_name(f"import-{label}")
                task.set_caching_options(not self.options.no_cache)
                digest = self._fingerprint_component(kind, self.image(node))(data=task.output)
                digest.set_display_name(f"fingerprint-{label}")
                digest.set_caching_options(False)  # it exists to look at the bytes on every run
                imported[key] = (task.output, digest.outputs["sha256"])
            return imported[key]

        def argument(node: Node, name: str) -> Any:
            binding = node.bindings[name]
            kind = node.input_type(name)
            if isinstance(binding, OutputRef):
                return tasks[binding.step].outputs[binding.output]
            if isinstance(binding, ParamRef):
                if kind.is_artifact:
                    return artifact_from(("param", binding.name, kind), pargs[binding.name], kind, binding.name,
                                         node)
                return pargs[binding.name]
            assert isinstance(binding, Literal)
            if kind.is_artifact:
                return artifact_from(("literal", binding.value, kind), binding.value, kind, f"{node.name}-{name}",
                                     node)
            return binding.value

        for name in self.graph.order:
            node = self.graph.nodes[name]
            arguments = {n: argument(node, n) for n in node.bindings}
            # An unbound input's default is passed by the task, not left to the component's default: from 2.17.0
            # the driver substitutes input parameters into the command itself and fails on one the task does not
            # pass ("parameter ... not found in executor input", backend/src/v2/driver/util.go), since it leaves
            # defaults to the launcher (backend/src/v2/driver/resolve.go).
            for input_name, declared in node.component.spec.inputs.items():
                if input_name not in arguments and declared.default is not None:
                    arguments[input_name] = _VALUE_TYPES[declared.type](declared.default)  # 600 for a number
            for input_name in imported_inputs(node):
                arguments[input_name], arguments[FINGERPRINT_PREFIX + input_name] = arguments[input_name]
            if node.condition is not None:
                arguments[GATE_INPUT] = tasks[node.condition.step].outputs[node.condition.output]
            task = self.components[name](**arguments)
            self._configure(node, task)
            tasks[name] = task

    def _configure(self, node: Node, task: Any) -> None:
        place = self.placements[node.name]
        task.set_display_name(node.name)
        task.set_caching_options(node.cache_enabled and not self.options.no_cache)
        if node.retries:
            # KFP's retry policy (max, backoff, factor) cannot name exit codes: on a cluster every failed
            # attempt is retried, exit 2 included; only the local runner applies `retry.on`.
            backoff = node.component.spec.retry.backoff_seconds
            task.set_retry(num_retries=node.retries, backoff_duration=f"{int(backoff)}s", backoff_factor=2.0,
                           backoff_max_duration=f"{retry_window(node.retries, backoff, node.step.timeout_seconds)}s")
        if node.step.timeout_seconds:
            kubernetes.set_timeout(task, int(node.step.timeout_seconds))
        for key, value in self._env(node, place).items():
            task.set_env_variable(key, value)
        # The run id names the checkpoint folder a retried pod resumes from; the pod label carries it.
        kubernetes.use_field_path_as_env(task, env_name="TUNELINE_RUN_ID",
                                         field_path="metadata.labels['pipeline/runid']")
        if self.kfp.mlflow_config_map:
            kubernetes.use_config_map_as_env(task, config_map_name=self.kfp.mlflow_config_map,
                                             config_map_key_to_env={k: k for k in MLFLOW_CONFIG_KEYS})
        if self.kfp.mlflow_secret:
            kubernetes.use_secret_as_env(task, secret_name=self.kfp.mlflow_secret,
                                         secret_key_to_env={k: k for k in MLFLOW_SECRET_KEYS})
        if self.kfp.hf_secret and loads_models(node):
            kubernetes.use_secret_as_env(task, secret_name=self.kfp.hf_secret,
                                         secret_key_to_env={k: k for k in HF_SECRET_KEYS})
        if resumable(node) or place.nodes > 1 or loads_models(node):
            kubernetes.mount_pvc(task, pvc_name=self.kfp.checkpoint_pvc, mount_path=CHECKPOINT_MOUNT)
        if place.nodes > 1:
            # The job's ownerReference names the launcher pod (launch.py); the pods of the job get the
            # resources and tolerations, the launcher pod only waits.
            kubernetes.use_field_path_as_env(task, env_name=POD_NAME_ENV, field_path="metadata.name")
            kubernetes.use_field_path_as_env(task, env_name=POD_UID_ENV, field_path="metadata.uid")
            return
        if place.cpu:
            task.set_cpu_request(place.cpu).set_cpu_limit(place.cpu)
        if place.memory:
            task.set_memory_request(place.memory).set_memory_limit(place.memory)
        if place.gpus:
            task.set_accelerator_type(GPU_RESOURCE).set_accelerator_limit(place.gpus)
        for key, value in place.node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for tol in place.tolerations:
            kubernetes.add_toleration(task, key=tol.key, operator=tol.operator, value=tol.value, effect=tol.effect)
        if place.prefer_spot:
            kubernetes.add_node_affinity(task, match_expressions=[{"key": SPOT_LABEL,
                                                                   "operator": "In", "values": [SPOT_VALUE]}],
                                         weight=100)
        if place.use_shm:
            kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                       size_limit=place.shm)


def retry_window(retries: int, backoff_seconds: float, timeout_seconds: float | None) -> int:
    """Seconds from a task's first attempt during which Argo may still retry it.

    The SDK writes `backoffMaxDuration: 3600s` unless told otherwise, KFP passes it to Argo's
    `retryStrategy.backoff.maxDuration`, and Argo measures it from the first attempt's start: past it, "Max
    duration limit exceeded" and no retry, and a retried pod's deadline is cut to what is left
    (argoproj/argo-workflows v3.6.7 workflow/controller/operator.go, as KFP 2.14 ships it). So a 2-hour train
    step that failed after its first hour was never retried. The window holds every attempt at its full timeout,
    every backoff, and an hour for scheduling and image pulls; a step without a timeout gets a day per attempt.
    """
    attempt = int(timeout_seconds) if timeout_seconds else RETRY_ATTEMPT_WITHOUT_TIMEOUT
    backoffs = sum(int(backoff_seconds * 2.0 ** i) for i in range(retries))
    return (retries + 1) * attempt + backoffs + RETRY_SCHEDULING_ALLOWANCE


def _drop_unset_optional(package: Path) -> None:
    """Remove `optional: false` from the platform spec's configMapAsEnv/secretAsEnv entries.

    kfp-kubernetes 2.17 always writes the field, and the API server of KFP 2.14 parses each executor's platform
    config with a strict protojson.Unmarshal while compiling the Argo workflow
    (backend/src/v2/compiler/argocompiler/container.go), whose proto has no `optional` on these messages yet: the
    run is refused at submission. Absent means required, the same as false, so dropping it changes nothing on
    newer backends.
    """
    documents = list(yaml.safe_load_all(package.read_text()))
    for document in documents[1:]:
        executors = document.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
        for config in executors.values():
            for entry in config.get("configMapAsEnv", []) + config.get("secretAsEnv", []):
                if entry.get("optional") is False:
                    del entry["optional"]
    with package.open("w") as fh:
        yaml.dump_all(documents, fh, sort_keys=True)  # as kfp's compiler writes it


def compile_kfp(graph: PipelineGraph, out: Path, options: CompileOptions) -> KfpResult:
    """Write `out/pipeline.yaml` and one `trainjob-<step>.yaml` (or `pytorchjob-<step>.yaml`) per multi-node step."""
    out.mkdir(parents=True, exist_ok=True)
    builder = _Builder(graph, options)
    target = out / PIPELINE_FILE
    compiler.Compiler().compile(builder.pipeline_function(), str(target))
    _drop_unset_optional(target)
    manifests = []
    for step, manifest in builder.manifests.items():
        kind = manifest["kind"]
        path = out / f"{kind.lower()}-{step}.yaml"
        path.write_text(f"# {kind} of step '{step}' as the launcher submits it (named per run, owned by the launcher "
                        f"pod, command re-rendered with the run's values).\n"
                        + yaml.safe_dump(manifest, sort_keys=False))
        manifests.append(path)
    return KfpResult(pipeline=target, manifests=manifests)
