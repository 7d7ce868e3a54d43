"""The ``/api/v1/ws`` endpoint: fan ticks and upstream status out to API clients.

The JSON protocol is documented in ``docs/websocket-api.md``. This module is split the way
DESIGN.md rule 2 asks: the decisions are pure and unit-tested without sockets
(:func:`parse_client_message`, :class:`MessageRateLimiter`, :func:`plan_resume`,
:func:`origin_allowed`, :func:`heartbeat_step`, the frame builders); :class:`Relay` only
moves data between a Starlette :class:`~starlette.websockets.WebSocket` and a hub
:class:`~backend_core.hub.Subscription`.

Per connection there are three coroutines and no shared locks:

- the endpoint coroutine, which admits the client, starts the other two, waits until
  something decides the connection is over, then cleans up and sends the close frame;
- a reader, which validates each client frame and answers through the connection's
  bounded outbox (it never sends itself);
- one writer, the only code that sends: it drains the outbox first (acks, errors, pongs,
  replays), then the hub subscription (live ticks, status, drop markers).

One supervisor task per relay (running only while there are connections) sends
application-level pings, closes clients that stop answering (heartbeat), clients that
stop reading (backlog watch: the age of the oldest event waiting in their subscription),
and clients whose socket is stuck (send watch: a send not finished within
``send_timeout_s``). The send watch bounds every send as an ``asyncio.timeout`` around it
would, without a timer per send: arming and disarming one costs about 4 us, which at
1,000 clients is as much CPU as a third of a bare broadcast's whole cost per frame. The
rare one-off waits (handshake, close frame, refusal) do use ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import heapq
import itertools
import json
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from backend_core.clock import Clock, SystemClock, iso_utc
from backend_core.config import Settings
from backend_core.events import Tick, UpstreamSnapshot
from backend_core.hub import DEFAULT_RING_SIZE, Closed, Dropped, Hub, Subscription

logger = logging.getLogger("backend_core.relay")

# --- limits (DESIGN.md rule 5) ------------------------------------------------------------

# The largest legitimate client message, a subscribe naming 50 symbols with a resume
# epoch each, is under 2 KiB; twice that leaves room for ids and whitespace.
MAX_FRAME_BYTES = 4096

# A client needs a handful of messages a minute (subscribe, pong). 20/s sustained with a
# burst of 40 lets a UI re-subscribe everything at once and still stops a flood.
RATE_PER_S = 20.0
RATE_BURST = 40
# A client that keeps sending after 20 `rate_limited` errors within 10 s is ignoring them;
# it is closed with 1008 rather than answered forever.
RATE_MAX_REJECTIONS = 20
RATE_REJECTION_WINDOW_S = 10.0

# Control frames (acks, errors, pongs, pings, status) waiting for the writer. Replies to a
# full burst of 40 messages plus status and pings fit many times over; more means the
# client sends but does not read.
MAX_OUTBOX_FRAMES = 256

# Ticks replayed per symbol on resume; the hub keeps no more than this by default.
MAX_REPLAY_PER_SYMBOL = DEFAULT_RING_SIZE

# How long the close frame may take to be written before the connection is abandoned.
CLOSE_TIMEOUT_S = 5.0

# Client-chosen ids are echoed back; long ones would let a client inflate every reply.
MAX_ID_LENGTH = 64

# The supervisor sweeps every connection a few times per the shortest deadline it enforces,
# bounded so that tiny test settings do not spin and long ones still react within 1 s.
MIN_SWEEP_S = 0.01
MAX_SWEEP_S = 1.0

# One status frame text is shared by every connection for this long (status_provider()
# is called once per change, not once per client).
STATUS_CACHE_S = 0.25

# A failing status_provider is logged at most this often.
PROVIDER_ERROR_LOG_INTERVAL_S = 60.0

# Encoded tick frames kept for re-use across connections (the same tick goes to every
# client); cleared whenever it reaches this size.
TICK_TEXT_CACHE_SIZE = 256

# At most this many connections are listed one by one in snapshot() (totals cover all).
SNAPSHOT_MAX_CONNECTIONS = 1000

# WebSocket close codes used (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013

ACTIONS = ("subscribe", "unsubscribe", "ping", "pong")

PING_FRAME = '{"type":"ping"}'


# --- client messages (pure) ------------------------------------------------------------------

MessageId = str | int | None


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    symbols: tuple[str, ...]
    resume: Mapping[str, int] = field(default_factory=dict)
    id: MessageId = None


@dataclass(frozen=True, slots=True)
class UnsubscribeRequest:
    symbols: tuple[str, ...] | None  # None: every symbol
    id: MessageId = None


@dataclass(frozen=True, slots=True)
class PingRequest:
    id: MessageId = None


@dataclass(frozen=True, slots=True)
class PongReply:
    id: MessageId = None


@dataclass(frozen=True, slots=True)
class ClientError:
    """A client frame that cannot be served: becomes an ``error`` frame."""

    code: str
    message: str
    id: MessageId = None


ClientMessage = SubscribeRequest | UnsubscribeRequest | PingRequest | PongReply


def _check_id(data: Mapping[str, Any]) -> tuple[MessageId, ClientError | None]:
    raw = data.get("id")
    if raw is None:
        return None, None
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        return None, ClientError("invalid_message", "'id' must be a string or an integer")
    if isinstance(raw, str) and len(raw) > MAX_ID_LENGTH:
        return None, ClientError("invalid_message", f"'id' must be at most {MAX_ID_LENGTH} characters")
    if isinstance(raw, int) and not -(2**53) < raw < 2**53:
        return None, ClientError("invalid_message", "'id' must be an integer within +/-2**53")
    return raw, None


def _check_symbols(
    raw: Any, known: frozenset[str], message_id: MessageId
) -> tuple[tuple[str, ...], ClientError | None]:
    if not isinstance(raw, list) or not raw:
        return (), ClientError("invalid_message", "'symbols' must be a non-empty list of strings", message_id)
    if len(raw) > len(known):
        return (), ClientError(
            "invalid_message", f"'symbols' lists {len(raw)} entries; at most {len(known)} exist", message_id
        )
    if not all(isinstance(s, str) for s in raw):
        return (), ClientError("invalid_message", "'symbols' must be a non-empty list of strings", message_id)
    unknown = [s for s in raw if s not in known]
    if unknown:
        named = ", ".join(repr(s[:32]) for s in unknown[:5])
        return (), ClientError(
            "unknown_symbol", f"unknown symbol {named}; available: {', '.join(sorted(known))}", message_id
        )
    return tuple(dict.fromkeys(raw)), None


def parse_client_message(text: str, known_symbols: frozenset[str]) -> ClientMessage | ClientError:
    """Validate one text frame from a client (size and rate are checked before this).

    The action is named by ``action`` (``type`` is accepted as an alias, so a client may
    answer ``{"type": "ping"}`` with ``{"type": "pong"}``). Unknown extra fields are
    ignored, so clients may send fields from newer protocol versions.
    """
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return ClientError("invalid_json", "the message is not valid JSON")
    if not isinstance(data, dict):
        return ClientError("invalid_message", "a message must be a JSON object")
    message_id, error = _check_id(data)
    if error is not None:
        return error
    action = data["action"] if "action" in data else data.get("type")
    if action is None:
        return ClientError("invalid_message", "missing 'action'", message_id)
    if not isinstance(action, str):
        return ClientError("invalid_message", "'action' must be a string", message_id)
    if action not in ACTIONS:
        return ClientError(
            "unknown_action", f"unknown action {action[:32]!r}; expected one of {', '.join(ACTIONS)}", message_id
        )
    if action == "ping":
        return PingRequest(message_id)
    if action == "pong":
        return PongReply(message_id)
    if action == "unsubscribe":
        if data.get("symbols") is None:
            return UnsubscribeRequest(None, message_id)
        symbols, error = _check_symbols(data["symbols"], known_symbols, message_id)
        return error if error is not None else UnsubscribeRequest(symbols, message_id)

    symbols, error = _check_symbols(data.get("symbols"), known_symbols, message_id)
    if error is not None:
        return error
    raw_resume = data.get("resume")
    resume: dict[str, int] = {}
    if raw_resume is not None:
        if not isinstance(raw_resume, dict):
            return ClientError("invalid_message", "'resume' must be an object of symbol to epoch", message_id)
        for symbol, epoch in raw_resume.items():
            if symbol not in symbols:
                return ClientError(
                    "invalid_message", f"'resume' names {symbol[:32]!r}, which is not in 'symbols'", message_id
                )
            if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < 2**63:
                return ClientError(
                    "invalid_message", f"'resume' epoch of {symbol} must be a non-negative integer", message_id
                )
            resume[symbol] = epoch
    return SubscribeRequest(symbols, resume, message_id)


# --- rate limiting (pure) -------------------------------------------------------------------


class TokenBucket:
    """``rate_per_s`` tokens a second, at most ``burst`` saved up; time is passed in."""

    __slots__ = ("_tokens", "_updated", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be positive and burst at least 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._updated = now

    def take(self, now: float) -> bool:
        elapsed = max(0.0, now - self._updated)
        self._updated = now
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate_per_s)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    @property
    def tokens(self) -> float:
        return self._tokens


class RateVerdict(enum.Enum):
    ALLOW = "allow"
    REJECT = "reject"  # answer with a rate_limited error, do not act on the message
    CLOSE = "close"  # the client ignores the errors: close with 1008


class MessageRateLimiter:
    """A token bucket plus a count of rejections within a fixed window."""

    __slots__ = ("_bucket", "_rejections", "_window_start", "max_rejections", "window_s")

    def __init__(
        self,
        now: float,
        rate_per_s: float = RATE_PER_S,
        burst: int = RATE_BURST,
        max_rejections: int = RATE_MAX_REJECTIONS,
        window_s: float = RATE_REJECTION_WINDOW_S,
    ) -> None:
        self._bucket = TokenBucket(rate_per_s, burst, now)
        self.max_rejections = max_rejections
        self.window_s = window_s
        self._window_start = now
        self._rejections = 0

    def check(self, now: float) -> RateVerdict:
        if self._bucket.take(now):
            return RateVerdict.ALLOW
        if now - self._window_start >= self.window_s:
            self._window_start = now
            self._rejections = 0
        self._rejections += 1
        return RateVerdict.CLOSE if self._rejections > self.max_rejections else RateVerdict.REJECT


# --- resume (pure) -------------------------------------------------------------------------


class TickHistory(Protocol):
    """The part of the hub that resume reads."""

    def ticks_since(self, symbol: str, epoch: int, limit: int) -> list[Tick]: ...

    def evicted_through(self, symbol: str) -> int | None: ...


@dataclass(frozen=True, slots=True)
class ResumePlan:
    """What to replay for a ``resume`` request, and how to join the live stream after it.

    ``replay`` holds the missed ticks of every symbol, merged in epoch order.
    ``live_after`` is, per symbol, the epoch up to which the client now has everything:
    live ticks at or below it are duplicates and must be skipped. ``report`` goes into the
    ``subscribed`` ack (``replayed`` count; ``truncated`` when some missed ticks are no
    longer retained, so the client knows it has a gap).
    """

    replay: tuple[Tick, ...]
    live_after: dict[str, int]
    report: dict[str, dict[str, Any]]


def plan_resume(
    requested: Mapping[str, int], history: TickHistory, limit_per_symbol: int = MAX_REPLAY_PER_SYMBOL
) -> ResumePlan:
    per_symbol: list[list[Tick]] = []
    live_after: dict[str, int] = {}
    report: dict[str, dict[str, Any]] = {}
    for symbol, epoch in requested.items():
        # One more than the limit tells whether the limit cut the replay short.
        ticks = history.ticks_since(symbol, epoch, limit_per_symbol + 1)
        cut = len(ticks) > limit_per_symbol
        ticks = ticks[:limit_per_symbol]
        evicted = history.evicted_through(symbol)
        truncated = cut or (evicted is not None and evicted > epoch)
        per_symbol.append(ticks)
        live_after[symbol] = ticks[-1].epoch if ticks else epoch
        report[symbol] = {"from_epoch": epoch, "replayed": len(ticks), "truncated": truncated}
    replay = tuple(heapq.merge(*per_symbol, key=lambda t: t.epoch))
    return ResumePlan(replay, live_after, report)


def is_stale(tick: Tick, live_after: Mapping[str, int]) -> bool:
    """True when the client already has ``tick`` (it was replayed, or sent live before)."""
    last = live_after.get(tick.symbol)
    return last is not None and tick.epoch <= last


# --- admission and heartbeat (pure) --------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _host_port(netloc: str, default_port: int | None) -> tuple[str, int | None] | None:
    try:
        parts = urlsplit("//" + netloc)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if not host:
        return None
    return host.lower(), port if port is not None else default_port


def origin_allowed(origin: str | None, host: str | None, allowed: Iterable[str] = ()) -> bool:
    """May a handshake with this ``Origin`` header proceed?

    Absent Origin: yes (non-browser clients send none; browsers always do, so this does
    not open cross-site access). Otherwise the origin must be in ``allowed`` (exact
    ``scheme://host[:port]``, case-insensitive; ``*`` allows all) or name the same host
    and port as the request's ``Host`` header. Anything unparsable, including ``null``,
    is refused.
    """
    if origin is None:
        return True
    normalized = origin.strip().lower().rstrip("/")
    allowed_set = {a.strip().lower().rstrip("/") for a in allowed}
    if "*" in allowed_set or normalized in allowed_set:
        return True
    if host is None:
        return False
    try:
        parts = urlsplit(normalized)
    except ValueError:
        return False
    if parts.scheme not in _DEFAULT_PORTS or not parts.netloc:
        return False
    default_port = _DEFAULT_PORTS[parts.scheme]
    origin_hp = _host_port(parts.netloc, default_port)
    host_hp = _host_port(host.strip(), default_port)
    return origin_hp is not None and origin_hp == host_hp


class Heartbeat(enum.Enum):
    WAIT = "wait"
    PING = "ping"
    TIMEOUT = "timeout"


def heartbeat_step(
    now: float, ping_outstanding_since: float | None, last_ping_at: float, interval_s: float, timeout_s: float
) -> Heartbeat:
    """The heartbeat decision for one connection.

    Any frame from the client answers an outstanding ping (the reader clears
    ``ping_outstanding_since``). A ping unanswered for ``timeout_s`` ends the connection;
    otherwise a new ping goes out every ``interval_s``.
    """
    if ping_outstanding_since is not None:
        return Heartbeat.TIMEOUT if now - ping_outstanding_since >= timeout_s else Heartbeat.WAIT
    return Heartbeat.PING if now - last_ping_at >= interval_s else Heartbeat.WAIT


class SendWatch:
    """Finds a send that has been pending too long, from periodic observations.

    The writer only flips ``in_send`` and counts completed sends; the supervisor calls
    :meth:`observe` each sweep. A send counts as pending from the first sweep that saw
    it, so a stuck one is found within ``timeout`` plus two sweeps.
    """

    __slots__ = ("_seen_sent", "_since")

    def __init__(self) -> None:
        self._seen_sent = -1
        self._since: float | None = None

    def observe(self, now: float, in_send: bool, sends_completed: int) -> float:
        """Seconds the current send has been pending (0.0 when none is)."""
        if not in_send:
            self._since = None
            return 0.0
        if self._since is None or sends_completed != self._seen_sent:
            self._seen_sent = sends_completed
            self._since = now
            return 0.0
        return now - self._since


# --- frames (pure) --------------------------------------------------------------------------


def _dumps(frame: Mapping[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"), default=str)


def tick_frame(tick: Tick, replay: bool = False) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "tick",
        "symbol": tick.symbol,
        "epoch": tick.epoch,
        "quote": tick.quote,
        "bid": tick.bid,
        "ask": tick.ask,
        "pip_size": tick.pip_size,
        "backfill": tick.backfill,
    }
    if tick.gap_from is not None:
        frame["gap_from"] = tick.gap_from
    if replay:
        frame["replay"] = True
    return frame


def error_frame(code: str, message: str, message_id: MessageId = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if message_id is not None:
        frame["id"] = message_id
    return frame


def status_frame(
    snapshot: UpstreamSnapshot | None, provided: Mapping[str, Any] | None, now_wall: float
) -> dict[str, Any]:
    """A ``status`` frame: ``status_provider()``'s view, filled in from the hub's last status.

    The provider (the runtime, which also knows the breaker) wins where both say something.
    """
    frame: dict[str, Any] = {"type": "status"}
    if snapshot is not None:
        error = snapshot.last_error
        frame.update(
            state=snapshot.state.value,
            since=iso_utc(snapshot.since),
            last_error=None
            if error is None
            else {"code": error.code, "message": error.message, "at": iso_utc(error.at)},
            last_message_at=iso_utc(snapshot.last_message_at),
            reconnect_count=snapshot.reconnect_count,
            next_attempt_at=iso_utc(snapshot.next_attempt_at),
            simulated=snapshot.simulated,
        )
    else:
        frame.update(state="unknown", since=None, last_error=None)
    if provided:
        frame.update({k: v for k, v in provided.items() if k != "type"})
    frame.setdefault("retry_after_s", None)
    frame.setdefault("breaker_state", None)
    frame["at"] = iso_utc(now_wall)
    return frame


def _close_reason(text: str) -> str:
    """A close reason fits in 123 bytes of UTF-8 (RFC 6455 section 5.5)."""
    encoded = text.encode("utf-8")
    if len(encoded) <= 123:
        return text
    return encoded[:120].decode("utf-8", "ignore") + "..."


# --- the I/O shell -------------------------------------------------------------------------


@dataclass(slots=True)
class _Replay:
    ticks: deque[Tick]


_Outgoing = str | _Replay


class _Connection:
    """Everything the relay knows about one client. Touched only on the event loop."""

    __slots__ = (
        "close_code",
        "close_key",
        "close_reason",
        "closing",
        "connected_mono",
        "connected_wall",
        "drops",
        "id",
        "in_send",
        "last_ping_mono",
        "last_seen_mono",
        "limiter",
        "live_after",
        "messages_in",
        "messages_out",
        "origin",
        "outbox",
        "peer",
        "peer_closed",
        "ping_outstanding_since",
        "replay_pending",
        "send_watch",
        "sub",
        "symbols",
        "websocket",
    )

    def __init__(
        self,
        conn_id: str,
        websocket: WebSocket,
        peer: str,
        origin: str | None,
        now: float,
        wall: float,
        limiter: MessageRateLimiter,
    ) -> None:
        self.id = conn_id
        self.websocket = websocket
        self.peer = peer
        self.origin = origin
        self.sub: Subscription | None = None
        self.symbols: set[str] = set()
        self.live_after: dict[str, int] = {}
        self.connected_mono = now
        self.connected_wall = wall
        self.last_seen_mono = now
        self.last_ping_mono = now
        self.ping_outstanding_since: float | None = None
        self.messages_in = 0
        self.messages_out = 0
        self.in_send = False
        self.send_watch = SendWatch()
        self.drops = 0
        self.outbox: deque[_Outgoing] = deque()
        self.replay_pending = 0
        self.limiter = limiter
        self.closing = asyncio.Event()
        self.close_code = CLOSE_NORMAL
        self.close_reason = ""
        self.close_key = ""
        self.peer_closed = False

    def request_close(self, code: int, reason: str, key: str) -> None:
        """Ask the endpoint to end this connection; the first request wins."""
        if self.closing.is_set():
            return
        self.close_code = code
        self.close_reason = _close_reason(reason)
        self.close_key = key
        self.closing.set()


class Relay:
    """Serves ``/api/v1/ws``; mount ``WebSocketRoute("/api/v1/ws", relay.endpoint)``.

    ``status_provider()`` returns a JSON-able dict about the upstream (``state``,
    ``since``, ``retry_after_s``, ``breaker_state``, ``last_error`` ...); it is merged into
    every status frame. It must be cheap and must not await anything.
    """

    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        status_provider: Callable[[], dict[str, Any]],
        clock: Clock = SystemClock(),
        *,
        allowed_origins: Iterable[str] = (),
        max_frame_bytes: int = MAX_FRAME_BYTES,
        send_timeout_s: float | None = None,
        backlog_max_age_s: float | None = None,
        rate_per_s: float = RATE_PER_S,
        rate_burst: int = RATE_BURST,
        close_timeout_s: float = CLOSE_TIMEOUT_S,
    ) -> None:
        self._settings = settings
        self._hub = hub
        self._status_provider = status_provider
        self._clock = clock
        self._allowed_origins = tuple(allowed_origins)
        self._known_symbols = frozenset(settings.DERIV_SYMBOLS)
        self._max_frame_bytes = max_frame_bytes
        self._rate_per_s = rate_per_s
        self._rate_burst = rate_burst
        self.close_timeout_s = close_timeout_s
        self.max_connections = settings.WEBSOCKET_MAX_CONNECTIONS
        self.heartbeat_interval_s = settings.WEBSOCKET_HEARTBEAT_INTERVAL
        self.heartbeat_timeout_s = settings.WEBSOCKET_CONNECTION_TIMEOUT
        # A send blocks only while the client's socket buffers are full, i.e. it is not
        # reading; give it as long as a pong may take, by default.
        self.send_timeout_s = send_timeout_s if send_timeout_s is not None else settings.WEBSOCKET_CONNECTION_TIMEOUT
        self.backlog_max_age_s = (
            backlog_max_age_s if backlog_max_age_s is not None else settings.WEBSOCKET_CONNECTION_TIMEOUT
        )
        shortest = min(self.heartbeat_interval_s, self.heartbeat_timeout_s, self.backlog_max_age_s, self.send_timeout_s)
        self._sweep_s = min(MAX_SWEEP_S, max(MIN_SWEEP_S, shortest / 4))

        self._accepting = True
        self._ids = itertools.count(1)
        self._connections: dict[str, _Connection] = {}
        self._endpoints_done: dict[str, asyncio.Event] = {}
        self._supervisor: asyncio.Task[None] | None = None

        self._tick_text: dict[int, tuple[Tick, str]] = {}
        self._status_cache: tuple[UpstreamSnapshot | None, float, str] | None = None
        self._provider_error_logged_at: float | None = None

        self._accepted_total = 0
        self._ticks_sent = 0
        self._refused: dict[str, int] = {"full": 0, "disabled": 0, "origin": 0, "shutting_down": 0}
        self._closed_by: dict[str, int] = {}

    # --- public --------------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self._accepting and self._settings.WEBSOCKET_ENABLED

    def stop_accepting(self) -> None:
        """New clients are closed with 1001 from now on; existing ones are untouched."""
        self._accepting = False

    async def close_all(self, code: int = CLOSE_GOING_AWAY, reason: str = "server shutting down") -> None:
        """Stop accepting, close every connection with ``code``/``reason``, wait (bounded) for
        their handlers to finish, and stop the supervisor."""
        self.stop_accepting()
        for conn in list(self._connections.values()):
            conn.request_close(code, reason, "server_shutdown")
        waits = [event.wait() for event in self._endpoints_done.values()]
        if waits:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.close_timeout_s + 1.0):
                    await asyncio.gather(*waits)
        supervisor = self._supervisor
        if supervisor is not None and not supervisor.done():
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        self._supervisor = None

    def snapshot(self) -> dict[str, Any]:
        now = self._clock.monotonic()
        wall = self._clock.wall()
        listed = []
        for conn in itertools.islice(self._connections.values(), SNAPSHOT_MAX_CONNECTIONS):
            sub = conn.sub
            listed.append(
                {
                    "id": conn.id,
                    "peer": conn.peer,
                    "connected_at": iso_utc(conn.connected_wall),
                    "last_seen_at": iso_utc(wall - (now - conn.last_seen_mono)),
                    "messages_in": conn.messages_in,
                    "messages_out": conn.messages_out,
                    "drops": conn.drops,
                    "symbols": sorted(conn.symbols),
                    "backlog": (sub.backlog if sub else 0) + len(conn.outbox),
                    "oldest_pending_age_s": round(sub.oldest_pending_age_s, 3) if sub else 0.0,
                }
            )
        return {
            "enabled": self._settings.WEBSOCKET_ENABLED,
            "accepting": self.accepting,
            "max_connections": self.max_connections,
            "active": len(self._connections),
            "connections": listed,
            "connections_truncated": len(self._connections) > SNAPSHOT_MAX_CONNECTIONS,
            "totals": {
                "accepted": self._accepted_total,
                "refused_full": self._refused["full"],
                "refused_disabled": self._refused["disabled"],
                "refused_origin": self._refused["origin"],
                "refused_shutting_down": self._refused["shutting_down"],
                "ticks_sent": self._ticks_sent,
                "closed": dict(self._closed_by),
            },
        }

    async def endpoint(self, websocket: WebSocket) -> None:
        """The ASGI WebSocket handler of ``/api/v1/ws``."""
        peer = _peer(websocket)
        origin = websocket.headers.get("origin")
        if not self._settings.WEBSOCKET_ENABLED:
            await self._refuse(websocket, peer, "disabled", "WebSocket streaming is disabled on this server")
            return
        if not origin_allowed(origin, websocket.headers.get("host"), self._allowed_origins):
            await self._refuse(websocket, peer, "origin", "origin not allowed")
            return
        if not self._accepting:
            await self._accept_and_close(websocket, peer, "shutting_down", CLOSE_GOING_AWAY, "server shutting down")
            return
        if len(self._connections) >= self.max_connections:
            await self._accept_and_close(
                websocket, peer, "full", CLOSE_TRY_AGAIN_LATER, f"server full: {self.max_connections} connections"
            )
            return

        # Reserve the slot before the first await, so concurrent handshakes cannot overshoot.
        now = self._clock.monotonic()
        limiter = MessageRateLimiter(now, self._rate_per_s, self._rate_burst)
        conn = _Connection(f"c{next(self._ids)}", websocket, peer, origin, now, self._clock.wall(), limiter)
        done = asyncio.Event()
        self._connections[conn.id] = conn
        self._endpoints_done[conn.id] = done
        try:
            await self._serve(conn)
        finally:
            self._connections.pop(conn.id, None)
            self._endpoints_done.pop(conn.id, None)
            done.set()

    # --- per connection ----------------------------------------------------------------------

    async def _serve(self, conn: _Connection) -> None:
        websocket = conn.websocket
        try:
            async with asyncio.timeout(self.close_timeout_s):
                await websocket.accept()
        except Exception as exc:  # the client vanished during the handshake
            logger.info("relay handshake failed id=%s peer=%s error=%s", conn.id, conn.peer, type(exc).__name__)
            self._count_close("handshake_failed")
            return
        self._accepted_total += 1
        sub = conn.sub = self._hub.subscribe((), name=f"relay:{conn.id}")
        self._enqueue(conn, self._status_text(self._hub.status()))
        self._ensure_supervisor()
        logger.info(
            "relay open id=%s peer=%s origin=%r active=%d",
            conn.id,
            conn.peer,
            (conn.origin or "-")[:100],  # client-supplied: quoted and cut, never raw
            len(self._connections),
        )
        reader = asyncio.create_task(self._guard(conn, self._read_loop, "reader"), name=f"relay-read-{conn.id}")
        writer = asyncio.create_task(self._guard(conn, self._write_loop, "writer"), name=f"relay-write-{conn.id}")
        try:
            await conn.closing.wait()
        except asyncio.CancelledError:
            conn.request_close(CLOSE_GOING_AWAY, "server shutting down", "server_shutdown")
            raise
        finally:
            for task in (reader, writer):
                task.cancel()
            await asyncio.gather(reader, writer, return_exceptions=True)
            sub.close("connection closed")
            # Counted and logged before the close frame goes out: sending it may wait (up to
            # close_timeout_s) or be cancelled by a server shutdown.
            self._count_close(conn.close_key)
            logger.info(
                "relay close id=%s peer=%s code=%d reason=%r by=%s duration_s=%.1f in=%d out=%d drops=%d",
                conn.id,
                conn.peer,
                conn.close_code,
                conn.close_reason,
                conn.close_key,
                self._clock.monotonic() - conn.connected_mono,
                conn.messages_in,
                conn.messages_out,
                conn.drops,
            )
            await self._send_close(conn)

    async def _guard(self, conn: _Connection, loop: Callable[[_Connection], Awaitable[None]], role: str) -> None:
        try:
            await loop(conn)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("relay connection crashed id=%s peer=%s in=%s", conn.id, conn.peer, role)
            conn.request_close(CLOSE_INTERNAL_ERROR, "internal error", "internal_error")

    async def _send_close(self, conn: _Connection) -> None:
        websocket = conn.websocket
        if conn.peer_closed or websocket.application_state != WebSocketState.CONNECTED:
            return
        # Best effort: a client that does not read may never take the close frame.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.close_timeout_s):
                await websocket.close(conn.close_code, conn.close_reason)

    async def _read_loop(self, conn: _Connection) -> None:
        websocket = conn.websocket
        max_bytes = self._max_frame_bytes
        while True:
            try:
                message = await websocket.receive()
            except (WebSocketDisconnect, OSError, RuntimeError):
                conn.peer_closed = True
                conn.request_close(1006, "connection lost", "connection_lost")
                return
            if message["type"] == "websocket.disconnect":
                conn.peer_closed = True
                code = int(message.get("code") or 1005)
                conn.request_close(code, str(message.get("reason") or ""), "client_closed")
                return
            now = self._clock.monotonic()
            conn.last_seen_mono = now
            conn.ping_outstanding_since = None
            conn.messages_in += 1
            text: str | None = message.get("text")
            data: bytes | None = message.get("bytes")
            size = _frame_size(text, data)
            if size > max_bytes:
                conn.request_close(CLOSE_TOO_BIG, f"message too big: {size} bytes > {max_bytes}", "message_too_big")
                return
            verdict = conn.limiter.check(now)
            if verdict is RateVerdict.CLOSE:
                conn.request_close(CLOSE_POLICY_VIOLATION, "rate limit exceeded", "rate_limited")
                return
            if verdict is RateVerdict.REJECT:
                limit = f"{self._rate_per_s:g} messages/s, burst {self._rate_burst}"
                self._reply(conn, error_frame("rate_limited", f"too many messages; the limit is {limit}"))
                continue
            if text is None:
                self._reply(conn, error_frame("invalid_message", "binary frames are not accepted; send JSON text"))
                continue
            parsed = parse_client_message(text, self._known_symbols)
            if isinstance(parsed, ClientError):
                self._reply(conn, error_frame(parsed.code, parsed.message, parsed.id))
            elif isinstance(parsed, SubscribeRequest):
                self._subscribe(conn, parsed)
            elif isinstance(parsed, UnsubscribeRequest):
                self._unsubscribe(conn, parsed)
            elif isinstance(parsed, PingRequest):
                self._reply(conn, {"type": "pong"} if parsed.id is None else {"type": "pong", "id": parsed.id})
            # PongReply: liveness is already recorded above.

    def _subscribe(self, conn: _Connection, request: SubscribeRequest) -> None:
        assert conn.sub is not None
        if request.resume and conn.replay_pending:
            self._reply(
                conn,
                error_frame("resume_busy", "an earlier replay is still being sent; resume again after it", request.id),
            )
            return
        conn.symbols.update(request.symbols)
        # Subscribe first, then read the ring: nothing can be published in between (no
        # await), and live ticks already covered by the replay are skipped by live_after.
        conn.sub.set_symbols(conn.symbols)
        ack: dict[str, Any] = {"type": "subscribed", "symbols": sorted(conn.symbols)}
        if request.id is not None:
            ack["id"] = request.id
        plan = plan_resume(request.resume, self._hub) if request.resume else None
        if plan is not None:
            ack["resume"] = plan.report
            for symbol, epoch in plan.live_after.items():
                conn.live_after[symbol] = max(epoch, conn.live_after.get(symbol, epoch))
        self._reply(conn, ack)
        if plan is not None and plan.replay:
            conn.replay_pending = len(plan.replay)
            self._enqueue(conn, _Replay(deque(plan.replay)))

    def _unsubscribe(self, conn: _Connection, request: UnsubscribeRequest) -> None:
        assert conn.sub is not None
        removed = sorted(conn.symbols if request.symbols is None else conn.symbols.intersection(request.symbols))
        conn.symbols.difference_update(removed)
        conn.sub.set_symbols(conn.symbols)
        ack: dict[str, Any] = {"type": "unsubscribed", "symbols": removed, "subscribed": sorted(conn.symbols)}
        if request.id is not None:
            ack["id"] = request.id
        self._reply(conn, ack)

    def _reply(self, conn: _Connection, frame: Mapping[str, Any]) -> None:
        self._enqueue(conn, _dumps(frame))

    def _enqueue(self, conn: _Connection, item: _Outgoing) -> None:
        if len(conn.outbox) >= MAX_OUTBOX_FRAMES:
            conn.request_close(
                CLOSE_POLICY_VIOLATION, f"slow consumer: {MAX_OUTBOX_FRAMES} replies unread", "slow_consumer"
            )
            return
        conn.outbox.append(item)
        if conn.sub is not None:
            conn.sub.wake()

    async def _write_loop(self, conn: _Connection) -> None:
        # The hot path of the relay: one pass per frame per client. Lookups are hoisted
        # and the send is inlined (not self._send) because at 1,000 clients each extra
        # call here costs a measurable share of a frame's budget.
        sub = conn.sub
        assert sub is not None
        outbox = conn.outbox
        symbols = conn.symbols  # mutated in place by the reader, never replaced
        live_after = conn.live_after
        get_nowait = sub.get_nowait
        send_text = conn.websocket.send_text
        while True:
            is_tick = False
            if outbox:
                item = outbox.popleft()
                if isinstance(item, _Replay):
                    if not await self._send_replay(conn, item):
                        return
                    continue
                text = item
            else:
                event = get_nowait()
                if event is None:
                    await sub.wait()
                    continue
                if isinstance(event, Tick):
                    symbol = event.symbol
                    if symbol not in symbols:
                        continue
                    last = live_after.get(symbol)
                    if last is not None and event.epoch <= last:
                        continue  # already replayed or sent
                    live_after[symbol] = event.epoch
                    text = self._tick_text_for(event)
                    is_tick = True
                elif isinstance(event, UpstreamSnapshot):
                    text = self._status_text(event)
                elif isinstance(event, Dropped):
                    conn.drops += event.count
                    if not await self._send(conn, _dumps({"type": "dropped", "count": event.count})):
                        return
                    # A dropped event may have been a status change: resynchronise.
                    text = self._status_text(self._hub.status())
                else:
                    self._closed_by_hub(conn, event)
                    return
            # Inlined _send (see there for how it is bounded).
            conn.in_send = True
            try:
                await send_text(text)
            except (WebSocketDisconnect, OSError, RuntimeError):
                conn.peer_closed = True
                conn.request_close(1006, "connection lost", "connection_lost")
                return
            finally:
                conn.in_send = False
            conn.messages_out += 1
            if is_tick:
                self._ticks_sent += 1

    async def _send_replay(self, conn: _Connection, replay: _Replay) -> bool:
        ticks = replay.ticks
        while ticks:
            tick = ticks.popleft()
            conn.replay_pending = len(ticks)
            if tick.symbol in conn.symbols:
                if not await self._send(conn, _dumps(tick_frame(tick, replay=True))):
                    return False
                self._ticks_sent += 1
        conn.replay_pending = 0
        return True

    def _closed_by_hub(self, conn: _Connection, event: Closed) -> None:
        if event.slow:
            conn.request_close(CLOSE_POLICY_VIOLATION, event.reason, "slow_consumer")
        else:
            conn.request_close(CLOSE_GOING_AWAY, "server shutting down", "server_shutdown")

    async def _send(self, conn: _Connection, text: str) -> bool:
        # Bounded by the supervisor's send watch (see the module docstring): past
        # send_timeout_s it closes the connection, which cancels this await.
        conn.in_send = True
        try:
            await conn.websocket.send_text(text)
        except (WebSocketDisconnect, OSError, RuntimeError):
            conn.peer_closed = True
            conn.request_close(1006, "connection lost", "connection_lost")
            return False
        finally:
            conn.in_send = False
        conn.messages_out += 1
        return True

    # --- supervisor ---------------------------------------------------------------------------

    def _ensure_supervisor(self) -> None:
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.create_task(self._supervise(), name="relay-supervisor")

    async def _supervise(self) -> None:
        while self._connections:
            await self._clock.sleep(self._sweep_s)
            now = self._clock.monotonic()
            for conn in list(self._connections.values()):
                try:
                    self._check(conn, now)
                except Exception:
                    logger.exception("relay supervisor failed on id=%s peer=%s", conn.id, conn.peer)
                    conn.request_close(CLOSE_INTERNAL_ERROR, "internal error", "internal_error")

    def _check(self, conn: _Connection, now: float) -> None:
        if conn.closing.is_set() or conn.sub is None:
            return
        pending_s = conn.send_watch.observe(now, conn.in_send, conn.messages_out)
        if pending_s > self.send_timeout_s:
            conn.request_close(
                CLOSE_POLICY_VIOLATION, f"slow consumer: a send took over {self.send_timeout_s:g} s", "send_timeout"
            )
            return
        age = conn.sub.oldest_pending_age_s
        if age > self.backlog_max_age_s:
            conn.request_close(
                CLOSE_POLICY_VIOLATION,
                f"slow consumer: oldest undelivered event waited {age:.1f} s (limit {self.backlog_max_age_s:g} s)",
                "slow_consumer",
            )
            return
        step = heartbeat_step(
            now, conn.ping_outstanding_since, conn.last_ping_mono, self.heartbeat_interval_s, self.heartbeat_timeout_s
        )
        if step is Heartbeat.TIMEOUT:
            conn.request_close(CLOSE_INTERNAL_ERROR, "heartbeat timeout", "heartbeat_timeout")
        elif step is Heartbeat.PING:
            conn.last_ping_mono = now
            conn.ping_outstanding_since = now
            self._enqueue(conn, PING_FRAME)

    # --- helpers --------------------------------------------------------------------------------

    def _tick_text_for(self, tick: Tick) -> str:
        # Keyed by identity (hashing a Tick costs more than the lookup); the entry holds the
        # tick itself, so its id cannot be reused while the entry exists.
        entry = self._tick_text.get(id(tick))
        if entry is not None and entry[0] is tick:
            return entry[1]
        if len(self._tick_text) >= TICK_TEXT_CACHE_SIZE:
            self._tick_text.clear()
        text = _dumps(tick_frame(tick))
        self._tick_text[id(tick)] = (tick, text)
        return text

    def _status_text(self, snapshot: UpstreamSnapshot | None) -> str:
        now = self._clock.monotonic()
        cached = self._status_cache
        if cached is not None and cached[0] is snapshot and now - cached[1] < STATUS_CACHE_S:
            return cached[2]
        provided: dict[str, Any] | None
        try:
            provided = self._status_provider()
            if not isinstance(provided, Mapping):
                raise TypeError(f"status_provider returned {type(provided).__name__}, not a dict")
        except Exception:
            provided = None
            if (
                self._provider_error_logged_at is None
                or now - self._provider_error_logged_at >= PROVIDER_ERROR_LOG_INTERVAL_S
            ):
                self._provider_error_logged_at = now
                logger.exception("relay status_provider failed; status frames carry the hub's view only")
        try:
            text = _dumps(status_frame(snapshot, provided, self._clock.wall()))
        except (TypeError, ValueError):
            logger.exception("relay status_provider returned something that is not JSON-able")
            text = _dumps(status_frame(snapshot, None, self._clock.wall()))
        self._status_cache = (snapshot, now, text)
        return text

    async def _refuse(self, websocket: WebSocket, peer: str, key: str, reason: str) -> None:
        """Refuse before the handshake completes: HTTP 403 with the reason as the body where
        the server supports the denial-response extension, else close 1008 (which servers
        turn into a bare 403)."""
        self._refused[key] += 1
        logger.info("relay refused peer=%s reason=%r status=403", peer, reason)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.close_timeout_s):
                if "websocket.http.response" in websocket.scope.get("extensions", {}):
                    await websocket.send_denial_response(PlainTextResponse(reason, status_code=403))
                else:
                    await websocket.close(CLOSE_POLICY_VIOLATION, reason)

    async def _accept_and_close(self, websocket: WebSocket, peer: str, key: str, code: int, reason: str) -> None:
        self._refused[key] += 1
        logger.info("relay refused peer=%s reason=%r code=%d", peer, reason, code)
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.close_timeout_s):
                await websocket.accept()
                await websocket.close(code, reason)

    def _count_close(self, key: str) -> None:
        self._closed_by[key] = self._closed_by.get(key, 0) + 1


def _peer(websocket: WebSocket) -> str:
    client = websocket.client
    if client is None:
        return "-"
    return f"{client.host}:{client.port}"


def _frame_size(text: str | None, data: bytes | None) -> int:
    if data is not None:
        return len(data)
    if text is None:
        return 0
    return len(text) if text.isascii() else len(text.encode("utf-8"))


__all__ = [
    "ACTIONS",
    "MAX_FRAME_BYTES",
    "ClientError",
    "ClientMessage",
    "Heartbeat",
    "MessageRateLimiter",
    "PingRequest",
    "PongReply",
    "RateVerdict",
    "Relay",
    "ResumePlan",
    "SubscribeRequest",
    "TokenBucket",
    "UnsubscribeRequest",
    "error_frame",
    "heartbeat_step",
    "is_stale",
    "origin_allowed",
    "parse_client_message",
    "plan_resume",
    "status_frame",
    "tick_frame",
]
