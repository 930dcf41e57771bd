"""Checks of a loaded pipeline's values that can run before any step does, so a mistake costs seconds, not a
training run: gate expressions parsed and their metrics known, regular expressions compiled, local input files
present, base models resolvable.

What a value means comes from its input's `kind:` in component.yaml (gate_expression, metric, regex, model_ref)
and its type (uri_file, uri_folder); nothing here knows a component by name. `tuneline validate` and
`tuneline run` both call `check`; problems carry the `file:line:col` of the value's source (the parameter, or the
step input), and notes are what is worth saying without refusing (a Hub model that will be downloaded).
"""

from __future__ import annotations

import ast
import difflib
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..spec.load import Literal, ParamRef, Pipeline, is_local_path
from ..spec.models import InputSpec, IOType
from ..spec.problems import Problem


@dataclass
class Findings:
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _suggest(name: str, options: list[str]) -> str:
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def _metric_names() -> list[str]:
    from tuneline.spec.metrics import JSON_METRICS, TEXT_METRICS

    return sorted((*TEXT_METRICS, "perplexity", *JSON_METRICS))


def gate_problem(expression: str) -> str | None:
    """Why a gate expression cannot be evaluated, with the column of the mistake, or None when it can."""
    from tuneline.spec.gates import Gate, GateError
    from tuneline.spec.metrics import unknown_metric

    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as err:
        return (f"gate {expression!r}: syntax error at column {err.offset}: {err.msg}; a gate compares "
                "model.metric terms, e.g. tuned.exact_match >= base.exact_match + 0.1")
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and not isinstance(node.op, ast.Add | ast.Sub | ast.Mult | ast.Div):
            between = expression.strip()[node.left.end_col_offset:node.right.col_offset]
            column = node.left.end_col_offset + len(between) - len(between.lstrip()) + 1
            return (f"gate {expression!r}: operator {between.strip()!r} at column {column} is not allowed; use a "
                    "comparison (>, >=, <, <=, ==, !=), + - * /, and/or/not")
    try:
        gate = Gate(expression)
    except GateError as err:
        return f"{err}"
    from tuneline.spec.metrics import WIN_RATE_FIELDS as FIELDS

    for model, metric in sorted(gate.references):
        if model == "win_rate":
            if metric not in FIELDS:
                column = expression.find(f"win_rate.{metric}") + len("win_rate.") + 1
                return (f"gate {expression!r}: unknown field 'win_rate.{metric}' at column {column}"
                        f"{_suggest(metric, list(FIELDS))} (win_rate has {', '.join(FIELDS)})")
            continue
        reason = unknown_metric(metric)
        if reason:
            column = expression.find(f".{metric}") + 2
            return (f"gate {expression!r}: unknown metric '{metric}' at column {column}"
                    f"{_suggest(metric, _metric_names())}" + ("" if _suggest(metric, _metric_names()) else
                                                               f" ({reason})"))
    return None


def regex_problem(pattern: str) -> str | None:
    try:
        re.compile(pattern)
    except re.error as err:
        return (f"{pattern!r} is not a valid regular expression: {err.msg} at position {err.pos}; escape "
                "special characters (\\. \\( \\[) to match them literally")
    return None


def model_finding(value: str, root: Path) -> tuple[str | None, str | None]:
    """(problem, note) for a base model reference: a catalog name, a local model folder, or a Hub id."""
    from tuneline.llm.ml.models import CATALOG

    if value in CATALOG:
        return None, None
    path = Path(os.path.expanduser(value))
    path = path if path.is_absolute() else root / path
    if path.exists():
        if not (path / "config.json").is_file():
            return f"base model {value!r}: {path} is not a Hugging Face model folder (no config.json)", None
        return None, None
    catalog = ", ".join(sorted(CATALOG))
    if value.count("/") == 1 and not value.startswith((".", "/", "~")) and all(value.split("/")):
        if _in_hub_cache(value):
            return None, None
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
            return (f"base model {value!r} is not in the Hugging Face cache and HF_HUB_OFFLINE is set: download "
                    f"it first (huggingface-cli download {value}), or use a local model folder or a catalog "
                    f"name ({catalog})"), None
        return None, (f"base model {value!r} is not on this machine: the steps that use it download it from the "
                      f"Hugging Face Hub on first use (needs network access to huggingface.co). Offline, use "
                      f"a local model folder or a catalog name ({catalog}).")
    return (f"unknown base model {value!r}: use a catalog name ({catalog}), a local model folder (with "
            f"config.json), or a Hugging Face Hub id of the form org/name{_suggest(value, list(CATALOG))}"), None


def _in_hub_cache(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    found = try_to_load_from_cache(repo_id, "config.json")
    return isinstance(found, str)


def path_problem(spec: InputSpec, value: str, root: Path) -> str | None:
    path = Path(os.path.expanduser(value))
    where = path if path.is_absolute() else root / path
    if spec.type == IOType.uri_file and not where.exists():
        missing = "file"
    elif spec.type.is_folder and not where.is_dir():
        missing = "folder"
    else:
        return None
    relative = "" if path.is_absolute() else (f" (a path in the pipeline file is relative to the project root "
                                              f"{root}; on the command line, to the current folder)")
    return f"{missing} not found: {value}{relative}"


def check(pipeline: Pipeline) -> Findings:
    """Every problem of item values known before the run, and the notes worth printing."""
    found = Findings()
    seen: set[tuple[str, ...]] = set()
    for step, component in pipeline.components.items():
        inputs = component.spec.inputs
        metric_input = next((n for n, s in inputs.items() if s.kind == "metric"), None)
        for name, spec in inputs.items():
            binding = pipeline.bindings.get(step, {}).get(name)
            if isinstance(binding, ParamRef):
                label = f"--set {binding.name}" if binding.name in pipeline.overridden else binding.name
                loc: tuple[Any, ...] = ("params", binding.name)
                value = pipeline.params[binding.name]
            elif isinstance(binding, Literal):
                dotted = f"{step}.{name}"
                label = f"--set {dotted}" if dotted in pipeline.overridden else dotted
                loc = ("steps", step) if dotted in pipeline.overridden else ("steps", step, "inputs", name)
                value = binding.value
            else:
                continue  # a step output (known at run time) or the component's own default
            if not isinstance(value, str) or not value:
                continue
            problem = note = None
            if spec.kind == "gate_expression":
                from tuneline.spec.gates import expand

                metric = pipeline.input_value(step, metric_input) if metric_input else None
                problem = gate_problem(expand(value, metric) if isinstance(metric, str) and metric else value)
            elif spec.kind == "regex":
                problem = regex_problem(value)
            elif spec.kind == "model_ref":
                problem, note = model_finding(value, pipeline.root)
            elif spec.type.is_artifact and is_local_path(value):
                problem = path_problem(spec, value, pipeline.root)
            key = (label, problem or "", note or "")
            if key in seen:
                continue  # one parameter feeding several steps is one finding
            seen.add(key)
            if problem:
                found.problems.append(pipeline.source.problem(loc, f"{label}: {problem}", key=loc[0] == "params"))
            if note:
                found.notes.append(f"{pipeline.path}: {label}: {note}")
    return found
