"""The I/O shell of ``/api/v1/ws``: fan ticks and upstream status out to API clients.

The decisions live beside it, pure and unit-tested without sockets: the client protocol
(:mod:`backend_core.relay.protocol`, mirroring ``docs/websocket-api.md``), the policies
(:mod:`backend_core.relay.policy`: rate limit, origin, heartbeat, send watch) and resume
planning (:mod:`backend_core.relay.resume`). :class:`Relay` only moves data between a
Starlette :class:`~starlette.websockets.WebSocket` and a hub
:class:`~backend_core.hub.Subscription`, and calls them.

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

The frame size limit belongs in the ASGI server, which otherwise buffers a whole message
before the relay sees it: production serving sets it there (``gunicorn.conf.py``); the
check in the reader is the fallback for servers without one.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from backend_core.clock import Clock, SystemClock, iso_utc
from backend_core.config import Settings
from backend_core.events import Tick, UpstreamSnapshot
from backend_core.hub import Closed, Dropped, Hub, Subscription
from backend_core.relay.policy import (
    RATE_BURST,
    RATE_PER_S,
    Heartbeat,
    MessageRateLimiter,
    RateVerdict,
    SendWatch,
    heartbeat_step,
    origin_allowed,
)
from backend_core.relay.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_NORMAL,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN_LATER,
    MAX_FRAME_BYTES,
    PING_FRAME,
    ClientError,
    PingRequest,
    SubscribeRequest,
    UnsubscribeRequest,
    close_reason,
    dumps_frame,
    error_frame,
    frame_size,
    parse_client_message,
    status_frame,
    tick_frame,
)
from backend_core.relay.resume import plan_resume

logger = logging.getLogger("backend_core.relay")

# Control frames (acks, errors, pongs, pings, status) waiting for the writer. Replies to a
# full burst of 40 messages plus status and pings fit many times over; more means the
# client sends but does not read.
MAX_OUTBOX_FRAMES = 256

# How long the close frame may take to be written before the connection is abandoned.
CLOSE_TIMEOUT_S = 5.0

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

# At most this many connections are listed one by one by connections() (snapshot() counts all).
MAX_LISTED_CONNECTIONS = 1000


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
        self.close_reason = close_reason(reason)
        self.close_key = key
        self.closing.set()


class Relay:
    """Serves ``/api/v1/ws``; mount ``WebSocketRoute("/api/v1/ws", relay.endpoint)``.

    ``status_provider()`` returns a JSON-able dict about the upstream (``state``,
    ``since``, ``retry_after_s``, ``breaker_state``, ``last_error`` ...); it is merged into
    every status frame. It must be cheap and must not await anything.

    ``allowed_origins`` lists the browser origins allowed besides the request's own host
    (see :func:`~backend_core.relay.policy.origin_allowed`); empty: the same host only.

    :meth:`snapshot` holds counts only, for public health and metrics output;
    :meth:`connections` lists each client (address, symbols, counters), for operators only.
    """

    def __init__(
        self,
        settings: Settings,
        hub: Hub,
        status_provider: Callable[[], dict[str, Any]],
        clock: Clock | None = None,
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
        self._clock: Clock = clock or SystemClock()
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
        # Connections subscribed to each symbol, kept as symbols are added and removed.
        self._subscribers: Counter[str] = Counter()

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
        """Counts only, safe for public output (DESIGN.md rule 9): no client address in it."""
        return {
            "enabled": self._settings.WEBSOCKET_ENABLED,
            "accepting": self.accepting,
            "max_connections": self.max_connections,
            "active": len(self._connections),
            "subscribed": sum(1 for conn in self._connections.values() if conn.symbols),
            "subscribers": {symbol: self._subscribers[symbol] for symbol in sorted(self._subscribers)},
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

    def connections(self, limit: int = MAX_LISTED_CONNECTIONS) -> list[dict[str, Any]]:
        """Each connection (at most ``limit``, oldest first): id, peer address, symbols and
        counters. Client addresses are personal data: show this to operators only."""
        now = self._clock.monotonic()
        wall = self._clock.wall()
        listed = []
        for conn in itertools.islice(self._connections.values(), max(0, limit)):
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
        return listed

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
            self._count_subscribers(conn.symbols, -1)
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
                # 1009 here: the ASGI server refused an oversize frame before buffering it.
                key = "message_too_big" if code == CLOSE_TOO_BIG else "client_closed"
                conn.request_close(code, str(message.get("reason") or ""), key)
                return
            now = self._clock.monotonic()
            conn.last_seen_mono = now
            conn.ping_outstanding_since = None
            conn.messages_in += 1
            text: str | None = message.get("text")
            data: bytes | None = message.get("bytes")
            size = frame_size(text, data)
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
        self._count_subscribers(set(request.symbols) - conn.symbols, +1)
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
        self._count_subscribers(removed, -1)
        conn.sub.set_symbols(conn.symbols)
        ack: dict[str, Any] = {"type": "unsubscribed", "symbols": removed, "subscribed": sorted(conn.symbols)}
        if request.id is not None:
            ack["id"] = request.id
        self._reply(conn, ack)

    def _reply(self, conn: _Connection, frame: Mapping[str, Any]) -> None:
        self._enqueue(conn, dumps_frame(frame))

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
        # The hot path of the relay: one pass per frame per client, so lookups are hoisted.
        sub = conn.sub
        assert sub is not None
        outbox = conn.outbox
        symbols = conn.symbols  # mutated in place by the reader, never replaced
        live_after = conn.live_after
        get_nowait = sub.get_nowait
        send = self._send
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
                    if not await self._send(conn, dumps_frame({"type": "dropped", "count": event.count})):
                        return
                    # A dropped event may have been a status change: resynchronise.
                    text = self._status_text(self._hub.status())
                else:
                    self._closed_by_hub(conn, event)
                    return
            if not await send(conn, text):
                return
            if is_tick:
                self._ticks_sent += 1

    async def _send_replay(self, conn: _Connection, replay: _Replay) -> bool:
        ticks = replay.ticks
        while ticks:
            tick = ticks.popleft()
            conn.replay_pending = len(ticks)
            if tick.symbol in conn.symbols:
                if not await self._send(conn, dumps_frame(tick_frame(tick, replay=True))):
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
        text = dumps_frame(tick_frame(tick))
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
            text = dumps_frame(status_frame(snapshot, provided, self._clock.wall()))
        except (TypeError, ValueError):
            logger.exception("relay status_provider returned something that is not JSON-able")
            text = dumps_frame(status_frame(snapshot, None, self._clock.wall()))
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

    def _count_subscribers(self, symbols: Iterable[str], change: int) -> None:
        counts = self._subscribers
        for symbol in symbols:
            count = counts[symbol] + change
            if count > 0:
                counts[symbol] = count
            else:
                del counts[symbol]

    def _count_close(self, key: str) -> None:
        self._closed_by[key] = self._closed_by.get(key, 0) + 1


def _peer(websocket: WebSocket) -> str:
    client = websocket.client
    if client is None:
        return "-"
    return f"{client.host}:{client.port}"
