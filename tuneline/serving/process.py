"""Detached processes that outlive their parent: start, identify (pid + start time), stop, free ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ProcessRef:
    """A pid plus its kernel start time, so a recycled pid is never mistaken for our process."""

    pid: int
    start_ticks: int


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on `port` (TIME_WAIT leftovers do not count: servers reuse the address)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its closing paren.
    return raw[raw.rindex(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None  # field 22 of stat; index from field 3


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def is_alive(ref: ProcessRef) -> bool:
    _reap(ref.pid)
    fields = _stat_fields(ref.pid)
    if fields is None or fields[0] in ("Z", "X"):
        return False
    return int(fields[19]) == ref.start_ticks


def start_detached(
    cmd: list[str], *, log_path: Path, env: dict[str, str] | None = None, cwd: Path | None = None
) -> ProcessRef:
    """Start `cmd` in its own session (it survives this process) with output appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # 0600: server logs may quote requests; only the serving user reads them.
    with os.fdopen(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            close_fds=True,
        )
    ticks = start_ticks(proc.pid)
    # Popen would otherwise warn at exit that the child still runs; it is meant to.
    proc.returncode = 0
    return ProcessRef(pid=proc.pid, start_ticks=ticks if ticks is not None else -1)


def stop(ref: ProcessRef, *, timeout: float = 20.0) -> bool:
    """SIGTERM the process group led by `ref`, SIGKILL it after `timeout`; True if something was stopped."""
    if not is_alive(ref):
        return False
    with contextlib.suppress(ProcessLookupError):
        os.killpg(ref.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not is_alive(ref):
            break
        time.sleep(0.1)
    else:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(ref.pid, signal.SIGKILL)
        while is_alive(ref):
            time.sleep(0.05)
    # Children of the group (the Python backend stubs) may exit a moment after their leader.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(ref.pid, signal.SIGKILL)
    return True


def log_tail(path: Path, chars: int = 4000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - chars))
            return fh.read().decode("utf-8", errors="replace")
    except OSError:
        return ""


def sweep_shared_memory(prefix: str, shm_dir: Path = Path("/dev/shm")) -> list[str]:
    """Unlink this user's `shm_dir/<prefix>*` files that no live process maps or holds open; returns
    their names. A process killed with SIGKILL never unlinks its POSIX shared memory; one still alive
    (another server of this user) keeps its regions."""
    uid = os.getuid()
    candidates = {}
    with contextlib.suppress(OSError):
        for entry in os.scandir(shm_dir):
            if entry.name.startswith(prefix):
                with contextlib.suppress(OSError):
                    if entry.stat(follow_symlinks=False).st_uid == uid:
                        candidates[str(Path(shm_dir) / entry.name)] = entry.name
    if not candidates:
        return []
    in_use: set[str] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for line in (proc / "maps").read_text().splitlines():
                parts = line.split(maxsplit=5)
                path = parts[5] if len(parts) == 6 else ""
                if path.startswith(str(shm_dir)):
                    in_use.add(path.removesuffix(" (deleted)"))
        with contextlib.suppress(OSError):
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    target = os.readlink(fd)
                    if target.startswith(str(shm_dir)):
                        in_use.add(target)
    removed = []
    for path, name in candidates.items():
        if path not in in_use:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                removed.append(name)
    return removed


def kill_group(ref: ProcessRef) -> int:
    """SIGKILL what is left of the process group `ref` led (its leader may be dead: a SIGKILLed Triton leaves
    its Python backend stubs). A group id is not reused while a member lives; members started before the
    leader cannot be ours. Returns how many were signalled."""
    killed = 0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        pid = int(proc.name)
        fields = _stat_fields(pid)
        # stat field 5 is the process group (index 2 after the command), field 22 the start time.
        if (fields is None or fields[0] in ("Z", "X") or int(fields[2]) != ref.pid
                or int(fields[19]) < ref.start_ticks):
            continue
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
            killed += 1
    return killed
