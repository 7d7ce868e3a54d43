"""Alerts: one JSON POST to ``ALERT_WEBHOOK_URL`` when an incident needs a human, one when it ends.

What is sent
============

The same incidents as the history: the Runtime's :class:`backend_core.incidents.IncidentFeed`
hands both the same events (alerts never depend on the database being up):

- ``breaker_opened`` / ``breaker_closed`` as soon as a circuit breaker opens / closes;
- ``upstream_down`` once the upstream link has been down for ``ALERT_AFTER_SECONDS``
  (a shorter outage sends nothing at all), and ``upstream_recovered`` when it is back;
- for a planned maintenance (the upstream announced the drop: Deriv's ``website_status``
  "updating", an incident with ``planned``) ``maintenance_started`` after the same delay
  instead, and ``maintenance_ended`` when the link is back: never ``upstream_down``, so a
  receiver that pages on outages is not woken by a deploy Deriv announced.

When the service stops, every incident that fired is resolved with ``"recovered": false``
and the recovery ``service_stopped``, so a receiver never keeps a page open for a process
that is gone. ``cause`` and ``recovery`` are the incident's codes
(:class:`~backend_core.incidents.Cause`, :class:`~backend_core.incidents.Recovery`);
``summary`` and ``message`` say it in words.

De-duplication is by construction: each incident fires at most once and resolves at most
once, and only an incident that fired can resolve. Every POST carries an
``Idempotency-Key`` (``<incident id>:<firing|resolved>``): delivery is at-least-once (a
retry after a lost response repeats it), so a receiver can drop the repeat.

Body (``application/json``)::

    {"source": "deriv-status", "instance": "<host>", "event": "upstream_down",
     "status": "firing", "component": "upstream", "incident_id": "<hex>",
     "summary": "...", "cause": "connection_lost", "error_code": "...", "message": "...",
     "planned": false, "started_at": "<UTC ISO 8601>", "ended_at": null,
     "duration_s": 75.0, "recovery": null, "recovered": null, "attempts": null,
     "sent_at": "<UTC ISO 8601>"}

How it never blocks anything
============================

``record_incidents`` is synchronous: the pure step (:class:`AlertDecider`) runs and any alert is
appended to a bounded queue (the oldest waiting one dropped and counted when full; the one
being delivered is not in the queue, so every alert is counted once: sent, failed or
dropped). One sender task posts them in order with :class:`httpx.AsyncClient` (connect and
total timeouts), retrying network errors, 408/425/429 and 5xx with capped full-jitter
backoff (:class:`~backend_core.backoff.FullJitter` under tenacity; ``Retry-After`` is
honoured up to the cap) for at most ``AlertLimits.give_up_after_s`` on the injected clock; any
other 4xx or a redirect is a configuration problem and is not retried. One timer task
fires the upstream alert when its delay has passed. The webhook URL is a secret: it is
never logged, and errors name only the exception type and the webhook's host.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import logging
import random
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, Literal

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from backend_core import __version__
from backend_core.backoff import FullJitter
from backend_core.clock import Clock, iso_utc, sleep_unless
from backend_core.health import CheckResult
from backend_core.incident_words import CAUSE_TEXT, recovery_text
from backend_core.incidents import (
    BREAKER_PREFIX,
    MAX_COMPONENTS,
    IncidentClosed,
    IncidentEvent,
    IncidentOpened,
    Recovery,
    breaker_reason_words,
    instance_name,
)
from backend_core.logs import FaultLog

if TYPE_CHECKING:
    from backend_core.config import Settings

log = logging.getLogger("backend_core.alerts")

# Resolved incident ids remembered to ignore repeats (the tracker never repeats; this only
# bounds the memory of a defensive check).
REMEMBERED_RESOLVED: Final = 1000
# Status codes worth retrying: the receiver is busy or broken, not refusing the request.
RETRY_STATUSES: Final = frozenset({408, 425, 429, 500, 502, 503, 504})

AlertEvent = Literal[
    "upstream_down",
    "upstream_recovered",
    "maintenance_started",
    "maintenance_ended",
    "breaker_opened",
    "breaker_closed",
]


def incident_message(incident: IncidentOpened) -> str:
    """The upstream's error message; for a breaker, why it opened, in words."""
    if incident.kind == "breaker":
        name = incident.component.removeprefix(BREAKER_PREFIX)
        code = incident.error_code or ""
        return f"Circuit '{name}' opened: {breaker_reason_words(code)}."
    return incident.message or "The market data link is down."


# ---------------------------------------------------------------------------- pure


@dataclass(frozen=True, slots=True)
class Alert:
    """One notification: an incident firing or resolved, decided at ``at`` (wall seconds)."""

    event: AlertEvent
    status: Literal["firing", "resolved"]
    incident: IncidentOpened
    at: float
    ended_at: float | None = None
    recovery: Recovery | None = None
    attempts: int | None = None

    @property
    def idempotency_key(self) -> str:
        return f"{self.incident.key}:{self.status}"

    def summary(self) -> str:
        incident = self.incident
        name = incident.component.removeprefix(BREAKER_PREFIX)
        took = _duration_words((self.ended_at or self.at) - incident.started_at)
        message = incident_message(incident)
        if self.event == "maintenance_started":
            return f"Market data feed in planned maintenance for {took} ({message})"
        if self.event == "upstream_down":
            reason = incident.error_code or CAUSE_TEXT.get(incident.cause, str(incident.cause))
            return f"Market data feed down for {took} ({reason}: {message})"
        if self.event == "breaker_opened":
            return f"Circuit breaker '{name}' opened ({message})"
        what = f"Circuit breaker '{name}'" if incident.kind == "breaker" else "Market data feed"
        how = recovery_text(self.recovery, self.attempts) if self.recovery is not None else ""
        if not self.recovered:  # the service stopped while it was still down
            return f"{what}: no longer watched after {took} ({how})"
        if self.event == "maintenance_ended":
            return f"{what} back after {took} of planned maintenance ({how})"
        if self.event == "upstream_recovered":
            return f"{what} back after {took} ({how})"
        return f"{what} closed after {took} ({how})"

    @property
    def recovered(self) -> bool | None:
        """For a resolved alert: did it recover (``False``: the service stopped first)."""
        return None if self.recovery is None else self.recovery.recovered

    def payload(self, *, instance: str, sent_at: float) -> dict[str, Any]:
        incident = self.incident
        end = self.ended_at if self.ended_at is not None else self.at
        return {
            "source": "deriv-status",
            "version": __version__,
            "instance": instance,
            "event": self.event,
            "status": self.status,
            "component": incident.component,
            "incident_id": incident.key,
            "summary": self.summary(),
            "cause": incident.cause.value,
            "error_code": incident.error_code,
            "message": incident_message(incident),
            "planned": incident.planned,
            "started_at": iso_utc(incident.started_at),
            "ended_at": iso_utc(self.ended_at),
            "duration_s": round(max(0.0, end - incident.started_at), 1),
            "recovery": self.recovery.value if self.recovery is not None else None,
            "recovered": self.recovered,
            "attempts": self.attempts,
            "sent_at": iso_utc(sent_at),
        }


def _duration_words(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


@dataclass(slots=True)
class _Pending:
    incident: IncidentOpened
    due_at: float  # monotonic


class AlertDecider:
    """Incident events in, alerts out; upstream alerts wait ``alert_after_s``. Pure.

    ``now`` is the monotonic time (for the delay), ``wall`` the wall time (for output).
    """

    def __init__(self, alert_after_s: float, *, max_tracked: int = MAX_COMPONENTS) -> None:
        if alert_after_s < 0:
            raise ValueError("alert_after_s must be at least 0")
        self._after_s = alert_after_s
        self._max_tracked = max_tracked
        self._pending: dict[str, _Pending] = {}
        self._fired: dict[str, IncidentOpened] = {}
        self._resolved: deque[str] = deque(maxlen=REMEMBERED_RESOLVED)
        self._resolved_set: set[str] = set()
        self.ignored = 0

    @property
    def firing(self) -> list[IncidentOpened]:
        return list(self._fired.values())

    def on_incident(self, event: IncidentEvent, now: float, wall: float) -> list[Alert]:
        if isinstance(event, IncidentOpened):
            return self._opened(event, now, wall)
        return self._closed(event, wall)

    def _opened(self, incident: IncidentOpened, now: float, wall: float) -> list[Alert]:
        key = incident.key
        if key in self._pending or key in self._fired or key in self._resolved_set:
            return []  # a repeat: one alert per incident
        if len(self._pending) + len(self._fired) >= self._max_tracked:
            self.ignored += 1
            return []
        if incident.kind == "breaker":
            self._fired[key] = incident
            return [Alert("breaker_opened", "firing", incident, wall)]
        if self._after_s == 0:
            self._fired[key] = incident
            return [Alert(_firing_event(incident), "firing", incident, wall)]
        self._pending[key] = _Pending(incident, now + self._after_s)
        return []

    def _closed(self, closed: IncidentClosed, wall: float) -> list[Alert]:
        key = closed.key
        if self._pending.pop(key, None) is not None:
            return []  # shorter than the alert delay: nobody needs to hear about it
        incident = self._fired.pop(key, None)
        if incident is None:
            return []
        self._remember(key)
        return [
            Alert(
                _resolved_event(incident), "resolved", incident, wall, closed.ended_at, closed.recovery, closed.attempts
            )
        ]

    def due(self, now: float, wall: float) -> list[Alert]:
        """Upstream incidents whose delay has passed: they fire now (once)."""
        alerts = []
        for key, pending in list(self._pending.items()):
            if pending.due_at <= now:
                del self._pending[key]
                self._fired[key] = pending.incident
                alerts.append(Alert(_firing_event(pending.incident), "firing", pending.incident, wall))
        return alerts

    def next_due(self) -> float | None:
        return min((p.due_at for p in self._pending.values()), default=None)

    def _remember(self, key: str) -> None:
        if len(self._resolved) == self._resolved.maxlen:
            self._resolved_set.discard(self._resolved[0])
        self._resolved.append(key)
        self._resolved_set.add(key)


def _firing_event(incident: IncidentOpened) -> AlertEvent:
    if incident.kind == "breaker":
        return "breaker_opened"
    return "maintenance_started" if incident.planned else "upstream_down"


def _resolved_event(incident: IncidentOpened) -> AlertEvent:
    if incident.kind == "breaker":
        return "breaker_closed"
    return "maintenance_ended" if incident.planned else "upstream_recovered"


def retry_after_seconds(value: str | None, now_wall: float) -> float | None:
    """``Retry-After`` as seconds (delta-seconds or an HTTP date); ``None`` if absent or bad."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit() and len(value) <= 9:
        return float(value)
    with contextlib.suppress(TypeError, ValueError, IndexError, OverflowError):
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - now_wall)
    return None


def delivery_verdict(status_code: int) -> Literal["delivered", "retry", "refused"]:
    """What a receiver's answer means for this alert. Pure."""
    if 200 <= status_code < 300:
        return "delivered"
    if status_code in RETRY_STATUSES or status_code >= 500:
        return "retry"
    return "refused"


# ---------------------------------------------------------------------------- shell


class _RetryableDelivery(Exception):
    def __init__(self, detail: str, retry_after_s: float | None = None) -> None:
        super().__init__(detail)
        self.retry_after_s = retry_after_s


class _RefusedDelivery(Exception):
    pass


@dataclass(frozen=True, slots=True)
class AlertLimits:
    """How much the sender holds, how long it waits and how it retries (rule 5)."""

    # Alerts waiting to be delivered. Even a link flapping every minute makes a handful an
    # hour; 100 ride out a receiver outage of hours, and the newest state matters most,
    # so the oldest are dropped (and counted) when full.
    queue_size: int = 100
    # A webhook receiver answers in milliseconds; these only stop a dead one from holding
    # the sender (DESIGN.md rule 5).
    connect_timeout_s: float = 5.0
    timeout_s: float = 10.0
    # Backoff between delivery attempts: quick for a blip, at most a minute apart.
    retry_initial_s: float = 1.0
    retry_max_s: float = 60.0
    # An alert still undelivered after an hour is stale: give it up (counted, logged).
    give_up_after_s: float = 3600.0
    # stop() spends at most this long delivering what is queued.
    stop_timeout_s: float = 3.0


@dataclass(slots=True)
class _AlertCounters:
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    attempts: int = 0
    by_event: dict[str, int] = field(default_factory=dict)


class AlertService:
    """Webhook alerts: owned, started and stopped by the Runtime. Disabled without a URL."""

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        *,
        url: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        instance: str | None = None,
        limits: AlertLimits = AlertLimits(),
        rng: random.Random | None = None,
    ) -> None:
        secret = settings.ALERT_WEBHOOK_URL
        self._url = url if url is not None else (secret.get_secret_value() if secret is not None else None)
        self.enabled = self._url is not None
        self._clock = clock
        self._transport = transport
        self.instance = instance_name(instance)
        self.alert_after_s = settings.ALERT_AFTER_SECONDS
        self.limits = limits
        self._backoff = FullJitter(limits.retry_initial_s, limits.retry_max_s, rng)
        self._host = _host_of(self._url)
        self._decider = AlertDecider(settings.ALERT_AFTER_SECONDS)
        # Alerts not delivered yet: those waiting, and the one being delivered
        # (``_in_flight``, not in the deque). A full queue drops the oldest *waiting*
        # alert, never the one in delivery, so every alert is counted once.
        self._queue: deque[Alert] = deque()
        self._in_flight: Alert | None = None
        self._counters = _AlertCounters()
        self._client: httpx.AsyncClient | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._new_run()
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.last_sent_at: float | None = None
        self.delivering = False
        # A bug here must never reach the caller (the runtime's status task, a breaker).
        self._fault = FaultLog(log, "alerts", clock)

    def _new_run(self) -> None:
        """Fresh per-run state: asyncio primitives bind to the loop of the run that uses them."""
        self._has_work = asyncio.Event()
        self._timer_changed = asyncio.Event()
        self._idle = asyncio.Event()
        if not self._queue and self._in_flight is None:
            self._idle.set()
        self._stopping = False

    # ------------------------------------------------------------------ producers (never wait)

    def record_incidents(self, events: Sequence[IncidentEvent]) -> None:
        """Incidents opened or closed (an :class:`~backend_core.incidents.IncidentFeed` subscriber)."""
        if self.enabled:
            try:
                self._feed(events)
            except Exception:
                self._fault("record_incidents")

    def _feed(self, events: Iterable[IncidentEvent]) -> None:
        now, wall = self._clock.monotonic(), self._clock.wall()
        for event in events:
            self._enqueue(self._decider.on_incident(event, now, wall))
        self._timer_changed.set()

    def _enqueue(self, alerts: Iterable[Alert]) -> None:
        for alert in alerts:
            if self.pending >= self.limits.queue_size and self._queue:
                dropped = self._queue.popleft()
                self._counters.dropped += 1
                log.warning(
                    "alert queue full: dropped the oldest alert (%s %s)", dropped.event, dropped.incident.component
                )
            self._queue.append(alert)
            self._idle.clear()
            self._has_work.set()

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if not self.enabled or self._tasks:
            return
        if self._stopping:
            self._new_run()  # started again after a stop (a lifespan restart)
        timeout_s = self.limits.timeout_s
        self._client = httpx.AsyncClient(
            transport=self._transport,
            timeout=httpx.Timeout(timeout_s, connect=min(self.limits.connect_timeout_s, timeout_s)),
            follow_redirects=False,
            limits=httpx.Limits(max_connections=2, max_keepalive_connections=1),
            headers={"user-agent": f"deriv-status-alerts/{__version__}"},
        )
        self._tasks = [
            asyncio.create_task(self._send_loop(), name="alerts-sender"),
            asyncio.create_task(self._timer_loop(), name="alerts-timer"),
        ]
        log.info("alerts enabled: webhook set, upstream alert after %.0f s", self.alert_after_s)

    async def stop(self, timeout_s: float | None = None) -> None:
        """Deliver what is queued within ``timeout_s`` (``limits.stop_timeout_s`` by default),
        then stop both tasks and the client."""
        if not self._tasks:
            return
        self._stopping = True
        with contextlib.suppress(TimeoutError):
            async with self._clock.timeout(self.limits.stop_timeout_s if timeout_s is None else timeout_s):
                await self._idle.wait()
        if self._queue:
            log.warning("alerts: %d alerts not delivered before shutdown", len(self._queue))
            self._counters.dropped += len(self._queue)
            self._queue.clear()
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._in_flight is not None:  # cut off mid-delivery: neither sent nor given up
            self._counters.dropped += 1
            self._in_flight = None
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                async with self._clock.timeout(timeout_s):
                    await client.aclose()

    # ------------------------------------------------------------------ tasks

    async def _timer_loop(self) -> None:
        while True:
            self._timer_changed.clear()
            self._enqueue(self._decider.due(self._clock.monotonic(), self._clock.wall()))
            due = self._decider.next_due()
            if due is None:
                await self._timer_changed.wait()
                continue
            await sleep_unless(self._clock, max(0.0, due - self._clock.monotonic()), self._timer_changed)

    async def _send_loop(self) -> None:
        while True:
            if not self._queue:
                self._has_work.clear()
                self._idle.set()
                await self._has_work.wait()
                continue
            alert = self._in_flight = self._queue.popleft()
            self.delivering = True
            try:
                await self._deliver(alert)
            finally:
                self.delivering = False
            self._in_flight = None

    async def _deliver(self, alert: Alert) -> None:
        give_up_at = self._clock.monotonic() + self.limits.give_up_after_s
        retrying = AsyncRetrying(
            stop=lambda state: self._clock.monotonic() >= give_up_at,
            wait=self._wait,
            retry=retry_if_exception(lambda exc: isinstance(exc, _RetryableDelivery)),
            sleep=self._sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    await self._post(alert)
        except _RetryableDelivery as exc:
            self._counters.failed += 1
            log.error("alert %s for %s given up after retries: %s", alert.event, alert.incident.component, exc)
        except _RefusedDelivery as exc:
            self._counters.failed += 1
            log.error("alert %s for %s refused by the webhook: %s", alert.event, alert.incident.component, exc)
        else:
            self._counters.sent += 1
            self._counters.by_event[alert.event] = self._counters.by_event.get(alert.event, 0) + 1
            self.last_sent_at = self._clock.wall()
            self.last_error = None
            log.info("alert sent: %s %s", alert.status, alert.summary())

    async def _post(self, alert: Alert) -> None:
        client, url = self._client, self._url
        assert client is not None and url is not None
        self._counters.attempts += 1
        body = json.dumps(alert.payload(instance=self.instance, sent_at=self._clock.wall())).encode()
        try:
            response = await client.post(
                url,
                content=body,
                headers={"content-type": "application/json", "idempotency-key": alert.idempotency_key},
            )
        except httpx.HTTPError as exc:
            # Never the exception's text: it may hold the URL (the secret), in any spelling.
            raise self._failed(_RetryableDelivery(f"{type(exc).__name__} from the webhook at {self._host}")) from None
        verdict = delivery_verdict(response.status_code)
        if verdict == "delivered":
            return
        detail = f"HTTP {response.status_code}"
        if verdict == "retry":
            hint = retry_after_seconds(response.headers.get("retry-after"), self._clock.wall())
            raise self._failed(_RetryableDelivery(detail, hint))
        raise self._failed(_RefusedDelivery(detail + " (not retried: fix the receiver or ALERT_WEBHOOK_URL)"))

    def _failed(self, exc: Exception) -> Exception:
        self.last_error = str(exc)
        self.last_error_at = self._clock.wall()
        return exc

    def _wait(self, state: RetryCallState) -> float:
        backoff = self._backoff(state)
        exc = state.outcome.exception() if state.outcome is not None else None
        hint = getattr(exc, "retry_after_s", None)
        if isinstance(hint, float):
            return max(backoff, min(hint, self.limits.retry_max_s))
        return backoff

    async def _sleep(self, seconds: float) -> None:
        if self._stopping:
            # stop() bounds the flush; a retry would only outlive it.
            raise _RetryableDelivery("stopping")
        await self._clock.sleep(seconds)

    # ------------------------------------------------------------------ reads

    @property
    def pending(self) -> int:
        """Alerts not delivered yet (waiting, and the one being delivered)."""
        return len(self._queue) + (self._in_flight is not None)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every queued alert is delivered or given up (tests and tools)."""
        try:
            async with self._clock.timeout(timeout_s):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    def snapshot(self) -> dict[str, Any]:
        c = self._counters
        return {
            "enabled": self.enabled,
            "alert_after_s": self.alert_after_s,
            "pending": self.pending,
            "max_pending": self.limits.queue_size,
            "sent_total": c.sent,
            "sent_by_event": dict(c.by_event),
            "failed_total": c.failed,
            "dropped_total": c.dropped,
            "attempts_total": c.attempts,
            "faults_total": self._fault.count,
            "firing": [i.component for i in self._decider.firing],
            "last_error": self.last_error,
            "last_error_at": iso_utc(self.last_error_at),
            "last_sent_at": iso_utc(self.last_sent_at),
        }

    def health_check(self) -> list[CheckResult]:
        if not self.enabled:
            return [CheckResult("alerts", "component", "webhook", "pass", "disabled", None, "ALERT_WEBHOOK_URL unset")]
        pending = self.pending
        if self.last_error is not None and (pending or self._counters.failed):
            output = f"alert webhook failing: {self.last_error}; {pending} alerts waiting"
            return [CheckResult("alerts", "component", "webhook", "warn", pending, None, output)]
        return [CheckResult("alerts", "component", "webhook", "pass", pending, None, "delivering")]


def _host_of(url: str | None) -> str:
    """The webhook's host, the only part of the (secret) URL an error may name."""
    if url is None:
        return "unknown host"
    try:
        return httpx.URL(url).host or "unknown host"
    except (httpx.InvalidURL, TypeError, ValueError):
        return "unknown host"


__all__ = [
    "Alert",
    "AlertDecider",
    "AlertLimits",
    "AlertService",
    "delivery_verdict",
    "retry_after_seconds",
]
