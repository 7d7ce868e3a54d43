"""One shared, paced reader of the history store for every open status page.

History changes rarely and its queries touch the database (in the store's own threads,
each bounded by its timeout), so the pages do not query it themselves. Each page asks
this reader for history "no older than" some moment (:meth:`HistoryReader.request`, which
never waits), and applies whatever :attr:`HistoryReader.snapshot` holds when its
``version`` changes. The reader runs at most one read at a time, starts reads at most
every ``READ_GAP_S`` however many pages ask, and runs the queries of one read one after
the other, so the status page never holds more than one of the store's read slots (the
history API keeps the others). Twenty open pages asking after the same status change cost
one read.

A read that fails (database down, slow, unusable) keeps the last good answer and records
why, so the page can say calmly that history is unavailable or may be out of date; the
rest of the page never waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Final

from backend_core.store import StoreUnavailable
from rxapp import history_logic

if TYPE_CHECKING:
    from backend_core.runtime import Runtime

log = logging.getLogger("rxapp.history")

# Reads start at most this often, whatever the number of pages asking: a flapping feed
# that changes state every second costs one read per gap, not one per page per change.
READ_GAP_S: Final = 2.0
# A read for a status change starts this long after it: the store writes the change
# within milliseconds of the signal, so the read finds it.
SETTLE_S: Final = 0.5
# One whole read (a handful of queries, each bounded by the store's own 10 s timeout).
READ_TIMEOUT_S: Final = 15.0
# A read that keeps failing is logged once, then at most this often.
ERROR_LOG_INTERVAL_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class HistorySnapshot:
    """What the last read found; ``version`` changes with every finished read."""

    version: int = 0
    components: tuple[Mapping[str, Any], ...] = ()  # Store.history() answers, in display order
    incidents: tuple[Mapping[str, Any], ...] = ()  # newest first
    transitions: tuple[Mapping[str, Any], ...] = ()  # newest first
    read_at: float | None = None  # wall time of the last successful read
    error: str = ""  # why the last read failed; "" when it succeeded

    @property
    def has_data(self) -> bool:
        return self.read_at is not None


class HistoryReader:
    """Reads incidents, breaker transitions and uptime bars for the status pages."""

    def __init__(self, runtime: Runtime, *, read_gap_s: float = READ_GAP_S, timeout_s: float = READ_TIMEOUT_S) -> None:
        self._runtime = runtime
        self._read_gap_s = read_gap_s
        self._timeout_s = timeout_s
        self.snapshot = HistorySnapshot()
        self.reads_total = 0
        self._started_at = -math.inf  # monotonic start of the running or last read
        self._started_version: int | None = None  # the runtime's status version then
        self._wanted_after = -math.inf  # the freshest start any page asked for
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_error_log: float | None = None
        self._closed = False

    def request(self, fresh_after: float, status_version: int | None = None) -> None:
        """Ask for a read that starts at or after ``fresh_after`` (monotonic seconds).

        Never waits. Nothing happens if the running or the last read already started
        then, and under the same ``status_version`` (the runtime's, as the page knows
        it): a read from before a status change is not fresh, however recent. A moment
        in the future delays the read until then (a page passes "just after the status
        change", so the store has written the change first).
        """
        if self._closed or self._runtime.shutting_down:
            return  # no new task while the app stops (the lifespan stops this reader)
        if status_version is not None and self._started_version not in (None, status_version):
            fresh_after = max(fresh_after, self._runtime.clock.monotonic() + SETTLE_S)
        if self._started_at >= fresh_after:
            return
        self._wanted_after = max(self._wanted_after, fresh_after)
        if self._wake is None:
            self._wake = asyncio.Event()
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="history-reader")

    def start(self) -> None:
        """Accept requests (again, after a stop: the app's lifespan calls this)."""
        self._closed = False

    async def stop(self) -> None:
        """Stop the reader's task (the app's lifespan calls this before the runtime stops)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        clock = self._runtime.clock
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            start = max(self._wanted_after, self._started_at + self._read_gap_s)
            delay = start - clock.monotonic()
            if delay > 0:
                await clock.sleep(delay)
            self._started_at = clock.monotonic()
            self._started_version = self._runtime.status_version
            await self.read_once()
            if self._started_at < self._wanted_after:
                self._wake.set()  # someone asked for a fresher read while this one ran

    async def read_once(self) -> HistorySnapshot:
        """One read of everything the history section shows; never raises."""
        runtime = self._runtime
        store = runtime.store
        previous = self.snapshot
        try:
            async with asyncio.timeout(self._timeout_s):
                # One query at a time: the page holds at most one of the store's read slots.
                incidents = await store.incidents(history_logic.MAX_INCIDENT_ROWS)
                transitions = await store.transitions(history_logic.MAX_TRANSITION_ROWS)
                breakers = [{"name": b.name, "state": str(b.state)} for b in runtime.breakers.snapshots()]
                components = []
                for component in history_logic.history_components(breakers, incidents):
                    components.append(await store.history(component, history_logic.HISTORY_DAYS))
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
            self._log_failure("history for the status page: no answer within %.0f s", self._timeout_s)
        except Exception as exc:  # a bug must not end the reader; the page says history is unavailable
            snapshot = replace(previous, version=previous.version + 1, error="history could not be read")
            self._log_failure("history for the status page could not be read: %r", exc, exc_info=True)
        else:
            snapshot = HistorySnapshot(
                version=previous.version + 1,
                components=tuple(components),
                incidents=tuple(incidents),
                transitions=tuple(transitions),
                read_at=runtime.clock.wall(),
            )
            self._last_error_log = None
        self.reads_total += 1
        self.snapshot = snapshot
        return snapshot

    def _log_failure(self, message: str, *args: Any, exc_info: bool = False) -> None:
        now = self._runtime.clock.monotonic()
        if self._last_error_log is None or now - self._last_error_log >= ERROR_LOG_INTERVAL_S:
            self._last_error_log = now
            log.warning(message, *args, exc_info=exc_info)


__all__ = ["HistoryReader", "HistorySnapshot"]
