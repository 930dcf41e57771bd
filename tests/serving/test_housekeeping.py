"""Adapter housekeeping without servers: the proxy's canary decisions, through the reconcile they start, take the
adapters no route names out of a real shared-base repository, and keep the routed ones, the rollback target and the
default. tests/serving/test_adapters.py checks the same on a running server after blue/green rollouts."""

from __future__ import annotations

import asyncio
import shutil
from dataclasses import replace
from pathlib import Path

from tuneline.serving.auth import ensure_token
from tuneline.serving.local import ServerInfo, ServeState
from tuneline.serving.proxy import Proxy
from tuneline.serving.repository import RepositorySpec, add_adapter, served_adapters, write_repository
from tuneline.serving.routing import (
    CANDIDATE,
    CanaryPolicy,
    Routes,
    Upstream,
    read_canary,
    read_routes,
    write_routes,
)

SPEC = RepositorySpec(adapters="shared")
POLICY = CanaryPolicy(promote_after=4, min_requests=2)
URL = "unix:/nonexistent/triton-blue.sock"  # no request is sent: the decisions are driven by recorded counts


def _decide(state_dir: Path, candidate: str, healthy: bool) -> Routes:
    """Split traffic between the current adapter and `candidate` as a canary rollout does, then let the proxy
    judge recorded outcomes; returns the routes it settles on, once its reconcile has run."""
    current = read_routes(state_dir).current
    write_routes(state_dir, Routes(
        backends=(replace(current, weight=50), Upstream(url=URL, model=SPEC.model_name, slot="blue", weight=50,
                                                      role=CANDIDATE, adapter=candidate)),
        canary=POLICY, previous=read_routes(state_dir).previous))

    async def judged() -> None:
        proxy = Proxy(state_dir, ensure_token(state_dir, announce=False))
        routes = proxy.routes.get()
        for _ in range(POLICY.promote_after):
            proxy._stats(routes.candidate).record(healthy, 10.0)
            proxy._stats(routes.current).record(True, 10.0)
        await proxy._judge(routes)

    asyncio.run(judged())  # returns once the executor ran the reconcile the decision started
    return read_routes(state_dir)


def test_settled_canaries_leave_only_the_routed_the_rollback_target_and_the_default(
        tiny_model: Path, tiny_adapter: Path, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    repo = state_dir / "repos" / "blue"
    root = write_repository(tiny_adapter, repo, SPEC, base_model_dir=tiny_model, adapter="m-1")
    ServeState(servers={"blue": ServerInfo(slot="blue", pid=0, start_ticks=0, http_port=0, repo_dir=str(repo),
                                           model_name=SPEC.model_name, log_path="", socket=URL[len("unix:"):])},
               active="blue").save(state_dir)
    write_routes(state_dir, Routes(backends=(Upstream(url=URL, model=SPEC.model_name, slot="blue", adapter="m-1"),)))

    def join(name: str) -> None:
        copy = shutil.copytree(tiny_adapter, tmp_path / name)
        assert add_adapter(root, copy, name, SPEC, base_model_dir=tiny_model) is None

    join("m-2")
    routes = _decide(state_dir, "m-2", healthy=True)
    assert (routes.current.adapter, routes.previous.adapter) == ("m-2", "m-1")
    assert served_adapters(root) == ["m-1", "m-2"]

    join("m-3")
    routes = _decide(state_dir, "m-3", healthy=True)
    assert (routes.current.adapter, routes.previous.adapter) == ("m-3", "m-2")
    assert served_adapters(root) == ["m-1", "m-2", "m-3"]  # m-1 is the default the server started with

    join("m-4")
    routes = _decide(state_dir, "m-4", healthy=False)  # rolled back: m-3 serves on, m-2 is still its rollback target
    assert (routes.current.adapter, routes.previous.adapter) == ("m-3", "m-2")
    assert served_adapters(root) == ["m-1", "m-2", "m-3"]
    assert read_canary(state_dir)["decision"] == "rolled_back"
    assert read_canary(state_dir)["removed_adapters"] == ["blue/m-4"]  # what went, where the decision is recorded

    join("m-5")
    routes = _decide(state_dir, "m-5", healthy=True)  # the next promotion replaces the rollback target
    assert (routes.current.adapter, routes.previous.adapter) == ("m-5", "m-3")
    assert served_adapters(root) == ["m-1", "m-3", "m-5"]
    assert sorted(p.name for p in (root / "1" / "adapters").iterdir()) == ["m-1", "m-3", "m-5"]  # nothing half-gone
    assert ServeState.load(state_dir).servers["blue"].repo_dir == str(repo)  # the server itself is left alone
