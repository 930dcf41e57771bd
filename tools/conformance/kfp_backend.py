"""What the KFP backend does with a compiled package's commands and platform spec, restated from its Go source so
that tests on the compiled IR can hold the package to it (no KFP backend can run here; kfp.local does otherwise).

Run as: nothing; tests/targets/compile/test_kfp_backend.py imports it, and `python -m tools.conformance.kfp_backend`
prints the supported-versions table of docs/kubeflow-versions.md.

The supported versions and what each does live in one table, the `kubeflow:` section of k8s/supported.yaml. Read
in kubeflow/pipelines at the tags that table names:
- Placeholders. The driver puts the container's command and args in the pod as they are; the launcher replaces,
  with `strings.ReplaceAll` on every argument after the first, each key of `getPlaceholders`:
  `{{$.inputs.parameters['x']}}`, `{{$.inputs.artifacts['x'].path|uri}}`, `{{$.outputs.artifacts['x'].path|uri}}`,
  `{{$.outputs.parameters['x'].output_file}}` (backend/src/v2/component/launcher_v2.go). A key it has no value for
  stays in the argument as literal text, and so does any `{"Concat": ...}` or `{"IfPresent": ...}`. The launcher
  adds the component's parameter defaults first (`addDefaultParams`). From 2.14.0 the first argument gets no
  substitution (`compileCmdAndArgs` replaces into `cmd` but returns `compiledCmd`). From 2.17.0 the driver
  substitutes input parameters into every argument that names no `$.outputs` and resolves `{"IfPresent": ...}`
  of parameters (backend/src/v2/driver/util.go, `resolveContainerArgs`), from the executor input *without*
  defaults (backend/src/v2/driver/resolve.go leaves them to the launcher), and fails the task on a parameter it
  does not have: "parameter %q not found in executor input". An unbound optional input is absent from the
  executor input on every version; the compiler never leaves one in a command (tuneline.targets.kfp.compiler).
- Platform spec. Each executor's KubernetesExecutorConfig is parsed twice. The API server parses it strictly, in
  every version, when it compiles the run's Argo workflow (plain protojson.Unmarshal in
  backend/src/v2/compiler/argocompiler/container.go): an unknown field refuses the run at submission. The driver
  parses it again, strictly up to 2.4.x and leniently from 2.5.0 (backend/src/v2/cmd/driver/main.go,
  backend/src/common/util/json.go). So `platform_parse` is strict for every version. A field the proto knows is
  still only applied when the driver reads it (backend/src/v2/driver/driver.go, k8s.go).
- Retries. The Argo workflow gets a `retryStrategy` for a task's `retryPolicy` from 2.4.1
  (backend/src/v2/compiler/argocompiler/container.go); its `retryPolicy` is never set, so Argo's default,
  OnFailure, applies: a pod that ends in Error (deleted with its node, "pod deleted") is not retried.
"""

from __future__ import annotations

import json
import re
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict

REPO = Path(__file__).resolve().parents[2]
TABLE = REPO / "k8s" / "supported.yaml"
FIELDS = REPO / "tests" / "targets" / "compile" / "fixtures" / "kfp-platform"  # {message: {jsonName: type}} per version

PARAMETER = re.compile(r"\{\{\$\.inputs\.parameters\['(.+?)'\]\}\}")  # the driver's fullInputParameterRe
ANY_PLACEHOLDER = re.compile(r"\{\{\$[^}]*\}\}")


class BackendError(Exception):
    """What the backend would fail the task with."""


# ------------------------------------------------------------------------------------------------ the table


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PipelinesVersion(_Strict):
    version: str
    supported: bool
    why: str
    placeholders: Literal["launcher", "launcher-first-arg-verbatim", "driver-and-launcher"]
    platform_parse: Literal["strict", "lenient"]
    platform_fields: str  # the tests/targets/compile/fixtures/kfp-platform/ table of its kubernetes_platform proto
    platform_applies: list[str]  # KubernetesExecutorConfig fields the driver reads
    retries: bool


class TrainerVersion(_Strict):
    version: str
    supported: bool
    why: str


class PlatformRelease(_Strict):
    kubeflow: str
    pipelines: str
    training_operator: str | None
    trainer: str | None
    tuneline: str


class KubeflowTable(_Strict):
    pipelines: list[PipelinesVersion]
    trainer: list[TrainerVersion]
    training_operator: str
    releases: list[PlatformRelease]

    def oldest_pipelines(self) -> PipelinesVersion:
        return min((v for v in self.pipelines if v.supported), key=lambda v: _key(v.version))

    def supported_pipelines(self) -> list[PipelinesVersion]:
        return [v for v in self.pipelines if v.supported]

    def pipelines_version(self, version: str) -> PipelinesVersion:
        return next(v for v in self.pipelines if v.version == version)

    def oldest_trainer(self) -> TrainerVersion:
        return min((v for v in self.trainer if v.supported), key=lambda v: _key(v.version))


def _key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in re.findall(r"\d+", version)[:3])


def load_kubeflow_table(path: Path = TABLE) -> KubeflowTable:
    return KubeflowTable.model_validate(yaml.safe_load(path.read_text())["kubeflow"])


def platform_fields(version: PipelinesVersion) -> dict[str, dict[str, str]]:
    return yaml.safe_load((FIELDS / f"{version.platform_fields}.yaml").read_text())["messages"]


# ------------------------------------------------------------------------------------------ placeholders


def launcher_text(value: Any) -> str:
    """A parameter value as the launcher writes it: strconv.FormatFloat(v, 'f', -1, 64) for a number."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        text = format(Decimal(repr(float(value))), "f")
        return text.rstrip("0").rstrip(".") if "." in text else text
    return str(value)


def driver_text(value: Any) -> str:
    """A parameter value as the 2.17 driver writes it (`pbValueToString`): %d when integral, else %g."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        number = float(value)
        if number == int(number):
            return str(int(number))
        dec = Decimal(repr(number))
        exp10 = dec.adjusted()
        if exp10 < -4 or exp10 >= 6:  # Go's %g with the shortest precision switches at 1e-4 and 1e6
            mantissa = format(dec.scaleb(-exp10).normalize(), "f")
            return f"{mantissa}e{'-' if exp10 < 0 else '+'}{abs(exp10):02d}"
        return launcher_text(number)
    return str(value)


def launcher_keys(params: dict[str, Any], artifacts: dict[str, str], outputs: dict[str, str],
                  output_files: dict[str, str]) -> dict[str, str]:
    keys = {f"{{{{$.inputs.parameters['{n}']}}}}": launcher_text(v) for n, v in params.items()}
    for name, path in artifacts.items():
        keys[f"{{{{$.inputs.artifacts['{name}'].path}}}}"] = path
    for name, path in outputs.items():
        keys[f"{{{{$.outputs.artifacts['{name}'].path}}}}"] = path
    for name, path in output_files.items():
        keys[f"{{{{$.outputs.parameters['{name}'].output_file}}}}"] = path
    return keys


def _driver_arguments(argv: list[str], passed: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for arg in argv:
        if "$.outputs" in arg:
            out.append(arg)
            continue
        if arg.strip().startswith('{"IfPresent":'):  # `resolveCondition`: parameters only, so an artifact is absent
            clause = json.loads(arg)["IfPresent"]
            chosen = clause.get("Then") if passed.get(clause["InputName"]) is not None else clause.get("Else")
            chosen = [] if chosen is None else [chosen] if isinstance(chosen, str) else chosen
            out.extend(_driver_arguments(chosen, passed))
            continue

        def one(match: re.Match[str]) -> str:
            if match.group(1) not in passed:
                raise BackendError(f"parameter {match.group(1)!r} not found in executor input")
            return driver_text(passed[match.group(1)])

        out.append(PARAMETER.sub(one, arg))
    return out


def resolve_argv(argv: list[str], mode: str, passed: dict[str, Any], defaults: dict[str, Any],
                 artifacts: dict[str, str], outputs: dict[str, str], output_files: dict[str, str]) -> list[str]:
    """The user command as the pod runs it. `passed`: parameters the task passes (what the driver has);
    `defaults`: the component's parameter defaults (what the launcher adds)."""
    if mode == "driver-and-launcher":
        argv = _driver_arguments(argv, passed)
    keys = launcher_keys({**defaults, **passed}, artifacts, outputs, output_files)
    first, rest = (argv[:1], argv[1:]) if mode != "launcher" else ([], argv)
    resolved = list(first)
    for arg in rest:
        for key, value in keys.items():
            arg = arg.replace(key, value)
        resolved.append(arg)
    for arg in resolved:
        if arg.lstrip().startswith(('{"Concat":', '{"IfPresent":')):
            raise BackendError(f"the command gets a literal JSON argument the backend does not resolve: {arg[:80]}")
        left = ANY_PLACEHOLDER.search(arg)
        if left:
            raise BackendError(f"the command gets the literal text {left.group(0)}: the backend has no value for it")
    return resolved


# ------------------------------------------------------------------------------------------- platform spec

_DEFAULTS = (None, False, 0, "", [], {}, "0")


def platform_problems(config: dict[str, Any], version: PipelinesVersion,
                      fields: dict[str, dict[str, str]]) -> list[str]:
    """Fields of one executor's KubernetesExecutorConfig that `version`'s driver rejects (strict parse), drops
    (lenient parse of an unknown field that is set) or does not apply."""
    problems: list[str] = []

    def walk(value: Any, message: str, where: str) -> None:
        known = fields.get(message)
        if known is None or not isinstance(value, dict):
            return  # a map, a scalar, or a message from the pipeline spec proto
        for key, item in value.items():
            if key not in known:
                if version.platform_parse == "strict":
                    problems.append(f"{where}.{key}: unknown to {version.version}'s driver, which rejects it")
                elif item not in _DEFAULTS:
                    problems.append(f"{where}.{key}: unknown to {version.version}'s driver, which drops it")
                continue
            kind = known[key].removeprefix("repeated ")
            nested = kind if kind in fields else next((m for m in fields if m.endswith("." + kind)
                                                       and m.startswith(message)), kind)
            for i, element in enumerate(item if isinstance(item, list) else [item]):
                walk(element, nested, f"{where}.{key}[{i}]" if isinstance(item, list) else f"{where}.{key}")

    walk(config, "KubernetesExecutorConfig", "")
    for key, item in config.items():
        if key in fields["KubernetesExecutorConfig"] and key not in version.platform_applies \
                and item not in _DEFAULTS:
            problems.append(f".{key}: {version.version}'s driver parses it but never applies it")
    return problems


def package_problems(package: Path, table: KubeflowTable | None = None) -> list[str]:
    """What the supported backends would do wrong with a compiled package, read statically: a Concat/IfPresent
    argument, a placeholder a task does not fill (with every value present, as the compiler guarantees), a
    placeholder in the first argument, and platform fields the oldest supported driver drops or does not apply.
    The KFP conformance harness refuses such a package before kfp.local, which would run it anyway."""
    table = table or load_kubeflow_table()
    spec, *rest = list(yaml.safe_load_all(package.read_text()))
    problems: list[str] = []
    for task_name, task in spec["root"]["dag"]["tasks"].items():
        component = spec["components"][task["componentRef"]["name"]]
        container = spec["deploymentSpec"]["executors"][component["executorLabel"]].get("container")
        if container is None:
            continue  # an importer
        outputs = component.get("outputDefinitions", {})
        passed = task.get("inputs", {})
        for version in table.supported_pipelines():
            try:
                resolve_argv(container["command"] + container.get("args", []), version.placeholders,
                             {n: "x" for n in passed.get("parameters", {})},
                             {} if version.placeholders == "driver-and-launcher" else {
                                 n: d["defaultValue"] for n, d in component.get("inputDefinitions", {})
                                 .get("parameters", {}).items() if "defaultValue" in d},
                             {n: "/in" for n in passed.get("artifacts", {})},
                             {n: "/out" for n in outputs.get("artifacts", {})},
                             {n: "/out" for n in outputs.get("parameters", {})})
            except BackendError as exc:
                problems.append(f"task {task_name} on KFP {version.version}: {exc}")
    oldest = table.oldest_pipelines()
    executors = (rest[0] if rest else {}).get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {})
    for label, config in executors.get("executors", {}).items():
        problems += [f"{label}{p}" for p in platform_problems(config, oldest, platform_fields(oldest))]
    return problems


def versions_markdown(table: KubeflowTable | None = None) -> str:
    """The docs' table, made from k8s/supported.yaml."""
    table = table or load_kubeflow_table()
    lines = ["| Kubeflow release | Kubeflow Pipelines | Training Operator (PyTorchJob) | Trainer (TrainJob) | "
             "tuneline |", "|---|---|---|---|---|"]
    for r in table.releases:
        lines.append(f"| {r.kubeflow} | {r.pipelines} | {r.training_operator or '-'} | {r.trainer or '-'} | "
                     f"{r.tuneline} |")
    lines += ["", "| Kubeflow Pipelines backend | supported | why |", "|---|---|---|"]
    lines += [f"| {v.version} | {'yes' if v.supported else 'no'} | {v.why} |" for v in table.pipelines]
    lines += ["", "| Kubeflow Trainer | supported | why |", "|---|---|---|"]
    lines += [f"| {v.version} | {'yes' if v.supported else 'no'} | {v.why} |" for v in table.trainer]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(versions_markdown())
