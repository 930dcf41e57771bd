"""Fault injection on a real deployment (tritonserver + proxy processes on loopback): what a client sees and
what is left behind when the engine dies under load, and after `serve stop`."""

from __future__ import annotations

import http.client
import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tuneline.serve import process
from tuneline.serve.auth import load_token
from tuneline.serve.local import SHM_PREFIX, ServeState, stop_all
from tuneline.serve.repository import RepositorySpec
from tuneline.serve.rollout import RolloutResult, rollout

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def deployed(
    serve_venv, tiny_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, RolloutResult]]:
    state_dir = tmp_path_factory.mktemp("faults")
    result = rollout(tiny_model, state_dir=state_dir, spec=RepositorySpec(max_new_tokens_default=4),
                     request_log=str(state_dir / "feedback" / "requests.jsonl"))
    assert result.ok, result.error
    yield state_dir, result
    stop_all(state_dir)


def _call(port: int, token: str | None, path: str = "/v1/generate", body: dict | None = None,
          method: str = "POST") -> tuple[int | str, Any, str]:
    """(status or the connection error's name, headers (case-insensitive), body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        conn.request(method, path, body=json.dumps(body).encode() if body is not None else None, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read().decode(errors="replace")
    except (ConnectionResetError, ConnectionRefusedError, BrokenPipeError, http.client.RemoteDisconnected) as exc:
        return type(exc).__name__, {}, ""
    finally:
        conn.close()


def _listening_tcp_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # TCP_LISTEN
                inodes.add(fields[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(target[8:-1])
    return found


def _group_shm(pgid: int) -> set[str]:
    """The Python backend shared memory files mapped by the processes of group `pgid`."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if os.getpgid(int(proc.name)) != pgid:
                continue
            for line in (proc / "maps").read_text().splitlines():
                if SHM_PREFIX in line:
                    found.add(line.split()[-1])
        except (OSError, ProcessLookupError):
            continue
    return found


def test_engine_answers_only_through_the_proxy(deployed) -> None:
    state_dir, result = deployed
    server = ServeState.load(state_dir).servers[result.slot]
    # No TCP port at all: Triton listens on a unix socket in a folder only the serving user may enter.
    assert server.http_port == 0 and server.socket and Path(server.socket).is_socket()
    assert not (_socket_inodes(server.pid) & _listening_tcp_inodes())
    assert stat.S_IMODE(Path(server.socket).parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(state_dir.stat().st_mode) == 0o700
    token = load_token(Path(result.token_file))
    status, _, _ = _call(int(result.proxy_url.rsplit(":", 1)[1]), token, body={"prompt": "hi"})
    assert status == 200
    # Nothing the deploy wrote (its logs) holds the token; the logs are 0600 in 0700 folders.
    for log in (state_dir / "logs").iterdir():
        assert token not in log.read_text(errors="replace"), log
        assert stat.S_IMODE(log.stat().st_mode) == 0o600, log


def test_engine_killed_under_load_is_restarted_and_clients_are_told_to_retry(deployed) -> None:
    state_dir, result = deployed
    token = load_token(Path(result.token_file))
    port = int(result.proxy_url.rsplit(":", 1)[1])
    server = ServeState.load(state_dir).servers[result.slot]
    answered: list[int] = []

    def one(i: int) -> tuple[int | str, str | None, float]:
        status, headers, _ = _call(port, token, body={"prompt": f"ticket {i}", "max_new_tokens": 2})
        answered.append(1)
        return status, headers.get("Retry-After"), time.monotonic()

    with ThreadPoolExecutor(16) as pool:
        futures = [pool.submit(one, i) for i in range(240)]
        deadline = time.monotonic() + 120
        while len(answered) < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(server.pid, signal.SIGKILL)
        killed = time.monotonic()
        outcomes = [f.result() for f in futures]
    statuses = [s for s, _, _ in outcomes]
    assert set(statuses) <= {200, 503}, statuses  # never a reset, a 502 or a hang
    assert all(retry and int(retry) >= 1 for s, retry, _ in outcomes if s == 503)
    # Back by itself: the supervisor restarts the engine where it listened.
    back = None
    while time.monotonic() - killed < 60:
        status, headers, _ = _call(port, token, body={"prompt": "back?", "max_new_tokens": 2})
        if status == 200:
            back = time.monotonic() - killed
            break
        assert status == 503 and int(headers["Retry-After"]) >= 1, status
        time.sleep(0.25)
    assert back is not None and back < 30, back
    print(f"\nengine SIGKILL under 240 requests at c=16: {statuses.count(200)} x 200, {statuses.count(503)} x 503 "
          f"+ Retry-After, 0 resets; serving again {back:.1f}s after the kill")
    deadline = time.monotonic() + 10  # the supervisor records the new server once its start-up returns
    while ServeState.load(state_dir).servers[result.slot].pid == server.pid and time.monotonic() < deadline:
        time.sleep(0.1)
    restarted = ServeState.load(state_dir).servers[result.slot]
    assert restarted.pid != server.pid and restarted.restarts == 1 and restarted.socket == server.socket
    assert not _group_shm(server.pid)  # the dead server's stubs and shared memory are gone


def test_serve_stop_leaves_no_process_shared_memory_or_port(serve_venv, tiny_model: Path, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    result = rollout(tiny_model, state_dir=state_dir)
    assert result.ok, result.error
    server = ServeState.load(state_dir).servers[result.slot]
    proxy = ServeState.load(state_dir).proxy
    shm = _group_shm(server.pid)
    assert shm  # the Python backend's regions exist while it serves
    os.kill(server.pid, signal.SIGKILL)  # the worst case: a server that cannot clean up after itself
    proc = subprocess.run([sys.executable, "-m", "tuneline.serve", "--state-dir", str(state_dir), "stop"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert not process.is_alive(server.ref) and not process.is_alive(proxy.ref)
    assert not _group_shm(server.pid) and not any(Path(p).exists() for p in shm), shm
    assert not Path(server.socket).exists() and process.port_is_free(proxy.port)
    leftovers = [p for p in Path("/proc").iterdir() if p.name.isdigit() and str(state_dir).encode() in
                 _cmdline(p)]
    assert not leftovers, leftovers


def _cmdline(proc: Path) -> bytes:
    try:
        return (proc / "cmdline").read_bytes()
    except OSError:
        return b""
