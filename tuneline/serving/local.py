"""Local serving: the bundled tritonserver and the auth proxy as detached processes on 127.0.0.1.

State lives in one folder (default `.tuneline/serve/`, mode 0700): `state.json` (servers by slot, the proxy,
the active slot), `upstream.json` (read by the proxy), `token` (0600), pid files, `logs/` (0600 files),
`repos/<slot>/`, and `run/`, where each Triton listens on its own unix socket (no TCP port: see
`engine_http`).
Processes run in their own sessions, so they keep serving after the command that started them exits.

Run as: a library; `python -m tuneline.serving {deploy,status,stop}` is its command line.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tuneline import settings
from tuneline.serving import engine_http, process
from tuneline.serving.auth import private_dir
from tuneline.serving.env import TritonInstall, ensure_serve_venv
from tuneline.serving.housekeeping import remove_unrouted_adapters
from tuneline.serving.limits import ProxyLimits
from tuneline.serving.process import ProcessRef
from tuneline.serving.repository import stream_model_name
from tuneline.serving.routing import clear_upstream, read_routes


class ServeError(RuntimeError):
    """A server or the proxy failed to start or answer; the message carries the log tail."""


def default_state_dir() -> Path:
    return settings.serve_state_dir()


@dataclass
class ServerInfo:
    slot: str
    pid: int
    start_ticks: int
    http_port: int
    repo_dir: str
    model_name: str
    log_path: str
    dynamic_batching: bool = True
    startup_s: float = 0.0
    started_at: float = 0.0
    socket: str = ""  # the unix socket Triton listens on (then http_port is 0); see engine_http
    restarts: int = 0  # times the proxy's supervisor restarted this server after it died

    @property
    def url(self) -> str:
        return f"unix:{self.socket}" if self.socket else f"http://127.0.0.1:{self.http_port}"

    @property
    def ref(self) -> ProcessRef:
        return ProcessRef(self.pid, self.start_ticks)


@dataclass
class ProxyInfo:
    pid: int
    start_ticks: int
    port: int
    log_path: str
    started_at: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ref(self) -> ProcessRef:
        return ProcessRef(self.pid, self.start_ticks)


@dataclass
class ServeState:
    servers: dict[str, ServerInfo] = field(default_factory=dict)
    proxy: ProxyInfo | None = None
    active: str | None = None

    @classmethod
    def load(cls, state_dir: Path) -> ServeState:
        path = Path(state_dir) / "state.json"
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text())
        return cls(
            servers={k: ServerInfo(**v) for k, v in data.get("servers", {}).items()},
            proxy=ProxyInfo(**data["proxy"]) if data.get("proxy") else None,
            active=data.get("active"),
        )

    def save(self, state_dir: Path) -> None:
        path = Path(state_dir) / "state.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(".state.json.tmp")
        tmp.write_text(
            json.dumps(
                {
                    "servers": {k: asdict(v) for k, v in self.servers.items()},
                    "proxy": asdict(self.proxy) if self.proxy else None,
                    "active": self.active,
                },
                indent=2,
            )
            + "\n"
        )
        os.replace(tmp, path)


class StateBusy(RuntimeError):
    """Another command holds the state folder's lock."""


@contextlib.contextmanager
def state_lock(state_dir: Path, *, wait: bool = True) -> Iterator[None]:
    """Serialise deploy/stop commands on one state folder; `wait=False` raises StateBusy instead of waiting."""
    Path(state_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(state_dir) / ".lock", "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise StateBusy(f"{state_dir} is locked by another deploy or stop") from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@dataclass
class Settled:
    """What `reconcile` tidied away."""

    stopped: list[str] = field(default_factory=list)  # slots whose server was stopped
    removed_adapters: list[str] = field(default_factory=list)  # `<slot>/<adapter>`, see `housekeeping`


def reconcile(state_dir: Path, *, drain_s: float = 1.0) -> Settled:
    """Stop the servers no route names any more (a rolled-back or superseded canary version), make the
    current route's slot the active one, and take the adapters no route names out of the servers left
    (`housekeeping`, after `drain_s`). Does nothing while a deploy runs (that deploy owns the state and settles
    it itself)."""
    state_dir = Path(state_dir)
    try:
        with state_lock(state_dir, wait=False):
            routes = read_routes(state_dir)
            state = ServeState.load(state_dir)
            routed = {b.slot for b in routes.backends} if routes else set()
            stopped = []
            for slot, info in list(state.servers.items()):
                if slot not in routed:
                    stop_triton(info, state_dir)
                    state.servers.pop(slot)
                    stopped.append(slot)
            if routes is not None and routes.current.slot in state.servers:
                state.active = routes.current.slot
            state.save(state_dir)
            return Settled(stopped, remove_unrouted_adapters(routes, state.servers.values(), drain_s=drain_s))
    except StateBusy:
        return Settled()


def _write_pid(state_dir: Path, name: str, ref: ProcessRef) -> None:
    (Path(state_dir) / f"{name}.pid").write_text(f"{ref.pid}\n")


def _remove_pid(state_dir: Path, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        (Path(state_dir) / f"{name}.pid").unlink()


def triton_errors(log_path: Path, limit: int = 600) -> str:
    """The error lines of a Triton log (glog `E...` lines and the final `error:`), each cut to `limit`."""
    try:
        lines = Path(log_path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    # With no GPU Triton always logs a CUDA driver error at start: it is noise here.
    picked = [ln[:limit] for ln in lines if (re.match(r"^E\d{4} ", ln) and "Cuda" not in ln) or ln.startswith("error:")]
    return "\n".join(picked) or process.log_tail(log_path)


def start_triton(
    repo_dir: Path,
    model_name: str,
    *,
    state_dir: Path,
    slot: str,
    install: TritonInstall | None = None,
    port: int | None = None,
    timeout: float = 300.0,
    tcp: bool = False,
    restarts: int = 0,
    socket_path: str | None = None,
) -> ServerInfo:
    """Start tritonserver on `repo_dir` and wait until `model_name` is ready. Raises ServeError.

    It listens on a unix socket in the 0700 state folder, reachable only by this user (see engine_http);
    `tcp=True` (a benchmark of Triton alone) listens on 127.0.0.1:`port` instead, open to the whole host.
    """
    install = install or ensure_serve_venv()
    state_dir = private_dir(Path(state_dir).absolute())
    log_path = state_dir / "logs" / f"triton-{slot}.log"
    private_dir(log_path.parent)
    _private_file(log_path)
    sock = "" if tcp else (socket_path or str(_socket_path(state_dir, slot)))
    port = (port or process.free_port()) if tcp else 0
    if sock:
        Path(sock).unlink(missing_ok=True)  # a dead server's socket file: bind would fail on it
    cmd = [
        str(install.tritonserver),
        f"--model-repository={Path(repo_dir).absolute()}",
        f"--backend-directory={install.backend_dir}",
        f"--http-address={'unix:' + sock if sock else '127.0.0.1'}",
        f"--http-port={port}",
        "--allow-grpc=false",
        "--allow-metrics=false",
        "--disable-auto-complete-config",
        "--pinned-memory-pool-byte-size=0",
        "--exit-timeout-secs=5",
        "--log-verbose=0",
    ]
    started = time.monotonic()
    ref = process.start_detached(cmd, log_path=log_path, env=install.environment())
    info = ServerInfo(
        slot=slot,
        pid=ref.pid,
        start_ticks=ref.start_ticks,
        http_port=port,
        repo_dir=str(Path(repo_dir).absolute()),
        model_name=model_name,
        log_path=str(log_path),
        dynamic_batching="dynamic_batching" in (Path(repo_dir) / model_name / "config.pbtxt").read_text(),
        started_at=time.time(),
        socket=sock,
        restarts=restarts,
    )
    _write_pid(state_dir, f"triton-{slot}", ref)
    # The streaming twin, where the repository has one, must be ready too (Triton loads both at once).
    names = [model_name] + ([stream_model_name(model_name)] if (Path(repo_dir) / stream_model_name(model_name))
                            .is_dir() else [])
    while True:
        if all(engine_http.ok(info.url, f"/v2/models/{name}/ready") for name in names):
            break
        if not process.is_alive(ref):
            _remove_pid(state_dir, f"triton-{slot}")
            raise ServeError(
                f"tritonserver ({slot}) exited during start-up; log {log_path}:\n{triton_errors(log_path)}"
            )
        if time.monotonic() - started > timeout:
            process.stop(ref)
            _remove_pid(state_dir, f"triton-{slot}")
            raise ServeError(
                f"tritonserver ({slot}) not ready after {timeout:.0f}s; log {log_path}:\n{process.log_tail(log_path)}"
            )
        time.sleep(0.2)
    info.startup_s = round(time.monotonic() - started, 2)
    return info


def restart_triton(info: ServerInfo, state_dir: Path, timeout: float = 300.0) -> ServerInfo:
    """Start `info`'s server again where it listened before (same socket or port: the route stays valid),
    after clearing what the dead one left (its Python backend stubs, socket, shared memory)."""
    stop_triton(info, state_dir, keep_socket_dir=True)
    return start_triton(Path(info.repo_dir), info.model_name, state_dir=state_dir, slot=info.slot,
                        port=info.http_port or None, tcp=not info.socket, restarts=info.restarts + 1,
                        socket_path=info.socket or None, timeout=timeout)


def stop_triton(info: ServerInfo, state_dir: Path, *, keep_socket_dir: bool = False) -> bool:
    """Stop the server and remove what it leaves behind: its socket, and the Python backend's shared memory
    regions that no live process maps any more (a killed server never unlinks them)."""
    stopped = process.stop(info.ref)
    # A leader killed with SIGKILL leaves its stubs; process.stop does not signal a group whose leader is gone.
    deadline = time.monotonic() + 10
    while process.kill_group(info.ref) and time.monotonic() < deadline:
        time.sleep(0.05)
    _remove_pid(state_dir, f"triton-{info.slot}")
    if info.socket:
        Path(info.socket).unlink(missing_ok=True)
        if not keep_socket_dir and Path(info.socket).parent.name.startswith(_SOCKET_TMP_PREFIX):
            with contextlib.suppress(OSError):
                Path(info.socket).parent.rmdir()
    process.sweep_shared_memory(SHM_PREFIX)
    return stopped


# The Python backend's shared memory regions (python_backend src/pb_utils: "triton_python_backend_shm_region_").
SHM_PREFIX = "triton_python_backend_shm_region_"
_SOCKET_TMP_PREFIX = "tuneline-engine-"
# sun_path holds 108 bytes; a deep state folder's socket goes to a private temporary folder instead.
_MAX_SOCKET_PATH = 100


def _socket_path(state_dir: Path, slot: str) -> Path:
    """A fresh socket per server start (a restart by the supervisor keeps its own): the proxy keys its
    connection pool, counters and cached model parameters by the address, and a new version in a slot must
    start with none of the previous one's."""
    name = f"triton-{slot}-{secrets.token_hex(4)}.sock"
    path = private_dir(state_dir / "run") / name
    if len(str(path)) <= _MAX_SOCKET_PATH:
        return path
    import tempfile

    return Path(tempfile.mkdtemp(prefix=_SOCKET_TMP_PREFIX)) / name  # mkdtemp: 0700


def _private_file(path: Path) -> None:
    """Create `path` empty with mode 0600 (or empty an existing one and make it 0600)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    os.close(fd)


def start_proxy(
    state_dir: Path, port: int | None = None, timeout: float = 30.0, limits: ProxyLimits | None = None
) -> ProxyInfo:
    """Start the proxy (project interpreter: starlette, uvicorn, aiohttp) and wait until it answers."""
    state_dir = Path(state_dir).absolute()
    port = port or process.free_port()
    if not process.port_is_free(port):
        raise ServeError(f"proxy port {port} on 127.0.0.1 is already in use")
    log_path = private_dir(state_dir / "logs") / "proxy.log"
    package_root = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(package_root), env.get("PYTHONPATH", "")) if p)
    limits = limits or ProxyLimits()
    cmd = [
        sys.executable, "-m", "tuneline.serving.proxy", "--state-dir", str(state_dir), "--port", str(port),
        "--limits", json.dumps(asdict(limits)),
    ]
    ref = process.start_detached(cmd, log_path=log_path, env=env)
    info = ProxyInfo(
        pid=ref.pid, start_ticks=ref.start_ticks, port=port, log_path=str(log_path), started_at=time.time()
    )
    deadline = time.monotonic() + timeout
    # /v2/health/live answers without a token; 503 (no upstream yet) still proves the proxy is up.
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{info.url}/v2/health/live", timeout=1).close()
            break
        except urllib.error.HTTPError:
            break
        except (urllib.error.URLError, OSError):
            if not process.is_alive(ref):
                raise ServeError(
                    f"proxy exited during start-up; log {log_path}:\n{process.log_tail(log_path)}"
                ) from None
            time.sleep(0.1)
    else:
        process.stop(ref)
        raise ServeError(f"proxy not answering after {timeout:.0f}s; log {log_path}")
    _write_pid(state_dir, "proxy", ref)
    return info


def status(state_dir: Path | None = None) -> dict:
    """What runs now, with liveness checked against the process table."""
    state_dir = Path(state_dir or default_state_dir())
    state = ServeState.load(state_dir)
    return {
        "active": state.active,
        "proxy": {**asdict(state.proxy), "url": state.proxy.url, "alive": process.is_alive(state.proxy.ref)}
        if state.proxy
        else None,
        "servers": {k: {**asdict(v), "url": v.url, "alive": process.is_alive(v.ref)} for k, v in state.servers.items()},
    }


def stop_all(state_dir: Path | None = None) -> list[int]:
    """Stop every server and the proxy recorded in `state_dir`; returns the ports now free."""
    state_dir = Path(state_dir or default_state_dir())
    freed: list[int] = []
    with state_lock(state_dir):
        state = ServeState.load(state_dir)
        for info in list(state.servers.values()):
            stop_triton(info, state_dir)
            if info.http_port:
                freed.append(info.http_port)
            # The model repository is a copy (or a merge) of the served model: gigabytes no one uses once
            # its server is stopped; a deploy writes it afresh.
            repo = Path(info.repo_dir)
            if repo.parent == (state_dir / "repos").absolute():
                shutil.rmtree(repo, ignore_errors=True)
        if state.proxy:
            process.stop(state.proxy.ref)
            _remove_pid(state_dir, "proxy")
            freed.append(state.proxy.port)
        clear_upstream(state_dir)
        ServeState().save(state_dir)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not all(process.port_is_free(p) for p in freed):
        time.sleep(0.1)
    return freed
