"""Runtime: builds, starts, stops and hands out every long-lived object (DESIGN.md rule 3).

One async context manager (:meth:`Runtime.lifespan`) is all a host needs: the Reflex app
registers it as a lifespan task; tests and benchmarks use ``async with runtime.lifespan()``
directly. Start order is simulator (when embedded), loop-lag probe, store, alerts, status
watch, manager; each component pushes its own stop onto one
:class:`contextlib.AsyncExitStack` once it has started, so a start that fails halfway
stops exactly what it had started, and :meth:`Runtime.stop` unwinds the same stack in
reverse. Every stop step runs even if an earlier one raises (the error is logged).

A Runtime runs once: the hub and the relay are closed for good by a stop, and the mounted
API holds this Runtime's components, so a second :meth:`Runtime.start` is refused. A host
that wants to start again builds a new Runtime (and a new API).

The constructor has no process-wide side effects: logging is configured, and the heap
frozen, by the host (``rxapp/rxapp.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

from backend_core import status_view
from backend_core.alerts import AlertService
from backend_core.breakers.breaker import Transition
from backend_core.breakers.registry import BreakerRegistry
from backend_core.clock import Clock, SystemClock
from backend_core.cluster.breaker_store import RedisBreakerStore
from backend_core.cluster.coordinator import Role
from backend_core.cluster.keys import ClusterKeys
from backend_core.cluster.member import ClusterMember
from backend_core.cluster.resp import redis_errors
from backend_core.cluster.wiring import ManagerLink, build_member, cluster_check
from backend_core.config import Settings, secret_values
from backend_core.deriv.manager import MANUAL_RETRY_MIN_INTERVAL_S, DerivManager, RetryOutcome
from backend_core.deriv.sim.server import DerivSimulator
from backend_core.events import LinkState, UpstreamSnapshot
from backend_core.health import (
    HealthReport,
    HealthService,
    LoopLagProbe,
    breakers_check,
    hub_check,
    loop_lag_check,
    relay_check,
    upstream_check,
)
from backend_core.history.reader import HistoryReader
from backend_core.history.store import HistoryStore
from backend_core.hub import Closed, Dropped, InMemoryHub, Subscription
from backend_core.incidents import IncidentFeed
from backend_core.logs import SecretRedaction
from backend_core.metrics import (
    AlertsCollector,
    BreakerCollector,
    ClusterCollector,
    HistoryCollector,
    HubCollector,
    LoopLagCollector,
    Metrics,
    RelayCollector,
    UpstreamCollector,
)
from backend_core.relay.server import Relay

log = logging.getLogger("backend_core.runtime")

# A connected link with no frame for this long is reported as silent (warn). Deriv ticks
# every 1-2 s and we ping every DERIV_PING_INTERVAL, so silence past 3 ping intervals is real.
SILENCE_FACTOR = 3.0
# How long a shutdown signal waits for relay clients to get their 1001 close frames
# before the server's own shutdown goes on; well under orchestrators' usual 30 s grace.
DRAIN_TIMEOUT_S = 5.0
# Signals repeated within this window are one shutdown delivered twice, not "force it now".
REPEAT_SIGNAL_WINDOW_S = 1.0
# Status only (no symbols): a small queue is plenty, status events are rare.
STATUS_QUEUE_SIZE = 64

StopStep = Callable[[], Awaitable[object] | None]


def freeze_startup_heap() -> None:
    """For a process's entry point, once its one Runtime has started.

    Everything built so far (imports, the app, the runtime) lives as long as the process:
    moving it out of the collector's way means a full collection (after a burst of relay
    handshakes, say) no longer pauses the event loop for ~100 ms scanning it. Not for
    tests or anything that builds several runtimes: frozen objects are never collected.
    """
    gc.collect()
    gc.freeze()


class Runtime:
    """Owns settings, clock, breakers, simulator, hub, manager, relay, health and metrics."""

    def __init__(self, settings: Settings, *, clock: Clock | None = None) -> None:
        self.settings = settings
        self.clock: Clock = clock or SystemClock()
        # With REDIS_URL set the "websocket" breaker's state is the cluster's (its leader writes it).
        self._breaker_store = RedisBreakerStore(ClusterKeys(settings.CLUSTER_NAME)) if settings.clustered else None
        self.breakers = BreakerRegistry.from_settings(settings, clock=self.clock, websocket_store=self._breaker_store)
        self.hub = InMemoryHub(clock=self.clock)
        self.simulator: DerivSimulator | None = None
        if settings.uses_simulator:
            token = settings.DERIV_API_TOKEN
            self.simulator = DerivSimulator(
                settings.DERIV_SIMULATOR_HOST,
                settings.DERIV_SIMULATOR_PORT,
                allow_remote=settings.DERIV_SIMULATOR_ALLOW_REMOTE,
                clock=self.clock,
                time_scale=settings.DERIV_SIMULATOR_TIME_SCALE,
                # The simulator accepts the configured token, so authorize works end to end.
                accepted_tokens=(token.get_secret_value(),) if token is not None else None,
                control_port=settings.DERIV_SIMULATOR_CONTROL_PORT,
            )
        self.manager: DerivManager | None = None
        # With REDIS_URL set: this process's cluster membership (shared/CLUSTER.md).
        self.cluster: ClusterMember | None = None
        if settings.clustered:
            self.cluster = build_member(
                settings,
                self.hub,
                settings.DERIV_SYMBOLS,
                ManagerLink(lambda: self.manager),
                self.clock,
                self.hub.ring_size,
                self._breaker_store,
            )
            self.cluster.on_control = self._on_control
        self._retry_asked_at: float | None = None
        self.relay = Relay(
            settings,
            self.hub,
            self._upstream_status,
            clock=self.clock,
            allowed_origins=[str(origin) for origin in settings.ALLOWED_ORIGINS],
        )
        self.loop_lag = LoopLagProbe(self.clock)
        # History and alerts: their record_* calls never wait (bounded queues, own tasks).
        self.store = HistoryStore(settings, self.clock)
        self.alerts = AlertService(settings, self.clock)
        # One incident tracker for both: the history and the alerts see the same incidents.
        self.incidents = IncidentFeed(self.clock)
        self.incidents.subscribe(self.store.record_incidents)
        self.incidents.subscribe(self.alerts.record_incidents)
        # The status pages' one paced reader of the history (rxapp reads its snapshot).
        self.history_reader = HistoryReader(
            self.store,
            self.clock,
            breakers=lambda: [{"name": b.name, "state": str(b.state)} for b in self.breakers.snapshots()],
            status_version=lambda: self.status_version,
            shutting_down=lambda: self.shutting_down,
        )
        self.metrics = Metrics()
        self.metrics.register(
            RelayCollector(self.relay),
            UpstreamCollector(lambda: self.manager, self.upstream_snapshot),
            HubCollector(self.hub),
            BreakerCollector(self.breakers),
            HistoryCollector(self.store),
            AlertsCollector(self.alerts),
            LoopLagCollector(self.loop_lag),
            ClusterCollector(lambda: self.cluster.snapshot() if self.cluster is not None else None),
        )
        self.health = HealthService(
            {
                "upstream": upstream_check(
                    self.upstream_snapshot, self.clock, SILENCE_FACTOR * settings.DERIV_PING_INTERVAL
                ),
                "relay": relay_check(
                    self.relay, enabled=settings.WEBSOCKET_ENABLED, max_connections=settings.WEBSOCKET_MAX_CONNECTIONS
                ),
                "hub": hub_check(self.hub),
                "circuitBreakers": breakers_check(self.breakers),
                "eventLoop": loop_lag_check(self.loop_lag),
                "database": self.store.health_check,
                "alerts": self.alerts.health_check,
                "cluster": cluster_check(self.cluster, self.clock),
            },
            self.clock,
            observe=self.metrics.observe_health_check,
        )
        self.started_at: float | None = None
        self.ready = False
        self.shutting_down = False
        self.status_version = 0
        self._has_started = False
        self._stack: contextlib.AsyncExitStack | None = None
        self._outage_started: float | None = None
        self._status_sub: Subscription | None = None
        self._status_task: asyncio.Task[None] | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._forward_task: asyncio.Task[None] | None = None
        self._signalled_at: float | None = None
        # (when it finished, the status_version it ran on, the report)
        self._health_cache: tuple[float, int, HealthReport] | None = None
        self._health_inflight: asyncio.Task[HealthReport] | None = None
        self._health_inflight_version = -1
        self._changed = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self.breakers.add_listener(self._on_transition)
        self.breakers.add_listener(self.store.record_transition)
        self.breakers.add_listener(self.incidents.transition)

    # ------------------------------------------------------------------ lifecycle

    @property
    def running(self) -> bool:
        return self._stack is not None

    @contextlib.asynccontextmanager
    async def lifespan(self) -> AsyncIterator[Runtime]:
        await self.start()
        try:
            yield self
        finally:
            await self.stop()

    async def start(self) -> None:
        """Start every component; on failure, stop what had started and raise.

        Raises :class:`RuntimeError` when this Runtime has been started before.
        """
        if self._has_started:
            raise RuntimeError("this Runtime has already been started; build a new Runtime to start again")
        self._has_started = True
        async with contextlib.AsyncExitStack() as stack:
            await self._start_components(stack)
            self._stack = stack.pop_all()
        self.ready = True
        assert self.manager is not None
        log.info("runtime started: upstream=%s symbols=%s", self.manager.url, ",".join(self.settings.DERIV_SYMBOLS))

    async def _start_components(self, stack: contextlib.AsyncExitStack) -> None:
        def on_stop(name: str, step: StopStep) -> None:
            stack.push_async_callback(_stop_step, name, step)

        # First in, last out: no log line of any logger shows a secret while the runtime runs.
        stack.enter_context(SecretRedaction(secret_values(self.settings)).installed())
        # Last to stop: no breaker listener (store, incidents, page) runs after the runtime stopped.
        on_stop("breaker listeners", self.breakers.close)

        url = self.settings.DERIV_WS_URL
        if self.simulator is not None:
            await self.simulator.start()
            on_stop("simulator", self.simulator.stop)
            url = self.simulator.url
        assert url is not None
        self.manager = DerivManager(
            self.settings,
            self.cluster.sink if self.cluster is not None else self.hub,
            self.breakers.websocket,
            url=url,
            clock=self.clock,
            simulated=self.simulator is not None,
        )
        await self.loop_lag.start()
        on_stop("event-loop probe", self.loop_lag.stop)
        on_stop("hub", self.hub.close)  # after the store (it may still read the rings), before the probe
        # Bounded: waits for the schema at most START_SCHEMA_TIMEOUT_S; a database that is
        # down does not stop the start (health shows it as warn, events wait in the queue).
        await self.store.start()
        on_stop("history store", self.store.stop)  # bounded: STOP_FLUSH_TIMEOUT_S
        await self.alerts.start()
        on_stop("alerts", self.alerts.stop)  # bounded: AlertLimits.stop_timeout_s
        on_stop("incidents", self.incidents.close_all)  # breaker incidents still open end with the service
        for breaker in self.breakers.snapshots():
            self.store.record_breaker_state(breaker.name, breaker.state)
        self._status_sub = self.hub.subscribe((), name="runtime-status", queue_size=STATUS_QUEUE_SIZE)
        self._status_task = asyncio.create_task(self._watch_status(self._status_sub), name="runtime-status")
        on_stop("status watch", self._stop_status_watch)
        self.history_reader.start()
        on_stop("history reader", self.history_reader.stop)  # the pages' reads end before the store
        if self.cluster is None:
            await self.manager.start()
            on_stop("upstream manager", self.manager.stop)
        else:
            # The member starts the manager when it leads or degrades, and stops it (with
            # the lease released at once) on stop. Ready once the hub is filled from the log.
            on_stop("cluster Redis client", self.cluster.redis.aclose)  # after the member's stop
            await self.cluster.start()
            on_stop("cluster member", self.cluster.stop)
            await self._wait_cluster_ready(self.cluster)
        on_stop("runtime tasks", self._stop_own_tasks)
        on_stop("relay", self._drain_relay)  # first: clients get 1001 while all else still runs
        self.started_at = self.clock.wall()

    async def _wait_cluster_ready(self, member: ClusterMember) -> None:
        # Bounded: the pre-fill gives up on Redis after degrade_after_s (the member degrades).
        with contextlib.suppress(TimeoutError):
            async with self.clock.timeout(member.timing.degrade_after_s + 5.0):
                await member.ready.wait()

    async def stop(self) -> None:
        """Close relay clients with 1001, then stop every component in reverse start order.

        Exception-safe: every step runs even if one fails (each failure is logged).
        Idempotent; does nothing when the Runtime is not running.
        """
        stack, self._stack = self._stack, None
        if stack is None:
            return
        self.ready = False
        await stack.aclose()
        log.info("runtime stopped")

    def begin_shutdown(self) -> None:
        """Stop accepting relay clients and close the open ones with 1001 (idempotent)."""
        if self._drain_task is not None:
            return
        log.info("shutdown requested: draining relay clients")
        self.ready = False
        self.shutting_down = True
        self.relay.stop_accepting()
        self._drain_task = asyncio.create_task(self.relay.close_all(1001, "server shutting down"), name="relay-drain")

    async def _drain_relay(self) -> None:
        self.begin_shutdown()
        assert self._drain_task is not None
        await asyncio.gather(self._drain_task, return_exceptions=True)

    async def _stop_own_tasks(self) -> None:
        tasks: list[asyncio.Task[Any]] = [t for t in (self._forward_task, self._health_inflight) if t is not None]
        tasks += list(self._background)
        self._forward_task = self._health_inflight = None
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _stop_status_watch(self) -> None:
        task, self._status_task = self._status_task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self.manager is not None:  # the STOPPED snapshot may still sit in the status queue
            self._record_status(self.manager.snapshot())

    # ------------------------------------------------------------------ signals

    def install_signal_handlers(self) -> None:
        """On SIGTERM/SIGINT, drain relay clients first, then let the server shut down.

        ASGI servers (granian, uvicorn) close open connections themselves before they run
        the lifespan shutdown, so relay clients would see an abrupt 1006 rather than a
        1001 with a reason. This takes the signal first: it makes /readyz fail (a load
        balancer stops sending traffic), closes relay clients with 1001, and only then
        (or after :data:`DRAIN_TIMEOUT_S`) hands the signal to the server's own handler.
        A second signal is handed on at once. :meth:`stop` puts the previous handlers
        back. Only the host process calls this, while the Runtime runs; tests drive
        :meth:`stop` directly.
        """
        if self._stack is None:
            raise RuntimeError("install_signal_handlers needs a running Runtime")
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            previous = _PreviousHandler.of(loop, sig)
            loop.add_signal_handler(sig, self._on_signal, sig, previous.forward)
            self._stack.push_async_callback(_stop_step, f"{signal.Signals(sig).name} handler", previous.restore)

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
                async with self.clock.timeout(DRAIN_TIMEOUT_S):
                    await asyncio.shield(drain)
            forward()

        self._forward_task = asyncio.create_task(forward_after_drain(), name="signal-forward")

    # ------------------------------------------------------------------ status changes

    async def _watch_status(self, subscription: Subscription) -> None:
        """Follow the status stream: outage durations for metrics, change signals for pages."""
        while True:
            event = await subscription.get()
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
        if not self.records_upstream:
            return  # a follower: the leader records the cluster's one history
        self.store.record_status(snapshot)  # uptime samples
        self.incidents.status(snapshot)  # incidents, to the history and the alerts

    @property
    def records_upstream(self) -> bool:
        """True where upstream incidents, uptime samples and alerts are produced: a single
        process, or the member running the link (the leader, or a degraded member)."""
        return self.cluster is None or self.cluster.role in (Role.LEADER, Role.DEGRADED)

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
                async with self.clock.timeout(timeout_s):
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
        """This process's link; on a cluster follower (no link of its own) the leader's,
        as published into the local hub."""
        if self.manager is not None and (self.cluster is None or self.manager.running):
            return self.manager.snapshot()
        if self.cluster is not None:
            return self.hub.status() or (self.manager.snapshot() if self.manager is not None else None)
        return None

    def _upstream_status(self) -> dict[str, Any]:
        """The relay's status frames carry the upstream view the status API shows."""
        return status_view.upstream_status(self)

    def retry_now(self) -> RetryOutcome:
        if self.manager is None or not self.running:
            return RetryOutcome("stopped", "The service is not running.")
        if self.cluster is not None and self.cluster.role is Role.FOLLOWER:
            return self._retry_through_leader(self.cluster)
        outcome = self.manager.retry_now()
        if outcome.status == "started":
            self.incidents.manual_retry()
        return outcome

    def _retry_through_leader(self, member: ClusterMember) -> RetryOutcome:
        """A follower's retry: coalesced cluster-wide by ``retry:gate`` (SET NX PX), then a
        ``control`` entry the leader applies with its manager's own (coalescing) retry."""
        snap = self.upstream_snapshot()
        if snap is not None and snap.state == LinkState.CONNECTED:
            return RetryOutcome("already_connected", "The market feed is already connected.")
        now = self.clock.monotonic()
        if self._retry_asked_at is not None and now - self._retry_asked_at < MANUAL_RETRY_MIN_INTERVAL_S:
            return RetryOutcome("in_progress", "A connection attempt is already under way.")
        self._retry_asked_at = now

        self._cluster_call(member, "cluster-retry", member.request_retry, "asking the leader to retry")
        return RetryOutcome("started", "Asked the cluster's leader to retry the market feed connection now.")

    def reset_breaker(self, name: str) -> None:
        """An admin reset: here, and on every member through the control stream."""
        self.breakers.reset(name)
        if self.cluster is not None:
            member = self.cluster
            self._cluster_call(
                member,
                "cluster-breaker-reset",
                lambda: member.send_control("breaker_reset", name),
                "broadcasting a breaker reset",
            )

    def _cluster_call(
        self, member: ClusterMember, task_name: str, call: Callable[[], Awaitable[object]], doing: str
    ) -> None:
        """Run ``call`` in the background (a route never waits on Redis); a Redis failure is
        the member's to count and log, anything else is a bug and logged with its traceback."""

        async def run() -> None:
            try:
                await call()
            except redis_errors() as exc:
                member.note_failure(exc, doing)
            except Exception:
                log.exception("cluster: %s failed", doing)

        task = asyncio.create_task(run(), name=task_name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _on_control(self, entry: dict[str, str]) -> None:
        """A member's control entry: a retry is the leader's (it runs the link); a breaker
        reset applies on every member but the one it came from (it reset its own at once)."""
        kind, name = entry.get("type"), entry.get("name", "")
        leads = self.cluster is not None and self.cluster.role is Role.LEADER
        if kind == "retry" and leads and self.manager is not None:
            if self.manager.retry_now().status == "started":
                self.incidents.manual_retry()
        elif kind == "breaker_reset" and entry.get("from") != self.settings.INSTANCE_ID:
            with contextlib.suppress(KeyError):
                self.breakers.reset(name)

    async def health_report(self, max_age_s: float = 0.0) -> HealthReport:
        """Run the health checks, or reuse a recent report of the current status.

        HTTP health routes ask for a fresh report (the default). Status pages pass a small
        ``max_age_s`` so that any number of open pages cost one run per period, and
        concurrent callers share the run in flight (a task the Runtime owns: stop cancels it).
        A report, or a run in flight, is shared only while the status it ran on is current
        (``status_version``): after a status change or a breaker transition the next caller
        starts a new run (which the others then share), so a page refreshing on that change
        shows health that agrees with the status it shows.
        """
        version = self.status_version
        cached = self._health_cache
        if (
            cached is not None
            and max_age_s > 0
            and cached[1] == version
            and self.clock.monotonic() - cached[0] < max_age_s
        ):
            return cached[2]
        stale = self._health_inflight
        if stale is not None and not stale.done() and self._health_inflight_version != version:
            # A run from before the change: its callers get it; this one waits (bounded by
            # the checks' own timeouts) and then shares the run of the current status.
            await asyncio.wait([stale])
            version = self.status_version
        task = self._health_inflight
        if task is None or task.done() or self._health_inflight_version != version:
            task = self._health_inflight = asyncio.create_task(self.health.run(), name="health-run")
            self._health_inflight_version = version
        report = await asyncio.shield(task)
        self._health_cache = (self.clock.monotonic(), version, report)
        return report


async def _stop_step(name: str, step: StopStep) -> None:
    """One step of a stop: a failure is logged and the stop goes on with the next step."""
    try:
        result = step()
        if result is not None:
            await result
    except Exception:
        log.exception("stopping the %s failed; stopping the rest", name)


class _PreviousHandler:
    """The handler a signal had before the Runtime took it: how to hand it on, and to put it back.

    asyncio keeps the handlers registered with ``loop.add_signal_handler`` (granian's
    workers use it) only in the loop's private ``_signal_handlers`` map; there is no
    public way to read them, so this class is the one place that looks. A handler set
    with ``signal.signal()`` (uvicorn, gunicorn) is read with ``signal.getsignal``.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, sig: int, handle: asyncio.Handle | None, python: Any) -> None:
        self._loop = loop
        self._sig = sig
        self._handle = handle
        self._python = python

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop, sig: int) -> _PreviousHandler:
        registered: dict[int, asyncio.Handle] = getattr(loop, "_signal_handlers", {})
        return cls(loop, sig, registered.get(sig), signal.getsignal(sig))

    def _loop_callback(self) -> tuple[Callable[..., object], Sequence[Any]] | None:
        if self._handle is None:
            return None
        return self._handle._callback, self._handle._args  # type: ignore[attr-defined]

    def forward(self) -> None:
        if (found := self._loop_callback()) is not None:
            callback, args = found
            callback(*args)
        elif callable(self._python) and getattr(self._python, "__name__", "") != "_sighandler_noop":
            self._python(self._sig, None)
        else:
            signal.signal(self._sig, signal.SIG_DFL)
            signal.raise_signal(self._sig)

    def restore(self) -> None:
        self._loop.remove_signal_handler(self._sig)
        if (found := self._loop_callback()) is not None:
            callback, args = found
            self._loop.add_signal_handler(self._sig, callback, *args)
        elif self._python is not None:
            signal.signal(self._sig, self._python)
