"""Kubeflow Pipelines v2 behind the Target interface (tuneline.targets.base)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...graph import PipelineGraph
from .. import RECURRING_RUN_FILE
from ..base import Compiled, Setting, SubmitSettings, values_as_run_arguments
from ..options import CompileOptions
from .options import COMPILE_SETTINGS, kfp_options


class KfpTarget:
    name = "kfp"
    settings = (
        Setting("host", ("--host", "--kfp-host"), "KFP API endpoint, e.g. https://kfp.example.com "
                "(default: $KF_PIPELINES_ENDPOINT)", env=("KF_PIPELINES_ENDPOINT",), required=True),
        Setting("namespace", ("--namespace", "--kfp-namespace"), "KFP namespace of a multi-user install "
                "(default: $KFP_NAMESPACE)", env=("KFP_NAMESPACE",)),
        Setting("service_account", ("--service-account", "--kfp-service-account"), "the service account the run's "
                "pods use (default: $KFP_SERVICE_ACCOUNT, else the namespace's pipeline runner)",
                env=("KFP_SERVICE_ACCOUNT",)),
    )

    compile_settings = COMPILE_SETTINGS

    def compile_options(self, values: dict[str, Any]) -> Any:
        return kfp_options(values)

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
        return values_as_run_arguments(sets, run_params)

    def data_problem(self, name: str, value: str, options: CompileOptions, compiled_in: bool) -> str | None:
        if compiled_in:
            return None  # the compiler checks it and names the file, line and field
        from .compiler import importer_uri_problem
        from .options import KfpOptions

        # a run argument never meets the compiler's check
        why = importer_uri_problem(value, options.of("kfp", KfpOptions()).pipeline_root)
        return f"parameter '{name}' = {value}: KFP cannot import it: {why}" if why else None

    def submission_options(self, options: CompileOptions) -> CompileOptions:
        return options

    def submit(self, folder: Path, pipeline: str, arguments: dict[str, Any], settings: SubmitSettings,
               schedule: bool = False, dry_run: bool = False, no_cache: bool = False) -> list[str]:
        from ..plan import plan_json
        from .submit import execute_kfp, kfp_plan

        plan = kfp_plan(folder, str(settings.get("host")), pipeline, settings.experiment, settings.get("namespace"),
                        arguments, no_cache, schedule, settings.get("service_account"))
        return [plan_json(plan)] if dry_run else execute_kfp(plan)

    def run_state(self, run_id: str, settings: SubmitSettings) -> str | None:
        if not settings.get("host"):
            return None
        import kfp

        return str(kfp.Client(host=settings.get("host"), namespace=settings.get("namespace")).get_run(run_id).state)

    def explain(self, chain: list[BaseException], host: str | None, chosen: bool) -> str | None:
        if not (chosen and host):
            return None
        return (f"cannot reach {host}: check --host (the KFP API endpoint, e.g. http://localhost:8080 while "
                "`kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80` runs) and that the port-forward or "
                "ingress is up; see docs/troubleshooting.md.")


TARGET = KfpTarget()
