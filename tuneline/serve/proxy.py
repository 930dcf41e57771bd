"""Bearer-token reverse proxy in front of Triton (Triton itself has no bearer auth).

- `/v2/health/live` and `/v2/health/ready` are open: liveness/readiness probes carry no secrets and
  must work without one. Every other route needs `Authorization: Bearer <token>` (else 401).
- Allowed KServe v2 routes are forwarded as they are: server metadata `/v2`, model metadata, config,
  ready, stats, `/infer`, and Triton's `/generate`. Anything else (repository control, logging, tracing,
  shared memory) is 404 so that the token does not give control over the server.
- `POST /v1/generate` takes JSON `{"prompt": str | [str], "max_new_tokens": int?}` and answers
  `{"model": ..., "text": str | [str]}` by making a v2 infer call.
- The upstream is read from `upstream.json` in the state folder whenever the file changes, so a
  blue/green switch is one atomic file replace and needs no restart.

Run as: python -m tuneline.serve.proxy --state-dir .tuneline/serve --port 8000
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import re
import socket
import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from tuneline.serve.auth import check_bearer, load_token, token_path

UPSTREAM_FILE = "upstream.json"
_OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
_V2_ROUTE = re.compile(
    r"^/v2(/health/(live|ready)|/models/[A-Za-z0-9_.-]+(/versions/\d+)?(/(ready|infer|generate|config|stats))?)?$"
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
    }
)
_MAX_BODY = 64 * 1024 * 1024


@dataclass(frozen=True)
class Upstream:
    url: str
    model: str
    slot: str = ""

    @property
    def hostport(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or 80


def write_upstream(state_dir: Path, upstream: Upstream) -> None:
    """Atomically point the proxy at `upstream`."""
    path = Path(state_dir) / UPSTREAM_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps({"url": upstream.url, "model": upstream.model, "slot": upstream.slot}) + "\n")
    os.replace(tmp, path)


def clear_upstream(state_dir: Path) -> None:
    """Leave the proxy with no upstream (it answers 503)."""
    with contextlib.suppress(FileNotFoundError):
        (Path(state_dir) / UPSTREAM_FILE).unlink()


def read_upstream(state_dir: Path) -> Upstream | None:
    path = Path(state_dir) / UPSTREAM_FILE
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return Upstream(url=data["url"], model=data["model"], slot=data.get("slot", ""))


class _UpstreamWatcher:
    """Caches upstream.json, re-reading it when its mtime or size changes."""

    def __init__(self, state_dir: Path) -> None:
        self._path = Path(state_dir) / UPSTREAM_FILE
        self._state_dir = Path(state_dir)
        self._key: tuple[int, int] | None = None
        self._value: Upstream | None = None
        self._lock = threading.Lock()

    def get(self) -> Upstream | None:
        try:
            st = self._path.stat()
        except FileNotFoundError:
            return None
        key = (st.st_mtime_ns, st.st_ino)
        with self._lock:
            if key != self._key:
                self._value = read_upstream(self._state_dir)
                self._key = key
            return self._value


class ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], state_dir: Path, token: str) -> None:
        from ..feedback import RatingStore, RequestLogger

        super().__init__(address, ProxyHandler)
        self.token = token
        self.upstreams = _UpstreamWatcher(state_dir)
        self.local = threading.local()
        # Opt-in (TUNELINE_REQUEST_LOG): PII-redacted request log, and ratings beside it, for the feedback loop.
        self.requests = RequestLogger.from_env()
        self.ratings = RatingStore(self.requests.path.with_name("ratings.jsonl")) if self.requests else None


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: tritonclient reuses its connections
    server: ProxyServer
    server_version = "tuneline-proxy"

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in separate writes: without NODELAY, Nagle + delayed ACK add ~40 ms each.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - stdlib signature
        # Per-request access logs on stderr would cost more than the forwarding itself under load.
        return

    def do_GET(self) -> None:  # noqa: N802 - stdlib naming
        self._handle()

    def do_POST(self) -> None:  # noqa: N802
        self._handle()

    def do_HEAD(self) -> None:  # noqa: N802
        self._handle()

    # --- plumbing -----------------------------------------------------------------------------------
    def _reply(self, status: int, payload: dict | bytes, headers: dict[str, str] | None = None) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        for key, value in (headers or {"Content-Type": "application/json"}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._reply(411, {"error": "chunked request bodies are not supported; send Content-Length"})
            return None
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self._reply(413, {"error": f"request body over {_MAX_BODY} bytes"})
            return None
        return self.rfile.read(length) if length else b""

    def _connection(self, upstream: Upstream, fresh: bool = False) -> http.client.HTTPConnection:
        conns: dict[str, http.client.HTTPConnection] = self.server.local.__dict__.setdefault("conns", {})
        conn = conns.get(upstream.url)
        if conn is None or fresh:
            if conn is not None:
                conn.close()
            host, port = upstream.hostport
            conn = http.client.HTTPConnection(host, port, timeout=600)
            conn.connect()
            conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conns[upstream.url] = conn
        return conn

    def _forward(
        self, upstream: Upstream, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        # One retry on a fresh connection: a kept-alive socket may have been closed by the upstream.
        for attempt in range(2):
            conn = self._connection(upstream, fresh=attempt > 0)
            try:
                conn.request(method, path, body=body if method != "GET" else None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                return resp.status, resp.getheaders(), data
            except (ConnectionError, http.client.HTTPException, OSError):
                conn.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    # --- routing ------------------------------------------------------------------------------------
    def _handle(self) -> None:
        path = urlsplit(self.path).path
        if path not in _OPEN_PATHS and not check_bearer(self.headers.get("Authorization"), self.server.token):
            body = self._read_body()
            if body is not None:
                self._reply(
                    401,
                    {"error": "missing or invalid bearer token"},
                    {"Content-Type": "application/json", "WWW-Authenticate": 'Bearer realm="tuneline"'},
                )
            return
        body = self._read_body()
        if body is None:
            return
        if path == "/v1/feedback" and self.command == "POST":
            self._feedback(body)
            return
        upstream = self.server.upstreams.get()
        if upstream is None:
            self._reply(503, {"error": "no model is deployed behind this proxy"})
            return
        try:
            if path == "/v1/generate" and self.command == "POST":
                self._generate(upstream, body)
            elif _V2_ROUTE.match(path):
                fwd = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
                status, headers, data = self._forward(upstream, self.command, self.path, body, fwd)
                out = {k: v for k, v in headers if k.lower() not in _HOP_BY_HOP}
                self._reply(status, data, out)
            else:
                self._reply(404, {"error": f"no route {self.command} {path}"})
        except (ConnectionError, http.client.HTTPException, OSError) as exc:
            self._reply(502, {"error": f"upstream {upstream.url} unavailable: {exc}"})

    def _generate(self, upstream: Upstream, body: bytes) -> None:
        try:
            req = json.loads(body or b"{}")
        except json.JSONDecodeError as exc:
            self._reply(400, {"error": f"body line {exc.lineno}: invalid JSON: {exc.msg}"})
            return
        prompt = req.get("prompt") if isinstance(req, dict) else None
        single = isinstance(prompt, str)
        prompts = [prompt] if single else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            self._reply(400, {"error": "field 'prompt' must be a string or a non-empty list of strings"})
            return
        inputs = [{"name": "text_input", "shape": [len(prompts), 1], "datatype": "BYTES", "data": prompts}]
        limit = req.get("max_new_tokens")
        if limit is not None:
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                self._reply(400, {"error": "field 'max_new_tokens' must be a positive integer"})
                return
            inputs.append(
                {
                    "name": "max_new_tokens",
                    "shape": [len(prompts), 1],
                    "datatype": "INT32",
                    "data": [limit] * len(prompts),
                }
            )
        payload = json.dumps({"inputs": inputs}).encode()
        status, _, data = self._forward(
            upstream,
            "POST",
            f"/v2/models/{upstream.model}/infer",
            payload,
            {"Content-Type": "application/json"},
        )
        if status != 200:
            self._reply(status, data, {"Content-Type": "application/json"})
            return
        outputs = {o["name"]: o for o in json.loads(data)["outputs"]}
        texts = outputs["text_output"]["data"]
        reply = {"model": upstream.model, "text": texts[0] if single else texts}
        if self.server.requests is not None:
            ids = [self.server.requests.log(p, t, model=upstream.model) for p, t in zip(prompts, texts, strict=True)]
            reply["request_id" if single else "request_ids"] = ids[0] if single else ids
        self._reply(200, reply)

    def _feedback(self, body: bytes) -> None:
        """POST /v1/feedback {"request_id", "rating": 1-5, "comment"?}: a rating for `feedback export`."""
        from ..feedback import FeedbackError

        if self.server.ratings is None:
            self._reply(404, {"error": "feedback is off: start the server with TUNELINE_REQUEST_LOG set"})
            return
        try:
            req = json.loads(body or b"{}")
            if not isinstance(req, dict):
                raise FeedbackError("the body must be a JSON object")
            self.server.ratings.rate(str(req.get("request_id", "")), req.get("rating"), str(req.get("comment", "")))
        except json.JSONDecodeError as exc:
            self._reply(400, {"error": f"body line {exc.lineno}: invalid JSON: {exc.msg}"})
            return
        except FeedbackError as exc:
            self._reply(400, {"error": str(exc)})
            return
        self._reply(200, {"rated": req["request_id"], "rating": req["rating"]})


def serve(state_dir: Path, port: int, host: str = "127.0.0.1") -> None:
    token = load_token(token_path(state_dir))
    server = ProxyServer((host, port), Path(state_dir), token)
    print(f"proxy listening on http://{host}:{server.server_address[1]}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tuneline.serve.proxy", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=Path(".tuneline/serve"),
        help="folder holding token and upstream.json (default %(default)s)",
    )
    parser.add_argument("--port", type=int, default=8000, help="port to listen on (default %(default)s)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s)")
    args = parser.parse_args(argv)
    serve(args.state_dir, args.port, args.host)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
