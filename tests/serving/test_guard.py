"""The proxy process against a client that sends too much or too slowly (no token, or with one).

These start the real proxy (`local.start_proxy`, its own process, so its memory is measured alone); no
Triton is needed: every limit here acts before a request reaches the upstream.
"""

from __future__ import annotations

import select
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tuneline.serving import process
from tuneline.serving.auth import ensure_token
from tuneline.serving.limits import ProxyLimits
from tuneline.serving.local import ProxyInfo, start_proxy

MiB = 1024 * 1024


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[tuple[ProxyInfo, str]]:
    token = ensure_token(tmp_path, announce=False)
    limits = ProxyLimits(header_timeout_s=2.0, body_timeout_s=3.0, keep_alive_s=8)
    info = start_proxy(tmp_path, limits=limits)
    try:
        yield info, token
    finally:
        process.stop(info.ref)


def _memory_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for pid {pid}")


def _response_status(sock: socket.socket, timeout: float = 10.0) -> int | None:
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    return int(data.split()[1]) if data.startswith(b"HTTP/1.1") else None


def _send_chunked(port: int, method: str, path: str, total: int, token: str | None) -> tuple[int | None, int]:
    """Send `total` bytes as a chunked body, 1 MiB per chunk, until the server answers or closes;
    returns (status, bytes sent)."""
    sock = socket.create_connection(("127.0.0.1", port))
    head = [f"{method} {path} HTTP/1.1", "Host: x", "Content-Type: application/json", "Transfer-Encoding: chunked"]
    if token:
        head.append(f"Authorization: Bearer {token}")
    sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
    chunk = b"%x\r\n" % MiB + b"[" * MiB + b"\r\n"
    sent = 0
    try:
        while sent < total:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            sock.sendall(chunk)
            sent += MiB
        else:
            sock.sendall(b"0\r\n\r\n")
    except (BrokenPipeError, ConnectionResetError):
        pass
    status = _response_status(sock)
    sock.close()
    return status, sent


ROUTES = [
    ("POST", "/v2/health/live", False),
    ("POST", "/v2/health/ready", False),
    ("GET", "/v2/health/live", False),
    ("POST", "/v1/chat/completions", True),
    ("POST", "/v1/completions", True),
    ("POST", "/v1/generate", True),
    ("POST", "/v1/feedback", True),
    ("GET", "/v1/models", True),
    ("GET", "/v1/stats", True),
    ("POST", "/v2/models/tuneline-llm/infer", True),
    ("POST", "/v2/models/tuneline-llm/generate", True),
]
# Refused before their body is read; the connection closes all the same.
UNREAD = [("POST", "/v2/anything/else", True, 404), ("POST", "/v1/generate", False, 401)]


def test_a_200_mib_chunked_body_is_refused_on_every_route_in_bounded_memory(proxy) -> None:
    info, token = proxy
    _send_chunked(info.port, "POST", "/v1/generate", MiB // 2, token)  # warm the code paths once
    before = _memory_kib(info.pid, "VmHWM")
    for method, path, auth in ROUTES:
        status, sent = _send_chunked(info.port, method, path, 200 * MiB, token if auth else None)
        assert status == 413, (method, path, status)
        assert sent < 64 * MiB, (method, path, sent)  # refused early, the rest never read
    for method, path, auth, expected in UNREAD:
        status, sent = _send_chunked(info.port, method, path, 200 * MiB, token if auth else None)
        assert status == expected and sent < 64 * MiB, (method, path, status, sent)
    growth_mib = (_memory_kib(info.pid, "VmHWM") - before) / 1024
    assert growth_mib < 16, growth_mib
    # Content-Length over the limit: refused before a byte of the body is read.
    sock = socket.create_connection(("127.0.0.1", info.port))
    sock.sendall(f"POST /v1/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                 f"Content-Length: {200 * MiB}\r\n\r\n".encode())
    assert _response_status(sock) == 413
    sock.close()


def test_idle_slow_header_and_slow_body_clients_are_disconnected(proxy) -> None:
    info, token = proxy
    idle = [socket.create_connection(("127.0.0.1", info.port)) for _ in range(20)]
    slow_head = [socket.create_connection(("127.0.0.1", info.port)) for _ in range(20)]
    slow_body = [socket.create_connection(("127.0.0.1", info.port)) for _ in range(20)]
    for s in slow_body:
        s.sendall(f"POST /v1/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
                  f"Content-Length: 1000\r\n\r\n{{".encode())
    started = time.monotonic()
    closed: set[int] = set()
    everyone = idle + slow_head + slow_body
    while len(closed) < len(everyone) and time.monotonic() - started < 20:
        for s in slow_head:  # a header byte every half second, never a whole head
            if id(s) not in closed:
                try:
                    s.send(b"X")
                except OSError:
                    closed.add(id(s))
        for s in slow_body:
            if id(s) not in closed:
                try:
                    s.send(b" ")
                except OSError:
                    closed.add(id(s))
        readable, _, _ = select.select([s for s in everyone if id(s) not in closed], [], [], 0.5)
        for s in readable:
            try:
                if not s.recv(65536):
                    closed.add(id(s))
            except OSError:
                closed.add(id(s))
    took = time.monotonic() - started
    assert len(closed) == len(everyone), f"{len(everyone) - len(closed)} slow sockets still open after {took:.0f}s"
    assert took < 15, took  # head 2 s, body 3 s: all gone within the limits plus polling on a loaded host
    for s in everyone:
        s.close()
    # A kept-alive connection is not cut by the head timeout between requests: it may idle keep_alive_s.
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", info.port, timeout=10)
    for _ in range(2):
        conn.request("GET", "/v2/health/live")
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 503 and not resp.will_close  # nothing deployed here; the connection stays
        time.sleep(2.5)  # longer than the head timeout, shorter than keep-alive
    conn.close()


def test_refused_requests_do_not_grow_the_log(proxy) -> None:
    info, _ = proxy
    log = Path(info.log_path)
    before = log.stat().st_size
    for _ in range(200):  # malformed requests: uvicorn warns about each one
        sock = socket.create_connection(("127.0.0.1", info.port))
        sock.sendall(b"GARBAGE\r\n\r\n")
        _response_status(sock, timeout=5)
        sock.close()
    grown = log.stat().st_size - before
    assert 0 < grown < 2000, grown  # a line or two, not 200


def test_connections_past_the_limit_are_answered_503_at_once(tmp_path: Path) -> None:
    ensure_token(tmp_path, announce=False)
    info = start_proxy(tmp_path, limits=ProxyLimits(max_connections=20))

    def health() -> bytes:
        sock = socket.create_connection(("127.0.0.1", info.port))
        sock.sendall(b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        sock.settimeout(5)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        sock.close()
        return data

    try:
        held = [socket.create_connection(("127.0.0.1", info.port)) for _ in range(20)]
        time.sleep(0.3)
        refused = health()
        assert refused.startswith(b"HTTP/1.1 503") and b"no model" not in refused, refused  # uvicorn's own 503
        for s in held:
            s.close()
        time.sleep(0.3)
        served = health()  # the app answers again (503 too: nothing is deployed behind this proxy)
        assert served.startswith(b"HTTP/1.1 503") and b"no model is deployed" in served, served
    finally:
        process.stop(info.ref)
