"""Azure ML behind the Target interface (tuneline.targets.base)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from ...graph import PipelineGraph
from ..base import Compiled, Setting, SubmitSettings, values_compiled_in
from ..options import CompileOptions
from .options import COMPILE_SETTINGS, azureml_options


class AzureMLTarget:
    name = "azureml"
    # Inside an Azure ML job the AZUREML_ARM_* variables name the job's own workspace (a trigger's check job).
    settings = (
        Setting("subscription", ("--subscription",), "Azure subscription id (default: $AZURE_SUBSCRIPTION_ID)",
                env=("AZURE_SUBSCRIPTION_ID", "AZUREML_ARM_SUBSCRIPTION"), required=True),
        Setting("resource_group", ("--resource-group",), "Azure resource group of the workspace (default: "
                "$AZURE_RESOURCE_GROUP)", env=("AZURE_RESOURCE_GROUP", "AZUREML_ARM_RESOURCEGROUP"), required=True),
        Setting("workspace", ("--workspace",), "Azure ML workspace name (default: $AZUREML_WORKSPACE)",
                env=("AZUREML_WORKSPACE", "AZUREML_ARM_WORKSPACE_NAME"), required=True),
        Setting("resubmit_preempted", ("--resubmit-preempted",), "watch the job and submit it again, up "
                "to N times, when a step on a low-priority cluster fails (Azure ML does not restart a preempted "
                "job; the step resumes from its checkpoint output)", type=int, metavar="N"),
    )

    compile_settings = COMPILE_SETTINGS

    def compile_options(self, values: dict[str, Any]) -> Any:
        return azureml_options(values)

    def compile(self, graph: PipelineGraph, folder: Path, options: CompileOptions) -> Compiled:
        from .compiler import compile_azureml

        aml = compile_azureml(graph, folder, options)
        return Compiled(files=[*aml.components.values(), aml.job, *aml.computes] + ([aml.schedule] if aml.schedule
                                                                                    else []),
                        warnings=list(aml.warnings))

    def split_values(self, sets: dict[str, str], run_params: dict[str, str]) -> tuple[dict[str, str],
                                                                                       dict[str, str]]:
        return values_compiled_in(sets, run_params)

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

    def submit(self, folder: Path, pipeline: str, arguments: dict[str, Any], settings: SubmitSettings,
               schedule: bool = False, dry_run: bool = False, no_cache: bool = False) -> list[str]:
        from ..plan import plan_json
        from .submit import azureml_plan, execute_azureml

        plan = azureml_plan(folder, str(settings.get("subscription")), str(settings.get("resource_group")),
                            str(settings.get("workspace")), settings.experiment, schedule,
                            settings.get("resubmit_preempted") or 0)
        return [plan_json(plan)] if dry_run else execute_azureml(plan)

    def run_state(self, run_id: str, settings: SubmitSettings) -> str | None:
        if not all(settings.get(name) for name in ("subscription", "resource_group", "workspace")):
            return None
        from .submit import azureml_job_status

        return azureml_job_status(run_id, settings)  # pragma: no cover - needs an Azure ML workspace


    def explain(self, chain: list[BaseException], host: str | None, chosen: bool) -> str | None:
        names = {type(e).__name__ for e in chain}
        # azure-identity's DefaultAzureCredential and azure-core; azure-ai-ml re-raises the credential failure as
        # its own MlException, keeping only the message.
        if names & {"ClientAuthenticationError", "CredentialUnavailableError"} or any(
                "DefaultAzureCredential failed" in str(e) for e in chain):
            return ("Azure ML: no Azure credentials on this machine. Run `az login` (then `az account set "
                    "--subscription <id>`), or set AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET for a "
                    "service principal; see docs/azureml.md.")
        if any("client_id should be the id of a Microsoft Entra application" in str(e) for e in chain):
            return ("Azure: AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET are set but AZURE_CLIENT_ID "
                    "is not an application id: set the service principal's values, or unset all three to use "
                    "`az login`.")
        if not (chosen and host):
            return None
        return (f"cannot reach Azure ({host}): check the network or proxy settings (HTTPS_PROXY); see "
                "docs/troubleshooting.md.")


TARGET = AzureMLTarget()
