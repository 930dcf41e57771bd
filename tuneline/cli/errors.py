"""The failures a newcomer meets first, each turned into one or two lines saying what to do next.

`tuneline.cli.main.main` asks `next_step` about any exception a command lets through; None means "not one of these",
and the traceback is shown as before. The SDKs are not imported here: exceptions are recognised by class name
along the `__cause__`/`__context__` chain, since the KFP client wraps urllib3's errors and Azure's credential
chain wraps each credential's.
"""

from __future__ import annotations

import argparse
import re

# urllib3 (under the KFP client and the Kubernetes client), requests, and the socket layer itself.
_NETWORK = {"MaxRetryError", "NewConnectionError", "ConnectionError", "ConnectionRefusedError", "ConnectTimeoutError",
            "NameResolutionError", "gaierror", "ProtocolError", "ConnectTimeout", "ReadTimeoutError"}
# azure-identity's DefaultAzureCredential and azure-core.
_AZURE_LOGIN = {"ClientAuthenticationError", "CredentialUnavailableError"}


def quiet_sdk_logs() -> None:
    """The Azure SDKs log each failed credential and each experimental class at WARNING, dozens of lines before
    the one error that matters; `tuneline` reports that error itself (TUNELINE_DEBUG=1 shows them again)."""
    import logging
    import os
    import warnings

    if not os.environ.get("TUNELINE_DEBUG"):
        logging.getLogger("azure").setLevel(logging.ERROR)
        # azure-ai-ml sets its own logger to INFO when imported; the experimental-class notices (about the SDK's
        # own schema classes, nothing the user wrote) come from this child, whose level it leaves alone.
        logging.getLogger("azure.ai.ml._utils._experimental").setLevel(logging.ERROR)
        # kfp's Client warns on every construction that it needs a v2 backend, which is the only one we target.
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"kfp\.client")


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def _host(exc: BaseException, args: argparse.Namespace) -> str:
    host = getattr(args, "host", None) or getattr(args, "kfp_host", None)
    if host:
        return host
    match = re.search(r"host='([^']+)', port=(\d+)", str(exc))
    return f"{match.group(1)}:{match.group(2)}" if match else "the platform"


def next_step(exc: BaseException, args: argparse.Namespace) -> str | None:
    chain = _chain(exc)
    names = {type(e).__name__ for e in chain}
    target = getattr(args, "target", None) or getattr(args, "submit", None)
    # azure-ai-ml re-raises the credential failure as its own MlException, keeping only the message.
    if names & _AZURE_LOGIN or any("DefaultAzureCredential failed" in str(e) for e in chain):
        return ("Azure ML: no Azure credentials on this machine. Run `az login` (then `az account set "
                "--subscription <id>`), or set AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET for a "
                "service principal; see docs/azureml.md.")
    if any("client_id should be the id of a Microsoft Entra application" in str(e) for e in chain):
        return ("Azure: AZURE_CLIENT_ID, AZURE_TENANT_ID and AZURE_CLIENT_SECRET are set but AZURE_CLIENT_ID is "
                "not an application id: set the service principal's values, or unset all three to use `az login`.")
    if names & _NETWORK:
        host = _host(next(e for e in chain if type(e).__name__ in _NETWORK), args)
        if target == "azureml":
            return (f"cannot reach Azure ({host}): check the network or proxy settings "
                    "(HTTPS_PROXY); see docs/troubleshooting.md.")
        return (f"cannot reach {host}: check --host (the KFP API endpoint, e.g. http://localhost:8080 while "
                "`kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80` runs) and that the port-forward or "
                "ingress is up; see docs/troubleshooting.md.")
    return None
