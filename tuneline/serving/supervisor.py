"""The proxy's engine supervisor: a serving Triton that dies is started again, where it listened before.

Every `check_s` the proxy looks up the current version's server in the state folder; when its process is
gone (killed, crashed, out of memory) it takes the state lock (without waiting: a deploy or stop holding it
owns the state and settles it itself) and restarts it with `local.restart_triton`, in a worker thread, so
the proxy keeps answering meanwhile: requests get 503 with `Retry-After` (the proxy's `_unavailable`) until
the model is ready again. A dead canary candidate is not restarted: its failures are the canary's verdict.

Run as: a library; the proxy starts `Supervisor.run` on startup.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from tuneline.serving import process


class Supervisor:
    def __init__(self, state_dir: Path, check_s: float = 0.5) -> None:
        self.state_dir = Path(state_dir)
        self.check_s = check_s
        self.restarts: list[dict] = []  # what was restarted, when, and how long it took

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.check_s)
            try:
                await loop.run_in_executor(None, self.check_once)
            except Exception as exc:  # noqa: BLE001 - the supervisor must outlive one failed restart
                print(f"supervisor: restart failed: {exc}", file=sys.stderr, flush=True)

    def _dead_current(self):
        from tuneline.serving.local import ServeState
        from tuneline.serving.routing import read_routes

        routes = read_routes(self.state_dir)
        if routes is None:
            return None, None
        state = ServeState.load(self.state_dir)
        info = state.servers.get(routes.current.slot)
        if info is None or info.url != routes.current.url or process.is_alive(info.ref):
            return None, state
        return info, state

    def check_once(self) -> str | None:
        """Restart the current version's server if it is dead; returns its slot when it did."""
        from tuneline.serving.local import StateBusy, restart_triton, state_lock

        info, _ = self._dead_current()
        if info is None:
            return None
        try:
            with state_lock(self.state_dir, wait=False):
                info, state = self._dead_current()  # a deploy or stop may have settled it meanwhile
                if info is None:
                    return None
                print(f"supervisor: model server {info.slot} (pid {info.pid}) is gone; restarting it",
                      file=sys.stderr, flush=True)
                started = time.monotonic()
                new = restart_triton(info, self.state_dir)
                state.servers[info.slot] = new
                state.save(self.state_dir)
                took = round(time.monotonic() - started, 2)
                self.restarts.append({"slot": info.slot, "time": time.time(), "restart_s": took})
                print(f"supervisor: model server {info.slot} back in {took}s (pid {new.pid})",
                      file=sys.stderr, flush=True)
                return info.slot
        except StateBusy:
            return None
