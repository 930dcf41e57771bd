"""Kubeflow Pipelines v2 behind the Target interface (tuneline.targets.base)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...graph import PipelineGraph
from .. import RECURRING_RUN_FILE
from ..base import Compiled, SubmitSettings
from ..options import CompileOptions


class KfpTarget:
    name = "kfp"

    def compile(self, graph: PipelineGraph, folder: Path, options: CompileOptions) -> Compiled:
        from .compiler import compile_kfp  # the KFP SDK takes about a second to import: only when asked for
        from .schedule import kfp_recurring_run

        result = compile_kfp(graph, folder, options)
        compiled = Compiled(files=[result.pipeline, *result.manifests])
        schedule = graph.pipeline.spec.schedule
        if schedule is not None:
            path = folder / RECURRING_RUN_FILE
            run = kfp_recurring_run(schedule, graph.name, options.no_cache)
            path.write_text(json.dumps(run.to_dict(), indent=2) + "\n")
            compiled.files.append(path)
        return compiled

    def split_values(self, sets: dict[str, str], run_params: dict[str, str]) -> tuple[dict[str, str],
                                                                                       dict[str, str]]:
        # A run argument overrides the compiled default: keep it out of the compiled values.
        return {k: v for k, v in sets.items() if k not in run_params}, dict(run_params)

    def data_problem(self, name: str, value: str, options: CompileOptions, compiled_in: bool) -> str | None:
        if compiled_in:
            return None  # the compiler checks it and names the file, line and field
        from .compiler import importer_uri_problem

        why = importer_uri_problem(value, options.kfp_pipeline_root)  # a run argument never meets that check
        return f"parameter '{name}' = {value}: KFP cannot import it: {why}" if why else None

    def submission_options(self, options: CompileOptions) -> CompileOptions:
        return options

    def missing_settings(self, settings: SubmitSettings) -> list[str]:
        return [] if settings.kfp_host else ["the KFP API endpoint: --kfp-host or KF_PIPELINES_ENDPOINT"]

    def submit(self, folder: Path, pipeline: str, arguments: dict[str, Any], settings: SubmitSettings) -> list[str]:
        from .submit import execute_kfp, kfp_plan

        plan = kfp_plan(folder, str(settings.kfp_host), pipeline, settings.experiment, settings.kfp_namespace,
                        arguments, service_account=settings.service_account)
        return execute_kfp(plan)

    def run_state(self, run_id: str, settings: SubmitSettings) -> str | None:
        if not settings.kfp_host:
            return None
        import kfp

        return str(kfp.Client(host=settings.kfp_host, namespace=settings.kfp_namespace).get_run(run_id).state)


TARGET = KfpTarget()
