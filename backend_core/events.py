"""The values that flow from the Deriv manager through the hub to every consumer.

The manager is the only publisher (DESIGN.md "Growing past one machine"): it calls a
:class:`FeedSink` with :class:`Tick` and :class:`UpstreamSnapshot` values. They are
immutable, so one value can be handed to any number of consumers without copying.
Wall-clock fields (``*_at``) are Unix seconds, for output only; decisions use the
monotonic clock inside the manager.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any, Protocol


class LinkState(StrEnum):
    """The state of the one upstream link, as users see it."""

    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    CIRCUIT_OPEN = "circuit_open"
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class Tick:
    """One price tick for one symbol (deriv-protocol.md 3.3).

    ``backfill`` is true when the tick was recovered with ``ticks_history`` after a
    reconnect rather than pushed live; bid/ask are absent on backfilled ticks because
    ``ticks_history`` does not carry them.

    ``gap_from`` is set on the first tick after a gap the upstream could not fill (an
    outage longer than the bounded ``ticks_history`` paging reaches back, or a page that
    failed): the epoch of the last tick published before it. Ticks strictly between are lost.
    """

    symbol: str
    epoch: int
    quote: float
    pip_size: int
    bid: float | None = None
    ask: float | None = None
    backfill: bool = False
    gap_from: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        if self.gap_from is None:
            del out["gap_from"]  # present only where there is a gap, as in relay frames
        return out


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """The last error in a form fit for users: a stable code, plain words, and when."""

    code: str
    message: str
    at: float


@dataclass(frozen=True, slots=True)
class SymbolStatus:
    """Per-symbol subscription health."""

    symbol: str
    subscribed: bool = False
    last_epoch: int | None = None
    last_tick_at: float | None = None
    failed_code: str | None = None
    failed_reason: str | None = None
    # The latest gap a backfill could not fill (see Tick.gap_from): the ticks with epochs
    # strictly between gap_from and gap_to are lost.
    gap_from: int | None = None
    gap_to: int | None = None


@dataclass(frozen=True, slots=True)
class UpstreamSnapshot:
    """Everything known about the upstream link at one moment.

    Published on every state change; also what ``/health/websocket`` and the status
    page read. ``url`` never carries credentials.
    """

    state: LinkState
    since: float
    url: str
    simulated: bool
    last_message_at: float | None = None
    last_pong_latency_s: float | None = None
    reconnect_count: int = 0
    attempt: int = 0
    max_attempts: int = 0
    next_attempt_at: float | None = None
    retry_in_progress: bool = False
    planned_reconnect: bool = False
    site_status: str | None = None
    last_error: ErrorInfo | None = None
    symbols: tuple[SymbolStatus, ...] = field(default_factory=tuple)
    connected_since: float | None = None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["state"] = self.state.value
        return data


class FeedSink(Protocol):
    """Where the manager publishes. The hub implements it; tests pass a recorder."""

    def publish_tick(self, tick: Tick) -> None: ...

    def publish_status(self, snapshot: UpstreamSnapshot) -> None: ...
