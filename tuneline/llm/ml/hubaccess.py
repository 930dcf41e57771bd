"""Access to gated Hugging Face Hub models: the token a step needs, where a job finds it, and what to say when
the Hub refuses.

Gated models (meta-llama/..., google/gemma-...) are downloaded only with the token (`HF_TOKEN`) of an account
that has accepted the model's licence on the Hub. Locally it is the user's environment; on Kubeflow Pipelines a
Kubernetes Secret put into the model-loading pods (`--hf-secret`); on Azure ML a Key Vault secret, named at
compile time (`--azureml-hf-token-secret`) and read inside the job with the job's managed identity. That last
one is Azure ML's documented way for a job to get a secret (azure-ai-docs articles/machine-learning/
how-to-use-secrets-in-runs.md, "Managed identity"): a job's `environment_variables` are stored in plain text in
its definition, so only the secret's URI travels in them.

The secret is read with the Key Vault REST API's Get Secret (https://learn.microsoft.com/rest/api/keyvault/
secrets/get-secret/get-secret, GA) through azure-core and azure-identity, which the train images already carry
(environments/images.yaml), rather than the azure-keyvault-secrets client, which no image carries.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from tuneline.settings import (
    AZUREML_HF_TOKEN_SECRET_FLAG,
    HF_SECRET_FLAG,
    HF_TOKEN_SECRET_VAR,
    HF_TOKEN_VAR,
    KEY_VAULT_SECRET_URI,
)

# Azure ML sets it in a job on a compute with a user-assigned identity: the client id of the cluster's default
# identity (azure-ai-docs how-to-identity-based-service-authentication.md, "Compute cluster").
_AML_IDENTITY_VAR = "DEFAULT_IDENTITY_CLIENT_ID"
KEY_VAULT_API_VERSION = "7.4"


class TokenUnavailable(RuntimeError):
    """The Hub token was named but could not be read."""


@dataclass(frozen=True)
class SecretUri:
    vault_url: str
    name: str
    version: str
    scope: str  # the Key Vault resource of the vault's cloud: https://vault.azure.net/.default in Azure's public one


def parse_secret_uri(uri: str) -> SecretUri:
    match = KEY_VAULT_SECRET_URI.match(uri.strip())
    if match is None:
        raise ValueError(f"{uri!r} is not a Key Vault secret URI (https://<vault>.vault.azure.net/secrets/<name>)")
    suffix = match["suffix"].lower()
    return SecretUri(vault_url=f"https://{match['vault'].lower()}.{suffix}", name=match["name"],
                     version=match["version"] or "", scope=f"https://{suffix}/.default")


def read_key_vault_secret(uri: str) -> str:  # pragma: no cover - needs Azure (a managed identity and a vault)
    """The secret's value, read as the job's managed identity."""
    from azure.core import PipelineClient
    from azure.core.pipeline.policies import BearerTokenCredentialPolicy, RetryPolicy
    from azure.core.rest import HttpRequest
    from azure.identity import DefaultAzureCredential

    secret = parse_secret_uri(uri)
    credential = DefaultAzureCredential(managed_identity_client_id=os.environ.get(_AML_IDENTITY_VAR))
    client = PipelineClient(secret.vault_url, policies=[RetryPolicy(),
                                                        BearerTokenCredentialPolicy(credential, secret.scope)])
    path = "/".join(p for p in ("secrets", secret.name, secret.version) if p)
    response = client.send_request(HttpRequest("GET", f"{secret.vault_url}/{path}",
                                               params={"api-version": KEY_VAULT_API_VERSION}))
    if response.status_code != 200:
        raise TokenUnavailable(f"{HF_TOKEN_SECRET_VAR}={uri}: Key Vault answered {response.status_code} "
                               f"{response.text()[:300]}; the job's managed identity needs get on its secrets "
                               "(docs/azureml.md, \"Gated Hugging Face models\")")
    return response.json()["value"]


def ensure_token(read: Callable[[str], str] = read_key_vault_secret) -> bool:
    """Put the Hub token into HF_TOKEN from the secret named in TUNELINE_HF_TOKEN_SECRET, when HF_TOKEN is not
    already set; True when it did."""
    uri = os.environ.get(HF_TOKEN_SECRET_VAR, "").strip()
    if os.environ.get(HF_TOKEN_VAR) or not uri:
        return False
    try:
        value = read(uri).strip()
    except TokenUnavailable:
        raise
    except Exception as err:  # noqa: BLE001 - azure-identity and azure-core failures alike name the cause
        raise TokenUnavailable(f"{HF_TOKEN_SECRET_VAR}={uri}: cannot read the Hugging Face token "
                               f"({type(err).__name__}: {' '.join(str(err).split())[:500]})") from err
    if not value:
        raise TokenUnavailable(f"{HF_TOKEN_SECRET_VAR}={uri}: the secret is empty")
    os.environ[HF_TOKEN_VAR] = value
    return True


def refused_message(repo_id: str, gated: bool) -> str:
    """What a step refused a gated (or private) model must be given, on each target."""
    given = bool(os.environ.get(HF_TOKEN_VAR))
    if gated and given:
        why = (f"Hub model {repo_id!r} is gated and the account of the {HF_TOKEN_VAR} given has no access yet: "
               f"accept its licence at https://huggingface.co/{repo_id} with that account (some are granted by hand)")
    elif given:
        why = (f"the Hub refused the {HF_TOKEN_VAR} given for {repo_id!r} (401): the token is invalid, or the model "
               f"is private or does not exist; a gated one needs its licence accepted at "
               f"https://huggingface.co/{repo_id} by the token's account")
    else:
        why = (f"Hub model {repo_id!r} is gated (or private, or does not exist) and no {HF_TOKEN_VAR} was given: "
               f"accept its licence at https://huggingface.co/{repo_id}, then give the steps that load it a "
               f"token of that account in {HF_TOKEN_VAR}")
    return (f"{why}. Locally: export {HF_TOKEN_VAR}=<token>. Kubeflow Pipelines: compile with "
            f"{HF_SECRET_FLAG} <Secret with key {HF_TOKEN_VAR}> (docs/aks.md). Azure ML: compile "
            f"with {AZUREML_HF_TOKEN_SECRET_FLAG} <Key Vault secret URI> (docs/azureml.md).")
