"""The ``local`` target: serve the version through the real Triton server behind the auth proxy
(tuneline.serve), blue/green with smoke tests; a failed candidate leaves the previous version serving.

The servers run detached, so they keep serving after the pipeline ends; ``python -m tuneline.serve
stop`` stops them. Which registry version serves is kept in ``<state dir>/deployed-model.json``, so a re-run
whose champion did not change leaves the running server alone.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from components.deploy.record import DeploymentRecord, curl_command
from tuneline.deploy.policy import RolloutPolicy
from tuneline.registry import FetchedModel, resolve_base_dir

CURRENT_FILE = "deployed-model.json"


@dataclass(frozen=True)
class LocalOptions:
    state_dir: Path
    model_name: str
    proxy_port: int | None = None
    smoke_expect: str | None = None  # every smoke output must match this regular expression
    startup_timeout: float = 300.0


def default_state_dir() -> Path:
    from tuneline import settings

    return settings.serve_state_dir()


def _serving(state_dir: Path) -> tuple[dict | None, dict]:
    """(what deployed-model.json says serves, tuneline.serve's live status)."""
    from tuneline.serve.local import status

    live = status(state_dir)
    path = state_dir / CURRENT_FILE
    current = json.loads(path.read_text()) if path.is_file() else None
    return current, live


def _alive(live: dict) -> bool:
    active = live.get("active")
    server = (live.get("servers") or {}).get(active) if active else None
    proxy = live.get("proxy")
    return bool(server and server.get("alive") and proxy and proxy.get("alive"))


def deploy_local(
    fetched: FetchedModel, options: LocalOptions, policy: RolloutPolicy, requested_uri: str, log=print
) -> DeploymentRecord:
    from tuneline.serve.auth import token_path
    from tuneline.serve.repository import RepositorySpec
    from tuneline.serve.rollout import rollout

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
    if policy.strategy == "canary":
        log(
            f"deploy: the local proxy has one upstream, so canary ({policy.canary_percent}%) is applied as "
            "blue/green: all traffic moves once the candidate passes its smoke tests"
        )
        record.details["requested_strategy"] = "canary"
    current, live = _serving(state_dir)
    if current and current.get("model_uri") == fetched.uri and _alive(live):
        proxy_url = live["proxy"]["url"]
        record.status, record.endpoint = "unchanged", proxy_url
        record.curl = curl_command(proxy_url, record.token_file)
        record.details["serving"] = current
        return record

    check = None
    if options.smoke_expect:
        pattern = re.compile(options.smoke_expect)

        def check(outputs: list[str]) -> str | None:
            bad = [o for o in outputs if not pattern.search(o)]
            return (
                f"{len(bad)} of {len(outputs)} outputs do not match {options.smoke_expect!r}: {bad[:2]!r}"
                if bad
                else None
            )

    result = rollout(
        fetched.model_dir,
        base_model_dir=resolve_base_dir(fetched),
        state_dir=state_dir,
        spec=RepositorySpec(model_name=options.model_name),
        proxy_port=options.proxy_port,
        smoke_check=check,
        startup_timeout=options.startup_timeout,
    )
    record.details["rollout"] = result.to_dict()
    if result.ok:
        (state_dir / CURRENT_FILE).write_text(
            json.dumps(
                {
                    "model_uri": fetched.uri,
                    "version": fetched.version,
                    "slot": result.slot,
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
    if record.endpoint:
        record.curl = curl_command(record.endpoint, record.token_file)
    return record
