"""The cluster targets: ``triton`` (a Triton model repository), ``kserve`` (an InferenceService manifest) and
``azureml`` (managed online endpoint + deployment folder). None of them needs a running server."""

from __future__ import annotations

import shutil
from pathlib import Path

from components.deploy.record import DeploymentRecord
from tuneline.llm.registry import FetchedModel, resolve_base_dir
from tuneline.serving.deploy import azureml, kserve
from tuneline.serving.deploy.policy import RolloutPolicy
from tuneline.serving.repository import generate_route


class ManifestError(ValueError):
    """A generated manifest failed validation; the message lists each field at fault."""


def _record(
    target: str, fetched: FetchedModel, requested_uri: str, policy: RolloutPolicy
) -> DeploymentRecord:
    return DeploymentRecord(
        target=target,
        status="rendered",
        requested_uri=requested_uri,
        model_uri=fetched.uri,
        version=fetched.version,
        strategy=policy.strategy,
        canary_percent=policy.canary_percent if policy.strategy == "canary" else None,
    )


def write_triton(
    fetched: FetchedModel,
    out: Path,
    policy: RolloutPolicy,
    requested_uri: str,
    model_name: str,
    instance_kind: str,
    response_schema: str = "",
    adapters: str | None = None,
) -> DeploymentRecord:
    from tuneline.serving.repository import RepositorySpec, write_repository

    root = write_repository(
        fetched.model_dir,
        out,
        RepositorySpec(model_name=model_name, instance_kind=instance_kind, response_schema=response_schema,
                       **({"adapters": adapters} if adapters else {})),
        base_model_dir=resolve_base_dir(fetched),
    )
    record = _record("triton", fetched, requested_uri, policy)
    record.endpoint = generate_route(model_name)
    record.files = sorted(str(p) for p in root.rglob("*") if p.is_file() and p.parent.name != "hf_model")
    record.details["repository"] = str(out)
    return record


def write_kserve(
    fetched: FetchedModel,
    out: Path,
    policy: RolloutPolicy,
    requested_uri: str,
    options: kserve.KServeOptions,
    model_name: str,
) -> DeploymentRecord:
    docs = kserve.manifests(options, policy, fetched.uri, fetched.version)
    path = out / "inferenceservice.yaml"
    errors = kserve.validate(docs, str(path))
    if errors:
        raise ManifestError("generated KServe manifest is invalid:\n" + "\n".join(errors))
    kserve.write(docs, path)
    record = _record("kserve", fetched, requested_uri, policy)
    if options.api == "openai":
        # The Hugging Face runtime loads a plain model folder: upload this one to the storageUri.
        merged = merged_model(fetched, out / "model")
        record.details["model_folder"] = str(merged)
    host = f"http://{options.name}.{options.namespace}.svc.cluster.local"
    record.endpoint = (
        f"{host}/openai/v1/chat/completions" if options.api == "openai" else f"{host}{generate_route(model_name)}"
    )
    record.files = [str(path)]
    record.details["storage_uri"] = options.storage_uri
    return record


def merged_model(fetched: FetchedModel, out: Path) -> Path:
    """A full Hugging Face folder: the adapter merged into its base, or the full weights copied."""
    from tuneline.serving.repository import merge_adapter

    shutil.rmtree(out, ignore_errors=True)
    base = resolve_base_dir(fetched)
    if base is None:
        shutil.copytree(fetched.model_dir, out)
        return out
    out.mkdir(parents=True)
    return merge_adapter(fetched.model_dir, base, out)


def write_azureml(
    fetched: FetchedModel,
    out: Path,
    policy: RolloutPolicy,
    requested_uri: str,
    options: azureml.AzureMLOptions,
    first: bool,
    model_name: str,
    response_schema: str = "",
    adapters: str | None = None,
) -> DeploymentRecord:
    """The Triton repository the `triton` target writes, for the instance type's kind, and the endpoint files that
    serve it with the serve image (tuneline.serving.deploy.azureml)."""
    from tuneline.serving.repository import RepositorySpec, adapter_name, write_repository

    kind = options.instance_kind
    repository = out / azureml.REPOSITORY_DIR
    shutil.rmtree(repository, ignore_errors=True)
    write_repository(
        fetched.model_dir,
        repository,
        # On a CPU size the serve image's vLLM (its CUDA build) cannot run: the named fallback engine serves.
        RepositorySpec(model_name=model_name, instance_kind=kind, response_schema=response_schema,
                       **({"engine": "transformers"} if kind == "cpu" else {}),
                       **({"adapters": adapters} if adapters else {})),
        base_model_dir=resolve_base_dir(fetched),
        # Named by its registry URI as the local rollout names it (`tuneline-llm-3`): requests pick it by that name.
        adapter=adapter_name(fetched.uri),
    )
    paths = azureml.write(
        out,
        options,
        policy,
        repository_dir=repository,
        model_name=fetched.name,
        model_version=fetched.version,
        model_uri=fetched.uri,
        served_name=model_name,
    )
    azureml.load_check(paths)
    record = _record("azureml", fetched, requested_uri, policy)
    record.endpoint = (f"https://{options.endpoint_name}.<region>.inference.ml.azure.com"
                       + azureml.routes(model_name)["scoring_route"]["path"])
    record.files = [str(paths[k]) for k in ("endpoint", "deployment", "apply", "rollback", "retire")]
    record.details["repository"] = str(repository)
    record.details["engine"] = "vllm" if kind == "gpu" else "transformers (CPU instance type)"
    # The slots are chosen by apply.sh from the endpoint's live traffic; `first` is the first rollout's split.
    record.details["traffic"] = (policy.traffic(options.slot, None) if first else
                                 {"new": policy.new_percent, "live": 100 - policy.new_percent})
    record.details["apply"] = [f"bash {paths['apply'].name}"]
    record.details["rollback"] = [f"bash {paths['rollback'].name}"]
    record.details["retire"] = [f"bash {paths['retire'].name}   (once the rollout has held: frees the previous slot)"]
    return record
