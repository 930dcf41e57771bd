"""Blue/green or canary rollout of a model folder behind the proxy (the API the deploy component calls).

1. write the candidate's Triton repository into the idle slot (blue <-> green), merging an adapter;
2. start its tritonserver on a fresh port and smoke test it directly;
3. start the proxy if none runs, then
   - blue/green: point it at the candidate (atomic upstream switch), smoke test through the proxy with the
     bearer token, and stop the previous server;
   - canary (when a previous version serves): split traffic, `canary_percent` to the candidate, smoke test
     the candidate through the proxy, and leave both running. The proxy then judges the candidate on live
     traffic (`routing.judge`): it rolls a failing one back and promotes a healthy one, and the server it
     no longer routes to is stopped (`local.reconcile`).
Any failure stops the candidate and leaves (or puts back) the previous server behind the proxy: traffic
never goes to a server that did not pass its smoke test.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from tuneline.serve import process
from tuneline.serve.auth import ensure_token, token_path
from tuneline.serve.limits import ProxyLimits
from tuneline.serve.local import (
    ServeError,
    ServerInfo,
    ServeState,
    default_state_dir,
    start_proxy,
    start_triton,
    state_lock,
    stop_triton,
)
from tuneline.serve.repository import RepositoryError, RepositorySpec, write_repository
from tuneline.serve.routing import (
    CANDIDATE,
    CanaryPolicy,
    Routes,
    Upstream,
    clear_upstream,
    read_routes,
    write_routes,
    write_upstream,
)
from tuneline.serve.smoke import DEFAULT_PROMPTS, SmokeResult, smoke_test

SLOTS = ("blue", "green")


@dataclass
class RolloutResult:
    ok: bool
    slot: str | None  # the slot serving after the rollout (the old one if it failed)
    model_name: str
    proxy_url: str | None
    token_file: str
    previous_slot: str | None = None
    server: ServerInfo | None = None  # the candidate
    smoke: SmokeResult | None = None
    error: str | None = None
    startup_s: float = 0.0
    total_s: float = 0.0
    canary_percent: int | None = None  # set while a canary splits traffic (the candidate is `server`)

    def to_dict(self) -> dict:
        return asdict(self)


def rollout(
    model_dir: Path,
    *,
    base_model_dir: Path | None = None,
    state_dir: Path | None = None,
    spec: RepositorySpec | None = None,
    proxy_port: int | None = None,
    smoke_prompts: Sequence[str] = DEFAULT_PROMPTS,
    smoke_check: Callable[[list[str]], str | None] | None = None,
    startup_timeout: float = 300.0,
    drain_s: float = 1.0,
    canary_percent: int | None = None,
    canary: CanaryPolicy | None = None,
    request_log: str | None = None,
    label: str = "",
    limits: ProxyLimits | None = None,
) -> RolloutResult:
    """Deploy `model_dir` behind the proxy; see the module docstring. `canary_percent` (1-99) asks for a
    canary judged by `canary` (default CanaryPolicy()); `request_log` is where the proxy logs requests
    (PII-redacted) for the feedback loop; `label` names what is served (e.g. its registry URI)."""
    spec = spec or RepositorySpec()
    state_dir = Path(state_dir or default_state_dir()).absolute()
    started = time.monotonic()
    with state_lock(state_dir):
        token = ensure_token(state_dir)
        state = ServeState.load(state_dir)
        old = state.servers.get(state.active) if state.active else None
        if old is not None and not process.is_alive(old.ref):
            state.servers.pop(old.slot, None)
            old = None
        slot = SLOTS[1] if state.active == SLOTS[0] else SLOTS[0]
        result = RolloutResult(
            ok=False,
            slot=old.slot if old else None,
            model_name=spec.model_name,
            proxy_url=state.proxy.url if state.proxy else None,
            token_file=str(token_path(state_dir)),
            previous_slot=old.slot if old else None,
        )
        routes = read_routes(state_dir)
        old_label = routes.current.label if routes and old and routes.current.slot == old.slot else ""
        if request_log is None and routes is not None:
            request_log = routes.request_log  # a rollout that names no log keeps the one already in use
        # A leftover in the idle slot (an interrupted rollout, or a canary still being judged) must not get
        # traffic any more: all of it goes back to the previous version before that server is stopped.
        stale = state.servers.pop(slot, None)
        if stale is not None:
            if old is not None and routes is not None and any(b.slot == slot for b in routes.backends):
                write_upstream(state_dir, _backend(old, old_label), request_log)
            stop_triton(stale, state_dir)
        state.save(state_dir)

        repo_dir = state_dir / "repos" / slot
        try:
            shutil.rmtree(repo_dir, ignore_errors=True)
            write_repository(Path(model_dir), repo_dir, spec, base_model_dir=base_model_dir)
            candidate = start_triton(repo_dir, spec.model_name, state_dir=state_dir, slot=slot, timeout=startup_timeout)
        except (RepositoryError, ServeError, OSError) as exc:
            result.error = f"candidate failed to start: {exc}"
            result.total_s = round(time.monotonic() - started, 2)
            return result
        result.server = candidate
        result.startup_s = candidate.startup_s
        state.servers[slot] = candidate
        state.save(state_dir)

        def abandon(error: str, smoke: SmokeResult | None) -> RolloutResult:
            stop_triton(candidate, state_dir)
            state.servers.pop(slot, None)
            state.save(state_dir)
            result.error, result.smoke = error, smoke
            result.total_s = round(time.monotonic() - started, 2)
            return result

        direct = smoke_test(candidate.url, spec.model_name, prompts=smoke_prompts, check=smoke_check)
        if not direct.ok:
            return abandon(f"smoke test on the candidate failed: {direct.error}", direct)

        if state.proxy is None or not process.is_alive(state.proxy.ref):
            try:
                state.proxy = start_proxy(state_dir, proxy_port, limits=limits)
            except ServeError as exc:
                return abandon(f"proxy failed to start: {exc}", direct)
            state.save(state_dir)
        new = _backend(candidate, label)
        split = canary_percent is not None and old is not None
        if split:
            if not 1 <= canary_percent <= 99:
                return abandon(f"canary_percent must be between 1 and 99, got {canary_percent}", direct)
            write_routes(
                state_dir,
                Routes(
                    backends=(
                        replace(_backend(old, old_label), weight=100 - canary_percent),
                        replace(new, weight=canary_percent, role=CANDIDATE),
                    ),
                    canary=canary or CanaryPolicy(),
                    request_log=request_log,
                ),
            )
        else:
            write_upstream(state_dir, new, request_log)
        proxied = smoke_test(
            state.proxy.url,
            spec.model_name,
            token=token,
            prompts=smoke_prompts,
            check=smoke_check,
            headers={"X-Tuneline-Slot": slot},
        )
        if not proxied.ok:
            if old is not None:
                write_upstream(state_dir, _backend(old, old_label), request_log)
            else:
                clear_upstream(state_dir)
            return abandon(f"smoke test through the proxy failed: {proxied.error}", proxied)

        if split:
            # Both versions serve; the proxy decides which one stays.
            state.save(state_dir)
            result.ok, result.slot, result.smoke = True, old.slot, proxied
            result.canary_percent = canary_percent
            result.proxy_url = state.proxy.url
            result.total_s = round(time.monotonic() - started, 2)
            return result
        state.active = slot
        if old is not None:
            # Requests the proxy routed just before the switch still reach the old server; Triton also
            # finishes in-flight inferences on SIGTERM, so a short drain is enough.
            time.sleep(drain_s)
            stop_triton(old, state_dir)
            state.servers.pop(old.slot, None)
        state.save(state_dir)
        result.ok, result.slot, result.smoke = True, slot, proxied
        result.proxy_url = state.proxy.url
        result.total_s = round(time.monotonic() - started, 2)
        return result


def _backend(server: ServerInfo, label: str = "") -> Upstream:
    return Upstream(url=server.url, model=server.model_name, slot=server.slot, label=label)
