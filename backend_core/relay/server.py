"""The I/O shell of ``/api/v1/ws``: fan ticks and upstream status out to API clients.

The decisions live beside it, pure and unit-tested without sockets: the client protocol
(:mod:`backend_core.relay.protocol`, mirroring ``docs/websocket-api.md``), the policies
(:mod:`backend_core.relay.policy`: rate limit, origin, heartbeat, send watch) and resume
planning (:mod:`backend_core.relay.resume`). :class:`Relay` only moves data between a
Starlette :class:`~starlette.websockets.WebSocket` and a hub
:class:`~backend_core.hub.Subscription`, and calls them.

Per connection there is one coroutine and no shared lock: the endpoint, which admits the
client, reads and validates each client frame (answering through the connection's
bounded outbox) until something decides the connection is over (a close requested
elsewhere cancels it out of its receive), then cleans up and sends the close frame.

Sending needs no task per connection. Each connection's hub subscription queues its
events (bounded, drop-oldest: the hub's policy); one pump task per relay wakes once per
publish and flushes the connections it concerns through
:class:`~backend_core.relay.sender.Sender`, which writes without an await (one write per
flush where the server offers it) and gives a connection a task only while a send of its
must wait.

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
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from starlette.responses import PlainTextResponse
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from backend_core.clock import Clock, SystemClock, iso_utc
from backend_core.config import Settings
from backend_core.events import Tick
from backend_core.hub import Closed, Hub
from backend_core.relay.connection import Connection, Outgoing, Replay
from backend_core.relay.eager import SEND_NOW_EXTENSION, WriteReady, WriteTexts
from backend_core.relay.frames import FrameCache
from backend_core.relay.policy import (
    RATE_BURST,
    RATE_PER_S,
    Heartbeat,
    MessageRateLimiter,
    RateVerdict,
    heartbeat_step,
    origin_allowed,
)
from backend_core.relay.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    CLOSE_TOO_BIG,
    CLOSE_TRY_AGAIN_LATER,
    MAX_FRAME_BYTES,
    PING_FRAME,
    ClientError,
    PingRequest,
    SubscribeRequest,
    UnsubscribeRequest,
    dumps_frame,
    error_frame,
    frame_size,
    parse_client_message,
)
from backend_core.relay.resume import plan_resume
from backend_core.relay.sender import Sender

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

# At most this many connections are listed one by one by connections() (snapshot() counts all).
MAX_LISTED_CONNECTIONS = 1000

# Distinct symbol sets shared between connections; past this many, new sets are not shared
# (clients normally pick from a few: all symbols, one, a page's handful).
MAX_SHARED_SYMBOL_SETS = 1024

# The pump lets other tasks run after flushing this many connections in one go, so that a
# burst to thousands of clients does not hold the event loop for the whole of it.
PUMP_YIELD_EVERY = 256


# --- the I/O shell -------------------------------------------------------------------------


class Relay:
    """Serves ``/api/v1/ws``; mount ``WebSocketRoute("/api/v1/ws", relay.endpoint)``.

    ``status_provider()`` returns a JSON-able dict about the upstream (``state``,
    ``since``, ``retry_after_s``, ``breaker_state``, ``last_error`` ...); it is merged into
    every status frame. It must be cheap and must not await anything.

    ``allowed_origins`` lists the browser origins allowed besides the request's own host
    (see :func:`~backend_core.relay.policy.origin_allowed`); empty: the same host only.

    :meth:`snapshot` holds counts only, for public health and metrics output;
    :meth:`connections` lists each client (address, symbols, counters), for operators only.

    :attr:`endpoint` is a plain ASGI app (Starlette mounts it as it is), so frames go to the
    server's ``send`` with no wrapper in between.
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
        self._connections: dict[str, Connection] = {}
        # Set once the last connection's handler finishes, while close_all() waits for that.
        self._drained: asyncio.Future[None] | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self.endpoint = _Endpoint(self)

        self._frames = FrameCache(self._clock, status_provider)
        self._sender = Sender(hub, self._frames)

        self._accepted_total = 0
        self._refused: dict[str, int] = {"full": 0, "disabled": 0, "origin": 0, "shutting_down": 0}
        self._closed_by: dict[str, int] = {}
        # Connections subscribed to each symbol, kept as symbols are added and removed.
        # Subscribed connections grouped by their symbol set (one entry per connection, not one
        # per symbol it takes: 50 set entries per client cost 3 KiB).
        self._by_set: dict[frozenset[str], set[Connection]] = {}
        self._symbol_sets: dict[frozenset[str], frozenset[str]] = {}

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
        if self._connections:
            drained = self._drained = asyncio.get_running_loop().create_future()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.close_timeout_s + 1.0):
                    await drained
            self._drained = None
        for task in (self._supervisor, self._pump):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._supervisor = self._pump = None

    def snapshot(self) -> dict[str, Any]:
        """Counts only, safe for public output (DESIGN.md rule 9): no client address in it."""
        return {
            "enabled": self._settings.WEBSOCKET_ENABLED,
            "accepting": self.accepting,
            "max_connections": self.max_connections,
            "active": len(self._connections),
            "subscribed": sum(1 for conn in self._connections.values() if conn.symbols),
            "subscribers": self._subscribers(),
            "totals": {
                "accepted": self._accepted_total,
                "refused_full": self._refused["full"],
                "refused_disabled": self._refused["disabled"],
                "refused_origin": self._refused["origin"],
                "refused_shutting_down": self._refused["shutting_down"],
                "ticks_sent": self._sender.ticks_sent,
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

    async def _handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI WebSocket handler of ``/api/v1/ws`` (mounted as :attr:`endpoint`)."""
        websocket = WebSocket(scope, receive=receive, send=send)
        offered = (scope.get("extensions") or {}).get(SEND_NOW_EXTENSION)
        writer: tuple[WriteReady, WriteTexts] | None = (offered["ready"], offered["write"]) if offered else None
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
        conn = Connection(
            f"c{next(self._ids)}", websocket, send, writer, peer, origin, now, self._clock.wall(), limiter
        )
        self._connections[conn.id] = conn
        try:
            await self._serve(conn)
        finally:
            self._connections.pop(conn.id, None)
            self._regroup(conn, conn.symbols, frozenset())
            drained = self._drained
            if not self._connections and drained is not None and not drained.done():
                drained.set_result(None)

    # --- per connection ----------------------------------------------------------------------

    async def _serve(self, conn: Connection) -> None:
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
        self._ensure_tasks()
        self._enqueue(conn, self._frames.status(self._hub.status()))
        logger.info(
            "relay open id=%s peer=%s origin=%r active=%d",
            conn.id,
            conn.peer,
            (conn.origin or "-")[:100],  # client-supplied: quoted and cut, never raw
            len(self._connections),
        )
        # This coroutine is the reader too (no task of its own per connection): a close
        # requested elsewhere cancels it out of its receive (Connection.request_close).
        task = conn.task = asyncio.current_task()
        try:
            if not conn.closing:
                await self._read_loop(conn)
        except asyncio.CancelledError:
            # Only the relay's own cancel (a close requested) is absorbed; the server's is not.
            if not conn.cancelled_for_close or task is None or task.uncancel() > 0:
                conn.request_close(CLOSE_GOING_AWAY, "server shutting down", "server_shutdown")
                raise
        except Exception:
            logger.exception("relay connection crashed id=%s peer=%s in=reader", conn.id, conn.peer)
            conn.request_close(CLOSE_INTERNAL_ERROR, "internal error", "internal_error")
        finally:
            conn.task = None
            flusher = conn.flusher
            if flusher is not None:
                flusher.cancel()
                await asyncio.gather(flusher, return_exceptions=True)
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

    async def _send_close(self, conn: Connection) -> None:
        websocket = conn.websocket
        if conn.peer_closed or websocket.application_state != WebSocketState.CONNECTED:
            return
        # Best effort: a client that does not read may never take the close frame.
        with contextlib.suppress(Exception):
            async with asyncio.timeout(self.close_timeout_s):
                await websocket.close(conn.close_code, conn.close_reason)

    async def _read_loop(self, conn: Connection) -> None:
        receive = conn.websocket.receive
        while not conn.closing:  # closed by what this loop itself did (a reply, a flush)
            try:
                message = await receive()
            except (WebSocketDisconnect, OSError, RuntimeError):
                conn.peer_closed = True
                conn.request_close(1006, "connection lost", "connection_lost")
                return
            if not self._on_message(conn, message):
                return
            del message  # nothing of it stays alive while the loop waits for the next one

    def _on_message(self, conn: Connection, message: Mapping[str, Any]) -> bool:
        """Handle one ASGI message from the client; False when the connection is over."""
        max_bytes = self._max_frame_bytes
        if message["type"] == "websocket.disconnect":
            conn.peer_closed = True
            code = int(message.get("code") or 1005)
            # 1009 here: the ASGI server refused an oversize frame before buffering it.
            key = "message_too_big" if code == CLOSE_TOO_BIG else "client_closed"
            conn.request_close(code, str(message.get("reason") or ""), key)
            return False
        now = self._clock.monotonic()
        conn.last_seen_mono = now
        conn.ping_outstanding_since = None
        conn.messages_in += 1
        text: str | None = message.get("text")
        data: bytes | None = message.get("bytes")
        size = frame_size(text, data)
        if size > max_bytes:
            conn.request_close(CLOSE_TOO_BIG, f"message too big: {size} bytes > {max_bytes}", "message_too_big")
            return False
        verdict = conn.limiter.check(now)
        if verdict is RateVerdict.CLOSE:
            conn.request_close(CLOSE_POLICY_VIOLATION, "rate limit exceeded", "rate_limited")
            return False
        if verdict is RateVerdict.REJECT:
            limit = f"{self._rate_per_s:g} messages/s, burst {self._rate_burst}"
            self._reply(conn, error_frame("rate_limited", f"too many messages; the limit is {limit}"))
            return True
        if text is None:
            self._reply(conn, error_frame("invalid_message", "binary frames are not accepted; send JSON text"))
            return True
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
        return True

    def _subscribe(self, conn: Connection, request: SubscribeRequest) -> None:
        assert conn.sub is not None
        if request.resume and conn.replay_pending:
            self._reply(
                conn,
                error_frame("resume_busy", "an earlier replay is still being sent; resume again after it", request.id),
            )
            return
        old = conn.symbols
        conn.symbols = self._intern(old.union(request.symbols))
        self._regroup(conn, old, conn.symbols)
        if request.batch is not None:
            conn.batch = request.batch
        # Subscribe first, then read the ring: nothing can be published in between (no
        # await), and live ticks already covered by the replay are skipped by live_after.
        conn.sub.set_symbols(conn.symbols)
        ack: dict[str, Any] = {"type": "subscribed", "symbols": sorted(conn.symbols)}
        if request.id is not None:
            ack["id"] = request.id
        if conn.batch:
            ack["batch"] = True
        plan = plan_resume(request.resume, self._hub) if request.resume else None
        if plan is not None:
            ack["resume"] = plan.report
            for symbol, epoch in plan.live_after.items():
                conn.live_after[symbol] = max(epoch, conn.live_after.get(symbol, epoch))
        self._reply(conn, ack)
        if plan is not None and plan.replay:
            conn.replay_pending = len(plan.replay)
            self._enqueue(conn, Replay(deque(plan.replay)))

    def _unsubscribe(self, conn: Connection, request: UnsubscribeRequest) -> None:
        assert conn.sub is not None
        removed = sorted(conn.symbols if request.symbols is None else conn.symbols.intersection(request.symbols))
        old = conn.symbols
        conn.symbols = self._intern(old.difference(removed))
        self._regroup(conn, old, conn.symbols)
        conn.sub.set_symbols(conn.symbols)
        ack: dict[str, Any] = {"type": "unsubscribed", "symbols": removed, "subscribed": sorted(conn.symbols)}
        if request.id is not None:
            ack["id"] = request.id
        self._reply(conn, ack)

    def _reply(self, conn: Connection, frame: Mapping[str, Any]) -> None:
        self._enqueue(conn, dumps_frame(frame))

    def _enqueue(self, conn: Connection, item: Outgoing) -> None:
        if len(conn.outbox) >= MAX_OUTBOX_FRAMES:
            conn.request_close(
                CLOSE_POLICY_VIOLATION, f"slow consumer: {MAX_OUTBOX_FRAMES} replies unread", "slow_consumer"
            )
            return
        conn.outbox.append(item)
        self._sender.flush(conn)

    # --- sending ----------------------------------------------------------------------------

    async def _pump_loop(self) -> None:
        """Wake once per publish; flush the connections the published events concern."""
        while True:
            sub = self._hub.subscribe(None, name="relay")
            try:
                while True:
                    event = sub.get_nowait()
                    if event is None:
                        await sub.wait()
                        continue
                    everyone = False
                    symbols: set[str] = set()
                    while event is not None:
                        if type(event) is Tick:
                            symbols.add(event.symbol)
                        else:
                            everyone = True  # status, a drop marker, or the hub closing
                            if isinstance(event, Closed):
                                break
                        event = sub.get_nowait()
                    await self._flush_many(symbols, everyone)
                    if isinstance(event, Closed):
                        break
            finally:
                sub.close("relay pump stopped")
            if not (event.slow if isinstance(event, Closed) else False):
                return  # the hub closed; a slow pump (a stalled loop) subscribes again

    async def _flush_many(self, symbols: set[str], everyone: bool) -> None:
        if everyone:
            targets: Iterable[Connection] = list(self._connections.values())
        else:
            # Groups are disjoint (a connection has one symbol set): no connection twice.
            groups = [conns for key, conns in self._by_set.items() if not key.isdisjoint(symbols)]
            targets = list(groups[0]) if len(groups) == 1 else list(itertools.chain.from_iterable(groups))
        flush = self._sender.flush
        for done, conn in enumerate(targets, 1):
            try:
                flush(conn)
            except Exception:
                logger.exception("relay flush failed id=%s peer=%s", conn.id, conn.peer)
                conn.request_close(CLOSE_INTERNAL_ERROR, "internal error", "internal_error")
            if done % PUMP_YIELD_EVERY == 0:
                await asyncio.sleep(0)

    # --- supervisor ---------------------------------------------------------------------------

    def _ensure_tasks(self) -> None:
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.create_task(self._supervise(), name="relay-supervisor")
        if self._pump is None or self._pump.done():
            self._pump = asyncio.create_task(self._pump_loop(), name="relay-pump")

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

    def _check(self, conn: Connection, now: float) -> None:
        if conn.closing or conn.sub is None:
            return
        pending_s = conn.send_watch.observe(now, conn.stalled is not None, conn.messages_out)
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

    def _intern(self, symbols: frozenset[str]) -> frozenset[str]:
        """One shared object per distinct symbol set (the hub keeps the same one): thousands
        of clients on the same 50 symbols need one set, not thousands of copies."""
        shared = self._symbol_sets.get(symbols)
        if shared is not None:
            return shared
        if len(self._symbol_sets) >= MAX_SHARED_SYMBOL_SETS:
            return symbols
        self._symbol_sets[symbols] = symbols
        return symbols

    def _regroup(self, conn: Connection, old: frozenset[str], new: frozenset[str]) -> None:
        """Move ``conn`` from the group of connections subscribed to ``old`` to ``new``'s."""
        if old == new:
            return
        by_set = self._by_set
        if old:
            group = by_set.get(old)
            if group is not None:
                group.discard(conn)
                if not group:
                    del by_set[old]
        if new:
            by_set.setdefault(new, set()).add(conn)

    def _subscribers(self) -> dict[str, int]:
        """Connections subscribed to each symbol."""
        counts: dict[str, int] = {}
        for symbols, conns in self._by_set.items():
            for symbol in symbols:
                counts[symbol] = counts.get(symbol, 0) + len(conns)
        return dict(sorted(counts.items()))

    def _count_close(self, key: str) -> None:
        self._closed_by[key] = self._closed_by.get(key, 0) + 1


def _peer(websocket: WebSocket) -> str:
    client = websocket.client
    if client is None:
        return "-"
    return f"{client.host}:{client.port}"


class _Endpoint:
    """The relay as a plain ASGI app: Starlette wraps functions and methods in a WebSocket
    session (whose ``send`` wrapper would cost a coroutine per frame), not other callables."""

    __slots__ = ("_relay",)

    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    def __call__(self, scope: Scope, receive: Receive, send: Send) -> Awaitable[None]:
        # Not a coroutine of its own: one frame less held per connection.
        return self._relay._handle(scope, receive, send)
