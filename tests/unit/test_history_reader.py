"""The status pages' shared history reader: one paced read for many pages, calm failures, and when pages ask.

A fake store and a fake clock: no database, no sleeps (time moves only by ``advance``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from backend_core.clock import FakeClock
from backend_core.history.queries import StoreUnavailable
from backend_core.history.reader import (
    MAX_UPTIME_ROWS,
    READ_GAP_S,
    READ_TIMEOUT_S,
    SETTLE_S,
    HistoryReader,
    HistorySchedule,
    history_components,
    history_schedule,
)
from tests.helpers import callbacks_ran, turns_until


@dataclass
class FakeBreaker:
    name: str
    state: str = "closed"


@dataclass
class FakeBreakers:
    items: list[FakeBreaker] = field(default_factory=lambda: [FakeBreaker("websocket")])

    def snapshots(self) -> list[FakeBreaker]:
        return self.items


class FakeStore:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.running = 0
        self.most_at_once = 0
        self.fail: BaseException | None = None
        self.hang = False
        self.reachable: bool | None = True
        self.incident_rows: list[dict[str, Any]] = [
            {"id": "1", "component": "upstream", "kind": "upstream"},
            {"id": "2", "component": "breaker:api:/api/v1/status", "kind": "breaker"},
        ]

    async def _enter(self, *call: Any) -> None:
        self.calls.append(call)
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        try:
            await asyncio.sleep(0)
            if self.hang:
                await asyncio.Event().wait()
            if self.fail is not None:
                raise self.fail
        finally:
            self.running -= 1

    async def incidents(self, limit: int = 50, component: str | None = None) -> list[dict[str, Any]]:
        await self._enter("incidents", limit)
        return list(self.incident_rows)

    async def transitions(self, limit: int = 100, name: str | None = None) -> list[dict[str, Any]]:
        await self._enter("transitions", limit)
        return [{"name": "websocket", "from_state": "closed", "to_state": "open", "reason": "failure_threshold"}]

    async def history(self, component: str = "upstream", days: int = 90) -> dict[str, Any]:
        await self._enter("history", component, days)
        return {"component": component, "days": days, "uptime_pct": {}, "bars": []}


@dataclass
class FakeRuntime:
    """What the Runtime hands the reader: the store, the clock, breakers, status version, shutdown flag."""

    clock: FakeClock = field(default_factory=FakeClock)
    store: FakeStore = field(default_factory=FakeStore)
    breakers: FakeBreakers = field(default_factory=FakeBreakers)
    status_version: int = 0
    shutting_down: bool = False

    def reader(self) -> HistoryReader:
        return HistoryReader(
            self.store,
            self.clock,
            breakers=lambda: [{"name": b.name, "state": b.state} for b in self.breakers.snapshots()],
            status_version=lambda: self.status_version,
            shutting_down=lambda: self.shutting_down,
        )


RUNTIMES: dict[int, FakeRuntime] = {}


@pytest.fixture
async def reader() -> AsyncIterator[HistoryReader]:
    runtime = FakeRuntime()
    reader = runtime.reader()
    RUNTIMES[id(reader)] = runtime
    reader.start()
    try:
        yield reader
    finally:
        await reader.stop()
        del RUNTIMES[id(reader)]


def runtime_of(reader: HistoryReader) -> FakeRuntime:
    return RUNTIMES[id(reader)]


def waiting(reader: HistoryReader) -> bool:
    """The reader's task is gone, or parked: on the clock, or for a request (none is pending)."""
    runtime = runtime_of(reader)
    task = reader._task
    if task is None or task.done():
        return True
    if runtime.store.running:
        return False  # a read is in progress
    return runtime.clock.sleepers > 0 or (reader._wake is not None and not reader._wake.is_set())


async def run_until_waiting(reader: HistoryReader) -> None:
    """Let the reader act on what the test just did (a request, a clock advance) until it waits again."""
    await callbacks_ran()  # a woken task runs to its next wait first
    await turns_until(lambda: waiting(reader), "the history reader to wait")


async def reads_by_then(reader: HistoryReader) -> int:
    """How many reads the reader has made once it waits again (``run_until_waiting``)."""
    await run_until_waiting(reader)
    return reader.reads_total


async def test_a_read_fetches_incidents_transitions_and_the_bars_of_each_component(reader: HistoryReader) -> None:
    snapshot = await reader.read_once()
    assert snapshot.version == 1 and snapshot.error == "" and snapshot.has_data
    assert [c["component"] for c in snapshot.components] == [
        "upstream",
        "breaker:websocket",
        "breaker:api:/api/v1/status",  # it had an incident
    ]
    assert [i["id"] for i in snapshot.incidents] == ["1", "2"]
    assert len(snapshot.transitions) == 1
    store = runtime_of(reader).store
    assert ("incidents", 20) in store.calls and ("transitions", 20) in store.calls
    assert ("history", "upstream", 90) in store.calls
    # One query at a time: the page never holds more than one of the store's read slots.
    assert store.most_at_once == 1


async def test_a_failed_read_keeps_the_last_good_answer_and_says_why(reader: HistoryReader) -> None:
    good = await reader.read_once()
    runtime_of(reader).store.fail = StoreUnavailable("the history database is unreachable")
    failed = await reader.read_once()
    assert failed.version == good.version + 1
    assert failed.error == "the history database is unreachable"
    assert failed.has_data and failed.incidents == good.incidents and failed.read_at == good.read_at
    runtime_of(reader).store.fail = None
    again = await reader.read_once()
    assert again.error == "" and again.version == failed.version + 1


async def test_a_database_that_never_answered_leaves_no_data(reader: HistoryReader) -> None:
    store = runtime_of(reader).store
    store.fail, store.reachable = StoreUnavailable("the history database is not available yet"), None
    snapshot = await reader.read_once()
    assert not snapshot.has_data and snapshot.error == "the history database is not available yet"
    store.reachable = False  # it was tried and did not answer: not merely starting
    snapshot = await reader.read_once()
    assert snapshot.error == "the history database is not available yet (the history database is unreachable)"


async def test_a_hung_database_and_a_bug_are_bounded_and_never_raise(reader: HistoryReader) -> None:
    runtime = runtime_of(reader)
    runtime.store.hang = True
    read = asyncio.ensure_future(reader.read_once())
    await turns_until(lambda: runtime.store.running and runtime.clock.deadlines, "the read on the hung store")
    assert not read.done()
    runtime.clock.advance(READ_TIMEOUT_S)  # the read's deadline runs on the clock
    assert (await read).error == "the history database did not answer in time"
    runtime_of(reader).store.hang = False
    runtime_of(reader).store.fail = RuntimeError("a bug")
    assert (await reader.read_once()).error == "history could not be read"


async def test_many_pages_asking_at_once_cost_one_read(reader: HistoryReader) -> None:
    clock = runtime_of(reader).clock
    for _ in range(20):
        reader.request(clock.monotonic() - 10)
    assert await reads_by_then(reader) == 1
    # Pages that load later and accept a read this recent cause none.
    clock.advance(3)
    reader.request(clock.monotonic() - 10)
    assert await reads_by_then(reader) == 1


async def test_a_read_asked_for_just_after_a_change_waits_for_that_moment(reader: HistoryReader) -> None:
    clock = runtime_of(reader).clock
    change_at = clock.monotonic()
    for _ in range(5):
        reader.request(change_at + 0.5)
    assert await reads_by_then(reader) == 0
    clock.advance(0.5)
    assert await reads_by_then(reader) == 1
    reader.request(change_at + 0.5)  # served already
    assert await reads_by_then(reader) == 1


async def test_a_recent_read_from_before_a_status_change_is_not_fresh(reader: HistoryReader) -> None:
    runtime = runtime_of(reader)
    reader.request(runtime.clock.monotonic() - 10, runtime.status_version)
    assert await reads_by_then(reader) == 1
    runtime.clock.advance(3)
    reader.request(runtime.clock.monotonic() - 10, runtime.status_version)  # nothing changed
    assert await reads_by_then(reader) == 1
    runtime.status_version += 1  # e.g. the feed recovered: the incident is no longer ongoing
    for _ in range(20):  # every page that loads now asks; one read, just after the change
        reader.request(runtime.clock.monotonic() - 10, runtime.status_version)
    assert await reads_by_then(reader) == 1
    runtime.clock.advance(SETTLE_S)
    assert await reads_by_then(reader) == 2
    reader.request(runtime.clock.monotonic() - 10, runtime.status_version)
    assert await reads_by_then(reader) == 2


async def test_reads_are_paced_however_often_pages_ask(reader: HistoryReader) -> None:
    clock = runtime_of(reader).clock
    reader.request(clock.monotonic())
    assert await reads_by_then(reader) == 1
    # A fresher read asked for right away waits for the gap; asks meanwhile join it.
    for _ in range(4):
        clock.advance(0.25)
        reader.request(clock.monotonic())
        await run_until_waiting(reader)
    assert reader.reads_total == 1
    clock.advance(READ_GAP_S)
    assert await reads_by_then(reader) == 2


async def test_stop_ends_the_readers_task_and_no_request_starts_another(reader: HistoryReader) -> None:
    clock = runtime_of(reader).clock
    reader.request(clock.monotonic())
    await run_until_waiting(reader)
    task = reader._task
    assert task is not None and not task.done()
    await reader.stop()
    assert task.done()
    clock.advance(READ_GAP_S)
    reader.request(clock.monotonic())  # a page's last loop turn while the app stops
    assert reader._task is None
    reader.start()  # a lifespan that starts again
    reader.request(clock.monotonic())
    assert await reads_by_then(reader) == 2


async def test_a_reader_that_was_never_started_reads_nothing() -> None:
    runtime = FakeRuntime()
    reader = runtime.reader()
    reader.request(runtime.clock.monotonic())
    assert reader._task is None and reader.reads_total == 0


async def test_no_reads_start_while_the_app_shuts_down(reader: HistoryReader) -> None:
    runtime_of(reader).shutting_down = True
    reader.request(runtime_of(reader).clock.monotonic())
    await run_until_waiting(reader)
    assert reader.reads_total == 0 and reader._task is None


# ---------------------------------------------------------------------------- which components get bars


def test_uptime_rows_are_the_feed_its_breaker_and_breakers_with_something_to_show() -> None:
    breakers = [
        {"name": "websocket", "state": "closed"},
        {"name": "api:/api/v1/status", "state": "closed"},  # never failed: no row of green
        {"name": "api:/api/v1/retry", "state": "open"},
    ]
    incidents = [
        {"component": "upstream", "kind": "upstream"},
        {"component": "breaker:api:/api/v1/ticks/{symbol}", "kind": "breaker"},
    ]
    assert history_components(breakers, incidents) == [
        "upstream",
        "breaker:websocket",
        "breaker:api:/api/v1/retry",
        "breaker:api:/api/v1/ticks/{symbol}",
    ]


def test_uptime_rows_are_bounded() -> None:
    breakers = [{"name": f"api:/r{i}", "state": "open"} for i in range(50)]
    chosen = history_components(breakers, [], limit=MAX_UPTIME_ROWS)
    assert len(chosen) == MAX_UPTIME_ROWS
    assert chosen[:2] == ["upstream", "breaker:websocket"]


# ---------------------------------------------------------------------------- when a page asks again


def test_a_page_asks_after_a_status_change_at_most_every_10_s_and_just_after_the_latest_change() -> None:
    schedule = HistorySchedule(asked_at=100.0, seen_version=1)
    schedule, ask = history_schedule(schedule, 2, 101.0, failing=False)  # a change, too soon after loading
    assert ask is None and schedule.change_at == 101.0
    schedule, ask = history_schedule(schedule, 3, 105.0, failing=False)  # another: the latest counts
    assert ask is None and schedule.change_at == 105.0
    schedule, ask = history_schedule(schedule, 3, 110.0, failing=False)
    assert ask == 105.0 + SETTLE_S
    assert schedule == HistorySchedule(asked_at=110.0, seen_version=3, change_at=None)
    schedule, ask = history_schedule(schedule, 3, 150.0, failing=False)  # nothing changed
    assert ask is None


def test_a_quiet_page_asks_once_a_minute_and_every_10_s_while_reads_fail() -> None:
    schedule = HistorySchedule(asked_at=100.0, seen_version=1)
    assert history_schedule(schedule, 1, 159.0, failing=False)[1] is None
    schedule, ask = history_schedule(schedule, 1, 160.0, failing=False)
    assert ask == 100.0 and schedule.asked_at == 160.0  # any read from the last minute will do
    schedule, ask = history_schedule(schedule, 1, 170.0, failing=True)
    assert ask == 160.0
