"""Prometheus metrics at ``/metrics``, read from snapshots at scrape time.

Counters and gauges are not kept twice: each component has a small collector here that
reads the totals that component already keeps, when Prometheus scrapes. The Runtime
builds one collector a component and registers it (:meth:`Metrics.register`); a
collector knows only the :class:`~typing.Protocol` of what it reads, never the Runtime.
Only the two histograms (outage durations, health check durations) are observed as
events happen. Each Runtime has its own :class:`~prometheus_client.CollectorRegistry`
(no module-level global state). Names follow Prometheus conventions: a
``deriv_status_`` prefix, base units (seconds), ``_total`` counters, low-cardinality
labels (breaker names are bounded by the registry, error codes by Deriv's fixed list and
our own).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from backend_core.breakers.core import BreakerState
from backend_core.breakers.registry import BreakerRegistry
from backend_core.cluster.coordinator import Role
from backend_core.events import LinkState, UpstreamSnapshot
from backend_core.health import LoopLagProbe, Snapshotting
from backend_core.incidents import upstream_in_maintenance

PREFIX = "deriv_status"
# The upstream_state label: the link's states, and "maintenance" (a planned drop).
MAINTENANCE = "maintenance"
UPSTREAM_STATES = (*(state.value for state in LinkState), MAINTENANCE)
# Error codes are a small fixed set in practice; this bound keeps a hostile upstream from
# creating unbounded label values.
MAX_ERROR_CODES = 50


# ---------------------------------------------------------------------------- what collectors read


class Upstream(Protocol):
    """The upstream manager: its link snapshot and its counters."""

    def snapshot(self) -> UpstreamSnapshot: ...

    def stats(self) -> Mapping[str, Any]: ...


def _counter(name: str, text: str, value: float) -> CounterMetricFamily:
    family = CounterMetricFamily(f"{PREFIX}_{name}", text)
    family.add_metric([], value)
    return family


def _gauge(name: str, text: str, value: float) -> GaugeMetricFamily:
    family = GaugeMetricFamily(f"{PREFIX}_{name}", text)
    family.add_metric([], value)
    return family


# ---------------------------------------------------------------------------- one collector a component


class _SnapshotCollector(Collector):
    """One component's metrics, read from its :meth:`~Snapshotting.snapshot` at scrape time."""

    def __init__(self, component: Snapshotting) -> None:
        self._component = component

    def collect(self) -> Iterator[Metric]:
        return self._families(self._component.snapshot())

    def _families(self, snapshot: Mapping[str, Any]) -> Iterator[Metric]:
        raise NotImplementedError


class RelayCollector(_SnapshotCollector):
    """Relay (/api/v1/ws) clients and the ticks sent to them."""

    def _families(self, relay: Mapping[str, Any]) -> Iterator[Metric]:
        totals: Mapping[str, Any] = relay["totals"]
        # "_active", not "_connections": under OpenMetrics the counter below owns the
        # family name deriv_status_relay_connections (its samples end in _total).
        yield _gauge("relay_connections_active", "Relay (/api/v1/ws) clients connected now.", float(relay["active"]))
        yield _gauge(
            "relay_connections_max",
            "Relay clients allowed at once (WEBSOCKET_MAX_CONNECTIONS).",
            float(relay["max_connections"]),
        )
        yield _counter("relay_connections", "Relay clients accepted since start.", float(totals["accepted"]))
        refused = sum(v for k, v in totals.items() if k.startswith("refused_"))
        yield _counter("relay_refused", "Relay clients refused (server full or disabled).", float(refused))
        yield _counter("ticks_relayed", "Tick frames sent to relay clients.", float(totals.get("ticks_sent", 0)))


def upstream_state(snap: UpstreamSnapshot | None) -> str:
    """The one ``state`` label that is 1: the link's state, or ``maintenance`` while it is not
    connected for a planned upstream maintenance (a connected link stays ``connected``: it serves)."""
    if snap is None:
        return LinkState.STOPPED.value
    if snap.state != LinkState.CONNECTED and upstream_in_maintenance(snap):
        return MAINTENANCE
    return snap.state.value


class UpstreamCollector(Collector):
    """The upstream link. ``manager()`` is None while the runtime is not running.

    ``snapshot()``, when given, is the state to show: on a cluster follower that is the
    leader's (the follower's own manager is stopped, and ``upstream_state`` would say so).
    The counters are always this process's own link's.
    """

    def __init__(
        self, manager: Callable[[], Upstream | None], snapshot: Callable[[], UpstreamSnapshot | None] | None = None
    ) -> None:
        self._manager = manager
        self._snapshot = snapshot or (lambda: m.snapshot() if (m := manager()) is not None else None)

    def collect(self) -> Iterator[Metric]:
        manager = self._manager()
        snap = self._snapshot()
        stats: Mapping[str, Any] = manager.stats() if manager is not None else {}

        g = GaugeMetricFamily(
            f"{PREFIX}_upstream_state",
            "1 for the upstream link's current state, 0 for the others; maintenance while the link is "
            "not connected for a planned upstream maintenance (in place of reconnecting, connecting, ...).",
            labels=["state"],
        )
        for state in UPSTREAM_STATES:
            g.add_metric([state], 1.0 if state == upstream_state(snap) else 0.0)
        yield g
        reconnects = float(snap.reconnect_count if snap is not None else 0)
        yield _counter("upstream_reconnects", "Upstream reconnections since start.", reconnects)
        for name, text in (
            ("ticks_received", "Tick frames received from the upstream."),
            ("ticks_published", "Ticks published to the hub (live and backfilled)."),
            ("ticks_backfilled", "Ticks recovered with ticks_history after a reconnect."),
            ("backfill_pages", "Earlier ticks_history pages asked for to fill an outage longer than one reply."),
            ("backfill_page_retries", "Those pages asked for again after a transient failure (RateLimit, timeout)."),
            ("ticks_paged", "Ticks recovered from those earlier pages."),
            (
                "backfill_gaps",
                "Backfills that left ticks unrecovered (the outage outlasted the paging bound, or a page failed).",
            ),
        ):
            yield _counter(name, text, float(stats.get(name, 0)))
        c = CounterMetricFamily(f"{PREFIX}_upstream_errors", "Upstream errors by code.", labels=["code"])
        for code, count in list(stats.get("errors_by_code", {}).items())[:MAX_ERROR_CODES]:
            c.add_metric([code], float(count))
        yield c


class ClusterCollector(Collector):
    """This member's place in the cluster (nothing without REDIS_URL)."""

    def __init__(self, snapshot: Callable[[], Any]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        if snap is None:
            return
        g = GaugeMetricFamily(
            f"{PREFIX}_cluster_role", "1 for this member's cluster role, 0 for the others.", labels=["role"]
        )
        for role in Role:
            g.add_metric([role], 1.0 if snap.role == role else 0.0)
        yield g
        term = GaugeMetricFamily(f"{PREFIX}_cluster_leader_term", "The leader lease's term (fencing token) last seen.")
        term.add_metric([], float(snap.leader_term or 0))
        yield term
        for name, doc, value in (
            (
                "cluster_lease_renew_seconds",
                "Seconds since this member last saw the leader lease held (renewed by itself, or its holder read).",
                snap.leader_seen_s,
            ),
            (
                "cluster_follower_lag_seconds",
                "Seconds since this member last read a tick entry from the log.",
                snap.log_age_s,
            ),
        ):
            if value is not None:
                gauge = GaugeMetricFamily(f"{PREFIX}_{name}", doc)
                gauge.add_metric([], float(value))
                yield gauge
        yield _counter("cluster_failovers", "Times this member became the leader.", float(snap.failovers_total))
        yield _counter(
            "cluster_fenced_writes",
            "Writes refused because the lease was another member's.",
            float(snap.fenced_writes_total),
        )
        yield _counter("cluster_redis_errors", "Redis calls that failed or timed out.", float(snap.redis_errors_total))


class HubCollector(_SnapshotCollector):
    """The in-process fan-out: events dropped for slow consumers."""

    def _families(self, hub: Mapping[str, Any]) -> Iterator[Metric]:
        dropped = float(hub.get("dropped_total", 0))
        yield _counter("ticks_dropped", "Events dropped for slow consumers (oldest first).", dropped)


class BreakerCollector(Collector):
    """Every circuit breaker's state, transitions and rejections."""

    def __init__(self, breakers: BreakerRegistry) -> None:
        self._breakers = breakers

    def collect(self) -> Iterator[Metric]:
        g = GaugeMetricFamily(
            f"{PREFIX}_circuit_breaker_state",
            "1 for each breaker's current state, 0 for the others.",
            labels=["breaker", "state"],
        )
        transitions = CounterMetricFamily(
            f"{PREFIX}_circuit_breaker_transitions", "State transitions per breaker.", labels=["breaker"]
        )
        rejections = CounterMetricFamily(
            f"{PREFIX}_circuit_breaker_rejections", "Calls rejected by an open breaker.", labels=["breaker"]
        )
        for b in self._breakers.snapshots():
            for breaker_state in BreakerState:
                g.add_metric([b.name, breaker_state], 1.0 if b.state == breaker_state else 0.0)
            transitions.add_metric([b.name], float(b.transition_count))
            rejections.add_metric([b.name], float(b.rejections_total))
        yield g
        yield transitions
        yield rejections


class HistoryCollector(_SnapshotCollector):
    """The history store: database reachability, queue and row counters."""

    def _families(self, history: Mapping[str, Any]) -> Iterator[Metric]:
        up = 1.0 if history["reachable"] else 0.0
        yield _gauge("history_db_up", "1 when the history database answered the last call.", up)
        pending = float(history["pending_events"])
        yield _gauge("history_pending_events", "History events waiting for the database.", pending)
        c = CounterMetricFamily(f"{PREFIX}_history_written_events", "History rows written.", labels=["kind"])
        for kind, count in history["written_by_kind"].items():
            c.add_metric([kind], float(count))
        yield c
        c = CounterMetricFamily(
            f"{PREFIX}_history_dropped_events", "History events lost (queue full, shutdown).", labels=["reason"]
        )
        for reason, count in history["dropped_by_kind"].items():
            c.add_metric([reason], float(count))
        yield c


class AlertsCollector(_SnapshotCollector):
    """Alerts sent, given up and dropped."""

    def _families(self, alerts: Mapping[str, Any]) -> Iterator[Metric]:
        for name, key, text in (
            ("alerts_sent", "sent_total", "Alerts delivered to ALERT_WEBHOOK_URL."),
            ("alerts_failed", "failed_total", "Alerts given up (refused, or undelivered for an hour)."),
            ("alerts_dropped", "dropped_total", "Alerts dropped from the full queue or at shutdown."),
        ):
            yield _counter(name, text, float(alerts[key]))


class LoopLagCollector(Collector):
    """How late the event loop runs a timer."""

    def __init__(self, probe: LoopLagProbe) -> None:
        self._probe = probe

    def collect(self) -> Iterator[Metric]:
        yield _gauge("event_loop_lag_seconds", "How late the event loop last ran a timer.", self._probe.lag_s)


# ---------------------------------------------------------------------------- the registry


class Metrics:
    """The metrics of one Runtime: the collectors it registers and two histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._outage = Histogram(
            f"{PREFIX}_upstream_outage_seconds",
            "Time from losing the upstream link to having it back (recovery time).",
            buckets=(1, 2, 5, 10, 30, 60, 120, 300, 900, 3600),
            registry=self.registry,
        )
        self._health = Histogram(
            f"{PREFIX}_health_check_duration_seconds",
            "Duration of each health check.",
            labelnames=["check"],
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0),
            registry=self.registry,
        )

    def register(self, *collectors: Collector) -> None:
        for collector in collectors:
            self.registry.register(collector)

    def observe_outage(self, seconds: float) -> None:
        self._outage.observe(seconds)

    def observe_health_check(self, check: str, seconds: float) -> None:
        self._health.labels(check=check).observe(seconds)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition body and its content type: OpenMetrics when ``accept`` asks for it
        (``application/openmetrics-text``), else the Prometheus text format 0.0.4."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
