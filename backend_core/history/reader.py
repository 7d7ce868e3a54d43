"""One shared, paced reader of the history for every open status page (owned by the Runtime).

History changes rarely and its queries touch the database (on the store's read pool,
each bounded by its timeout), so the pages do not query it themselves. Each page asks
this reader for history "no older than" some moment (:meth:`HistoryReader.request`, which
never waits), and applies whatever :attr:`HistoryReader.snapshot` holds when its
``version`` changes. The reader runs at most one read at a time, starts reads at most
every ``READ_GAP_S`` however many pages ask, and runs the queries of one read one after
the other, so the status page never holds more than one of the store's read slots (the
history API keeps the others). Twenty open pages asking after the same status change cost
one read. When each page asks is :func:`history_schedule`'s decision (pure).

A read that fails (database down, slow, unusable) keeps the last good answer and records
why, so the page can say calmly that history is unavailable or may be out of date; the
rest of the page never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Protocol

from backend_core.clock import Clock
from backend_core.history.queries import StoreUnavailable
from backend_core.incidents import BREAKER_PREFIX, UPSTREAM, WEBSOCKET_BREAKER
from backend_core.logs import LogThrottle

log = logging.getLogger("backend_core.history.reader")

# Reads start at most this often, whatever the number of pages asking: a flapping feed
# that changes state every second costs one read per gap, not one per page per change.
READ_GAP_S: Final = 2.0
# A read for a status change starts this long after it, whoever asks (a page's schedule or
# a page passing the status version): the store writes the change within milliseconds of
# the signal, so the read finds it.
SETTLE_S: Final = 0.5
# One whole read (a handful of queries, each bounded by the store's own 10 s timeout).
READ_TIMEOUT_S: Final = 15.0

# What one read fetches. The bars cover the history the store keeps by default
# (HISTORY_RETENTION_DAYS=90); the newest few incidents and breaker transitions are what
# a reader wants (the API has the rest).
HISTORY_DAYS: Final = 90
MAX_INCIDENT_ROWS: Final = 20
MAX_TRANSITION_ROWS: Final = 20
# Uptime rows: the market feed, its breaker, and at most this many in all (other breakers
# only when they have something to show), so a page never carries hundreds of bars.
MAX_UPTIME_ROWS: Final = 6

# When a page asks for history again (see history_schedule): after a status change at
# most every HISTORY_MIN_INTERVAL_S (the latest change counts), SETTLE_S after it, and every
# HISTORY_IDLE_S when nothing changes (today's bar moves on); while reads fail, every
# HISTORY_MIN_INTERVAL_S, so history is back soon after the database.
HISTORY_MIN_INTERVAL_S: Final = 10.0
HISTORY_IDLE_S: Final = 60.0
# A page that loads shows history another page read this recently, without a new read.
HISTORY_LOAD_MAX_AGE_S: Final = 10.0


class HistorySource(Protocol):
    """What the reader reads (:class:`~backend_core.history.store.HistoryStore`)."""

    @property
    def reachable(self) -> bool | None: ...

    async def incidents(self, limit: int = ..., component: str | None = ...) -> list[dict[str, Any]]: ...

    async def transitions(self, limit: int = ..., name: str | None = ...) -> list[dict[str, Any]]: ...

    async def history(self, component: str = ..., days: int = ...) -> dict[str, Any]: ...


def history_components(
    breakers: Iterable[Mapping[str, Any]], incidents: Iterable[Mapping[str, Any]], limit: int = MAX_UPTIME_ROWS
) -> list[str]:
    """The components that get uptime bars, in display order.

    Always the market feed and its breaker; then, up to ``limit`` rows in all, every other
    breaker that is not closed now or has a listed incident (the API breakers of routes
    that never failed would only add rows of green).
    """
    chosen = [UPSTREAM, WEBSOCKET_BREAKER]
    extra: set[str] = set()
    for breaker in breakers:
        if breaker.get("state") in ("open", "half_open"):
            extra.add(BREAKER_PREFIX + str(breaker.get("name", "")))
    for incident in incidents:
        component = str(incident.get("component") or "")
        if component.startswith(BREAKER_PREFIX):
            extra.add(component)
    chosen += sorted(extra - set(chosen))
    return chosen[: max(0, limit)]


@dataclass(frozen=True, slots=True)
class HistorySnapshot:
    """What the last read found; ``version`` changes with every finished read."""

    version: int = 0
    components: tuple[Mapping[str, Any], ...] = ()  # HistoryStore.history() answers, in display order
    incidents: tuple[Mapping[str, Any], ...] = ()  # newest first
    transitions: tuple[Mapping[str, Any], ...] = ()  # newest first
    read_at: float | None = None  # wall time of the last successful read
    error: str = ""  # why the last read failed; "" when it succeeded

    @property
    def has_data(self) -> bool:
        return self.read_at is not None


class HistoryReader:
    """Reads incidents, breaker transitions and uptime bars for the status pages.

    ``breakers`` gives each breaker's ``name`` and ``state`` now, ``status_version`` the
    runtime's status version, and ``shutting_down`` whether the service is stopping (no
    new read starts then). The Runtime builds, starts and stops it.
    """

    def __init__(
        self,
        store: HistorySource,
        clock: Clock,
        *,
        breakers: Callable[[], Iterable[Mapping[str, str]]],
        status_version: Callable[[], int],
        shutting_down: Callable[[], bool] = lambda: False,
    ) -> None:
        self._store = store
        self._clock = clock
        self._breakers = breakers
        self._status_version = status_version
        self._shutting_down = shutting_down
        self.snapshot = HistorySnapshot()
        self.reads_total = 0
        self._started_at = -math.inf  # monotonic start of the running or last read
        self._started_version: int | None = None  # the runtime's status version then
        self._wanted_after = -math.inf  # the freshest start any page asked for
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._failure_log = LogThrottle(log, max_keys=1)  # a read that keeps failing: once, then at the house's rate
        self._closed = True  # until start()

    def request(self, fresh_after: float, status_version: int | None = None) -> None:
        """Ask for a read that starts at or after ``fresh_after`` (monotonic seconds).

        Never waits. Nothing happens if the running or the last read already started
        then, and under the same ``status_version`` (the runtime's, as the page knows
        it): a read from before a status change is not fresh, however recent. A moment
        in the future delays the read until then (a page passes "just after the status
        change", so the store has written the change first).
        """
        if self._closed or self._shutting_down():
            return  # no new task while the service stops (the runtime stops this reader)
        if status_version is not None and self._started_version not in (None, status_version):
            fresh_after = max(fresh_after, self._clock.monotonic() + SETTLE_S)
        if self._started_at >= fresh_after:
            return
        self._wanted_after = max(self._wanted_after, fresh_after)
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="history-reader")

    def start(self) -> None:
        """Accept requests (again, after a stop: the runtime calls this when it starts)."""
        self._closed = False

    async def stop(self) -> None:
        """Stop the reader's task (the runtime calls this before it stops the store)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        clock = self._clock
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            start = max(self._wanted_after, self._started_at + READ_GAP_S)
            delay = start - clock.monotonic()
            if delay > 0:
                await clock.sleep(delay)
            self._started_at = clock.monotonic()
            self._started_version = self._status_version()
            await self.read_once()
            if self._started_at < self._wanted_after:
                self._wake.set()  # someone asked for a fresher read while this one ran

    async def read_once(self) -> HistorySnapshot:
        """One read of everything the history section shows; never raises."""
        store = self._store
        previous = self.snapshot
        try:
            async with self._clock.timeout(READ_TIMEOUT_S):
                # One query at a time: the page holds at most one of the store's read slots.
                incidents = await store.incidents(MAX_INCIDENT_ROWS)
                transitions = await store.transitions(MAX_TRANSITION_ROWS)
                components = []
                for component in history_components(self._breakers(), incidents):
                    components.append(await store.history(component, HISTORY_DAYS))
        except StoreUnavailable as exc:
            error = str(exc) or "unavailable"
            if store.reachable is False and "unreachable" not in error:
                # "Not available yet" at start means it has not answered once: say which.
                error += " (the history database is unreachable)"
            snapshot = replace(previous, version=previous.version + 1, error=error)
            self._log_failure("history for the status page is unavailable: %s", exc)
        except TimeoutError:
            snapshot = replace(
                previous, version=previous.version + 1, error="the history database did not answer in time"
            )
            self._log_failure("history for the status page: no answer within %.0f s", READ_TIMEOUT_S)
        except Exception as exc:  # a bug must not end the reader; the page says history is unavailable
            snapshot = replace(previous, version=previous.version + 1, error="history could not be read")
            self._log_failure("history for the status page could not be read: %r", exc, exc_info=True)
        else:
            snapshot = HistorySnapshot(
                version=previous.version + 1,
                components=tuple(components),
                incidents=tuple(incidents),
                transitions=tuple(transitions),
                read_at=self._clock.wall(),
            )
            self._failure_log.reset("read")
        self.reads_total += 1
        self.snapshot = snapshot
        return snapshot

    def _log_failure(self, message: str, *args: Any, exc_info: bool = False) -> None:
        if self._failure_log.due(self._clock.monotonic(), "read") is not None:
            log.warning(message, *args, exc_info=exc_info)


@dataclass(frozen=True, slots=True)
class HistorySchedule:
    """One page's memory of its history requests (monotonic seconds)."""

    asked_at: float
    seen_version: int
    change_at: float | None = None  # the latest status change not asked about yet


def history_schedule(
    schedule: HistorySchedule, version: int, now: float, *, failing: bool
) -> tuple[HistorySchedule, float | None]:
    """Whether a page asks for history now: ``(new schedule, fresh_after or None)``.

    ``version`` is the runtime's status version; ``fresh_after`` is what to pass to
    ``HistoryReader.request`` (a read that starts at or after it).
    """
    change_at = schedule.change_at
    seen = schedule.seen_version
    if version != seen:
        seen, change_at = version, now
    if change_at is not None and now - schedule.asked_at >= HISTORY_MIN_INTERVAL_S:
        return HistorySchedule(now, seen, None), change_at + SETTLE_S
    idle_s = HISTORY_MIN_INTERVAL_S if failing else HISTORY_IDLE_S
    if now - schedule.asked_at >= idle_s:
        return HistorySchedule(now, seen, change_at), now - idle_s
    return HistorySchedule(schedule.asked_at, seen, change_at), None


__all__ = [
    "HISTORY_DAYS",
    "MAX_INCIDENT_ROWS",
    "MAX_TRANSITION_ROWS",
    "MAX_UPTIME_ROWS",
    "HistoryReader",
    "HistorySchedule",
    "HistorySnapshot",
    "history_components",
    "history_schedule",
]
