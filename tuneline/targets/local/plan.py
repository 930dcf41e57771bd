"""What `tuneline run` would do, without doing it: `tuneline run PIPELINE --dry-run`.

Each step's cache key is computed as the runner computes it (`LocalRunner._resolve_inputs`), from input files'
digests and, for inputs fed by an upstream step, that step's cached outputs; a step whose upstream would run has
unknown inputs, so it would run too. Nothing is written: no run folder, no cache entry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...graph import Node, PipelineGraph
from ...spec import IOType, OutputRef
from ...step.cache import StepCache, step_cache_key
from ...step.digest import path_sha256
from .runner import RunOptions


@dataclass
class PlannedStep:
    name: str
    component: str
    action: str          # "cached", "run", "run if <condition>", "not selected", "not cached", "missing input"
    why: str
    where: str           # what executes it on this machine, and the compute profile it asks for on a cluster


def _where(graph: PipelineGraph, node: Node) -> str:
    gpus = node.component.spec.resources.gpus
    here = f"here (wants {gpus} GPU; uses one if present)" if gpus else "here"
    return f"{here}; compiled: profile '{node.step.compute}'" if node.step.compute else here


def plan(graph: PipelineGraph, options: RunOptions) -> list[PlannedStep]:
    cache = StepCache(options.home / "cache")
    known: dict[str, dict[str, Any] | None] = {}  # step -> cached outputs (None: it would run, outputs unknown)
    forced = set()
    selected = set(graph.order)
    if options.only_step:
        selected = graph.upstream_closure({options.only_step})
        forced = {options.only_step}
    elif options.from_step:
        forced = graph.downstream_closure({options.from_step})
    steps = []
    for name in graph.order:
        node = graph.nodes[name]
        component = node.step.component
        if name not in selected:
            known[name] = None
            steps.append(PlannedStep(name, component, "not selected", f"--only {options.only_step}",
                                     _where(graph, node)))
            continue
        key_inputs, missing = _key_inputs(graph, node, known)
        condition = f" if {node.condition.step}.{node.condition.output}" if node.condition else ""
        if missing:
            known[name] = None
            action = "missing input" if "upstream" not in missing else (
                "not cached" if options.only_step and name not in forced else "run" + condition)
            steps.append(PlannedStep(name, component, action, missing, _where(graph, node)))
            continue
        key = step_cache_key(node.component.folder, node.component.spec.model_dump(mode="json"), key_inputs)
        entry = cache.lookup(key)
        use_cache = node.cache_enabled and not options.no_cache and name not in forced
        cache_only = bool(options.only_step) and name not in forced  # --only takes its inputs from the cache
        if entry is not None and (use_cache or cache_only):
            known[name] = entry.outputs
            steps.append(PlannedStep(name, component, "cached", f"cache entry {key[:12]}", _where(graph, node)))
        elif cache_only:
            known[name] = None
            steps.append(PlannedStep(name, component, "not cached", f"--only {options.only_step} needs its cached "
                                     "result: run it first", _where(graph, node)))
        else:
            known[name] = None
            why = ("--no-cache" if options.no_cache else "forced by --from/--only" if name in forced
                   else "caching is off for this step" if not node.declares_cache
                   else _moving_why(node) if node.moving_inputs else "no cache entry for these inputs")
            steps.append(PlannedStep(name, component, "run" + condition, why, _where(graph, node)))
    return steps


def _key_inputs(graph: PipelineGraph, node: Node, known: dict[str, dict[str, Any] | None]
                ) -> tuple[dict[str, Any], str]:
    """The cache-key inputs of `node`, or why they are unknown before the run."""
    key: dict[str, Any] = {}
    for name, spec_in in node.component.spec.inputs.items():
        binding = node.bindings.get(name)
        if binding is None:
            if spec_in.default is not None:
                key[name] = spec_in.default
            continue
        if isinstance(binding, OutputRef):
            outputs = known.get(binding.step)
            if outputs is None:
                return {}, f"upstream '{binding.step}' would run, so its outputs are not known yet"
            out = outputs[binding.output]
            key[name] = {"sha256": out["sha256"]} if "sha256" in out and "value" not in out else out["value"]
            continue
        value = graph.resolve_literal(binding)
        if spec_in.type.is_artifact:
            path = Path(value) if os.path.isabs(value) else graph.pipeline.root / value
            exists = path.is_file() if spec_in.type == IOType.uri_file else path.is_dir()
            if not exists:
                return {}, f"input '{name}': not found: {value}"
            key[name] = {"sha256": path_sha256(path)}
        else:
            key[name] = value
    return key, ""


def render(graph: PipelineGraph, steps: list[PlannedStep], home: Path) -> str:
    rows = [("step", "plan", "component", "why", "where")]
    rows += [(s.name, s.action, s.component, s.why, s.where) for s in steps]
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = [f"plan for {graph.name} ({graph.pipeline.path}); state folder {home}; nothing is run:"]
    for row in rows:
        lines.append("  " + "  ".join(f"{cell:<{w}}" for cell, w in zip(row[:4], widths, strict=True)) + "  " + row[4])
    running = sum(1 for s in steps if s.action.startswith("run"))
    cached = sum(1 for s in steps if s.action == "cached")
    lines.append(f"{running} step{'s' if running != 1 else ''} would run, {cached} from the cache")
    return "\n".join(lines)


def _moving_why(node: Node) -> str:
    name, value = next(iter(sorted(node.moving_inputs.items())))
    return f"not cached: input '{name}' reads {value}, which can point elsewhere by the next run"
