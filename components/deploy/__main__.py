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

import argparse
import os
import sys
import tempfile
from pathlib import Path

from pydantic import ValidationError

from tuneline.outputs import write_value

TARGETS = ("local", "triton", "kserve", "azureml")


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m components.deploy",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model-uri", required=True, help="models:/<name>/<version> or models:/<name>@<alias>")
    p.add_argument(
        "--alias",
        default="champion",
        help="deploy the version with this alias of the same model ('' deploys --model-uri itself)",
    )
    p.add_argument("--target", choices=TARGETS, default="local", help="where to deploy")
    p.add_argument(
        "--strategy", choices=["blue_green", "canary"], default="blue_green", help="rollout strategy"
    )
    p.add_argument("--canary-percent", type=int, default=10, help="traffic share of the new version (canary)")
    p.add_argument(
        "--serving-name", default="", help="Triton model / endpoint name (default: the registered name)"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="folder for the repository (triton) or manifests (kserve, azureml); required for those",
    )
    g = p.add_argument_group("local")
    g.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="serving state folder (default: $TUNELINE_SERVE_STATE or <TUNELINE_HOME>/serve)",
    )
    g.add_argument(
        "--port", type=int, default=None, help="proxy port when the proxy is started (default: free)"
    )
    g.add_argument(
        "--smoke-expect", default=None, help="regular expression every smoke-test output must match"
    )
    g.add_argument("--startup-timeout", type=float, default=300.0, help="seconds to wait for Triton to load")
    g = p.add_argument_group("triton")
    g.add_argument(
        "--instance-kind", choices=["cpu", "gpu"], default="gpu", help="Triton instance group kind"
    )
    g = p.add_argument_group("kserve")
    g.add_argument("--namespace", default="tuneline", help="Kubernetes namespace")
    g.add_argument(
        "--storage-uri",
        default="pvc://tuneline-models/triton",
        help="where the triton target's repository is uploaded (pvc://, https://, ...)",
    )
    g.add_argument(
        "--runtime", default=None, help="KServe ServingRuntime name (default: KServe's triton runtime)"
    )
    g.add_argument("--gpus", type=int, default=1, help="GPUs per replica")
    g.add_argument("--min-replicas", type=int, default=1, help="autoscaling minimum")
    g.add_argument("--max-replicas", type=int, default=3, help="autoscaling maximum")
    g.add_argument("--spot", type=_bool, default=True, help="tolerate AKS spot nodes: true|false")
    g.add_argument("--service-account", default=None, help="service account for the predictor (optional)")
    g.add_argument(
        "--workload-identity-client-id",
        default=None,
        help="managed identity client id annotated on the service account (optional)",
    )
    g = p.add_argument_group("azureml")
    g.add_argument(
        "--auth-mode", choices=["key", "aad_token"], default="aad_token", help="endpoint auth mode"
    )
    g.add_argument("--instance-type", default="Standard_NC4as_T4_v3", help="VM size of the deployment")
    g.add_argument("--instance-count", type=int, default=1, help="instances of the deployment")
    g.add_argument(
        "--slot", choices=["blue", "green"], default="green", help="deployment receiving the new version"
    )
    g.add_argument(
        "--first-deployment",
        type=_bool,
        default=False,
        help="true when the endpoint has no live deployment yet (the new one takes all traffic)",
    )
    g = p.add_argument_group("outputs")
    g.add_argument(
        "--endpoint-out", type=Path, default=None, help="file receiving the endpoint URL (JSON string)"
    )
    g.add_argument("--status-out", type=Path, default=None, help="file receiving the status (JSON string)")
    g.add_argument(
        "--deployment-out", type=Path, default=None, help="file receiving the deployment record JSON"
    )
    return p


def _write_value(path: Path | None, value: object) -> None:
    if path is not None:
        write_value(path, value)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    from tuneline.deploy import azureml, kserve
    from tuneline.deploy.policy import RolloutPolicy
    from tuneline.registry import fetch_model, parse_models_uri

    def log(message: str) -> None:
        print(message, file=sys.stderr)

    try:
        name, _, _ = parse_models_uri(args.model_uri)
        policy = RolloutPolicy(strategy=args.strategy, canary_percent=args.canary_percent)
        serving_name = args.serving_name or name
        if args.target != "local" and args.out is None:
            raise ValueError(f"--out is required for target {args.target}")
        kserve_options = (
            kserve.KServeOptions(
                name=serving_name.lower(),
                namespace=args.namespace,
                storage_uri=args.storage_uri,
                runtime=args.runtime,
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
            )
            if args.target == "azureml"
            else None
        )
    except (ValueError, ValidationError) as exc:
        print(f"deploy: invalid input: {exc}", file=sys.stderr)
        return 2
    uri = f"models:/{name}@{args.alias}" if args.alias else args.model_uri

    from components.deploy.manifests import ManifestError, write_azureml, write_kserve, write_triton
    from tuneline.ml.models import tuneline_home

    scratch_root = tuneline_home() / "tmp"
    scratch_root.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="deploy-", dir=scratch_root) as scratch:
            fetched = fetch_model(uri, Path(scratch))
            log(f"deploy: {uri} -> {fetched.uri} (target {args.target}, {policy.strategy})")
            if args.target == "local":
                from components.deploy.local import LocalOptions, default_state_dir, deploy_local

                options = LocalOptions(
                    state_dir=args.state_dir or default_state_dir(),
                    model_name=serving_name,
                    proxy_port=args.port,
                    smoke_expect=args.smoke_expect,
                    startup_timeout=args.startup_timeout,
                )
                record = deploy_local(fetched, options, policy, args.model_uri, log)
            elif args.target == "triton":
                record = write_triton(
                    fetched, args.out, policy, args.model_uri, serving_name, args.instance_kind
                )
            elif args.target == "kserve":
                record = write_kserve(fetched, args.out, policy, args.model_uri, kserve_options, serving_name)
            else:
                record = write_azureml(
                    fetched, args.out, policy, args.model_uri, azureml_options, args.first_deployment
                )
    except (LookupError, FileNotFoundError, ManifestError, ValueError) as exc:
        print(f"deploy: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - MLflow raises its own base class for a missing model
        if type(exc).__name__ != "MlflowException":
            raise
        print(f"deploy: {uri}: {exc}", file=sys.stderr)
        return 2

    _write_value(args.endpoint_out, record.endpoint)
    _write_value(args.status_out, record.status)
    if args.deployment_out is not None:
        record.write(args.deployment_out)
    log(
        f"deploy: {record.status}: {record.model_uri} ({args.target})"
        + (f" - {record.error}" if record.error else "")
    )
    from tuneline.runner.summary import write_step_summary

    if args.target == "local" and record.endpoint:
        shown = f"endpoint:   {record.endpoint}\ntoken file: {record.token_file}\ntry it:\n  {record.curl}"
        print(shown)
        write_step_summary(f"{record.status}: {record.model_uri}\n{shown}\nstop it: make serve-stop")
    elif record.files:
        print("wrote:\n  " + "\n  ".join(record.files))
        write_step_summary(f"{record.status}: {record.model_uri} ({args.target})\n  " + "\n  ".join(record.files))
    else:
        write_step_summary(f"{record.status}: {record.model_uri} ({args.target}) {record.error or ''}")
    return 1 if record.status == "failed" else 0


if __name__ == "__main__":
    sys.exit(main())
