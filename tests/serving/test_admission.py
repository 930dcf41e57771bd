"""Admission control: bounded in-flight requests, a bounded queue, deadlines and cancelled waiters."""

from __future__ import annotations

import asyncio

import pytest

from tuneline.serving.admission import Admission, Overloaded, QueueTimeout


def test_queue_full_is_refused_at_once_with_a_retry_hint() -> None:
    async def scenario() -> None:
        gate = Admission(max_inflight=1, max_queue=1)
        await gate.acquire(1.0)
        waiting = asyncio.ensure_future(gate.acquire(5.0))
        await asyncio.sleep(0)
        assert gate.queued == 1
        with pytest.raises(Overloaded) as refused:
            await gate.acquire(5.0)
        assert refused.value.retry_after_s >= 1
        gate.release(0.5)
        await asyncio.wait_for(waiting, 1.0)  # the freed slot went to the waiter
        assert gate.inflight == 1 and gate.queued == 0 and gate.rejected == 1
        gate.release()
        assert gate.inflight == 0

    asyncio.run(scenario())


def test_a_waiter_past_its_deadline_leaves_the_queue() -> None:
    async def scenario() -> None:
        gate = Admission(max_inflight=1, max_queue=4)
        await gate.acquire(1.0)
        with pytest.raises(QueueTimeout, match="deadline"):
            await gate.acquire(0.05)
        assert gate.queued == 0 and gate.timed_out == 1

    asyncio.run(scenario())


def test_a_cancelled_waiter_never_holds_a_slot() -> None:
    async def scenario() -> None:
        gate = Admission(max_inflight=1, max_queue=4)
        await gate.acquire(1.0)
        gone = asyncio.ensure_future(gate.acquire(5.0))  # its client disconnects while it waits
        after = asyncio.ensure_future(gate.acquire(5.0))
        await asyncio.sleep(0)
        gone.cancel()
        gate.release()
        await asyncio.wait_for(after, 1.0)
        assert gone.cancelled() and gate.inflight == 1 and gate.queued == 0
        gate.release()
        assert gate.inflight == 0

    asyncio.run(scenario())


def test_slot_context_releases_on_error() -> None:
    async def scenario() -> None:
        gate = Admission(max_inflight=2, max_queue=0)
        with pytest.raises(RuntimeError):
            async with gate.slot(1.0):
                raise RuntimeError("upstream broke")
        assert gate.inflight == 0

    asyncio.run(scenario())
