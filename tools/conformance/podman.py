"""Podman as this machine's container engine: one root `podman system service` on a socket under the state folder,
configured by a containers.conf of our own, with a Docker-compatible API for the docker SDK and `kfp.local`.

Run as (a library): with PodmanService.start(state) as engine:
                        engine.run("localhost/tuneline/train-cpu:dev", ["python", "-c", "print(1)"],
                                   mounts={Path("ckpt"): "/ckpt"})
        python -m tools.conformance.podman STATE_DIR IMAGE CMD...   (start, run one container, stop: a smoke test)

API
- `ensure_installed()`: apt-get install podman, runc and buildah when a binary is missing (root only).
- `write_containers_conf(state)`: the containers.conf below, written under `state`; `PodmanService` points
  CONTAINERS_CONF at it for every podman process it starts.
- `PodmanService.start(state)`: starts `podman system service --time=0 unix://<state>/podman.sock` and a
  keep-until-wait relay on `<state>/docker.sock` (see below); a context manager whose exit stops both.
  `.docker_host` is the `unix://` URL to give DOCKER_HOST (kfp.local's DockerRunner calls `docker.from_env()`);
  `.env()` is os.environ with DOCKER_HOST and CONTAINERS_CONF set.
- `engine.start(image, command, mounts=..., env=..., user=..., workdir=..., name=...)` -> `Container`, whose
  `.wait(timeout)` returns the exit status, `.running()` says whether it still runs, `.kill(signal)` sends a
  signal (SIGKILL stands for a spot eviction or an OOM kill), `.logs()` gives the output and `.remove()` deletes
  it. `engine.run(...)` is start + wait + logs + remove in one call, returning `Finished(exit_code, logs)`.

Why these settings (verified on this kind of machine): podman's default OCI runtime crun fails here and runc works;
there is no systemd to manage cgroups, so the cgroupfs manager; and the default ulimits (podman raises nofile and
nproc to the host's hard limits) make runc fail, so they are lowered to 4096. containers.conf(5) documents all
three keys (`[containers] default_ulimits`, `[engine] cgroup_manager`, `[engine] runtime`) and CONTAINERS_CONF as
the variable that selects the file. Images come from the storage buildah writes (`make images`): both use the
root store /var/lib/containers/storage, so nothing is pushed or loaded.

Keep until wait. kfp.local runs each task with `client.containers.run(..., detach=True, auto_remove=True)` and
then reads `container.logs(stream=True)` and `container.wait()`; when `wait` raises NotFound it assumes exit 0
(sdk/python/kfp/local/docker_task_handler.py, `run_docker_container`). `auto_remove` is hard-coded there, so
`DockerRunner(auto_remove=False)` only collides with it. Podman 4.3 removes an auto-removed container as soon as
it exits, often before `wait` is answered, so a failed task could pass for a successful one. The Docker Engine API
defines `HostConfig.AutoRemove` as "automatically remove the container when the container's process exits"
(https://docs.docker.com/reference/api/engine/version/v1.41/#tag/Container/operation/ContainerCreate): that is
the only documented point where this can be changed without editing kfp or the docker SDK. So DOCKER_HOST points
at a small relay (standard library, one request per connection) in front of podman's socket, which clears
`AutoRemove` in `POST /containers/create`, remembers the container, and removes it once `POST
/containers/{id}/wait` has been answered with the exit status. Every other request passes through byte for byte;
containers the relay kept and that were never waited on are removed when the service stops.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGES = {"podman": "podman", "runc": "runc", "buildah": "buildah"}  # binary -> Debian package
CONTAINERS_CONF = """\
# Written by tools.conformance.podman; see its docstring for why each key is set.
[containers]
default_ulimits = ["nofile=4096:4096", "nproc=4096:4096"]

[engine]
cgroup_manager = "cgroupfs"
runtime = "runc"
"""
SOCKET_PATH_MAX = 100  # sun_path holds 108 bytes on Linux
START_TIMEOUT_S = 60.0
_CREATE = re.compile(r"^/(v[0-9.]+/)?containers/create(\?|$)")
_WAIT = re.compile(r"^/(v[0-9.]+/)?containers/([^/?]+)/wait(\?|$)")


class PodmanError(RuntimeError):
    """Podman is missing, cannot start, or a container could not be run."""


def ensure_installed(packages: Mapping[str, str] = PACKAGES) -> None:
    """apt-get install the packages whose binary is missing; the machine's package manager is the only source."""
    missing = [pkg for binary, pkg in packages.items() if shutil.which(binary) is None]
    if not missing:
        return
    if os.geteuid() != 0:
        raise PodmanError(f"need root to apt-get install {' '.join(missing)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", *missing]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise PodmanError(f"apt-get install {' '.join(missing)} failed: {done.stderr.strip()[-400:]}")


def write_containers_conf(state: Path) -> Path:
    path = state / "containers.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(CONTAINERS_CONF)
    return path


def _socket_dir(state: Path) -> Path:
    """`state` itself, unless its path is too long for a unix socket; then a private folder in /tmp."""
    if len(str(state / "podman.sock")) <= SOCKET_PATH_MAX:
        return state
    return Path(tempfile.mkdtemp(prefix="tuneline-podman-"))


# ------------------------------------------------------------------------------------------ keep-until-wait relay


def _read_head(sock: socket.socket, buffer: bytearray) -> bytes | None:
    while b"\r\n\r\n" not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    end = buffer.index(b"\r\n\r\n") + 4
    head = bytes(buffer[:end])
    del buffer[:end]
    return head


def _read_exact(sock: socket.socket, buffer: bytearray, size: int) -> bytes:
    while len(buffer) < size:
        chunk = sock.recv(65536)
        if not chunk:
            break
        buffer += chunk
    data = bytes(buffer[:size])
    del buffer[:size]
    return data


def _read_chunked(sock: socket.socket, buffer: bytearray) -> bytes:
    body = bytearray()
    while True:
        while b"\r\n" not in buffer:
            chunk = sock.recv(65536)
            if not chunk:
                return bytes(body)
            buffer += chunk
        line_end = buffer.index(b"\r\n")
        size = int(bytes(buffer[:line_end]).split(b";")[0], 16)
        del buffer[:line_end + 2]
        if size == 0:
            _read_exact(sock, buffer, 2)  # the empty trailer
            return bytes(body)
        body += _read_exact(sock, buffer, size)
        _read_exact(sock, buffer, 2)


def _headers(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    pairs = [tuple(p.strip() for p in line.split(":", 1)) for line in lines[1:] if ":" in line]
    return lines[0], [(k, v) for k, v in pairs]


def _with_headers(start: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    dropped = {"content-length", "transfer-encoding", "connection"}
    kept = [(k, v) for k, v in headers if k.lower() not in dropped]
    kept += [("Content-Length", str(len(body))), ("Connection", "close")]
    return (start + "\r\n" + "".join(f"{k}: {v}\r\n" for k, v in kept) + "\r\n").encode("latin-1") + body


def _pump(source: socket.socket, target: socket.socket) -> None:
    try:
        while chunk := source.recv(65536):
            target.sendall(chunk)
    except OSError:
        pass
    finally:
        try:
            target.shutdown(socket.SHUT_WR)
        except OSError:
            pass


class _KeepRelay:
    """The relay described in the module docstring: one thread per client connection, one request each."""

    def __init__(self, listen: Path, upstream: Path):
        self.listen, self.upstream = listen, upstream
        self.kept: set[str] = set()
        self._lock = threading.Lock()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listen.unlink(missing_ok=True)
        self._server.bind(str(listen))
        self._server.listen(64)
        self._thread = threading.Thread(target=self._serve, name="podman-keep-relay", daemon=True)
        self._thread.start()

    def _connect(self) -> socket.socket:
        upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        upstream.connect(str(self.upstream))
        return upstream

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return  # closed by stop()
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        with client:
            buffer = bytearray()
            head = _read_head(client, buffer)
            if head is None:
                return
            start, headers = _headers(head)
            method, path = start.split(" ")[:2]
            lower = {k.lower(): v for k, v in headers}
            if "content-length" in lower:
                body = _read_exact(client, buffer, int(lower["content-length"]))
            elif lower.get("transfer-encoding", "").lower() == "chunked":
                body = _read_chunked(client, buffer)
            else:
                body = b""
            auto_remove = False
            if method == "POST" and _CREATE.match(path) and body:
                spec = json.loads(body)
                host = spec.get("HostConfig") or {}
                auto_remove = bool(host.get("AutoRemove"))
                if auto_remove:
                    host["AutoRemove"] = False
                    spec["HostConfig"] = host
                    body = json.dumps(spec).encode()
            with self._connect() as upstream:
                upstream.sendall(_with_headers(start, headers, body) + bytes(buffer))
                if auto_remove:
                    self._relay_create(upstream, client)
                    return
                wait = _WAIT.match(path) if method == "POST" else None
                if wait:
                    _pump(upstream, client)  # the exit status reaches the caller first
                    self._remove_if_kept(wait.group(2))
                    return
                sender = threading.Thread(target=_pump, args=(client, upstream), daemon=True)
                sender.start()  # a hijacked (attach) connection streams both ways
                _pump(upstream, client)

    def _relay_create(self, upstream: socket.socket, client: socket.socket) -> None:
        buffer = bytearray()
        head = _read_head(upstream, buffer) or b""
        rest = bytearray(buffer)
        while chunk := upstream.recv(65536):
            rest += chunk
        start, headers = _headers(head)
        lower = {k.lower(): v for k, v in headers}
        body = bytes(rest)
        if lower.get("transfer-encoding", "").lower() == "chunked":
            body = _read_chunked(_BufferSocket(rest), bytearray())
        try:
            container = json.loads(body).get("Id")
        except (ValueError, AttributeError):
            container = None
        if container:
            with self._lock:
                self.kept.add(container)
        client.sendall(_with_headers(start, headers, body))

    def _remove_if_kept(self, ref: str) -> None:
        with self._lock:
            match = next((c for c in self.kept if c == ref or c.startswith(ref)), None)
            if match is None:
                return
            self.kept.discard(match)
        self._delete(match)

    def _delete(self, container: str) -> None:
        request = (f"DELETE /containers/{container}?force=true HTTP/1.1\r\nHost: podman\r\n"
                   f"Connection: close\r\n\r\n").encode()
        try:
            with self._connect() as upstream:
                upstream.sendall(request)
                while upstream.recv(65536):
                    pass
        except OSError:
            pass

    def stop(self) -> None:
        self._server.close()
        self.listen.unlink(missing_ok=True)
        for container in list(self.kept):
            self._delete(container)
        self.kept.clear()


class _BufferSocket:
    """Just enough of a socket to reuse _read_chunked on bytes already received."""

    def __init__(self, data: bytes | bytearray):
        self._data = bytes(data)

    def recv(self, size: int) -> bytes:
        chunk, self._data = self._data[:size], self._data[size:]
        return chunk


# ------------------------------------------------------------------------------------------------- the service


@dataclass
class Finished:
    exit_code: int
    logs: str


@dataclass
class Container:
    """A container started by `PodmanService.start_container`; kept until `.remove()`."""

    handle: Any  # docker.models.containers.Container

    @property
    def id(self) -> str:
        return self.handle.id

    def wait(self, timeout: float | None = None) -> int:
        return int(self.handle.wait(timeout=timeout)["StatusCode"])

    def running(self) -> bool:
        """Still starting or running (an inspect call, answered at once, unlike `wait`)."""
        self.handle.reload()
        return self.handle.status in ("created", "running")

    def kill(self, sig: int | str = signal.SIGKILL) -> None:
        self.handle.kill(signal=int(sig) if isinstance(sig, signal.Signals) else sig)

    def logs(self) -> str:
        return self.handle.logs(stdout=True, stderr=True).decode(errors="replace")

    def remove(self) -> None:
        self.handle.remove(force=True)

    def address(self) -> str:
        """The container's address on podman's bridge, where other containers reach it."""
        self.handle.reload()
        return self.handle.attrs["NetworkSettings"]["IPAddress"]


@dataclass
class PodmanService:
    state: Path
    process: subprocess.Popen
    podman_socket: Path
    relay_socket: Path
    conf: Path
    _relay: _KeepRelay
    _clients: list[Any] = field(default_factory=list)

    @property
    def docker_host(self) -> str:
        """The URL for DOCKER_HOST: the keep-until-wait relay in front of podman."""
        return f"unix://{self.relay_socket}"

    def env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**(os.environ if base is None else base), "DOCKER_HOST": self.docker_host,
                "CONTAINERS_CONF": str(self.conf)}

    @classmethod
    def start(cls, state: Path, timeout: float = START_TIMEOUT_S) -> PodmanService:
        ensure_installed()
        state = state.resolve()
        state.mkdir(parents=True, exist_ok=True)
        conf = write_containers_conf(state)
        sockets = _socket_dir(state)
        podman_socket = sockets / "podman.sock"
        podman_socket.unlink(missing_ok=True)
        log = (state / "podman-service.log").open("ab")
        process = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{podman_socket}"],
                                   env={**os.environ, "CONTAINERS_CONF": str(conf)}, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not _answers(podman_socket):
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                tail = (state / "podman-service.log").read_text(errors="replace")[-600:]
                raise PodmanError(f"podman system service did not start (log {state / 'podman-service.log'}): "
                                  f"{tail}")
            time.sleep(0.2)
        relay = _KeepRelay(sockets / "docker.sock", podman_socket)
        return cls(state=state, process=process, podman_socket=podman_socket, relay_socket=relay.listen,
                   conf=conf, _relay=relay)

    def client(self) -> Any:
        import docker  # the docker SDK (a dependency of kfp.local's DockerRunner)

        client = docker.DockerClient(base_url=self.docker_host, timeout=600)
        self._clients.append(client)
        return client

    def has_image(self, image: str) -> bool:
        import docker

        try:
            self.client().images.get(image)
            return True
        except docker.errors.ImageNotFound:
            return False

    def start_container(self, image: str, command: Sequence[str], *, mounts: Mapping[Path, str] | None = None,
                        env: Mapping[str, str] | None = None, user: str | None = None,
                        workdir: str | None = None, name: str | None = None,
                        read_only_mounts: Sequence[Path] = (),
                        ports: Mapping[str, tuple[str, int]] | None = None,
                        hosts: Mapping[str, str] | None = None, network_mode: str | None = None,
                        options: Mapping[str, Any] | None = None) -> Container:
        """Start `command` in `image` with each host path of `mounts` bind-mounted at its container path, each
        `ports` entry ("5000/tcp": (host address, host port)) published and each of `hosts` (name: address)
        resolvable inside (`network_mode="host"`: the host's network, so a service listening on 127.0.0.1 there
        is reachable); `options` go to the docker SDK's `containers.run` as they are (read_only, tmpfs, ...)."""
        volumes = {str(Path(host).resolve()): {"bind": target, "mode": "ro" if host in read_only_mounts else "rw"}
                   for host, target in (mounts or {}).items()}
        handle = self.client().containers.run(image=image, command=list(command), detach=True, volumes=volumes,
                                              environment=dict(env or {}), user=user, working_dir=workdir,
                                              name=name, auto_remove=False, ports=dict(ports or {}),
                                              extra_hosts=dict(hosts or {}), network_mode=network_mode,
                                              **dict(options or {}))
        return Container(handle)

    def run(self, image: str, command: Sequence[str], *, timeout: float | None = None, **kwargs: Any) -> Finished:
        container = self.start_container(image, command, **kwargs)
        try:
            code = container.wait(timeout=timeout)
            return Finished(code, container.logs())
        finally:
            container.remove()

    def stop(self) -> None:
        for client in self._clients:
            client.close()
        self._relay.stop()
        if self.process.poll() is None:
            self.process.terminate()  # our own child, by its pid
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.podman_socket.unlink(missing_ok=True)

    def __enter__(self) -> PodmanService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _answers(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(2)
            sock.connect(str(path))
            sock.sendall(b"GET /_ping HTTP/1.1\r\nHost: podman\r\nConnection: close\r\n\r\n")
            return sock.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


@contextmanager
def podman_service(state: Path) -> Iterator[PodmanService]:
    service = PodmanService.start(state)
    try:
        yield service
    finally:
        service.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.conformance.podman", description=__doc__.splitlines()[0])
    parser.add_argument("state", type=Path, help="state folder (containers.conf, sockets, service log)")
    parser.add_argument("image")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    with podman_service(args.state) as engine:
        finished = engine.run(args.image, args.command or ["true"])
    sys.stdout.write(finished.logs)
    return finished.exit_code


if __name__ == "__main__":
    sys.exit(main())
