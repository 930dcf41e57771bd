"""Compile one pipeline file for one or more targets into `<out>/<pipeline file stem>/<target>/`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..graph import PipelineGraph, build_graph
from ..spec import load_pipeline
from ..spec.models import COMPILE_TARGETS
from . import registry
from .images import check_environments
from .options import CompileOptions

TARGETS = COMPILE_TARGETS


@dataclass
class CompileOutput:
    pipeline: str
    folder: Path
    files: list[Path] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # what a target cannot express; printed by the CLI


def compile_graph(graph: PipelineGraph, targets: tuple[str, ...], folder: Path,
                  options: CompileOptions) -> CompileOutput:
    """Each target gets the graph with its own parameter defaults (`target_defaults`); a value it cannot run
    raises SpecError naming the step input."""
    options = options.for_pipeline(graph.pipeline.spec.images)
    if options.production:
        check_environments(graph.pipeline.root, {n.environment for n in graph.nodes.values()}
                           | {n.component.spec.deploys_image for n in graph.nodes.values()
                              if n.component.spec.deploys_image})
    output = CompileOutput(pipeline=graph.name, folder=folder)
    for name in targets:
        compiled = registry.get(name).compile(graph.for_target(name), folder / name, options)
        output.files += compiled.files
        output.warnings += [f"{name}: {w}" for w in compiled.warnings]
    return output


def compile_file(pipeline_path: str | Path, targets: tuple[str, ...], out: Path, options: CompileOptions,
                 overrides: dict[str, str] | None = None) -> CompileOutput:
    graph = build_graph(load_pipeline(pipeline_path, overrides))
    return compile_graph(graph, targets, Path(out) / Path(pipeline_path).stem, options)
