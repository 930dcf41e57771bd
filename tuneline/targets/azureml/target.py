"""Azure ML behind the Target interface (tuneline.targets.base)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ...graph import PipelineGraph
from ..base import Compiled, SubmitSettings
from ..options import CompileOptions


class AzureMLTarget:
    name = "azureml"

    def compile(self, graph: PipelineGraph, folder: Path, options: CompileOptions) -> Compiled:
        from .compiler import compile_azureml

        aml = compile_azureml(graph, folder, options)
        return Compiled(files=[*aml.components.values(), aml.job, *aml.computes] + ([aml.schedule] if aml.schedule
                                                                                    else []),
                        warnings=list(aml.warnings))

    def split_values(self, sets: dict[str, str], run_params: dict[str, str]) -> tuple[dict[str, str],
                                                                                       dict[str, str]]:
        # The job file carries its inputs: a run's values are compiled in, and there are no run arguments.
        return {**sets, **run_params}, {}

    def data_problem(self, name: str, value: str, options: CompileOptions, compiled_in: bool) -> str | None:
        from .submit import AZUREML_DATA_SCHEMES

        scheme = value.split("://", 1)[0] + "://" if "://" in value else ""
        if scheme and not value.startswith(AZUREML_DATA_SCHEMES):
            return (f"parameter '{name}' = {value}: Azure ML cannot read a {scheme} URI (it reads "
                    f"{', '.join(AZUREML_DATA_SCHEMES)} URIs, or a local path it uploads)")
        return None

    def submission_options(self, options: CompileOptions) -> CompileOptions:
        # A trigger fired because the data changed, but the job's dataset input is the same URI as last time, and
        # Azure ML reuses a deterministic node when its inputs (paths, not content) and settings are unchanged
        # (reference-yaml-component-command `is_deterministic`): prepare would hand back last run's splits.
        # KFP's runs are keyed by a fingerprint task on the data's digest instead.
        return replace(options, no_cache=True)

    def missing_settings(self, settings: SubmitSettings) -> list[str]:
        return [name for name, value in (("--subscription / AZURE_SUBSCRIPTION_ID", settings.subscription_id),
                                         ("--resource-group / AZURE_RESOURCE_GROUP", settings.resource_group),
                                         ("--workspace / AZUREML_WORKSPACE", settings.workspace)) if not value]

    def submit(self, folder: Path, pipeline: str, arguments: dict[str, Any], settings: SubmitSettings) -> list[str]:
        from .submit import azureml_plan, execute_azureml

        plan = azureml_plan(folder, str(settings.subscription_id), str(settings.resource_group),
                            str(settings.workspace), settings.experiment)
        return execute_azureml(plan)

    def run_state(self, run_id: str, settings: SubmitSettings) -> str | None:
        if not (settings.subscription_id and settings.resource_group and settings.workspace):
            return None
        from .submit import azureml_job_status

        return azureml_job_status(run_id, settings)  # pragma: no cover - needs an Azure ML workspace


TARGET = AzureMLTarget()
