"""Prometheus metrics at ``/metrics``, read from snapshots at scrape time.

Counters and gauges are not kept twice: a custom collector reads the totals the hub,
relay, manager and breakers already keep, when Prometheus scrapes. Only the two
histograms (outage durations, health check durations) are observed as events happen.
Each Runtime has its own :class:`~prometheus_client.CollectorRegistry` (no module-level
global state). Names follow Prometheus conventions: a ``deriv_status_`` prefix, base
units (seconds), ``_total`` counters, low-cardinality labels (breaker names are bounded
by the registry, error codes by Deriv's fixed list and our own).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from backend_core.events import LinkState

if TYPE_CHECKING:
    from backend_core.runtime import Runtime

PREFIX = "deriv_status"
BREAKER_STATES = ("closed", "open", "half_open", "disabled")
# Error codes are a small fixed set in practice; this bound keeps a hostile upstream from
# creating unbounded label values.
MAX_ERROR_CODES = 50


class _SnapshotCollector(Collector):
    def __init__(self, runtime: Runtime) -> None:
        self._runtime = runtime

    def collect(self) -> Iterator[Metric]:
        rt = self._runtime
        relay = rt.relay.snapshot()
        hub = rt.hub.snapshot()
        snap = rt.upstream_snapshot()
        stats: dict[str, Any] = rt.manager.stats() if rt.manager is not None else {}

        # "_active", not "_connections": under OpenMetrics the counter below owns the
        # family name deriv_status_relay_connections (its samples end in _total).
        g = GaugeMetricFamily(f"{PREFIX}_relay_connections_active", "Relay (/api/v1/ws) clients connected now.")
        g.add_metric([], float(relay["active"]))
        yield g
        g = GaugeMetricFamily(
            f"{PREFIX}_relay_connections_max", "Relay clients allowed at once (WEBSOCKET_MAX_CONNECTIONS)."
        )
        g.add_metric([], float(relay["max_connections"]))
        yield g

        c = CounterMetricFamily(f"{PREFIX}_relay_connections", "Relay clients accepted since start.")
        c.add_metric([], float(relay["totals"]["accepted"]))
        yield c

        c = CounterMetricFamily(f"{PREFIX}_relay_refused", "Relay clients refused (server full or disabled).")
        c.add_metric([], float(sum(v for k, v in relay["totals"].items() if k.startswith("refused_"))))
        yield c

        g = GaugeMetricFamily(
            f"{PREFIX}_upstream_state", "1 for the upstream link's current state, 0 for the others.", labels=["state"]
        )
        current = snap.state if snap is not None else LinkState.STOPPED
        for state in LinkState:
            g.add_metric([state.value], 1.0 if state == current else 0.0)
        yield g

        c = CounterMetricFamily(f"{PREFIX}_upstream_reconnects", "Upstream reconnections since start.")
        c.add_metric([], float(snap.reconnect_count if snap is not None else 0))
        yield c

        c = CounterMetricFamily(f"{PREFIX}_ticks_received", "Tick frames received from the upstream.")
        c.add_metric([], float(stats.get("ticks_received", 0)))
        yield c

        c = CounterMetricFamily(f"{PREFIX}_ticks_published", "Ticks published to the hub (live and backfilled).")
        c.add_metric([], float(stats.get("ticks_published", 0)))
        yield c

        c = CounterMetricFamily(f"{PREFIX}_ticks_backfilled", "Ticks recovered with ticks_history after a reconnect.")
        c.add_metric([], float(stats.get("ticks_backfilled", 0)))
        yield c

        c = CounterMetricFamily(
            f"{PREFIX}_backfill_gaps",
            "Backfills that could not reach back to the last tick published (the outage outlasted one reply).",
        )
        c.add_metric([], float(stats.get("backfill_gaps", 0)))
        yield c

        c = CounterMetricFamily(f"{PREFIX}_ticks_relayed", "Tick frames sent to relay clients.")
        c.add_metric([], float(relay["totals"].get("ticks_sent", 0)))
        yield c

        c = CounterMetricFamily(f"{PREFIX}_ticks_dropped", "Events dropped for slow consumers (oldest first).")
        c.add_metric([], float(hub.get("dropped_total", 0)))
        yield c

        c = CounterMetricFamily(f"{PREFIX}_upstream_errors", "Upstream errors by code.", labels=["code"])
        for code, count in list(stats.get("errors_by_code", {}).items())[:MAX_ERROR_CODES]:
            c.add_metric([code], float(count))
        yield c

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
        for b in rt.breakers.snapshots():
            for breaker_state in BREAKER_STATES:
                g.add_metric([b.name, breaker_state], 1.0 if b.state == breaker_state else 0.0)
            transitions.add_metric([b.name], float(b.transition_count))
            rejections.add_metric([b.name], float(b.rejections_total))
        yield g
        yield transitions
        yield rejections

        history = rt.store.snapshot()
        g = GaugeMetricFamily(f"{PREFIX}_history_db_up", "1 when the history database answered the last call.")
        g.add_metric([], 1.0 if history["reachable"] else 0.0)
        yield g
        g = GaugeMetricFamily(f"{PREFIX}_history_pending_events", "History events waiting for the database.")
        g.add_metric([], float(history["pending_events"]))
        yield g
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
        alerts = rt.alerts.snapshot()
        for name, key, text in (
            ("alerts_sent", "sent_total", "Alerts delivered to ALERT_WEBHOOK_URL."),
            ("alerts_failed", "failed_total", "Alerts given up (refused, or undelivered for an hour)."),
            ("alerts_dropped", "dropped_total", "Alerts dropped from the full queue or at shutdown."),
        ):
            c = CounterMetricFamily(f"{PREFIX}_{name}", text)
            c.add_metric([], float(alerts[key]))
            yield c
        g = GaugeMetricFamily(f"{PREFIX}_event_loop_lag_seconds", "How late the event loop last ran a timer.")
        g.add_metric([], rt.loop_lag.lag_s)
        yield g


class Metrics:
    """The metrics of one Runtime."""

    def __init__(self, runtime: Runtime) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_SnapshotCollector(runtime))
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

    def observe_outage(self, seconds: float) -> None:
        self._outage.observe(seconds)

    def observe_health_check(self, check: str, seconds: float) -> None:
        self._health.labels(check=check).observe(seconds)

    def render(self, accept: str | None = None) -> tuple[bytes, str]:
        """The exposition body and its content type: OpenMetrics when ``accept`` asks for it
        (``application/openmetrics-text``), else the Prometheus text format 0.0.4."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
