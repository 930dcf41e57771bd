"""Typed models of `component.yaml` and pipeline YAML files.

These models check shape and local constraints (types, ranges, names). Checks that need more than one file
at a time — bindings against a component's inputs, references between steps, cycles — live in
`tuneline.spec.validate`.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..settings import DEFAULT_GATE_METRIC
from .command import Item, parse_command
from .cron import check_cron, check_timezone
from .targets import LOCAL_TARGET, compile_targets

NAME_PATTERN = r"^[a-z][a-z0-9_-]*$"
# The targets `tuneline compile --target` writes (their folders, tuneline.spec.targets); a local run is target None.
COMPILE_TARGETS = compile_targets()
CompileTarget = Literal[COMPILE_TARGETS]  # type: ignore[valid-type]
IDENT_PATTERN = r"^[a-z_][a-z0-9_]*$"  # inputs/outputs/params become CLI placeholders and KFP/Azure ML names
QUANTITY_PATTERN = r"^[0-9]+(\.[0-9]+)?(m|Ki|Mi|Gi|Ti|k|M|G|T)?$"
_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_UNITS = {"": 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
          "m": 1e-3}


def quantity(text: Any) -> float:
    """A Kubernetes quantity (`2`, `500m`, `16Gi`) as a number (cores or bytes)."""
    match = _QUANTITY.match(str(text).strip())
    if not match or match.group(2) not in _UNITS:
        raise ValueError(f"not a Kubernetes quantity: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]
# Command templates (Azure ML's syntax): `${{inputs.x}}` / `${{outputs.y}}`, and `$[[ ... ]]` around the parts
# that apply only when the optional inputs inside are bound.


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class IOType(StrEnum):
    string = "string"
    integer = "integer"
    number = "number"
    boolean = "boolean"
    uri_file = "uri_file"
    uri_folder = "uri_folder"
    model = "model"

    @property
    def is_artifact(self) -> bool:
        return self in (IOType.uri_file, IOType.uri_folder, IOType.model)

    @property
    def is_folder(self) -> bool:
        return self in (IOType.uri_folder, IOType.model)


# What an input's value means, for checks that can run before any step does (`tuneline.cli.preflight`):
# a gate expression over `model.metric` terms, the name of a metric, a regular expression, or a base model
# (a catalog name, a local model folder, or a Hugging Face Hub id).
InputKind = Literal["gate_expression", "metric", "regex", "model_ref"]


class InputSpec(Strict):
    type: IOType
    description: str = ""
    default: Any = None
    optional: bool = False
    min: float | None = None
    max: float | None = None
    enum: list[str | int | float] | None = None
    accepts_folder: bool = Field(False, description="a uri_file input that also takes a folder (e.g. of dataset "
                                                    "shards): bound to a folder, the step sees it as a uri_folder")
    enum_per_target: dict[CompileTarget, list[str | int | float]] | None = Field(
        None, description="the values a compiled target accepts (kfp, azureml); the others are for local runs only")
    kind: InputKind | None = Field(
        None, description="what a string value means, so `tuneline validate` can check it before any step runs: "
                          "gate_expression (model.metric comparisons; {metric} is the step's `metric` input), "
                          "metric (a metric name), regex (a Python regular expression), model_ref (a catalog "
                          "name, a local model folder or a Hugging Face Hub id)")

    @property
    def required(self) -> bool:
        return self.default is None and not self.optional

    @model_validator(mode="after")
    def _constraints_fit_type(self) -> InputSpec:
        if (self.min is not None or self.max is not None) and self.type not in (IOType.integer, IOType.number):
            raise ValueError(f"min/max apply to integer and number inputs, not {self.type.value}")
        if self.enum is not None and self.type.is_artifact:
            raise ValueError("enum does not apply to artifact inputs")
        if self.accepts_folder and self.type != IOType.uri_file:
            raise ValueError("accepts_folder applies to uri_file inputs")
        if self.kind is not None and self.type != IOType.string:
            raise ValueError(f"kind: {self.kind} applies to string inputs, not {self.type.value}")
        for target, allowed in (self.enum_per_target or {}).items():
            outside = [v for v in allowed if self.enum is not None and v not in self.enum]
            if outside:
                raise ValueError(f"enum_per_target.{target}: {outside} not in enum {self.enum}")
        if self.default is not None:
            problem = check_value(self, self.default)
            if problem:
                raise ValueError(f"default {self.default!r}: {problem}")
        return self


class OutputSpec(Strict):
    type: IOType
    description: str = ""
    resume: bool = Field(False, description="a resumable checkpoint store: a folder kept across retries and "
                                            "re-runs of the step with the same cache key, so an interrupted "
                                            "attempt's checkpoints are there when the step starts again "
                                            "(uri_folder only)")

    @model_validator(mode="after")
    def _resume_is_a_folder(self) -> OutputSpec:
        if self.resume and self.type != IOType.uri_folder:
            raise ValueError(f"resume: true applies to uri_folder outputs, not {self.type.value}")
        return self


class Resources(Strict):
    cpu: float | str | None = Field(None, description="CPU cores, e.g. 2 or '500m'")
    memory: str | None = Field(None, pattern=QUANTITY_PATTERN, description="e.g. 8Gi")
    gpus: int = Field(0, ge=0)


# Exit codes worth another attempt: 143 = 128 + SIGTERM (spot preemption, pod eviction), 137 = 128 + SIGKILL
# (the kernel's OOM killer, a node lost), 75 = EX_TEMPFAIL from sysexits.h, which a component returns for a
# transient I/O or network error. Anything else — 2 for a usage or data error above all — would fail again.
RETRYABLE_EXIT_CODES = (143, 137, 75)


class RetryPolicy(Strict):
    max: int = Field(0, ge=0, le=20, description="retries after the first attempt")
    backoff_seconds: float = Field(10, ge=0, le=3600)
    on: list[int] = Field(default_factory=lambda: list(RETRYABLE_EXIT_CODES),
                          description="exit codes that are retried (a process killed by signal N counts as "
                                      "128 + N); any other failure fails the step at once")

    @field_validator("on")
    @classmethod
    def _exit_codes(cls, value: list[int]) -> list[int]:
        for code in value:
            if not 1 <= code <= 255:
                raise ValueError(f"exit code {code} is not in 1-255 (0 is success)")
        return value

    def retries_exit(self, code: int) -> bool:
        """Whether a process that ended with ``code`` (negative: killed by that signal) is retried."""
        return (128 - code if code < 0 else code) in self.on


class Role(StrEnum):
    """What a step does for the pipeline. The core finds steps by role, never by component name."""

    prepare = "prepare"    # splits the data; the cost estimate reads its split ratios
    train = "train"        # trains the model; cost estimates, drift references and run summaries use it
    evaluate = "evaluate"  # scores the model and decides its gate
    register = "register"  # registers the model; triggers watch the registered name
    deploy = "deploy"      # serves the registered model


# The inputs a component with a role must declare, because the core reads them (`tuneline.roles`).
ROLE_INPUTS: dict[Role, dict[str, tuple[IOType, ...]]] = {
    Role.prepare: {"validation_ratio": (IOType.number,), "test_ratio": (IOType.number,)},
    Role.train: {"train": (IOType.uri_folder, IOType.uri_file), "base_model": (IOType.string,),
                 "method": (IOType.string,), "epochs": (IOType.integer,), "max_steps": (IOType.integer,),
                 "per_device_batch": (IOType.integer,), "grad_accum": (IOType.integer,),
                 "max_seq_len": (IOType.integer,)},
    Role.evaluate: {"gate_metric": (IOType.string,)},
    Role.register: {"name": (IOType.string,), "gate_metric": (IOType.string,)},
    Role.deploy: {},
}


class ComponentSpec(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    version: str = Field(pattern=r"^[0-9]+\.[0-9]+\.[0-9]+([.+-][0-9A-Za-z.-]+)?$")
    description: str = ""
    role: Role | None = Field(None, description="what the step does for the pipeline: " + ", ".join(Role))
    environment: str = Field(pattern=NAME_PATTERN)
    deploys_image: str | None = Field(
        None, pattern=NAME_PATTERN,
        description="the environment whose image the step hands to a platform to run (a serving image); the step "
                    "gets it in TUNELINE_DEPLOY_IMAGE, from the same registry, tag or lock as its own image")
    loads_models: bool = Field(
        False,
        description="the step may download a model from the Hugging Face Hub without taking one as a model_ref "
                    "input (the base model of the adapter it registers or deploys): it gets what a model_ref "
                    "step gets, the Hub token and, on Kubeflow, the shared Hugging Face cache")
    inputs: dict[str, InputSpec] = Field(default_factory=dict)
    outputs: dict[str, OutputSpec] = Field(default_factory=dict)
    command: str = Field(min_length=1)
    resources: Resources = Field(default_factory=Resources)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    cache: bool = True

    @field_validator("command")
    @classmethod
    def _command_parses(cls, value: str) -> str:
        parse_command(value)  # a CommandError is a ValueError: reported at the component's `command`
        return value

    @property
    def command_items(self) -> list[Item]:
        """The command template's tokens (tuneline.spec.command), parsed when the component loaded; a new list
        each time, for the caller to extend."""
        return list(parse_command(self.command))

    @field_validator("inputs", "outputs")
    @classmethod
    def _identifier_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not re.match(IDENT_PATTERN, str(key)):
                raise ValueError(f"name '{key}' must match {IDENT_PATTERN}")
        return value

    @model_validator(mode="after")
    def _no_name_clash(self) -> ComponentSpec:
        clash = set(self.inputs) & set(self.outputs)
        if clash:
            raise ValueError(f"names used as both input and output: {sorted(clash)}")
        return self

    @property
    def resume_outputs(self) -> list[str]:
        """The outputs declared `resume: true`, in declaration order."""
        return [name for name, out in self.outputs.items() if out.resume]

    @model_validator(mode="after")
    def _role_inputs_declared(self) -> ComponentSpec:
        if self.role is None:
            return self
        for name, kinds in ROLE_INPUTS[self.role].items():
            declared = self.inputs.get(name)
            if declared is None or declared.type not in kinds:
                raise ValueError(f"role '{self.role.value}' needs an input '{name}' of type "
                                 f"{' or '.join(k.value for k in kinds)}")
        return self


# ---------------------------------------------------------------------------------------------- pipeline


class Toleration(Strict):
    key: str
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None


class KubeflowCompute(Strict):
    cpu: float | str | None = None
    memory: str | None = Field(None, pattern=QUANTITY_PATTERN)
    gpus: int = Field(0, ge=0)
    accelerator: str | None = Field(None, description="node label value for the GPU type, e.g. nvidia-a100")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    spot: bool = Field(False, description="tolerate the AKS spot taint and prefer spot nodes")
    shm: str | None = Field(None, pattern=QUANTITY_PATTERN, description="size of /dev/shm (emptyDir, Memory)")
    nodes: int = Field(1, ge=1, description="more than 1 runs the step as a job of `launcher`'s kind")
    processes_per_node: int = Field(1, ge=1)
    launcher: Literal["trainjob", "pytorchjob"] = Field(
        "trainjob", description="multi-node job kind: Kubeflow Trainer v2 TrainJob (torch-distributed runtime), "
                                "or the legacy Training Operator v1 PyTorchJob")


class AzureMLCompute(Strict):
    cluster: str
    instance_type: str | None = None
    nodes: int = Field(1, ge=1)
    processes_per_node: int = Field(1, ge=1)
    shm_size: str | None = Field(None, pattern=r"^[0-9]+[bkmg]?$")
    spot: bool = Field(False, description="low-priority VMs: the cluster's compute file gets `tier: low_priority`; "
                                          "a preempted job fails, and submitted again it resumes from its "
                                          "`resume: true` outputs")


class ComputeProfile(Strict):
    kubeflow: KubeflowCompute | None = None
    azureml: AzureMLCompute | None = None


class ParamSpec(Strict):
    type: IOType
    default: Any = None
    target_defaults: dict[CompileTarget, Any] = Field(
        default_factory=dict, description="the default when compiled for a target (kfp, azureml, local), where the "
                                          "plain one cannot run there; --set wins over both")
    description: str = ""

    @model_validator(mode="after")
    def _default_matches(self) -> ParamSpec:
        if self.default is None:
            raise ValueError("a pipeline parameter needs a default (override it with --set)")
        problem = check_value(InputSpec(type=self.type), self.default)
        if problem:
            raise ValueError(f"default {self.default!r}: {problem}")
        for target, value in self.target_defaults.items():
            problem = check_value(InputSpec(type=self.type), value)
            if problem:
                raise ValueError(f"target_defaults.{target} {value!r}: {problem}")
        return self

    def default_for(self, target: str | None) -> Any:
        """The default of a compiled target, or of a run on this machine (target None: the local target's)."""
        return self.target_defaults.get(target or LOCAL_TARGET, self.default)


class StepSpec(Strict):
    component: str = Field(description="a folder holding component.yaml, relative to the project root (the "
                                       "nearest folder above the pipeline holding components/), or "
                                       "tuneline/<name> for a component shipped with tuneline")
    description: str = ""
    compute: str | None = Field(None, description="name of a profile under `compute:`")
    environment: str | None = Field(
        None, pattern=NAME_PATTERN,
        description="the image this step runs in when not its component's (environments/<name>), e.g. train-gpu "
                    "for an evaluate step placed on a GPU profile")
    inputs: dict[str, Any] = Field(default_factory=dict)
    when: str | None = Field(None, description="${{steps.<step>.outputs.<boolean output>}}")
    retries: int | None = Field(None, ge=0, le=20)
    timeout: str | int | None = Field(None, description="seconds, or e.g. '30m', '2h'")
    cache: bool | None = None

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: str | int | None) -> str | int | None:
        if value is not None:
            parse_duration(value)
        return value

    @property
    def timeout_seconds(self) -> float | None:
        return None if self.timeout is None else parse_duration(self.timeout)


class Schedule(Strict):
    cron: str
    timezone: str = "UTC"

    @field_validator("cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        check_cron(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        check_timezone(value)
        return value


class Triggers(Strict):
    new_data_fraction: float | None = Field(None, gt=0, description="retrain when this share of records is new")
    new_data_count: int | None = Field(None, gt=0, description="retrain when this many records are new")
    drift_psi: float | None = Field(None, gt=0, description="population stability index threshold")
    drift_ks: float | None = Field(None, gt=0, le=1, description="Kolmogorov-Smirnov statistic threshold")
    metric_drop: float | None = Field(None, gt=0, le=1, description="relative drop of the gate metric")
    max_age_days: float | None = Field(None, gt=0)
    rated_win_rate: float | None = Field(None, gt=0, lt=1, description="retrain when the champion's win rate over "
                                         "rated traffic (4-5 win, 3 tie, 1-2 or corrected loss) is below this with "
                                         "95% confidence; reads the ratings beside requests_log")
    requests_log: str | None = Field(None, description="where production requests are logged")
    fresh_labels: str | None = Field(None, description="labelled JSONL to re-evaluate the champion on")
    metric: str = Field(DEFAULT_GATE_METRIC, description="the gate metric compared for metric_drop")
    dataset_param: str | None = Field(None, description="parameter naming the data source (default: the first "
                                                        "uri_file parameter)")
    model_name: str | None = Field(None, description="registered model to watch (default: the register step's)")


class Images(Strict):
    registry: str = Field(description="e.g. myregistry.azurecr.io/tuneline")
    tag: str = Field(description="image tag or sha256 digest shared by every environment")


class PipelineSpec(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    params: dict[str, ParamSpec] = Field(default_factory=dict)
    compute: dict[str, ComputeProfile] = Field(default_factory=dict)
    steps: dict[str, StepSpec] = Field(min_length=1)
    schedule: Schedule | None = None
    triggers: Triggers | None = None
    images: Images | None = None

    @field_validator("params", "steps", "compute")
    @classmethod
    def _identifier_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not re.match(IDENT_PATTERN, str(key)):
                raise ValueError(f"name '{key}' must match {IDENT_PATTERN}")
        return value


# ---------------------------------------------------------------------------------------------- values


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d)?\s*$")


def parse_duration(value: str | int | float) -> float:
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30m'")
    if isinstance(value, int | float):
        if value <= 0:
            raise ValueError("a duration must be positive")
        return float(value)
    match = _DURATION.match(value)
    if not match:
        raise ValueError(f"'{value}' is not a duration (use seconds, or e.g. '90s', '30m', '2h')")
    number = float(match.group(1))
    if number <= 0:
        raise ValueError("a duration must be positive")
    return number * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2) or "s"]


def check_value(spec: InputSpec, value: Any) -> str | None:
    """Why `value` does not fit `spec`, or None when it does."""
    kind = spec.type
    if kind == IOType.boolean:
        if not isinstance(value, bool):
            return f"expected a boolean, got {type(value).__name__}"
    elif kind == IOType.integer:
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expected an integer, got {type(value).__name__} {value!r}"
    elif kind == IOType.number:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"expected a number, got {type(value).__name__} {value!r}"
    elif kind == IOType.string:
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            return f"expected a string, got {type(value).__name__}"
    elif not isinstance(value, str) or not value:
        return f"expected a path for a {kind.value} input, got {type(value).__name__}"
    if spec.min is not None and value < spec.min:
        return f"{value} is below the minimum {spec.min:g}"
    if spec.max is not None and value > spec.max:
        return f"{value} is above the maximum {spec.max:g}"
    if spec.enum is not None and value not in spec.enum:
        return f"{value!r} is not one of {spec.enum}"
    return None


def parse_cli_value(kind: IOType, text: str) -> Any:
    """Turn a `--set name=value` string into the parameter's type."""
    if kind == IOType.boolean:
        lowered = text.strip().lower()
        if lowered in ("true", "1", "yes"):
            return True
        if lowered in ("false", "0", "no"):
            return False
        raise ValueError(f"'{text}' is not a boolean (true/false)")
    if kind == IOType.integer:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"'{text}' is not an integer") from None
    if kind == IOType.number:
        try:
            return float(text)
        except ValueError:
            raise ValueError(f"'{text}' is not a number") from None
    return text
