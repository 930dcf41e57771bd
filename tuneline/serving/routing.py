"""Where the proxy sends traffic: one or two versions by weight, and when a canary is judged.

A version is a Triton server, or one LoRA adapter of a server that serves several on one base (`adapter`):
a canary between two adapters splits traffic inside one server, with one copy of the base in memory.

The routing table lives in `<state dir>/upstream.json`, replaced atomically by whoever changes it (a
deploy, or the proxy itself when it promotes or rolls back a canary) and re-read by the proxy when it
changes, so switching versions never needs a restart:

    {"model": "tuneline-llm", "request_log": ".../requests.jsonl",
     "backends": [{"slot": "blue", "url": "http://127.0.0.1:8101", "weight": 90, "role": "current"},
                  {"slot": "green", "url": "http://127.0.0.1:8102", "weight": 10, "role": "candidate"}],
     "canary": {"promote_after": 200, "min_requests": 20, "max_error_rate": 0.05, "max_p95_ratio": 3.0}}

`previous` is the version the current one replaced at its promotion: what a rollback goes back to. It gets no
traffic; it is named so that its adapter stays on disk until the next promotion replaces it (`housekeeping`).

`judge` is the canary rule, kept apart from the proxy so that it is tested on its own: a candidate whose
error rate or p95 latency (against the current version's) is over the limit once it has `min_requests`
is rolled back; one that stays within them for `promote_after` requests is promoted to all traffic.
KServe's canary does the same with `canaryTrafficPercent` and a promotion by the operator.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
from collections import deque
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

UPSTREAM_FILE = "upstream.json"
CANARY_FILE = "canary.json"
CURRENT, CANDIDATE = "current", "candidate"


@dataclass(frozen=True)
class Upstream:
    """One Triton server behind the proxy."""

    url: str
    model: str
    slot: str = ""
    weight: int = 100  # share of traffic, percent
    role: str = CURRENT
    label: str = ""  # what it serves, e.g. the registry URI models:/name/3
    adapter: str = ""  # the LoRA adapter of the server that answers ("": the server's default)

    @property
    def version(self) -> str:
        """What `X-Tuneline-Slot` names and the canary counts by: the slot, and the adapter within it."""
        return f"{self.slot}/{self.adapter}" if self.adapter else self.slot

    @property
    def hostport(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or 80


@dataclass(frozen=True)
class CanaryPolicy:
    promote_after: int = 200  # candidate requests within the limits before it takes all traffic
    min_requests: int = 20  # candidate requests before it can be judged at all
    max_error_rate: float = 0.05  # share of failed candidate requests that rolls it back
    max_p95_ratio: float | None = 3.0  # candidate p95 over current p95 that rolls it back (None: not judged)

    def __post_init__(self) -> None:
        if not 1 <= self.min_requests <= self.promote_after:
            raise ValueError(f"canary: need 1 <= min_requests <= promote_after, got {self.min_requests}, "
                             f"{self.promote_after}")
        if not 0 <= self.max_error_rate < 1:
            raise ValueError(f"canary: max_error_rate must be in [0, 1), got {self.max_error_rate}")
        if self.max_p95_ratio is not None and self.max_p95_ratio <= 1:
            raise ValueError(f"canary: max_p95_ratio must be > 1, got {self.max_p95_ratio}")


@dataclass(frozen=True)
class Routes:
    backends: tuple[Upstream, ...]
    canary: CanaryPolicy | None = None
    request_log: str | None = None  # PII-redacted request log of the feedback loop; None: not logged
    previous: Upstream | None = None  # the champion before the current one (no traffic): the rollback target

    @property
    def model(self) -> str:
        return self.current.model

    @property
    def current(self) -> Upstream:
        return next((b for b in self.backends if b.role == CURRENT), self.backends[0])

    @property
    def candidate(self) -> Upstream | None:
        return next((b for b in self.backends if b.role == CANDIDATE), None)

    def pick(self, rng: random.Random | None = None) -> Upstream:
        """A backend drawn by weight."""
        live = [b for b in self.backends if b.weight > 0] or [self.current]
        if len(live) == 1:
            return live[0]
        return (rng or random).choices(live, weights=[b.weight for b in live])[0]

    def only(self, backend: Upstream) -> Routes:
        """All traffic to `backend`, which becomes the current version; the canary is over. Promoting another
        version makes the current one `previous`; keeping the current one (a rollback) keeps the previous."""
        previous = self.previous if backend == self.current else replace(self.current, weight=0)
        return Routes(backends=(replace(backend, weight=100, role=CURRENT),), request_log=self.request_log,
                      previous=previous)

    def to_dict(self) -> dict:
        return {
            "model": self.model,
            "request_log": self.request_log,
            "backends": [asdict(b) for b in self.backends],
            "canary": asdict(self.canary) if self.canary else None,
            "previous": asdict(self.previous) if self.previous else None,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Routes:
        if "backends" not in data:  # a single-upstream file: {"url", "model", "slot"}
            data = {"backends": [data]}
        model = data.get("model")
        backends = tuple(_upstream(b, model) for b in data["backends"])
        if not backends:
            raise ValueError("routes: no backends")
        canary = CanaryPolicy(**data["canary"]) if data.get("canary") else None
        previous = _upstream(data["previous"], model) if data.get("previous") else None
        return cls(backends=backends, canary=canary, request_log=data.get("request_log"), previous=previous)


def _upstream(data: dict, model: str | None) -> Upstream:
    return Upstream(
        url=data["url"],
        model=data.get("model") or model,
        slot=data.get("slot", ""),
        weight=int(data.get("weight", 100)),
        role=data.get("role", CURRENT),
        label=data.get("label", ""),
        adapter=data.get("adapter", ""),
    )


def _replace_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, path)


def write_routes(state_dir: Path, routes: Routes) -> None:
    """Atomically point the proxy at `routes`."""
    _replace_json(Path(state_dir) / UPSTREAM_FILE, routes.to_dict())


def read_routes(state_dir: Path) -> Routes | None:
    try:
        return Routes.from_dict(json.loads((Path(state_dir) / UPSTREAM_FILE).read_text()))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def write_upstream(state_dir: Path, upstream: Upstream, request_log: str | None = None, *,
                   previous: Upstream | None = None) -> None:
    """Send all traffic to one server (blue/green); keeps the request log already configured. `previous`: the
    version it replaces, which a rollback would go back to (Routes.previous)."""
    if request_log is None:
        before = read_routes(state_dir)
        request_log = before.request_log if before else None
    write_routes(state_dir, Routes(backends=(replace(upstream, weight=100, role=CURRENT),), request_log=request_log,
                                   previous=replace(previous, weight=0, role=CURRENT) if previous else None))


def read_upstream(state_dir: Path) -> Upstream | None:
    """The current version's server."""
    routes = read_routes(state_dir)
    return routes.current if routes else None


def clear_upstream(state_dir: Path) -> None:
    """Leave the proxy with no upstream (it answers 503)."""
    with contextlib.suppress(FileNotFoundError):
        (Path(state_dir) / UPSTREAM_FILE).unlink()


def read_canary(state_dir: Path) -> dict | None:
    """The last canary decision the proxy recorded, if any."""
    try:
        return json.loads((Path(state_dir) / CANARY_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def write_canary(state_dir: Path, record: dict) -> None:
    _replace_json(Path(state_dir) / CANARY_FILE, record)


# ---------------------------------------------------------------------------------------------- counters


@dataclass
class VersionStats:
    """Requests, failures and recent latencies of one backend (one slot)."""

    requests: int = 0
    errors: int = 0
    latencies_ms: deque = field(default_factory=lambda: deque(maxlen=2048))

    def record(self, ok: bool, latency_ms: float) -> None:
        self.requests += 1
        if ok:
            self.latencies_ms.append(latency_ms)
        else:
            self.errors += 1

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0

    def percentile(self, q: float) -> float | None:
        if not self.latencies_ms:
            return None
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]

    def to_dict(self) -> dict:
        p50, p95 = self.percentile(50), self.percentile(95)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "error_rate": round(self.error_rate, 4),
            "p50_ms": None if p50 is None else round(p50, 1),
            "p95_ms": None if p95 is None else round(p95, 1),
        }


@dataclass(frozen=True)
class Verdict:
    action: str  # "promote" or "rollback"
    reason: str


def judge(policy: CanaryPolicy, candidate: VersionStats, current: VersionStats) -> Verdict | None:
    """Promote, roll back, or (None) keep splitting traffic."""
    if candidate.requests < policy.min_requests:
        return None
    if candidate.error_rate > policy.max_error_rate:
        return Verdict(
            "rollback",
            f"candidate error rate {candidate.error_rate:.1%} ({candidate.errors}/{candidate.requests}) > "
            f"max_error_rate {policy.max_error_rate:.1%}",
        )
    cand_p95, cur_p95 = candidate.percentile(95), current.percentile(95)
    if policy.max_p95_ratio and cand_p95 is not None and cur_p95 and cand_p95 > policy.max_p95_ratio * cur_p95:
        return Verdict(
            "rollback",
            f"candidate p95 {cand_p95:.0f} ms > {policy.max_p95_ratio:g} x current p95 {cur_p95:.0f} ms",
        )
    if candidate.requests >= policy.promote_after:
        return Verdict(
            "promote",
            f"{candidate.requests} candidate requests within limits (error rate {candidate.error_rate:.1%})",
        )
    return None
