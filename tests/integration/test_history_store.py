"""The history store against real databases: a SQLite file and a PostgreSQL server.

PostgreSQL comes from ``TEST_POSTGRES_URL`` (``eval "$(.ci/start-postgres)"`` starts
Debian's server on 127.0.0.1 and prints it; ``.ci/run`` does that). Each test gets a
database of its own. Without a server these tests skip and say why, unless
``REQUIRE_POSTGRES_TESTS`` is set (CI), where they fail instead.

Outages are real: for SQLite another connection holds the write lock (``BEGIN EXCLUSIVE``);
for PostgreSQL the store talks to the server through a loopback TCP proxy that the test
cuts (every connection reset, the port refusing) and restores.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import make_url
from starlette.applications import Starlette

from backend_core.breakers.breaker import Transition
from backend_core.breakers.core import BreakerState
from backend_core.clock import SystemClock
from backend_core.config import load_settings
from backend_core.events import ErrorInfo, LinkState, UpstreamSnapshot
from backend_core.history.db import (
    HISTORY_TABLES,
    INCIDENTS,
    SAMPLES,
    VERSION_TABLE,
    alembic_config,
    create_db_engine,
    head_revision,
    migrate,
    normalize_db_url,
    schema_revision,
)
from backend_core.history.queries import MAX_CONCURRENT_QUERIES, StoreUnavailable
from backend_core.history.store import HistoryStore
from backend_core.history.writer import WriterLimits
from backend_core.history_api import history_routes
from backend_core.incidents import IncidentFeed, Recovery
from tests.helpers import until

# Every wait in these tests is bounded by one of these.
WRITE_TIMEOUT_S = 15.0
STATE_TIMEOUT_S = 10.0
ROOT = Path(__file__).resolve().parents[2]
# 2025-01-10T00:00:00Z: a whole UTC day, so per-day bars are exact.
DAY0 = 1_736_467_200.0


class StepClock(SystemClock):
    """Real monotonic time and sleeps; a wall clock the test sets (or the real one)."""

    def __init__(self, wall: float | None = None) -> None:
        self.now = wall

    def wall(self) -> float:
        return self.now if self.now is not None else time.time()


def snap(state: LinkState, error: str | None = None, attempt: int = 0) -> UpstreamSnapshot:
    return UpstreamSnapshot(
        state=state,
        since=0.0,
        url="wss://example/websockets/v3",
        simulated=True,
        attempt=attempt,
        last_error=ErrorInfo(error, f"{error} happened", 0.0) if error else None,
    )


def transition(
    name: str, to_state: BreakerState, reason: str, at: float, from_state: BreakerState | None = None
) -> Any:
    previous = from_state or (BreakerState.OPEN if to_state != BreakerState.OPEN else BreakerState.CLOSED)
    return Transition(name, previous, to_state, reason, time.monotonic(), at)


# ---------------------------------------------------------------------------- databases


class TcpProxy:
    """A loopback TCP proxy that can be cut (connections reset, port refusing) and restored."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def restore(self) -> None:
        await self.start()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.ensure_future(self._serve(reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
            self._writers.add(upstream_writer)
            await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, upstream_writer):
                if w is not None:
                    self._writers.discard(w)
                    w.transport.abort()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.transport.abort()


@dataclass
class Database:
    kind: str
    url: str
    begin_outage: Callable[[], Awaitable[None]]
    end_outage: Callable[[], Awaitable[None]]


def _postgres_base_url() -> str:
    url = os.environ.get("TEST_POSTGRES_URL")
    required = bool(os.environ.get("REQUIRE_POSTGRES_TESTS"))
    if not url:
        reason = 'no PostgreSQL server: run eval "$(.ci/start-postgres)" to start one and set TEST_POSTGRES_URL'
        if required:
            pytest.fail(f"REQUIRE_POSTGRES_TESTS is set but {reason}")
        pytest.skip(reason)
    try:
        with psycopg.connect(_libpq(url), connect_timeout=5):
            pass
    except psycopg.Error as exc:
        reason = f"PostgreSQL at TEST_POSTGRES_URL is not reachable: {type(exc).__name__}: {exc}"
        if required:
            pytest.fail(reason)
        pytest.skip(reason)
    return url


def _libpq(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


@contextlib.contextmanager
def _fresh_postgres_database(base_url: str) -> Iterator[str]:
    name = f"deriv_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_libpq(base_url), autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(base_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(_libpq(base_url), autocommit=True, connect_timeout=5) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def db(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[Database]:
    if request.param == "sqlite":
        path = tmp_path / "history" / "status.db"
        path.parent.mkdir()
        blocker: list[sqlite3.Connection] = []

        async def begin() -> None:
            def lock() -> sqlite3.Connection:
                connection = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
                connection.execute("BEGIN EXCLUSIVE")
                return connection

            blocker.append(await asyncio.to_thread(lock))

        async def end() -> None:
            connection = blocker.pop()
            connection.execute("COMMIT")
            connection.close()

        yield Database("sqlite", f"sqlite:///{path}", begin, end)
        for connection in blocker:
            connection.close()
        return

    base = _postgres_base_url()
    with _fresh_postgres_database(base) as url:
        parsed = make_url(url)
        proxy = TcpProxy(parsed.host or "127.0.0.1", parsed.port or 5432)
        await proxy.start()
        try:
            proxied = parsed.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
            yield Database("postgres", proxied, proxy.cut, proxy.restore)
        finally:
            await proxy.cut()


class WiredStore:
    """A :class:`HistoryStore` wired as the Runtime wires it.

    Status snapshots and breaker transitions go to the store (uptime samples, the
    breaker log) and to one :class:`IncidentFeed` whose incidents the store records; a
    stop closes what is open first, a start begins a fresh run. Everything else is the
    store's own.
    """

    def __init__(self, store: HistoryStore, clock: SystemClock) -> None:
        self.store = store
        self.feed = IncidentFeed(clock)
        self.feed.subscribe(store.record_incidents)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    def record_status(self, snapshot: UpstreamSnapshot) -> None:
        self.store.record_status(snapshot)
        self.feed.status(snapshot)

    def record_transition(self, transition: Transition) -> None:
        self.store.record_transition(transition)
        self.feed.transition(transition)

    async def start(self) -> None:
        self.feed.reset()
        await self.store.start()

    async def stop(self, **kwargs: Any) -> None:
        self.feed.close_all()
        await self.store.stop(**kwargs)


def make_store(db: Database, clock: SystemClock | None = None, **overrides: Any) -> Any:
    environment = {"HISTORY_RETENTION_DAYS": str(overrides.pop("retention_days", 90))}
    limits = {"retry_initial_s": 0.05, "retry_max_s": 0.2, "db_timeout_s": 0.5 if db.kind == "sqlite" else 2.0}
    limits.update({k: overrides.pop(k) for k in list(overrides) if k in WriterLimits.__dataclass_fields__})
    options: dict[str, Any] = {
        "db_url": db.url,
        "instance": "test-host",
        "limits": WriterLimits(**limits),
        "query_timeout_s": 5.0,
        "start_timeout_s": 20.0,
    }
    options.update(overrides)
    clock = clock or StepClock()
    return WiredStore(HistoryStore(load_settings(environment), clock, **options), clock)


@contextlib.asynccontextmanager
async def running(store: Any) -> AsyncIterator[Any]:
    await store.start()
    try:
        yield store
    finally:
        await store.stop()
        assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("store-")], "a store task was left"


# ---------------------------------------------------------------------------- schema


async def test_migrations_create_the_schema_on_a_fresh_database_and_are_idempotent(db: Database) -> None:
    url = normalize_db_url(db.url)
    if db.kind == "sqlite":
        os.makedirs(os.path.dirname(make_url(db.url).database or "."), exist_ok=True)
    engine = create_db_engine(url)
    try:

        def check() -> None:
            assert schema_revision(engine) is None
            migrate(engine)
            migrate(engine)  # again: nothing to do, no error
            assert schema_revision(engine) == head_revision()
            names = set(sa.inspect(engine).get_table_names())
            assert set(HISTORY_TABLES) | {VERSION_TABLE} <= names
            with engine.connect() as connection:
                context = MigrationContext.configure(
                    connection,
                    opts={
                        "compare_type": True,
                        "include_name": lambda n, t, p: t != "table" or n in HISTORY_TABLES,
                    },
                )
                assert compare_metadata(context, INCIDENTS.metadata) == [], "the models and the migrations differ"

        await asyncio.to_thread(check)
    finally:
        engine.dispose()


async def test_the_store_creates_a_fresh_database_on_first_start(db: Database) -> None:
    async with running(make_store(db)) as store:
        assert store.schema_ready and store.reachable is True
        assert await store.incidents() == []
        assert store.health_check()[0].status == "pass"
        if db.kind == "sqlite":
            assert await asyncio.to_thread(os.path.exists, make_url(db.url).database or "")


# Rows as revision 0001's store wrote them (prose), and what 0002 makes of them.
OLD_ROWS: list[tuple[dict[str, Any], tuple[str, str | None, int | None, str]]] = [
    (
        {
            "kind": "upstream",
            "cause": "connection lost",
            "recovery": "reconnected after 3 attempts",
            "attempts": 3,
            "message": "ConnectionLost happened",
            "error_code": "ConnectionLost",
        },
        ("connection_lost", "reconnected", 3, "ConnectionLost happened"),
    ),
    (
        {
            "kind": "upstream",
            "cause": "could not connect",
            "recovery": "reconnected after 1 attempt",
            "attempts": None,
            "message": "refused",
            "error_code": "ConnectionRefused",
        },
        ("could_not_connect", "reconnected", 1, "refused"),
    ),
    (
        {
            "kind": "upstream",
            "cause": "planned maintenance",
            "recovery": "manual retry",
            "attempts": 2,
            "message": "The market data link is down.",
            "error_code": None,
        },
        ("planned_maintenance", "manual_retry", 2, ""),
    ),
    (
        {
            "kind": "upstream",
            "cause": "circuit breaker open",
            "recovery": "not recovered: the service stopped",
            "attempts": 0,
            "message": "x",
            "error_code": "X",
        },
        ("circuit_open", "service_stopped", 0, "x"),
    ),
    (
        {
            "kind": "upstream",
            "cause": "connection lost",
            "recovery": "not recovered: the service restarted",
            "attempts": None,
            "message": "y",
            "error_code": "Y",
        },
        ("connection_lost", "service_restarted", None, "y"),
    ),
    (
        {
            "kind": "breaker",
            "cause": "circuit breaker opened",
            "recovery": "breaker probe",
            "attempts": None,
            "message": "Circuit 'websocket' opened: too many consecutive failures.",
            "error_code": "failure_threshold",
        },
        ("breaker_opened", "breaker_probe", None, ""),
    ),
    (
        {
            "kind": "breaker",
            "cause": "circuit breaker opened",
            "recovery": "reset by an admin",
            "attempts": None,
            "message": "Circuit 'api:/x' opened: failure rate over the threshold.",
            "error_code": "failure_rate",
        },
        ("breaker_opened", "reset", None, ""),
    ),
    (
        {
            "kind": "breaker",
            "cause": "circuit breaker opened",
            "recovery": None,
            "attempts": None,
            "message": "Circuit 'api:/y' opened: the recovery probe failed.",
            "error_code": "probe_failed",
        },
        ("breaker_opened", None, None, ""),
    ),
]


async def test_the_migration_turns_old_prose_rows_into_codes_and_back(db: Database) -> None:
    url = normalize_db_url(db.url)
    engine = create_db_engine(url)
    rows = []
    day_ago = time.time() - 86_400.0  # inside the retention: the store's first prune keeps them
    for i, (old, _) in enumerate(OLD_ROWS):
        component = {5: "breaker:websocket", 6: "breaker:api:/x", 7: "breaker:api:/y"}.get(i, "upstream")
        rows.append(
            {
                **old,
                "key": f"k{i}",
                "instance": "old-host",
                "component": component,
                "started_at": datetime.fromtimestamp(day_ago + i * 60, tz=UTC),
                "ended_at": None if old["recovery"] is None else datetime.fromtimestamp(day_ago + i * 60 + 30, tz=UTC),
                "planned": old["cause"] == "planned maintenance",
            }
        )

    def at_0001_with_old_rows() -> None:
        with engine.begin() as connection:
            command.upgrade(alembic_config(connection), "0001")
            connection.execute(sa.insert(INCIDENTS), rows)

    def read() -> list[tuple[Any, ...]]:
        with engine.connect() as connection:
            query = sa.select(INCIDENTS.c.cause, INCIDENTS.c.recovery, INCIDENTS.c.attempts, INCIDENTS.c.message)
            return [tuple(row) for row in connection.execute(query.order_by(INCIDENTS.c.key))]

    def downgrade() -> None:
        with engine.begin() as connection:
            command.downgrade(alembic_config(connection), "0001")

    try:
        await asyncio.to_thread(at_0001_with_old_rows)
        assert await asyncio.to_thread(schema_revision, engine) == "0001"
        await asyncio.to_thread(migrate, engine)
        assert await asyncio.to_thread(schema_revision, engine) == head_revision()
        assert await asyncio.to_thread(read) == [new for _, new in OLD_ROWS]
        # The way back gives 0001's words again (for the rows 0001 could write).
        await asyncio.to_thread(downgrade)
        back = await asyncio.to_thread(read)
        assert [row[:2] for row in back] == [(old["cause"], old["recovery"]) for old, _ in OLD_ROWS]
        assert back[5][3] == "Circuit 'websocket' opened: too many consecutive failures."
        await asyncio.to_thread(migrate, engine)
    finally:
        await asyncio.to_thread(engine.dispose)
    # The store reads the converted rows as any other.
    async with running(make_store(db, instance="new-host")) as store:
        newest = await store.incidents(limit=1, component="upstream")
        assert (newest[0]["cause"], newest[0]["recovery"], newest[0]["attempts"]) == (
            "connection_lost",
            "service_restarted",
            None,
        )


# ---------------------------------------------------------------------------- history survives a restart


async def test_history_survives_a_restart(db: Database) -> None:
    clock = StepClock(DAY0)
    async with running(make_store(db, clock)) as store:
        store.record_breaker_state("websocket", "closed")
        store.record_status(snap(LinkState.CONNECTED))
        clock.now = DAY0 + 600
        store.record_status(snap(LinkState.RECONNECTING, "ConnectionLost"))
        store.record_transition(transition("websocket", BreakerState.OPEN, "failure_threshold", DAY0 + 600))
        for attempt in (1, 2, 3):
            store.record_status(snap(LinkState.RECONNECTING, "ConnectionRefused", attempt))
        clock.now = DAY0 + 660
        store.record_transition(transition("websocket", BreakerState.HALF_OPEN, "recovery_timeout", DAY0 + 660))
        store.record_transition(
            transition("websocket", BreakerState.CLOSED, "probe_succeeded", DAY0 + 660, BreakerState.HALF_OPEN)
        )
        store.record_status(snap(LinkState.CONNECTED))
        clock.now = DAY0 + 3600
        assert await store.wait_idle(WRITE_TIMEOUT_S)

    # A new process on the same database.
    async with running(make_store(db, clock)) as again:
        assert {i["component"] for i in await again.incidents()} == {"upstream", "breaker:websocket"}
        upstream = await again.incidents(component="upstream")
        assert len(upstream) == 1
        assert upstream[0] | {"id": None} == {
            "id": None,
            "component": "upstream",
            "kind": "upstream",
            "started_at": "2025-01-10T00:10:00.000Z",
            "ended_at": "2025-01-10T00:11:00.000Z",
            "ongoing": False,
            "duration_s": 60.0,
            "cause": "connection_lost",
            "error_code": "ConnectionLost",
            "message": "ConnectionLost happened",
            "recovery": "breaker_probe",
            "attempts": 3,
            "planned": False,
        }
        transitions = await again.transitions()
        assert [t["to_state"] for t in transitions] == ["closed", "half_open", "open"]
        assert transitions[-1] == {
            "name": "websocket",
            "from_state": "closed",
            "to_state": "open",
            "reason": "failure_threshold",
            "at": "2025-01-10T00:10:00.000Z",
        }
        history = await again.history("upstream", days=7)
        assert [bar["date"] for bar in history["bars"]][-1] == "2025-01-10"
        assert len(history["bars"]) == 7
        today = history["bars"][-1]
        assert today["uptime_pct"] == 98.333  # 60 s down in the 3600 s observed
        assert (today["worst_status"], today["observed_s"], today["down_s"], today["incidents"]) == (
            "down",
            3600.0,
            60.0,
            1,
        )
        assert history["bars"][0]["worst_status"] == "no_data" and history["bars"][0]["uptime_pct"] is None
        assert history["uptime_pct"]["24h"] == 98.333 and history["uptime_pct"]["90d"] == 98.333
        breaker = await again.history("breaker:websocket", days=1)
        assert breaker["bars"][0]["uptime_pct"] == 98.333 and breaker["bars"][0]["incidents"] == 1
        assert (await again.history("nothing-here", days=2))["uptime_pct"]["24h"] is None


async def test_history_includes_the_minutes_not_written_yet(db: Database) -> None:
    clock = StepClock(DAY0)
    async with running(make_store(db, clock)) as store:
        store.record_status(snap(LinkState.CONNECTED))
        clock.now = DAY0 + 30
        store.record_status(snap(LinkState.RECONNECTING, "ConnectionLost"))
        clock.now = DAY0 + 40  # the current minute has not ended: nothing is in the database yet
        history = await store.history("upstream", 1)
        assert history["uptime_pct"]["24h"] == 75.0
        assert (history["bars"][0]["observed_s"], history["bars"][0]["worst_status"]) == (40.0, "down")


async def test_incidents_open_at_shutdown_are_closed_and_those_of_a_crash_at_the_next_start(db: Database) -> None:
    clock = StepClock(DAY0)
    async with running(make_store(db, clock)) as store:
        store.record_status(snap(LinkState.CONNECTED))
        store.record_status(snap(LinkState.RECONNECTING, "ConnectionLost"))
    [stopped] = await _incidents_after_restart(db, clock)
    assert stopped["recovery"] == Recovery.SERVICE_STOPPED and not stopped["ongoing"]

    # A crash: the process dies without closing its open incident.
    crashed = make_store(db, clock)
    await crashed.start()
    crashed.record_status(snap(LinkState.CONNECTED))
    crashed.record_status(snap(LinkState.RECONNECTING, "HeartbeatTimeout"))
    assert await crashed.wait_idle(WRITE_TIMEOUT_S)
    await crashed.store.stop()  # not the Runtime's stop: nothing closes the open incident
    # Another instance sharing the database leaves it alone ...
    async with running(make_store(db, clock, instance="other-host")) as other:
        assert (await other.incidents(limit=1))[0]["ongoing"] is True
    # ... the restarted one closes it.
    async with running(make_store(db, clock)) as restarted:
        newest = (await restarted.incidents(limit=1))[0]
        assert (newest["error_code"], newest["recovery"], newest["ongoing"]) == (
            "HeartbeatTimeout",
            Recovery.SERVICE_RESTARTED,
            False,
        )


async def _incidents_after_restart(db: Database, clock: StepClock) -> list[dict[str, Any]]:
    async with running(make_store(db, clock)) as store:
        return await store.incidents()


# ---------------------------------------------------------------------------- the database goes away


async def test_events_wait_while_the_database_is_down_and_are_written_when_it_is_back(db: Database) -> None:
    async with running(make_store(db)) as store:
        await db.begin_outage()
        try:
            store.record_status(snap(LinkState.CONNECTED))
            store.record_status(snap(LinkState.RECONNECTING, "ConnectionLost"))
            store.record_transition(transition("websocket", BreakerState.OPEN, "failure_threshold", time.time()))
            await until(lambda: store.reachable is False, STATE_TIMEOUT_S, what="the store to notice the outage")
            [reachable, pending, dropped] = store.health_check()
            assert reachable.status == "warn" and "unreachable" in reachable.output
            assert pending.observed_value == 3 and dropped.observed_value == 0
            assert store.snapshot()["last_error"]
            if db.kind == "postgres":
                with pytest.raises(StoreUnavailable):
                    await store.incidents()
        finally:
            await db.end_outage()
        assert await store.wait_idle(WRITE_TIMEOUT_S), store.snapshot()
        assert store.reachable is True and store.health_check()[0].status == "pass"
        incidents = await store.incidents()
        assert {i["component"] for i in incidents} == {"upstream", "breaker:websocket"}
        assert (await store.transitions())[0]["reason"] == "failure_threshold"
        assert store.snapshot()["dropped_events_total"] == 0


async def test_the_database_down_at_start_does_not_stop_the_start(db: Database) -> None:
    await db.begin_outage()
    store = make_store(db, start_timeout_s=0.5)
    try:
        await store.start()  # returns (after start_timeout_s at most) with the database down
        store.record_status(snap(LinkState.CONNECTED))
        store.record_status(snap(LinkState.RECONNECTING, "ConnectionLost"))
        await until(lambda: store.reachable is False, STATE_TIMEOUT_S, what="the start to see the database down")
        assert not store.schema_ready
        assert store.health_check()[0].status == "warn"
        with pytest.raises(StoreUnavailable):
            await store.history()
    finally:
        await db.end_outage()
    try:
        await until(lambda: store.schema_ready, WRITE_TIMEOUT_S, what="the schema once the database is back")
        assert await store.wait_idle(WRITE_TIMEOUT_S)
        assert [i["cause"] for i in await store.incidents()] == ["connection_lost"]
    finally:
        await store.stop()


async def test_overflow_while_the_database_is_down_is_counted(db: Database) -> None:
    async with running(make_store(db, max_pending_records=5)) as store:
        await db.begin_outage()
        try:
            for i in range(12):
                store.record_transition(
                    transition(f"api:/r{i}", BreakerState.HALF_OPEN, "manual_probe", time.time(), BreakerState.OPEN)
                )
            snapshot = store.snapshot()
            assert snapshot["pending_records"] == 5
            assert snapshot["dropped_events_total"] == 7 and snapshot["dropped_by_kind"]["record"] == 7
        finally:
            await db.end_outage()
        assert await store.wait_idle(WRITE_TIMEOUT_S)
        assert sorted(t["name"] for t in await store.transitions()) == sorted(f"api:/r{i}" for i in range(5))
        assert store.health_check()[2].observed_value == 7


async def test_stop_flushes_within_its_bound_even_when_the_database_is_down(db: Database) -> None:
    store = make_store(db)
    await store.start()
    await db.begin_outage()
    try:
        store.record_status(snap(LinkState.CONNECTED))
        store.record_status(snap(LinkState.RECONNECTING, "ConnectionLost"))
        await until(lambda: store.reachable is False, STATE_TIMEOUT_S, what="the outage")
        await store.stop(timeout_s=1.0)  # returns although nothing can be written
        assert store.snapshot()["dropped_by_kind"]["shutdown"] >= 2
        assert not store.writer.records and not store.writer.samples
    finally:
        await db.end_outage()


async def test_stop_writes_what_is_queued_when_the_database_is_up(db: Database) -> None:
    clock = StepClock(DAY0)
    store = make_store(db, clock)
    await store.start()
    store.record_status(snap(LinkState.CONNECTED))
    clock.now = DAY0 + 90
    store.record_status(snap(LinkState.RECONNECTING, "ConnectionLost"))
    clock.now = DAY0 + 100
    await store.stop()
    assert store.snapshot()["dropped_events_total"] == 0
    async with running(make_store(db, clock)) as again:
        [incident] = await again.incidents()
        assert incident["recovery"] == Recovery.SERVICE_STOPPED
        # The partial minute written at stop is there too: 100 s observed, 10 s down.
        today = (await again.history("upstream", 1))["bars"][0]
        assert (today["observed_s"], today["down_s"]) == (100.0, 10.0)


async def test_reads_that_hang_never_delay_writes(db: Database) -> None:
    async with running(make_store(db)) as store:
        assert await store.incidents() == []  # the read pool is open (a first connection may be slow)
        store.queries.timeout_s = 0.5  # from now on reads give up quickly
        engine = store.queries.engine
        release = threading.Event()

        def hang_selects(connection: Any, cursor: Any, statement: str, *args: Any) -> None:
            if statement.lstrip().upper().startswith("SELECT"):
                release.wait(timeout=60)  # a database that does not answer reads

        sa.event.listen(engine, "before_cursor_execute", hang_selects)
        try:
            # Every read thread ends up stuck; every caller gives up at its timeout.
            answers = await asyncio.gather(
                *(store.incidents() for _ in range(MAX_CONCURRENT_QUERIES + 2)), return_exceptions=True
            )
            assert all(isinstance(answer, StoreUnavailable) for answer in answers), answers
            assert store.queries.running == MAX_CONCURRENT_QUERIES, "timed-out reads keep their threads"
            # Writes land all the same: the writer has a thread and a connection of its own.
            store.record_status(snap(LinkState.CONNECTED))
            store.record_status(snap(LinkState.RECONNECTING, "ConnectionLost"))
            store.record_transition(transition("websocket", BreakerState.OPEN, "failure_threshold", time.time()))
            assert await store.wait_idle(WRITE_TIMEOUT_S), store.snapshot()
            written = store.snapshot()["written_by_kind"]
            assert (written["incident"], written["transition"]) == (2, 1)  # the outage and the breaker
            assert store.reachable is True and store.health_check()[0].status == "pass"
            # A read that finds no free thread answers at its timeout instead of queueing unseen.
            with pytest.raises(StoreUnavailable, match="did not answer"):
                await store.incidents()
        finally:
            release.set()
        await until(lambda: store.queries.running == 0, STATE_TIMEOUT_S, what="the stuck reads to finish")
        sa.event.remove(engine, "before_cursor_execute", hang_selects)
        assert {i["component"] for i in await store.incidents()} == {"upstream", "breaker:websocket"}


# ---------------------------------------------------------------------------- retention


async def test_retention_prunes_old_rows_and_keeps_ongoing_incidents(db: Database) -> None:
    now = time.time()
    old = now - 30 * 86_400
    clock = StepClock(old)
    async with running(make_store(db, clock, retention_days=7, prune_interval_s=3600)) as store:
        store.record_status(snap(LinkState.CONNECTED))
        clock.now = old + 60
        store.record_status(snap(LinkState.RECONNECTING, "ConnectionLost"))
        clock.now = old + 120
        store.record_status(snap(LinkState.CONNECTED))
        store.record_transition(transition("websocket", BreakerState.OPEN, "failure_threshold", old + 120))
        store.record_transition(
            transition("websocket", BreakerState.CLOSED, "probe_succeeded", old + 130, BreakerState.HALF_OPEN)
        )
        clock.now = old + 300
        store.record_status(snap(LinkState.RECONNECTING, "HeartbeatTimeout"))  # still going on "now"
        assert await store.wait_idle(WRITE_TIMEOUT_S)
        clock.now = now
        store.record_transition(transition("api:/x", BreakerState.OPEN, "failure_threshold", now))
        assert await store.wait_idle(WRITE_TIMEOUT_S)
        assert len(await store.incidents()) == 4

        deleted = await store.prune_now()
        assert deleted >= 2 + 2 + 5  # two closed incidents, two transitions, the old minutes
        incidents = await store.incidents()
        assert sorted((i["component"], i["ongoing"]) for i in incidents) == [
            ("breaker:api:/x", True),
            ("upstream", True),
        ]
        assert [t["name"] for t in await store.transitions()] == ["api:/x"]

        def old_samples() -> int:
            engine = create_db_engine(normalize_db_url(db.url))
            try:
                with engine.connect() as connection:
                    query = sa.select(sa.func.count()).select_from(SAMPLES)
                    return int(
                        connection.execute(query.where(SAMPLES.c.minute < (now - 7 * 86_400) // 60)).scalar_one()
                    )
            finally:
                engine.dispose()

        assert await asyncio.to_thread(old_samples) == 0
        assert store.snapshot()["pruned_rows_total"] == deleted


# ---------------------------------------------------------------------------- unusable database


async def test_an_unusable_database_url_is_reported_not_fatal(tmp_path: Any) -> None:
    clock = SystemClock()
    store = WiredStore(
        HistoryStore(load_settings({}), clock, db_url="mysql+nosuchdriver://u:p@127.0.0.1/x", start_timeout_s=5), clock
    )
    await store.start()
    try:
        assert store.unusable is not None  # known at once, not after the start timeout
        check = store.health_check()[0]
        assert check.status == "warn" and "unusable" in check.output and "p@" not in check.output
        store.record_status(snap(LinkState.RECONNECTING, "X"))
        assert store.snapshot()["dropped_events_total"] >= 1  # the incident it opened
        with pytest.raises(StoreUnavailable, match="unusable"):
            await store.incidents()
    finally:
        await store.stop()


# ---------------------------------------------------------------------------- the HTTP API over a real socket


async def test_history_api_reads_the_database_over_http(
    db: Database, asgi_server: Callable[..., Awaitable[Any]]
) -> None:
    clock = StepClock(DAY0)
    async with running(make_store(db, clock)) as store:
        store.record_status(snap(LinkState.CONNECTED))
        clock.now = DAY0 + 120
        store.record_status(snap(LinkState.RECONNECTING, "ConnectionLost"))
        store.record_transition(transition("websocket", BreakerState.OPEN, "failure_threshold", DAY0 + 120))
        clock.now = DAY0 + 180
        store.record_status(snap(LinkState.CONNECTED))
        assert await store.wait_idle(WRITE_TIMEOUT_S)
        served = await asgi_server(Starlette(routes=history_routes(store)))
        async with httpx.AsyncClient(base_url=served.http_url, timeout=10) as http:
            history = await http.get("/api/v1/history", params={"component": "upstream", "days": "3"})
            assert history.status_code == 200 and history.headers["cache-control"] == "no-store"
            body = history.json()
            assert body["component"] == "upstream" and len(body["bars"]) == 3
            incidents = (await http.get("/api/v1/incidents", params={"limit": "10"})).json()
            assert {i["component"] for i in incidents["incidents"]} == {"upstream", "breaker:websocket"}
            only = (await http.get("/api/v1/incidents", params={"component": "breaker:websocket"})).json()
            assert [i["cause"] for i in only["incidents"]] == ["breaker_opened"]
            transitions = (await http.get("/api/v1/transitions", params={"limit": "1"})).json()
            assert transitions["count"] == 1 and transitions["transitions"][0]["to_state"] == "open"
            bad = await http.get("/api/v1/history", params={"days": "9999"})
            assert bad.status_code == 400 and bad.json()["error"] == "invalid_parameter"
            if db.kind == "postgres":
                await db.begin_outage()
                try:
                    down = await http.get("/api/v1/incidents")
                    assert down.status_code == 503 and down.headers["retry-after"] == "10"
                    assert down.json()["error"] == "history_unavailable"
                finally:
                    await db.end_outage()
                assert (await http.get("/api/v1/incidents")).status_code == 200


# ---------------------------------------------------------------------------- the operator command line


async def test_the_migrations_command_line(db: Database) -> None:
    async def run(*args: str) -> tuple[int, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "backend_core.history.migrations",
            *args,
            cwd=ROOT,
            env={**os.environ, "DB_URL": db.url},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(60):
            output, _ = await process.communicate()
        return process.returncode or 0, output.decode()

    code, output = await run("current")
    assert code == 0 and f"schema at None (head {head_revision()})" in output
    assert "deriv_test:deriv_test@" not in output, "the password is never printed"
    for _ in range(2):
        code, output = await run("upgrade")
        assert code == 0 and f"schema at {head_revision()}" in output
    code, output = await run("prune")
    assert (code, output.strip()) == (0, "pruned 0 rows older than 90 days")
    code, output = await run("dance")
    assert code == 2 and "usage: python -m backend_core.history.migrations" in output
    await db.begin_outage()
    try:
        if db.kind == "postgres":
            code, output = await run("current")
            assert code == 1 and output.startswith("history database error: OperationalError")
    finally:
        await db.end_outage()


async def test_a_store_can_be_started_again_after_a_stop(db: Database) -> None:
    store = make_store(db)
    async with running(store):
        store.record_status(snap(LinkState.CONNECTED))
        store.record_status(snap(LinkState.RECONNECTING, "ConnectionLost"))
    async with running(store):  # the same object, as a lifespan restart would do
        assert store.schema_ready and store.reachable is True
        store.record_status(snap(LinkState.RECONNECTING, "HeartbeatTimeout"))
        assert await store.wait_idle(WRITE_TIMEOUT_S)
        incidents = await store.incidents()
        assert [(i["error_code"], i["ongoing"]) for i in incidents] == [
            ("HeartbeatTimeout", True),
            ("ConnectionLost", False),
        ]
