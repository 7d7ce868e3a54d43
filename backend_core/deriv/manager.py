"""DerivManager: the one upstream WebSocket of the process, kept healthy by itself.

What it does, and which complaint about the official clients each part answers:

* **Connect timeout** (``WEBSOCKET_CONNECTION_TIMEOUT``) covers TCP, TLS and the
  handshake, so a server that accepts TCP and never answers cannot hang it.
* **Heartbeat**: a JSON ``ping`` every ``DERIV_PING_INTERVAL`` (Deriv closes links idle
  for 120 s and advises 30 s, deriv-protocol.md 5.1). No pong within
  ``WEBSOCKET_CONNECTION_TIMEOUT`` means the link is dead (a half-open TCP link gives
  no other sign): the transport is aborted and the manager reconnects. Detection takes
  at most interval + deadline.
* **Reconnect** with tenacity: exponential backoff with full jitter, capped, at most
  ``WEBSOCKET_MAX_RETRY_ATTEMPTS`` attempts per cycle; every attempt holds a permit of
  the "websocket" circuit breaker, so repeated failure opens it and attempts stop until
  its recovery timeout, then one half-open probe. It never gives up for good (the JS
  client reconnects in a tight loop; the Python client not at all).
* **Requests** are matched by ``req_id`` with a per-request timeout, in a bounded pending
  map; when the link drops every request in flight fails at once with
  :class:`~backend_core.errors.ConnectionLost` (the JS client leaves them unsettled).
* **Subscriptions are desired state** (``DERIV_SYMBOLS``): after every connect it
  re-authorizes (when a token is set) and re-subscribes everything. InvalidSymbol marks
  the symbol failed with the reason and is not retried in a loop; MarketIsClosed is
  retried on a slow timer; RateLimit backs off.
* **No gaps, no duplicates**: after a reconnect a symbol that has published before is
  re-subscribed with ``ticks_history`` from its last published epoch with
  ``subscribe=1``, which answers the missed ticks and then streams live ones on the same
  subscription (3.4). The history is published (marked ``backfill``) from the read loop
  before any later frame is read, so ticks leave in epoch order; a sequencer drops any
  epoch at or below the last one published, so each tick leaves exactly once. One reply
  holds at most 5000 ticks (83 min of a 1-second symbol): after a longer outage the
  first tick published carries ``gap_from`` (the last epoch before the gap), so the gap
  is announced, never silent (:func:`backfill_gap`), and counted.
* **Planned drops**: ``website_status`` ``updating`` (a deploy, 3.9 and 5.3) marks the
  next drop as planned: the manager reconnects at once and says so.
* :meth:`retry_now` is a user's manual retry: concurrent calls coalesce into one
  attempt, it may probe while the breaker is open, at most once every
  :data:`MANUAL_RETRY_MIN_INTERVAL_S`.

The manager is the only publisher: it hands :class:`~backend_core.events.Tick` and
:class:`~backend_core.events.UpstreamSnapshot` values to a
:class:`~backend_core.events.FeedSink` (the hub). No HTTP handler ever awaits it:
:meth:`snapshot` is a cheap read of state the loops keep current.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import websockets
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt
from tenacity.wait import wait_base
from websockets.asyncio.client import ClientConnection

from backend_core.breakers import CircuitBreaker, Permit
from backend_core.clock import Clock, SystemClock, sleep_unless
from backend_core.config import Settings
from backend_core.deriv import protocol
from backend_core.errors import (
    CircuitOpenError,
    ConnectionLost,
    DerivAPIError,
    RequestTimeout,
    TooManyPendingRequests,
    UpstreamError,
    UpstreamUnavailable,
)
from backend_core.events import ErrorInfo, FeedSink, LinkState, SymbolStatus, Tick, UpstreamSnapshot

log = logging.getLogger("backend_core.deriv.manager")

# First retry waits up to 1 s; each further one doubles the ceiling (full jitter).
BACKOFF_BASE_S = 1.0
# No wait between two attempts grows past 30 s, the default breaker recovery timeout:
# users should never wait longer for a retry than for the breaker's own probe.
BACKOFF_CAP_S = 30.0
# Requests in flight at once. The manager itself needs a handful (one per symbol, a
# ping, website_status); the bound keeps a misbehaving caller from growing the map.
MAX_PENDING_REQUESTS = 256
# Deriv answers any request within 15 s or sends a Timeout error (deriv-protocol.md 1).
REQUEST_TIMEOUT_S = 15.0
# Deriv replaces responses over 600000 bytes with ResponseTooLarge; 1 MiB leaves room.
MAX_FRAME_BYTES = 1 << 20
# ticks_history returns at most 5000 items (3.4): the most a single backfill recovers.
MAX_BACKFILL_TICKS = 5000
# A person pressing Retry (or many pages doing so) starts at most one attempt this often.
MANUAL_RETRY_MIN_INTERVAL_S = 5.0
# A session shorter than this did not prove the link stable: the next cycle starts with
# a backoff delay instead of at once, so a server that accepts and drops cannot make
# the manager loop tightly.
STABLE_SESSION_S = 10.0
# RateLimit or a transient backend error on a subscribe: retries in a row, with doubling
# delays; after that the silent-stream watchdog asks again every few ping intervals.
SUBSCRIBE_RETRIES = 5
# Deriv's backend errors that say nothing about the request (deriv-protocol.md 1 and 4).
TRANSIENT_SUBSCRIBE_ERRORS = frozenset({"RateLimit", "WrongResponse", "CallError", "Timeout"})
# MarketIsClosed: look again this often (synthetic indices are open 24/7; others are not).
MARKET_CLOSED_RECHECK_S = 300.0
# A subscribed symbol silent for this many ping intervals while the link answers pings is
# re-subscribed (with backfill): a backend restart can end streams without a disconnect
# (deriv-protocol.md 5.3), and a closed market answers the new subscribe with MarketIsClosed.
STALE_STREAM_PINGS = 3
# Closing a healthy link politely may wait this long for the close handshake.
CLOSE_TIMEOUT_S = 2.0


class _AttemptFailed(Exception):
    """One connection attempt failed (wraps the cause for tenacity's retry predicate)."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


@dataclass(frozen=True, slots=True)
class RetryOutcome:
    """What :meth:`DerivManager.retry_now` did, in words fit for the person who asked."""

    status: str  # "started" | "in_progress" | "already_connected" | "too_soon" | "stopped"
    message: str
    retry_after_s: float = 0.0


class _FullJitter(wait_base):
    """Exponential backoff with full jitter (AWS architecture blog), injectable randomness.

    Attempt n (1-based) waits uniform(0, min(cap, base * 2**(n-1))).
    """

    def __init__(self, base: float, cap: float, rng: random.Random) -> None:
        self.base, self.cap, self.rng = base, cap, rng

    def __call__(self, retry_state: Any) -> float:
        return backoff_delay(retry_state.attempt_number, self.base, self.cap, self.rng)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """The full-jitter delay after failed attempt ``attempt`` (1-based). Pure."""
    ceiling = min(cap, base * (2 ** max(0, min(attempt - 1, 30))))
    return rng.uniform(0.0, ceiling)


def classify_connect_error(exc: BaseException) -> ErrorInfo:
    """Turn whatever a connection attempt raised into a stable code and plain words.

    The codes are what the status page chooses its troubleshooting tips by.
    """
    from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

    if isinstance(exc, TimeoutError):
        return ErrorInfo("ConnectTimeout", "The market data server did not answer in time.", 0.0)
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        body = bytes(exc.response.body or b"")[:200].decode("utf-8", "replace")
        if status == 401 and "InvalidAppID" in body:
            return ErrorInfo("InvalidAppID", "The server refused our app_id (HTTP 401 InvalidAppID).", 0.0)
        if status == 403:
            return ErrorInfo("AccessRestricted", "The server refused access for this app or origin (HTTP 403).", 0.0)
        return ErrorInfo("HandshakeRefused", f"The server refused the connection (HTTP {status}).", 0.0)
    if isinstance(exc, InvalidURI):
        return ErrorInfo("InvalidURL", "The configured DERIV_WS_URL is not a valid WebSocket URL.", 0.0)
    if isinstance(exc, InvalidHandshake):
        return ErrorInfo("HandshakeFailed", f"The WebSocket handshake failed: {exc}", 0.0)
    if isinstance(exc, ConnectionRefusedError):
        return ErrorInfo("ConnectionRefused", "The market data server refused the connection.", 0.0)
    if isinstance(exc, OSError):
        return ErrorInfo("NetworkError", f"Network error while connecting: {exc.strerror or exc}", 0.0)
    if isinstance(exc, DerivAPIError):
        return ErrorInfo(exc.code, exc.message, 0.0)
    if isinstance(exc, UpstreamError):
        return ErrorInfo(exc.code, exc.message, 0.0)
    return ErrorInfo("ConnectError", f"{type(exc).__name__}: {exc}"[:200], 0.0)


def build_url(base: str, app_id: str) -> str:
    """The connection URL: ``base?app_id=N&l=EN&brand=deriv`` (deriv-protocol.md 1)."""
    parts = urlsplit(base)
    query = urlencode({"app_id": app_id, "l": "EN", "brand": "deriv"})
    merged = f"{parts.query}&{query}" if parts.query else query
    return urlunsplit((parts.scheme, parts.netloc, parts.path, merged, ""))


def redact_url(url: str) -> str:
    """The URL with any userinfo removed, safe for logs and health output."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))


def backfill_gap(last_epoch: int | None, times: Sequence[int], requested: int) -> int | None:
    """The epoch a backfill could not reach back to, or ``None`` when it left no gap. Pure.

    ``ticks_history`` from ``last_epoch`` (inclusive) answers the *latest* ``requested``
    ticks of the range (section 3.4). A reply shorter than that holds the whole range; a
    full one that starts after ``last_epoch`` left out the ticks in between.
    """
    if last_epoch is None or not times or len(times) < requested or times[0] <= last_epoch:
        return None
    return last_epoch


class TickSequencer:
    """Lets each (symbol, epoch) through once, in ascending epoch order. Pure."""

    __slots__ = ("_last", "duplicates")

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self.duplicates = 0

    def accept(self, tick: Tick) -> bool:
        last = self._last.get(tick.symbol)
        if last is not None and tick.epoch <= last:
            self.duplicates += 1
            return False
        self._last[tick.symbol] = tick.epoch
        return True

    def last_epoch(self, symbol: str) -> int | None:
        return self._last.get(symbol)


@dataclass(slots=True)
class _SymbolState:
    symbol: str
    subscribed: bool = False
    subscription_id: str | None = None
    # Monotonic time of the last tick or of the subscription, for the silent-stream watchdog.
    last_activity: float = 0.0
    resubscribing: bool = False
    subscribing: bool = False
    last_tick_at: float | None = None
    failed_code: str | None = None
    failed_reason: str | None = None
    permanent_failure: bool = False
    gap: tuple[int, int] | None = None  # the latest unfilled backfill gap (from, to)


class DerivManager:
    """Owns the upstream link. Start with :meth:`start`, stop with :meth:`stop`."""

    def __init__(
        self,
        settings: Settings,
        sink: FeedSink,
        breaker: CircuitBreaker,
        *,
        url: str,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_cap_s: float = BACKOFF_CAP_S,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        manual_retry_min_interval_s: float = MANUAL_RETRY_MIN_INTERVAL_S,
        stable_session_s: float = STABLE_SESSION_S,
        stale_stream_s: float | None = None,
        backfill_count: int = MAX_BACKFILL_TICKS,
        simulated: bool = False,
    ) -> None:
        self._settings = settings
        self._sink = sink
        self._breaker = breaker
        self._clock = clock or SystemClock()
        self._rng = rng or random.Random()
        self._url = build_url(url, settings.DERIV_APP_ID)
        self._public_url = redact_url(url)
        self._simulated = simulated
        self._connect_timeout_s = settings.WEBSOCKET_CONNECTION_TIMEOUT
        self._pong_deadline_s = settings.WEBSOCKET_CONNECTION_TIMEOUT
        self._ping_interval_s = settings.DERIV_PING_INTERVAL
        self._max_attempts = settings.WEBSOCKET_MAX_RETRY_ATTEMPTS
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._request_timeout_s = request_timeout_s
        self._manual_retry_min_interval_s = manual_retry_min_interval_s
        self._stable_session_s = stable_session_s
        self._stale_stream_s = (
            stale_stream_s if stale_stream_s is not None else STALE_STREAM_PINGS * settings.DERIV_PING_INTERVAL
        )
        self._token = settings.DERIV_API_TOKEN
        self._backfill_count = max(1, min(backfill_count, MAX_BACKFILL_TICKS))

        self._symbols: dict[str, _SymbolState] = {s: _SymbolState(s) for s in settings.DERIV_SYMBOLS}
        self._sequencer = TickSequencer()
        self._req_ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[protocol.Message]] = {}
        # Backfill requests in flight: req_id -> (symbol, epoch it starts from).
        self._history_req: dict[int, tuple[str, int]] = {}

        self._ws: ClientConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._session_tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._wake = asyncio.Event()
        self._manual_probe = False
        self._last_manual_retry_at: float | None = None
        self._short_sessions = 0

        now_wall = self._clock.wall()
        self._snap = UpstreamSnapshot(
            state=LinkState.STOPPED,
            since=now_wall,
            url=self._public_url,
            simulated=simulated,
            max_attempts=self._max_attempts,
            symbols=self._symbol_statuses(),
        )
        self._stats = {
            "ticks_received": 0,
            "ticks_published": 0,
            "ticks_backfilled": 0,
            "backfill_gaps": 0,
            "protocol_errors": 0,
        }
        self._errors_by_code: dict[str, int] = {}

    # ------------------------------------------------------------------ public surface

    @property
    def url(self) -> str:
        return self._public_url

    def snapshot(self) -> UpstreamSnapshot:
        """The current state (cheap; never awaits the upstream)."""
        return replace(self._snap, symbols=self._symbol_statuses())

    def stats(self) -> dict[str, Any]:
        """Counters for metrics: ticks received/published/backfilled, errors by code."""
        return {
            **self._stats,
            "duplicates_dropped": self._sequencer.duplicates,
            "errors_by_code": dict(self._errors_by_code),
            "pending_requests": len(self._pending),
            "reconnects": self._snap.reconnect_count,
        }

    async def start(self) -> None:
        if self._task is not None:
            return
        self._stopping = False
        self._task = asyncio.create_task(self._supervise(), name="deriv-manager")

    async def stop(self) -> None:
        """Close the link and every task and timer; idempotent."""
        self._stopping = True
        self._wake.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await ws.close(1000, "client shutting down")
            ws.transport.abort()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._cancel_session_tasks()
        self._fail_pending(ConnectionLost("the upstream manager stopped"))
        self._set_state(LinkState.STOPPED, next_attempt_at=None, retry_in_progress=False)

    def retry_now(self) -> RetryOutcome:
        """A user's manual retry: coalesced, rate-limited, allowed to probe an open breaker."""
        if self._stopping or self._task is None:
            return RetryOutcome("stopped", "The upstream manager is not running.")
        state = self._snap.state
        if state == LinkState.CONNECTED:
            return RetryOutcome("already_connected", "The market feed is already connected.")
        if self._snap.retry_in_progress or self._wake.is_set() or state == LinkState.CONNECTING:
            return RetryOutcome("in_progress", "A connection attempt is already under way.")
        now = self._clock.monotonic()
        if self._last_manual_retry_at is not None:
            wait = self._last_manual_retry_at + self._manual_retry_min_interval_s - now
            if wait > 0:
                return RetryOutcome("too_soon", f"Please wait {wait:.0f} s before retrying again.", wait)
        self._last_manual_retry_at = now
        self._manual_probe = True
        self._wake.set()
        self._set_state(state, retry_in_progress=True)
        log.info("manual retry requested: state=%s", state.value)
        return RetryOutcome("started", "Retrying the market feed connection now.")

    async def request(self, payload: dict[str, Any], *, timeout: float | None = None) -> protocol.Message:
        """Send a request and await its reply (matched by ``req_id``).

        Raises :class:`UpstreamUnavailable` without a link, :class:`TooManyPendingRequests`
        when the pending map is full, :class:`RequestTimeout`, :class:`ConnectionLost` when
        the link drops first, and :class:`DerivAPIError` for an error reply.
        """
        ws = self._ws
        if ws is None:
            raise UpstreamUnavailable("the market data link is not connected")
        return await self._request(ws, payload, timeout=timeout)

    # ------------------------------------------------------------------ state helpers

    def _symbol_statuses(self) -> tuple[SymbolStatus, ...]:
        return tuple(
            SymbolStatus(
                symbol=s.symbol,
                subscribed=s.subscribed,
                last_epoch=self._sequencer.last_epoch(s.symbol),
                last_tick_at=s.last_tick_at,
                failed_code=s.failed_code,
                failed_reason=s.failed_reason,
                gap_from=s.gap[0] if s.gap else None,
                gap_to=s.gap[1] if s.gap else None,
            )
            for s in self._symbols.values()
        )

    def _set_state(self, state: LinkState, **changes: Any) -> None:
        snap = self._snap
        if state != snap.state:
            changes["since"] = self._clock.wall()
            log.info("upstream %s -> %s", snap.state.value, state.value)
        self._snap = replace(snap, state=state, symbols=self._symbol_statuses(), **changes)
        self._sink.publish_status(self._snap)

    def _record_error(self, info: ErrorInfo) -> ErrorInfo:
        stamped = replace(info, at=self._clock.wall())
        self._errors_by_code[stamped.code] = self._errors_by_code.get(stamped.code, 0) + 1
        self._snap = replace(self._snap, last_error=stamped)
        return stamped

    # ------------------------------------------------------------------ supervisor

    async def _supervise(self) -> None:
        """Connect, serve, reconnect: forever, until stopped.

        Nothing that goes wrong inside one round may end this loop (the manager never
        gives up): an unexpected error is logged with its traceback, shown as the last
        error, and followed by a capped backoff before the next round.
        """
        first = True
        failures = 0
        while not self._stopping:
            try:
                first = await self._one_round(first)
                failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                failures += 1
                log.exception("upstream manager error; recovering")
                self._record_error(ErrorInfo("InternalError", f"Unexpected error: {type(exc).__name__}", 0))
                await self._pause(
                    backoff_delay(failures, self._backoff_base_s, self._backoff_cap_s, self._rng) + 0.05,
                    LinkState.RECONNECTING,
                )

    async def _one_round(self, first: bool) -> bool:
        """One retry cycle and, if it connects, one session. Returns whether it is still the first."""
        try:
            ws, permit = await self._connect_cycle(LinkState.CONNECTING if first else LinkState.RECONNECTING)
        except CircuitOpenError as exc:
            await self._wait_circuit_open(exc.retry_after_s)
            return first
        except _AttemptFailed:
            if self._breaker.state.value == "open":
                # The last failure of the cycle opened the breaker: say so, and wait for its probe.
                await self._wait_circuit_open(self._breaker.retry_after_s)
            else:
                # The cycle is spent but the breaker is still closed (its threshold is
                # above the attempts per cycle): wait as long as its recovery timeout.
                await self._pause(self._breaker.config.recovery_timeout_s, LinkState.RECONNECTING)
            return first
        started = self._clock.monotonic()
        planned = await self._run_session(ws, permit)
        lasted = self._clock.monotonic() - started
        self._short_sessions = 0 if lasted >= self._stable_session_s or planned else self._short_sessions + 1
        if self._stopping:
            return False
        self._snap = replace(self._snap, reconnect_count=self._snap.reconnect_count + 1)
        if self._short_sessions:
            delay = backoff_delay(self._short_sessions, self._backoff_base_s, self._backoff_cap_s, self._rng)
            await self._pause(delay, LinkState.RECONNECTING)
        return False

    async def _connect_cycle(self, state: LinkState) -> tuple[ClientConnection, Permit]:
        """Up to max_attempts attempts with backoff; raises CircuitOpenError or _AttemptFailed."""
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self._max_attempts),
            wait=_FullJitter(self._backoff_base_s, self._backoff_cap_s, self._rng),
            retry=retry_if_exception_type(_AttemptFailed),
            sleep=self._backoff_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                number = attempt.retry_state.attempt_number
                return await self._attempt(number, state)
        raise AssertionError("unreachable: tenacity re-raises the last failure")  # pragma: no cover

    async def _attempt(self, number: int, state: LinkState) -> tuple[ClientConnection, Permit]:
        if self._stopping:
            raise asyncio.CancelledError
        manual = self._manual_probe
        self._manual_probe = False
        self._wake.clear()
        if manual:
            self._breaker.allow_probe_now()
        permit = self._breaker.acquire()  # CircuitOpenError propagates: tenacity does not retry it
        shown_state = LinkState.CONNECTING if state == LinkState.CONNECTING else LinkState.RECONNECTING
        self._set_state(shown_state, attempt=number, next_attempt_at=None, retry_in_progress=True)
        log.info("connecting to %s (attempt %d of %d)", self._public_url, number, self._max_attempts)
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                ws = await websockets.connect(
                    self._url,
                    open_timeout=None,  # the asyncio.timeout above covers TCP, TLS and the handshake
                    ping_interval=None,  # liveness is the JSON ping of deriv-protocol.md 5.1
                    close_timeout=CLOSE_TIMEOUT_S,
                    max_size=MAX_FRAME_BYTES,
                    max_queue=64,
                    compression="deflate",
                    user_agent_header="deriv-status/0.1 (+python-websockets)",
                )
        except asyncio.CancelledError:
            self._breaker.release(permit)
            raise
        except Exception as exc:
            info = self._record_error(classify_connect_error(exc))
            self._breaker.record_failure(permit, exc)
            log.warning("connect attempt %d failed: %s: %s", number, info.code, info.message)
            self._set_state(shown_state, retry_in_progress=False)
            raise _AttemptFailed(info) from None
        return ws, permit

    async def _backoff_sleep(self, seconds: float) -> None:
        """tenacity's sleep: show the countdown, and let a manual retry cut it short."""
        await self._pause(seconds, LinkState.RECONNECTING)

    async def _pause(self, seconds: float, state: LinkState) -> None:
        if self._stopping:
            raise asyncio.CancelledError
        self._set_state(state, next_attempt_at=self._clock.wall() + seconds, retry_in_progress=False)
        await self._interruptible_sleep(seconds)

    async def _wait_circuit_open(self, retry_after_s: float) -> None:
        log.warning("circuit 'websocket' open: next probe in %.1fs", retry_after_s)
        self._set_state(
            LinkState.CIRCUIT_OPEN, next_attempt_at=self._clock.wall() + retry_after_s, retry_in_progress=False
        )
        # A small floor avoids a busy loop if the breaker reports 0 while still open.
        await self._interruptible_sleep(max(retry_after_s, 0.05))

    async def _interruptible_sleep(self, seconds: float) -> None:
        if self._wake.is_set():
            return
        await sleep_unless(self._clock, seconds, self._wake)
        if self._stopping:
            raise asyncio.CancelledError

    # ------------------------------------------------------------------ one session

    async def _run_session(self, ws: ClientConnection, permit: Permit) -> bool:
        """Serve one connected link until it drops. Returns whether the drop was planned."""
        self._ws = ws
        self._planned = False
        for state in self._symbols.values():
            state.subscribed = False
        proven = asyncio.Event()
        reader = self._spawn(self._read_loop(ws), "deriv-read")
        setup = self._spawn(self._setup(ws, permit, proven), "deriv-setup")
        heartbeat = self._spawn(self._heartbeat(ws), "deriv-heartbeat")
        drop_reason = "connection closed"
        try:
            await asyncio.wait({reader, setup}, return_when=asyncio.FIRST_COMPLETED)
            if setup.done() and not setup.cancelled() and setup.exception() is None and not reader.done():
                await reader
            if reader.done() and not reader.cancelled() and reader.exception() is None:
                drop_reason = reader.result()
            elif setup.done() and not setup.cancelled() and (exc := setup.exception()) is not None:
                drop_reason = f"setup failed: {exc}"
                self._record_error(classify_connect_error(exc))
                ws.transport.abort()
        finally:
            self._ws = None
            heartbeat.cancel()
            setup.cancel()
            reader.cancel()
            await self._cancel_session_tasks()
            ws.transport.abort()
            self._fail_pending(ConnectionLost(f"the market data link dropped ({drop_reason})"))
            for state in self._symbols.values():
                state.subscribed = False
        if not proven.is_set():
            # The link never answered a request: this attempt failed, mid-stream.
            self._breaker.record_failure(permit, ConnectionLost(drop_reason))
        planned = self._planned
        if not self._stopping:
            if planned:
                self._snap = replace(self._snap, planned_reconnect=True)
                log.info("upstream closed for a planned update; reconnecting now")
            else:
                if self._snap.last_error is None or self._snap.last_error.code not in {"HeartbeatTimeout"}:
                    self._record_error(ErrorInfo("ConnectionLost", f"The market data link dropped: {drop_reason}.", 0))
                log.warning("upstream link dropped: %s", drop_reason)
            self._set_state(LinkState.RECONNECTING, attempt=0, connected_since=None)
        return planned

    def _spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self._session_tasks.add(task)
        task.add_done_callback(self._session_tasks.discard)
        return task

    async def _cancel_session_tasks(self) -> None:
        tasks = list(self._session_tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _setup(self, ws: ClientConnection, permit: Permit, proven: asyncio.Event) -> None:
        """Prove the link with a round trip, re-authorize, re-subscribe everything."""
        try:
            status = await self._request(ws, protocol.website_status(self._next_req_id(), subscribe=True))
        except DerivAPIError as exc:
            # An error reply is still a reply: the link works end to end. The subscribes
            # below handle their own errors; the planned-update notice is what is lost.
            log.warning("website_status answered %s: %s", exc.code, exc.message)
            self._record_error(ErrorInfo(exc.code, f"website_status failed: {exc.message}", 0))
        else:
            if isinstance(status, protocol.WebsiteStatus):
                self._on_site_status(status)
        self._breaker.record_success(permit)
        proven.set()
        self._snap = replace(self._snap, last_error=None, planned_reconnect=False)
        self._set_state(
            LinkState.CONNECTED,
            attempt=0,
            next_attempt_at=None,
            retry_in_progress=False,
            connected_since=self._clock.wall(),
        )
        log.info("upstream connected: %s", self._public_url)
        if self._token is not None:
            try:
                await self._request(ws, protocol.authorize(self._token.get_secret_value(), self._next_req_id()))
            except DerivAPIError as exc:
                # Ticks need no authorization: keep streaming, but say why auth failed.
                self._record_error(ErrorInfo(exc.code, f"Authorization failed: {exc.message}", 0))
                self._set_state(self._snap.state)
                log.error("authorize failed: %s", exc.code)
        await asyncio.gather(*(self._subscribe(ws, s) for s in self._symbols.values() if not s.permanent_failure))

    async def _subscribe(self, ws: ClientConnection, state: _SymbolState) -> None:
        """Subscribe one symbol (with backfill when it has published before).

        Each error is handled for what it means: InvalidSymbol is final for this symbol;
        MarketIsClosed is asked again on a slow timer; RateLimit and Deriv's transient
        backend errors back off and retry a bounded number of times, after which the
        silent-stream watchdog tries again later, so a symbol is never given up on.
        """
        if state.subscribing:
            return
        state.subscribing = True
        try:
            await self._subscribe_attempts(ws, state)
        finally:
            state.subscribing = False

    async def _subscribe_attempts(self, ws: ClientConnection, state: _SymbolState) -> None:
        delay = 1.0
        for _ in range(SUBSCRIBE_RETRIES + 1):
            last = self._sequencer.last_epoch(state.symbol)
            req_id = self._next_req_id()
            if last is None:
                payload = protocol.ticks(state.symbol, req_id)
            else:
                payload = protocol.ticks_history(
                    state.symbol, req_id, end="latest", start=last, count=self._backfill_count, subscribe=True
                )
                self._history_req[req_id] = (state.symbol, last)
            try:
                await self._request(ws, payload)
            except DerivAPIError as exc:
                if exc.code == "AlreadySubscribed":
                    break
                if exc.code == "InvalidSymbol":
                    state.permanent_failure = True
                    self._mark_failed(state, exc.code, f"Deriv does not offer {state.symbol}: {exc.message}")
                    return
                if exc.code == "MarketIsClosed":
                    self._mark_failed(state, exc.code, f"The market for {state.symbol} is closed.")
                    await self._clock.sleep(MARKET_CLOSED_RECHECK_S)
                    continue
                if exc.code in TRANSIENT_SUBSCRIBE_ERRORS:
                    reason = (
                        f"Rate limited while subscribing to {state.symbol}; retrying."
                        if exc.code == "RateLimit"
                        else f"Deriv could not subscribe {state.symbol} ({exc.message}); retrying."
                    )
                    self._mark_failed(state, exc.code, reason)
                    await self._clock.sleep(delay)
                    delay = min(delay * 2, self._backoff_cap_s)
                    continue
                self._mark_failed(state, exc.code, exc.message)
                return
            finally:
                self._history_req.pop(req_id, None)
            break
        else:
            return  # retries spent: the watchdog asks again after a quiet period
        state.subscribed = True
        state.last_activity = self._clock.monotonic()
        state.failed_code = state.failed_reason = None
        self._set_state(self._snap.state)

    def _mark_failed(self, state: _SymbolState, code: str, reason: str) -> None:
        state.subscribed = False
        state.last_activity = self._clock.monotonic()
        state.failed_code, state.failed_reason = code, reason
        self._record_error(ErrorInfo(code, reason, 0))
        log.warning("symbol %s: %s (%s)", state.symbol, reason, code)
        self._set_state(self._snap.state)

    async def _heartbeat(self, ws: ClientConnection) -> None:
        while True:
            await self._clock.sleep(self._ping_interval_s)
            sent = self._clock.monotonic()
            try:
                await self._request(ws, protocol.ping(self._next_req_id()), timeout=self._pong_deadline_s)
            except RequestTimeout:
                self._record_error(ErrorInfo("HeartbeatTimeout", "The market data server stopped answering pings.", 0))
                log.warning("no pong within %.1fs: the link is dead, reconnecting", self._pong_deadline_s)
                ws.transport.abort()
                return
            except DerivAPIError:
                continue  # e.g. RateLimit on ping: the link itself is alive
            except (ConnectionLost, UpstreamUnavailable):
                return
            self._snap = replace(self._snap, last_pong_latency_s=self._clock.monotonic() - sent)
            self._revive_silent_streams(ws)

    def _revive_silent_streams(self, ws: ClientConnection) -> None:
        """Re-subscribe symbols that went silent, or whose subscribe failed, on a live link."""
        now = self._clock.monotonic()
        for state in self._symbols.values():
            if state.permanent_failure or state.subscribing or state.resubscribing:
                continue
            if now - state.last_activity <= self._stale_stream_s:
                continue
            state.resubscribing = True
            if state.subscribed:
                log.warning(
                    "no tick for %s in %.0fs on a live link: re-subscribing", state.symbol, self._stale_stream_s
                )
            else:
                log.info("asking again for %s (last attempt: %s)", state.symbol, state.failed_code)
            self._spawn(self._resubscribe(ws, state), f"deriv-resubscribe-{state.symbol}")

    async def _resubscribe(self, ws: ClientConnection, state: _SymbolState) -> None:
        try:
            if state.subscribed and state.subscription_id is not None:
                with contextlib.suppress(UpstreamError):
                    await self._request(ws, protocol.forget(state.subscription_id, self._next_req_id()))
            state.subscribed = False
            await self._subscribe(ws, state)
        finally:
            state.resubscribing = False

    async def _read_loop(self, ws: ClientConnection) -> str:
        """Move frames from the socket to handlers until the link closes; return why."""
        try:
            async for raw in ws:
                self._snap = replace(self._snap, last_message_at=self._clock.wall())
                self._dispatch(protocol.parse(raw))
        except websockets.ConnectionClosed as exc:
            return _describe_close(exc)
        except OSError as exc:
            return f"network error: {exc}"
        return _describe_close_code(ws.close_code, ws.close_reason)

    def _dispatch(self, message: protocol.Message) -> None:
        if isinstance(message, protocol.TickMessage):
            self._stats["ticks_received"] += 1
            state = self._symbols.get(message.tick.symbol)
            if state is not None:
                state.last_activity = self._clock.monotonic()
                if message.subscription_id is not None:
                    state.subscription_id = message.subscription_id
            self._publish(message.tick)
            if message.req_id is not None:
                self._resolve(message.req_id, message)
        elif isinstance(message, protocol.History):
            request = self._history_req.get(message.req_id) if message.req_id is not None else None
            symbol = message.symbol or (request[0] if request is not None else None)
            if symbol is not None and message.symbol is None:
                message = replace(message, symbol=symbol)
            state = self._symbols.get(symbol) if symbol is not None else None
            if state is not None:
                state.last_activity = self._clock.monotonic()
                if message.subscription_id is not None:
                    state.subscription_id = message.subscription_id
            ticks = message.to_ticks()
            gap_from = backfill_gap(request[1], message.times, self._backfill_count) if request is not None else None
            if gap_from is not None and ticks:
                ticks = (replace(ticks[0], gap_from=gap_from), *ticks[1:])
                if state is not None:
                    state.gap = (gap_from, ticks[0].epoch)  # published with the next status
                self._stats["backfill_gaps"] += 1
                log.warning(
                    "%s: the outage outlasted one backfill (%d ticks): ticks after epoch %d and before %d are lost",
                    symbol,
                    self._backfill_count,
                    gap_from,
                    ticks[0].epoch,
                )
            for tick in ticks:
                if self._publish(tick):
                    self._stats["ticks_backfilled"] += 1
            if message.req_id is not None:
                self._resolve(message.req_id, message)
        elif isinstance(message, protocol.WebsiteStatus):
            self._on_site_status(message)
            if message.req_id is not None:
                self._resolve(message.req_id, message)
        elif isinstance(message, protocol.ProtocolFrameError):
            self._stats["protocol_errors"] += 1
            self._record_error(ErrorInfo("ProtocolError", f"Unreadable frame from upstream: {message.reason}", 0))
            log.warning("protocol error from upstream: %s", message.reason)
            if message.req_id is not None:
                self._reject(message.req_id, message.error)
        elif isinstance(message, protocol.ApiError):
            if message.req_id is not None and message.req_id in self._pending:
                self._reject(message.req_id, message.to_exception())
            else:
                self._record_error(ErrorInfo(message.code, message.message, 0))
                log.warning("upstream error for %s: %s %s", message.msg_type, message.code, message.message)
        elif message.req_id is not None:
            self._resolve(message.req_id, message)

    def _publish(self, tick: Tick) -> bool:
        state = self._symbols.get(tick.symbol)
        if state is None or not self._sequencer.accept(tick):
            return False
        state.last_tick_at = self._clock.wall()
        self._stats["ticks_published"] += 1
        self._sink.publish_tick(tick)
        return True

    def _on_site_status(self, message: protocol.WebsiteStatus) -> None:
        if message.site_status != self._snap.site_status:
            self._snap = replace(self._snap, site_status=message.site_status)
        if message.site_status == "updating":
            self._planned = True
            self._record_error(
                ErrorInfo("SiteUpdating", message.message or "Deriv is updating its servers; reconnecting.", 0)
            )
            self._set_state(self._snap.state, planned_reconnect=True)
            log.info("upstream announced an update: %s", message.message)

    # ------------------------------------------------------------------ requests

    def _next_req_id(self) -> int:
        # Deriv's req_id is a plain integer; wrap well inside 2**31 to stay portable.
        return next(self._req_ids) % 2_000_000_000 + 1

    async def _request(
        self, ws: ClientConnection, payload: dict[str, Any], *, timeout: float | None = None
    ) -> protocol.Message:
        if len(self._pending) >= MAX_PENDING_REQUESTS:
            raise TooManyPendingRequests(f"{MAX_PENDING_REQUESTS} upstream requests are already in flight")
        req_id = int(payload["req_id"])
        future: asyncio.Future[protocol.Message] = asyncio.get_running_loop().create_future()
        self._pending[req_id] = future
        method = next(iter(payload))
        try:
            async with asyncio.timeout(timeout if timeout is not None else self._request_timeout_s):
                await ws.send(protocol.encode(payload))
                message = await future
        except TimeoutError:
            raise RequestTimeout(f"no reply to {method} within the deadline") from None
        except websockets.ConnectionClosed:
            raise ConnectionLost(f"the link closed while sending {method}") from None
        finally:
            self._pending.pop(req_id, None)
        return message

    def _resolve(self, req_id: int, message: protocol.Message) -> None:
        future = self._pending.get(req_id)
        if future is not None and not future.done():
            future.set_result(message)

    def _reject(self, req_id: int, exc: BaseException) -> None:
        future = self._pending.get(req_id)
        if future is not None and not future.done():
            future.set_exception(exc)

    def _fail_pending(self, exc: UpstreamError) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(exc)


def _describe_close(exc: websockets.ConnectionClosed) -> str:
    rcvd = exc.rcvd
    if rcvd is None:
        return "closed without a close frame (1006)"
    return _describe_close_code(rcvd.code, rcvd.reason)


def _describe_close_code(code: int | None, reason: str | None) -> str:
    if code is None:
        return "closed"
    return f"closed with code {code}" + (f" ({reason})" if reason else "")


__all__ = [
    "DerivManager",
    "RetryOutcome",
    "TickSequencer",
    "backfill_gap",
    "backoff_delay",
    "build_url",
    "classify_connect_error",
    "redact_url",
]
