"""Deploy a registered model version to a target: ``local`` (real Triton behind the auth proxy, blue/green
with smoke tests and rollback), ``triton`` (model repository for a cluster), ``kserve`` (InferenceService
for AKS) or ``azureml`` (managed online endpoint + deployment YAML).

Run as: python -m components.deploy --model-uri models:/tuneline-llm/3 --target local \
    --endpoint-out out/endpoint --status-out out/status --deployment-out out/deployment.json --out out/files
Override example: --target kserve --strategy canary --canary-percent 10 --storage-uri pvc://models/triton

By default the version carrying ``--alias champion`` of the model named in --model-uri is deployed (register
moves that alias only when a version beats the champion); ``--alias ''`` deploys --model-uri as given.
Exits 0 when the step did its job, including a rollback (the record says so); 1 when nothing could be
served; 2 on bad input.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from tuneline.settings import DEPLOY_IMAGE_VAR, disable_mlflow_telemetry
from tuneline.step.args import parse_component_args
from tuneline.step.outputs import write_value

if TYPE_CHECKING:
    from argparse import Namespace

    from components.deploy.record import DeploymentRecord
    from tuneline.serving.deploy.azureml import AzureMLOptions
    from tuneline.serving.deploy.kserve import KServeOptions
    from tuneline.serving.deploy.policy import RolloutPolicy


def _log(message: str) -> None:
    print(message, file=sys.stderr)


def _target_options(args: Namespace, serving_name: str) -> tuple[KServeOptions | None, AzureMLOptions | None]:
    """(KServe options, Azure ML options): the one for --target, None for the other."""
    from tuneline.serving.deploy import azureml, kserve

    kserve_options = (
        kserve.KServeOptions(
            name=serving_name.lower(),
            namespace=args.namespace,
            storage_uri=args.storage_uri,
            runtime=args.runtime,
            api=args.kserve_api,
            gpus=args.gpus,
            min_replicas=args.min_replicas,
            max_replicas=args.max_replicas,
            spot=args.spot,
            service_account=args.service_account,
            workload_identity_client_id=args.workload_identity_client_id,
        )
        if args.target == "kserve"
        else None
    )
    azureml_options = (
        azureml.AzureMLOptions(
            endpoint_name=serving_name,
            auth_mode=args.auth_mode,
            slot=args.slot,
            instance_type=args.instance_type,
            instance_count=args.instance_count,
            image=serve_image(args.serve_image),
        )
        if args.target == "azureml"
        else None
    )
    return kserve_options, azureml_options


def serve_image(given: str | None) -> str:
    """The image the Azure ML deployment runs: the input when given, else the one the pipeline's image plan names."""
    image = given or os.environ.get(DEPLOY_IMAGE_VAR)
    if not image:
        raise SystemExit(f"deploy: no serve image: set the serve_image input, or run the step from a compiled "
                         f"pipeline or `tuneline run`, which set {DEPLOY_IMAGE_VAR}")
    return image


def _deploy(args: Namespace, uri: str, policy: RolloutPolicy, serving_name: str,
            kserve_options: KServeOptions | None, azureml_options: AzureMLOptions | None,
            response_schema: str = "") -> DeploymentRecord:
    """Fetch the version `uri` names and deploy it to --target; returns its DeploymentRecord."""
    from components.deploy.manifests import write_azureml, write_kserve, write_triton
    from tuneline import settings
    from tuneline.llm.registry import fetch_model

    scratch_root = settings.home() / "tmp"
    scratch_root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="deploy-", dir=scratch_root) as scratch:
        fetched = fetch_model(uri, Path(scratch))
        _log(f"deploy: {uri} -> {fetched.uri} (target {args.target}, {policy.strategy})")
        if args.target == "local":
            from components.deploy.local import LocalOptions, default_state_dir, deploy_local

            options = LocalOptions(
                state_dir=Path(args.state_dir) if args.state_dir else default_state_dir(),
                model_name=serving_name,
                proxy_port=args.port,
                smoke_expect=args.smoke_expect,
                response_schema=response_schema,
                adapters=args.adapters,
                startup_timeout=args.startup_timeout,
                requests_log=Path(args.requests_log) if args.requests_log else None,
                canary_promote_after=args.canary_promote_after,
            )
            return deploy_local(fetched, options, policy, args.model_uri, _log)
        if args.target == "triton":
            return write_triton(fetched, args.files, policy, args.model_uri, serving_name, args.instance_kind,
                                response_schema, args.adapters)
        if args.target == "kserve":
            return write_kserve(fetched, args.files, policy, args.model_uri, kserve_options, serving_name)
        return write_azureml(fetched, args.files, policy, args.model_uri, azureml_options, args.first_deployment,
                             serving_name, response_schema, args.adapters)


def _response_schema(path: str | None) -> str:
    """The schema file's text, checked as the repository will check it; the error names the file."""
    if not path:
        return ""
    from tuneline.serving.repository import RepositoryError, RepositorySpec

    try:
        text = Path(path).read_text()
        RepositorySpec(response_schema=text).validate()
    except (OSError, RepositoryError) as exc:
        raise ValueError(f"--response-schema {path}: {exc}") from None
    return text


def _write_outputs(args: Namespace, record: DeploymentRecord, serving_name: str) -> None:
    from tuneline.step.summary import write_step_summary

    write_value(args.endpoint, record.endpoint)
    write_value(args.status, record.status)
    record.write(args.deployment)
    _log(
        f"deploy: {record.status}: {record.model_uri} ({args.target})"
        + (f" - {record.error}" if record.error else "")
    )
    if args.target == "local" and record.endpoint:
        shown = (
            f"endpoint:   {record.endpoint}\ntoken file: {record.token_file}\n"
            f"OpenAI API: base_url={record.endpoint}/v1, api_key=<the token>, model={serving_name}\n"
            f"try it:\n  {record.curl}"
        )
        print(shown)
        write_step_summary(f"{record.status}: {record.model_uri}\n{shown}\nstop it: make serve-stop")
    elif record.files:
        print("wrote:\n  " + "\n  ".join(record.files))
        write_step_summary(f"{record.status}: {record.model_uri} ({args.target})\n  " + "\n  ".join(record.files))
    else:
        write_step_summary(f"{record.status}: {record.model_uri} ({args.target}) {record.error or ''}")


def main(argv: list[str] | None = None) -> int:
    args = parse_component_args(__file__, argv)
    disable_mlflow_telemetry()
    from tuneline.serving.deploy.policy import RolloutPolicy
    from tuneline.spec.model_uri import parse_models_uri

    try:
        name, _, _ = parse_models_uri(args.model_uri)
        policy = RolloutPolicy(strategy=args.strategy, canary_percent=args.canary_percent)
        serving_name = args.serving_name or name
        kserve_options, azureml_options = _target_options(args, serving_name)
        response_schema = _response_schema(args.response_schema)
    except (ValueError, ValidationError) as exc:
        print(f"deploy: invalid input: {exc}", file=sys.stderr)
        return 2
    uri = f"models:/{name}@{args.alias}" if args.alias else args.model_uri

    from components.deploy.manifests import ManifestError

    try:
        record = _deploy(args, uri, policy, serving_name, kserve_options, azureml_options, response_schema)
    except (LookupError, FileNotFoundError, ManifestError, ValueError) as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - MLflow raises its own base class for a missing model
        if type(exc).__name__ != "MlflowException":
            raise
        print(f"deploy: {uri}: {exc}", file=sys.stderr)
        return 2
    _write_outputs(args, record, serving_name)
    return 1 if record.status == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
