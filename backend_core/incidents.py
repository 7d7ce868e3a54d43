"""The incident domain: outages of the upstream link and of circuit breakers, as data.

Pure core (DESIGN.md rule 2):

- :class:`IncidentTracker` turns the stream of :class:`~backend_core.events.UpstreamSnapshot`
  values and breaker transitions into :class:`IncidentOpened` / :class:`IncidentClosed`
  events. It takes the time as an argument and touches nothing else.
- :class:`IncidentFeed` is the service's one tracker (the Runtime owns it): it feeds every
  incident event to each subscriber (the history and the alerts), so the tracking runs
  once and an alert means exactly what an incident means in the history.

Why an incident began is a :class:`Cause` and how it ended a :class:`Recovery` (plus the
number of connection attempts): codes, never sentences. The words a person reads are
chosen from them by the status page (``rxapp.history_view``) and the alerts.

Incident rules
==============

Upstream (component :data:`UPSTREAM`):

- opens when the link leaves ``connected`` (to ``reconnecting`` or ``circuit_open``, or
  ``connecting`` with an error: a start-up that fails is an outage too; the first
  ``connecting`` of a fresh start is not). The cause is ``planned_maintenance`` when the
  upstream announced it (``planned_reconnect``), else what happened; ``error_code`` and
  ``message`` are the snapshot's ``last_error``;
- closes when ``connected`` again: ``manual_retry`` (a user's retry led to the
  connection), ``breaker_probe`` (the link came back through the half-open probe of the
  "websocket" breaker), else ``reconnected`` with the number of attempts;
- a ``stopped`` link (the service shutting down) closes an open incident as
  ``service_stopped``; incidents left open by a process that died are closed at the next
  start as ``service_restarted``.

Breakers (component ``"breaker:<name>"``): opens on a transition to ``open`` (the
transition's reason is the incident's ``error_code``); closes on a transition to
``closed`` (or ``disabled``); half-open flapping stays one incident.
"""

from __future__ import annotations

import logging
import socket
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Final, Literal, TypeAlias

from backend_core.breakers.registry import MAX_API_BREAKERS
from backend_core.clock import Clock
from backend_core.events import LinkState, UpstreamSnapshot
from backend_core.logs import FaultLog

if TYPE_CHECKING:
    from backend_core.breakers.breaker import Transition

log = logging.getLogger("backend_core.incidents")

# ---------------------------------------------------------------------------- shared names

# The components the service tracks: the upstream link, and one per circuit breaker.
UPSTREAM: Final = "upstream"
BREAKER_PREFIX: Final = "breaker:"
WEBSOCKET_BREAKER: Final = BREAKER_PREFIX + "websocket"

# Uptime windows the history reports, in minutes (the keys are the API's).
UPTIME_WINDOWS: Final[Mapping[str, int]] = {"24h": 1440, "7d": 7 * 1440, "30d": 30 * 1440, "90d": 90 * 1440}

# Components tracked at once: the upstream plus every breaker the registry can hold.
MAX_COMPONENTS: Final = MAX_API_BREAKERS + 3

# Text lengths: hostile or long upstream text is clipped to these (the history's columns).
COMPONENT_CHARS: Final = 255
CODE_CHARS: Final = 100
MESSAGE_CHARS: Final = 500

# Why a circuit breaker changed state (backend_core.breakers transition reasons), in plain
# words: one wording for the status page's breaker log and the alerts.
BREAKER_REASON_WORDS: Final[Mapping[str, str]] = {
    "failure_threshold": "too many failures in a row",
    "failure_rate": "too many of the recent calls failed",
    "probe_failed": "the test call failed",
    "probe_timeout": "the test call did not answer in time",
    "forced_open": "held open by an admin",
    "recovery_timeout": "pause over: testing one call",
    "manual_probe": "a Retry asked for a test call",
    "probe_succeeded": "the test call succeeded",
    "reset": "reset by an admin",
    "enabled": "circuit breakers switched on",
    "disabled": "circuit breakers switched off",
}


def breaker_reason_words(code: str) -> str:
    """A transition reason in :data:`BREAKER_REASON_WORDS`; a code this version has no words for, readable as is."""
    return BREAKER_REASON_WORDS.get(code, code.replace("_", " "))


class Cause(StrEnum):
    """Why an incident began."""

    CONNECTION_LOST = "connection_lost"  # the link was up and dropped
    COULD_NOT_CONNECT = "could_not_connect"  # it never came up in this run
    CIRCUIT_OPEN = "circuit_open"  # the "websocket" breaker paused the retries
    PLANNED_MAINTENANCE = "planned_maintenance"  # the upstream announced it
    BREAKER_OPENED = "breaker_opened"  # a circuit breaker opened (the reason is the error code)


class Recovery(StrEnum):
    """How an incident ended."""

    RECONNECTED = "reconnected"  # by itself, after ``attempts`` attempts
    MANUAL_RETRY = "manual_retry"  # a user's Retry led to the connection
    BREAKER_PROBE = "breaker_probe"  # the breaker's half-open test call succeeded
    RESET = "reset"  # an admin reset the breaker
    BREAKERS_ENABLED = "breakers_enabled"
    BREAKERS_DISABLED = "breakers_disabled"
    BREAKER_CLOSED = "breaker_closed"  # closed for a reason this version does not know
    SERVICE_STOPPED = "service_stopped"  # not recovered: the service stopped first
    SERVICE_RESTARTED = "service_restarted"  # not recovered: found open after a crash

    @property
    def recovered(self) -> bool:
        """False when the service stopped watching before the component recovered."""
        return self not in (Recovery.SERVICE_STOPPED, Recovery.SERVICE_RESTARTED)


# A breaker closing for this transition reason ends its incident this way.
_BREAKER_RECOVERIES: Final[Mapping[str, Recovery]] = {
    "probe_succeeded": Recovery.BREAKER_PROBE,
    "reset": Recovery.RESET,
    "enabled": Recovery.BREAKERS_ENABLED,
    "disabled": Recovery.BREAKERS_DISABLED,
}


def clip(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, with an ellipsis."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def instance_name(instance: str | None = None) -> str:
    """The name of this instance in alerts and history rows: ``instance``, else the host name."""
    return clip(instance or socket.gethostname() or "unknown", CODE_CHARS)


def breaker_component(name: str) -> str:
    return clip(BREAKER_PREFIX + name, COMPONENT_CHARS)


def upstream_in_maintenance(snapshot: UpstreamSnapshot) -> bool:
    """A planned upstream maintenance is under way: what every surface shows as maintenance.

    Deriv's ``website_status`` says "updating" (a deploy, announced while the link may still
    be up), or the link is down after a drop the upstream announced (``planned_reconnect``
    until the link is proven again). A stopped service is in no state at all.
    """
    if snapshot.state == LinkState.STOPPED:
        return False
    return snapshot.site_status == "updating" or (snapshot.planned_reconnect and snapshot.state != LinkState.CONNECTED)


def random_key() -> str:
    return uuid.uuid4().hex


# ---------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class IncidentOpened:
    key: str
    component: str
    kind: Literal["upstream", "breaker"]
    started_at: float  # wall seconds
    cause: Cause
    error_code: str | None
    message: str  # the upstream's error message ("" when there was none, and for breakers)
    planned: bool = False


@dataclass(frozen=True, slots=True)
class IncidentClosed:
    opened: IncidentOpened
    ended_at: float  # wall seconds
    recovery: Recovery
    attempts: int | None = None  # connection attempts until the end (upstream only)

    @property
    def key(self) -> str:
        return self.opened.key

    @property
    def component(self) -> str:
        return self.opened.component


IncidentEvent: TypeAlias = IncidentOpened | IncidentClosed
IncidentSink: TypeAlias = Callable[[Sequence[IncidentEvent]], None]


# ---------------------------------------------------------------------------- the tracker (pure)


@dataclass(slots=True)
class _UpstreamOutage:
    opened: IncidentOpened
    attempts_done: int = 0
    cycle_max: int = 0
    last_attempt: int = 0
    probe: bool = False
    # None: no manual retry; "requested": asked, not yet seen running; "running": its attempt is under way.
    manual: Literal["requested", "running"] | None = None

    @property
    def attempts(self) -> int:
        return self.attempts_done + self.cycle_max


class IncidentTracker:
    """Upstream snapshots and breaker transitions in, incident open/close events out. Pure.

    Every method takes the wall-clock time (``now``, Unix seconds) as an argument and
    returns the events it caused; nothing here reads a clock or does I/O.
    """

    def __init__(self, *, new_key: Callable[[], str] = random_key, max_open: int = MAX_COMPONENTS) -> None:
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
            attempts = outage.attempts
            return [IncidentClosed(outage.opened, now, _recovery(outage), attempts or None)]
        if state == LinkState.STOPPED:
            self._planned_hint = False
            outage, self._outage = self._outage, None
            if outage is None:
                return []
            return [IncidentClosed(outage.opened, now, Recovery.SERVICE_STOPPED, outage.attempts)]

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
            cause = Cause.PLANNED_MAINTENANCE
        elif snapshot.state == LinkState.CIRCUIT_OPEN:
            cause = Cause.CIRCUIT_OPEN
        elif self._was_connected:
            cause = Cause.CONNECTION_LOST
        else:
            cause = Cause.COULD_NOT_CONNECT
        return IncidentOpened(
            key=self._new_key(),
            component=UPSTREAM,
            kind="upstream",
            started_at=now,
            cause=cause,
            error_code=clip(error.code, CODE_CHARS) if error else None,
            message=clip(error.message, MESSAGE_CHARS) if error else "",
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
                cause=Cause.BREAKER_OPENED,
                error_code=clip(reason, CODE_CHARS),
                message="",
            )
            self._breakers[component] = opened
            return [opened]
        if to_state in ("closed", "disabled"):
            opened_breaker = self._breakers.pop(component, None)
            if opened_breaker is None:
                return []
            return [IncidentClosed(opened_breaker, now, _BREAKER_RECOVERIES.get(reason, Recovery.BREAKER_CLOSED))]
        return []

    def close_all(self, now: float, recovery: Recovery) -> list[IncidentClosed]:
        """Close every open incident (the service is stopping)."""
        closed: list[IncidentClosed] = []
        outage, self._outage = self._outage, None
        if outage is not None:
            closed.append(IncidentClosed(outage.opened, now, recovery, outage.attempts))
        for opened in self._breakers.values():
            closed.append(IncidentClosed(opened, now, recovery))
        self._breakers.clear()
        return closed


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


def _recovery(outage: _UpstreamOutage) -> Recovery:
    if outage.manual is not None:
        return Recovery.MANUAL_RETRY
    if outage.probe:
        return Recovery.BREAKER_PROBE
    return Recovery.RECONNECTED


# ---------------------------------------------------------------------------- the feed (the Runtime's one tracker)


class IncidentFeed:
    """The service's one :class:`IncidentTracker`; every event it makes goes to each subscriber.

    Owned by the Runtime: status snapshots, breaker transitions and manual retries go in
    once, and history and alerts subscribe to the same incidents. The calls are
    synchronous and never raise: a failing step or subscriber loses that event for that
    subscriber only, which is counted (``faults``) and logged at most once a minute, so
    the caller (the runtime's status task, a breaker's listener) never sees it.
    """

    def __init__(
        self, clock: Clock, *, new_key: Callable[[], str] = random_key, max_open: int = MAX_COMPONENTS
    ) -> None:
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

    def close_all(self, recovery: Recovery = Recovery.SERVICE_STOPPED) -> None:
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


__all__ = [
    "BREAKER_PREFIX",
    "BREAKER_REASON_WORDS",
    "MAX_COMPONENTS",
    "UPSTREAM",
    "UPTIME_WINDOWS",
    "WEBSOCKET_BREAKER",
    "Cause",
    "IncidentClosed",
    "IncidentEvent",
    "IncidentFeed",
    "IncidentOpened",
    "IncidentSink",
    "IncidentTracker",
    "Recovery",
    "breaker_component",
    "breaker_reason_words",
    "clip",
    "instance_name",
    "upstream_in_maintenance",
]
