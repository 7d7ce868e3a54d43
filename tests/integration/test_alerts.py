"""Alerts against a real webhook receiver: a small Starlette app under uvicorn on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from backend_core.alerts import AlertLimits, AlertService
from backend_core.breakers.breaker import Transition
from backend_core.breakers.core import BreakerState
from backend_core.clock import SystemClock
from backend_core.config import load_settings
from backend_core.events import ErrorInfo, LinkState, UpstreamSnapshot
from backend_core.incidents import IncidentFeed
from tests.helpers import until

# Every wait here is bounded by this.
DELIVERY_TIMEOUT_S = 10.0


class Receiver:
    """Records every POST; the first ``fail_first`` get ``fail_status``, or (``hang``) no answer until released."""

    def __init__(self, fail_first: int = 0, fail_status: int = 503, hang: bool = False) -> None:
        self.fail_first = fail_first
        self.fail_status = fail_status
        self.hang = hang
        self.release = asyncio.Event()
        self.attempts: list[tuple[str, dict[str, Any]]] = []
        self.accepted: list[dict[str, Any]] = []

    async def hook(self, request: Request) -> Response:
        body = await request.json()
        self.attempts.append((request.headers.get("idempotency-key", ""), body))
        if len(self.attempts) <= self.fail_first:
            if self.hang:
                await self.release.wait()
            return JSONResponse({"error": "not now"}, status_code=self.fail_status)
        self.accepted.append(body)
        return JSONResponse({"ok": True})

    def app(self) -> Starlette:
        return Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])


def snap(state: LinkState, error: str | None = None, attempt: int = 0) -> UpstreamSnapshot:
    return UpstreamSnapshot(
        state=state,
        since=time.time(),
        url="wss://example/websockets/v3",
        simulated=True,
        attempt=attempt,
        last_error=ErrorInfo(error, f"{error} happened", time.time()) if error else None,
    )


def breaker(to_state: BreakerState, reason: str, from_state: BreakerState) -> Transition:
    return Transition("websocket", from_state, to_state, reason, time.monotonic(), time.time())


async def start_service(
    asgi_server: Callable[..., Awaitable[Any]], receiver: Receiver, after_s: str = "0.3", **limits: Any
) -> AlertService:
    """A started service posting to ``receiver``; ``limits`` are :class:`AlertLimits` fields."""
    served = await asgi_server(receiver.app())
    settings = load_settings({"ALERT_WEBHOOK_URL": f"{served.http_url}/hook", "ALERT_AFTER_SECONDS": after_s})
    limits = {"retry_initial_s": 0.05, "retry_max_s": 0.2, "timeout_s": 2.0, **limits}
    service = AlertService(settings, SystemClock(), limits=AlertLimits(**limits))
    await service.start()
    return service


def fed(service: AlertService) -> IncidentFeed:
    """The Runtime's wiring: one incident feed whose events reach the alerts."""
    feed = IncidentFeed(SystemClock())
    feed.subscribe(service.record_incidents)
    return feed


async def stop_service(service: AlertService) -> None:
    await service.stop()
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("alerts-")], "an alerts task was left"


@contextlib.asynccontextmanager
async def alerting(
    asgi_server: Callable[..., Awaitable[Any]], receiver: Receiver, **options: Any
) -> AsyncIterator[tuple[AlertService, IncidentFeed]]:
    """A started service that alerts ``receiver``, and the feed that reaches it; on the way
    out the receiver lets any hanging request go and the service stops, leaving no task."""
    service = await start_service(asgi_server, receiver, **options)
    try:
        yield service, fed(service)
    finally:
        receiver.release.set()
        await stop_service(service)


async def test_breaker_alerts_are_delivered_once_each(asgi_server: Callable[..., Awaitable[Any]]) -> None:
    receiver = Receiver()
    async with alerting(asgi_server, receiver) as (service, feed):
        feed.transition(breaker(BreakerState.OPEN, "failure_threshold", BreakerState.CLOSED))
        feed.transition(breaker(BreakerState.HALF_OPEN, "recovery_timeout", BreakerState.OPEN))
        feed.transition(breaker(BreakerState.OPEN, "probe_failed", BreakerState.HALF_OPEN))
        feed.transition(breaker(BreakerState.HALF_OPEN, "recovery_timeout", BreakerState.OPEN))
        feed.transition(breaker(BreakerState.CLOSED, "probe_succeeded", BreakerState.HALF_OPEN))
        assert await service.wait_idle(DELIVERY_TIMEOUT_S)
        assert [(b["event"], b["status"], b["component"]) for b in receiver.accepted] == [
            ("breaker_opened", "firing", "breaker:websocket"),
            ("breaker_closed", "resolved", "breaker:websocket"),
        ]
        assert receiver.accepted[1]["recovery"] == "breaker_probe" and receiver.accepted[1]["recovered"] is True


async def test_a_failing_receiver_gets_the_alert_after_retries(asgi_server: Callable[..., Awaitable[Any]]) -> None:
    receiver = Receiver(fail_first=3)
    async with alerting(asgi_server, receiver) as (service, feed):
        feed.transition(breaker(BreakerState.OPEN, "failure_threshold", BreakerState.CLOSED))
        assert await service.wait_idle(DELIVERY_TIMEOUT_S)
        assert len(receiver.attempts) == 4 and len(receiver.accepted) == 1
        assert len({key for key, _ in receiver.attempts}) == 1, "retries repeat the idempotency key"
        snapshot = service.snapshot()
        assert (snapshot["sent_total"], snapshot["attempts_total"], snapshot["failed_total"]) == (1, 4, 0)
        assert service.health_check()[0].status == "pass"


async def test_a_hanging_receiver_times_out_and_is_retried(asgi_server: Callable[..., Awaitable[Any]]) -> None:
    receiver = Receiver(fail_first=1, hang=True)  # the first POST never gets an answer
    async with alerting(asgi_server, receiver, timeout_s=0.3) as (service, feed):
        feed.transition(breaker(BreakerState.OPEN, "failure_threshold", BreakerState.CLOSED))
        assert await service.wait_idle(DELIVERY_TIMEOUT_S)
        # Delivered while the first POST still hangs: the sender gave up on it and retried.
        assert len(receiver.accepted) == 1 and not receiver.release.is_set()
        assert service.snapshot()["attempts_total"] == 2


async def test_the_upstream_alerts_only_when_down_longer_than_the_delay(
    asgi_server: Callable[..., Awaitable[Any]],
) -> None:
    receiver = Receiver()
    async with alerting(asgi_server, receiver, after_s="0.3") as (service, feed):
        feed.status(snap(LinkState.CONNECTED))
        # A short outage: nothing is sent, ever (alerts go out in order, so the first one
        # the receiver sees is the long outage's below).
        feed.status(snap(LinkState.RECONNECTING, "ConnectionLost"))
        feed.status(snap(LinkState.CONNECTED))
        # A long one: one alert when the delay passes, one when it is back.
        feed.status(snap(LinkState.RECONNECTING, "HeartbeatTimeout"))
        for attempt in (1, 2, 3):
            feed.status(snap(LinkState.RECONNECTING, "ConnectionRefused", attempt))
        await until(lambda: receiver.accepted, DELIVERY_TIMEOUT_S, what="the upstream_down alert")
        feed.status(snap(LinkState.RECONNECTING, "ConnectionRefused", 1))
        feed.status(snap(LinkState.CONNECTED))
        assert await service.wait_idle(DELIVERY_TIMEOUT_S)
        assert len(receiver.attempts) == 2
        firing, resolved = receiver.accepted
        assert (firing["event"], firing["error_code"], firing["cause"]) == (
            "upstream_down",
            "HeartbeatTimeout",
            "connection_lost",
        )
        assert firing["duration_s"] >= 0.3
        assert (resolved["event"], resolved["incident_id"]) == ("upstream_recovered", firing["incident_id"])
        assert (resolved["recovery"], resolved["attempts"]) == ("reconnected", 4)
        assert resolved["summary"].endswith("(reconnected after 4 attempts)")
        assert resolved["ended_at"] is not None and firing["ended_at"] is None


@pytest.mark.parametrize("status", [400, 404, 410])
async def test_a_refusing_receiver_is_not_retried(asgi_server: Callable[..., Awaitable[Any]], status: int) -> None:
    receiver = Receiver(fail_first=100, fail_status=status)
    async with alerting(asgi_server, receiver) as (service, feed):
        feed.transition(breaker(BreakerState.OPEN, "failure_threshold", BreakerState.CLOSED))
        assert await service.wait_idle(DELIVERY_TIMEOUT_S)  # done with it: refused, not retried
        snapshot = service.snapshot()
        assert (snapshot["attempts_total"], snapshot["failed_total"], len(receiver.attempts)) == (1, 1, 1)
        check = service.health_check()[0]
        assert check.status == "warn" and f"HTTP {status}" in check.output


async def test_stop_is_bounded_while_the_receiver_is_down(asgi_server: Callable[..., Awaitable[Any]]) -> None:
    receiver = Receiver(fail_first=10_000)
    service = await start_service(asgi_server, receiver)
    feed = fed(service)
    feed.transition(breaker(BreakerState.OPEN, "failure_threshold", BreakerState.CLOSED))
    await until(lambda: len(receiver.attempts) >= 2, DELIVERY_TIMEOUT_S, what="two failed deliveries")
    await stop_service(service)  # returns (AlertLimits.stop_timeout_s at most) with the alert undelivered
    snapshot = service.snapshot()
    assert snapshot["pending"] == 0 and snapshot["sent_total"] == 0
    assert snapshot["failed_total"] + snapshot["dropped_total"] == 1, "the alert is counted once"
