"""Plain HTTP to a Triton server by its address: `unix:/path/to.sock` or `http://host:port`.

Locally Triton listens on a unix socket in the 0700 state folder, not on a TCP port: a TCP port on
127.0.0.1 answers every user of the host, and Triton's HTTP API has no authentication of its own (its
`--http-restricted-api` key would sit on the command line, which /proc shows to everyone). The socket's
folder lets only the serving user connect; the proxy is the only way in, with its token.
(libevhtp binds `unix:<path>` addresses; Triton passes `--http-address` to it as it is.)

Run as: a library (`local` health checks, `smoke` on a candidate; the proxy uses aiohttp's UnixConnector).
"""

from __future__ import annotations

import http.client
import socket

UNIX_PREFIX = "unix:"


def is_unix(url: str) -> bool:
    return url.startswith(UNIX_PREFIX)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("engine", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def request(
    url: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """One request; returns (status, body). Raises OSError when the server cannot be reached."""
    if is_unix(url):
        conn: http.client.HTTPConnection = _UnixConnection(url[len(UNIX_PREFIX):], timeout)
    else:
        hostport = url.split("://", 1)[-1].rstrip("/")
        conn = http.client.HTTPConnection(hostport, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    except http.client.HTTPException as exc:
        raise OSError(f"bad HTTP answer: {exc}") from None
    finally:
        conn.close()


def ok(url: str, path: str, timeout: float = 2.0) -> bool:
    try:
        return request(url, "GET", path, timeout=timeout)[0] == 200
    except OSError:
        return False
