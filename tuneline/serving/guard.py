"""What a client can make the proxy hold before it is authenticated or served: body bytes and socket time.

- `BodyLimit` (ASGI middleware, outermost): a request body is counted as it is read, chunked or not, on
  every route. Past `max_body_bytes` (or at once, when `Content-Length` says so) the client gets 413 and
  the connection is closed, so the rest is never read. The health routes and GET/HEAD take no body at all.
- `timed_h11(limits)`: uvicorn's h11 protocol with the read timeouts uvicorn 0.54 does not have. Its
  `timeout_keep_alive` starts only after a response and any byte received cancels it, so a client that
  connects and sends nothing, or one header byte every few seconds, or a body slowly, holds its socket
  for ever. Here a new connection must send a complete request head within `header_timeout_s`; a kept-alive
  one may idle `keep_alive_s`, then its next head must complete within `header_timeout_s` of its first
  byte; a body must arrive within `body_timeout_s` of its head. Else the connection is closed (a handler
  waiting for the body sees the client leave).

Run as: a library; `tuneline.serving.proxy` installs both.
"""

from __future__ import annotations

from typing import Any

from tuneline.serving.limits import ProxyLimits
from tuneline.serving.openai_api import ApiError

# Routes that take no body, whatever the method: the open health probes.
NO_BODY_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})


class BodyTooLarge(ApiError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"request body over this endpoint's limit of {limit} bytes", status=413)


def body_limit_for(method: str, path: str, max_body_bytes: int) -> int:
    return 0 if method in ("GET", "HEAD") or path in NO_BODY_PATHS else max_body_bytes


class BodyLimit:
    """ASGI middleware counting body bytes as they are received; see the module docstring."""

    def __init__(self, app, max_body_bytes: int) -> None:
        self.app, self.max_body_bytes = app, max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = body_limit_for(scope["method"], scope["path"], self.max_body_bytes)
        length, chunked = None, False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = int(value) if value.isdigit() else None
            elif name == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if (length is not None and length > limit) or (limit == 0 and chunked):
            await _reject(BodyTooLarge(limit), scope, receive, send)
            return
        unread = chunked or bool(length)
        seen = 0

        async def counted_receive() -> dict[str, Any]:
            nonlocal seen, unread
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(limit)
                unread = unread and message.get("more_body", False)
            return message

        async def closing_send(message: dict[str, Any]) -> None:
            # A response sent before the body was read (refused: 401, 404, 413) closes the connection, else
            # uvicorn would go on reading the rest of the body, however long, to reach the next request.
            if unread and message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            await self.app(scope, counted_receive, closing_send)
        except BodyTooLarge as exc:  # raised where no handler maps ApiError to a response
            await _reject(exc, scope, receive, send)


async def _reject(exc: BodyTooLarge, scope, receive, send) -> None:
    from starlette.responses import JSONResponse

    openai = scope["path"].startswith("/v1/") and scope["path"] not in ("/v1/generate", "/v1/feedback")
    body = exc.body() if openai else {"error": str(exc)}
    await JSONResponse(body, status_code=413, headers={"Connection": "close"})(scope, receive, send)


def timed_h11(limits: ProxyLimits):
    """uvicorn's H11Protocol with header and body read timeouts (see the module docstring)."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class TimedH11Protocol(H11Protocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._read_timer = None
            # "idle" (keep-alive, between requests) | "head" | "body" | None (the app has the request)
            self._phase = None

        def _arm(self, phase: str | None) -> None:
            if phase == self._phase:
                return
            if self._read_timer is not None:
                self._read_timer.cancel()
                self._read_timer = None
            self._phase = phase
            if phase is not None:
                seconds = {"idle": limits.keep_alive_s, "head": limits.header_timeout_s,
                           "body": limits.body_timeout_s}[phase]
                self._read_timer = self.loop.call_later(seconds, self._read_timeout)

        def _track(self, idle: str) -> None:
            state = self.conn.their_state
            self._arm(idle if state is h11.IDLE else "body" if state is h11.SEND_BODY else None)

        def _read_timeout(self) -> None:
            self._read_timer = None
            if not self.transport.is_closing():
                self.transport.close()

        def connection_made(self, transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm("head")

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self.transport.is_closing():
                self._track("head")  # the first byte of a request starts its head's clock

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._track("idle")

        def connection_lost(self, exc: Exception | None) -> None:
            self._arm(None)
            super().connection_lost(exc)

    return TimedH11Protocol


class RepeatLimit:
    """A logging filter letting the same message through at most once per `every_s` seconds: uvicorn warns
    once per refused request ("Invalid HTTP request received.", "Exceeded concurrency limit."), so without
    it any client, token or not, could grow the proxy's log without bound. The next line let through says
    how many were held back."""

    def __init__(self, every_s: float = 10.0) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def filter(self, record) -> bool:
        import time

        key = f"{record.name}:{record.msg}"
        now = time.monotonic()
        if now - self._last.get(key, -1e9) < self.every_s:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} ({held} more like this in the last {self.every_s:.0f}s not logged)"
        return True
