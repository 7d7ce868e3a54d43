"""The status views that REST (:mod:`backend_core.api`) and the status page (``rxapp``) share.

Pure functions of snapshots and the wall time: they build the JSON of
``GET /api/v1/status``, ``GET /health/websocket``, the REST fallback's tick views and the
upstream part of every relay status frame. Nothing here awaits or changes anything; the
Runtime only hands out the components they read (:class:`StatusSource`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Protocol

from backend_core import __version__
from backend_core.breakers.registry import BreakerRegistry
from backend_core.clock import Clock, iso_utc
from backend_core.events import LinkState, SymbolStatus, Tick, UpstreamSnapshot
from backend_core.health import Snapshotting
from backend_core.incidents import upstream_in_maintenance

if TYPE_CHECKING:
    from backend_core.config import Settings

# A tick older than this many seconds is shown as stale by REST and the page.
STALE_TICK_S = 10.0


# ---------------------------------------------------------------------------- what the views read


class LatestTicks(Protocol):
    def latest(self, symbol: str) -> Tick | None: ...


class StatusSource(Protocol):
    """What the views read: the Runtime satisfies it (without this module importing it)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def started_at(self) -> float | None: ...

    @property
    def ready(self) -> bool: ...

    @property
    def hub(self) -> LatestTicks: ...

    @property
    def breakers(self) -> BreakerRegistry: ...

    @property
    def relay(self) -> Snapshotting: ...

    def upstream_snapshot(self) -> UpstreamSnapshot | None: ...


# ---------------------------------------------------------------------------- ticks


@dataclass(frozen=True, slots=True)
class TickView:
    """A tick as REST and the page show it: with its age and whether it is stale."""

    symbol: str
    epoch: int
    quote: float
    pip_size: int
    age_s: float
    stale: bool
    backfill: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def tick_views(source: StatusSource, symbols: Sequence[str] | None = None) -> list[TickView]:
    """The latest tick of each symbol that has one (every configured symbol by default)."""
    now = source.clock.wall()
    snap = source.upstream_snapshot()
    upstream_live = snap is not None and snap.state == LinkState.CONNECTED
    views = []
    for symbol in symbols or source.settings.DERIV_SYMBOLS:
        tick = source.hub.latest(symbol)
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


# ---------------------------------------------------------------------------- the upstream link


def symbol_status(status: SymbolStatus, now_wall: float) -> dict[str, Any]:
    """One symbol's subscription, as ``/api/v1/status`` and ``/health/websocket`` show it."""
    return {
        "symbol": status.symbol,
        "subscribed": status.subscribed,
        "last_epoch": status.last_epoch,
        "tick_age_s": None if status.last_tick_at is None else round(max(0.0, now_wall - status.last_tick_at), 3),
        "failed_code": status.failed_code,
        "failed_reason": status.failed_reason,
        # The latest ticks lost for good: epochs strictly between from and to.
        "gap": {"from_epoch": status.gap_from, "to_epoch": status.gap_to} if status.gap_from is not None else None,
    }


def upstream_status(source: StatusSource) -> dict[str, Any]:
    """The upstream state as relay status frames and the status API show it."""
    snap = source.upstream_snapshot()
    breaker = source.breakers.websocket.snapshot()
    now = source.clock.wall()
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
        # A planned upstream maintenance is under way: the page shows it in blue, not as an outage.
        "maintenance": upstream_in_maintenance(snap),
        "breaker_state": breaker.state,
        "breaker_retry_after_s": round(breaker.retry_after_s, 1),
        "last_error": (
            {"code": snap.last_error.code, "message": snap.last_error.message, "at": iso_utc(snap.last_error.at)}
            if snap.last_error
            else None
        ),
    }


def websocket_health(source: StatusSource) -> dict[str, Any]:
    """The ``GET /health/websocket`` body: the upstream link in detail, and the relay."""
    snap = source.upstream_snapshot()
    now = source.clock.wall()
    body: dict[str, Any] = {"upstream": upstream_status(source), "relay": source.relay.snapshot()}
    if snap is not None:
        body["upstream"].update(
            {
                "url": snap.url,
                "reconnect_count": snap.reconnect_count,
                "last_message_age_s": None
                if snap.last_message_at is None
                else round(max(0.0, now - snap.last_message_at), 3),
                "last_pong_latency_s": snap.last_pong_latency_s,
                "symbols": [symbol_status(s, now) for s in snap.symbols],
            }
        )
    return body


# ---------------------------------------------------------------------------- the whole page


def status(source: StatusSource) -> dict[str, Any]:
    """Everything the status page shows, as JSON (``GET /api/v1/status``)."""
    settings = source.settings
    snap = source.upstream_snapshot()
    now = source.clock.wall()
    return {
        "service": {
            "version": __version__,
            "started_at": iso_utc(source.started_at),
            "ready": source.ready,
            "time": iso_utc(now),
        },
        "upstream": {
            **upstream_status(source),
            "url": snap.url if snap else None,
            "reconnect_count": snap.reconnect_count if snap else 0,
            "last_message_at": iso_utc(snap.last_message_at) if snap else None,
            "last_pong_latency_s": snap.last_pong_latency_s if snap else None,
            "connected_since": iso_utc(snap.connected_since) if snap else None,
            "symbols": [symbol_status(s, now) for s in (snap.symbols if snap else ())],
        },
        "ticks": [view.to_dict() for view in tick_views(source)],
        "circuit_breakers": [b.to_dict() for b in source.breakers.snapshots()],
        "relay": {
            "enabled": settings.WEBSOCKET_ENABLED,
            "max_connections": settings.WEBSOCKET_MAX_CONNECTIONS,
            "active_connections": source.relay.snapshot()["active"],
        },
        "frontend": {
            "ws_url": settings.VITE_WS_URL,
            "reconnect_attempts": settings.VITE_WS_RECONNECT_ATTEMPTS,
            "reconnect_interval_ms": settings.VITE_WS_RECONNECT_INTERVAL,
            "real_time_updates": settings.VITE_ENABLE_REAL_TIME_UPDATES,
            "fallback_enabled": settings.VITE_WEBSOCKET_FALLBACK_ENABLED,
        },
    }
