"""The compile options only Azure ML reads, declared once: the dataclass the compiler reads, and its flags."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...settings import AZUREML_HF_TOKEN_SECRET_FLAG, KEY_VAULT_SECRET_URI
from .. import CompileError
from ..base import Setting

DEFAULT_AZUREML_COMPUTE = "cpu-cluster"


@dataclass(frozen=True)
class AzureMLOptions:
    compute: str = DEFAULT_AZUREML_COMPUTE  # for steps without an azureml compute profile
    # Key Vault secret URI holding HF_TOKEN, for the steps that load a model (tuneline.llm.ml.hubaccess)
    hf_token_secret: str | None = None


COMPILE_SETTINGS = (
    Setting("compute", ("--azureml-compute",), "Azure ML compute for steps without an azureml compute profile "
            f"(default: {DEFAULT_AZUREML_COMPUTE})"),
    Setting("hf_token_secret", (AZUREML_HF_TOKEN_SECRET_FLAG,), "Key Vault secret URI (https://<vault>.vault.azure.net/"
            "secrets/<name>) holding a Hugging Face token, read with the compute's managed identity by the steps "
            "that load a model (gated Hub models need it); default: none", metavar="URI"),
)


def azureml_options(values: dict[str, Any]) -> AzureMLOptions:
    options = AzureMLOptions(**{name: value for name, value in values.items() if value})
    # Only a secret's URI may be compiled into a job (its environment variables are stored in plain text): a
    # token pasted here by mistake is refused rather than written into the job file.
    if options.hf_token_secret and not KEY_VAULT_SECRET_URI.match(options.hf_token_secret):
        raise CompileError(f"{AZUREML_HF_TOKEN_SECRET_FLAG}: expected a Key Vault secret URI, "
                           "https://<vault>.vault.azure.net/secrets/<name>[/<version>], not the token itself")
    return options
