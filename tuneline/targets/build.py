"""Compile one pipeline file for one or more targets into `<out>/<pipeline file stem>/<target>/`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..graph import PipelineGraph, build_graph
from ..spec import load_pipeline
from ..spec.models import COMPILE_TARGETS
from . import RECURRING_RUN_FILE
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
        check_environments(graph.pipeline.root, {n.environment for n in graph.nodes.values()})
    output = CompileOutput(pipeline=graph.name, folder=folder)
    schedule = graph.pipeline.spec.schedule
    if "kfp" in targets:
        from .kfp.compiler import compile_kfp  # kfp takes about a second to import: only when asked for
        from .schedule import kfp_recurring_run

        result = compile_kfp(graph.for_target("kfp"), folder / "kfp", options)
        output.files += [result.pipeline, *result.manifests]
        if schedule is not None:
            path = folder / "kfp" / RECURRING_RUN_FILE
            run = kfp_recurring_run(schedule, graph.name, options.no_cache)
            path.write_text(json.dumps(run.to_dict(), indent=2) + "\n")
            output.files.append(path)
    if "azureml" in targets:
        from .azureml.compiler import compile_azureml

        aml = compile_azureml(graph.for_target("azureml"), folder / "azureml", options)
        output.files += [*aml.components.values(), aml.job, *aml.computes] + ([aml.schedule] if aml.schedule else [])
        output.warnings += [f"azureml: {w}" for w in aml.warnings]
    return output


def compile_file(pipeline_path: str | Path, targets: tuple[str, ...], out: Path, options: CompileOptions,
                 overrides: dict[str, str] | None = None) -> CompileOutput:
    graph = build_graph(load_pipeline(pipeline_path, overrides))
    return compile_graph(graph, targets, Path(out) / Path(pipeline_path).stem, options)
