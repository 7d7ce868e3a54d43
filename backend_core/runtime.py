"""Runtime: builds, starts, stops and hands out every long-lived object (DESIGN.md rule 3).

One async context manager (:meth:`Runtime.lifespan`) is all a host needs: the Reflex app
registers it as a lifespan task; tests and benchmarks use ``async with runtime.lifespan()``
directly. Start order is simulator (when embedded), hub, health probes, manager; stop is
the reverse, and every task started is awaited on the way out.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import math
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from backend_core import __version__
from backend_core.alerts import AlertService
from backend_core.breakers import BreakerRegistry, Transition
from backend_core.clock import Clock, SystemClock, iso_utc
from backend_core.config import Settings
from backend_core.deriv.manager import DerivManager, RetryOutcome
from backend_core.deriv.sim.server import DerivSimulator
from backend_core.events import LinkState, UpstreamSnapshot
from backend_core.health import (
    CheckResult,
    HealthReport,
    HealthService,
    LoopLagProbe,
    breaker_verdict,
    loop_lag_verdict,
    relay_verdict,
    upstream_verdict,
)
from backend_core.hub import Closed, Dropped, InMemoryHub
from backend_core.logs import configure_logging
from backend_core.metrics import Metrics
from backend_core.relay import Relay
from backend_core.store import IncidentFeed, Store

log = logging.getLogger("backend_core.runtime")

# A connected link with no frame for this long is reported as silent (warn). Deriv ticks
# every 1-2 s and we ping every DERIV_PING_INTERVAL, so silence past 3 ping intervals is real.
SILENCE_FACTOR = 3.0
# How long a shutdown signal waits for relay clients to get their 1001 close frames
# before the server's own shutdown goes on; well under orchestrators' usual 30 s grace.
DRAIN_TIMEOUT_S = 5.0
# Signals repeated within this window are one shutdown delivered twice, not "force it now".
REPEAT_SIGNAL_WINDOW_S = 1.0
# A tick older than this many seconds is shown as stale by REST and the UI.
STALE_TICK_S = 10.0


@dataclass(frozen=True, slots=True)
class TickView:
    """A tick as REST and the UI show it: with its age and whether it is stale."""

    symbol: str
    epoch: int
    quote: float
    pip_size: int
    age_s: float
    stale: bool
    backfill: bool


class Runtime:
    """Owns settings, clock, breakers, simulator, hub, manager, relay, health and metrics."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None, configure_logs: bool = True) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        if configure_logs:
            configure_logging(settings.LOG_FORMAT, settings.LOG_LEVEL)
        self.breakers = BreakerRegistry.from_settings(settings, clock=self.clock)
        self.hub = InMemoryHub(clock=self.clock)
        self.simulator: DerivSimulator | None = None
        if settings.uses_simulator:
            token = settings.DERIV_API_TOKEN
            self.simulator = DerivSimulator(
                settings.DERIV_SIMULATOR_HOST,
                settings.DERIV_SIMULATOR_PORT,
                clock=self.clock,
                time_scale=settings.DERIV_SIMULATOR_TIME_SCALE,
                # The simulator accepts the configured token, so authorize works end to end.
                accepted_tokens=(token.get_secret_value(),) if token is not None else None,
                control_port=settings.DERIV_SIMULATOR_CONTROL_PORT,
            )
        self.manager: DerivManager | None = None
        self.relay = Relay(settings, self.hub, self.upstream_status, clock=self.clock)
        self.loop_lag = LoopLagProbe(self.clock)
        # History and alerts: their record_* calls never wait (bounded queues, own tasks).
        self.store = Store(settings, self.clock)
        self.alerts = AlertService(settings, self.clock)
        # One incident tracker for both: the history and the alerts see the same incidents.
        self.incidents = IncidentFeed(self.clock)
        self.incidents.subscribe(self.store.record_incidents)
        self.incidents.subscribe(self.alerts.record_incidents)
        self.metrics = Metrics(self)
        self.health = HealthService(
            {
                "upstream": self._check_upstream,
                "relay": self._check_relay,
                "hub": self._check_hub,
                "circuitBreakers": self._check_breakers,
                "eventLoop": self._check_loop,
                "database": self.store.health_check,
                "alerts": self.alerts.health_check,
            },
            self.clock,
            observe=self.metrics.observe_health_check,
        )
        self.started_at: float | None = None
        self.ready = False
        self.shutting_down = False
        self._outage_started: float | None = None
        self._status_task: asyncio.Task[None] | None = None
        self.status_version = 0
        self._drain_task: asyncio.Future[None] | None = None
        self._forward_task: asyncio.Future[None] | None = None
        self._signalled_at: float | None = None
        self._health_cache: tuple[float, HealthReport] | None = None
        self._health_inflight: asyncio.Future[HealthReport] | None = None
        self._changed = asyncio.Event()
        self.breakers.add_listener(self._on_transition)
        self.breakers.add_listener(self.store.record_transition)
        self.breakers.add_listener(self.incidents.transition)

    # ------------------------------------------------------------------ lifecycle

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[Runtime]:
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    async def start(self) -> None:
        self._drain_task = None
        self._signalled_at = None
        self.shutting_down = False
        url = self.settings.DERIV_WS_URL
        if self.simulator is not None:
            await self.simulator.start()
            url = self.simulator.url
        assert url is not None
        self.manager = DerivManager(
            self.settings,
            self.hub,
            self.breakers.websocket,
            url=url,
            clock=self.clock,
            simulated=self.simulator is not None,
        )
        await self.loop_lag.start()
        self.incidents.reset()  # a start after a stop begins with nothing open
        # Bounded: waits for the schema at most START_SCHEMA_TIMEOUT_S; a database that is
        # down does not stop the start (health shows it as warn, events wait in the queue).
        await self.store.start()
        await self.alerts.start()
        for breaker in self.breakers.snapshots():
            self.store.record_breaker_state(breaker.name, breaker.state)
        # Status only (no symbols): a small queue is plenty, status events are rare.
        self._status_sub = self.hub.subscribe((), name="runtime-status", queue_size=64)
        self._status_task = asyncio.create_task(self._watch_status(), name="runtime-status")
        await self.manager.start()
        self.started_at = self.clock.wall()
        # Everything built so far lives as long as the process: move it out of the
        # collector's way so a full collection (e.g. after a burst of relay handshakes)
        # does not pause the fan-out for ~100 ms scanning it.
        gc.collect()
        gc.freeze()
        self.ready = True
        log.info("runtime started: upstream=%s symbols=%s", self.manager.url, ",".join(self.settings.DERIV_SYMBOLS))

    def install_signal_handlers(self) -> None:
        """On SIGTERM/SIGINT, drain relay clients first, then let the server shut down.

        ASGI servers (granian, uvicorn) close open connections themselves before they run
        the lifespan shutdown, so relay clients would see an abrupt 1006 rather than a
        1001 with a reason. This takes the signal first: it makes /readyz fail (a load
        balancer stops sending traffic), closes relay clients with 1001, and only then
        (or after :data:`DRAIN_TIMEOUT_S`) hands the signal to the server's own handler.
        A second signal is handed on at once. Only the host process calls this; tests
        drive :meth:`stop` directly.
        """
        loop = asyncio.get_running_loop()
        # asyncio keeps the handler a server registered with loop.add_signal_handler here;
        # a server that used signal.signal() shows up in signal.getsignal() instead.
        registered: dict[int, asyncio.Handle] = getattr(loop, "_signal_handlers", {})
        for sig in (signal.SIGTERM, signal.SIGINT):
            forward = _forwarder(sig, registered.get(sig), signal.getsignal(sig))
            loop.add_signal_handler(sig, self._on_signal, sig, forward)

    def _on_signal(self, sig: int, forward: Callable[[], None]) -> None:
        now = self.clock.monotonic()
        if self._drain_task is not None:
            # The same shutdown often arrives twice within milliseconds (a signal to the
            # process group, then the server's main process forwarding it to its worker):
            # that one must not cut the drain short. A later one (a second Ctrl-C) does.
            if self._signalled_at is not None and now - self._signalled_at >= REPEAT_SIGNAL_WINDOW_S:
                forward()
            return
        self._signalled_at = now
        log.info("received %s: draining relay clients before shutdown", signal.Signals(sig).name)
        self.begin_shutdown()
        drain = self._drain_task
        assert drain is not None

        async def forward_after_drain() -> None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(DRAIN_TIMEOUT_S):
                    await asyncio.shield(drain)
            forward()

        self._forward_task = asyncio.ensure_future(forward_after_drain())

    def begin_shutdown(self) -> None:
        """Stop accepting relay clients and close the open ones with 1001 (idempotent)."""
        if self._drain_task is not None:
            return
        log.info("shutdown requested: draining relay clients")
        self.ready = False
        self.shutting_down = True
        self.relay.stop_accepting()
        self._drain_task = asyncio.ensure_future(self.relay.close_all(1001, "server shutting down"))

    async def stop(self) -> None:
        """Stop accepting relay clients, close them with 1001, close the upstream, stop tasks."""
        self.begin_shutdown()
        assert self._drain_task is not None
        await asyncio.gather(self._drain_task, return_exceptions=True)
        if self.manager is not None:
            await self.manager.stop()
        task, self._status_task = self._status_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        final = self.manager.snapshot() if self.manager is not None else None
        if final is not None:  # the STOPPED snapshot may still sit in the status queue
            self._record_status(final)
        self.incidents.close_all()  # breaker incidents still open end with the service
        await self.alerts.stop()  # bounded: ALERT_STOP_TIMEOUT_S
        await self.store.stop()  # bounded: STOP_FLUSH_TIMEOUT_S
        self.hub.close()
        await self.loop_lag.stop()
        if self.simulator is not None:
            await self.simulator.stop()
        log.info("runtime stopped")

    async def _watch_status(self) -> None:
        """Follow the status stream: outage durations for metrics, change signals for pages."""
        while True:
            event = await self._status_sub.get()
            if isinstance(event, Closed):
                return
            if isinstance(event, Dropped):
                # A status change may be among the dropped events: record the current one.
                current = self.hub.status()
                if current is not None:
                    self._record_status(current)
            if isinstance(event, UpstreamSnapshot):
                self._record_status(event)
                self._track_outage(event)
                self._signal_change()

    def _record_status(self, snapshot: UpstreamSnapshot) -> None:
        self.store.record_status(snapshot)  # uptime samples
        self.incidents.status(snapshot)  # incidents, to the history and the alerts

    def _signal_change(self) -> None:
        self.status_version += 1
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def wait_for_change(self, seen_version: int, timeout_s: float) -> int:
        """Wait until the status changes past ``seen_version`` or ``timeout_s`` passes.

        One producer, many pages: every page's refresh loop waits here instead of
        polling anything; a status change wakes all of them at once.
        """
        if self.status_version == seen_version:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout_s):
                    await self._changed.wait()
        return self.status_version

    def _track_outage(self, snapshot: UpstreamSnapshot) -> None:
        now = self.clock.monotonic()
        if snapshot.state == LinkState.CONNECTED:
            if self._outage_started is not None:
                self.metrics.observe_outage(now - self._outage_started)
                self._outage_started = None
        elif snapshot.state in (LinkState.RECONNECTING, LinkState.CIRCUIT_OPEN) and self._outage_started is None:
            self._outage_started = now

    def _on_transition(self, transition: Transition) -> None:
        self._signal_change()
        log.warning(
            "circuit '%s' %s -> %s (%s)",
            transition.name,
            transition.from_state,
            transition.to_state,
            transition.reason,
        )

    # ------------------------------------------------------------------ reads (never await the upstream)

    def upstream_snapshot(self) -> UpstreamSnapshot | None:
        return self.manager.snapshot() if self.manager is not None else None

    def upstream_status(self) -> dict[str, Any]:
        """The upstream state as relay status frames and the status API show it."""
        snap = self.upstream_snapshot()
        breaker = self.breakers.websocket.snapshot()
        now = self.clock.wall()
        if snap is None:
            return {"state": "stopped", "breaker_state": breaker.state, "retry_after_s": None}
        retry_after = None
        if snap.next_attempt_at is not None:
            retry_after = round(max(0.0, snap.next_attempt_at - now), 1)
        return {
            "state": snap.state.value,
            "since": iso_utc(snap.since),
            "simulated": snap.simulated,
            "attempt": snap.attempt,
            "max_attempts": snap.max_attempts,
            "retry_after_s": retry_after,
            "retry_in_progress": snap.retry_in_progress,
            "planned_reconnect": snap.planned_reconnect,
            "site_status": snap.site_status,
            "breaker_state": breaker.state,
            "breaker_retry_after_s": round(breaker.retry_after_s, 1),
            "last_error": (
                {"code": snap.last_error.code, "message": snap.last_error.message, "at": iso_utc(snap.last_error.at)}
                if snap.last_error
                else None
            ),
        }

    def tick_views(self, symbols: tuple[str, ...] | None = None) -> list[TickView]:
        now = self.clock.wall()
        upstream_live = (snap := self.upstream_snapshot()) is not None and snap.state == LinkState.CONNECTED
        views = []
        for symbol in symbols or self.settings.DERIV_SYMBOLS:
            tick = self.hub.latest(symbol)
            if tick is None:
                continue
            age = max(0.0, now - tick.epoch)
            views.append(
                TickView(
                    symbol=tick.symbol,
                    epoch=tick.epoch,
                    quote=tick.quote,
                    pip_size=tick.pip_size,
                    age_s=round(age, 1),
                    stale=(not upstream_live) or age > STALE_TICK_S,
                    backfill=tick.backfill,
                )
            )
        return views

    def status(self) -> dict[str, Any]:
        """Everything the status page shows, as JSON (``GET /api/v1/status``)."""
        snap = self.upstream_snapshot()
        return {
            "service": {
                "version": __version__,
                "started_at": iso_utc(self.started_at),
                "ready": self.ready,
                "time": iso_utc(self.clock.wall()),
            },
            "upstream": {
                **self.upstream_status(),
                "url": snap.url if snap else None,
                "reconnect_count": snap.reconnect_count if snap else 0,
                "last_message_at": iso_utc(snap.last_message_at) if snap else None,
                "last_pong_latency_s": snap.last_pong_latency_s if snap else None,
                "connected_since": iso_utc(snap.connected_since) if snap else None,
                "symbols": [
                    {
                        "symbol": s.symbol,
                        "subscribed": s.subscribed,
                        "last_epoch": s.last_epoch,
                        "failed_code": s.failed_code,
                        "failed_reason": s.failed_reason,
                        # The latest ticks lost for good: epochs strictly between from and to.
                        "gap": {"from_epoch": s.gap_from, "to_epoch": s.gap_to} if s.gap_from is not None else None,
                    }
                    for s in (snap.symbols if snap else ())
                ],
            },
            "ticks": [vars_of(v) for v in self.tick_views()],
            "circuit_breakers": [b.to_dict() for b in self.breakers.snapshots()],
            "relay": {
                "enabled": self.settings.WEBSOCKET_ENABLED,
                "max_connections": self.settings.WEBSOCKET_MAX_CONNECTIONS,
                "active_connections": self.relay.snapshot()["active"],
            },
            "frontend": {
                "ws_url": self.settings.VITE_WS_URL,
                "reconnect_attempts": self.settings.VITE_WS_RECONNECT_ATTEMPTS,
                "reconnect_interval_ms": self.settings.VITE_WS_RECONNECT_INTERVAL,
                "real_time_updates": self.settings.VITE_ENABLE_REAL_TIME_UPDATES,
                "fallback_enabled": self.settings.VITE_WEBSOCKET_FALLBACK_ENABLED,
            },
        }

    def retry_now(self) -> RetryOutcome:
        if self.manager is None:
            return RetryOutcome("stopped", "The service is not running.")
        outcome = self.manager.retry_now()
        if outcome.status == "started":
            self.incidents.manual_retry()
        return outcome

    async def health_report(self, max_age_s: float = 0.0) -> HealthReport:
        """Run the health checks, or reuse a report younger than ``max_age_s``.

        HTTP health routes ask for a fresh report (the default). Status pages pass a small
        ``max_age_s`` so that any number of open pages cost one run per period, and
        concurrent callers share the run in flight.
        """
        cached = self._health_cache
        if cached is not None and max_age_s > 0 and self.clock.monotonic() - cached[0] < max_age_s:
            return cached[1]
        if self._health_inflight is None or self._health_inflight.done():
            self._health_inflight = asyncio.ensure_future(self.health.run())
        report = await asyncio.shield(self._health_inflight)
        self._health_cache = (self.clock.monotonic(), report)
        return report

    # ------------------------------------------------------------------ checks (snapshots only)

    def _check_upstream(self) -> list[CheckResult]:
        snap = self.upstream_snapshot()
        if snap is None:
            return [CheckResult("upstream", "datastore", "state", "warn", "stopped", None, "not started")]
        now = self.clock.wall()
        age = None if snap.last_message_at is None else max(0.0, now - snap.last_message_at)
        status, output = upstream_verdict(snap.state.value, age, SILENCE_FACTOR * self.settings.DERIV_PING_INTERVAL)
        results = [
            CheckResult("upstream", "datastore", "state", status, snap.state.value, None, output),
            CheckResult(
                "upstream",
                "datastore",
                "lastMessageAge",
                status,
                None if age is None else round(age, 3),
                "s",
                output if status != "pass" else "",
            ),
        ]
        if snap.last_pong_latency_s is not None:
            results.append(
                CheckResult("upstream", "datastore", "pongLatency", "pass", round(snap.last_pong_latency_s, 4), "s")
            )
        return results

    def _check_relay(self) -> list[CheckResult]:
        active = int(self.relay.snapshot()["active"])
        status, output = relay_verdict(self.settings.WEBSOCKET_ENABLED, active, self.settings.WEBSOCKET_MAX_CONNECTIONS)
        return [CheckResult("relay", "component", "connections", status, active, None, output)]

    def _check_hub(self) -> list[CheckResult]:
        stats = self.hub.snapshot()
        return [
            CheckResult("hub", "component", "subscribers", "pass", stats["subscribers"]),
            CheckResult("hub", "component", "droppedEvents", "pass", stats["dropped_total"]),
        ]

    def _check_breakers(self) -> list[CheckResult]:
        results = []
        for snap in self.breakers.snapshots():
            status, output = breaker_verdict(snap.name, snap.state)
            results.append(
                CheckResult(f"circuitBreaker.{snap.name}", "component", "state", status, snap.state, None, output)
            )
        return results

    def _check_loop(self) -> list[CheckResult]:
        status, output = loop_lag_verdict(self.loop_lag.lag_s)
        return [CheckResult("eventLoop", "system", "lag", status, round(self.loop_lag.lag_s, 4), "s", output)]


def _forwarder(sig: int, loop_handle: asyncio.Handle | None, python_handler: object) -> Callable[[], None]:
    """How to hand ``sig`` on to whoever handled it before the runtime took it."""
    if loop_handle is not None:
        callback, args = loop_handle._callback, loop_handle._args  # type: ignore[attr-defined]
        return lambda: callback(*args)
    if callable(python_handler) and getattr(python_handler, "__name__", "") != "_sighandler_noop":
        return lambda: python_handler(sig, None)

    def default() -> None:
        signal.signal(sig, signal.SIG_DFL)
        signal.raise_signal(sig)

    return default


def vars_of(view: TickView) -> dict[str, Any]:
    return {
        "symbol": view.symbol,
        "epoch": view.epoch,
        "quote": view.quote,
        "pip_size": view.pip_size,
        "age_s": view.age_s,
        "stale": view.stale,
        "backfill": view.backfill,
    }


def round_up(seconds: float) -> int:
    return max(1, math.ceil(seconds))
