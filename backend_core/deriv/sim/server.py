"""The simulator's server: a websockets shell around the pure market, sessions and fault plan.

A Deriv client cannot tell it from ``wss://ws.derivws.com/websockets/v3`` for the calls,
envelopes, errors and connection behaviour of ``shared/deriv-protocol.md`` sections 1-6,
implemented as section 7 recommends. Section numbers below refer to that document.

Wire behaviour
    * ``ws://<host>:<port>/websockets/v3?app_id=N``; a missing or invalid ``app_id`` is
      refused with HTTP 401 ``{"error":"InvalidAppID"}``, a blocked one with 403
      ``{"error":"AccessRestricted"}`` (section 1). permessage-deflate is on.
    * ``ping``, ``time``, ``ticks``, ``ticks_history`` (ticks and candles, with
      ``subscribe``), ``forget``, ``forget_all``, ``active_symbols``, ``authorize``
      (tokens from ``accepted_tokens``) and ``website_status`` (with ``subscribe``):
      :mod:`.session` decides every reply, :mod:`.market` holds the prices.
    * 120 s without a frame in either direction: the TCP connection is aborted without a
      close frame, so clients see 1006 (section 5.1).

Time
    The simulator keeps a simulated "now" (:class:`~.market.SimulatedTime`): it starts at
    the clock's wall time and runs ``time_scale`` times faster than the injected clock's
    monotonic time. Protocol durations (tick grid, 120 s idle timeout, 15 s processing
    timeout, 1 s rate window) are simulated seconds, so ``time_scale=10`` ticks ten times
    faster, with epochs still 1 s / 2 s apart, and times out idle connections after 12 s.
    Durations given to fault controls (``refuse_connections(5)``, ``delay_replies(0.5)``,
    ``deploy(close_after_s=1)``) are clock seconds, so tests reason in real time.

Fault controls (methods, and the control interface of :mod:`.control`)
    ``drop_all(code=None|int, reason)``, ``refuse_connections(seconds)`` (HTTP 503),
    ``blackhole_handshakes(enabled)`` (TCP accepted, HTTP request never answered),
    ``pause_feed(enabled)`` (no ticks and a gap in history, no disconnect),
    ``advance(ticks)`` (the market jumps ahead at once: ``ticks`` ticks of the fastest
    symbol, slower ones in proportion, all in history, none streamed; for an outage
    longer than one ``ticks_history`` reply while clients are away),
    ``ignore_pings(enabled)``, ``delay_replies(seconds)`` (at 15 simulated seconds or more
    the reply is a ``Timeout`` error, as the real dispatcher does), ``drop_replies(True |
    False | count)`` (requests vanish unanswered), ``inject_error(code, count, pages_only)``
    (codes ``RateLimit``, ``WrongResponse``, ``CallError``, ``Timeout``; ``pages_only``: only
    ``ticks_history`` requests without ``subscribe``), ``send_malformed_frame()``,
    ``deploy(close_after_s, code)`` (pushes ``site_status: "updating"`` with Deriv's
    message to ``website_status`` subscribers, then closes), ``restart(disconnect=True)``
    (all subscriptions invalidated, with or without disconnecting), ``set_site_status``,
    ``reset_faults()``. The switches live in one :class:`~.faults.FaultPlan`. Counters:
    :meth:`DerivSimulator.stats`.

Control interface
    With ``control_port`` (0: any free port), :mod:`.control`'s Starlette app is served
    by uvicorn on a loopback port of its own, at :attr:`DerivSimulator.control_url`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Final, Self
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request, Response
from websockets.protocol import State

from backend_core.clock import Clock, SystemClock
from backend_core.deriv.protocol import (
    APP_ID_PATTERN,
    PING_TIME_LIMIT,
    PING_TIME_WINDOW_S,
    PROCESSING_TIMEOUT_S,
    STREAM_TIMEOUT_S,
    TOKEN_PATTERN,
    DerivCode,
)
from backend_core.deriv.sim.control import ControlServer, Listening
from backend_core.deriv.sim.faults import DEPLOY_MESSAGE, SITE_STATUSES, FaultPlan, valid_close_code
from backend_core.deriv.sim.market import DEFAULT_SYMBOLS, MAX_JUMP_S, Market, SimulatedTime, SymbolSpec
from backend_core.deriv.sim.session import (
    CallRequest,
    CloseDirective,
    IdleDeadline,
    RateWindow,
    Session,
    SiteState,
)

logger = logging.getLogger(__name__)

# --- bounds of this simulator (DESIGN.md rule 5) -------------------------------------

#: Open WebSocket connections at once; the next handshake gets 503. Far above what the
#: app opens (one upstream link), low enough that a runaway test cannot exhaust memory.
MAX_CONNECTIONS: Final = 1000
#: TCP connections still in the opening handshake (slow or blackholed); beyond this
#: new sockets are aborted at once.
MAX_PENDING_HANDSHAKES: Final = 1000
#: Frames queued for one client. A client this far behind is too slow to keep up with
#: the feed; it is disconnected so it cannot hold memory or block the others.
OUTBOUND_QUEUE_FRAMES: Final = 1024
#: Requests per connection waiting out ``delay_replies``; beyond this they get
#: ``Timeout`` at once, like a saturated backend.
MAX_DELAYED_REQUESTS: Final = 256
#: Incoming message size. Requests of this API are small; this is the real server's
#: order of magnitude and keeps a hostile client from making us buffer megabytes.
MAX_REQUEST_BYTES: Final = 64 * 1024
#: Deploy closers running at once (each ends by itself; this caps what a loop of
#: deploy calls can pile up).
MAX_BACKGROUND_TASKS: Final = 1024
#: How long (clock seconds) ``stop()`` waits for polite closes before aborting sockets.
_STOP_CLOSE_TIMEOUT_S: Final = 2.0

#: permessage-deflate as websockets offers it by default (section 1: on), at zlib level 1:
#: a 5000-tick ``ticks_history`` page (~90 kB) compresses in a quarter of the default's
#: time to about the same size, and the simulator shares the client's CPU in tests.
DEFLATE: Final = ServerPerMessageDeflateFactory(
    server_max_window_bits=12, client_max_window_bits=12, compress_settings={"memLevel": 5, "level": 1}
)

#: What ``authorize`` accepts when no tokens are configured (a demo token, not a secret).
DEFAULT_ACCEPTED_TOKENS: Final = ("simulator-demo-token",)


def is_loopback_host(host: str) -> bool:
    """Whether binding ``host`` keeps the server local (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class SimulatorStats:
    """Counters for tests and the control interface."""

    connection_count: int
    connections_accepted_total: int
    handshake_attempts: int
    handshakes_refused: int
    requests_by_type: dict[str, int]
    subscriptions: int
    frames_sent_total: int
    slow_clients_dropped: int
    feed_paused: bool
    site_status: str
    simulated_now: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _SimConnection(ServerConnection):
    """A websockets server connection that tracks activity for the idle deadline.

    Every read and write restarts it (section 5.1: Mojo's stream timeout restarts on
    each successful read or write, handshake included).
    """

    simulator: ClassVar[DerivSimulator]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        sim = self.simulator
        self.idle = IdleDeadline(sim._idle_timeout_clock_s, sim._clock.monotonic())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.simulator._on_tcp_open(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.simulator._on_tcp_closed(self)

    def data_received(self, data: bytes) -> None:
        self.idle.touch(self.simulator._clock.monotonic())
        super().data_received(data)

    def send_data(self) -> None:
        self.idle.touch(self.simulator._clock.monotonic())
        super().send_data()

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        await self.simulator._await_request(self)
        await super().handshake(*args, **kwargs)


@dataclass(eq=False)
class _Client:
    """One open WebSocket connection and what the shell keeps for it."""

    connection: _SimConnection
    session: Session
    # Bounded: see OUTBOUND_QUEUE_FRAMES.
    outbound: asyncio.Queue[str | CloseDirective] = field(
        default_factory=lambda: asyncio.Queue(maxsize=OUTBOUND_QUEUE_FRAMES)
    )
    delayed: set[asyncio.Task[None]] = field(default_factory=set)


class DerivSimulator(Listening):
    """The simulator server. See the module docstring for behaviour and controls.

    ``clock`` drives every sleep and deadline; ``time_scale`` speeds simulated time up;
    ``accepted_tokens`` are the tokens ``authorize`` accepts (None: just
    :data:`DEFAULT_ACCEPTED_TOKENS`); ``symbols`` defaults to
    section 6's volatility indices; ``seed`` makes price paths reproducible;
    ``history_prefill_s`` is how much simulated history exists at start.

    ``host`` must be a loopback address unless ``allow_remote`` is True. ``control_port``
    serves the control interface (:mod:`.control`) on a loopback port of its own (0: any
    free port; None: no control interface).
    """

    _what = "simulator"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        clock: Clock | None = None,
        time_scale: float = 1.0,
        accepted_tokens: Iterable[str] | None = None,
        symbols: Iterable[SymbolSpec] = DEFAULT_SYMBOLS,
        seed: int | str | None = None,
        history_prefill_s: int = 3600,
        blocked_app_ids: Iterable[str] = (),
        max_connections: int = MAX_CONNECTIONS,
        allow_remote: bool = False,
        control_port: int | None = None,
    ) -> None:
        if not allow_remote and not is_loopback_host(host):
            raise ValueError(f"refusing to bind non-loopback host {host!r} without allow_remote=True")
        if control_port is not None and not 0 <= control_port <= 65535:
            raise ValueError(f"invalid control port {control_port}")
        self.host = host
        self._requested_port = port
        self._clock: Clock = clock if clock is not None else SystemClock()
        self._time = SimulatedTime(self._clock, time_scale)
        self.time_scale = time_scale
        self.accepted_tokens = tuple(DEFAULT_ACCEPTED_TOKENS if accepted_tokens is None else accepted_tokens)
        for token in self.accepted_tokens:
            if not TOKEN_PATTERN.match(token):
                raise ValueError("accepted tokens must be 1 to 128 letters, digits, '_' or '-'")
        self._symbols = tuple(symbols)
        self._seed = seed
        self._prefill_s = history_prefill_s
        self.blocked_app_ids = frozenset(blocked_app_ids)
        self.max_connections = max_connections
        self._idle_timeout_clock_s = self._time.to_clock_seconds(STREAM_TIMEOUT_S)
        self.market = Market(self._symbols, start_epoch=int(self._time.now()), seed=seed, prefill_s=history_prefill_s)
        self.site = SiteState()

        self._server: Server | None = None
        self._port: int | None = None
        self._feed_task: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[Any]] = set()
        self._clients: set[_Client] = set()
        self._tcp: set[_SimConnection] = set()
        self._stopping = False
        self._unblackholed = asyncio.Event()
        self._unblackholed.set()
        self.faults = FaultPlan()
        # The control interface binds loopback even when the simulator serves remote peers.
        control_host = host if is_loopback_host(host) else "127.0.0.1"
        self._control = ControlServer(self, control_host, control_port) if control_port is not None else None

        # Counters.
        self._accepted_total = 0
        self._handshake_attempts = 0
        self._handshakes_refused = 0
        self._requests: Counter[str] = Counter()  # keys: ACTIONS plus four labels, so bounded
        self._frames_sent = 0
        self._slow_dropped = 0

    # -- lifecycle ------------------------------------------------------------------

    async def start(self) -> None:
        """Bind, start the feed, and accept connections."""
        if self._server is not None:
            return
        self._stopping = False
        self._sync_blackhole()  # stop() released held handshakes; a blackhole still set holds again
        self._server = await serve(
            self._serve_client,
            self.host,
            self._requested_port,
            process_request=self._process_request,
            create_connection=_bind_connection_class(self),
            open_timeout=None,  # bounded by the idle deadline instead (_await_request)
            ping_interval=None,  # the real server sends no pings (section 5.1)
            close_timeout=_STOP_CLOSE_TIMEOUT_S,
            max_size=MAX_REQUEST_BYTES,
            server_header=None,
            extensions=[DEFLATE],
        )
        self._port = self._server.sockets[0].getsockname()[1]
        self._feed_task = asyncio.create_task(self._feed_loop(), name="deriv-simulator-feed")
        if self._control is not None:
            try:
                await self._control.start()
            except BaseException:
                await self.stop()
                raise
            logger.info("Deriv simulator control interface on %s", self._control.url)
        logger.info("Deriv simulator listening on %s (time_scale=%s)", self.url, self.time_scale)

    async def stop(self) -> None:
        """Close every connection, stop every task; idempotent."""
        if self._server is None:
            return
        self._stopping = True
        if self._control is not None:
            await self._control.stop()  # no fault changes while closing
        self._unblackholed.set()  # release held handshakes; they get 503
        server, self._server = self._server, None
        tasks = [t for t in (self._feed_task, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._feed_task = None
        self._background.clear()
        for conn in list(self._tcp):
            # Sockets still waiting for their HTTP request would hold the close; those
            # with a request are answered 503.
            if conn.protocol.state is State.CONNECTING and conn.request is None:
                conn.transport.abort()
        server.close(close_connections=True)
        try:
            async with asyncio.timeout(_STOP_CLOSE_TIMEOUT_S * 2):
                await server.wait_closed()
        except TimeoutError:
            for conn in list(self._tcp):
                conn.transport.abort()
            await server.wait_closed()
        logger.info("Deriv simulator stopped")

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        """``ws://host:port/websockets/v3`` (add ``?app_id=N``)."""
        return self._url("ws", "/websockets/v3")

    @property
    def control_url(self) -> str:
        """``http://host:port/control`` of the control interface (add ``/<action>``)."""
        if self._control is None:
            raise RuntimeError("the simulator was made without a control port")
        return self._control.url

    def now(self) -> float:
        """Simulated Unix seconds."""
        return self._time.now()

    # -- counters -------------------------------------------------------------------

    def stats(self) -> SimulatorStats:
        return SimulatorStats(
            connection_count=len(self._clients),
            connections_accepted_total=self._accepted_total,
            handshake_attempts=self._handshake_attempts,
            handshakes_refused=self._handshakes_refused,
            requests_by_type=dict(self._requests),
            subscriptions=sum(c.session.subscription_count for c in self._clients),
            frames_sent_total=self._frames_sent,
            slow_clients_dropped=self._slow_dropped,
            feed_paused=self.faults.feed_paused,
            site_status=self.site.status,
            simulated_now=self._time.now(),
        )

    # -- fault controls ---------------------------------------------------------------

    async def drop_all(self, code: int | None = None, reason: str = "") -> int:
        """Close every WebSocket connection: with ``code``, or abruptly (no close frame) if None."""
        if code is not None and not valid_close_code(code):
            raise ValueError(f"{code} cannot be sent in a close frame")
        clients = list(self._clients)
        if code is None:
            for client in clients:
                client.connection.transport.abort()
        else:
            await asyncio.gather(*(c.connection.close(code, reason) for c in clients), return_exceptions=True)
        return len(clients)

    def refuse_connections(self, seconds: float) -> None:
        """Answer handshakes with HTTP 503 for ``seconds`` (clock seconds); 0 ends it."""
        self.faults.refuse_for(seconds, self._clock.monotonic())

    def blackhole_handshakes(self, enabled: bool) -> None:
        """Accept TCP but never answer the HTTP upgrade while enabled (held until disabled or stop)."""
        self.faults.blackholed = enabled
        self._sync_blackhole()

    def pause_feed(self, enabled: bool) -> None:
        """No ticks at all while enabled (and a gap in history); connections stay open."""
        self.faults.feed_paused = enabled

    def advance(self, ticks: int) -> dict[str, Any]:
        """Jump simulated time and the market ahead by ``ticks`` ticks of the fastest symbol.

        Every tick of the jump is in history (``ticks_history`` serves it exactly); none is
        streamed, so subscribers still connected see their stream resume after it. Use it
        while clients are disconnected (e.g. ``refuse_connections`` then ``drop_all``).
        """
        seconds = ticks * min(spec.interval_s for spec in self._symbols)
        if not 1 <= seconds <= MAX_JUMP_S:
            raise ValueError(f"ticks must make a jump of 1 to {MAX_JUMP_S} simulated seconds")
        before = self.market.last_epoch
        self._time.jump(seconds)
        made = self.market.jump(seconds)
        return {"from_epoch": before, "to_epoch": self.market.last_epoch, "ticks": made}

    def ignore_pings(self, enabled: bool) -> None:
        """Leave ``ping`` requests unanswered while enabled."""
        self.faults.ignore_pings = enabled

    def delay_replies(self, seconds: float) -> None:
        """Answer each request ``seconds`` (clock) late; at 15 simulated s or more the answer is ``Timeout``."""
        self.faults.set_delay(seconds)

    def drop_replies(self, enabled_or_count: bool | int) -> None:
        """Drop requests unanswered: all while True, none when False, or the next ``count``."""
        self.faults.set_drop_replies(enabled_or_count)

    def inject_error(self, code: str = DerivCode.RATE_LIMIT, count: int = 1, pages_only: bool = False) -> None:
        """Answer the next ``count`` requests (any connection) with error ``code``; with
        ``pages_only``, the next ``count`` history pages (``ticks_history`` without ``subscribe``)."""
        self.faults.set_inject(code, count, pages_only)

    async def send_malformed_frame(self) -> int:
        """Send a text frame that is not JSON to every client."""
        clients = list(self._clients)
        for client in clients:
            self._enqueue(client, '{"msg_type": "tick", "tick": {')
        return len(clients)

    async def set_site_status(self, site_status: str, message: str | None = None) -> None:
        """Change ``website_status`` and push it to subscribers."""
        if site_status not in SITE_STATUSES:
            raise ValueError("site_status must be up, down or updating")
        self.site.status = site_status
        self.site.message = message
        for client in list(self._clients):
            for frame in client.session.on_site_status():
                self._enqueue(client, frame)

    async def deploy(self, close_after_s: float = 1.0, code: int | None = 1001) -> None:
        """Push ``updating`` with Deriv's message, then after ``close_after_s`` close everything.

        Returns once the notice is queued; the close happens in the background. Sites
        status is back to ``up`` for connections made after it.
        """
        if code is not None and not valid_close_code(code):
            raise ValueError(f"{code} cannot be sent in a close frame")
        await self.set_site_status("updating", DEPLOY_MESSAGE)
        self._spawn(self._finish_deploy(close_after_s, code))

    async def _finish_deploy(self, close_after_s: float, code: int | None) -> None:
        await self._clock.sleep(close_after_s)
        await self.drop_all(code, "deploy" if code is not None else "")
        self.site.status, self.site.message = "up", None

    async def restart(self, disconnect: bool = True, code: int | None = 1012) -> None:
        """A backend restart: every subscription id becomes invalid.

        With ``disconnect`` the connections are closed (``code``, None aborts); without,
        streams just stop and ``forget`` of the old ids returns 0 (section 5.3).
        """
        if disconnect:
            await self.drop_all(code, "service restart" if code is not None else "")
            return
        for client in list(self._clients):
            client.session.forget_everything()

    def reset_faults(self) -> None:
        """Clear every fault switch (not the counters)."""
        self.faults.reset()
        self._sync_blackhole()

    def _sync_blackhole(self) -> None:
        if self.faults.blackholed and not self._stopping:
            self._unblackholed.clear()
        else:
            self._unblackholed.set()

    # -- HTTP level -------------------------------------------------------------------

    def _on_tcp_open(self, conn: _SimConnection) -> None:
        if self._stopping or len(self._tcp) >= self.max_connections + MAX_PENDING_HANDSHAKES:
            conn.transport.abort()
            return
        self._tcp.add(conn)

    def _on_tcp_closed(self, conn: _SimConnection) -> None:
        self._tcp.discard(conn)

    async def _await_request(self, conn: _SimConnection) -> None:
        """Wait for the HTTP request line, bounded by the idle deadline (section 5.1)."""
        waiters: list[asyncio.Future[None]] = [conn.request_rcvd, conn.connection_lost_waiter]
        while not any(w.done() for w in waiters):
            remaining = conn.idle.remaining(self._clock.monotonic())
            if remaining <= 0:
                raise TimeoutError("no HTTP request before the idle timeout")
            sleeper = asyncio.ensure_future(self._clock.sleep(remaining))
            try:
                await asyncio.wait([sleeper, *waiters], return_when=asyncio.FIRST_COMPLETED)
            finally:
                sleeper.cancel()
                await asyncio.gather(sleeper, return_exceptions=True)

    async def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        self._handshake_attempts += 1
        if not self._unblackholed.is_set():
            # Hold the client without answering until the blackhole ends, the client
            # gives up, or the simulator stops.
            release: asyncio.Future[Any] = asyncio.ensure_future(self._unblackholed.wait())
            waiters: list[asyncio.Future[Any]] = [release, connection.connection_lost_waiter]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                release.cancel()
                await asyncio.gather(release, return_exceptions=True)
        if self._stopping:
            return self._refuse(connection, 503, "Service Unavailable")
        if self.faults.refusing(self._clock.monotonic()):
            return self._refuse(connection, 503, "Service Unavailable")
        target = urlsplit(request.path)
        if target.path != "/websockets/v3":
            return self._refuse(connection, 404, "Not Found")
        app_ids = parse_qs(target.query).get("app_id", [])
        app_id = app_ids[0] if len(app_ids) == 1 else ""
        if not APP_ID_PATTERN.match(app_id):
            return self._refuse(connection, 401, f'{{"error":"{DerivCode.INVALID_APP_ID}"}}', json_body=True)
        if app_id in self.blocked_app_ids:
            return self._refuse(connection, 403, f'{{"error":"{DerivCode.ACCESS_RESTRICTED}"}}', json_body=True)
        if len(self._clients) >= self.max_connections:
            return self._refuse(connection, 503, "Service Unavailable")
        return None

    def _refuse(self, connection: ServerConnection, status: int, body: str, *, json_body: bool = False) -> Response:
        self._handshakes_refused += 1
        response = connection.respond(status, body)
        if json_body:
            del response.headers["Content-Type"]
            response.headers["Content-Type"] = "application/json"
        return response

    # -- WebSocket level --------------------------------------------------------------

    async def _serve_client(self, connection: ServerConnection) -> None:
        assert isinstance(connection, _SimConnection)
        session = Session(
            self.market,
            self.site,
            accepted_tokens=self.accepted_tokens,
            rate_window=RateWindow(PING_TIME_LIMIT, self._time.to_clock_seconds(PING_TIME_WINDOW_S)),
        )
        client = _Client(connection, session)
        self._clients.add(client)
        self._accepted_total += 1
        writer = asyncio.create_task(self._write_loop(client), name="deriv-simulator-writer")
        idle = asyncio.create_task(self._idle_loop(client), name="deriv-simulator-idle")
        try:
            async for raw in connection:
                self._on_frame(client, raw)
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(client)
            tasks = [writer, idle, *client.delayed]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _on_frame(self, client: _Client, raw: str | bytes) -> None:
        # The rate window runs on the clock (scaled); everything else on simulated time.
        received = client.session.receive(raw, self._clock.monotonic())
        self._requests[received.label] += 1
        for frame in received.frames:
            self._enqueue(client, frame)
        if received.close is not None:
            self._enqueue(client, received.close)
            return
        request = received.request
        if request is None:
            return
        page = request.action == "ticks_history" and request.body.get("subscribe") != 1
        fate = self.faults.fate(request.action, page)
        if fate.kind == "drop":
            return
        if fate.kind == "error":
            self._enqueue(client, client.session.error_reply(request, fate.error_code))
            return
        if fate.kind == "delay":
            if len(client.delayed) >= MAX_DELAYED_REQUESTS:
                self._enqueue(client, client.session.error_reply(request, DerivCode.TIMEOUT))
                return
            task = asyncio.create_task(self._delayed_reply(client, request, fate.delay_s))
            client.delayed.add(task)
            task.add_done_callback(client.delayed.discard)
            return
        for frame in client.session.execute(request, self._time.now()):
            self._enqueue(client, frame)

    async def _delayed_reply(self, client: _Client, request: CallRequest, delay_s: float) -> None:
        timeout_s = self._time.to_clock_seconds(PROCESSING_TIMEOUT_S)
        if delay_s >= timeout_s:
            await self._clock.sleep(timeout_s)
            self._enqueue(client, client.session.error_reply(request, DerivCode.TIMEOUT))
            return
        await self._clock.sleep(delay_s)
        for frame in client.session.execute(request, self._time.now()):
            self._enqueue(client, frame)

    def _enqueue(self, client: _Client, item: str | CloseDirective) -> None:
        try:
            client.outbound.put_nowait(item)
        except asyncio.QueueFull:
            if client.connection.transport.is_closing():
                return  # already dropped: once per client, not once per frame (the feed catches up in bursts)
            # A client this far behind would make us buffer without limit: drop it.
            self._slow_dropped += 1
            logger.warning("simulator client too slow (%d frames queued); dropping it", OUTBOUND_QUEUE_FRAMES)
            client.connection.transport.abort()

    async def _write_loop(self, client: _Client) -> None:
        connection = client.connection
        try:
            while True:
                item = await client.outbound.get()
                if isinstance(item, CloseDirective):
                    if item.code is None:
                        connection.transport.abort()
                    else:
                        await connection.close(item.code, item.reason)
                    return
                await connection.send(item)
                self._frames_sent += 1
        except ConnectionClosed:
            return

    async def _idle_loop(self, client: _Client) -> None:
        idle = client.connection.idle
        while True:
            remaining = idle.remaining(self._clock.monotonic())
            if remaining <= 0:
                # Section 5.1: the socket is closed without a close frame (clients see 1006).
                client.connection.transport.abort()
                return
            await self._clock.sleep(remaining)

    async def _feed_loop(self) -> None:
        while True:
            now = self._time.now()
            due = self.market.next_due_epoch()
            if now < due:
                await self._clock.sleep(self._time.to_clock_seconds(due - now))
                continue
            if self.faults.feed_paused:
                self.market.skip_to(int(now))
                continue
            for tick in self.market.advance_to(int(now)):
                for client in list(self._clients):
                    for frame in client.session.on_tick(tick):
                        self._enqueue(client, frame)

    def _spawn(self, coro: Any) -> None:
        if len(self._background) >= MAX_BACKGROUND_TASKS:
            coro.close()
            raise RuntimeError(f"more than {MAX_BACKGROUND_TASKS} simulator actions in progress")
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _bind_connection_class(simulator: DerivSimulator) -> type[_SimConnection]:
    class _BoundConnection(_SimConnection):
        pass

    _BoundConnection.simulator = simulator
    return _BoundConnection
