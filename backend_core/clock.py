"""Injected time (DESIGN.md rule 7).

Decisions take the time as an argument; loops get it from a :class:`Clock`. Production
uses :class:`SystemClock`; unit tests use :class:`FakeClock`, which only moves when told.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Callable
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

    def timeout(self, seconds: float | None) -> contextlib.AbstractAsyncContextManager[None]:
        """A deadline ``seconds`` from now on this clock, like :func:`asyncio.timeout`.

        When the deadline passes, the block is cancelled and :class:`TimeoutError` is
        raised at its end. ``None`` means no deadline.
        """
        ...

    def timeout_at(self, monotonic_deadline: float | None) -> contextlib.AbstractAsyncContextManager[None]:
        """A deadline at ``monotonic_deadline`` (this clock's :meth:`monotonic`), like :func:`asyncio.timeout_at`."""
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

    def timeout(self, seconds: float | None) -> contextlib.AbstractAsyncContextManager[None]:
        return _NoneYielding(asyncio.timeout(seconds))

    def timeout_at(self, monotonic_deadline: float | None) -> contextlib.AbstractAsyncContextManager[None]:
        if monotonic_deadline is None:
            return _NoneYielding(asyncio.timeout(None))
        # time.monotonic and the loop's clock are both CLOCK_MONOTONIC, but translate anyway:
        # an event loop may run its own clock.
        return _NoneYielding(
            asyncio.timeout_at(monotonic_deadline - time.monotonic() + asyncio.get_running_loop().time())
        )


class _NoneYielding(contextlib.AbstractAsyncContextManager[None]):
    """Wraps :class:`asyncio.Timeout` so both clocks' deadlines share one type (yield None)."""

    __slots__ = ("_inner",)

    def __init__(self, inner: asyncio.Timeout) -> None:
        self._inner = inner

    async def __aenter__(self) -> None:
        await self._inner.__aenter__()

    async def __aexit__(self, *exc_info: object) -> bool | None:
        await self._inner.__aexit__(*exc_info)  # type: ignore[arg-type,func-returns-value]
        return None


class FakeClock:
    """A clock that moves only when :meth:`advance` is called.

    ``sleep`` parks the caller on a future that ``advance`` resolves once the fake time
    reaches its deadline, so async code can be driven step by step without real waiting.
    ``timeout``/``timeout_at`` are real :func:`asyncio.timeout` blocks with no deadline of
    their own; ``advance`` past the fake deadline makes them expire on the next loop turn,
    so every deadline in the code under test runs on fake time.
    """

    def __init__(self, start_monotonic: float = 1000.0, start_wall: float = 1_700_000_000.0) -> None:
        self._now = start_monotonic
        self._wall_offset = start_wall - start_monotonic
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._timers: list[tuple[float, int, _FakeTimer]] = []
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

    def timeout(self, seconds: float | None) -> contextlib.AbstractAsyncContextManager[None]:
        return self.timeout_at(None if seconds is None else self._now + seconds)

    def timeout_at(self, monotonic_deadline: float | None) -> contextlib.AbstractAsyncContextManager[None]:
        return self._deadline(monotonic_deadline)

    @contextlib.asynccontextmanager
    async def _deadline(self, monotonic_deadline: float | None) -> AsyncIterator[None]:
        async with asyncio.timeout(None) as inner:
            if monotonic_deadline is None:
                yield
                return
            timer = _FakeTimer(inner.reschedule)
            if monotonic_deadline <= self._now:
                timer.fire()
            else:
                heapq.heappush(self._timers, (monotonic_deadline, next(self._seq), timer))
            try:
                yield
            finally:
                timer.cancelled = True

    def advance(self, seconds: float) -> None:
        """Move time forward, wake every sleeper and expire every deadline that has passed."""
        if seconds < 0:
            raise ValueError("a clock cannot go backwards")
        self._now += seconds
        while self._sleepers and self._sleepers[0][0] <= self._now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
        while self._timers and self._timers[0][0] <= self._now:
            _, _, timer = heapq.heappop(self._timers)
            timer.fire()

    @property
    def deadlines(self) -> int:
        """How many ``timeout`` blocks are waiting for their fake deadline."""
        return sum(1 for _, _, t in self._timers if not t.cancelled)

    @property
    def sleepers(self) -> int:
        """How many sleeps are waiting (cancelled ones included until they expire)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())


class _FakeTimer:
    """One pending fake deadline: on fire, the asyncio.Timeout expires at the next loop turn."""

    __slots__ = ("cancelled", "reschedule")

    def __init__(self, reschedule: Callable[[float | None], None]) -> None:
        self.reschedule = reschedule
        self.cancelled = False

    def fire(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.reschedule(asyncio.get_running_loop().time())


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
