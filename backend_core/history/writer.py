"""The history's one writer: bounded queues, one dedicated thread, one connection of its own.

``put_record`` and ``put_samples`` are plain synchronous calls that append to a bounded
queue: they never wait and never touch the database, so they can sit on any hot path.
One task drains the queues in batches; every database call it makes runs in the
writer's own thread (a one-thread executor) on the writer's own engine (a pool of one
connection), so nothing the reads do (a slow query, a query that timed out and still
runs, a full read pool) can ever delay a write. The pruner's deletes are writes too: they
run in the same thread one chunk per transaction, taking turns with the batches.

If the database is down the events wait (bounded) and are written when it is back,
retried with a capped full-jitter backoff (:class:`backend_core.backoff.FullJitter`) that
never gives up. What does not fit is counted and logged, never silently lost. Every
counter is updated on the event loop, from what the thread returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine
from tenacity import AsyncRetrying, retry_if_exception, stop_never

from backend_core.backoff import FullJitter
from backend_core.clock import Clock, sleep_unless
from backend_core.history.db import (
    DB_TIMEOUT_S,
    INCIDENTS,
    SAMPLES,
    TRANSITIONS,
    create_db_engine,
    describe_db_error,
    is_transient,
    migrate,
    redact_db_url,
    shares_one_connection,
    sqlite_file,
    to_datetime,
)
from backend_core.history.minutes import MinuteSample, minute_of
from backend_core.incidents import IncidentClosed, IncidentOpened, Recovery
from backend_core.logs import LogThrottle

log = logging.getLogger("backend_core.history")

T = TypeVar("T")

# How much one prune pass deletes per table, in chunks of one transaction each (so a
# first prune of a large old database never holds a lock for long, and writes go between).
PRUNE_CHUNK_ROWS: Final = 5_000
PRUNE_MAX_CHUNKS: Final = 100


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    key: str
    name: str
    from_state: str
    to_state: str
    reason: str
    at: float  # wall seconds


Record: TypeAlias = IncidentOpened | IncidentClosed | TransitionRecord


@dataclass(slots=True)
class _Counters:
    written: dict[str, int] = field(default_factory=lambda: {"incident": 0, "transition": 0, "sample": 0})
    dropped: dict[str, int] = field(default_factory=lambda: {"record": 0, "sample": 0, "shutdown": 0})
    rejected: int = 0
    pruned: int = 0
    write_failures: int = 0


@dataclass(slots=True)
class _Written:
    """What one batch did, returned by the writer thread (counters are the loop's)."""

    incidents: int = 0
    transitions: int = 0
    samples: int = 0
    rejected: int = 0

    def count(self, item: Record | MinuteSample) -> None:
        if isinstance(item, MinuteSample):
            self.samples += 1
        elif isinstance(item, TransitionRecord):
            self.transitions += 1
        else:
            self.incidents += 1


class Unusable(Exception):
    """The database cannot be used at all (not a transient outage)."""


class _Stopping(Exception):
    """The writer is stopping and the database is still down: stop retrying."""


@dataclass(frozen=True, slots=True)
class WriterLimits:
    """How much the writer holds while the database is away, and how it retries (rule 5)."""

    # Incident and transition events waiting for the database. They are rare (a flapping
    # link makes a few a minute), so 2,000 ride out hours of a database outage in well
    # under 1 MB.
    max_pending_records: int = 2_000
    # Per-minute samples waiting for the database: one per tracked component per minute,
    # so 10,000 cover about 2 days of an outage for the usual three components (~2 MB).
    max_pending_samples: int = 10_000
    # Rows per write transaction: big enough that a backlog drains in seconds, small
    # enough that one transaction stays short and a refused row is found quickly.
    batch_size: int = 500
    # Backoff between write attempts while the database is down: quick first retries for
    # a blip, then every 30 s at most (full jitter, so several instances do not line up).
    retry_initial_s: float = 0.5
    retry_max_s: float = 30.0
    db_timeout_s: float = DB_TIMEOUT_S


class HistoryWriter:
    """Queues and writes history events; owned by :class:`~backend_core.history.store.HistoryStore`."""

    def __init__(
        self,
        url: URL | None,
        clock: Clock,
        *,
        instance: str,
        unusable: str | None = None,
        limits: WriterLimits = WriterLimits(),
        rng: random.Random | None = None,
    ) -> None:
        self.url = url
        self._clock = clock
        self.instance = instance
        self.limits = limits
        self._backoff = FullJitter(limits.retry_initial_s, limits.retry_max_s, rng)
        self.records: deque[Record] = deque()
        self.samples: deque[MinuteSample] = deque()
        self.counters = _Counters()
        self.engine: Engine | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self.reachable: bool | None = None
        self.unusable = unusable
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.down_since: float | None = None
        self._drop_log = LogThrottle(log, max_keys=1)
        self._new_run()

    def _new_run(self) -> None:
        """Fresh per-run state: asyncio primitives bind to the loop of the run that uses them."""
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self.schema_ready = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._stopping = False
        self.stopped = False

    # ------------------------------------------------------------------ producers (never wait)

    def put_record(self, record: Record) -> None:
        if self.stopped or self.unusable is not None or len(self.records) >= self.limits.max_pending_records:
            self._drop("record")
            return
        self.records.append(record)
        self._wake.set()

    def put_samples(self, samples: Sequence[MinuteSample]) -> None:
        for sample in samples:
            if self.stopped or self.unusable is not None or len(self.samples) >= self.limits.max_pending_samples:
                self._drop("sample")
                continue
            self.samples.append(sample)
        if samples:
            self._wake.set()

    def _drop(self, kind: str) -> None:
        self.counters.dropped[kind] += 1
        if self._drop_log.due(self._clock.monotonic(), "dropped") is not None:
            log.warning(
                "history event dropped (%s): queue full or database unusable; %d dropped so far",
                kind,
                self.dropped_total,
            )

    @property
    def pending(self) -> int:
        return len(self.records) + len(self.samples)

    @property
    def dropped_total(self) -> int:
        return sum(self.counters.dropped.values())

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> asyncio.Task[None]:
        """Start the writer's thread and task (it opens and migrates the database first)."""
        if self.stopped:
            self._new_run()  # started again after a stop (a lifespan restart)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="history-writer")
        self._task = asyncio.create_task(self._write_loop(), name="store-writer")
        return self._task

    async def stop(self, timeout_s: float) -> None:
        """Write what is queued within ``timeout_s`` (if the schema is ready), then stop."""
        self._stopping = True
        self.stopped = True
        self._stop_requested.set()
        self._wake.set()
        task = self._task
        if task is not None and self.schema_ready.is_set():
            with contextlib.suppress(TimeoutError):
                async with self._clock.timeout(timeout_s):
                    await asyncio.shield(task)
        left = self.pending
        if left:
            self.counters.dropped["shutdown"] += left
            log.warning("history: %d events could not be written before shutdown", left)
            self.records.clear()
            self.samples.clear()
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._task = None
        engine, self.engine = self.engine, None
        executor, self._executor = self._executor, None
        if engine is not None and executor is not None:
            with contextlib.suppress(Exception):
                async with self._clock.timeout(self.limits.db_timeout_s):
                    await asyncio.get_running_loop().run_in_executor(executor, engine.dispose)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until everything queued so far is written (for tests and tools)."""
        try:
            async with self._clock.timeout(timeout_s):
                while self.pending:
                    self._idle.clear()
                    await self._idle.wait()
        except TimeoutError:
            return False
        return True

    # ------------------------------------------------------------------ the write loop

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        executor = self._executor
        if executor is None:
            raise sa_exc.DisconnectionError("the history writer is not running")
        return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(fn, *args))

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_never,
            wait=self._backoff,
            retry=retry_if_exception(is_transient),
            sleep=self._retry_sleep,
            reraise=True,
        )

    async def _retry_sleep(self, seconds: float) -> None:
        """tenacity's sleep. Once stopping, one immediate last try, then give up (bounded flush)."""
        if self._stopping:
            raise _Stopping
        await sleep_unless(self._clock, seconds, self._stop_requested)

    async def _write_loop(self) -> None:
        while True:
            try:
                if not self.schema_ready.is_set():
                    await self._prepare()
                await self._drain_forever()
                return
            except (Unusable, _Stopping):
                return
            except Exception:
                # A bug must never end history writing silently: log it, pause, go on.
                log.exception("history writer failed; restarting it")
                if self._stopping:
                    return
                await self._clock.sleep(self.limits.retry_max_s)

    async def _drain_forever(self) -> None:
        while True:
            if not self.records and not self.samples:
                if self._stopping:
                    return
                self._wake.clear()
                self._idle.set()
                await self._wake.wait()
                continue
            self._idle.clear()
            records = [self.records[i] for i in range(min(self.limits.batch_size, len(self.records)))]
            room = self.limits.batch_size - len(records)
            samples = [self.samples[i] for i in range(min(room, len(self.samples)))]
            try:
                async for attempt in self._retrying():
                    with attempt:
                        written = await self.guarded(self._write_batch, records, samples)
            except (Unusable, _Stopping):
                raise
            except Exception as exc:  # neither transient nor a single bad row: skip the batch, loudly
                log.error("history batch could not be written and was skipped: %s", describe_db_error(exc))
                self._note_failure(exc)
                written = _Written(rejected=len(records) + len(samples))
            for _ in records:
                self.records.popleft()
            for _ in samples:
                self.samples.popleft()
            c = self.counters
            c.written["incident"] += written.incidents
            c.written["transition"] += written.transitions
            c.written["sample"] += written.samples
            c.rejected += written.rejected

    async def _prepare(self) -> None:
        async for attempt in self._retrying():
            with attempt:
                await self.guarded(self._open_and_migrate)
        self.schema_ready.set()

    async def guarded(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in the writer's thread; note success/failure for health; classify the error."""
        try:
            result = await self._in_thread(fn, *args)
        except Exception as exc:
            if isinstance(exc, Unusable):
                raise
            self._note_failure(exc)
            if not is_transient(exc) and not self.schema_ready.is_set():
                # No schema and not a connectivity problem: a bad URL, a missing driver, a
                # database newer than this code. Retrying cannot fix it.
                self.unusable = describe_db_error(exc)
                log.error("history database unusable: %s", self.unusable)
                raise Unusable from exc
            raise
        self._note_success()
        return result

    def _note_failure(self, exc: BaseException) -> None:
        self.counters.write_failures += 1
        self.last_error = describe_db_error(exc)
        self.last_error_at = self._clock.wall()
        if self.reachable is not False:
            self.down_since = self.last_error_at
            log.warning("history database unreachable: %s (events are queued)", self.last_error)
        self.reachable = False

    def _note_success(self) -> None:
        if self.reachable is False:
            log.info("history database reachable again; writing %d queued events", self.pending)
        self.reachable = True
        self.down_since = None

    # ------------------------------------------------------------------ pruning (writes, in the writer's thread)

    async def prune(self, cutoff_wall: float) -> int:
        """Delete rows older than ``cutoff_wall``, one chunk per turn of the writer's thread."""
        total = 0
        for table, condition in prune_plans(cutoff_wall):
            for _ in range(PRUNE_MAX_CHUNKS):
                count = await self.guarded(self._prune_chunk, table, condition)
                total += count
                if count < PRUNE_CHUNK_ROWS:
                    break
        self.counters.pruned += total
        return total

    def _prune_chunk(self, table: sa.Table, condition: sa.ColumnElement[bool]) -> int:
        return prune_chunk(self._require_engine(), table, condition)

    # ------------------------------------------------------------------ blocking parts (the writer's thread)

    def _open_and_migrate(self) -> None:
        if self.unusable is not None or self.url is None:
            raise Unusable(self.unusable or "no database URL")
        if self.engine is None:
            path = sqlite_file(self.url)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_db_engine(self.url, timeout_s=self.limits.db_timeout_s, pool_size=1)
        migrate(self.engine)
        with self.engine.begin() as connection:
            closed = connection.execute(
                sa.update(INCIDENTS)
                .where(INCIDENTS.c.ended_at.is_(None), INCIDENTS.c.instance == self.instance)
                .values(ended_at=to_datetime(self._clock.wall()), recovery=Recovery.SERVICE_RESTARTED.value)
            ).rowcount
        if closed:
            log.info("history: closed %d incidents left open by a previous run", closed)
        log.info("history database ready: %s", redact_db_url(self.url))

    def _write_batch(self, records: list[Record], samples: list[MinuteSample]) -> _Written:
        engine = self._require_engine()
        try:
            with engine.begin() as connection:
                for record in records:
                    self._apply(connection, record)
                if samples:
                    connection.execute(sa.insert(SAMPLES), [sample_row(s) for s in samples])
        except Exception as exc:
            if is_transient(exc):
                raise
            return self._write_one_by_one(records, samples, exc)
        written = _Written()
        for item in [*records, *samples]:
            written.count(item)
        return written

    def _write_one_by_one(self, records: list[Record], samples: list[MinuteSample], first: BaseException) -> _Written:
        """A row the database refuses must not block the rest: find it, count it, go on."""
        log.error("history batch refused (%s); writing row by row", describe_db_error(first))
        engine = self._require_engine()
        written = _Written()
        items: Iterable[Record | MinuteSample] = [*records, *samples]
        for item in items:
            try:
                with engine.begin() as connection:
                    if isinstance(item, MinuteSample):
                        connection.execute(sa.insert(SAMPLES).values(**sample_row(item)))
                    else:
                        self._apply(connection, item)
            except Exception as exc:
                if is_transient(exc):
                    raise
                written.rejected += 1
                log.error("history row refused and skipped: %s: %s", type(item).__name__, describe_db_error(exc))
            else:
                written.count(item)
        return written

    def _apply(self, connection: Connection, record: Record) -> None:
        # Every write is idempotent by key, so a batch retried after a lost commit
        # acknowledgement never duplicates an incident or a transition.
        if isinstance(record, TransitionRecord):
            exists = connection.execute(sa.select(TRANSITIONS.c.id).where(TRANSITIONS.c.key == record.key)).first()
            if exists is None:
                connection.execute(
                    sa.insert(TRANSITIONS).values(
                        key=record.key,
                        name=record.name,
                        from_state=record.from_state,
                        to_state=record.to_state,
                        reason=record.reason,
                        at=to_datetime(record.at),
                    )
                )
            return
        opened = record.opened if isinstance(record, IncidentClosed) else record
        exists = connection.execute(sa.select(INCIDENTS.c.id).where(INCIDENTS.c.key == opened.key)).first()
        if exists is None:
            # Also when only the close got through (its open was dropped): the row is whole.
            connection.execute(sa.insert(INCIDENTS).values(**incident_row(opened, self.instance)))
        if isinstance(record, IncidentClosed):
            connection.execute(
                sa.update(INCIDENTS)
                .where(INCIDENTS.c.key == opened.key)
                .values(ended_at=to_datetime(record.ended_at), recovery=record.recovery.value, attempts=record.attempts)
            )

    def _require_engine(self) -> Engine:
        if self.engine is None:
            raise sa_exc.DisconnectionError("the database engine is not open yet")
        return self.engine

    @property
    def shares_connection(self) -> bool:
        """True when readers must use the writer's engine (an in-memory SQLite database)."""
        return self.url is not None and shares_one_connection(self.url)


def incident_row(opened: IncidentOpened, instance: str) -> dict[str, Any]:
    return {
        "key": opened.key,
        "instance": instance,
        "component": opened.component,
        "kind": opened.kind,
        "started_at": to_datetime(opened.started_at),
        "cause": opened.cause.value,
        "error_code": opened.error_code,
        "message": opened.message,
        "planned": opened.planned,
    }


def sample_row(sample: MinuteSample) -> dict[str, Any]:
    return {
        "component": sample.component,
        "minute": sample.minute,
        "day": sample.day,
        "state": sample.state,
        "status": sample.status,
        "severity": sample.severity,
        "observed_s": sample.observed_s,
        "down_s": sample.down_s,
    }


def prune_plans(cutoff_wall: float) -> list[tuple[sa.Table, sa.ColumnElement[bool]]]:
    """What pruning deletes per table: rows older than ``cutoff_wall``."""
    cutoff = to_datetime(cutoff_wall)
    return [
        # An ongoing incident is kept however old it is.
        (INCIDENTS, sa.and_(INCIDENTS.c.ended_at.is_not(None), INCIDENTS.c.ended_at < cutoff)),
        (TRANSITIONS, TRANSITIONS.c.at < cutoff),
        (SAMPLES, SAMPLES.c.minute < minute_of(cutoff_wall)),
    ]


def prune_chunk(engine: Engine, table: sa.Table, condition: sa.ColumnElement[bool]) -> int:
    """Delete at most :data:`PRUNE_CHUNK_ROWS` matching rows in one transaction (blocking)."""
    ids = sa.select(table.c.id).where(condition).limit(PRUNE_CHUNK_ROWS)
    with engine.begin() as connection:
        return int(connection.execute(sa.delete(table).where(table.c.id.in_(ids))).rowcount)


def prune_blocking(engine: Engine, cutoff_wall: float) -> int:
    """Delete every row older than ``cutoff_wall`` (blocking: the command line's prune)."""
    total = 0
    for table, condition in prune_plans(cutoff_wall):
        for _ in range(PRUNE_MAX_CHUNKS):
            count = prune_chunk(engine, table, condition)
            total += count
            if count < PRUNE_CHUNK_ROWS:
                break
    return total


__all__ = [
    "HistoryWriter",
    "Record",
    "TransitionRecord",
    "Unusable",
    "WriterLimits",
    "prune_blocking",
]
