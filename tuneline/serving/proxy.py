"""The serving proxy in front of Triton: bearer-token auth, OpenAI-compatible API, admission control, canary.

An ASGI app (starlette) served by uvicorn, talking to Triton over pooled keep-alive connections (aiohttp):
a listen backlog of `backlog` connections, keep-alive to clients, no thread per connection. Its routes:

- `/v2/health/live`, `/v2/health/ready`: open, for probes (forwarded to the current version's Triton).
- `POST /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models`: the OpenAI API (`openai_api`).
- `POST /v1/generate` `{"prompt": str | [str], "max_new_tokens"?}` -> `{"model", "text", "usage"}`.
- `POST /v1/feedback` `{"request_id", "rating": 1-5, "comment"?, "correction"?}`: a rating (and the answer
  that should have been served) for `tuneline feedback export`. The request id is `/v1/generate`'s
  `request_id`, or an OpenAI answer's `id` (`<id>-<i>` for prompt i of a multi-prompt completion).
- `GET /v1/stats`: admission counters, per-version requests / errors / p50 / p95, the last canary decision.
- KServe v2 routes as they are: server metadata `/v2`, model metadata, config, ready, stats, `/infer` and
  Triton's `/generate`. Anything else (repository control, logging, tracing, shared memory) is 404 so that
  the token does not give control over the server. Everything but health needs `Authorization: Bearer`.

Under load (see `admission`): at most `max_inflight` requests go to Triton, `max_queue` more wait, and a
request past that gets 429 with `Retry-After`; one whose deadline passes while queued gets 503 with
`Retry-After`, and one whose deadline passes at Triton 504. The deadline is `--request-timeout` seconds, or
less when the client sends `X-Request-Timeout` (or the OpenAI client's `X-Stainless-Timeout`); Triton gets
what is left of it as the request's queue `timeout`. A client that disconnects cancels its request: its
queue place or its slot goes to the next one.

Before any of that (`guard`): a body is counted as it is read (4 MiB, 413), request heads and bodies have
read timeouts, and open connections are capped; every limit is a `ProxyLimits` field, listed with its value
in docs/serving.md. Triton is reached over its unix socket (`engine_http`); when it dies the proxy's
`supervisor` starts it again and requests get 503 with `Retry-After` meanwhile. Ratings go through
`ratings` (only a served request, once, by its token).

Routing (`routing`): `upstream.json` names one server, or two split by weight during a canary. The proxy
counts requests, errors and latency per version, rolls a failing candidate back (a failed candidate request
is retried once on the current version, so clients do not see the failure) and promotes a healthy one,
rewriting `upstream.json` itself and recording the decision in `canary.json`. `X-Tuneline-Slot` pins a request
to one version (the deploy's smoke test through the proxy uses it): `<slot>/<adapter>` names one adapter of a
server that serves several, a bare `<slot>` the one version that slot serves. Where a slot serves two (a canary
between two adapters of one server), a bare slot on a generation route is a 400 naming both: answering with
either would be a guess about which one the client meant to test. Metadata and readiness routes take a bare slot
as its server, which is the same for both.

Run as: python -m tuneline.serving.proxy --state-dir .tuneline/serve --port 8000
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from tuneline import settings
from tuneline.serving.admission import Admission, Overloaded, QueueTimeout
from tuneline.serving.auth import check_bearer, load_token, token_path
from tuneline.serving.engine_http import UNIX_PREFIX, is_unix
from tuneline.serving.guard import BodyLimit, RepeatLimit, timed_h11
from tuneline.serving.limits import ProxyLimits, check_prompts
from tuneline.serving.openai_api import (
    ApiError,
    Generation,
    Result,
    StreamWriter,
    models_list,
    parse_chat,
    parse_completion,
    response,
)
from tuneline.serving.ratings import FeedbackDesk
from tuneline.serving.repository import stream_model_name
from tuneline.serving.requestlog import token_digest
from tuneline.serving.routing import (
    UPSTREAM_FILE,
    Routes,
    Upstream,
    VersionStats,
    clear_upstream,
    judge,
    read_canary,
    read_routes,
    read_upstream,
    write_canary,
    write_routes,
    write_upstream,
)
from tuneline.serving.supervisor import Supervisor

__all__ = [
    "ProxyLimits",
    "Upstream",
    "build_app",
    "clear_upstream",
    "read_upstream",
    "serve",
    "write_upstream",
]

_OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
_V2_ROUTE = re.compile(
    r"^/v2(/models/[A-Za-z0-9_.-]+(/versions/\d+)?(/(ready|infer|generate|config|stats))?)?$"
)
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "authorization",
        "content-length",
        "x-tuneline-slot",
    }
)
_JSON = "application/json"
ENGINE_RETRY_AFTER_S = 5  # what a client is told while the engine restarts (the tiny model: ~10-20 s)


class _Failed(Exception):
    """The upstream failed (connection, 5xx or deadline); `status` is what the client gets."""

    def __init__(self, status: int, message: str, body: bytes | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.body, self.retry_after = status, body, retry_after


class _RoutesWatcher:
    """Caches upstream.json, re-reading it when its inode or mtime changes (writers replace it atomically)."""

    def __init__(self, state_dir: Path) -> None:
        self._path = Path(state_dir) / UPSTREAM_FILE
        self._state_dir = Path(state_dir)
        self._key: tuple[int, int] | None = None
        self._value: Routes | None = None

    def get(self) -> Routes | None:
        try:
            st = self._path.stat()
        except FileNotFoundError:
            self._key, self._value = None, None
            return None
        key = (st.st_mtime_ns, st.st_ino)
        if key != self._key:
            self._value = read_routes(self._state_dir)
            self._key = key
        return self._value


class Proxy:
    """The proxy's state: routes, admission, per-version counters, upstream connections, request logs."""

    def __init__(self, state_dir: Path, token: str, limits: ProxyLimits | None = None) -> None:
        self.state_dir = Path(state_dir)
        self.token = token
        self.limits = limits or ProxyLimits()
        self.routes = _RoutesWatcher(self.state_dir)
        self.admission = Admission(self.limits.max_inflight, self.limits.max_queue)
        self.stats: dict[str, VersionStats] = {}
        self.started = time.time()
        self.session = None  # aiohttp.ClientSession, made on startup (it needs the running loop)
        self._unix_sessions: dict[str, Any] = {}  # one per engine socket (a connector serves one path)
        self._model_params: dict[tuple[str, str], dict[str, str]] = {}
        self._loggers: dict[str, Any] = {}
        self._judging = asyncio.Lock()
        self.supervisor = Supervisor(self.state_dir)
        self.desk = FeedbackDesk()
        # Clients that left before their answer: counted (in /v1/stats), never written to the request log.
        self.client_gone = {"before_answer": 0, "mid_stream": 0}
        self.by = token_digest(token)  # who made a logged request: the endpoint has one token
        self._supervising: asyncio.Task | None = None

    # --- lifecycle ------------------------------------------------------------------------------------
    async def startup(self) -> None:
        import aiohttp

        connector = aiohttp.TCPConnector(limit=self.limits.max_inflight + 16, keepalive_timeout=60)
        # Bodies pass through as Triton sent them; Triton compresses only when the client asked it to (its
        # Accept-Encoding is forwarded on the v2 routes), never for the proxy's own calls.
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, skip_auto_headers=("Accept-Encoding",)
        )
        self._supervising = asyncio.ensure_future(self.supervisor.run())

    async def shutdown(self) -> None:
        if self._supervising is not None:
            self._supervising.cancel()
        if self.session is not None:
            await self.session.close()
        for session in self._unix_sessions.values():
            await session.close()

    def _endpoint(self, backend: Upstream) -> tuple[Any, str]:
        """The session and base URL that reach `backend` (a unix socket, or TCP for a remote/benchmark one)."""
        import aiohttp

        if not is_unix(backend.url):
            return self.session, backend.url
        path = backend.url[len(UNIX_PREFIX):]
        if path not in self._unix_sessions:
            connector = aiohttp.UnixConnector(path=path, limit=self.limits.max_inflight + 16, keepalive_timeout=60)
            self._unix_sessions[path] = aiohttp.ClientSession(
                connector=connector, auto_decompress=False, skip_auto_headers=("Accept-Encoding",)
            )
        return self._unix_sessions[path], "http://engine"

    # --- upstream -------------------------------------------------------------------------------------
    async def _call(
        self, backend: Upstream, method: str, path: str, body: bytes | None, headers: dict[str, str], timeout_s: float
    ) -> tuple[int, dict[str, str], bytes]:
        import aiohttp

        session, base = self._endpoint(backend)
        try:
            async with session.request(
                method,
                base + path,
                data=body if method not in ("GET", "HEAD") else None,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=max(0.001, timeout_s)),
            ) as resp:
                return resp.status, dict(resp.headers), await resp.read()
        except TimeoutError:
            raise _Failed(504, f"the model server{_slot(backend)} did not answer within the deadline") from None
        except aiohttp.ClientError as exc:
            raise _unavailable(backend, exc) from None

    async def open_stream(self, backend: Upstream, payload: bytes, timeout_s: float):
        """POST to the streaming twin's generate_stream; returns the open response (its body: server-sent events).

        Triton answers the status with the model's first response, so a request the model refuses is an error
        status here (docs/protocol/extension_generate.md, "generate vs. generate_stream").
        """
        import aiohttp

        session, base = self._endpoint(backend)
        url = f"{base}/v2/models/{stream_model_name(backend.model)}/generate_stream"
        try:
            resp = await session.post(url, data=payload, headers={"Content-Type": _JSON},
                                      timeout=aiohttp.ClientTimeout(total=max(0.001, timeout_s)))
        except TimeoutError:
            raise _Failed(504, f"the model server{_slot(backend)} did not answer within the deadline") from None
        except aiohttp.ClientError as exc:
            raise _unavailable(backend, exc) from None
        if resp.status == 200:
            return resp
        data = await resp.read()
        resp.release()
        if resp.status == 400:
            raise ApiError(_upstream_message(data))
        raise _Failed(502 if resp.status < 500 else resp.status, f"upstream answered {resp.status}: {data[:500]!r}",
                      data)

    async def params(self, backend: Upstream) -> dict[str, str]:
        """The model's config.pbtxt parameters (max_new_tokens_default / _limit), cached per server."""
        key = (backend.url, backend.model)
        if key not in self._model_params:
            status, _, data = await self._call(
                backend, "GET", f"/v2/models/{backend.model}/config", None, {}, 30.0
            )
            if status != 200:
                raise _Failed(502, f"the model server{_slot(backend)}: model config answered {status}", data)
            params = json.loads(data).get("parameters", {})
            self._model_params[key] = {k: v.get("string_value", "") for k, v in params.items()}
        return self._model_params[key]

    def _stats(self, backend: Upstream) -> VersionStats:
        # By server (and adapter), not slot: a new candidate in a slot starts with clean counters.
        return self.stats.setdefault(backend.url + (f"#{backend.adapter}" if backend.adapter else ""), VersionStats())

    async def routed(
        self,
        request,
        call: Callable[[Upstream, float], Awaitable[Any]],
        deadline: float,
        *,
        hold: contextlib.AsyncExitStack | None = None,
        slots: int = 1,
        pin: str | None = None,
    ) -> Any:
        """Admit the request, pick a version, run `call(backend, seconds_left)`; count it for the canary.

        With `hold`, the admission slots are not released on return but handed to that stack: a streamed
        answer keeps them until its last chunk is sent (or its client leaves) and the stack is closed.
        `slots`: one per upstream stream the request opens, so that a request holds what it uses.
        `pin`: the version that must answer (the request's `model` named an adapter), as `X-Tuneline-Slot` pins.
        """
        routes = self.routes.get()
        if routes is None:
            raise _Failed(503, "no model is deployed behind this proxy")
        try:
            async with contextlib.AsyncExitStack() as stack:
                for _ in range(slots):
                    await stack.enter_async_context(self.admission.slot(deadline - time.monotonic()))
                result = await self._admitted(request, routes, call, deadline, pin)
                if hold is not None:
                    hold.push_async_exit(stack.pop_all())
                return result
        except Overloaded as exc:
            raise _Failed(429, str(exc)) from exc
        except QueueTimeout as exc:
            raise _Failed(503, str(exc)) from exc

    async def _admitted(
        self, request, routes: Routes, call: Callable[[Upstream, float], Awaitable[Any]], deadline: float,
        pin: str | None = None,
    ) -> Any:
        pin = request.headers.get("x-tuneline-slot") or pin
        backend = self._choose(routes, pin)
        started = time.monotonic()
        try:
            result = await call(backend, deadline - time.monotonic())
        except _Failed as failure:
            self._stats(backend).record(False, 0.0)
            await self._judge(routes)
            current = routes.current
            # The candidate failed: the current version answers instead, once.
            if backend is current or pin or failure.status == 504:
                raise
            try:
                result = await call(current, deadline - time.monotonic())
            except _Failed:
                self._stats(current).record(False, 0.0)
                raise
            self._stats(current).record(True, (time.monotonic() - started) * 1000)
            return result
        self._stats(backend).record(True, (time.monotonic() - started) * 1000)
        if backend.role != "current":
            await self._judge(routes)
        return result

    def _choose(self, routes: Routes, slot: str | None, *, server_only: bool = False) -> Upstream:
        """The version `slot` (X-Tuneline-Slot) names, else a draw: `blue/<adapter>`, or a bare `blue` where that
        slot serves one version (any of its versions when `server_only`: a call that no adapter answers)."""
        if not slot:
            return routes.pick()
        exact = [b for b in routes.backends if b.version == slot]
        in_slot = exact or [b for b in routes.backends if b.slot == slot]
        if not in_slot:
            raise _Failed(404, f"no version in slot {slot!r} (serving: {[b.version for b in routes.backends]})")
        if len(in_slot) > 1 and not server_only:
            raise ApiError(f"X-Tuneline-Slot {slot!r} is ambiguous: slot {slot} serves "
                           f"{', '.join(repr(b.version) for b in in_slot)}; name one of them")
        return in_slot[0]

    async def _judge(self, routes: Routes) -> None:
        candidate = routes.candidate
        if candidate is None or routes.canary is None:
            return
        async with self._judging:
            if self.routes.get() != routes:
                return  # already decided by another request
            cand_stats, cur_stats = self._stats(candidate), self._stats(routes.current)
            verdict = judge(routes.canary, cand_stats, cur_stats)
            if verdict is None:
                return
            winner = candidate if verdict.action == "promote" else routes.current
            loser = routes.current if verdict.action == "promote" else candidate
            record = {
                "decision": "promoted" if verdict.action == "promote" else "rolled_back",
                "reason": verdict.reason,
                "time": time.time(),
                "candidate": {**asdict(candidate), **cand_stats.to_dict()},
                "current": {**asdict(routes.current), **cur_stats.to_dict()},
                "serving": asdict(winner),
                "stopped": asdict(loser),
            }
            write_routes(self.state_dir, routes.only(winner))
            write_canary(self.state_dir, record)
            print(f"canary {record['decision']}: {verdict.reason}", file=sys.stderr, flush=True)
            # The version no route names any more is stopped, or its adapter removed, by the serving state's owner
            # (tuneline.serving.local, housekeeping).
            asyncio.get_running_loop().run_in_executor(None, _reconcile, self.state_dir, record)

    # --- request log ----------------------------------------------------------------------------------
    def logger(self, routes: Routes | None):
        from tuneline.serving.requestlog import RequestLogger

        path = (routes.request_log if routes else None) or os.environ.get(settings.REQUEST_LOG_ENV, "").strip()
        if not path:
            return None
        if path not in self._loggers:
            env = dict(os.environ, **{settings.REQUEST_LOG_ENV: path})
            self._loggers[path] = RequestLogger.from_env(env)
        return self._loggers[path]


def _with_adapter(path: str, body: bytes, headers: dict[str, str], adapter: str) -> tuple[bytes, dict[str, str]]:
    """A forwarded v2 call given to `adapter`'s version: the `adapter` input added where the client sent none,
    so a canary drawn between two adapters of one server answers with the drawn one. /infer bodies are JSON,
    or a JSON header of Inference-Header-Content-Length bytes before binary tensors (Triton's binary tensor
    extension); /generate takes top-level keys as inputs (the generate extension)."""
    if not adapter or not path.endswith(("/infer", "/generate")) or not body:
        return body, headers
    length_key = next((k for k in headers if k.lower() == "inference-header-content-length"), None)
    if any(k.lower() == "content-encoding" for k in headers):
        # A compressed body cannot be given its adapter here: refused rather than answered by another version.
        raise ApiError("a compressed body cannot be routed to an adapter version; send it uncompressed",
                       status=415)
    try:
        head_len = int(headers[length_key]) if length_key else len(body)
        head = json.loads(body[:head_len])
    except (ValueError, UnicodeDecodeError):
        return body, headers  # Triton answers the malformed body itself
    if not isinstance(head, dict):
        return body, headers
    if path.endswith("/generate"):
        head.setdefault("adapter", adapter)
    else:
        inputs = head.get("inputs")
        if not isinstance(inputs, list) or any(isinstance(i, dict) and i.get("name") == "adapter" for i in inputs):
            return body, headers
        shape = next((i.get("shape") for i in inputs if isinstance(i, dict) and i.get("name") == "text_input"), None)
        rows = shape[0] if isinstance(shape, list) and shape and isinstance(shape[0], int) else 1
        inputs.append({"name": "adapter", "shape": [rows, 1], "datatype": "BYTES", "data": [adapter] * rows})
    new_head = json.dumps(head).encode()
    headers = {k: v for k, v in headers.items() if k.lower() != "content-length"}
    if length_key:
        headers[length_key] = str(len(new_head))
    return new_head + body[head_len:], headers


def _pinned(routes: Routes | None, model: str) -> str | None:
    """The version a request's `model` pins: None for the deployment's own name (or none given: the routes
    split the traffic), the version of the adapter it names; any other name is refused."""
    if routes is None or not model or model == routes.model:
        return None
    for backend in routes.backends:
        if backend.adapter and backend.adapter == model:
            return backend.version
    served = [routes.model, *(b.adapter for b in routes.backends if b.adapter)]
    raise ApiError(f"model {model!r} is not served here; this endpoint serves {', '.join(map(repr, served))}",
                   status=404, param="model", code="model_not_found")


def _log_health(logger) -> dict | None:
    if logger is None:
        return None
    return {"pending": logger.pending, "write_errors": logger.write_errors, "dropped": logger.dropped,
            "last_error": logger.last_error}


def _slot(backend: Upstream) -> str:
    return f" ({backend.slot})" if backend.slot else ""


_UNAVAILABLE_LOGGED: dict[str, float] = {}


def _unavailable(backend: Upstream, exc: Exception) -> _Failed:
    """The engine cannot be reached: the client learns that, not where it listens (a clean error class only).
    Connection refused or gone means the engine is down; the supervisor restarts it, so the client is told
    to retry (503 + Retry-After) rather than given a 502."""
    import aiohttp

    down = isinstance(exc, aiohttp.ClientOSError | aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError)
    status = 503 if down else 502
    now = time.monotonic()
    if now - _UNAVAILABLE_LOGGED.get(backend.url, -60.0) >= 10:  # an outage is one log line per 10 s
        _UNAVAILABLE_LOGGED[backend.url] = now
        print(f"upstream {backend.url} unavailable: {exc}", file=sys.stderr, flush=True)  # the log is 0600
    return _Failed(status, f"the model server{_slot(backend)} is unavailable ({type(exc).__name__})"
                   + ("; it is being restarted, retry shortly" if down else ""),
                   retry_after=ENGINE_RETRY_AFTER_S if down else None)


def _reconcile(state_dir: Path, decision: dict) -> None:
    """Settle the serving state after a canary `decision`; the adapters removed are added to its record."""
    from tuneline.serving.local import reconcile

    try:
        removed = reconcile(state_dir).removed_adapters
        if removed:
            write_canary(state_dir, {**decision, "removed_adapters": removed})
    except Exception as exc:  # noqa: BLE001 - a failed clean-up must not take the proxy down
        print(f"reconcile after canary decision failed: {exc}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------- app


def _deadline(request, limits: ProxyLimits) -> float:
    timeout = limits.request_timeout_s
    for header in ("x-request-timeout", "x-stainless-timeout"):
        value = request.headers.get(header)
        if value:
            try:
                timeout = min(timeout, max(0.001, float(value)))
            except ValueError:
                pass
            break
    return time.monotonic() + timeout


def _error(status: int, message: str, *, openai: bool = False, retry_after: int | None = None):
    from starlette.responses import JSONResponse

    headers = {"Retry-After": str(retry_after)} if retry_after is not None else None
    if openai:
        code = {401: "invalid_api_key", 404: "not_found", 429: "rate_limit_exceeded"}.get(status)
        body = ApiError(message, status, code=code).body()
    else:
        body = {"error": message}
    return JSONResponse(body, status_code=status, headers=headers)


def _batch_payload(gen: Generation, params: dict[str, str], timeout_s: float, adapter: str = "") -> bytes:
    """A generate_stream request for all of `gen`'s rows at once: the extension maps each top-level list to
    a batched input, so it carries the same inputs as a streamed request and batches with them;
    `parameters.timeout` is Triton's queue deadline in microseconds. It streams although the client gets
    one answer: Triton notices a closed connection only when it writes to it, so an answer written at the
    end would be generated in full for a client long gone; pieces written as they come stop within a few
    tokens of the proxy closing the connection."""
    n = len(gen.texts)
    return json.dumps({
        "text_input": list(gen.texts),
        "max_new_tokens": [_budget(gen, params)] * n,
        "prompt_format": [gen.prompt_format] * n,
        "temperature": [gen.temperature] * n,
        "top_p": [gen.top_p] * n,
        "stop": [json.dumps(gen.stop)] * n,
        "stream": [True] * n,
        **({"guide": [gen.guide] * n} if gen.guide else {}),
        **({"adapter": [adapter] * n} if adapter else {}),
        "parameters": {"timeout": int(timeout_s * 1e6)},
    }).encode()


def _parse_events(data: bytes, n: int) -> Result:
    """The whole answer of a batched generate_stream call: each event holds every row's new piece, the last
    one the finish reasons and token counts. An error event is an upstream failure."""
    texts, finish = [""] * n, [""] * n
    prompt_tokens, completion_tokens = [0] * n, [0] * n
    events = 0
    for line in data.splitlines():
        if not line.startswith(b"data:"):
            continue
        event = json.loads(line[5:])
        if "error" in event:
            raise _Failed(502, f"generation failed: {event['error']}")
        events += 1
        columns = {k: v if isinstance(v, list) else [v] for k, v in event.items()}
        for i, piece in enumerate(columns.get("text_output", [])[:n]):
            texts[i] += str(piece)
        for i, value in enumerate(columns.get("finish_reason", [])[:n]):
            finish[i] = str(value) or finish[i]
        for i, value in enumerate(columns.get("prompt_tokens", [])[:n]):
            prompt_tokens[i] = int(value)
        for i, value in enumerate(columns.get("completion_tokens", [])[:n]):
            completion_tokens[i] = int(value)
    if not events or not all(finish):
        # The engine went away mid-answer (its last event carries every row's finish reason): never hand a
        # cut-short text to the client as if it were the answer.
        raise _Failed(503, "the model server stopped before the answer was complete; retry shortly",
                      retry_after=ENGINE_RETRY_AFTER_S)
    return Result(texts, prompt_tokens, completion_tokens, finish)


def _upstream_message(data: bytes) -> str:
    try:
        return str(json.loads(data).get("error", ""))
    except (json.JSONDecodeError, AttributeError):
        return data.decode(errors="replace")


def _budget(gen: Generation, params: dict[str, str]) -> int:
    limit = int(params.get("max_new_tokens_limit", "256"))
    max_tokens = gen.max_tokens or int(params.get("max_new_tokens_default", "32"))
    if max_tokens > limit:
        raise ApiError(f"{gen.length_field} {max_tokens} is over this model's limit of {limit}", param=gen.length_field)
    return max_tokens


def _stream_payload(gen: Generation, index: int, params: dict[str, str], timeout_s: float,
                    adapter: str = "") -> bytes:
    """A generate_stream request for prompt `index`: the extension maps the body's top-level keys to the model's
    inputs, so it carries the same inputs as an infer call and batches with them; `parameters.timeout` is the
    queue deadline, as on /infer."""
    return json.dumps({
        "text_input": gen.texts[index],
        "max_new_tokens": _budget(gen, params),
        "prompt_format": gen.prompt_format,
        "temperature": gen.temperature,
        "top_p": gen.top_p,
        "stop": json.dumps(gen.stop),
        "stream": True,
        # Only when asked: a repository written before the engine took `guide` still answers free text.
        **({"guide": gen.guide} if gen.guide else {}),
        # The version's adapter where one server serves several on one base.
        **({"adapter": adapter} if adapter else {}),
        "parameters": {"timeout": int(timeout_s * 1e6)},
    }).encode()


class _StreamFailed(Exception):
    """The upstream stream broke or sent an error event after its first chunk."""


def _scalar(value: Any) -> Any:
    while isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value


async def _upstream_events(resp) -> AsyncIterator[dict]:
    """The JSON objects of a generate_stream body, one per model response; an error event raises."""
    import aiohttp

    try:
        async for line in resp.content:
            if not line.startswith(b"data:"):
                continue
            event = json.loads(line[5:])
            if "error" in event:
                raise _StreamFailed(str(event["error"]))
            yield {k: _scalar(v) for k, v in event.items()}
    except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError) as exc:
        raise _StreamFailed(f"upstream stream broke: {exc or type(exc).__name__}") from None


async def _until_disconnect(request, work: Awaitable[Any]) -> Any:
    """Run `work` unless the client goes away first; then it is cancelled (freeing its queue place or slot)."""
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                return

    watch = asyncio.ensure_future(disconnected())
    try:
        done, _ = await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if task not in done:
        task.cancel()
        raise _ClientGone
    return task.result()


class _ClientGone(Exception):
    pass


def build_app(proxy: Proxy):
    """The starlette app serving `proxy`: the route table, its handlers (`_Handlers`) and the proxy's lifespan."""
    from starlette.applications import Starlette
    from starlette.routing import Route

    h = _Handlers(proxy)
    routes = [
        Route("/v1/chat/completions", h.guarded(h.chat, openai=True), methods=["POST"]),
        Route("/v1/completions", h.guarded(h.completions, openai=True), methods=["POST"]),
        Route("/v1/models", h.guarded(h.models, openai=True), methods=["GET"]),
        Route("/v1/generate", h.guarded(h.legacy_generate), methods=["POST"]),
        Route("/v1/feedback", h.guarded(h.feedback), methods=["POST"]),
        Route("/v1/stats", h.guarded(h.stats), methods=["GET"]),
        Route("/{path:path}", h.guarded(h.forward), methods=["GET", "POST", "HEAD"]),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        await proxy.startup()
        yield
        await proxy.shutdown()

    app = Starlette(routes=routes, lifespan=lifespan)
    return BodyLimit(_Auth(app, proxy.token), proxy.limits.max_body_bytes)


def _held_stream(content, hold: contextlib.AsyncExitStack, proxy: Proxy):
    """A streamed answer that closes `hold` (admission slot, upstream streams) however it ends: all sent, the
    client gone (a failed send or its disconnect message), or the server shutting down."""
    from starlette.responses import StreamingResponse

    class HeldStream(StreamingResponse):
        def __init__(self) -> None:
            self.finished = False

            async def tracked():
                async for chunk in content:
                    yield chunk
                self.finished = True

            super().__init__(tracked(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

        async def __call__(self, scope, receive, send) -> None:
            try:
                await super().__call__(scope, receive, send)
            finally:
                if not self.finished:
                    proxy.client_gone["mid_stream"] += 1
                await hold.aclose()

    return HeldStream()


class _Handlers:
    """The proxy's HTTP handlers; `build_app` routes to them. Each takes a starlette Request."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    @staticmethod
    async def read_body(request) -> bytes:
        return await request.body()  # bounded while it is read: guard.BodyLimit wraps the app

    async def generate(self, request, gen: Generation, pin: str | None = None) -> tuple[Result, Upstream]:
        proxy = self.proxy
        deadline = _deadline(request, proxy.limits)

        async def call(backend: Upstream, left: float) -> tuple[Result, Upstream]:
            # The decoupled twin, not /infer: Triton cancels a generate_stream request when its connection
            # closes, and closing it is what happens when this task is cancelled (the client left); an HTTP
            # /infer request runs to its end whoever waits for it. All rows go as one batched request.
            resp = await proxy.open_stream(backend, _batch_payload(gen, await proxy.params(backend), left,
                                                                   backend.adapter), left)
            try:
                import aiohttp

                try:
                    data = await resp.read()
                except (aiohttp.ClientError, TimeoutError) as exc:
                    raise _unavailable(backend, exc) from None
            finally:
                resp.close()
            return _parse_events(data, len(gen.texts)), backend

        return await _until_disconnect(request, proxy.routed(request, call, deadline, pin=pin))

    def log(self, routes: Routes | None, backend: Upstream, prompts: list, texts: list[str], started: float,
            answer_id: str | None = None) -> list[str]:
        """Log each answered prompt; `answer_id` (an OpenAI answer's `id`) becomes the request id, with `-<i>`
        per prompt when there are several, so the client that holds the answer can rate it."""
        proxy = self.proxy
        logger = proxy.logger(routes)
        if logger is None:
            return []
        latency = round((time.monotonic() - started) * 1000, 1)
        wanted = [None] * len(prompts) if answer_id is None else [answer_id] if len(prompts) == 1 else [
            f"{answer_id}-{i}" for i in range(len(prompts))]
        # Which version answered: the adapter where one server serves several, so exported ratings keep it.
        ids = [logger.log(p, t, model=backend.adapter or backend.model, latency_ms=latency, by=proxy.by,
                          request_id=rid)
               for p, t, rid in zip(prompts, texts, wanted, strict=True)]
        for request_id in ids:
            proxy.desk.served(logger, request_id, proxy.by)
        return ids

    def guarded(self, handler, *, openai: bool = False):
        """Map failures to status codes: ApiError 4xx, overload 429/503 + Retry-After, upstream 502/504."""
        from starlette.responses import JSONResponse, Response

        proxy = self.proxy

        async def endpoint(request) -> Response:
            try:
                return await handler(request)
            except ApiError as exc:
                return JSONResponse(exc.body() if openai else {"error": str(exc)}, status_code=exc.status)
            except _Failed as exc:
                retry = exc.retry_after or (proxy.admission.retry_after_s() if exc.status in (429, 503) else None)
                return _error(exc.status, str(exc), openai=openai, retry_after=retry)
            except _ClientGone:
                # Counted, not logged: a line per departure would let clients grow the log at will.
                proxy.client_gone["before_answer"] += 1
                return Response(status_code=499)  # nobody reads it: the connection is gone

        return endpoint

    async def chat_or_completion(self, request, parse):
        from starlette.responses import JSONResponse

        proxy = self.proxy
        started = time.monotonic()
        gen = parse(await self.read_body(request))
        check_prompts(proxy.limits, len(gen.texts), gen.stream, "prompt" if gen.kind == "completion" else "messages")
        routes = proxy.routes.get()
        pin = _pinned(routes, gen.model)
        if gen.stream:
            return await self.streamed(request, gen, routes, started, pin)
        result, backend = await self.generate(request, gen, pin)
        answer = response(gen, result, gen.model if pin else backend.model)
        self.log(routes, backend, gen.log_prompts, result.texts, started, answer["id"])
        return JSONResponse(answer)

    async def streamed(self, request, gen: Generation, routes: Routes | None, started: float, pin: str | None):
        """Relay the model's pieces as OpenAI chunks as they arrive: one generate_stream call per prompt, each
        under its own admission slot, held until the stream ends."""
        proxy = self.proxy
        deadline = _deadline(request, proxy.limits)
        hold = contextlib.AsyncExitStack()

        async def call(backend: Upstream, left: float) -> tuple[Upstream, list]:
            params = await proxy.params(backend)
            payloads = [_stream_payload(gen, i, params, left, backend.adapter) for i in range(len(gen.texts))]
            opened = await asyncio.gather(*(proxy.open_stream(backend, p, left) for p in payloads),
                                          return_exceptions=True)
            for resp in opened:
                if not isinstance(resp, BaseException):
                    hold.callback(resp.close)  # closing the connection ends Triton's side of the stream
            failed = [o for o in opened if isinstance(o, BaseException)]
            if failed:
                raise failed[0]
            return backend, opened

        try:
            backend, streams = await _until_disconnect(
                request, proxy.routed(request, call, deadline, hold=hold, slots=len(gen.texts), pin=pin))
        except BaseException:
            await hold.aclose()
            raise
        writer = StreamWriter(gen, gen.model if pin else backend.model)
        events: asyncio.Queue = asyncio.Queue()

        async def pump(index: int, resp) -> None:
            try:
                async for event in _upstream_events(resp):
                    await events.put((index, event))
                await events.put((index, None))
            except _StreamFailed as exc:
                await events.put((index, exc))

        pumps = [asyncio.ensure_future(pump(i, r)) for i, r in enumerate(streams)]
        hold.callback(lambda: [t.cancel() for t in pumps])
        body = self._relay(writer, events, len(streams), routes, backend, gen, started)
        return _held_stream(body, hold, proxy)

    async def _relay(self, writer: StreamWriter, events: asyncio.Queue, n: int, routes: Routes | None,
                     backend: Upstream, gen: Generation, started: float) -> AsyncIterator[bytes]:
        """The SSE chunks of `n` upstream streams, from their events as they arrive; logged when complete."""
        texts, finish = [""] * n, [""] * n
        prompt_tokens, completion_tokens = [0] * n, [0] * n
        for i in range(n):
            yield writer.start(i)
        left = n
        while left:
            i, event = await events.get()
            if isinstance(event, Exception):
                yield StreamWriter.error(str(event), 502)
                return
            if event is None:
                left -= 1
                yield writer.finish(i, finish[i] or "length")
                continue
            piece = str(event.get("text_output") or "")
            prompt_tokens[i] = int(event.get("prompt_tokens") or prompt_tokens[i])
            completion_tokens[i] = int(event.get("completion_tokens") or completion_tokens[i])
            finish[i] = str(event.get("finish_reason") or "")
            if piece:
                texts[i] += piece
                yield writer.piece(i, piece)
        yield writer.end(Result(texts, prompt_tokens, completion_tokens, [f or "length" for f in finish]))
        self.log(routes, backend, gen.log_prompts, texts, started, writer.rid)

    async def chat(self, request):
        return await self.chat_or_completion(request, parse_chat)

    async def completions(self, request):
        return await self.chat_or_completion(request, parse_completion)

    async def models(self, request):
        from starlette.responses import JSONResponse

        routes = self.proxy.routes.get()
        if routes is None:
            raise _Failed(503, "no model is deployed behind this proxy")
        return JSONResponse(models_list(routes.model, self.proxy.started,
                                        tuple(b.adapter for b in routes.backends if b.adapter)))

    async def legacy_generate(self, request):
        from starlette.responses import JSONResponse

        started = time.monotonic()
        body = await self.read_body(request)
        try:
            req = json.loads(body or b"{}")
        except json.JSONDecodeError as exc:
            raise ApiError(f"body line {exc.lineno}: invalid JSON: {exc.msg}") from None
        prompt = req.get("prompt") if isinstance(req, dict) else None
        single = isinstance(prompt, str)
        prompts = [prompt] if single else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise ApiError("field 'prompt' must be a string or a non-empty list of strings")
        check_prompts(self.proxy.limits, len(prompts), False, "prompt")
        limit = req.get("max_new_tokens")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise ApiError("field 'max_new_tokens' must be a positive integer")
        gen = Generation(kind="completion", model="", texts=prompts, prompt_format="chat", max_tokens=limit,
                         temperature=0.0, top_p=1.0, stop=[], length_field="max_new_tokens")
        routes = self.proxy.routes.get()
        result, backend = await self.generate(request, gen)
        reply: dict[str, Any] = {"model": backend.model, "text": result.texts[0] if single else result.texts,
                                 "usage": result.usage()}
        ids = self.log(routes, backend, prompts, result.texts, started)
        if ids:
            reply["request_id" if single else "request_ids"] = ids[0] if single else ids
        return JSONResponse(reply)

    async def feedback(self, request):
        from starlette.responses import JSONResponse

        proxy = self.proxy
        body = await self.read_body(request)
        logger = proxy.logger(proxy.routes.get())
        if logger is None:
            raise ApiError("feedback is off: this deployment logs no requests (deploy with a request log, or "
                           f"start the proxy with {settings.REQUEST_LOG_ENV} set)", status=404)
        rated = await asyncio.get_running_loop().run_in_executor(None, proxy.desk.rate, logger, body, proxy.by)
        return JSONResponse(rated)

    async def stats(self, request):
        from starlette.responses import JSONResponse

        proxy = self.proxy
        routes = proxy.routes.get()
        return JSONResponse(
            {
                "admission": proxy.admission.to_dict(),
                "restarts": proxy.supervisor.restarts,
                "client_gone": proxy.client_gone,
                "request_log": _log_health(proxy.logger(routes)),
                "routes": routes.to_dict() if routes else None,
                "versions": {url: s.to_dict() for url, s in proxy.stats.items()},
                "canary": read_canary(proxy.state_dir),
            }
        )

    async def forward(self, request):
        """Health and the allowed KServe v2 routes, forwarded as they are (infer calls are admitted/routed)."""
        from starlette.responses import Response

        proxy = self.proxy
        path = request.url.path
        if path not in _OPEN_PATHS and not _V2_ROUTE.match(path):
            raise ApiError(f"no route {request.method} {path}", status=404)
        body = await self.read_body(request)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_BY_HOP}
        target = path + (f"?{request.url.query}" if request.url.query else "")

        async def call(backend: Upstream, left: float):
            sent, sent_headers = _with_adapter(path, body, headers, backend.adapter)
            status, out_headers, data = await proxy._call(backend, request.method, target, sent, sent_headers, left)
            if status >= 500:
                raise _Failed(status, f"upstream answered {status}", data)
            return status, out_headers, data

        if path.endswith(("/infer", "/generate")):
            deadline = _deadline(request, proxy.limits)
            status, out_headers, data = await _until_disconnect(request, proxy.routed(request, call, deadline))
        else:
            routes = proxy.routes.get()
            if routes is None:
                raise _Failed(503, "no model is deployed behind this proxy")
            status, out_headers, data = await proxy._call(
                proxy._choose(routes, request.headers.get("x-tuneline-slot"), server_only=True) if request.headers.get(
                    "x-tuneline-slot") else routes.current, request.method, target, body, headers, 30.0
            )
        kept = {k: v for k, v in out_headers.items() if k.lower() not in _HOP_BY_HOP}
        return Response(data if request.method != "HEAD" else b"", status_code=status, headers=kept)


class _Auth:
    """ASGI middleware: everything but the health routes needs the bearer token (else 401, body unread)."""

    def __init__(self, app, token: str) -> None:
        self.app, self.token = app, token

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] not in _OPEN_PATHS:
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            if not check_bearer(headers.get("authorization"), self.token):
                openai = scope["path"].startswith("/v1/") and scope["path"] not in ("/v1/generate", "/v1/feedback")
                response = _error(401, "missing or invalid bearer token", openai=openai)
                response.headers["WWW-Authenticate"] = 'Bearer realm="tuneline"'
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def uvicorn_config(app, limits: ProxyLimits, *, host: str = "127.0.0.1", port: int = 8000):
    import logging

    import uvicorn

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        backlog=limits.backlog,
        timeout_keep_alive=limits.keep_alive_s,
        http=timed_h11(limits),
        limit_concurrency=limits.max_connections,
        h11_max_incomplete_event_size=limits.max_header_bytes,
        timeout_graceful_shutdown=10,
        access_log=False,  # one log line per request would cost more than forwarding it
        log_level="warning",
        lifespan="on",
    )
    # After Config: it (re)configures uvicorn's loggers when it is made.
    limiter = RepeatLimit()
    for name in ("uvicorn.error", "uvicorn"):
        if not any(isinstance(f, RepeatLimit) for f in logging.getLogger(name).filters):
            logging.getLogger(name).addFilter(limiter)
    return config


def _enough_descriptors(limits: ProxyLimits) -> None:
    """Open connections must run into `max_connections` (503) before the descriptor limit: past that,
    accept fails and uvicorn only logs. Raise the soft limit to what is needed (within the hard one)."""
    import resource

    needed = limits.max_connections + 2 * (limits.max_inflight + 16) + 256  # clients, upstream, files
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            print(f"warning: open files limited to {target}, below the {needed} that max_connections="
                  f"{limits.max_connections} needs; lower max_connections or raise the hard limit",
                  file=sys.stderr, flush=True)


def serve(state_dir: Path, port: int, host: str = "127.0.0.1", limits: ProxyLimits | None = None) -> None:
    import uvicorn

    limits = limits or ProxyLimits()
    _enough_descriptors(limits)
    token = load_token(token_path(state_dir))
    app = build_app(Proxy(Path(state_dir), token, limits))
    print(f"proxy listening on http://{host}:{port} ({limits})", file=sys.stderr, flush=True)
    uvicorn.Server(uvicorn_config(app, limits, host=host, port=port)).run()


def main(argv: list[str] | None = None) -> int:
    defaults = ProxyLimits()
    parser = argparse.ArgumentParser(prog="python -m tuneline.serving.proxy", description=__doc__.splitlines()[0])
    parser.add_argument("--state-dir", type=Path, default=None,
                        help="folder holding token and upstream.json (default: $TUNELINE_SERVE_STATE, else "
                        "<TUNELINE_HOME>/serve; see tuneline.settings)")
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    parser.add_argument("--max-inflight", type=int, default=defaults.max_inflight,
                        help="requests at Triton at once (default %(default)s)")
    parser.add_argument("--max-queue", type=int, default=defaults.max_queue,
                        help="requests waiting beyond those; past it 429 (default %(default)s)")
    parser.add_argument("--request-timeout", type=float, default=defaults.request_timeout_s,
                        help="seconds a request may take, queue included (default %(default)s)")
    parser.add_argument("--limits", default=None, metavar="JSON",
                        help="any ProxyLimits fields as a JSON object (tuneline.serving.limits); these win")
    args = parser.parse_args(argv)
    fields = {"max_inflight": args.max_inflight, "max_queue": args.max_queue,
              "request_timeout_s": args.request_timeout}
    if args.limits:
        try:
            fields.update(json.loads(args.limits))
            limits = ProxyLimits(**fields)
        except (json.JSONDecodeError, TypeError, ValueError) as exc:
            parser.error(f"--limits: {exc}")
    else:
        limits = ProxyLimits(**fields)
    serve(args.state_dir or settings.serve_state_dir(), args.port, args.host, limits)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
