"""Admission control for the proxy: a fixed number of requests in flight upstream, a bounded FIFO queue.

- At most `max_inflight` requests are at Triton at once: enough to fill its dynamic batches (and one
  batch more, queued in Triton while the current one runs) without letting Triton's own queue grow.
- At most `max_queue` more wait here, first come first served. Past that, `acquire` raises `Overloaded`
  at once, which the proxy answers as 429 with `Retry-After`: an overloaded server says so instead of
  resetting connections or letting clients hang.
- A waiter whose deadline passes leaves the queue (`QueueTimeout`, answered 503 with `Retry-After`); a
  waiter that is cancelled (its client went away) leaves the queue too, and a slot it was just handed goes
  to the next waiter, so a disconnected client never holds a slot.

`retry_after_s` estimates when a slot frees: the queue ahead divided by the measured completion rate.
asyncio-only: one instance belongs to one event loop (the proxy's).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Overloaded(Exception):
    """The queue is full."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__(f"server overloaded: queue full, retry in {retry_after_s}s")
        self.retry_after_s = retry_after_s


class QueueTimeout(Exception):
    """The request's deadline passed while it waited for a slot."""

    def __init__(self, waited_s: float, retry_after_s: int) -> None:
        super().__init__(f"no slot free within the request's deadline (waited {waited_s:.1f}s)")
        self.retry_after_s = retry_after_s


class Admission:
    def __init__(self, max_inflight: int, max_queue: int) -> None:
        if max_inflight < 1 or max_queue < 0:
            raise ValueError(f"need max_inflight >= 1 and max_queue >= 0, got {max_inflight}, {max_queue}")
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.inflight = 0
        self._waiters: deque[asyncio.Future] = deque()
        self._service_s = 1.0  # moving average of how long a slot is held
        self.rejected = 0
        self.timed_out = 0

    @property
    def queued(self) -> int:
        return sum(1 for w in self._waiters if not w.done())

    def retry_after_s(self) -> int:
        # Each slot frees about every service time: the queue ahead drains at max_inflight per service time.
        batches = (self.queued + 1) / self.max_inflight
        return max(1, math.ceil(batches * self._service_s))

    async def acquire(self, timeout_s: float | None) -> None:
        if self.inflight < self.max_inflight and not self._waiters:
            self.inflight += 1
            return
        if self.queued >= self.max_queue:
            self.rejected += 1
            raise Overloaded(self.retry_after_s())
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        started = time.monotonic()
        try:
            await asyncio.wait_for(asyncio.shield(waiter), timeout_s)
        except (TimeoutError, asyncio.CancelledError) as exc:
            if waiter.done() and not waiter.cancelled():
                self._hand_on()  # the slot arrived just as we gave up: pass it on
            else:
                waiter.cancel()
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)
            if isinstance(exc, TimeoutError):
                self.timed_out += 1
                raise QueueTimeout(time.monotonic() - started, self.retry_after_s()) from None
            raise

    def release(self, held_s: float | None = None) -> None:
        if held_s is not None:
            self._service_s = 0.8 * self._service_s + 0.2 * held_s
        self._hand_on()

    def _hand_on(self) -> None:
        """Give the freed slot to the oldest live waiter, else return it."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot moves over: inflight is unchanged
                return
        self.inflight -= 1

    @asynccontextmanager
    async def slot(self, timeout_s: float | None) -> AsyncIterator[None]:
        await self.acquire(timeout_s)
        started = time.monotonic()
        try:
            yield
        finally:
            self.release(time.monotonic() - started)

    def to_dict(self) -> dict:
        return {
            "max_inflight": self.max_inflight,
            "max_queue": self.max_queue,
            "inflight": self.inflight,
            "queued": self.queued,
            "rejected": self.rejected,
            "timed_out": self.timed_out,
        }

