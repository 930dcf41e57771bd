"""The failures a newcomer meets first, each turned into one or two lines saying what to do next.

`tuneline.cli.main.main` asks `next_step` about any exception a command lets through; None means "not one of these",
and the traceback is shown as before. The SDKs are not imported here: exceptions are recognised by class name
along the `__cause__`/`__context__` chain, since the KFP client wraps urllib3's errors and Azure's credential
chain wraps each credential's. What a platform's failure means is that target's to say (`Target.explain`).
"""

from __future__ import annotations

import argparse
import re

# urllib3 (under the KFP client and the Kubernetes client), requests, and the socket layer itself.
_NETWORK = {"MaxRetryError", "NewConnectionError", "ConnectionError", "ConnectionRefusedError", "ConnectTimeoutError",
            "NameResolutionError", "gaierror", "ProtocolError", "ConnectTimeout", "ReadTimeoutError"}


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
    # The endpoint as the user gave it: a target's `host` setting (tuneline.targets.base.Setting).
    host = next((value for key, value in vars(args).items() if (key == "host" or key.endswith("_host")) and value),
                None)
    if host:
        return host
    match = re.search(r"host='([^']+)', port=(\d+)", str(exc))
    return f"{match.group(1)}:{match.group(2)}" if match else "the platform"


def next_step(exc: BaseException, args: argparse.Namespace) -> str | None:
    from ..targets.submit import explain

    chain = _chain(exc)
    network = next((e for e in chain if type(e).__name__ in _NETWORK), None)
    host = _host(network, args) if network is not None else None
    target = getattr(args, "target", None) or getattr(args, "submit", None)
    hint = explain(chain, host, target)  # each platform recognises its own SDK's failures
    if hint:
        return hint
    if host:
        return (f"cannot reach {host}: check the address, the network and that any port-forward or ingress is "
                "up; see docs/troubleshooting.md.")
    return None
