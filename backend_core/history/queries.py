"""The history's reads: incidents, breaker transitions and uptime bars, on threads of their own.

Reads run in their own small thread pool on their own engine, apart from the writer's
thread and connection (:mod:`backend_core.history.writer`), so a slow query, or one
that timed out and still runs in its thread, can never delay a write. Each read takes
one of :data:`MAX_CONCURRENT_QUERIES` slots and keeps it until its thread has really
finished (not merely until the caller gave up), so the slots always count busy threads:
when every thread is stuck in a hung database, the next read waits for a slot at most
its timeout and answers :class:`StoreUnavailable` rather than queueing unseen. Every
query carries a ``LIMIT``.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import date, timedelta
from typing import Any, Final, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from backend_core.clock import Clock, iso_utc
from backend_core.history.db import INCIDENTS, SAMPLES, TRANSITIONS, is_transient, to_datetime, to_wall
from backend_core.history.minutes import STATUS_BY_SEVERITY, MinuteSample, minute_of
from backend_core.incidents import UPTIME_WINDOWS

T = TypeVar("T")

# A read (history API) gives up after this long and the handler answers 503.
QUERY_TIMEOUT_S: Final = 10.0
# Reads running at once (threads and connections of the read pool); more wait for a slot
# (within QUERY_TIMEOUT_S). The writer has a thread and a connection of its own.
MAX_CONCURRENT_QUERIES: Final = 4
# API bounds: rows one call returns.
MAX_INCIDENTS_LIMIT: Final = 500
MAX_TRANSITIONS_LIMIT: Final = 1000
MAX_HISTORY_DAYS: Final = 366
# Incidents counted per day in a history answer (far above any real incident rate).
MAX_INCIDENTS_SCANNED: Final = 10_000


class StoreUnavailable(Exception):
    """The history database cannot answer right now (the API turns this into a 503)."""


class HistoryQueries:
    """Runs the three reads on the read pool; ``engine`` is opened by the owner once the schema is ready."""

    def __init__(
        self, clock: Clock, *, timeout_s: float = QUERY_TIMEOUT_S, slots: int = MAX_CONCURRENT_QUERIES
    ) -> None:
        self._clock = clock
        self.timeout_s = timeout_s
        self._slots_total = slots
        self.engine: Engine | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None
        self.running = 0  # reads whose thread has not finished (timed-out ones included)

    def start(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=self._slots_total, thread_name_prefix="history-read")
        self._slots = asyncio.Semaphore(self._slots_total)

    def stop(self) -> None:
        """Stop taking reads. A read still stuck in a hung database is not waited for."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    @property
    def available(self) -> bool:
        return self._executor is not None and self.engine is not None

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(engine, *args)`` in a read thread, bounded by the timeout (slot wait included)."""
        executor, slots, engine = self._executor, self._slots, self.engine
        if executor is None or slots is None or engine is None:
            raise StoreUnavailable("the history database is not available yet")
        loop = asyncio.get_running_loop()
        try:
            async with self._clock.timeout(self.timeout_s):
                await slots.acquire()
                try:
                    future = loop.run_in_executor(executor, functools.partial(fn, engine, *args))
                except RuntimeError as exc:  # the pool was shut down meanwhile: the store is stopping
                    slots.release()
                    raise StoreUnavailable("the history store is not running") from exc
                # From here the slot belongs to the thread: it is given back when the
                # thread is done, however long after the caller stopped waiting.
                self.running += 1
                future.add_done_callback(functools.partial(self._done, slots))
                return await asyncio.shield(future)
        except TimeoutError:
            raise StoreUnavailable(f"the history database did not answer within {self.timeout_s:g}s") from None
        except StoreUnavailable:
            raise
        except Exception as exc:
            if is_transient(exc):
                raise StoreUnavailable("the history database is unreachable") from exc
            raise

    def _done(self, slots: asyncio.Semaphore, future: asyncio.Future[Any]) -> None:
        self.running -= 1
        slots.release()
        if not future.cancelled():
            future.exception()  # retrieved: a read nobody waits for any more must not warn


# ---------------------------------------------------------------------------- the reads (blocking, in a read thread)


def incidents(engine: Engine, limit: int, component: str | None, now: float) -> list[dict[str, Any]]:
    """Newest incidents first."""
    query = sa.select(INCIDENTS).order_by(INCIDENTS.c.started_at.desc(), INCIDENTS.c.id.desc()).limit(limit)
    if component is not None:
        query = query.where(INCIDENTS.c.component == component)
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    out = []
    for row in rows:
        started = to_wall(row["started_at"])
        ended = to_wall(row["ended_at"]) if row["ended_at"] is not None else None
        out.append(
            {
                "id": row["key"],
                "component": row["component"],
                "kind": row["kind"],
                "started_at": iso_utc(started),
                "ended_at": iso_utc(ended),
                "ongoing": ended is None,
                "duration_s": round(max(0.0, (ended if ended is not None else now) - started), 1),
                "cause": row["cause"],
                "error_code": row["error_code"],
                "message": row["message"],
                "recovery": row["recovery"],
                "attempts": row["attempts"],
                "planned": bool(row["planned"]),
            }
        )
    return out


def transitions(engine: Engine, limit: int, name: str | None) -> list[dict[str, Any]]:
    """Newest breaker transitions first."""
    query = sa.select(TRANSITIONS).order_by(TRANSITIONS.c.at.desc(), TRANSITIONS.c.id.desc()).limit(limit)
    if name is not None:
        query = query.where(TRANSITIONS.c.name == name)
    with engine.connect() as connection:
        rows = connection.execute(query).mappings().all()
    return [
        {
            "name": row["name"],
            "from_state": row["from_state"],
            "to_state": row["to_state"],
            "reason": row["reason"],
            "at": iso_utc(to_wall(row["at"])),
        }
        for row in rows
    ]


def history(
    engine: Engine, component: str, days: int, now: float, live: Sequence[MinuteSample], retention_days: int
) -> dict[str, Any]:
    """Per-day bars (oldest first) and uptime over the :data:`UPTIME_WINDOWS` for one component.

    ``live`` are the minutes not written yet (queued, and the current one), so the bars
    and percentages include what is happening right now.
    """
    now_minute = minute_of(now)
    today = now_minute // 1440
    first_day = today - days + 1
    since_minute = min(first_day * 1440, now_minute - max(UPTIME_WINDOWS.values()))
    c = SAMPLES.c
    per_day = (
        sa.select(c.day, sa.func.sum(c.observed_s), sa.func.sum(c.down_s), sa.func.max(c.severity))
        .where(c.component == component, c.minute >= first_day * 1440)
        .group_by(c.day)
        .limit(MAX_HISTORY_DAYS + 1)
    )
    windows = sa.select(
        *(
            sa.func.sum(sa.case((c.minute >= now_minute - span, c.observed_s), else_=0.0))
            for span in UPTIME_WINDOWS.values()
        ),
        *(
            sa.func.sum(sa.case((c.minute >= now_minute - span, c.down_s), else_=0.0))
            for span in UPTIME_WINDOWS.values()
        ),
    ).where(c.component == component, c.minute >= since_minute)
    incident_starts = (
        sa.select(INCIDENTS.c.started_at)
        .where(INCIDENTS.c.component == component, INCIDENTS.c.started_at >= to_datetime(first_day * 86_400.0))
        .limit(MAX_INCIDENTS_SCANNED)
    )
    with engine.connect() as connection:
        day_rows = connection.execute(per_day).all()
        window_row = connection.execute(windows).one()
        starts = connection.execute(incident_starts).scalars().all()
    day_totals: dict[int, list[float]] = {
        int(row[0]): [float(row[1] or 0.0), float(row[2] or 0.0), float(row[3] if row[3] is not None else -1)]
        for row in day_rows
    }
    window_totals = [float(value or 0.0) for value in window_row]
    spans = list(UPTIME_WINDOWS.values())
    for sample in live:
        if sample.day >= first_day:
            totals = day_totals.setdefault(sample.day, [0.0, 0.0, -1.0])
            totals[0] += sample.observed_s
            totals[1] += sample.down_s
            totals[2] = max(totals[2], float(sample.severity))
        for i, span in enumerate(spans):
            if sample.minute >= now_minute - span:
                window_totals[i] += sample.observed_s
                window_totals[len(spans) + i] += sample.down_s
    incidents_by_day: dict[int, int] = {}
    for started in starts:
        day = math.floor(to_wall(started) / 86_400.0)
        incidents_by_day[day] = incidents_by_day.get(day, 0) + 1
    bars = []
    for day in range(first_day, today + 1):
        observed, down, severity = day_totals.get(day, [0.0, 0.0, -1.0])
        bars.append(
            {
                "date": (date(1970, 1, 1) + timedelta(days=day)).isoformat(),
                "uptime_pct": uptime_pct(observed, down),
                "worst_status": STATUS_BY_SEVERITY.get(int(severity), "down") if observed > 0 else "no_data",
                "observed_s": round(observed, 1),
                "down_s": round(down, 1),
                "incidents": incidents_by_day.get(day, 0),
            }
        )
    count = len(spans)
    uptime = {name: uptime_pct(window_totals[i], window_totals[count + i]) for i, name in enumerate(UPTIME_WINDOWS)}
    return {
        "component": component,
        "days": days,
        "retention_days": retention_days,
        "generated_at": iso_utc(now),
        "uptime_pct": uptime,
        "bars": bars,
    }


def uptime_pct(observed_s: float, down_s: float) -> float | None:
    """Uptime in percent with 3 decimals; ``None`` when nothing was observed."""
    if observed_s <= 0:
        return None
    return round(100.0 * max(0.0, observed_s - down_s) / observed_s, 3)


__all__ = [
    "MAX_CONCURRENT_QUERIES",
    "MAX_HISTORY_DAYS",
    "MAX_INCIDENTS_LIMIT",
    "MAX_TRANSITIONS_LIMIT",
    "HistoryQueries",
    "StoreUnavailable",
    "history",
    "incidents",
    "transitions",
    "uptime_pct",
]
