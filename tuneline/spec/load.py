"""Load and validate components and pipelines into checked, typed objects.

Every problem is collected with its `file:line:col` before anything is raised, so one `tuneline validate`
shows them all.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from .command import block_inputs, references
from .models import (
    COMPILE_TARGETS,
    ComponentSpec,
    IOType,
    PipelineSpec,
    Role,
    check_value,
    parse_cli_value,
    quantity,
)
from .problems import Problem, SpecError
from .yamlsafe import Loaded, load_yaml

REF = re.compile(r"^\$\{\{\s*([a-zA-Z0-9_.-]+)\s*\}\}$")
ANY_REF = re.compile(r"\$\{\{")


# ---------------------------------------------------------------------------------------------- references


@dataclass(frozen=True)
class ParamRef:
    name: str

    def __str__(self) -> str:
        return f"${{{{params.{self.name}}}}}"


@dataclass(frozen=True)
class OutputRef:
    step: str
    output: str

    def __str__(self) -> str:
        return f"${{{{steps.{self.step}.outputs.{self.output}}}}}"


@dataclass(frozen=True)
class Literal:
    value: Any


Binding = ParamRef | OutputRef | Literal


def parse_binding(value: Any) -> Binding:
    """A binding is a whole-value reference or a literal; a reference inside a longer string is refused."""
    if isinstance(value, str) and ANY_REF.search(value):
        match = REF.match(value.strip())
        if not match:
            raise ValueError(f"'{value}': a reference must be the whole value, e.g. ${{{{params.name}}}}")
        parts = match.group(1).split(".")
        if len(parts) == 2 and parts[0] == "params":
            return ParamRef(parts[1])
        if len(parts) == 4 and parts[0] == "steps" and parts[2] == "outputs":
            return OutputRef(parts[1], parts[3])
        raise ValueError(f"'{value}': use ${{{{params.<name>}}}} or ${{{{steps.<step>.outputs.<output>}}}}")
    return Literal(value)


# ---------------------------------------------------------------------------------------------- pydantic errors


def _unwrap(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        for member in members:
            if isinstance(member, type) and issubclass(member, BaseModel):
                return member
            if typing.get_origin(member) in (dict, list):
                return member
        return members[0] if members else annotation
    return annotation


def _model_at(model: type[BaseModel], loc: tuple[Any, ...]) -> Any:
    current: Any = model
    rest = list(loc)
    while rest:
        item = rest.pop(0)
        current = _unwrap(current)
        if isinstance(current, type) and issubclass(current, BaseModel):
            field_info = current.model_fields.get(item)
            if field_info is None:
                return None
            current = field_info.annotation
        elif typing.get_origin(current) in (dict, list):
            current = typing.get_args(current)[-1]
        else:
            return None
    return _unwrap(current)


def _pydantic_problems(loaded: Loaded, model: type[BaseModel], exc: ValidationError) -> list[Problem]:
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        kind = error["type"]
        if kind == "extra_forbidden":
            owner = _model_at(model, loc[:-1])
            valid = list(owner.model_fields) if isinstance(owner, type) and issubclass(owner, BaseModel) else []
            close = difflib.get_close_matches(str(loc[-1]), valid, n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else (f"; valid keys: {', '.join(valid)}" if valid else "")
            problems.append(loaded.problem(loc, f"unknown key '{loc[-1]}'{hint}", key=True))
        elif kind == "missing":
            where = ".".join(str(p) for p in loc[:-1]) or "top level"
            problems.append(loaded.problem(loc[:-1], f"missing required key '{loc[-1]}' in {where}"))
        else:
            message = error["msg"].removeprefix("Value error, ")
            field_name = ".".join(str(p) for p in loc) or "document"
            problems.append(loaded.problem(loc, f"{field_name}: {message}"))
    return problems


def _parse(loaded: Loaded, model: type[BaseModel]) -> Any:
    if not isinstance(loaded.data, dict):
        raise SpecError([loaded.problem((), f"expected a mapping at the top of the file, got "
                                             f"{type(loaded.data).__name__}")])
    try:
        return model.model_validate(loaded.data)
    except ValidationError as exc:
        raise SpecError(_pydantic_problems(loaded, model, exc)) from None


# ---------------------------------------------------------------------------------------------- components


@dataclass
class Component:
    spec: ComponentSpec
    folder: Path
    source: Loaded

    @property
    def name(self) -> str:
        return self.spec.name


def _command_problems(component: Component) -> list[Problem]:
    spec, loaded = component.spec, component.source
    problems = []
    used_outputs = set()
    for ref in references(spec.command_items):
        kind, name = ref.kind, ref.name
        table = spec.inputs if kind == "inputs" else spec.outputs
        if name not in table:
            close = difflib.get_close_matches(name, list(table), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            problems.append(loaded.problem(("command",), f"command uses unknown {kind[:-1]} '{name}'{hint}"))
        if kind == "outputs":
            used_outputs.add(name)
    in_blocks = block_inputs(spec.command_items)
    for name, spec_in in spec.inputs.items():
        if spec_in.optional and spec_in.default is None and name not in in_blocks:
            problems.append(loaded.problem(("inputs", name),
                                           f"optional input '{name}' must appear inside a $[[...]] block"))
    for name in spec.outputs:
        if name not in used_outputs:
            problems.append(loaded.problem(("outputs", name), f"output '{name}' is never passed to the command"))
    if spec.name != component.folder.name:
        problems.append(loaded.problem(("name",), f"component name '{spec.name}' differs from its folder "
                                                  f"'{component.folder.name}'"))
    return problems


def load_component(folder: str | Path) -> Component:
    folder = Path(folder)
    loaded = load_yaml(folder / "component.yaml")
    component = Component(spec=_parse(loaded, ComponentSpec), folder=folder, source=loaded)
    problems = _command_problems(component)
    if problems:
        raise SpecError(problems)
    return component


# ---------------------------------------------------------------------------------------------- pipelines


@dataclass
class Pipeline:
    spec: PipelineSpec
    path: Path
    root: Path
    source: Loaded
    components: dict[str, Component]            # by step name
    bindings: dict[str, dict[str, Binding]]      # step -> input -> binding
    conditions: dict[str, OutputRef]             # step -> boolean output it waits for
    params: dict[str, Any] = field(default_factory=dict)  # resolved values (defaults + overrides)
    overridden: frozenset[str] = frozenset()    # parameters given with --set
    target: str | None = None                   # the compile target `params` are for (None: a local run)

    def for_target(self, target: str) -> Pipeline:
        """This pipeline as compiled for `target`: each parameter's `target_defaults` entry replaces its default
        (a --set value wins), and an input value the component marks as local-only is refused."""
        params = {name: value if name in self.overridden else self.spec.params[name].default_for(target)
                  for name, value in self.params.items()}
        problems = target_value_problems(self, params, target)
        if problems:
            raise SpecError(problems)
        return dataclasses.replace(self, params=params, target=target)

    @property
    def name(self) -> str:
        return self.spec.name

    def input_value(self, step: str, name: str) -> Any:
        """What input `name` of `step` is before the run: its literal or parameter binding, else the component's
        default; None when it is unbound without a default or bound to a step output (known at run time)."""
        binding = self.bindings.get(step, {}).get(name)
        if isinstance(binding, Literal):
            return binding.value
        if isinstance(binding, ParamRef):
            return self.params[binding.name]
        spec = self.components[step].spec.inputs.get(name)
        return spec.default if spec is not None and binding is None else None

    def step_with_role(self, role: Role) -> str | None:
        """The first step, in file order, whose component declares `role`."""
        return next((step for step, c in self.components.items() if c.spec.role == role), None)


def target_value_problems(pipeline: Pipeline, params: dict[str, Any], target: str,
                          only: set[str] | None = None) -> list[Problem]:
    """Inputs whose value (a literal, or a parameter's value in `params`) `target` cannot run: outside the
    component's `enum_per_target` for it. `only` limits the check to bindings of those parameters."""
    problems = []
    for step, step_bindings in pipeline.bindings.items():
        for name, binding in step_bindings.items():
            spec = pipeline.components[step].spec.inputs[name]
            if isinstance(binding, ParamRef):
                if only is not None and binding.name not in only:
                    continue
                value, source = params[binding.name], f"parameter {binding.name} = {params[binding.name]!r}"
            elif isinstance(binding, Literal) and only is None:
                value, source = binding.value, f"{binding.value!r}"
            else:
                continue
            reason = check_value(spec, value)
            allowed = (spec.enum_per_target or {}).get(target)
            if reason is None and allowed is not None and value not in allowed:
                reason = (f"{value!r} runs only locally; compiled for {target} it must be one of {allowed} "
                          f"(set the parameter's target_defaults.{target}, or --set it)")
            if reason:
                problems.append(pipeline.source.problem(("steps", step, "inputs", name),
                                                        f"{step}.{name} ({source}) for target {target}: {reason}"))
    return problems


def find_root(pipeline_path: Path) -> Path:
    """The project root, which the pipeline's relative paths start from and its steps run in: the nearest folder
    above the pipeline that holds `components/`, `.tuneline/` or `.git` (`tuneline.settings.is_project_root`),
    else the pipeline's own folder."""
    from tuneline.settings import is_project_root

    for parent in pipeline_path.resolve().parents:
        if is_project_root(parent):
            return parent
    return pipeline_path.resolve().parent


# `component: tuneline/<name>` names a component shipped with tuneline: the `components` package installed
# beside the `tuneline` package (a checkout, an editable install and a wheel all put them side by side).
SHIPPED_PREFIX = "tuneline/"
SHIPPED_COMPONENTS = Path(__file__).resolve().parents[2] / "components"


def shipped_components() -> list[str]:
    """The names of the components shipped with tuneline (`component: tuneline/<name>`)."""
    if not SHIPPED_COMPONENTS.is_dir():
        return []
    return sorted(f.name for f in SHIPPED_COMPONENTS.iterdir() if (f / "component.yaml").is_file())


def component_folder(reference: str, root: Path) -> Path:
    """The folder a step's `component:` names: `tuneline/<name>` is a shipped component, anything else a folder
    relative to the project root (or absolute)."""
    if reference.startswith(SHIPPED_PREFIX):
        return SHIPPED_COMPONENTS / reference.removeprefix(SHIPPED_PREFIX)
    return root / os.path.expanduser(reference)


def _missing_component(reference: str, root: Path) -> str:
    if reference.startswith(SHIPPED_PREFIX):
        name = reference.removeprefix(SHIPPED_PREFIX)
        return (f"no shipped component '{name}'{_suggest(name, shipped_components())}; shipped: "
                f"{', '.join(shipped_components()) or 'none found'} (see `tuneline components`)")
    hint = ""
    shipped = Path(reference).name
    if shipped in shipped_components():
        hint = f"; the component shipped with tuneline is `component: {SHIPPED_PREFIX}{shipped}`"
    return (f"no component.yaml in '{reference}' (a folder relative to the project root {root}, the nearest "
            f"folder above the pipeline holding components/, .tuneline/ or .git){hint}")


def _suggest(name: str, options: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


def _compatible(source: IOType, target: IOType) -> bool:
    if source == target:
        return True
    if source.is_folder and target.is_folder:
        return True
    return source == IOType.integer and target == IOType.number


def _check_shared_memory(pipeline_spec: PipelineSpec, loaded: Loaded, components: dict[str, Component],
                         problems: list[Problem]) -> None:
    """A profile's `shm` must be below the memory limit of every step placed on it (the profile's `memory`, else
    the component's `resources.memory`): a memory-backed emptyDir's pages are charged to the container's memory
    cgroup (https://kubernetes.io/docs/concepts/storage/volumes/#emptydir), so a /dev/shm as large as the limit
    leaves nothing for the process, which the kernel OOM-kills."""
    for step_name, step in pipeline_spec.steps.items():
        profile = pipeline_spec.compute.get(step.compute or "")
        kf = profile.kubeflow if profile is not None else None
        component = components.get(step_name)
        if kf is None or not kf.shm or component is None:
            continue
        memory = kf.memory or component.spec.resources.memory
        if memory and quantity(kf.shm) >= quantity(memory):
            where = "its `memory`" if kf.memory else f"component {component.name}'s resources.memory"
            problems.append(loaded.problem(
                ("compute", step.compute, "kubeflow", "shm"),
                f"shm {kf.shm} is not below the memory limit {memory} of step '{step_name}' ({where}): /dev/shm "
                f"is memory-backed and counts against that limit, so the step would be OOM-killed; make shm "
                f"smaller than the memory limit"))


def _output_type(pipeline_spec: PipelineSpec, loaded: Loaded, components: dict[str, Component],
                 problems: list[Problem], ref: OutputRef, loc: tuple[Any, ...]) -> IOType | None:
    if ref.step not in pipeline_spec.steps:
        problems.append(loaded.problem(loc, f"unknown step '{ref.step}'{_suggest(ref.step, pipeline_spec.steps)}"))
        return None
    upstream = components.get(ref.step)
    if upstream is None:
        return None  # its component failed to load: reported already
    out = upstream.spec.outputs.get(ref.output)
    if out is None:
        problems.append(loaded.problem(loc, f"step '{ref.step}' ({upstream.name}) has no output "
                                            f"'{ref.output}'{_suggest(ref.output, upstream.spec.outputs)}"))
        return None
    return out.type


def _check_when(pipeline_spec: PipelineSpec, loaded: Loaded, components: dict[str, Component],
                problems: list[Problem], step_name: str, when: str) -> OutputRef | None:
    """The step's condition if it references an output at all (a wrong type is reported but still kept)."""
    loc = ("steps", step_name, "when")
    try:
        ref = parse_binding(when)
    except ValueError as exc:
        problems.append(loaded.problem(loc, f"when: {exc}"))
        return None
    if not isinstance(ref, OutputRef):
        problems.append(loaded.problem(loc, "when: must reference a boolean step output, "
                                            "e.g. ${{steps.evaluate.outputs.passed}}"))
        return None
    kind = _output_type(pipeline_spec, loaded, components, problems, ref, loc)
    if kind is not None and kind != IOType.boolean:
        problems.append(loaded.problem(loc, f"when: output '{ref.step}.{ref.output}' is "
                                            f"{kind.value}, not boolean"))
    return ref


def _check_input(pipeline_spec: PipelineSpec, loaded: Loaded, components: dict[str, Component],
                 problems: list[Problem], step_name: str, component: Component, input_name: str,
                 raw: Any) -> Binding | None:
    """One step input's binding, or None when it is reported as wrong."""
    loc = ("steps", step_name, "inputs", input_name)
    spec_in = component.spec.inputs.get(input_name)
    if spec_in is None:
        problems.append(loaded.problem(loc, f"component '{component.name}' has no input '{input_name}'"
                                            f"{_suggest(input_name, component.spec.inputs)}", key=True))
        return None
    try:
        binding = parse_binding(raw)
    except ValueError as exc:
        problems.append(loaded.problem(loc, f"{input_name}: {exc}"))
        return None
    if isinstance(binding, ParamRef):
        param = pipeline_spec.params.get(binding.name)
        if param is None:
            problems.append(loaded.problem(loc, f"unknown parameter '{binding.name}'"
                                                f"{_suggest(binding.name, pipeline_spec.params)}"))
            return None
        if not _compatible(param.type, spec_in.type) and not (
                param.type == IOType.uri_folder and spec_in.accepts_folder):
            problems.append(loaded.problem(loc, f"{input_name}: parameter '{binding.name}' is "
                                                f"{param.type.value}, input expects {spec_in.type.value}"))
            return None
        reason = check_value(spec_in, param.default)
        if reason:
            problems.append(loaded.problem(("params", binding.name, "default"),
                                           f"default of '{binding.name}' bound to {step_name}.{input_name}:"
                                           f" {reason}"))
    elif isinstance(binding, OutputRef):
        kind = _output_type(pipeline_spec, loaded, components, problems, binding, loc)
        if kind is None:
            return None
        if not _compatible(kind, spec_in.type):
            problems.append(loaded.problem(loc, f"{input_name}: output '{binding.step}.{binding.output}' is "
                                                f"{kind.value}, input expects {spec_in.type.value}"))
            return None
    else:
        reason = check_value(spec_in, binding.value)
        if reason:
            problems.append(loaded.problem(loc, f"{input_name}: {reason}"))
            return None
    return binding


def _check_bindings(pipeline_spec: PipelineSpec, loaded: Loaded, components: dict[str, Component],
                    problems: list[Problem]) -> tuple[dict[str, dict[str, Binding]], dict[str, OutputRef]]:
    bindings: dict[str, dict[str, Binding]] = {}
    conditions: dict[str, OutputRef] = {}
    for step_name, step in pipeline_spec.steps.items():
        step_loc = ("steps", step_name)
        if step.compute is not None and step.compute not in pipeline_spec.compute:
            problems.append(loaded.problem(step_loc + ("compute",), f"unknown compute profile '{step.compute}'"
                                                                    f"{_suggest(step.compute, pipeline_spec.compute)}"))
        if step.when is not None:
            ref = _check_when(pipeline_spec, loaded, components, problems, step_name, step.when)
            if ref is not None:
                conditions[step_name] = ref
        component = components.get(step_name)
        if component is None:
            continue
        step_bindings: dict[str, Binding] = {}
        for input_name, raw in step.inputs.items():
            binding = _check_input(pipeline_spec, loaded, components, problems, step_name, component, input_name,
                                   raw)
            if binding is not None:
                step_bindings[input_name] = binding
        for input_name, spec_in in component.spec.inputs.items():
            if spec_in.required and input_name not in step.inputs:
                problems.append(loaded.problem(step_loc + ("inputs",) if step.inputs else step_loc,
                                               key=True,
                                               message=f"step '{step_name}' misses required input '{input_name}' "
                                               f"({spec_in.type.value}) of component '{component.name}'"))
        bindings[step_name] = step_bindings
    return bindings, conditions


def _check_conditions(bindings: dict[str, dict[str, Binding]], conditions: dict[str, OutputRef], loaded: Loaded,
                      problems: list[Problem]) -> None:
    """The one semantics of `when:`, the same locally, on KFP and on Azure ML.

    A step whose gate is false is skipped: it does nothing and leaves no usable outputs (on a cluster, markers and
    zero values; a skipped boolean reads false). So a step may use a conditional step's outputs only when it cannot
    run without that step having run: it has the same `when:`, or its `when:` tests a boolean output of that step.
    """
    for step_name, step_bindings in bindings.items():
        mine = conditions.get(step_name)
        for input_name, binding in step_bindings.items():
            if not isinstance(binding, OutputRef) or binding.step not in conditions:
                continue
            theirs = conditions[binding.step]
            if mine == theirs or (mine is not None and mine.step == binding.step):
                continue
            problems.append(loaded.problem(
                ("steps", step_name, "inputs", input_name),
                f"{input_name}: '{binding.step}' runs only when {theirs}, so its outputs may be unset; give "
                f"'{step_name}' the same `when: {theirs}`, or a `when:` on a boolean output of '{binding.step}'"))


def _find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """A cycle as [a, b, ..., a] in the graph step -> upstream steps, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in edges:
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def upstream_steps(bindings: dict[str, Binding], condition: OutputRef | None) -> set[str]:
    refs = [b for b in bindings.values() if isinstance(b, OutputRef)]
    if condition is not None:
        refs.append(condition)
    return {r.step for r in refs}


def _type_folders(spec: PipelineSpec, root: Path, components: dict[str, Component],
                  bindings: dict[str, dict[str, Binding]], params: dict[str, Any], loaded: Loaded,
                  problems: list[Problem]) -> None:
    """A `uri_file` parameter whose value is a local folder (`--set dataset=shards/`) is typed `uri_folder`, and
    so is every `accepts_folder` input it feeds, in this pipeline's copy of the step's component; the runner and
    both compilers then see a folder throughout (Azure ML mounts a uri_folder input as a folder and a uri_file
    input as a file: https://learn.microsoft.com/azure/machine-learning/how-to-read-write-data-v2). A folder
    for an input that takes only a file is a problem here, before any step runs. A remote URI keeps the declared
    type: declare the parameter `uri_folder` for a remote folder."""
    for name, param in list(spec.params.items()):
        value = params.get(name)
        if param.type not in (IOType.uri_file, IOType.uri_folder) or not isinstance(value, str) or not value:
            continue
        path = Path(value) if Path(value).is_absolute() else root / value
        if param.type == IOType.uri_file and not path.is_dir():
            continue
        fed = [(step, input_name) for step, step_bindings in bindings.items()
               for input_name, binding in step_bindings.items() if binding == ParamRef(name)]
        takes_file = [f"{step}.{input_name}" for step, input_name in fed
                      if components[step].spec.inputs[input_name].type == IOType.uri_file
                      and not components[step].spec.inputs[input_name].accepts_folder]
        if takes_file:
            verb = "take" if len(takes_file) > 1 else "takes"
            problems.append(loaded.problem(("params", name), f"{name}: {value} is a folder, but "
                                           f"{' and '.join(takes_file)} {verb} a single file"))
            continue
        spec.params[name] = param.model_copy(update={"type": IOType.uri_folder})
        for step, input_name in fed:
            component = components[step]
            declared = component.spec.inputs[input_name]
            if declared.type != IOType.uri_file:
                continue
            inputs = {**component.spec.inputs, input_name: declared.model_copy(update={"type": IOType.uri_folder})}
            components[step] = dataclasses.replace(component, spec=component.spec.model_copy(update={"inputs": inputs}))


# The roles whose `gate_metric` input names a metric of the evaluation (ROLE_INPUTS declares it).
_METRIC_ROLES = (Role.evaluate, Role.register)


def _check_metrics(spec: PipelineSpec, loaded: Loaded, components: dict[str, Component],
                   bindings: dict[str, dict[str, Binding]], params: dict[str, Any], problems: list[Problem]) -> None:
    """A gate metric no evaluation can produce (a misspelt `--set gate_metric=...`) fails here, before any step
    runs; whether this dataset produces it is checked by the prepare step, before training."""
    from tuneline.spec.metrics import unknown_metric

    reported: set[str] = set()

    def check(loc: tuple[Any, ...], binding: Binding | None, value: Any) -> None:
        reason = unknown_metric(value) if isinstance(value, str) and value else None
        if not reason:
            return
        if isinstance(binding, ParamRef):  # one problem per parameter, however many steps it feeds
            if binding.name not in reported:
                reported.add(binding.name)
                problems.append(loaded.problem(("params", binding.name), f"{binding.name}: {reason}"))
            return
        problems.append(loaded.problem(loc, reason))

    for step_name, component in components.items():
        if component.spec.role in _METRIC_ROLES:
            binding = bindings.get(step_name, {}).get("gate_metric")
            value = params[binding.name] if isinstance(binding, ParamRef) else (
                binding.value if isinstance(binding, Literal) else component.spec.inputs["gate_metric"].default)
            check(("steps", step_name, "inputs", "gate_metric"), binding, value)
    if spec.triggers is not None:
        binding = parse_binding(spec.triggers.metric)
        if isinstance(binding, ParamRef) and binding.name in params:
            check(("triggers", "metric"), binding, params[binding.name])
        elif isinstance(binding, Literal):
            check(("triggers", "metric"), binding, binding.value)


def parse_set_pairs(pairs: typing.Sequence[str]) -> dict[str, str]:
    """`--set name=value` (a parameter) and `--set step.input=value` (one step's input) arguments as a dict;
    values stay text until `apply_overrides` and `apply_input_overrides` type them."""
    overrides = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.strip():
            raise SystemExit(f"tuneline: --set expects name=value, got '{pair}'")
        overrides[name.strip()] = value
    return overrides


def is_local_path(value: Any) -> bool:
    """A path on this machine, as opposed to a URI a platform resolves (minio://, azureml:, https://, ...)."""
    return isinstance(value, str) and bool(value) and not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", value)


def from_command_line(value: str) -> str:
    """A path typed on the command line is relative to the folder the user stands in, not the project root
    (which the steps run in): it is made absolute here, before anything else reads it."""
    if not is_local_path(value):
        return value
    return os.path.abspath(os.path.expanduser(value))


def apply_overrides(spec: PipelineSpec, overrides: dict[str, str], loaded: Loaded,
                    components: dict[str, Component] | None = None) -> dict[str, Any]:
    """Parameter values: defaults, with `--set` overrides typed; problems point at the `params:` entry.
    A `--set step.input=value` is a step input's, applied by `apply_input_overrides`."""
    values = {name: p.default_for(None) for name, p in spec.params.items()}  # a run here: the local target's
    problems = []
    for name, text in overrides.items():
        if "." in name:
            continue
        if name not in spec.params:
            problems.append(loaded.problem(("params",), _unknown_set(spec, name, components or {}), key=True))
            continue
        try:
            values[name] = parse_cli_value(spec.params[name].type, text)
        except ValueError as exc:
            problems.append(loaded.problem(("params", name), f"--set {name}: {exc}", key=True))
            continue
        if spec.params[name].type.is_artifact:
            values[name] = from_command_line(values[name])
    if problems:
        raise SpecError(problems)
    return values


def _is_local_folder(value: Any) -> bool:
    """A model reference typed on the command line that names an existing folder (not a catalog or Hub name)."""
    return is_local_path(value) and os.path.isdir(os.path.expanduser(value))


def _model_refs_from_command_line(overrides: dict[str, str], params: dict[str, Any],
                                  components: dict[str, Component], bindings: dict[str, dict[str, Binding]]) -> None:
    """`--set base_model=./my-model`: a parameter feeding a model reference that names a folder here is a path
    relative to the current folder, like any other path on the command line."""
    for step, step_bindings in bindings.items():
        for input_name, binding in step_bindings.items():
            if (isinstance(binding, ParamRef) and binding.name in overrides
                    and components[step].spec.inputs[input_name].kind == "model_ref"
                    and _is_local_folder(params[binding.name])):
                params[binding.name] = from_command_line(params[binding.name])


def _unknown_set(spec: PipelineSpec, name: str, components: dict[str, Component]) -> str:
    """`--set NAME`: no such parameter, with the closest one, or the steps that have an input of that name."""
    hint = _suggest(name, spec.params)
    if not hint:
        having = [step for step, component in components.items() if name in component.spec.inputs]
        example = (" or ".join(f"--set {step}.{name}=..." for step in having)
                   or f"--set {next(iter(spec.steps))}.INPUT=... (`tuneline components NAME` lists inputs)")
        hint = f"; to set a step's input use --set STEP.INPUT=VALUE, here {example}"
    return f"--set {name}: no such parameter{hint}"


def apply_input_overrides(spec: PipelineSpec, overrides: dict[str, str], loaded: Loaded,
                          components: dict[str, Component], bindings: dict[str, dict[str, Binding]],
                          problems: list[Problem]) -> None:
    """`--set step.input=value`: bind one step's input to a literal, replacing what the pipeline binds it to
    (or the component's default). The value is typed and checked as the component declares the input."""
    for name, text in overrides.items():
        if "." not in name:
            continue
        step, _, input_name = name.partition(".")
        if step not in spec.steps:
            problems.append(loaded.problem(("steps",), f"--set {name}: no step '{step}'"
                                                       f"{_suggest(step, spec.steps)}", key=True))
            continue
        component = components.get(step)
        if component is None:
            continue  # its component failed to load: reported already
        declared = component.spec.inputs.get(input_name)
        if declared is None:
            problems.append(loaded.problem(("steps", step), f"--set {name}: component '{component.name}' has no "
                                           f"input '{input_name}'{_suggest(input_name, component.spec.inputs)}"
                                           f" (inputs: {', '.join(component.spec.inputs)})", key=True))
            continue
        try:
            value = parse_cli_value(declared.type, text)
        except ValueError as exc:
            problems.append(loaded.problem(("steps", step), f"--set {name}: {exc}", key=True))
            continue
        if declared.type.is_artifact or (declared.kind == "model_ref" and _is_local_folder(value)):
            value = from_command_line(value)
        reason = check_value(declared, value)
        if reason:
            problems.append(loaded.problem(("steps", step), f"--set {name}: {reason}", key=True))
            continue
        if declared.type == IOType.uri_file and is_local_path(value) and os.path.isdir(value):
            if not declared.accepts_folder:
                problems.append(loaded.problem(("steps", step), f"--set {name}: {value} is a folder, but "
                                               f"{step}.{input_name} takes a single file", key=True))
                continue
            # As for a parameter (`_type_folders`): this step's copy of the component sees a folder.
            inputs = {**component.spec.inputs, input_name: declared.model_copy(update={"type": IOType.uri_folder})}
            components[step] = dataclasses.replace(component, spec=component.spec.model_copy(update={"inputs": inputs}))
        bindings.setdefault(step, {})[input_name] = Literal(value)


def load_pipeline(path: str | Path, overrides: dict[str, str] | None = None) -> Pipeline:
    path = Path(path)
    loaded = load_yaml(path)
    spec: PipelineSpec = _parse(loaded, PipelineSpec)
    root = find_root(path)
    problems: list[Problem] = []
    components: dict[str, Component] = {}
    for step_name, step in spec.steps.items():
        folder = component_folder(step.component, root)
        if not (folder / "component.yaml").is_file():
            problems.append(loaded.problem(("steps", step_name, "component"),
                                           _missing_component(step.component, root)))
            continue
        try:
            components[step_name] = load_component(folder)
        except SpecError as exc:
            problems.extend(exc.problems)
    bindings, conditions = _check_bindings(spec, loaded, components, problems)
    _check_shared_memory(spec, loaded, components, problems)
    apply_input_overrides(spec, overrides or {}, loaded, components, bindings, problems)
    edges = {name: upstream_steps(bindings.get(name, {}), conditions.get(name)) & set(spec.steps)
             for name in spec.steps}
    cycle = _find_cycle(edges)
    if cycle:
        problems.append(loaded.problem(("steps", cycle[0]), "cycle between steps: " + " -> ".join(reversed(cycle))))
    if spec.triggers is not None:
        try:
            metric = parse_binding(spec.triggers.metric)
        except ValueError as exc:
            metric = None
            problems.append(loaded.problem(("triggers", "metric"), str(exc)))
        if isinstance(metric, OutputRef) or (isinstance(metric, ParamRef) and metric.name not in spec.params):
            problems.append(loaded.problem(("triggers", "metric"), "the trigger metric is a metric name or "
                                           "${{params.<name>}} of a declared parameter"))
    _check_conditions(bindings, conditions, loaded, problems)
    if problems:
        raise SpecError(problems)
    params = apply_overrides(spec, overrides or {}, loaded, components)
    _model_refs_from_command_line(overrides or {}, params, components, bindings)
    _check_metrics(spec, loaded, components, bindings, params, problems)
    _type_folders(spec, root, components, bindings, params, loaded, problems)
    for name, value in params.items():
        for step_name, step_bindings in bindings.items():
            for input_name, binding in step_bindings.items():
                if isinstance(binding, ParamRef) and binding.name == name:
                    reason = check_value(components[step_name].spec.inputs[input_name], value)
                    if reason:
                        problems.append(loaded.problem(("steps", step_name, "inputs", input_name),
                                                       f"--set {name}: {step_name}.{input_name}: {reason}"))
    pipeline = Pipeline(spec=spec, path=path, root=root, source=loaded, components=components,
                        bindings=bindings, conditions=conditions, params=params,
                        overridden=frozenset(overrides or {}))
    for target in COMPILE_TARGETS:  # a declared per-target default must be one that target can run
        declared = {n for n, p in spec.params.items() if target in p.target_defaults and n not in pipeline.overridden}
        if declared:
            problems += target_value_problems(pipeline, {n: spec.params[n].default_for(target) for n in params},
                                              target, only=declared)
    if problems:
        raise SpecError(problems)
    return pipeline
