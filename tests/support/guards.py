"""Test hygiene checks used by tests/conftest.py: processes a test leaves running, signal handlers it leaves set.

A test that leaves a child alive, or a child in the test process's group, can disturb later tests: a process
group signal or a stray SIGINT/SIGTERM reaches the in-process runner, which then reports an interrupted run.
A handler left installed turns such a signal into a silent flag instead of a visible failure. Read from /proc
(Linux; the only platform the suite runs on) rather than through psutil, which is not a dependency of ours.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass

# The signals whose Python-level handlers a test must leave as it found them. SIGALRM is pytest-timeout's.
WATCHED_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                   signal.SIGCHLD, signal.SIGPIPE)


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgrp: int
    start_ticks: int
    state: str
    cmdline: str

    @property
    def key(self) -> tuple[int, int]:
        return self.pid, self.start_ticks


def _read(pid: int) -> Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            raw = fh.read().decode(errors="replace")
    except OSError:
        return None
    # Field 2 (the command name) may contain spaces and parentheses: split after its last ')'.
    fields = raw[raw.rindex(")") + 2:].split()
    return Proc(pid=pid, ppid=int(fields[1]), pgrp=int(fields[2]), start_ticks=int(fields[19]), state=fields[0],
                cmdline=raw[raw.index("(") + 1:raw.rindex(")")])


def command_line(proc: Proc) -> str:
    try:
        with open(f"/proc/{proc.pid}/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode(errors="replace").strip()[:200] or proc.cmdline
    except OSError:
        return proc.cmdline


def related_processes(whole_group: bool = True) -> dict[tuple[int, int], Proc]:
    """Live (non-zombie) children of this process and, with `whole_group`, every other member of its process
    group (a grandchild whose parent has exited stays in the group). Children alone are cheap to list."""
    me, group = os.getpid(), os.getpgrp()
    if whole_group:
        candidates = [int(entry) for entry in os.listdir("/proc") if entry.isdigit() and int(entry) != me]
    else:
        candidates = []
        for tid in os.listdir(f"/proc/{me}/task"):
            try:
                with open(f"/proc/{me}/task/{tid}/children") as fh:
                    candidates += [int(pid) for pid in fh.read().split()]
            except OSError:
                continue
    found = {}
    for pid in candidates:
        proc = _read(pid)
        if proc is None or proc.state in ("Z", "X"):
            continue
        if proc.ppid == me or proc.pgrp == group:
            found[proc.key] = proc
    return found


def _alive(proc: Proc) -> bool:
    now = _read(proc.pid)
    return now is not None and now.start_ticks == proc.start_ticks and now.state not in ("Z", "X")


def leftovers(before: dict[tuple[int, int], Proc], whole_group: bool = True, own_group_only: bool = False,
              grace_s: float = 3.0) -> list[Proc]:
    """Processes related to this one that did not exist in `before` and are still alive after `grace_s`;
    with `own_group_only`, only those in this process's group."""
    group = os.getpgrp()
    new = [p for key, p in related_processes(whole_group).items()
           if key not in before and (not own_group_only or p.pgrp == group)]
    deadline = time.monotonic() + grace_s
    while new and time.monotonic() < deadline:
        time.sleep(0.1)
        new = [p for p in new if _alive(p)]
    return new


def kill(procs: list[Proc]) -> None:
    """SIGKILL leftovers (their own group when they lead one that is not ours), so later tests start clean."""
    group = os.getpgrp()
    for proc in procs:
        if not _alive(proc):
            continue
        try:
            if proc.pgrp == proc.pid and proc.pgrp != group:
                os.killpg(proc.pid, signal.SIGKILL)
            else:
                os.kill(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def handlers() -> dict[int, object]:
    return {int(sig): signal.getsignal(sig) for sig in WATCHED_SIGNALS}


def changed_handlers(before: dict[int, object]) -> list[str]:
    """Names of watched signals whose handler differs from `before`; each is put back as it was."""
    changed = []
    for sig, handler in before.items():
        if signal.getsignal(sig) is not handler:
            changed.append(signal.Signals(sig).name)
            signal.signal(sig, handler)  # type: ignore[arg-type]
    return changed
