"""The typed DAG every executor consumes: steps, their bindings, edges and a topological plan.

The local runner and both compilers read this, never the YAML, so the three cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .spec import Binding, Component, Literal, OutputRef, ParamRef, Pipeline
from .spec.load import upstream_steps
from .spec.model_uri import is_moving_reference
from .spec.models import ComputeProfile, IOType, StepSpec


@dataclass
class Node:
    name: str
    component: Component
    step: StepSpec
    bindings: dict[str, Binding]
    condition: OutputRef | None
    upstream: set[str] = field(default_factory=set)
    downstream: set[str] = field(default_factory=set)
    # input -> the registry reference it is bound to, where that reference can move (`models:/name@champion`)
    moving_inputs: dict[str, str] = field(default_factory=dict)

    @property
    def retries(self) -> int:
        return self.step.retries if self.step.retries is not None else self.component.spec.retry.max

    @property
    def environment(self) -> str:
        """The image the step runs in: the step's own choice, else its component's."""
        return self.step.environment or self.component.spec.environment

    @property
    def declares_cache(self) -> bool:
        """The step's `cache:`, else its component's: false for a step that acts on live state (register, deploy)."""
        return self.step.cache if self.step.cache is not None else self.component.spec.cache

    @property
    def cache_enabled(self) -> bool:
        """Declared, and no input bound to a reference that can move. No cache key sees an alias move: KFP's is
        the inputs' values, Azure ML's the inputs and parameters as written
        (azure-ai-docs how-to-debug-pipeline-reuse-issues.md), the local runner's the same. So a step reading
        `models:/name@champion` would be answered from a run made against last month's champion."""
        return self.declares_cache and not self.moving_inputs

    def input_type(self, name: str) -> IOType:
        return self.component.spec.inputs[name].type


@dataclass
class Edge:
    source: str          # upstream step
    output: str          # its output
    target: str          # downstream step
    input: str           # the input it feeds, or "when" for a condition


@dataclass
class PipelineGraph:
    pipeline: Pipeline
    nodes: dict[str, Node]
    order: list[str]

    @property
    def name(self) -> str:
        return self.pipeline.name

    @property
    def params(self) -> dict[str, Any]:
        return self.pipeline.params

    def for_target(self, target: str) -> PipelineGraph:
        """The graph with the parameter values of compile target `target` (see `Pipeline.for_target`)."""
        if self.pipeline.target == target:
            return self
        return build_graph(self.pipeline.for_target(target))

    def compute(self, node: Node) -> ComputeProfile | None:
        if node.step.compute is None:
            return None
        return self.pipeline.spec.compute[node.step.compute]

    def edges(self) -> list[Edge]:
        edges = []
        for name in self.order:
            node = self.nodes[name]
            for input_name, binding in node.bindings.items():
                if isinstance(binding, OutputRef):
                    edges.append(Edge(binding.step, binding.output, name, input_name))
            if node.condition is not None:
                edges.append(Edge(node.condition.step, node.condition.output, name, "when"))
        return edges

    def downstream_closure(self, names: set[str]) -> set[str]:
        """`names` and every step that depends on them, directly or not."""
        return self._closure(names, lambda node: node.downstream)

    def upstream_closure(self, names: set[str]) -> set[str]:
        """`names` and every step they depend on, directly or not."""
        return self._closure(names, lambda node: node.upstream)

    def _closure(self, names: set[str], neighbours: Callable[[Node], set[str]]) -> set[str]:
        seen = set(names)
        frontier = list(names)
        while frontier:
            for nxt in neighbours(self.nodes[frontier.pop()]):
                if nxt not in seen:
                    seen.add(nxt)
                    frontier.append(nxt)
        return seen

    def resolve_literal(self, binding: Binding) -> Any:
        """The value of a parameter or literal binding (step outputs are only known at run time)."""
        if isinstance(binding, ParamRef):
            return self.params[binding.name]
        if isinstance(binding, Literal):
            return binding.value
        raise TypeError(f"{binding} is a step output")


def _moving_inputs(bindings: dict[str, Binding], params: dict[str, Any]) -> dict[str, str]:
    """Inputs bound (directly or through a parameter's value here) to a model reference resolved at read time."""
    moving = {}
    for name, binding in bindings.items():
        value = params.get(binding.name) if isinstance(binding, ParamRef) else (
            binding.value if isinstance(binding, Literal) else None)
        if isinstance(value, str) and is_moving_reference(value):
            moving[name] = value
    return moving


def build_graph(pipeline: Pipeline) -> PipelineGraph:
    nodes: dict[str, Node] = {}
    for name, step in pipeline.spec.steps.items():
        bindings = pipeline.bindings[name]
        condition = pipeline.conditions.get(name)
        nodes[name] = Node(name=name, component=pipeline.components[name], step=step, bindings=bindings,
                           condition=condition, upstream=upstream_steps(bindings, condition),
                           moving_inputs=_moving_inputs(bindings, pipeline.params))
    for node in nodes.values():
        for up in node.upstream:
            nodes[up].downstream.add(node.name)
    # Kahn's algorithm, ties broken by the order steps are written in, so plans are stable and readable.
    written = list(pipeline.spec.steps)
    waiting = {name: set(node.upstream) for name, node in nodes.items()}
    order: list[str] = []
    while waiting:
        ready = [name for name in written if name in waiting and not waiting[name]]
        if not ready:
            raise ValueError(f"cycle among steps {sorted(waiting)}")  # load_pipeline reports cycles first
        order.append(ready[0])
        del waiting[ready[0]]
        for deps in waiting.values():
            deps.discard(ready[0])
    return PipelineGraph(pipeline=pipeline, nodes=nodes, order=order)
