"""Azure ML managed online endpoint + deployment YAML for a tuned model, and the scripts that roll it out.

The deployment runs the engine the local server and KServe run: the serve image's tritonserver, started by
`python -m tuneline.serving.runtime`, on the Triton model repository `tuneline.serving.repository` writes (vLLM in
the streaming twin, adapters on one base where the repository shares them). Written into one folder, every path in
the YAML relative to it:

    endpoint.yml              ManagedOnlineEndpoint: name, auth_mode (no traffic: see below)
    deployment.yml            ManagedOnlineDeployment: the repository as its model, the serve image with its routes,
                              instance type, probes
    apply.sh                  endpoint, then deployment into the idle slot, then traffic
    rollback.sh               all traffic back to the slot that was live before the last apply.sh
    retire.sh                 delete that previous slot once the rollout has held (its instances are billed)
    repository/               the Triton model repository (written by the caller), registered on apply as
                              `<name>-triton` at the next version (`repository_model_name`)

Why a custom container (azure-ai-docs how-to-deploy-custom-container.md): Azure ML's no-code Triton path
(how-to-deploy-with-triton.md, `type: triton_model`) runs NVIDIA's Triton image, which lacks what the repository's
Python-backend models import (vLLM, transformers, peft): the same reason KServe runs the `tuneline-triton` runtime
rather than its stock Triton one. A custom container is an environment with an `image` and an `inference_config`
naming the liveness, readiness and scoring routes (port and path) of the server the image starts; Azure ML runs the
image's own command, so the serve image's command is the runtime, which finds the repository under
`AZUREML_MODEL_DIR` (tuneline.serving.runtime). The routes are Triton's KServe v2 ones on its HTTP port (8080,
KServe's too): liveness `/v2/health/live`, readiness `/v2/health/ready` (200 once every model is loaded), scoring
the streaming twin's `generate` (`/v2/models/<name>-stream/generate`, the model every generation goes to), so
`az ml online-endpoint invoke --request-file` with `{"text_input": ...}` answers from the engine: the endpoint's
scoring URI is that one route, as azureml-examples' TF Serving custom container maps its scoring URI to one
`:predict` path. Other v2 paths (`generate_stream`, `infer`) are not claimed to be reachable through the endpoint:
the azureml-examples Triton container sets its scoring path to `/` for that, which nothing here can check.

Probes: Azure ML has no startup probe, and Triton answers no route, liveness included, until every model has loaded
(the coupled model and the engine's, weights read from the model mount, CUDA graphs captured): the liveness probe
waits 600 s before its first try, then allows 30 failures 10 s apart, so a model that takes up to 15 minutes to load
is not restarted in a loop.

A GPU instance type (one in azureml_sizes.yaml whose GPU the engine runs on) gets a GPU repository (vLLM, adapters
shared on one base). A CPU one gets the named fallback: the same server and repository with plain transformers
`generate` as its engine (`RepositorySpec.engine`), since the serve image's vLLM is its CUDA build. Any other size
is refused (azureml_sizes).

Why the order (https://learn.microsoft.com/azure/machine-learning/how-to-safely-rollout-online-endpoints): an
endpoint's traffic may only name deployments that exist, so the endpoint is created without traffic, the
deployment is created under it, and only then `az ml online-endpoint update --traffic` moves traffic. Blue/green
needs two deployments side by side: apply.sh reads the endpoint's live traffic at apply time and deploys into the
other slot (`--name` overrides the file's `name`), so each rollout leaves the previous version running at 0 % (or at
100 - canary %) for rollback.sh to return to. The slots apply.sh chose are kept in the endpoint's tags
(`tuneline_live`, `tuneline_previous`), which rollback.sh reads.

The YAML is produced from azure-ai-ml entities (so field names and types are the SDK's) with ``_to_dict()``:
``ManagedOnlineEndpoint.dump()`` writes nothing, and the SDK turns local paths absolute, which we undo.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from tuneline.serving.deploy import azureml_sizes
from tuneline.serving.deploy.policy import RolloutPolicy
from tuneline.serving.limits import ENGINE_CONCURRENCY
from tuneline.serving.repository import generate_route
from tuneline.serving.runtime import HTTP_PORT

SLOTS = ("blue", "green")
REPOSITORY_DIR = "repository"
ENVIRONMENT_NAME = "tuneline-serve"
# Set as the KServe runtime sets them (k8s/base/serving/servingruntime.yaml): the container's user may not own the
# image's HOME, where vLLM, torch and Triton's Python stub write caches.
CONTAINER_ENV = {"HOME": "/tmp/home", "OMP_NUM_THREADS": "1"}


def instance_kind(instance_type: str) -> Literal["cpu", "gpu"]:
    return azureml_sizes.table().kind(instance_type)


class Probe(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    initial_delay: int = Field(default=30, ge=0, description="seconds before the first probe")
    period: int = Field(default=10, ge=1)
    timeout: int = Field(default=5, ge=1)
    failure_threshold: int = Field(default=30, ge=1)
    success_threshold: int = Field(default=1, ge=1)


class AzureMLOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    endpoint_name: str = Field(default="tuneline-llm", pattern=r"^[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$")
    auth_mode: Literal["key", "aad_token"] = "aad_token"
    slot: Literal["blue", "green"] = Field(
        default="green", description="deployment of a first rollout; later ones take the slot that is not live"
    )
    instance_type: str = "Standard_NC4as_T4_v3"
    instance_count: int = Field(default=1, ge=1)
    image: str = Field(min_length=1,
                       description="the serve image (environments/serve), in a registry the workspace pulls from")
    request_timeout_ms: int = Field(default=90_000, ge=1000, le=180_000)
    # Past this Azure ML answers 429 before a request reaches the server. None: by instance kind
    # (tuneline.serving.limits.ENGINE_CONCURRENCY).
    max_concurrent_requests_per_instance: int | None = Field(default=None, ge=1)
    liveness_probe: Probe = Probe(initial_delay=600)
    readiness_probe: Probe = Probe(initial_delay=10, failure_threshold=3)

    @field_validator("instance_type")
    @classmethod
    def _a_size_the_engine_runs_on(cls, value: str) -> str:
        instance_kind(value)
        return value

    @property
    def previous_slot(self) -> str:
        return SLOTS[0] if self.slot == SLOTS[1] else SLOTS[1]

    @property
    def instance_kind(self) -> Literal["cpu", "gpu"]:
        return instance_kind(self.instance_type)

    @property
    def concurrency(self) -> int:
        if self.max_concurrent_requests_per_instance is not None:
            return self.max_concurrent_requests_per_instance
        return ENGINE_CONCURRENCY[self.instance_kind]


def routes(model_name: str) -> dict[str, dict]:
    """The environment's inference_config: Triton's KServe v2 routes on the runtime's HTTP port."""
    return {
        "liveness_route": {"port": HTTP_PORT, "path": "/v2/health/live"},
        "readiness_route": {"port": HTTP_PORT, "path": "/v2/health/ready"},
        "scoring_route": {"port": HTTP_PORT, "path": generate_route(model_name)},
    }


def _plain(data: object) -> object:
    """SDK dicts hold OrderedDicts and enums; a JSON round trip leaves plain YAML-safe values."""
    return json.loads(json.dumps(data, default=str))


def _relative(data: object, root: Path) -> object:
    """Rewrite absolute paths under ``root`` as ``./relative`` (the SDK resolves local paths when it
    constructs an entity)."""
    if isinstance(data, dict):
        return {k: _relative(v, root) for k, v in data.items()}
    if isinstance(data, list):
        return [_relative(v, root) for v in data]
    if isinstance(data, str) and data.startswith("/"):
        try:
            return "./" + Path(data).resolve().relative_to(root.resolve()).as_posix()
        except ValueError:
            return data
    return data


def endpoint_dict(options: AzureMLOptions, policy: RolloutPolicy, model_uri: str) -> dict:
    """The endpoint without traffic: traffic can only name deployments that exist (apply.sh sets it last)."""
    from azure.ai.ml.entities import ManagedOnlineEndpoint

    endpoint = ManagedOnlineEndpoint(
        name=options.endpoint_name,
        auth_mode=options.auth_mode,
        description=f"tuneline model {model_uri}",
        tags={"tuneline.model_uri": model_uri, "tuneline.strategy": policy.strategy},
    )
    data = _plain(endpoint._to_dict())
    data.pop("traffic", None)
    return data


REPOSITORY_SUFFIX = "-triton"


def repository_model_name(model_name: str) -> str:
    """The repository folder's own model asset. On Azure ML the MLflow registry is the workspace's model registry,
    so `<name>:<version>` already names the registered (adapter) version, and `az ml online-deployment create`
    refuses to give it another path ("Asset paths cannot be updated"). The repository is registered under its own
    name without a version: the SDK gives it the next version (azure-ai-ml `Asset._auto_increment_version`,
    `ModelOperations.create_or_update`), and its tags say which registered version it serves."""
    return f"{model_name}{REPOSITORY_SUFFIX}"


def _model_tags(model_uri: str, model_version: int | None) -> dict[str, str]:
    tags = {"tuneline.model_uri": model_uri}
    if model_version is not None:
        tags["tuneline.source_version"] = str(model_version)
    return tags


def deployment_dict(options: AzureMLOptions, out: Path, model_name: str, model_version: int | None, model_uri: str,
                    served_name: str | None = None) -> dict:
    """The deployment: the repository at `out/repository` as its model, served as `served_name` (the Triton model's
    name; default `model_name`) by the serve image."""
    from azure.ai.ml.entities import (
        Environment,
        ManagedOnlineDeployment,
        Model,
        OnlineRequestSettings,
        ProbeSettings,
    )

    deployment = ManagedOnlineDeployment(
        name=options.slot,
        endpoint_name=options.endpoint_name,
        model=Model(
            path=str(out / REPOSITORY_DIR),
            name=repository_model_name(model_name),
            description=f"Triton model repository serving {model_uri}",
            tags=_model_tags(model_uri, model_version),
        ),
        environment=Environment(name=ENVIRONMENT_NAME, image=options.image,
                                inference_config=routes(served_name or model_name)),
        environment_variables=dict(CONTAINER_ENV),
        instance_type=options.instance_type,
        instance_count=options.instance_count,
        request_settings=OnlineRequestSettings(
            request_timeout_ms=options.request_timeout_ms,
            max_concurrent_requests_per_instance=options.concurrency,
        ),
        liveness_probe=ProbeSettings(**options.liveness_probe.model_dump()),
        readiness_probe=ProbeSettings(**options.readiness_probe.model_dump()),
        tags={"tuneline.model_uri": model_uri},
    )
    deployment._validate()
    return _relative(_plain(deployment._to_dict()), out)


APPLY_SCRIPT = """#!/usr/bin/env bash
# Generated by the tuneline deploy step (target azureml). Run as: bash apply.sh   (az CLI with the ml extension,
# logged in, `az configure --defaults group=<rg> workspace=<ws>`). Order: endpoint, deployment, traffic.
set -euo pipefail
cd "$(dirname "$0")"
ENDPOINT={endpoint}
NEW_PERCENT={percent}
percent() {{ az ml online-endpoint show -n "$ENDPOINT" --query "traffic.$1 || \\`0\\`" -o tsv; }}
if ! az ml online-endpoint show -n "$ENDPOINT" -o none 2>/dev/null; then
  az ml online-endpoint create -f endpoint.yml
fi
blue=$(percent blue); green=$(percent green)
if [ "$blue" -eq 0 ] && [ "$green" -eq 0 ]; then
  live=""; new={first}
elif [ "$blue" -ge "$green" ]; then
  live=blue; new=green
else
  live=green; new=blue
fi
echo "apply: live slot ${{live:-none}}, deploying into $new"
if az ml online-deployment show -n "$new" -e "$ENDPOINT" -o none 2>/dev/null; then
  az ml online-deployment update -f deployment.yml -n "$new" -e "$ENDPOINT"
else
  az ml online-deployment create -f deployment.yml -n "$new" -e "$ENDPOINT"
fi
if [ -z "$live" ]; then
  az ml online-endpoint update -n "$ENDPOINT" --traffic "$new=100" --set tags.tuneline_live="$new"
else
  az ml online-endpoint update -n "$ENDPOINT" --traffic "$new=$NEW_PERCENT $live=$((100 - NEW_PERCENT))" \\
    --set tags.tuneline_live="$new" tags.tuneline_previous="$live"
fi
"""

ROLLBACK_SCRIPT = """#!/usr/bin/env bash
# Generated by the tuneline deploy step (target azureml). Run as: bash rollback.sh
# All traffic back to the deployment that was live before the last apply.sh; the newer one stays, at 0 %.
set -euo pipefail
ENDPOINT={endpoint}
live=$(az ml online-endpoint show -n "$ENDPOINT" --query "tags.tuneline_live" -o tsv)
previous=$(az ml online-endpoint show -n "$ENDPOINT" --query "tags.tuneline_previous" -o tsv)
if [ -z "$previous" ]; then
  echo "rollback: endpoint $ENDPOINT has no previous deployment to return to" >&2
  exit 1
fi
az ml online-endpoint update -n "$ENDPOINT" --traffic "$previous=100 $live=0" \\
  --set tags.tuneline_live="$previous" tags.tuneline_previous="$live"
echo "rollback: $previous takes all traffic, $live none"
"""


RETIRE_SCRIPT = """#!/usr/bin/env bash
# Generated by the tuneline deploy step (target azureml). Run as: bash retire.sh   (once the rollout has held)
# Deletes the deployment the last apply.sh left at 0 % for rollback.sh: it keeps its instances (billed) until then.
# Refuses while that deployment still takes traffic (a canary not yet promoted). Afterwards rollback.sh has nothing
# to return to; the next apply.sh deploys into the freed slot.
set -euo pipefail
ENDPOINT={endpoint}
previous=$(az ml online-endpoint show -n "$ENDPOINT" --query "tags.tuneline_previous" -o tsv)
if [ -z "$previous" ]; then
  echo "retire: endpoint $ENDPOINT has no previous deployment to delete" >&2
  exit 1
fi
share=$(az ml online-endpoint show -n "$ENDPOINT" --query "traffic.$previous || \\`0\\`" -o tsv)
if [ "$share" -ne 0 ]; then
  echo "retire: $previous still takes $share % of the traffic; move it (apply.sh, or az ml online-endpoint \\
update --traffic) before retiring it" >&2
  exit 1
fi
az ml online-deployment delete -n "$previous" -e "$ENDPOINT" --yes
az ml online-endpoint update -n "$ENDPOINT" --set tags.tuneline_previous=""
echo "retire: deployment $previous deleted"
"""


def scripts(options: AzureMLOptions, policy: RolloutPolicy) -> dict[str, str]:
    endpoint = shlex.quote(options.endpoint_name)
    return {"apply.sh": APPLY_SCRIPT.format(endpoint=endpoint, percent=policy.new_percent, first=options.slot),
            "rollback.sh": ROLLBACK_SCRIPT.format(endpoint=endpoint),
            "retire.sh": RETIRE_SCRIPT.format(endpoint=endpoint)}


def write(
    out: Path,
    options: AzureMLOptions,
    policy: RolloutPolicy,
    *,
    repository_dir: Path,
    model_name: str,
    model_version: int | None,
    model_uri: str,
    served_name: str | None = None,
) -> dict[str, Path]:
    """Write the folder described in the module docstring; ``repository_dir`` (a Triton model repository, as
    `tuneline.serving.repository.write_repository` writes it) is copied in unless it is already there."""
    out.mkdir(parents=True, exist_ok=True)
    if repository_dir.resolve() != (out / REPOSITORY_DIR).resolve():
        shutil.rmtree(out / REPOSITORY_DIR, ignore_errors=True)
        shutil.copytree(repository_dir, out / REPOSITORY_DIR)
    endpoint = out / "endpoint.yml"
    deployment = out / "deployment.yml"
    header = "# Generated by the tuneline deploy step (target azureml). Apply with: bash apply.sh\n"
    endpoint.write_text(header + yaml.safe_dump(endpoint_dict(options, policy, model_uri), sort_keys=False))
    deployment.write_text(
        header + "# apply.sh deploys it into the slot that is not live (--name blue|green).\n"
        + yaml.safe_dump(deployment_dict(options, out, model_name, model_version, model_uri, served_name),
                         sort_keys=False)
    )
    paths = {"endpoint": endpoint, "deployment": deployment}
    for name, text in scripts(options, policy).items():
        (out / name).write_text(text)
        (out / name).chmod(0o755)
        paths[name.removesuffix(".sh")] = out / name
    return paths


def load_check(paths: dict[str, Path]) -> None:
    """Load both files with azure-ai-ml's own loaders (offline) and run the checks the SDK runs before it sends
    them (`_validate`, `Environment.validate`); raises on anything they reject."""
    from azure.ai.ml import load_online_deployment, load_online_endpoint

    load_online_endpoint(paths["endpoint"])
    deployment = load_online_deployment(paths["deployment"])
    deployment._validate()
    deployment.environment.validate()
