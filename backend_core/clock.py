"""Injected time (DESIGN.md rule 7).

Decisions take the time as an argument; loops get it from a :class:`Clock`. Production
uses :class:`SystemClock`; unit tests use :class:`FakeClock`, which only moves when told.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from datetime import UTC, datetime
from typing import Protocol


class Clock(Protocol):
    """Monotonic time for decisions, wall time for output, and a sleep."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes backwards (for durations and deadlines)."""
        ...

    def wall(self) -> float:
        """Seconds since the Unix epoch (for logs and API output only)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Suspend the caller for ``seconds`` of this clock's time."""
        ...


class SystemClock:
    """The real clocks of the process."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class FakeClock:
    """A clock that moves only when :meth:`advance` is called.

    ``sleep`` parks the caller on a future that ``advance`` resolves once the fake time
    reaches its deadline, so async code can be driven step by step without real waiting.
    """

    def __init__(self, start_monotonic: float = 1000.0, start_wall: float = 1_700_000_000.0) -> None:
        self._now = start_monotonic
        self._wall_offset = start_wall - start_monotonic
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def wall(self) -> float:
        return self._now + self._wall_offset

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), future))
        await future

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)

    @property
    def sleepers(self) -> int:
        """How many sleeps are waiting (cancelled ones included until they expire)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())


async def sleep_unless(clock: Clock, seconds: float, event: asyncio.Event) -> bool:
    """Sleep ``seconds`` on ``clock``, or less if ``event`` is set; True when the event ended it.

    Both waiters are cancelled and awaited before returning, so nothing is left pending.
    """
    if event.is_set():
        return True
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    setter = asyncio.ensure_future(event.wait())
    try:
        await asyncio.wait({sleeper, setter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for future in (sleeper, setter):
            future.cancel()
        await asyncio.gather(sleeper, setter, return_exceptions=True)
    return event.is_set()


def iso_utc(wall_seconds: float | None) -> str | None:
    """UTC ISO 8601 with a trailing Z, the one wall-clock format of API output."""
    if wall_seconds is None:
        return None
    return datetime.fromtimestamp(wall_seconds, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
