"""Compare each step's outputs on a target with those of `tuneline run` on the same inputs.

A step matches when both runs skipped it (its gate was false), or both ran it and every output agrees: the same
value for value outputs (the gate decision among them), the same content digest for artifacts. An artifact whose
digest differs still matches when it holds the same files and every differing file is JSON that agrees once the
measurements two runs cannot share are dropped (MEASUREMENT: durations, rates, memory peaks, MLflow run ids).
Some outputs cannot agree between two independent runs at all and are compared by presence only, each with its
reason: steps that declare `cache: false` (they act on live state, e.g. deploy), and the entries of VOLATILE.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneline.graph import PipelineGraph
from tuneline.spec.load import Component
from tuneline.step.digest import file_sha256, path_sha256, tree_files
from tuneline.targets.local import record as rec
from tuneline.targets.local.runner import read_value_output

# Outputs two correct runs cannot share, with the reason, found by what the component declares rather than by
# its name: every step that trains has both.
RUN_ID_OUTPUT = "mlflow_run_id"
RUN_ID_REASON = "a fresh MLflow run id (uuid) in each run's own tracking store"
RESUME_REASON = ("torch.save puts a random serialization id in every .pt file, and the Python RNG snapshot "
                 "differed too (a library draws from `random` outside the seeded loop); the model output, which "
                 "resuming must reproduce, is compared")
# (component, output) -> why two correct runs differ there, for outputs no declaration marks.
VOLATILE: dict[tuple[str, str], str] = {
    ("register", "card"): "the model card names the pipeline run and the MLflow run",
}
# `resumes` counts how often a run was resumed, which a preempted-and-resumed run must not change otherwise.
MEASUREMENT = re.compile(r"^(seconds|.*_seconds|.*_s|.*_per_s|.*_per_second|peak_memory_mb|mlflow_run_id|resumes)$")


def _without_measurements(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_measurements(v) for k, v in value.items() if not MEASUREMENT.match(str(k))}
    if isinstance(value, list):
        return [_without_measurements(v) for v in value]
    return value


def _json_or_none(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None


def artifact_difference(mine: Path, theirs: Path) -> str | None:
    """None when the two agree (see the module docstring), else what differs."""
    if path_sha256(mine) == path_sha256(theirs):
        return None
    if mine.is_file() != theirs.is_file():
        return "a file on one side, a folder on the other"
    pairs = [(mine, theirs)] if mine.is_file() else None
    if pairs is None:
        left = {p.relative_to(mine) for p in tree_files(mine)}
        right = {p.relative_to(theirs) for p in tree_files(theirs)}
        if left != right:
            return f"files differ: {sorted(map(str, left ^ right))[:4]}"
        pairs = [(mine / rel, theirs / rel) for rel in sorted(left)]
    for a, b in pairs:
        if file_sha256(a) == file_sha256(b):
            continue
        ja, jb = _json_or_none(a), _json_or_none(b)
        if ja is None or jb is None or _without_measurements(ja) != _without_measurements(jb):
            return f"{a.name} differs"
    return None


@dataclass
class StepMatch:
    step: str
    local: str
    target: str
    problems: list[str] = field(default_factory=list)
    compared: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _local_status(status: str) -> str:
    return {rec.CACHED: rec.SUCCEEDED}.get(status, status)


def volatile_reason(component: Component, output: str) -> str | None:
    """Why this output differs between two correct runs, or None when it must agree."""
    spec = component.spec.outputs[output]
    if spec.resume:
        return RESUME_REASON
    if output == RUN_ID_OUTPUT and not spec.type.is_artifact:
        return RUN_ID_REASON
    return VOLATILE.get((component.name, output))


def compare_steps(graph: PipelineGraph, local: rec.RunRecord, target_status: dict[str, str],
                  target_output: Callable[[str, str], Any]) -> list[StepMatch]:
    """`target_output(step, output)` gives a Path (artifact) or a parsed value, or None when missing."""
    matches = []
    for name in graph.order:
        node = graph.nodes[name]
        step = local.steps[name]
        match = StepMatch(step=name, local=_local_status(step.status), target=target_status.get(name, "not-run"))
        matches.append(match)
        if match.local != match.target:
            match.problems.append(f"local {match.local}, target {match.target}")
            continue
        if match.local != rec.SUCCEEDED:
            continue  # both skipped: the same gate decision
        for out_name, spec in node.component.spec.outputs.items():
            mine = step.outputs.get(out_name)
            theirs = target_output(name, out_name)
            if mine is None or theirs is None:
                match.problems.append(f"{out_name}: missing ({'local' if mine is None else 'target'})")
                continue
            volatile = volatile_reason(node.component, out_name)
            if volatile or not node.declares_cache:
                match.compared.append(f"{out_name}: present ({volatile or 'cache: false, acts on live state'})")
                continue
            if spec.type.is_artifact:
                digest = path_sha256(Path(theirs))
                difference = None if digest == mine["sha256"] else artifact_difference(Path(mine["path"]), Path(theirs))
                if difference:
                    match.problems.append(f"{out_name}: {difference}")
                elif digest == mine["sha256"]:
                    match.compared.append(f"{out_name}: sha256 {digest[:12]}")
                else:
                    match.compared.append(f"{out_name}: same content but measurements")
            else:
                value = read_value_output(Path(theirs), spec.type) if isinstance(theirs, Path) else theirs
                if value != mine["value"]:
                    match.problems.append(f"{out_name}: {value!r} != local {mine['value']!r}")
                else:
                    match.compared.append(f"{out_name}: {value!r}")
    return matches


def report(target: str, matches: list[StepMatch], verbose: bool = True) -> str:
    lines = []
    if verbose:
        for m in matches:
            mark = "ok " if m.ok else "DIFF"
            detail = "; ".join(m.problems or m.compared) or m.local
            lines.append(f"  {mark} {m.step:<12} {m.local:<9} {detail}")
    good = sum(m.ok for m in matches)
    lines.append(f"{target} conformance: {good}/{len(matches)} steps match local")
    return "\n".join(lines)
