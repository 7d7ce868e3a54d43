"""Alerts: the pure decision (fake time), and the service driven by a fake clock over a mock transport."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from backend_core.alerts import (
    Alert,
    AlertDecider,
    AlertLimits,
    AlertService,
    delivery_verdict,
    retry_after_seconds,
)
from backend_core.breakers.breaker import Transition
from backend_core.breakers.core import BreakerState
from backend_core.clock import Clock, FakeClock
from backend_core.config import load_settings
from backend_core.events import ErrorInfo, LinkState, UpstreamSnapshot
from backend_core.incidents import Cause, IncidentClosed, IncidentFeed, IncidentOpened, Recovery
from tests.helpers import turns_until

WALL = 1_700_000_000.0
URL = "https://hooks.example.test/services/T000/B000/sekrit"


def upstream_incident(key: str = "u1", planned: bool = False) -> IncidentOpened:
    return IncidentOpened(
        key, "upstream", "upstream", WALL, Cause.CONNECTION_LOST, "ConnectionLost", "dropped", planned
    )


def maintenance_incident(key: str = "m1") -> IncidentOpened:
    message = "Deriv is updating its servers; reconnecting."
    return IncidentOpened(
        key, "upstream", "upstream", WALL, Cause.PLANNED_MAINTENANCE, "SiteUpdating", message, planned=True
    )


def breaker_incident(key: str = "b1") -> IncidentOpened:
    return IncidentOpened(key, "breaker:websocket", "breaker", WALL, Cause.BREAKER_OPENED, "failure_threshold", "")


# ---------------------------------------------------------------------------- the decision


def test_a_breaker_alerts_at_once_and_resolves_once() -> None:
    decider = AlertDecider(60)
    [firing] = decider.on_incident(breaker_incident(), 0.0, WALL)
    assert (firing.event, firing.status, firing.idempotency_key) == ("breaker_opened", "firing", "b1:firing")
    assert decider.on_incident(breaker_incident(), 1.0, WALL) == []  # a repeat
    closed = IncidentClosed(breaker_incident(), WALL + 30, Recovery.BREAKER_PROBE)
    [resolved] = decider.on_incident(closed, 30.0, WALL + 30)
    assert (resolved.event, resolved.status, resolved.recovery) == (
        "breaker_closed",
        "resolved",
        Recovery.BREAKER_PROBE,
    )
    again = IncidentClosed(breaker_incident(), WALL + 31, Recovery.RESET)
    assert decider.on_incident(again, 31.0, WALL + 31) == []
    assert decider.on_incident(breaker_incident(), 32.0, WALL + 32) == []  # resolved ids are remembered


def test_the_upstream_alerts_only_after_the_delay_and_only_once() -> None:
    decider = AlertDecider(60)
    assert decider.on_incident(upstream_incident(), 100.0, WALL) == []
    assert decider.next_due() == 160.0
    assert decider.due(159.9, WALL + 59.9) == []
    [firing] = decider.due(160.0, WALL + 60)
    assert (firing.event, firing.at) == ("upstream_down", WALL + 60)
    assert decider.due(500.0, WALL + 400) == [] and decider.next_due() is None
    closed = IncidentClosed(upstream_incident(), WALL + 90, Recovery.RECONNECTED, 4)
    [resolved] = decider.on_incident(closed, 190.0, WALL + 90)
    assert (resolved.event, resolved.attempts, resolved.ended_at) == ("upstream_recovered", 4, WALL + 90)


def test_a_short_upstream_outage_sends_nothing() -> None:
    decider = AlertDecider(60)
    decider.on_incident(upstream_incident(), 100.0, WALL)
    closed = IncidentClosed(upstream_incident(), WALL + 59, Recovery.RECONNECTED)
    assert decider.on_incident(closed, 159.0, WALL + 59) == []
    assert decider.due(1000.0, WALL + 900) == [] and decider.next_due() is None


def test_a_planned_maintenance_is_never_an_upstream_down_page() -> None:
    decider = AlertDecider(60)
    assert decider.on_incident(maintenance_incident(), 100.0, WALL) == []
    [firing] = decider.due(160.0, WALL + 60)
    assert (firing.event, firing.status, firing.idempotency_key) == ("maintenance_started", "firing", "m1:firing")
    payload = firing.payload(instance="h", sent_at=WALL + 60)
    assert (payload["event"], payload["cause"], payload["planned"]) == (
        "maintenance_started",
        "planned_maintenance",
        True,
    )
    assert payload["summary"] == (
        "Market data feed in planned maintenance for 60 s (Deriv is updating its servers; reconnecting.)"
    )
    closed = IncidentClosed(maintenance_incident(), WALL + 90, Recovery.RECONNECTED, 2)
    [ended] = decider.on_incident(closed, 190.0, WALL + 90)
    assert (ended.event, ended.status, ended.recovered) == ("maintenance_ended", "resolved", True)
    assert ended.summary() == "Market data feed back after 90 s of planned maintenance (reconnected after 2 attempts)"


def test_a_short_planned_maintenance_sends_nothing_and_a_zero_delay_says_maintenance() -> None:
    decider = AlertDecider(60)
    decider.on_incident(maintenance_incident(), 100.0, WALL)
    assert (
        decider.on_incident(IncidentClosed(maintenance_incident(), WALL + 5, Recovery.RECONNECTED), 105.0, WALL) == []
    )
    assert decider.due(1000.0, WALL + 900) == []
    [firing] = AlertDecider(0).on_incident(maintenance_incident(), 0.0, WALL)
    assert firing.event == "maintenance_started"


def test_a_zero_delay_alerts_at_once() -> None:
    [firing] = AlertDecider(0).on_incident(upstream_incident(), 0.0, WALL)
    assert firing.event == "upstream_down"


def test_tracked_incidents_are_bounded() -> None:
    decider = AlertDecider(60, max_tracked=2)
    for key in ("a", "b", "c"):
        decider.on_incident(breaker_incident(key), 0.0, WALL)
    assert len(decider.firing) == 2 and decider.ignored == 1


def test_negative_delay_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 0"):
        AlertDecider(-1)


def test_payload_and_summary() -> None:
    firing = Alert("upstream_down", "firing", upstream_incident(), WALL + 75)
    body = firing.payload(instance="host-1", sent_at=WALL + 76)
    assert body | {"version": None} == {
        "source": "deriv-status",
        "version": None,
        "instance": "host-1",
        "event": "upstream_down",
        "status": "firing",
        "component": "upstream",
        "incident_id": "u1",
        "summary": "Market data feed down for 75 s (ConnectionLost: dropped)",
        "cause": "connection_lost",
        "error_code": "ConnectionLost",
        "message": "dropped",
        "planned": False,
        "started_at": "2023-11-14T22:13:20.000Z",
        "ended_at": None,
        "duration_s": 75.0,
        "recovery": None,
        "recovered": None,
        "attempts": None,
        "sent_at": "2023-11-14T22:14:36.000Z",
    }
    resolved = Alert(
        "upstream_recovered", "resolved", upstream_incident(), WALL + 600, WALL + 600, Recovery.MANUAL_RETRY
    )
    assert resolved.summary() == "Market data feed back after 10 min (manual retry)"
    body = resolved.payload(instance="h", sent_at=WALL)
    assert (body["recovery"], body["recovered"]) == ("manual_retry", True)
    reconnected = Alert(
        "upstream_recovered", "resolved", upstream_incident(), WALL + 90, WALL + 90, Recovery.RECONNECTED, 4
    )
    assert reconnected.summary() == "Market data feed back after 90 s (reconnected after 4 attempts)"
    assert reconnected.payload(instance="h", sent_at=WALL)["attempts"] == 4
    stopped = Alert("upstream_recovered", "resolved", upstream_incident(), WALL, WALL + 9000, Recovery.SERVICE_STOPPED)
    assert stopped.payload(instance="h", sent_at=WALL)["recovered"] is False
    assert stopped.summary() == "Market data feed: no longer watched after 2.5 h (not recovered: the service stopped)"
    opened = Alert("breaker_opened", "firing", breaker_incident(), WALL)
    assert (
        opened.summary()
        == "Circuit breaker 'websocket' opened (Circuit 'websocket' opened: too many failures in a row.)"
    )
    assert (
        opened.payload(instance="h", sent_at=WALL)["message"]
        == "Circuit 'websocket' opened: too many failures in a row."
    )
    planned = Alert("maintenance_started", "firing", upstream_incident(planned=True), WALL + 5)
    assert planned.summary() == "Market data feed in planned maintenance for 5 s (dropped)"
    stopped_planned = Alert(
        "maintenance_ended", "resolved", upstream_incident(planned=True), WALL, WALL + 9000, Recovery.SERVICE_STOPPED
    )
    assert stopped_planned.summary().startswith("Market data feed: no longer watched after 2.5 h")


def test_delivery_verdicts() -> None:
    assert [delivery_verdict(c) for c in (200, 202, 204)] == ["delivered"] * 3
    assert [delivery_verdict(c) for c in (408, 425, 429, 500, 502, 503, 504, 599)] == ["retry"] * 8
    assert [delivery_verdict(c) for c in (301, 400, 401, 403, 404, 410, 413)] == ["refused"] * 7


def test_retry_after_parsing() -> None:
    assert retry_after_seconds(None, WALL) is None
    assert retry_after_seconds("7", WALL) == 7.0
    assert retry_after_seconds(" 12 ", WALL) == 12.0
    assert retry_after_seconds("Tue, 14 Nov 2023 22:13:50 GMT", WALL) == 30.0
    assert retry_after_seconds("Tue, 14 Nov 2023 22:00:00 GMT", WALL) == 0.0
    assert retry_after_seconds("soon", WALL) is None
    assert retry_after_seconds("１２", WALL) is None
    assert retry_after_seconds("9" * 50, WALL) is None


# ---------------------------------------------------------------------------- the service, fake time


def snap(state: LinkState, error: str | None = None) -> UpstreamSnapshot:
    return UpstreamSnapshot(
        state=state,
        since=WALL,
        url="x",
        simulated=True,
        last_error=ErrorInfo(error, f"{error} happened", WALL) if error else None,
    )


class Hook:
    """A mock webhook: answers with the queued statuses, then 200."""

    def __init__(self, *statuses: int, headers: dict[str, str] | None = None) -> None:
        self.statuses = list(statuses)
        self.headers = headers or {}
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        status = self.statuses.pop(0) if self.statuses else 200
        return httpx.Response(status, headers=self.headers if status != 200 else {})

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]


def service(clock: FakeClock, hook: Hook, after_s: str = "60", **limits: Any) -> AlertService:
    """A service posting to ``hook``; ``limits`` are :class:`AlertLimits` fields."""
    settings = load_settings({"ALERT_WEBHOOK_URL": URL, "ALERT_AFTER_SECONDS": after_s})
    return AlertService(
        settings, clock, transport=httpx.MockTransport(hook), instance="test", limits=AlertLimits(**limits)
    )


def fed(alerts: AlertService, clock: Clock) -> IncidentFeed:
    """The Runtime's wiring: one incident feed whose events reach the alerts."""
    feed = IncidentFeed(clock)
    feed.subscribe(alerts.record_incidents)
    return feed


@contextlib.asynccontextmanager
async def running(
    hook: Hook, *, stop_timeout_s: float = 3.0, **kwargs: Any
) -> AsyncIterator[tuple[AlertService, IncidentFeed, FakeClock]]:
    """A started service on a fake clock, fed as the Runtime feeds it; stopped afterwards."""
    clock = FakeClock(start_wall=WALL)
    alerts = service(clock, hook, **kwargs)
    feed = fed(alerts, clock)
    await alerts.start()
    try:
        yield alerts, feed, clock
    except BaseException:
        # A failed test can leave an alert queued; stop() would then wait on a fake clock
        # nobody advances, and the failure would show as a pytest timeout. Expire it.
        stopping = asyncio.ensure_future(alerts.stop(timeout_s=stop_timeout_s))
        await turns_until(lambda: stopping.done() or clock.deadlines > 0, "stop() waiting or done")
        clock.advance(stop_timeout_s)
        await stopping
        raise
    await alerts.stop(timeout_s=stop_timeout_s)


def sender_waits(alerts: AlertService, clock: FakeClock) -> Callable[[], bool]:
    """The sender waits: with nothing left to send, or for a retry on the clock (the timer
    needs no clock in these tests: breaker alerts go out at once)."""
    return lambda: alerts.pending == 0 or (alerts.delivering and clock.sleepers == 1)


async def test_the_service_sends_one_alert_per_incident_and_one_resolution() -> None:
    hook = Hook()
    async with running(hook) as (alerts, feed, clock):
        feed.status(snap(LinkState.CONNECTED))
        feed.status(snap(LinkState.RECONNECTING, "ConnectionLost"))
        await turns_until(lambda: clock.sleepers == 1, "the upstream alert's delay on the clock")
        clock.advance(59)
        await turns_until(lambda: clock.sleepers == 1, "the upstream alert's delay, still on the clock")
        assert hook.requests == [] and alerts.pending == 0
        feed.status(snap(LinkState.RECONNECTING, "ConnectionRefused"))
        clock.advance(1)
        await turns_until(lambda: hook.requests, "the upstream_down alert")
        assert await alerts.wait_idle(5)
        assert [b["event"] for b in hook.bodies()] == ["upstream_down"]
        clock.advance(600)
        feed.status(snap(LinkState.CIRCUIT_OPEN, "ConnectionRefused"))
        feed.status(snap(LinkState.CONNECTED))
        assert await alerts.wait_idle(5)
        bodies = hook.bodies()
        assert [(b["event"], b["status"]) for b in bodies] == [
            ("upstream_down", "firing"),
            ("upstream_recovered", "resolved"),
        ]
        assert bodies[0]["incident_id"] == bodies[1]["incident_id"]
        assert bodies[1]["duration_s"] == 660.0 and bodies[1]["recovery"] == "breaker_probe"
        request = hook.requests[0]
        assert request.headers["content-type"] == "application/json"
        assert request.headers["idempotency-key"] == f"{bodies[0]['incident_id']}:firing"
        assert request.headers["user-agent"].startswith("deriv-status-alerts/")
        assert alerts.snapshot()["sent_total"] == 2 and alerts.health_check()[0].status == "pass"


async def test_breaker_transitions_alert_at_once_and_flaps_are_one_incident() -> None:
    hook = Hook()
    async with running(hook) as (alerts, feed, clock):
        for previous, state, reason in [
            (BreakerState.CLOSED, BreakerState.OPEN, "failure_threshold"),
            (BreakerState.OPEN, BreakerState.HALF_OPEN, "recovery_timeout"),
            (BreakerState.HALF_OPEN, BreakerState.OPEN, "probe_failed"),
            (BreakerState.OPEN, BreakerState.HALF_OPEN, "recovery_timeout"),
            (BreakerState.HALF_OPEN, BreakerState.CLOSED, "probe_succeeded"),
        ]:
            feed.transition(Transition("websocket", previous, state, reason, 0.0, WALL))
        assert await alerts.wait_idle(5)
        assert [(b["event"], b["recovery"]) for b in hook.bodies()] == [
            ("breaker_opened", None),
            ("breaker_closed", "breaker_probe"),
        ]


async def test_failed_deliveries_are_retried_with_backoff_and_retry_after() -> None:
    hook = Hook(503, 429, headers={"retry-after": "30"})
    async with running(hook, retry_initial_s=1.0, retry_max_s=60.0) as (alerts, feed, clock):
        feed.transition(Transition("websocket", BreakerState.CLOSED, BreakerState.OPEN, "x", 0.0, WALL))
        waits = sender_waits(alerts, clock)
        await turns_until(lambda: hook.requests and waits(), "the first attempt and its retry's wait")
        assert len(hook.requests) == 1
        clock.advance(29.9)  # Retry-After: 30 is honoured over the 1-2 s backoff
        await turns_until(waits, "the sender to wait")
        assert len(hook.requests) == 1
        clock.advance(0.1)
        await turns_until(lambda: len(hook.requests) == 2 and waits(), "the second attempt and its retry's wait")
        assert len(hook.requests) == 2
        clock.advance(30)
        assert await alerts.wait_idle(5)
        assert len(hook.requests) == 3
        keys = {r.headers["idempotency-key"] for r in hook.requests}
        assert len(keys) == 1, "a retry repeats the same idempotency key"
        snapshot = alerts.snapshot()
        assert (snapshot["sent_total"], snapshot["attempts_total"], snapshot["failed_total"]) == (1, 3, 0)


async def test_a_refusal_is_not_retried_and_health_says_so() -> None:
    hook = Hook(404)
    async with running(hook) as (alerts, feed, clock):
        feed.transition(Transition("websocket", BreakerState.CLOSED, BreakerState.OPEN, "x", 0.0, WALL))
        assert await alerts.wait_idle(5)
        clock.advance(3600)
        await turns_until(sender_waits(alerts, clock), "the sender to wait")
        assert len(hook.requests) == 1
        check = alerts.health_check()[0]
        assert check.status == "warn" and "HTTP 404" in check.output and "sekrit" not in check.output
        assert alerts.snapshot()["failed_total"] == 1


def opened(name: str) -> Transition:
    return Transition(name, BreakerState.CLOSED, BreakerState.OPEN, "x", 0.0, WALL)


async def test_the_queue_is_bounded_drops_the_oldest_waiting_alert_and_counts_each_alert_once() -> None:
    hook = Hook(503, 503)  # the first alert takes three attempts
    async with running(hook, queue_size=3, retry_initial_s=1.0, retry_max_s=1.0) as (alerts, feed, clock):
        feed.transition(opened("api:/r0"))
        waits = sender_waits(alerts, clock)
        await turns_until(lambda: hook.requests and waits(), "r0's first attempt and its retry's wait")
        assert len(hook.requests) == 1 and alerts.delivering  # r0 is being delivered (and retried)
        for i in range(1, 6):
            feed.transition(opened(f"api:/r{i}"))
        snapshot = alerts.snapshot()
        # r0 in delivery is never dropped; of the waiting ones the oldest go.
        assert snapshot["pending"] == 3 and snapshot["dropped_total"] == 3
        for _ in range(5):
            clock.advance(1.0)
            await turns_until(waits, "the sender to wait")
        assert await alerts.wait_idle(5)
        delivered = [body["component"] for body in hook.bodies()[2:]]
        assert delivered == ["breaker:api:/r0", "breaker:api:/r4", "breaker:api:/r5"]
        snapshot = alerts.snapshot()
        assert (snapshot["sent_total"], snapshot["dropped_total"], snapshot["failed_total"]) == (3, 3, 0)


async def test_stop_is_bounded_on_the_clock_and_counts_each_undelivered_alert_once() -> None:
    clock = FakeClock(start_wall=WALL)
    alerts = service(clock, Hook(*([503] * 100)), retry_initial_s=10.0, retry_max_s=10.0)
    feed = fed(alerts, clock)
    await alerts.start()
    for i in range(3):
        feed.transition(opened(f"api:/r{i}"))
    waits = sender_waits(alerts, clock)
    await turns_until(lambda: alerts.snapshot()["attempts_total"] == 1 and waits(), "the first attempt's retry wait")
    stopping = asyncio.ensure_future(alerts.stop(timeout_s=3.0))
    await turns_until(lambda: clock.deadlines == 1, "stop waiting on the clock")
    assert not stopping.done(), "stop waits (on the clock) for the queue to drain"
    clock.advance(3.0)
    await stopping
    snapshot = alerts.snapshot()
    assert snapshot["pending"] == 0
    assert snapshot["sent_total"] + snapshot["failed_total"] + snapshot["dropped_total"] == 3


async def test_a_disabled_service_does_nothing() -> None:
    clock = FakeClock()
    alerts = AlertService(load_settings({}), clock)
    feed = fed(alerts, clock)
    await alerts.start()
    feed.status(snap(LinkState.RECONNECTING, "X"))
    feed.transition(Transition("websocket", BreakerState.CLOSED, BreakerState.OPEN, "x", 0.0, WALL))
    assert alerts.snapshot()["pending"] == 0 and not alerts.enabled
    assert alerts.health_check()[0].status == "pass"
    await alerts.stop()


async def test_transport_errors_are_retried_and_never_leak_the_url() -> None:
    clock = FakeClock(start_wall=WALL)
    calls: list[int] = []

    def failing(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) < 3:
            raise httpx.ConnectError(f"cannot reach {request.url}", request=request)
        return httpx.Response(204)

    settings = load_settings({"ALERT_WEBHOOK_URL": URL})
    limits = AlertLimits(retry_initial_s=1.0)
    alerts = AlertService(settings, clock, transport=httpx.MockTransport(failing), limits=limits)
    feed = fed(alerts, clock)
    await alerts.start()
    try:
        feed.transition(Transition("websocket", BreakerState.CLOSED, BreakerState.OPEN, "x", 0.0, WALL))
        waits = sender_waits(alerts, clock)
        await turns_until(lambda: calls and waits(), "the first attempt and its retry's wait")
        # The type and the host only: the exception's text holds the URL (here with its path).
        assert alerts.last_error == "ConnectError from the webhook at hooks.example.test"
        for _ in range(10):
            clock.advance(5)
            await turns_until(waits, "the sender to wait")
        assert await alerts.wait_idle(5)
        assert len(calls) == 3 and alerts.snapshot()["sent_total"] == 1
    finally:
        await alerts.stop()


def test_a_bug_in_deciding_never_reaches_the_caller() -> None:
    clock = FakeClock(start_wall=WALL)
    alerts = service(clock, Hook())
    feed = fed(alerts, clock)

    def broken(*args: Any) -> Any:
        raise RuntimeError("bug")

    alerts._decider.on_incident = broken  # type: ignore[method-assign]
    feed.transition(Transition("websocket", BreakerState.CLOSED, BreakerState.OPEN, "x", 0.0, WALL))
    assert alerts.snapshot()["faults_total"] == 1 and feed.faults == 0


async def test_incidents_that_fired_are_resolved_as_not_recovered_when_the_service_stops() -> None:
    hook = Hook()
    async with running(hook) as (alerts, feed, clock):
        feed.transition(Transition("websocket", BreakerState.CLOSED, BreakerState.OPEN, "x", 0.0, WALL))
        feed.status(snap(LinkState.RECONNECTING, "ConnectionLost"))
        await turns_until(lambda: hook.requests and clock.sleepers == 1, "the breaker alert, and the upstream timer")
        clock.advance(90)  # past ALERT_AFTER_SECONDS: upstream_down fires
        await turns_until(lambda: len(hook.requests) == 2, "the upstream_down alert")
        feed.close_all(Recovery.SERVICE_STOPPED)  # what the Runtime does at stop
        assert await alerts.wait_idle(5)
        bodies = hook.bodies()
        assert [(b["event"], b["status"], b["recovered"]) for b in bodies] == [
            ("breaker_opened", "firing", None),
            ("upstream_down", "firing", None),
            ("upstream_recovered", "resolved", False),
            ("breaker_closed", "resolved", False),
        ]
        assert all("no longer watched after 90 s" in b["summary"] for b in bodies if b["status"] == "resolved")


async def test_the_service_can_be_started_again_after_a_stop() -> None:
    clock = FakeClock(start_wall=WALL)
    hook = Hook()
    alerts = service(clock, hook)
    feed = fed(alerts, clock)
    await alerts.start()
    await alerts.stop()
    await alerts.start()
    try:
        feed.transition(Transition("websocket", BreakerState.CLOSED, BreakerState.OPEN, "x", 0.0, WALL))
        assert await alerts.wait_idle(5)
        assert [b["event"] for b in hook.bodies()] == ["breaker_opened"]
    finally:
        await alerts.stop()
