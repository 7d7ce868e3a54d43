"""The clock helpers, on the fake clock (no real waiting)."""

from __future__ import annotations

import asyncio

from backend_core.clock import FakeClock, sleep_unless


async def settle() -> None:
    """Let every ready task run (the waiters start one loop turn after the call)."""
    for _ in range(5):
        await asyncio.sleep(0)


async def test_sleep_unless_ends_at_the_deadline_when_the_event_stays_clear() -> None:
    clock = FakeClock()
    event = asyncio.Event()
    task = asyncio.create_task(sleep_unless(clock, 10.0, event))
    await settle()
    clock.advance(9.9)
    await settle()
    assert not task.done()
    clock.advance(0.1)
    assert await task is False


async def test_sleep_unless_ends_early_when_the_event_is_set_and_leaves_nothing_pending() -> None:
    clock = FakeClock()
    event = asyncio.Event()
    before = len(asyncio.all_tasks())
    task = asyncio.create_task(sleep_unless(clock, 60.0, event))
    await settle()
    event.set()
    assert await task is True
    assert len(asyncio.all_tasks()) == before  # both waiters were cancelled and awaited
    assert await sleep_unless(clock, 60.0, event) is True  # already set: returns at once
