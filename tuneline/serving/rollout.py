"""Blue/green or canary rollout of a model folder behind the proxy (the API the deploy component calls).

1. a LoRA adapter on the base the running server serves joins that server as one more adapter
   (repository.add_adapter; the engines load it when first named): no second server, no second copy of the
   base, and the canary below splits traffic between the two adapters inside one server. Otherwise (the
   first version, a full model, another base) write the candidate's Triton repository into the idle slot
   (blue <-> green) and start its tritonserver on a fresh port;
2. smoke test the candidate directly;
3. start the proxy if none runs, then
   - blue/green: point it at the candidate (atomic upstream switch), smoke test through the proxy with the
     bearer token, and stop the previous server;
   - canary (when a previous version serves): split traffic, `canary_percent` to the candidate, smoke test
     the candidate through the proxy, and leave both running. The proxy then judges the candidate on live
     traffic (`routing.judge`): it rolls a failing one back and promotes a healthy one, and the server it
     no longer routes to is stopped (`local.reconcile`).
4. once settled (blue/green switched; a canary decided, in `local.reconcile`), the adapters no route names leave
   the running server's repository (`housekeeping`; the result's `removed_adapters`).
Any failure stops the candidate and leaves (or puts back) the previous server behind the proxy: traffic
never goes to a server that did not pass its smoke test.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from tuneline.serving import process
from tuneline.serving.auth import ensure_token, token_path
from tuneline.serving.housekeeping import remove_unrouted_adapters
from tuneline.serving.limits import ProxyLimits
from tuneline.serving.local import (
    ServeError,
    ServerInfo,
    ServeState,
    default_state_dir,
    start_proxy,
    start_triton,
    state_lock,
    stop_triton,
)
from tuneline.serving.repository import (
    RepositoryError,
    RepositorySpec,
    adapter_name,
    add_adapter,
    remove_adapters,
    served_adapters,
    write_repository,
)
from tuneline.serving.routing import (
    CANDIDATE,
    CanaryPolicy,
    Routes,
    Upstream,
    clear_upstream,
    read_routes,
    write_routes,
    write_upstream,
)
from tuneline.serving.smoke import DEFAULT_PROMPTS, SmokeResult, smoke_test

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
    adapter: str = ""  # the LoRA adapter the new version is served as ("": a full model, or merged)
    # "joined the running server" when the version was added to the server already running, else why a server
    # of its own was started (None: there was no server to join)
    shared_base: str | None = None
    # the adapters taken out of the running server's repository once the rollout settled, as `<slot>/<adapter>`
    removed_adapters: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RolloutOptions:
    """How a rollout is smoke-tested, timed, split and labelled (the keyword arguments of `rollout`)."""

    smoke_prompts: Sequence[str] = DEFAULT_PROMPTS
    smoke_check: Callable[[list[str]], str | None] | None = None
    startup_timeout: float = 300.0
    drain_s: float = 1.0
    canary_percent: int | None = None
    canary: CanaryPolicy | None = None
    request_log: str | None = None
    label: str = ""
    proxy_port: int | None = None
    limits: ProxyLimits | None = None


def rollout(
    model_dir: Path,
    *,
    base_model_dir: Path | None = None,
    state_dir: Path | None = None,
    spec: RepositorySpec | None = None,
    **options,
) -> RolloutResult:
    """Deploy `model_dir` behind the proxy; see the module docstring. `options` are `RolloutOptions`' fields:
    `canary_percent` (1-99) asks for a canary judged by `canary` (default CanaryPolicy()); `request_log` is
    where the proxy logs requests (PII-redacted) for the feedback loop; `label` names what is served (e.g. its
    registry URI)."""
    state_dir = Path(state_dir or default_state_dir()).absolute()
    with state_lock(state_dir):
        return _Rollout(state_dir, spec or RepositorySpec(), RolloutOptions(**options)).run(model_dir, base_model_dir)


class _Rollout:
    """One rollout under the serving state's lock: its phases share the state, the slots and the result."""

    def __init__(self, state_dir: Path, spec: RepositorySpec, options: RolloutOptions) -> None:
        self.state_dir, self.spec, self.o = state_dir, spec, options
        self.started = time.monotonic()
        self.token = ensure_token(state_dir)
        self.state = ServeState.load(state_dir)
        old = self.state.servers.get(self.state.active) if self.state.active else None
        if old is not None and not process.is_alive(old.ref):
            self.state.servers.pop(old.slot, None)
            old = None
        self.old = old
        self.slot = SLOTS[1] if self.state.active == SLOTS[0] else SLOTS[0]
        self.result = RolloutResult(
            ok=False,
            slot=old.slot if old else None,
            model_name=spec.model_name,
            proxy_url=self.state.proxy.url if self.state.proxy else None,
            token_file=str(token_path(state_dir)),
            previous_slot=old.slot if old else None,
        )
        # The new version's adapter name, whichever server it ends up on.
        self.adapter = adapter_name(options.label) if options.label else _unlabelled()
        self.candidate: ServerInfo | None = None  # a server of the new version's own
        self.joined: Path | None = None  # or the adapter folder it was added as to the running server
        self.new: Upstream | None = None  # what the proxy sends the new version's traffic to

    def run(self, model_dir: Path, base_model_dir: Path | None) -> RolloutResult:
        self._free_idle_slot()
        if not self._join(Path(model_dir), base_model_dir):
            error = self._start_candidate(Path(model_dir), base_model_dir)
            if error:
                self.result.error = error
                return self._done()
        direct = smoke_test(self.new.url, self.spec.model_name, prompts=self.o.smoke_prompts,
                            check=self.o.smoke_check, adapter=self.new.adapter)
        if not direct.ok:
            return self._abandon(f"smoke test on the candidate failed: {direct.error}", direct)
        error = self._ensure_proxy() or self._route()
        if error:
            return self._abandon(error, direct)
        proxied = smoke_test(self.state.proxy.url, self.spec.model_name, token=self.token,
                             prompts=self.o.smoke_prompts, check=self.o.smoke_check,
                             headers={"X-Tuneline-Slot": self.new.version})
        if not proxied.ok:
            if self.old is not None:
                write_upstream(self.state_dir, self._old_backend(), self.o.request_log, previous=self.previous)
            else:
                clear_upstream(self.state_dir)
            return self._abandon(f"smoke test through the proxy failed: {proxied.error}", proxied)
        return self._switch(proxied)

    def _old_backend(self) -> Upstream:
        return _backend(self.old, self.old_label, self.old_adapter)

    def _free_idle_slot(self) -> None:
        routes = read_routes(self.state_dir)
        old = self.old
        same = routes is not None and old is not None and routes.current.slot == old.slot
        self.old_label = routes.current.label if same else ""
        self.old_adapter = routes.current.adapter if same else ""
        self.previous = routes.previous if routes is not None else None  # the old version's rollback target
        if self.o.request_log is None and routes is not None:
            self.o.request_log = routes.request_log  # a rollout that names no log keeps the one already in use
        # A leftover in the idle slot (an interrupted rollout, or a canary still being judged) must not get
        # traffic any more: all of it goes back to the previous version before that server is stopped.
        stale = self.state.servers.pop(self.slot, None)
        if stale is not None:
            if old is not None and routes is not None and any(b.slot == self.slot for b in routes.backends):
                write_upstream(self.state_dir, self._old_backend(), self.o.request_log, previous=self.previous)
            stop_triton(stale, self.state_dir)
        self.state.save(self.state_dir)

    def _join(self, model_dir: Path, base_model_dir: Path | None) -> bool:
        """Add the new version to the running server as an adapter on its base, when it is one that can be."""
        if self.old is None:
            return False
        if self.old.model_name != self.spec.model_name:
            self.result.shared_base = f"a server of its own: the running server serves {self.old.model_name}"
            return False
        root = self.state_dir / "repos" / self.old.slot / self.spec.model_name
        # A name is never reused for other weights: the engines cache an adapter by name (vLLM by its id) for their
        # whole life, so a new version under a name they already loaded would be answered by the old weights.
        name = self.adapter
        if name == self.old_adapter:
            name = f"{name}-{time.time_ns()}"  # never rewrite the files of the adapter that serves
        try:
            why = add_adapter(root, model_dir, name, self.spec, base_model_dir=base_model_dir)
        except (RepositoryError, OSError) as exc:
            why = str(exc)
        if why:
            self.result.shared_base = f"a server of its own: {why}"
            return False
        self.joined = root / "1" / "adapters" / name
        self.new = Upstream(url=self.old.url, model=self.old.model_name, slot=self.old.slot, label=self.o.label,
                            adapter=name)
        self.result.adapter, self.result.shared_base = name, "joined the running server"
        self.result.server = self.old
        return True

    def _start_candidate(self, model_dir: Path, base_model_dir: Path | None) -> str | None:
        repo_dir = self.state_dir / "repos" / self.slot
        adapter = self.adapter
        try:
            shutil.rmtree(repo_dir, ignore_errors=True)
            root = write_repository(model_dir, repo_dir, self.spec, base_model_dir=base_model_dir, adapter=adapter)
            self.candidate = start_triton(repo_dir, self.spec.model_name, state_dir=self.state_dir, slot=self.slot,
                                          timeout=self.o.startup_timeout)
        except (RepositoryError, ServeError, OSError) as exc:
            return f"candidate failed to start: {exc}"
        self.result.adapter = adapter if served_adapters(root) else ""
        self.new = _backend(self.candidate, self.o.label, self.result.adapter)
        self.result.server = self.candidate
        self.result.startup_s = self.candidate.startup_s
        self.state.servers[self.slot] = self.candidate
        self.state.save(self.state_dir)
        return None

    def _ensure_proxy(self) -> str | None:
        if self.state.proxy is None or not process.is_alive(self.state.proxy.ref):
            try:
                self.state.proxy = start_proxy(self.state_dir, self.o.proxy_port, limits=self.o.limits)
            except ServeError as exc:
                return f"proxy failed to start: {exc}"
            self.state.save(self.state_dir)
        return None

    @property
    def split(self) -> bool:
        return self.o.canary_percent is not None and self.old is not None

    def _route(self) -> str | None:
        new = self.new
        if not self.split:
            old = self._old_backend() if self.old is not None else None
            write_upstream(self.state_dir, new, self.o.request_log, previous=old)
            return None
        percent = self.o.canary_percent
        if not 1 <= percent <= 99:
            return f"canary_percent must be between 1 and 99, got {percent}"
        write_routes(self.state_dir, Routes(
            backends=(replace(self._old_backend(), weight=100 - percent), replace(new, weight=percent, role=CANDIDATE)),
            canary=self.o.canary or CanaryPolicy(),
            request_log=self.o.request_log,
            previous=self.previous,
        ))
        return None

    def _switch(self, proxied: SmokeResult) -> RolloutResult:
        if self.split:
            # Both versions serve; the proxy decides which one stays.
            self.state.save(self.state_dir)
            self.result.ok, self.result.slot, self.result.smoke = True, self.old.slot, proxied
            self.result.canary_percent = self.o.canary_percent
        elif self.joined is not None:
            # The same server serves on with the new adapter; the previous one stays, as the rollback target.
            self.state.save(self.state_dir)
            self.result.ok, self.result.slot, self.result.smoke = True, self.old.slot, proxied
        else:
            self.state.active = self.slot
            if self.old is not None:
                # Requests the proxy routed just before the switch still reach the old server; Triton also
                # finishes in-flight inferences on SIGTERM, so a short drain is enough.
                time.sleep(self.o.drain_s)
                stop_triton(self.old, self.state_dir)
                self.state.servers.pop(self.old.slot, None)
            self.state.save(self.state_dir)
            self.result.ok, self.result.slot, self.result.smoke = True, self.slot, proxied
        if not self.split:
            self.result.removed_adapters = remove_unrouted_adapters(
                read_routes(self.state_dir), self.state.servers.values(), drain_s=self.o.drain_s)
        self.result.proxy_url = self.state.proxy.url
        return self._done()

    def _abandon(self, error: str, smoke: SmokeResult | None) -> RolloutResult:
        if self.joined is not None:
            # The running server keeps serving the previous version; the failed adapter leaves its folder, whole
            # (as housekeeping removes one: a row checked against the folder sees all of it or none).
            remove_adapters(self.joined.parents[2], [self.joined.name])
        else:
            stop_triton(self.candidate, self.state_dir)
            self.state.servers.pop(self.slot, None)
            self.state.save(self.state_dir)
        self.result.error, self.result.smoke = error, smoke
        return self._done()

    def _done(self) -> RolloutResult:
        self.result.total_s = round(time.monotonic() - self.started, 2)
        return self.result


def _unlabelled() -> str:
    return f"version-{time.time_ns()}"


def _backend(server: ServerInfo, label: str = "", adapter: str = "") -> Upstream:
    return Upstream(url=server.url, model=server.model_name, slot=server.slot, label=label, adapter=adapter)
