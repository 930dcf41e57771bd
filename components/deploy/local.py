"""The ``local`` target: serve the version through the real Triton server behind the proxy (tuneline.serving),
blue/green or canary with smoke tests; a failed candidate leaves the previous version serving.

Under ``canary`` the proxy sends ``canary_percent`` of the traffic to the new version, rolls it back when
its error rate or latency is over the limits and promotes it after ``canary_promote_after`` requests within
them (``tuneline.serving.routing``), as KServe's canaryTrafficPercent does on the cluster. The proxy logs
requests (PII-redacted, rotated) to ``requests_log`` when one is given: the file the pipeline's drift
trigger reads.

The servers run detached, so they keep serving after the pipeline ends; ``python -m tuneline.serving
stop`` stops them. Which registry version serves is kept in ``<state dir>/deployed-model.json``, so a re-run
whose champion did not change leaves the running server alone.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from components.deploy.record import DeploymentRecord, curl_command
from tuneline.llm.registry import FetchedModel, resolve_base_dir
from tuneline.serving.deploy.policy import RolloutPolicy

if TYPE_CHECKING:
    from tuneline.serving.rollout import RolloutResult

CURRENT_FILE = "deployed-model.json"


@dataclass(frozen=True)
class LocalOptions:
    state_dir: Path
    model_name: str
    proxy_port: int | None = None
    smoke_expect: str | None = None  # every smoke output must match this regular expression
    response_schema: str = ""  # JSON schema text the engine constrains answers to (RepositorySpec.response_schema)
    adapters: str | None = None  # how a LoRA version is served (RepositorySpec.adapters; None: its default)
    startup_timeout: float = field(kw_only=True)  # component.yaml's inputs, given by name
    requests_log: Path | None = None
    canary_promote_after: int = field(kw_only=True)


def default_state_dir() -> Path:
    from tuneline import settings

    return settings.serve_state_dir()


def _serving(state_dir: Path) -> tuple[dict | None, dict]:
    """(what deployed-model.json says serves, tuneline.serving's live status)."""
    from tuneline.serving.local import status

    live = status(state_dir)
    path = state_dir / CURRENT_FILE
    current = json.loads(path.read_text()) if path.is_file() else None
    return current, live


def _alive(live: dict) -> bool:
    active = live.get("active")
    server = (live.get("servers") or {}).get(active) if active else None
    proxy = live.get("proxy")
    return bool(server and server.get("alive") and proxy and proxy.get("alive"))


def _smoke_check(expect: str | None) -> Callable[[list[str]], str | None] | None:
    """The smoke test's check on the model's answers: each must match `expect`, when one is given."""
    if not expect:
        return None
    pattern = re.compile(expect)

    def check(outputs: list[str]) -> str | None:
        bad = [o for o in outputs if not pattern.search(o)]
        return (
            f"{len(bad)} of {len(outputs)} outputs do not match {expect!r}: {bad[:2]!r}"
            if bad
            else None
        )

    return check


def _record_outcome(record: DeploymentRecord, result: RolloutResult, current: dict | None, fetched: FetchedModel,
                    options: LocalOptions, state_dir: Path) -> None:
    """A rollout's outcome: the new version is recorded as current, or the record says it was rolled back."""
    if result.ok:
        (state_dir / CURRENT_FILE).write_text(
            json.dumps(
                {
                    "model_uri": fetched.uri,
                    "version": fetched.version,
                    "slot": result.server.slot if result.server else result.slot,
                    "model_name": options.model_name,
                },
                indent=2,
            )
            + "\n"
        )
        record.endpoint = result.proxy_url or ""
    else:
        # With no previous server there is nothing to roll back to: the deployment failed outright.
        record.status, record.error = ("rolled_back" if result.slot else "failed"), result.error
        record.details["serving"] = current if result.slot else None
        record.endpoint = result.proxy_url or ""


def deploy_local(
    fetched: FetchedModel, options: LocalOptions, policy: RolloutPolicy, requested_uri: str, log=print
) -> DeploymentRecord:
    from tuneline.serving.auth import token_path
    from tuneline.serving.repository import machine_spec
    from tuneline.serving.rollout import rollout
    from tuneline.serving.routing import CanaryPolicy, read_routes

    state_dir = options.state_dir.absolute()
    record = DeploymentRecord(
        target="local",
        status="deployed",
        requested_uri=requested_uri,
        model_uri=fetched.uri,
        version=fetched.version,
        strategy="blue_green",
        token_file=str(token_path(state_dir)),
    )
    current, live = _serving(state_dir)
    routes = read_routes(state_dir)
    serving_uris = {b.label for b in routes.backends if b.label} if routes else set()
    if routes and not serving_uris and current:  # routes written before they carried labels
        serving_uris = {current.get("model_uri")}
    if current and fetched.uri in serving_uris and _alive(live):
        proxy_url = live["proxy"]["url"]
        record.status, record.endpoint = "unchanged", proxy_url
        record.curl = curl_command(proxy_url, record.token_file)
        record.details["serving"] = current
        return record

    check = _smoke_check(options.smoke_expect)
    canary = policy.strategy == "canary"
    result = rollout(
        fetched.model_dir,
        base_model_dir=resolve_base_dir(fetched),
        state_dir=state_dir,
        spec=machine_spec(model_name=options.model_name, response_schema=options.response_schema,
                          **({"adapters": options.adapters} if options.adapters else {})),
        proxy_port=options.proxy_port,
        smoke_check=check,
        startup_timeout=options.startup_timeout,
        canary_percent=policy.canary_percent if canary else None,
        canary=CanaryPolicy(
            promote_after=options.canary_promote_after, min_requests=min(20, options.canary_promote_after)
        ),
        request_log=str(options.requests_log.absolute()) if options.requests_log else None,
        label=fetched.uri,
    )
    record.details["rollout"] = result.to_dict()
    if canary:
        record.strategy = "canary"
        if result.ok and result.canary_percent is None:
            log("deploy: no version served before this one, so the canary starts with all traffic")
    if result.ok and result.canary_percent is not None:
        record.details["canary_percent"] = result.canary_percent
        log(
            f"deploy: canary: {result.canary_percent}% of requests go to {fetched.uri}; the proxy promotes it "
            f"after {options.canary_promote_after} healthy requests or rolls it back (see GET /v1/stats)"
        )
    _record_outcome(record, result, current, fetched, options, state_dir)
    if record.endpoint:
        record.curl = curl_command(record.endpoint, record.token_file)
    return record
