"""The clock helpers, on the fake clock (no real waiting)."""

from __future__ import annotations

import asyncio

import pytest

from backend_core.clock import FakeClock, sleep_unless
from tests.helpers import turns_until


async def test_sleep_unless_ends_at_the_deadline_when_the_event_stays_clear() -> None:
    clock = FakeClock()
    event = asyncio.Event()
    task = asyncio.create_task(sleep_unless(clock, 10.0, event))
    await turns_until(lambda: clock.sleepers == 1, "the sleep waiting on the fake clock")
    clock.advance(9.9)
    assert clock.sleepers == 1  # not woken: the deadline is still ahead
    assert not task.done()
    clock.advance(0.1)
    assert await task is False


async def test_sleep_unless_ends_early_when_the_event_is_set_and_leaves_nothing_pending() -> None:
    clock = FakeClock()
    event = asyncio.Event()
    before = len(asyncio.all_tasks())
    task = asyncio.create_task(sleep_unless(clock, 60.0, event))
    await turns_until(lambda: clock.sleepers == 1, "the sleep waiting on the fake clock")
    event.set()
    assert await task is True
    assert len(asyncio.all_tasks()) == before  # both waiters were cancelled and awaited
    assert await sleep_unless(clock, 60.0, event) is True  # already set: returns at once


async def test_fake_timeout_expires_only_when_fake_time_passes_its_deadline() -> None:
    clock = FakeClock()
    never = asyncio.Event()

    async def guarded() -> str:
        try:
            async with clock.timeout(5.0):
                await never.wait()
        except TimeoutError:
            return "timed out"
        return "finished"

    task = asyncio.create_task(guarded())
    await turns_until(lambda: clock.deadlines == 1, "the timeout block waiting on the fake clock")
    clock.advance(4.9)
    assert clock.deadlines == 1  # not expired: the deadline is still ahead
    assert not task.done()
    clock.advance(0.1)
    assert await task == "timed out"
    assert clock.deadlines == 0


async def test_fake_timeout_that_is_not_reached_leaves_the_block_alone() -> None:
    clock = FakeClock()
    async with clock.timeout(5.0):
        await asyncio.sleep(0)
    assert clock.deadlines == 0
    clock.advance(10.0)  # a deadline whose block has ended fires nothing
    async with clock.timeout(None):
        await asyncio.sleep(0)


async def test_fake_timeout_at_a_past_deadline_times_out_at_the_first_await() -> None:
    clock = FakeClock()
    with pytest.raises(TimeoutError):
        async with clock.timeout_at(clock.monotonic() - 1.0):
            await asyncio.Event().wait()


async def test_system_clock_timeout_is_asyncio_timeout() -> None:
    from backend_core.clock import SystemClock

    clock = SystemClock()
    with pytest.raises(TimeoutError):
        async with clock.timeout(0):
            await asyncio.Event().wait()
    with pytest.raises(TimeoutError):
        async with clock.timeout_at(clock.monotonic()):
            await asyncio.Event().wait()
