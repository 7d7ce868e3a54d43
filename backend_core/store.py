"""History: incidents, breaker transitions and per-minute uptime samples (SQLModel).

Pure core, thin I/O shell (DESIGN.md rule 2):

- :class:`IncidentTracker` turns the stream of :class:`~backend_core.events.UpstreamSnapshot`
  values and breaker transitions into :class:`IncidentOpened` / :class:`IncidentClosed`
  events. It takes the time as an argument and touches nothing else.
- :class:`IncidentFeed` is the service's one tracker (the Runtime owns it): it feeds every
  incident event to each subscriber, the history (:meth:`Store.record_incidents`) and the
  alerts, so the tracking runs once and an alert means exactly what an incident means here.
- :class:`MinuteSampler` integrates each component's status over UTC minutes: per minute
  the worst status seen, the seconds observed and the seconds down (enough to draw uptime
  bars and compute uptime percentages exactly, not by whole minutes).
- :class:`Store` is the shell. ``record_*`` are plain synchronous calls that run the pure
  step and append to a bounded queue: they never wait and never touch the database, so
  they can sit on any hot path. One writer task drains the queues in batches in a worker
  thread; if the database is down the events wait (bounded) and are written when it is
  back, retried with a capped exponential backoff (tenacity) that never gives up. What
  does not fit is counted (``dropped_events_total``) and logged, never silently lost.

Incident rules
==============

Upstream (component ``"upstream"``):

- opens when the link leaves ``connected`` (to ``reconnecting`` or ``circuit_open``, or
  ``connecting`` with an error: a start-up that fails is an outage too; the first
  ``connecting`` of a fresh start is not). ``cause`` is "planned maintenance" when the
  upstream announced it (``planned_reconnect``), else what happened; ``error_code`` and
  ``message`` are the snapshot's ``last_error``;
- closes when ``connected`` again. ``recovery`` says how: "manual retry" (a user's retry
  led to the connection), "breaker probe" (the link came back through the half-open probe
  of the "websocket" breaker), else "reconnected after N attempts";
- a ``stopped`` link (the service shutting down) closes an open incident as
  "not recovered: the service stopped"; incidents left open by a process that died are
  closed at the next start as "not recovered: the service restarted".

Breakers (component ``"breaker:<name>"``): opens on a transition to ``open``; closes on a
transition to ``closed`` (or ``disabled``); half-open flapping stays one incident.

Limits (DESIGN.md rule 5) are the module constants below, each with its reason; queries
carry a ``LIMIT`` and run in the store's own small thread pool (so a slow database can
never take the threads other code relies on) under a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import re
import socket
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal, TypeAlias, TypeVar

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, SQLModel
from tenacity import AsyncRetrying, retry_if_exception, stop_never, wait_exponential_jitter

from backend_core.breakers import MAX_API_BREAKERS
from backend_core.clock import Clock, iso_utc, sleep_unless
from backend_core.events import LinkState, UpstreamSnapshot
from backend_core.health import CheckResult, Status
from backend_core.logs import FaultLog

if TYPE_CHECKING:
    from backend_core.breakers import Transition
    from backend_core.config import Settings

log = logging.getLogger("backend_core.store")

T = TypeVar("T")

# ---------------------------------------------------------------------------- limits

# Incident and transition events waiting for the database. They are rare (a flapping link
# makes a few a minute), so 2,000 ride out hours of a database outage in well under 1 MB.
MAX_PENDING_RECORDS: Final = 2_000
# Per-minute samples waiting for the database: one per tracked component per minute, so
# 10,000 cover about 2 days of an outage for the usual three components (~2 MB).
MAX_PENDING_SAMPLES: Final = 10_000
# Rows per write transaction: big enough that a backlog drains in seconds, small enough
# that one transaction stays short and a refused row is found quickly.
WRITE_BATCH_SIZE: Final = 500
# Store.stop() waits at most this long for the queue to reach the database; shutdown must
# stay well inside an orchestrator's grace period (Docker's default is 10 s).
STOP_FLUSH_TIMEOUT_S: Final = 5.0
# start() waits this long for the schema before it returns with the database "down"
# (the writer keeps trying in the background; the rest of the app starts regardless).
START_SCHEMA_TIMEOUT_S: Final = 5.0
# Backoff between write attempts while the database is down: quick first retries for a
# blip, then every 30 s at most (full jitter, so several instances do not line up).
RETRY_INITIAL_S: Final = 0.5
RETRY_MAX_S: Final = 30.0
# Driver-level bound on every database call (connect timeout, SQLite busy timeout,
# PostgreSQL statement timeout): a dead server costs a worker thread this long at most.
DB_TIMEOUT_S: Final = 5.0
# A read (history API) gives up after this long and the handler answers 503.
QUERY_TIMEOUT_S: Final = 10.0
# Reads running at once; more wait (within QUERY_TIMEOUT_S). The pool has one more thread,
# reserved for the writer, so reads can never starve writes.
MAX_CONCURRENT_QUERIES: Final = 4
# How often old rows are pruned, and how much one pass deletes per table (chunked so a
# first prune of a large old database never holds a lock for long).
PRUNE_INTERVAL_S: Final = 3600.0
PRUNE_CHUNK_ROWS: Final = 5_000
PRUNE_MAX_CHUNKS: Final = 100
# API bounds: rows one call returns.
MAX_INCIDENTS_LIMIT: Final = 500
MAX_TRANSITIONS_LIMIT: Final = 1000
MAX_HISTORY_DAYS: Final = 366
# Incidents counted per day in a history answer (far above any real incident rate).
MAX_INCIDENTS_SCANNED: Final = 10_000
# Components tracked at once: the upstream plus every breaker the registry can hold.
MAX_COMPONENTS: Final = MAX_API_BREAKERS + 3
# After a stall (suspended VM, clock step) at most one day of minutes is filled in; a
# longer gap is left empty rather than invented.
MAX_FILL_MINUTES: Final = 1440
# A history read adds at most this many not-yet-written minutes from memory (the roller
# emits every minute, so more only happens after a stall; the read stays cheap).
PEEK_MAX_MINUTES: Final = 60
# Drop warnings are logged at most this often.
DROP_LOG_INTERVAL_S: Final = 60.0

# Column sizes; hostile or long text is clipped to them before it reaches the database.
COMPONENT_CHARS: Final = 255
KEY_CHARS: Final = 64
CODE_CHARS: Final = 100
MESSAGE_CHARS: Final = 500
RECOVERY_CHARS: Final = 200
STATE_CHARS: Final = 32

UPSTREAM: Final = "upstream"
BREAKER_PREFIX: Final = "breaker:"

RECOVERY_MANUAL: Final = "manual retry"
RECOVERY_PROBE: Final = "breaker probe"
NOT_RECOVERED: Final = "not recovered"
RECOVERY_STOPPED: Final = f"{NOT_RECOVERED}: the service stopped"
RECOVERY_RESTARTED: Final = f"{NOT_RECOVERED}: the service restarted"
CAUSE_PLANNED: Final = "planned maintenance"

SampleStatus: TypeAlias = Literal["up", "maintenance", "degraded", "down"]
# Worst-of order for a minute (and a day): a planned maintenance is better than an
# unplanned degradation, which is better than being down.
SEVERITY: Final[dict[str, int]] = {"up": 0, "maintenance": 1, "degraded": 2, "down": 3}
STATUS_BY_SEVERITY: Final[dict[int, str]] = {v: k for k, v in SEVERITY.items()}

# Uptime windows reported by history(), in minutes.
UPTIME_WINDOWS: Final[dict[str, int]] = {"24h": 1440, "7d": 7 * 1440, "30d": 30 * 1440, "90d": 90 * 1440}

_BREAKER_REASON_WORDS: Final[dict[str, str]] = {
    "failure_threshold": "too many consecutive failures",
    "failure_rate": "failure rate over the threshold",
    "probe_failed": "the recovery probe failed",
    "probe_timeout": "the recovery probe hung",
    "forced_open": "forced open by an operator",
}
_BREAKER_RECOVERY_WORDS: Final[dict[str, str]] = {
    "probe_succeeded": RECOVERY_PROBE,
    "reset": "reset by an admin",
    "enabled": "breakers re-enabled",
    "disabled": "breakers disabled",
}


def clip(text: str | None, limit: int) -> str | None:
    """``text`` cut to ``limit`` characters (with an ellipsis), ``None`` stays ``None``."""
    if text is None or len(text) <= limit:
        return text
    return text[: limit - 1] + "…"


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def breaker_component(name: str) -> str:
    return _clip(BREAKER_PREFIX + name, COMPONENT_CHARS)


def _new_key() -> str:
    return uuid.uuid4().hex


# ---------------------------------------------------------------------------- tables


class Incident(SQLModel, table=True):
    """One outage of one component, from when it started to how it ended."""

    __tablename__ = "incident"
    __table_args__ = (
        sa.UniqueConstraint("key", name="uq_incident_key"),
        sa.Index("ix_incident_component_started_at", "component", "started_at"),
        sa.Index("ix_incident_started_at", "started_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=KEY_CHARS)
    instance: str = Field(max_length=CODE_CHARS)
    component: str = Field(max_length=COMPONENT_CHARS)
    kind: str = Field(max_length=16)
    started_at: datetime = Field(sa_type=sa.DateTime(timezone=True))
    ended_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    cause: str = Field(max_length=CODE_CHARS)
    error_code: str | None = Field(default=None, max_length=CODE_CHARS)
    message: str = Field(default="", max_length=MESSAGE_CHARS)
    recovery: str | None = Field(default=None, max_length=RECOVERY_CHARS)
    attempts: int | None = Field(default=None)
    planned: bool = Field(default=False)


class BreakerTransition(SQLModel, table=True):
    """One circuit-breaker state change."""

    __tablename__ = "breaker_transition"
    __table_args__ = (
        sa.UniqueConstraint("key", name="uq_breaker_transition_key"),
        sa.Index("ix_breaker_transition_at", "at"),
        sa.Index("ix_breaker_transition_name_at", "name", "at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=KEY_CHARS)
    name: str = Field(max_length=COMPONENT_CHARS)
    from_state: str = Field(max_length=STATE_CHARS)
    to_state: str = Field(max_length=STATE_CHARS)
    reason: str = Field(max_length=CODE_CHARS)
    at: datetime = Field(sa_type=sa.DateTime(timezone=True))


class StatusSample(SQLModel, table=True):
    """One component's worst status in one UTC minute, with the seconds observed and down.

    ``minute`` is Unix minutes (``floor(epoch / 60)``), ``day`` Unix days
    (``minute // 1440``). Uptime of any span is ``1 - sum(down_s) / sum(observed_s)``.
    """

    __tablename__ = "status_sample"
    __table_args__ = (
        sa.Index("ix_status_sample_component_minute", "component", "minute"),
        sa.Index("ix_status_sample_minute", "minute"),
    )

    id: int | None = Field(default=None, primary_key=True)
    component: str = Field(max_length=COMPONENT_CHARS)
    minute: int
    day: int
    state: str = Field(max_length=STATE_CHARS)
    status: str = Field(max_length=16)
    severity: int
    observed_s: float
    down_s: float


# The Core tables behind the models: every statement below is plain SQLAlchemy Core.
INCIDENTS: Final[sa.Table] = Incident.__table__  # type: ignore[attr-defined]
TRANSITIONS: Final[sa.Table] = BreakerTransition.__table__  # type: ignore[attr-defined]
SAMPLES: Final[sa.Table] = StatusSample.__table__  # type: ignore[attr-defined]
HISTORY_TABLES: Final = ("incident", "breaker_transition", "status_sample")
# Our own Alembic version table, so the history schema never collides with a Reflex
# (``reflex db``) or other Alembic setup pointed at the same database.
VERSION_TABLE: Final = "history_schema_version"
MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"


# ---------------------------------------------------------------------------- pure events


@dataclass(frozen=True, slots=True)
class IncidentOpened:
    key: str
    component: str
    kind: Literal["upstream", "breaker"]
    started_at: float
    cause: str
    error_code: str | None
    message: str
    planned: bool = False


@dataclass(frozen=True, slots=True)
class IncidentClosed:
    opened: IncidentOpened
    ended_at: float
    recovery: str
    attempts: int | None = None

    @property
    def key(self) -> str:
        return self.opened.key

    @property
    def component(self) -> str:
        return self.opened.component


IncidentEvent: TypeAlias = IncidentOpened | IncidentClosed


@dataclass(frozen=True, slots=True)
class TransitionRecord:
    key: str
    name: str
    from_state: str
    to_state: str
    reason: str
    at: float


@dataclass(frozen=True, slots=True)
class MinuteSample:
    component: str
    minute: int
    state: str
    status: str
    observed_s: float
    down_s: float

    @property
    def day(self) -> int:
        return self.minute // 1440

    @property
    def severity(self) -> int:
        return SEVERITY[self.status]


Record: TypeAlias = IncidentOpened | IncidentClosed | TransitionRecord


# ---------------------------------------------------------------------------- pure: status of a snapshot


def upstream_sample_status(snapshot: UpstreamSnapshot) -> tuple[str, SampleStatus] | None:
    """The state and status the sampler records for a snapshot; ``None`` while stopped or starting."""
    state = snapshot.state
    if state == LinkState.CONNECTED:
        return state.value, "up"
    if state == LinkState.STOPPED:
        return None
    if snapshot.planned_reconnect:
        return state.value, "maintenance"
    if state == LinkState.CONNECTING and snapshot.last_error is None:
        # The first connect of a start that has not failed yet: the service is starting,
        # not degraded, so it must not paint the day's uptime bar amber after every restart.
        return None
    return state.value, "down"


def breaker_sample_status(state: str) -> tuple[str, SampleStatus]:
    if state in ("closed", "disabled"):
        return state, "up"
    if state == "half_open":
        return state, "degraded"
    return state, "down"


# ---------------------------------------------------------------------------- pure: incidents


@dataclass(slots=True)
class _UpstreamOutage:
    opened: IncidentOpened
    attempts_done: int = 0
    cycle_max: int = 0
    last_attempt: int = 0
    probe: bool = False
    # None: no manual retry; "requested": asked, not yet seen running; "running": its attempt is under way.
    manual: Literal["requested", "running"] | None = None


class IncidentTracker:
    """Upstream snapshots and breaker transitions in, incident open/close events out. Pure.

    Every method takes the wall-clock time (``now``, Unix seconds) as an argument and
    returns the events it caused; nothing here reads a clock or does I/O.
    """

    def __init__(self, *, new_key: Callable[[], str] = _new_key, max_open: int = MAX_COMPONENTS) -> None:
        self._new_key = new_key
        self._max_open = max_open
        self._outage: _UpstreamOutage | None = None
        self._was_connected = False
        self._planned_hint = False
        self._breakers: dict[str, IncidentOpened] = {}
        self.ignored_breaker_incidents = 0

    @property
    def open_incidents(self) -> list[IncidentOpened]:
        opened = [self._outage.opened] if self._outage is not None else []
        return opened + list(self._breakers.values())

    # -- upstream

    def upstream(self, snapshot: UpstreamSnapshot, now: float) -> list[IncidentEvent]:
        state = snapshot.state
        if state == LinkState.CONNECTED:
            self._was_connected = True
            # Deriv announces maintenance while still connected; the drop that follows is planned.
            self._planned_hint = snapshot.planned_reconnect
            outage, self._outage = self._outage, None
            if outage is None:
                return []
            attempts = outage.attempts_done + outage.cycle_max
            return [IncidentClosed(outage.opened, now, _recovery(outage, attempts), attempts or None)]
        if state == LinkState.STOPPED:
            self._planned_hint = False
            outage, self._outage = self._outage, None
            if outage is None:
                return []
            return [IncidentClosed(outage.opened, now, RECOVERY_STOPPED, outage.attempts_done + outage.cycle_max)]

        events: list[IncidentEvent] = []
        outage = self._outage
        if outage is None:
            starting = state == LinkState.CONNECTING and snapshot.last_error is None
            if starting:
                return []
            outage = self._outage = _UpstreamOutage(self._open_upstream(snapshot, now))
            events.append(outage.opened)
        _count_attempt(outage, snapshot.attempt)
        if state == LinkState.CIRCUIT_OPEN:
            outage.probe = True
        _follow_manual_retry(outage, snapshot)
        return events

    def manual_retry(self, now: float) -> None:
        """A user asked for a retry (``POST /api/v1/retry`` started one)."""
        if self._outage is not None:
            self._outage.manual = "requested"

    def _open_upstream(self, snapshot: UpstreamSnapshot, now: float) -> IncidentOpened:
        error = snapshot.last_error
        planned = snapshot.planned_reconnect or self._planned_hint
        if planned:
            cause = CAUSE_PLANNED
        elif snapshot.state == LinkState.CIRCUIT_OPEN:
            cause = "circuit breaker open"
        elif self._was_connected:
            cause = "connection lost"
        else:
            cause = "could not connect"
        return IncidentOpened(
            key=self._new_key(),
            component=UPSTREAM,
            kind="upstream",
            started_at=now,
            cause=cause,
            error_code=clip(error.code, CODE_CHARS) if error else None,
            message=_clip(error.message, MESSAGE_CHARS) if error else "The market data link is down.",
            planned=planned,
        )

    # -- breakers

    def transition(self, name: str, from_state: str, to_state: str, reason: str, now: float) -> list[IncidentEvent]:
        component = breaker_component(name)
        if name == "websocket" and to_state == "open" and self._outage is not None:
            self._outage.probe = True
        if to_state == "open":
            if component in self._breakers:
                return []  # half-open -> open again: the same incident goes on
            if len(self._breakers) >= self._max_open:
                self.ignored_breaker_incidents += 1
                return []
            opened = IncidentOpened(
                key=self._new_key(),
                component=component,
                kind="breaker",
                started_at=now,
                cause="circuit breaker opened",
                error_code=clip(reason, CODE_CHARS),
                message=_clip(f"Circuit '{name}' opened: {_BREAKER_REASON_WORDS.get(reason, reason)}.", MESSAGE_CHARS),
            )
            self._breakers[component] = opened
            return [opened]
        if to_state in ("closed", "disabled"):
            opened_breaker = self._breakers.pop(component, None)
            if opened_breaker is None:
                return []
            recovery = _BREAKER_RECOVERY_WORDS.get(reason, reason)
            return [IncidentClosed(opened_breaker, now, _clip(recovery, RECOVERY_CHARS))]
        return []

    def close_all(self, now: float, recovery: str) -> list[IncidentClosed]:
        """Close every open incident (the service is stopping)."""
        closed: list[IncidentClosed] = []
        outage, self._outage = self._outage, None
        if outage is not None:
            closed.append(IncidentClosed(outage.opened, now, recovery, outage.attempts_done + outage.cycle_max))
        for opened in self._breakers.values():
            closed.append(IncidentClosed(opened, now, recovery))
        self._breakers.clear()
        return closed


IncidentSink: TypeAlias = Callable[[Sequence[IncidentEvent]], None]


class IncidentFeed:
    """The service's one :class:`IncidentTracker`; every event it makes goes to each subscriber.

    Owned by the Runtime: status snapshots, breaker transitions and manual retries go in
    once, and history and alerts subscribe to the same incidents. The calls are
    synchronous and never raise: a failing step or subscriber loses that event for that
    subscriber only, which is counted (``faults``) and logged at most once a minute, so
    the caller (the runtime's status task, a breaker's listener) never sees it.
    """

    def __init__(self, clock: Clock, *, new_key: Callable[[], str] = _new_key, max_open: int = MAX_COMPONENTS) -> None:
        self._clock = clock
        self._new_key = new_key
        self._max_open = max_open
        self._tracker = IncidentTracker(new_key=new_key, max_open=max_open)
        self._sinks: list[IncidentSink] = []
        self._fault = FaultLog(log, "incidents", clock)

    def subscribe(self, sink: IncidentSink) -> None:
        self._sinks.append(sink)

    def reset(self) -> None:
        """Forget everything tracked (a new run of the service)."""
        self._tracker = IncidentTracker(new_key=self._new_key, max_open=self._max_open)

    @property
    def open_incidents(self) -> list[IncidentOpened]:
        return self._tracker.open_incidents

    @property
    def faults(self) -> int:
        return self._fault.count

    def status(self, snapshot: UpstreamSnapshot) -> None:
        """An upstream status snapshot (from the hub's status stream)."""
        try:
            events = self._tracker.upstream(snapshot, self._clock.wall())
        except Exception:
            self._fault("status")
        else:
            self._publish(events)

    def transition(self, transition: Transition) -> None:
        """A breaker transition (a ``BreakerRegistry`` listener)."""
        try:
            events = self._tracker.transition(
                transition.name,
                str(transition.from_state),
                str(transition.to_state),
                transition.reason,
                self._clock.wall(),
            )
        except Exception:
            self._fault("transition")
        else:
            self._publish(events)

    def manual_retry(self) -> None:
        """A user's retry was started (so a recovery that follows is credited to it)."""
        try:
            self._tracker.manual_retry(self._clock.wall())
        except Exception:
            self._fault("manual_retry")

    def close_all(self, recovery: str = RECOVERY_STOPPED) -> None:
        """Close every open incident (the service is stopping)."""
        try:
            events = self._tracker.close_all(self._clock.wall(), recovery)
        except Exception:
            self._fault("close_all")
        else:
            self._publish(events)

    def _publish(self, events: Sequence[IncidentEvent]) -> None:
        if not events:
            return
        for sink in self._sinks:
            try:
                sink(events)
            except Exception:
                self._fault(f"subscriber {getattr(sink, '__qualname__', sink)!s}")


def _count_attempt(outage: _UpstreamOutage, attempt: int) -> None:
    """Attempts are numbered 1..max per retry cycle; a smaller number starts a new cycle."""
    if attempt <= 0:
        return
    if attempt < outage.last_attempt:
        outage.attempts_done += outage.cycle_max
        outage.cycle_max = 0
    outage.cycle_max = max(outage.cycle_max, attempt)
    outage.last_attempt = attempt


def _follow_manual_retry(outage: _UpstreamOutage, snapshot: UpstreamSnapshot) -> None:
    # The manager marks a manual retry with retry_in_progress while the countdown of the
    # automatic one (next_attempt_at) is still set; an automatic attempt clears it.
    if snapshot.retry_in_progress and (snapshot.next_attempt_at is not None or outage.manual == "requested"):
        outage.manual = "running"
    elif not snapshot.retry_in_progress and outage.manual == "running":
        outage.manual = None  # that attempt failed; a later recovery is not the user's


def _recovery(outage: _UpstreamOutage, attempts: int) -> str:
    if outage.manual is not None:
        return RECOVERY_MANUAL
    if outage.probe:
        return RECOVERY_PROBE
    if attempts > 0:
        return f"reconnected after {attempts} attempt" + ("" if attempts == 1 else "s")
    return "reconnected"


# ---------------------------------------------------------------------------- pure: minute samples


@dataclass(slots=True)
class _Track:
    state: str
    status: str
    since: float
    minute: int
    observed_s: float = 0.0
    down_s: float = 0.0
    worst_state: str = ""
    worst_severity: int = -1

    def see(self, state: str, status: str) -> None:
        severity = SEVERITY[status]
        if severity > self.worst_severity:
            self.worst_severity = severity
            self.worst_state = state

    def add(self, seconds: float) -> None:
        self.observed_s += seconds
        if self.status == "down":
            self.down_s += seconds

    def sample(self, component: str) -> MinuteSample:
        return MinuteSample(
            component,
            self.minute,
            self.worst_state,
            STATUS_BY_SEVERITY[self.worst_severity],
            round(self.observed_s, 3),
            round(self.down_s, 3),
        )

    def restart(self, minute: int, at: float) -> None:
        self.minute = minute
        self.since = at
        self.observed_s = 0.0
        self.down_s = 0.0
        self.worst_severity = -1
        self.see(self.state, self.status)


class MinuteSampler:
    """Per component, per UTC minute: the worst status, seconds observed and seconds down. Pure.

    ``observe`` reports a component's new state at ``now``; ``roll`` closes the minutes
    that have ended; ``forget`` stops observing a component (its partial minute is
    emitted). Time never observed (the service was stopped) produces no sample at all,
    so it counts neither as up nor as down.
    """

    def __init__(self, *, max_components: int = MAX_COMPONENTS, max_fill_minutes: int = MAX_FILL_MINUTES) -> None:
        self._tracks: dict[str, _Track] = {}
        self._max_components = max_components
        self._max_fill = max_fill_minutes
        self.ignored_components = 0

    @property
    def components(self) -> list[str]:
        return list(self._tracks)

    def observe(self, component: str, state: str, status: str, now: float) -> list[MinuteSample]:
        if status not in SEVERITY:
            raise ValueError(f"unknown status {status!r}")
        track = self._tracks.get(component)
        if track is None:
            if len(self._tracks) >= self._max_components:
                self.ignored_components += 1
                return []
            track = _Track(state, status, now, _minute(now))
            track.see(state, status)
            self._tracks[component] = track
            return []
        out = self._advance(component, track, now)
        track.state, track.status = state, status
        track.see(state, status)
        return out

    def roll(self, now: float) -> list[MinuteSample]:
        out: list[MinuteSample] = []
        for component, track in self._tracks.items():
            out.extend(self._advance(component, track, now))
        return out

    def peek(self, component: str, now: float) -> list[MinuteSample]:
        """The minutes not yet emitted, up to ``now`` (the last one partial), without changing anything."""
        track = self._tracks.get(component)
        if track is None or now < track.since:
            return []
        copy = replace(track)
        out = self._advance(component, copy, now, max_fill=PEEK_MAX_MINUTES)
        if copy.observed_s > 0:
            out.append(copy.sample(component))
        return out

    def forget(self, component: str, now: float) -> list[MinuteSample]:
        track = self._tracks.pop(component, None)
        if track is None:
            return []
        out = self._advance(component, track, now)
        if track.observed_s > 0:
            out.append(track.sample(component))
        return out

    def finish(self, now: float) -> list[MinuteSample]:
        out: list[MinuteSample] = []
        for component in list(self._tracks):
            out.extend(self.forget(component, now))
        return out

    def _advance(self, component: str, track: _Track, now: float, max_fill: int | None = None) -> list[MinuteSample]:
        limit = self._max_fill if max_fill is None else max_fill
        out: list[MinuteSample] = []
        if now < track.since:
            # The wall clock stepped back: close what we have and start again from now.
            if track.observed_s > 0:
                out.append(track.sample(component))
            track.restart(_minute(now), now)
            return out
        filled = 0
        while True:
            minute_end = (track.minute + 1) * 60.0
            if now < minute_end:
                track.add(now - track.since)
                track.since = now
                return out
            track.add(max(0.0, minute_end - track.since))
            if track.observed_s > 0:
                out.append(track.sample(component))
            filled += 1
            if filled > limit:
                # A stall longer than the fill limit: leave the gap empty, resume at now.
                track.restart(_minute(now), now)
                return out
            track.restart(track.minute + 1, minute_end)


def _minute(wall: float) -> int:
    return math.floor(wall / 60.0)


# ---------------------------------------------------------------------------- pure: health verdict


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


# ---------------------------------------------------------------------------- database URL helpers


def normalize_db_url(url: str) -> URL:
    """A SQLAlchemy URL with our driver choices: ``postgres://`` and ``postgresql://`` use psycopg 3."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def redact_db_url(url: URL | str) -> str:
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.render_as_string(hide_password=True)


def sqlite_file(url: URL) -> Path | None:
    """The file of a file-backed SQLite URL (``None`` for memory databases and other dialects)."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:") or url.query.get("mode") == "memory":
        return None
    return Path(database)


def create_db_engine(
    url: URL, *, timeout_s: float = DB_TIMEOUT_S, pool_size: int = MAX_CONCURRENT_QUERIES + 1
) -> Engine:
    """An engine whose every call is bounded by ``timeout_s`` at the driver level."""
    backend = url.get_backend_name()
    if backend == "sqlite" and sqlite_file(url) is None:
        # A memory database lives in one connection: share it (tests and demos only).
        return sa.create_engine(url, connect_args={"check_same_thread": False}, poolclass=StaticPool)
    if backend == "sqlite":
        engine = sa.create_engine(
            url,
            connect_args={"timeout": timeout_s, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=timeout_s,
        )
        if sqlite_file(url) is not None:
            sa_event.listen(engine, "connect", _sqlite_on_connect)
        return engine
    if backend == "postgresql":
        return sa.create_engine(
            url,
            pool_pre_ping=True,
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=timeout_s,
            pool_recycle=1800,
            connect_args={
                "connect_timeout": max(1, math.ceil(timeout_s)),
                # A query that runs past the read timeout is abandoned by the server too.
                "options": f"-c statement_timeout={int(QUERY_TIMEOUT_S * 1000)}",
                # Find a dead server on an idle pooled connection within about a minute.
                "keepalives": 1,
                "keepalives_idle": 30,
                "keepalives_interval": 10,
                "keepalives_count": 3,
            },
        )
    return sa.create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=0, pool_timeout=timeout_s)


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # WAL: readers (the history API) never wait for the writer, and the writer never
    # waits for readers.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def is_transient(exc: BaseException) -> bool:
    """True for errors that mean "the database is not reachable right now" (retry)."""
    if isinstance(exc, sa_exc.DBAPIError):
        return bool(exc.connection_invalidated) or isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
    return isinstance(exc, sa_exc.DisconnectionError | sa_exc.TimeoutError | OSError | TimeoutError)


def describe_db_error(exc: BaseException) -> str:
    """A one-line description of a database error, without SQL, parameters or secrets."""
    original = getattr(exc, "orig", None)
    text = str(original if original is not None else exc).strip().splitlines()
    first = text[0] if text else ""
    first = re.sub(r"postgres(ql)?(\+\w+)?://\S+", "<db url>", first)
    return _clip(f"{type(original or exc).__name__}: {first}", 200)


# ---------------------------------------------------------------------------- migrations


def alembic_config(connection: Connection | None = None) -> Any:
    """An Alembic config built in code (no alembic.ini): our scripts, our version table."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("version_table", VERSION_TABLE)
    # r<rev>_<slug>.py: a valid module name, so mypy and ruff check migrations too.
    config.set_main_option("file_template", "r%%(rev)s_%%(slug)s")
    # A new revision comes out lint-clean and formatted (the project's ruff settings).
    hooks = "post_write_hooks"
    config.set_section_option(hooks, "hooks", "ruff_fix, ruff_format")
    for name, options in (
        ("ruff_fix", "check --fix REVISION_SCRIPT_FILENAME"),
        ("ruff_format", "format REVISION_SCRIPT_FILENAME"),
    ):
        config.set_section_option(hooks, f"{name}.type", "module")
        config.set_section_option(hooks, f"{name}.module", "ruff")
        config.set_section_option(hooks, f"{name}.options", options)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (blocking; call it in a thread).

    Idempotent. On PostgreSQL a transaction-scoped advisory lock serialises instances that
    start at the same time, and the statement timeout is lifted for the DDL.
    """
    from alembic import command

    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SET LOCAL statement_timeout = 0"))
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        command.upgrade(alembic_config(connection), "head")


# Any fixed 64-bit number; it names "the history schema migration" among advisory locks.
_MIGRATION_LOCK_KEY: Final = 0x6465726976  # "deriv"


def schema_revision(engine: Engine) -> str | None:
    """The revision the database is at (``None`` for a fresh database)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


# ---------------------------------------------------------------------------- the store


class StoreUnavailable(Exception):
    """The history database cannot answer right now (the API turns this into a 503)."""


@dataclass(slots=True)
class _Counters:
    written: dict[str, int] = field(default_factory=lambda: {"incident": 0, "transition": 0, "sample": 0})
    dropped: dict[str, int] = field(default_factory=lambda: {"record": 0, "sample": 0, "shutdown": 0})
    rejected: int = 0
    pruned: int = 0
    write_failures: int = 0


class Store:
    """The history store: owned, started and stopped by the Runtime.

    ``record_status`` and ``record_breaker_state`` (uptime samples), ``record_transition``
    (the breaker log and samples) and ``record_incidents`` (from the Runtime's
    :class:`IncidentFeed`) are synchronous and never wait; queries are coroutines that
    run in the store's threads and raise :class:`StoreUnavailable` when the database
    cannot answer.
    """

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        *,
        db_url: str | None = None,
        instance: str | None = None,
        max_pending_records: int = MAX_PENDING_RECORDS,
        max_pending_samples: int = MAX_PENDING_SAMPLES,
        batch_size: int = WRITE_BATCH_SIZE,
        retry_initial_s: float = RETRY_INITIAL_S,
        retry_max_s: float = RETRY_MAX_S,
        db_timeout_s: float = DB_TIMEOUT_S,
        query_timeout_s: float = QUERY_TIMEOUT_S,
        prune_interval_s: float = PRUNE_INTERVAL_S,
        start_timeout_s: float = START_SCHEMA_TIMEOUT_S,
        new_key: Callable[[], str] = _new_key,
    ) -> None:
        self._clock = clock
        self._raw_url = db_url or settings.DB_URL
        self.retention_days = settings.HISTORY_RETENTION_DAYS
        self.instance = _clip(instance or socket.gethostname() or "unknown", CODE_CHARS)
        self._max_records = max_pending_records
        self._max_samples = max_pending_samples
        self._batch_size = batch_size
        self._retry_initial_s = retry_initial_s
        self._retry_max_s = retry_max_s
        self._db_timeout_s = db_timeout_s
        self._query_timeout_s = query_timeout_s
        self._prune_interval_s = prune_interval_s
        self._start_timeout_s = start_timeout_s
        self._new_key = new_key
        self._sampler = MinuteSampler()
        self._records: deque[Record] = deque()
        self._samples: deque[MinuteSample] = deque()
        self._counters = _Counters()

        self._url: URL | None = None
        self._engine: Engine | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._new_run()

        self.reachable: bool | None = None
        self.unusable: str | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.down_since: float | None = None
        self._last_drop_log: float | None = None
        # A bug in a producer must never reach its caller (the runtime's status task, a
        # breaker): history loses that one event, which is counted and logged.
        self._fault = FaultLog(log, "history", clock)
        try:
            self._url = normalize_db_url(self._raw_url)
        except (sa_exc.ArgumentError, ValueError) as exc:
            self.unusable = f"DB_URL is not a database URL ({type(exc).__name__})"

    def _new_run(self) -> None:
        """Fresh per-run state: asyncio primitives bind to the loop of the run that uses them."""
        self._query_slots = asyncio.Semaphore(MAX_CONCURRENT_QUERIES)
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._schema_ready = asyncio.Event()
        self._stop_requested = asyncio.Event()
        self._stopping = False
        self._stopped = False

    # ------------------------------------------------------------------ producers (never wait)

    def record_status(self, snapshot: UpstreamSnapshot) -> None:
        """An upstream status event (from the hub's status stream)."""
        try:
            now = self._clock.wall()
            sample = upstream_sample_status(snapshot)
            if sample is None:
                self._put_samples(self._sampler.forget(UPSTREAM, now))
            else:
                self._put_samples(self._sampler.observe(UPSTREAM, sample[0], sample[1], now))
        except Exception:
            self._fault("record_status")

    def record_transition(self, transition: Transition) -> None:
        """A breaker transition (a ``BreakerRegistry`` listener)."""
        try:
            now = self._clock.wall()
            to_state, from_state = str(transition.to_state), str(transition.from_state)
            self._put_record(
                TransitionRecord(
                    key=self._new_key(),
                    name=_clip(transition.name, COMPONENT_CHARS),
                    from_state=_clip(from_state, STATE_CHARS),
                    to_state=_clip(to_state, STATE_CHARS),
                    reason=_clip(transition.reason, CODE_CHARS),
                    at=transition.at_wall,
                )
            )
            state, status = breaker_sample_status(to_state)
            self._put_samples(self._sampler.observe(breaker_component(transition.name), state, status, now))
        except Exception:
            self._fault("record_transition")

    def record_breaker_state(self, name: str, state: str) -> None:
        """Start the uptime bars of a breaker that has not transitioned yet (call at start)."""
        try:
            sample_state, status = breaker_sample_status(str(state))
            component = breaker_component(name)
            self._put_samples(self._sampler.observe(component, sample_state, status, self._clock.wall()))
        except Exception:
            self._fault("record_breaker_state")

    def record_incidents(self, events: Sequence[IncidentEvent]) -> None:
        """Incidents opened or closed (an :class:`IncidentFeed` subscriber)."""
        try:
            for event in events:
                self._put_record(event)
        except Exception:
            self._fault("record_incidents")

    def _put_record(self, record: Record) -> None:
        if self._stopped or self.unusable is not None or len(self._records) >= self._max_records:
            self._drop("record")
            return
        self._records.append(record)
        self._wake.set()

    def _put_samples(self, samples: Sequence[MinuteSample]) -> None:
        for sample in samples:
            if self._stopped or self.unusable is not None or len(self._samples) >= self._max_samples:
                self._drop("sample")
                continue
            self._samples.append(sample)
        if samples:
            self._wake.set()

    def _drop(self, kind: str) -> None:
        self._counters.dropped[kind] += 1
        now = self._clock.monotonic()
        if self._last_drop_log is None or now - self._last_drop_log >= DROP_LOG_INTERVAL_S:
            self._last_drop_log = now
            log.warning(
                "history event dropped (%s): queue full or database unusable; %d dropped so far",
                kind,
                self.dropped_events_total,
            )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Open the database, migrate, start the writer, the minute roller and the pruner.

        Waits up to ``start_timeout_s`` for the schema; a database that is down does not
        stop the start (the writer keeps trying, health shows "warn").
        """
        if self._started:
            return
        if self._stopped:
            # Started again after a stop (a lifespan restart): a clean slate, same counters.
            self._new_run()
            self._sampler = MinuteSampler()
        self._started = True
        self._executor = ThreadPoolExecutor(max_workers=MAX_CONCURRENT_QUERIES + 1, thread_name_prefix="store")
        self._tasks = [
            asyncio.create_task(self._write_loop(), name="store-writer"),
            asyncio.create_task(self._roll_loop(), name="store-minutes"),
            asyncio.create_task(self._prune_loop(), name="store-pruner"),
        ]
        # Until the schema is ready, the writer gives up (unusable database), or the bound.
        ready = asyncio.ensure_future(self._schema_ready.wait())
        try:
            await asyncio.wait(
                {ready, self._tasks[0]}, timeout=self._start_timeout_s, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            ready.cancel()
            await asyncio.gather(ready, return_exceptions=True)
        if self.unusable is not None:
            log.error("history disabled: the database is unusable (%s)", self.unusable)
        elif not self._schema_ready.is_set():
            log.warning("history database not ready at start (%s); continuing without it", self.last_error)

    async def stop(self, timeout_s: float = STOP_FLUSH_TIMEOUT_S) -> None:
        """Flush the queue within ``timeout_s``, stop every task.

        Open incidents are closed by whoever feeds them (the Runtime closes its
        :class:`IncidentFeed` before this); any left open are closed at the next start.
        """
        if self._stopped:
            return
        now = self._clock.wall()
        self._put_samples(self._sampler.finish(now))
        self._stopping = True
        self._stopped = True
        self._stop_requested.set()
        self._wake.set()
        writer = self._tasks[0] if self._tasks else None
        if writer is not None and self._schema_ready.is_set():
            try:
                async with asyncio.timeout(timeout_s):
                    await asyncio.shield(writer)
            except TimeoutError:
                pass
        left = len(self._records) + len(self._samples)
        if left:
            self._counters.dropped["shutdown"] += left
            log.warning("history: %d events could not be written before shutdown", left)
            self._records.clear()
            self._samples.clear()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        engine, self._engine = self._engine, None
        executor, self._executor = self._executor, None
        if engine is not None and executor is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(self._db_timeout_s):
                    await asyncio.get_running_loop().run_in_executor(executor, engine.dispose)
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        self._started = False
        log.info("history store stopped")

    # ------------------------------------------------------------------ writer

    async def _in_thread(self, fn: Callable[..., T], *args: Any) -> T:
        executor = self._executor
        if executor is None:
            raise StoreUnavailable("the history store is not running")
        return await asyncio.get_running_loop().run_in_executor(executor, functools.partial(fn, *args))

    def _retrying(self) -> AsyncRetrying:
        return AsyncRetrying(
            stop=stop_never,
            # Exponential from retry_initial_s, capped, plus up to one initial step of jitter.
            wait=wait_exponential_jitter(
                multiplier=self._retry_initial_s, max=self._retry_max_s, jitter=self._retry_initial_s
            ),
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
                if not self._schema_ready.is_set():
                    await self._prepare()
                await self._drain_forever()
                return
            except (_Unusable, _Stopping):
                return
            except Exception:
                # A bug must never end history writing silently: log it, pause, go on.
                log.exception("history writer failed; restarting it")
                if self._stopping:
                    return
                await self._clock.sleep(self._retry_max_s)

    async def _drain_forever(self) -> None:
        while True:
            if not self._records and not self._samples:
                if self._stopping:
                    return
                self._wake.clear()
                self._idle.set()
                await self._wake.wait()
                continue
            self._idle.clear()
            records = [self._records[i] for i in range(min(self._batch_size, len(self._records)))]
            room = self._batch_size - len(records)
            samples = [self._samples[i] for i in range(min(room, len(self._samples)))]
            try:
                async for attempt in self._retrying():
                    with attempt:
                        rejected = await self._guarded(self._write_batch, records, samples)
            except (_Unusable, _Stopping):
                raise
            except Exception as exc:  # neither transient nor a single bad row: skip the batch, loudly
                log.error("history batch could not be written and was skipped: %s", describe_db_error(exc))
                self._note_failure(exc)
                rejected = len(records) + len(samples)
            for _ in records:
                self._records.popleft()
            for _ in samples:
                self._samples.popleft()
            self._counters.rejected += rejected

    async def _prepare(self) -> None:
        async for attempt in self._retrying():
            with attempt:
                await self._guarded(self._open_and_migrate)
        self._schema_ready.set()

    async def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` in a thread; note success/failure for health; classify the error."""
        try:
            result = await self._in_thread(fn, *args)
        except Exception as exc:
            if isinstance(exc, _Unusable):
                raise
            self._note_failure(exc)
            if not is_transient(exc) and not self._schema_ready.is_set():
                # No schema and not a connectivity problem: a bad URL, a missing driver, a
                # database newer than this code. Retrying cannot fix it.
                self.unusable = describe_db_error(exc)
                log.error("history database unusable: %s", self.unusable)
                raise _Unusable from exc
            raise
        self._note_success()
        return result

    def _note_failure(self, exc: BaseException) -> None:
        self._counters.write_failures += 1
        self.last_error = describe_db_error(exc)
        self.last_error_at = self._clock.wall()
        if self.reachable is not False:
            self.down_since = self.last_error_at
            log.warning("history database unreachable: %s (events are queued)", self.last_error)
        self.reachable = False

    def _note_success(self) -> None:
        if self.reachable is False:
            log.info("history database reachable again; writing %d queued events", self.pending_events)
        self.reachable = True
        self.down_since = None

    # -- blocking parts (worker thread)

    def _open_and_migrate(self) -> None:
        if self.unusable is not None or self._url is None:
            raise _Unusable(self.unusable or "no database URL")
        if self._engine is None:
            path = sqlite_file(self._url)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            self._engine = create_db_engine(self._url, timeout_s=self._db_timeout_s)
        migrate(self._engine)
        with self._engine.begin() as connection:
            closed = connection.execute(
                sa.update(INCIDENTS)
                .where(INCIDENTS.c.ended_at.is_(None), INCIDENTS.c.instance == self.instance)
                .values(ended_at=_dt(self._clock.wall()), recovery=RECOVERY_RESTARTED)
            ).rowcount
        if closed:
            log.info("history: closed %d incidents left open by a previous run", closed)
        log.info("history database ready: %s", redact_db_url(self._url))

    def _write_batch(self, records: list[Record], samples: list[MinuteSample]) -> int:
        engine = self._require_engine()
        try:
            with engine.begin() as connection:
                for record in records:
                    self._apply(connection, record)
                if samples:
                    connection.execute(sa.insert(SAMPLES), [_sample_row(s) for s in samples])
        except Exception as exc:
            if is_transient(exc):
                raise
            return self._write_one_by_one(records, samples, exc)
        self._count_written(records, len(samples))
        return 0

    def _write_one_by_one(self, records: list[Record], samples: list[MinuteSample], first: BaseException) -> int:
        """A row the database refuses must not block the rest: find it, count it, go on."""
        log.error("history batch refused (%s); writing row by row", describe_db_error(first))
        engine = self._require_engine()
        rejected = 0
        for item in [*records, *samples]:
            try:
                with engine.begin() as connection:
                    if isinstance(item, MinuteSample):
                        connection.execute(sa.insert(SAMPLES).values(**_sample_row(item)))
                    else:
                        self._apply(connection, item)
            except Exception as exc:
                if is_transient(exc):
                    raise
                rejected += 1
                log.error("history row refused and skipped: %s: %s", type(item).__name__, describe_db_error(exc))
            else:
                if isinstance(item, MinuteSample):
                    self._count_written([], 1)
                else:
                    self._count_written([item], 0)
        return rejected

    def _count_written(self, records: Iterable[Record], samples: int) -> None:
        for record in records:
            self._counters.written["transition" if isinstance(record, TransitionRecord) else "incident"] += 1
        self._counters.written["sample"] += samples

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
                        at=_dt(record.at),
                    )
                )
            return
        opened = record.opened if isinstance(record, IncidentClosed) else record
        exists = connection.execute(sa.select(INCIDENTS.c.id).where(INCIDENTS.c.key == opened.key)).first()
        if exists is None:
            # Also when only the close got through (its open was dropped): the row is whole.
            connection.execute(sa.insert(INCIDENTS).values(**_incident_row(opened, self.instance)))
        if isinstance(record, IncidentClosed):
            connection.execute(
                sa.update(INCIDENTS)
                .where(INCIDENTS.c.key == opened.key)
                .values(ended_at=_dt(record.ended_at), recovery=record.recovery, attempts=record.attempts)
            )

    def _require_engine(self) -> Engine:
        if self._engine is None:
            raise sa_exc.DisconnectionError("the database engine is not open yet")
        return self._engine

    # ------------------------------------------------------------------ background: minutes and pruning

    async def _roll_loop(self) -> None:
        while True:
            now = self._clock.wall()
            # Just past the next minute boundary, so the minute that ended is complete.
            await self._clock.sleep((_minute(now) + 1) * 60.0 - now + 0.05)
            try:
                self._put_samples(self._sampler.roll(self._clock.wall()))
            except Exception:
                log.exception("history minute sampling failed")

    async def _prune_loop(self) -> None:
        await self._schema_ready.wait()
        while True:
            try:
                await self.prune_now()
            except Exception as exc:
                log.warning("history pruning failed, will retry: %s", describe_db_error(exc))
            await self._clock.sleep(self._prune_interval_s)

    async def prune_now(self) -> int:
        """Delete rows older than ``HISTORY_RETENTION_DAYS``; returns how many."""
        cutoff = self._clock.wall() - self.retention_days * 86_400.0
        deleted = await self._guarded(self._prune, cutoff)
        self._counters.pruned += deleted
        if deleted:
            log.info("history: pruned %d rows older than %d days", deleted, self.retention_days)
        return deleted

    def use_engine(self, engine: Engine) -> None:
        """Use an engine opened elsewhere (the command line), instead of opening one at start."""
        self._engine = engine

    def prune_blocking(self, cutoff_wall: float) -> int:
        """Delete rows older than ``cutoff_wall`` (blocking: call it in a thread)."""
        return self._prune(cutoff_wall)

    def _prune(self, cutoff_wall: float) -> int:
        engine = self._require_engine()
        cutoff = _dt(cutoff_wall)
        plans: list[tuple[sa.Table, sa.ColumnElement[bool]]] = [
            # An ongoing incident is kept however old it is.
            (INCIDENTS, sa.and_(INCIDENTS.c.ended_at.is_not(None), INCIDENTS.c.ended_at < cutoff)),
            (TRANSITIONS, TRANSITIONS.c.at < cutoff),
            (SAMPLES, SAMPLES.c.minute < _minute(cutoff_wall)),
        ]
        total = 0
        for table, condition in plans:
            for _ in range(PRUNE_MAX_CHUNKS):
                ids = sa.select(table.c.id).where(condition).limit(PRUNE_CHUNK_ROWS)
                with engine.begin() as connection:
                    count = connection.execute(sa.delete(table).where(table.c.id.in_(ids))).rowcount
                total += count
                if count < PRUNE_CHUNK_ROWS:
                    break
        return total

    # ------------------------------------------------------------------ queries

    async def _query(self, fn: Callable[..., T], *args: Any) -> T:
        if self.unusable is not None:
            raise StoreUnavailable(f"the history database is unusable: {self.unusable}")
        if not self._schema_ready.is_set() or self._executor is None:
            raise StoreUnavailable("the history database is not available yet")
        try:
            async with asyncio.timeout(self._query_timeout_s):
                async with self._query_slots:
                    return await self._guarded(fn, *args)
        except TimeoutError:
            raise StoreUnavailable(f"the history database did not answer within {self._query_timeout_s:.0f}s") from None
        except _Unusable as exc:
            raise StoreUnavailable("the history database is unusable") from exc
        except Exception as exc:
            if is_transient(exc):
                raise StoreUnavailable("the history database is unreachable") from exc
            raise

    async def incidents(self, limit: int = 50, component: str | None = None) -> list[dict[str, Any]]:
        """Newest incidents first (at most ``MAX_INCIDENTS_LIMIT``)."""
        limit = max(1, min(int(limit), MAX_INCIDENTS_LIMIT))
        return await self._query(self._incidents, limit, component)

    def _incidents(self, limit: int, component: str | None) -> list[dict[str, Any]]:
        query = sa.select(INCIDENTS).order_by(INCIDENTS.c.started_at.desc(), INCIDENTS.c.id.desc()).limit(limit)
        if component is not None:
            query = query.where(INCIDENTS.c.component == component)
        with self._require_engine().connect() as connection:
            rows = connection.execute(query).mappings().all()
        now = self._clock.wall()
        out = []
        for row in rows:
            started = _wall(row["started_at"])
            ended = _wall(row["ended_at"]) if row["ended_at"] is not None else None
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

    async def transitions(self, limit: int = 100, name: str | None = None) -> list[dict[str, Any]]:
        """Newest breaker transitions first (at most ``MAX_TRANSITIONS_LIMIT``)."""
        limit = max(1, min(int(limit), MAX_TRANSITIONS_LIMIT))
        return await self._query(self._transitions, limit, name)

    def _transitions(self, limit: int, name: str | None) -> list[dict[str, Any]]:
        query = sa.select(TRANSITIONS).order_by(TRANSITIONS.c.at.desc(), TRANSITIONS.c.id.desc()).limit(limit)
        if name is not None:
            query = query.where(TRANSITIONS.c.name == name)
        with self._require_engine().connect() as connection:
            rows = connection.execute(query).mappings().all()
        return [
            {
                "name": row["name"],
                "from_state": row["from_state"],
                "to_state": row["to_state"],
                "reason": row["reason"],
                "at": iso_utc(_wall(row["at"])),
            }
            for row in rows
        ]

    async def history(self, component: str = UPSTREAM, days: int = 90) -> dict[str, Any]:
        """Per-day bars (oldest first) and uptime over 24h/7d/30d/90d for one component."""
        days = max(1, min(int(days), MAX_HISTORY_DAYS))
        # The minutes not written yet come from memory (those waiting in the queue, and the
        # current one), so the bars and percentages include what is happening right now.
        now = self._clock.wall()
        live = [sample for sample in self._samples if sample.component == component]
        live += self._sampler.peek(component, now)
        return await self._query(self._history, component, days, now, live)

    def _history(self, component: str, days: int, now: float, live: list[MinuteSample]) -> dict[str, Any]:
        now_minute = _minute(now)
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
            .where(INCIDENTS.c.component == component, INCIDENTS.c.started_at >= _dt(first_day * 86_400.0))
            .limit(MAX_INCIDENTS_SCANNED)
        )
        with self._require_engine().connect() as connection:
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
            day = math.floor(_wall(started) / 86_400.0)
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
            "retention_days": self.retention_days,
            "generated_at": iso_utc(now),
            "uptime_pct": uptime,
            "bars": bars,
        }

    # ------------------------------------------------------------------ reads for health and metrics

    @property
    def pending_events(self) -> int:
        return len(self._records) + len(self._samples)

    @property
    def dropped_events_total(self) -> int:
        return sum(self._counters.dropped.values())

    @property
    def schema_ready(self) -> bool:
        return self._schema_ready.is_set()

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until everything queued so far is written (for tests and tools)."""
        try:
            async with asyncio.timeout(timeout_s):
                while self.pending_events:
                    self._idle.clear()
                    await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def snapshot(self) -> dict[str, Any]:
        c = self._counters
        return {
            "db": redact_db_url(self._url) if self._url is not None else None,
            "dialect": self._url.get_backend_name() if self._url is not None else None,
            "schema_ready": self.schema_ready,
            "reachable": self.reachable,
            "unusable": self.unusable,
            "down_since": iso_utc(self.down_since),
            "last_error": self.last_error,
            "last_error_at": iso_utc(self.last_error_at),
            "pending_events": self.pending_events,
            "pending_records": len(self._records),
            "pending_samples": len(self._samples),
            "max_pending_records": self._max_records,
            "max_pending_samples": self._max_samples,
            "written_total": sum(c.written.values()),
            "written_by_kind": dict(c.written),
            "dropped_events_total": self.dropped_events_total,
            "dropped_by_kind": dict(c.dropped),
            "rejected_events_total": c.rejected,
            "faults_total": self._fault.count,
            "write_failures_total": c.write_failures,
            "pruned_rows_total": c.pruned,
            "retention_days": self.retention_days,
        }

    def health_check(self) -> list[CheckResult]:
        """The ``database`` check for /health (a plain function of the snapshot: no I/O)."""
        pending = self.pending_events
        capacity = self._max_records + self._max_samples
        status, output = store_verdict(
            usable_error=self.unusable,
            reachable=self.reachable,
            pending=pending,
            capacity=capacity,
            last_error=self.last_error,
        )
        return [
            CheckResult("database", "datastore", "reachable", status, self.reachable, None, output),
            CheckResult("database", "datastore", "pendingEvents", status, pending),
            CheckResult("database", "datastore", "droppedEvents", "pass", self.dropped_events_total),
        ]


class _Unusable(Exception):
    """The database cannot be used at all (not a transient outage)."""


class _Stopping(Exception):
    """The store is stopping and the database is still down: stop retrying."""


def _incident_row(opened: IncidentOpened, instance: str) -> dict[str, Any]:
    return {
        "key": opened.key,
        "instance": instance,
        "component": opened.component,
        "kind": opened.kind,
        "started_at": _dt(opened.started_at),
        "cause": opened.cause,
        "error_code": opened.error_code,
        "message": opened.message,
        "planned": opened.planned,
    }


def _sample_row(sample: MinuteSample) -> dict[str, Any]:
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


def uptime_pct(observed_s: float, down_s: float) -> float | None:
    """Uptime in percent with 3 decimals; ``None`` when nothing was observed."""
    if observed_s <= 0:
        return None
    return round(100.0 * max(0.0, observed_s - down_s) / observed_s, 3)


def _dt(wall: float) -> datetime:
    return datetime.fromtimestamp(wall, tz=UTC)


def _wall(value: datetime) -> float:
    # SQLite hands back naive datetimes; everything we store is UTC.
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


__all__ = [
    "HISTORY_TABLES",
    "MAX_HISTORY_DAYS",
    "MAX_INCIDENTS_LIMIT",
    "MAX_TRANSITIONS_LIMIT",
    "UPSTREAM",
    "BreakerTransition",
    "Incident",
    "IncidentClosed",
    "IncidentEvent",
    "IncidentFeed",
    "IncidentOpened",
    "IncidentTracker",
    "MinuteSample",
    "MinuteSampler",
    "StatusSample",
    "Store",
    "StoreUnavailable",
    "TransitionRecord",
    "breaker_component",
    "breaker_sample_status",
    "create_db_engine",
    "head_revision",
    "migrate",
    "normalize_db_url",
    "redact_db_url",
    "schema_revision",
    "store_verdict",
    "upstream_sample_status",
    "uptime_pct",
]
