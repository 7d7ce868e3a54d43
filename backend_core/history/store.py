"""The history store: what the Runtime owns, feeds and asks (incidents, transitions, uptime).

:class:`HistoryStore` wires the pure parts to the two I/O parts:

- ``record_*`` (plain synchronous calls that never wait) run the minute sampler
  (:mod:`backend_core.history.minutes`) and hand incidents, breaker transitions and
  samples to the :class:`~backend_core.history.writer.HistoryWriter` (its own thread and
  connection, bounded queues, retries while the database is down);
- ``incidents``, ``transitions`` and ``history`` are coroutines that run on the read
  pool of :class:`~backend_core.history.queries.HistoryQueries` under a timeout and raise
  :class:`~backend_core.history.queries.StoreUnavailable` when the database cannot answer.

Reads never starve writes by construction: they share neither a thread nor a connection.
Two small tasks roll the minutes and prune old rows (in the writer's thread, chunk by
chunk between the write batches).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

from backend_core.clock import Clock, iso_utc
from backend_core.events import UpstreamSnapshot
from backend_core.health import CheckResult, Status
from backend_core.history import queries
from backend_core.history.db import (
    STATE_CHARS,
    create_db_engine,
    describe_db_error,
    normalize_db_url,
    redact_db_url,
)
from backend_core.history.minutes import MinuteSample, MinuteSampler, breaker_sample_status, upstream_sample_status
from backend_core.history.queries import (
    MAX_CONCURRENT_QUERIES,
    MAX_HISTORY_DAYS,
    MAX_INCIDENTS_LIMIT,
    MAX_TRANSITIONS_LIMIT,
    QUERY_TIMEOUT_S,
    HistoryQueries,
    StoreUnavailable,
)
from backend_core.history.writer import HistoryWriter, TransitionRecord, WriterLimits
from backend_core.incidents import (
    CODE_CHARS,
    COMPONENT_CHARS,
    UPSTREAM,
    IncidentEvent,
    breaker_component,
    clip,
    instance_name,
    random_key,
)
from backend_core.logs import FaultLog

if TYPE_CHECKING:
    from backend_core.breakers.breaker import Transition
    from backend_core.config import Settings

log = logging.getLogger("backend_core.history")

# stop() waits at most this long for the queue to reach the database; shutdown must
# stay well inside an orchestrator's grace period (Docker's default is 10 s).
STOP_FLUSH_TIMEOUT_S: Final = 5.0
# start() waits this long for the schema before it returns with the database "down"
# (the writer keeps trying in the background; the rest of the app starts regardless).
START_SCHEMA_TIMEOUT_S: Final = 5.0
# How often old rows are pruned.
PRUNE_INTERVAL_S: Final = 3600.0


def store_verdict(
    *, usable_error: str | None, reachable: bool | None, pending: int, capacity: int, last_error: str | None
) -> tuple[Status, str]:
    """The database check: never ``fail`` (live status and the relay work without it)."""
    if usable_error is not None:
        return "warn", f"history database unusable: {usable_error}"
    if reachable is None:
        return "warn", "history database not reached yet"
    if not reachable:
        detail = f": {last_error}" if last_error else ""
        return "warn", f"history database unreachable{detail}; {pending} events waiting"
    if pending >= 0.8 * capacity:
        return "warn", f"history write queue nearly full: {pending}/{capacity}"
    return "pass", "reachable"


class HistoryStore:
    """The history store: owned, started and stopped by the Runtime.

    ``record_status`` and ``record_breaker_state`` (uptime samples), ``record_transition``
    (the breaker log and samples) and ``record_incidents`` (from the Runtime's
    :class:`~backend_core.incidents.IncidentFeed`) are synchronous and never wait.
    """

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        *,
        db_url: str | None = None,
        instance: str | None = None,
        limits: WriterLimits = WriterLimits(),
        query_timeout_s: float = QUERY_TIMEOUT_S,
        prune_interval_s: float = PRUNE_INTERVAL_S,
        start_timeout_s: float = START_SCHEMA_TIMEOUT_S,
        new_key: Callable[[], str] = random_key,
    ) -> None:
        self._clock = clock
        self.retention_days = settings.HISTORY_RETENTION_DAYS
        self._db_timeout_s = limits.db_timeout_s
        self._prune_interval_s = prune_interval_s
        self._start_timeout_s = start_timeout_s
        self._new_key = new_key
        url: URL | None = None
        unusable: str | None = None
        try:
            url = normalize_db_url(db_url or settings.DB_URL)
        except (sa_exc.ArgumentError, ValueError) as exc:
            unusable = f"DB_URL is not a database URL ({type(exc).__name__})"
        self._url = url
        self.writer = HistoryWriter(
            url,
            clock,
            instance=instance_name(instance),
            unusable=unusable,
            limits=limits,
        )
        self.queries = HistoryQueries(clock, timeout_s=query_timeout_s)
        self._sampler = MinuteSampler()
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        # A bug in a producer must never reach its caller (the runtime's status task, a
        # breaker): history loses that one event, which is counted and logged.
        self._fault = FaultLog(log, "history", clock)

    # ------------------------------------------------------------------ producers (never wait)

    def record_status(self, snapshot: UpstreamSnapshot) -> None:
        """An upstream status event (from the hub's status stream)."""
        try:
            now = self._clock.wall()
            sample = upstream_sample_status(snapshot)
            if sample is None:
                self.writer.put_samples(self._sampler.forget(UPSTREAM, now))
            else:
                self.writer.put_samples(self._sampler.observe(UPSTREAM, sample[0], sample[1], now))
        except Exception:
            self._fault("record_status")

    def record_transition(self, transition: Transition) -> None:
        """A breaker transition (a ``BreakerRegistry`` listener)."""
        try:
            now = self._clock.wall()
            to_state, from_state = str(transition.to_state), str(transition.from_state)
            self.writer.put_record(
                TransitionRecord(
                    key=self._new_key(),
                    name=clip(transition.name, COMPONENT_CHARS),
                    from_state=clip(from_state, STATE_CHARS),
                    to_state=clip(to_state, STATE_CHARS),
                    reason=clip(transition.reason, CODE_CHARS),
                    at=transition.at_wall,
                )
            )
            state, status = breaker_sample_status(to_state)
            self.writer.put_samples(self._sampler.observe(breaker_component(transition.name), state, status, now))
        except Exception:
            self._fault("record_transition")

    def record_breaker_state(self, name: str, state: str) -> None:
        """Start the uptime bars of a breaker that has not transitioned yet (call at start)."""
        try:
            sample_state, status = breaker_sample_status(str(state))
            component = breaker_component(name)
            self.writer.put_samples(self._sampler.observe(component, sample_state, status, self._clock.wall()))
        except Exception:
            self._fault("record_breaker_state")

    def record_incidents(self, events: Sequence[IncidentEvent]) -> None:
        """Incidents opened or closed (an :class:`~backend_core.incidents.IncidentFeed` subscriber)."""
        try:
            for event in events:
                self.writer.put_record(event)
        except Exception:
            self._fault("record_incidents")

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the database, migrate, start the writer, the minute roller and the pruner.

        Waits up to ``start_timeout_s`` for the schema; a database that is down does not
        stop the start (the writer keeps trying, health shows "warn").
        """
        if self._started:
            return
        if self.writer.stopped:
            self._sampler = MinuteSampler()  # started again after a stop: a clean slate, same counters
        self._started = True
        self.queries.start()
        writer = self.writer.start()
        self._tasks = [
            writer,
            asyncio.create_task(self._roll_loop(), name="store-minutes"),
            asyncio.create_task(self._prune_loop(), name="store-pruner"),
        ]
        # Until the schema is ready, the writer gives up (unusable database), or the bound.
        ready = asyncio.ensure_future(self.writer.schema_ready.wait())
        try:
            with contextlib.suppress(TimeoutError):
                async with self._clock.timeout(self._start_timeout_s):
                    await asyncio.wait({ready, writer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            await asyncio.gather(ready, return_exceptions=True)
        if self.unusable is not None:
            log.error("history disabled: the database is unusable (%s)", self.unusable)
        elif not self.schema_ready:
            log.warning("history database not ready at start (%s); continuing without it", self.writer.last_error)

    async def stop(self, timeout_s: float = STOP_FLUSH_TIMEOUT_S) -> None:
        """Flush the queue within ``timeout_s``, stop every task and both thread pools.

        Open incidents are closed by whoever feeds them (the Runtime closes its
        :class:`~backend_core.incidents.IncidentFeed` before this); any left open are
        closed at the next start.
        """
        if self.writer.stopped:
            return
        self.writer.put_samples(self._sampler.finish(self._clock.wall()))
        others = self._tasks[1:]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        self.queries.stop()
        await self.writer.stop(timeout_s)
        self._tasks = []
        engine, self.queries.engine = self.queries.engine, None
        if engine is not None and engine is not self.writer.engine:
            with contextlib.suppress(Exception):
                async with self._clock.timeout(self._db_timeout_s):
                    await asyncio.to_thread(engine.dispose)
        self._started = False
        log.info("history store stopped")

    # ------------------------------------------------------------------ background: minutes and pruning

    async def _roll_loop(self) -> None:
        while True:
            now = self._clock.wall()
            # Just past the next minute boundary, so the minute that ended is complete.
            await self._clock.sleep((now // 60.0 + 1) * 60.0 - now + 0.05)
            try:
                self.writer.put_samples(self._sampler.roll(self._clock.wall()))
            except Exception:
                log.exception("history minute sampling failed")

    async def _prune_loop(self) -> None:
        await self.writer.schema_ready.wait()
        while True:
            try:
                await self.prune_now()
            except Exception as exc:
                log.warning("history pruning failed, will retry: %s", describe_db_error(exc))
            await self._clock.sleep(self._prune_interval_s)

    async def prune_now(self) -> int:
        """Delete rows older than ``HISTORY_RETENTION_DAYS``; returns how many."""
        deleted = await self.writer.prune(self._clock.wall() - self.retention_days * 86_400.0)
        if deleted:
            log.info("history: pruned %d rows older than %d days", deleted, self.retention_days)
        return deleted

    # ------------------------------------------------------------------ queries

    async def _query(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self.unusable is not None:
            raise StoreUnavailable(f"the history database is unusable: {self.unusable}")
        if not self.schema_ready or not self._started or self._url is None:
            raise StoreUnavailable("the history database is not available yet")
        if self.queries.engine is None:
            # Opened once the writer has made the schema (so the URL and driver work).
            # No I/O here: connections are made by the read threads.
            shared = self.writer.engine if self.writer.shares_connection else None
            self.queries.engine = shared or create_db_engine(
                self._url, timeout_s=self._db_timeout_s, pool_size=MAX_CONCURRENT_QUERIES
            )
        return await self.queries.run(fn, *args)

    async def incidents(self, limit: int = 50, component: str | None = None) -> list[dict[str, Any]]:
        """Newest incidents first (at most ``MAX_INCIDENTS_LIMIT``)."""
        limit = max(1, min(int(limit), MAX_INCIDENTS_LIMIT))
        rows: list[dict[str, Any]] = await self._query(queries.incidents, limit, component, self._clock.wall())
        return rows

    async def transitions(self, limit: int = 100, name: str | None = None) -> list[dict[str, Any]]:
        """Newest breaker transitions first (at most ``MAX_TRANSITIONS_LIMIT``)."""
        limit = max(1, min(int(limit), MAX_TRANSITIONS_LIMIT))
        rows: list[dict[str, Any]] = await self._query(queries.transitions, limit, name)
        return rows

    async def history(self, component: str = UPSTREAM, days: int = 90) -> dict[str, Any]:
        """Per-day bars (oldest first) and uptime over 24h/7d/30d/90d for one component."""
        days = max(1, min(int(days), MAX_HISTORY_DAYS))
        # The minutes not written yet come from memory (those waiting in the queue, and the
        # current one), so the bars and percentages include what is happening right now.
        now = self._clock.wall()
        live: list[MinuteSample] = [sample for sample in self.writer.samples if sample.component == component]
        live += self._sampler.peek(component, now)
        answer: dict[str, Any] = await self._query(queries.history, component, days, now, live, self.retention_days)
        return answer

    # ------------------------------------------------------------------ reads for health and metrics

    @property
    def reachable(self) -> bool | None:
        return self.writer.reachable

    @property
    def unusable(self) -> str | None:
        return self.writer.unusable

    @property
    def schema_ready(self) -> bool:
        return self.writer.schema_ready.is_set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until everything queued so far is written (for tests and tools)."""
        return await self.writer.wait_idle(timeout_s)

    def snapshot(self) -> dict[str, Any]:
        w = self.writer
        c = w.counters
        return {
            "db": redact_db_url(self._url) if self._url is not None else None,
            "dialect": self._url.get_backend_name() if self._url is not None else None,
            "schema_ready": self.schema_ready,
            "reachable": w.reachable,
            "unusable": w.unusable,
            "down_since": iso_utc(w.down_since),
            "last_error": w.last_error,
            "last_error_at": iso_utc(w.last_error_at),
            "pending_events": w.pending,
            "pending_records": len(w.records),
            "pending_samples": len(w.samples),
            "max_pending_records": w.limits.max_pending_records,
            "max_pending_samples": w.limits.max_pending_samples,
            "written_total": sum(c.written.values()),
            "written_by_kind": dict(c.written),
            "dropped_events_total": w.dropped_total,
            "dropped_by_kind": dict(c.dropped),
            "rejected_events_total": c.rejected,
            "faults_total": self._fault.count,
            "write_failures_total": c.write_failures,
            "pruned_rows_total": c.pruned,
            "reads_running": self.queries.running,
            "retention_days": self.retention_days,
        }

    def health_check(self) -> list[CheckResult]:
        """The ``database`` check for /health (a plain function of the writer's state: no I/O)."""
        w = self.writer
        pending = w.pending
        status, output = store_verdict(
            usable_error=w.unusable,
            reachable=w.reachable,
            pending=pending,
            capacity=w.limits.max_pending_records + w.limits.max_pending_samples,
            last_error=w.last_error,
        )
        return [
            CheckResult("database", "datastore", "reachable", status, w.reachable, None, output),
            CheckResult("database", "datastore", "pendingEvents", status, pending),
            CheckResult("database", "datastore", "droppedEvents", "pass", w.dropped_total),
        ]


__all__ = ["HistoryStore", "StoreUnavailable", "store_verdict"]
