"""DerivManager: the one upstream WebSocket of the process, kept healthy by itself.

The decisions live in :class:`~backend_core.deriv.link.LinkProtocol` (pure: events in,
actions out, unit-tested with numbers for time). This module is the thin asyncio driver
under it, after python-websockets' ``asyncio/connection.py`` over its ``protocol.py``:

* **Connect** with tenacity: every attempt holds a permit of the "websocket" circuit
  breaker, at most ``WEBSOCKET_MAX_RETRY_ATTEMPTS`` per cycle, with full-jitter backoff
  (:class:`~backend_core.backoff.FullJitter`, the one backoff of connect, subscribe and
  supervisor). The connect timeout (``WEBSOCKET_CONNECTION_TIMEOUT``) runs on the
  injected :class:`~backend_core.clock.Clock` and covers TCP, TLS and the handshake. Each
  failure gets its own code and plain words naming the host (:func:`classify_connect_error`).
  Repeated failure opens the breaker; the cycle then ends at once and the next attempt
  is its half-open probe (the status counts down to it). The manager never gives up for good.
* **One session per connected link, in one** :class:`asyncio.TaskGroup`: the reader
  (frames to the protocol), setup (starts the exchange), the heartbeat timer (pings,
  pong and request deadlines, symbol retries) and the silent-stream watchdog. The
  protocol ends a session with a cause (:class:`~backend_core.deriv.actions.CloseLink`).
  A task that fails unexpectedly ends it too: the error is logged once with its
  traceback, the status names it (``InternalError``), and the manager reconnects.
  A session that never proved the link charges the breaker (a bug of ours releases it).
* **Requests** (:meth:`request`) fail at once with
  :class:`~backend_core.errors.ConnectionLost` when the link drops.
* :meth:`retry_now` is a user's manual retry: concurrent calls coalesce into one
  attempt, it may probe while the breaker is open, at most once every
  :data:`MANUAL_RETRY_MIN_INTERVAL_S`; on a live link it asks again for failed symbols.

The manager is the only publisher: it hands :class:`~backend_core.events.Tick` and
:class:`~backend_core.events.UpstreamSnapshot` values to a
:class:`~backend_core.events.FeedSink` (the hub). No HTTP handler ever awaits it:
:meth:`snapshot` is a cheap read of state the loops keep current.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import random
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Final, Literal, Protocol
from urllib.parse import urlencode, urlsplit, urlunsplit

import websockets
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt
from tenacity.stop import stop_base

from backend_core.backoff import FullJitter
from backend_core.breakers.breaker import CircuitBreaker
from backend_core.breakers.core import BreakerState, Permit
from backend_core.clock import Clock, SystemClock, sleep_unless
from backend_core.config import Settings
from backend_core.deriv import actions as act
from backend_core.deriv import messages, protocol
from backend_core.deriv.backfill import DEFAULT_MAX_PAGES
from backend_core.deriv.link import REQUEST_TIMEOUT_S, LinkConfig, LinkProtocol
from backend_core.deriv.protocol import DerivCode
from backend_core.errors import CircuitOpenError, ConnectionLost, ErrorCode, UpstreamError, UpstreamUnavailable
from backend_core.events import ErrorInfo, FeedSink, LinkState, UpstreamSnapshot

log = logging.getLogger("backend_core.deriv.manager")

# First retry waits up to 1 s; each further one doubles the ceiling (full jitter).
BACKOFF_BASE_S: Final = 1.0
# No wait between two attempts grows past 30 s, the default breaker recovery timeout:
# users should never wait longer for a retry than for the breaker's own probe.
BACKOFF_CAP_S: Final = 30.0
# Deriv replaces responses over 600000 bytes with ResponseTooLarge; 1 MiB leaves room.
MAX_FRAME_BYTES: Final = 1 << 20
# A person pressing Retry (or many pages doing so) starts at most one attempt this often.
MANUAL_RETRY_MIN_INTERVAL_S: Final = 5.0
# A session shorter than this did not prove the link stable: the next cycle starts with
# a backoff delay instead of at once, so a server that accepts and drops cannot make
# the manager loop tightly.
STABLE_SESSION_S: Final = 10.0
# Closing a healthy link politely may wait this long for the close handshake.
CLOSE_TIMEOUT_S: Final = 2.0
# Distinct upstream error codes counted apart (codes come from outside); the rest share
# "other", so the map holds at most 50 keys, the label values metrics.py exports.
MAX_ERROR_CODES: Final = 49

RetryStatus = Literal["started", "in_progress", "already_connected", "too_soon", "stopped"]


class _Abortable(Protocol):
    def abort(self) -> None: ...


class UpstreamConnection(Protocol):
    """What the driver needs of a WebSocket (python-websockets' ClientConnection has it)."""

    @property
    def transport(self) -> _Abortable: ...

    @property
    def close_code(self) -> int | None: ...

    @property
    def close_reason(self) -> str | None: ...

    def __aiter__(self) -> AsyncIterator[str | bytes]: ...

    async def send(self, message: str) -> None: ...

    async def close(self, code: int = 1000, reason: str = "") -> None: ...


Connector = Callable[[str], Awaitable[UpstreamConnection]]


async def connect_websocket(url: str) -> UpstreamConnection:
    """The production connector: python-websockets with Deriv's settings."""
    return await websockets.connect(
        url,
        open_timeout=None,  # the manager's clock deadline covers TCP, TLS and the handshake
        ping_interval=None,  # liveness is the JSON ping of deriv-protocol.md 5.1
        close_timeout=CLOSE_TIMEOUT_S,
        max_size=MAX_FRAME_BYTES,
        max_queue=64,
        compression="deflate",
        user_agent_header="deriv-status/0.1 (+python-websockets)",
    )


class _AttemptFailed(Exception):
    """One connection attempt failed (wraps the cause for tenacity's retry predicate)."""

    def __init__(self, info: ErrorInfo) -> None:
        super().__init__(info.message)
        self.info = info


class _SessionOver(Exception):
    """Raised by the task that meets the protocol's CloseLink: the TaskGroup ends the rest."""

    def __init__(self, close: act.CloseLink) -> None:
        super().__init__(close.cause.message)
        self.close = close


class _TaskFailed(Exception):
    """A session task failed unexpectedly; ``error`` is what it raised (with its traceback)."""

    def __init__(self, task: str, error: Exception) -> None:
        super().__init__(f"{task}: {type(error).__name__}")
        self.task = task
        self.error = error


class _StopWhenOpen(stop_base):
    """tenacity's stop condition: the breaker is open (no attempt can be made before its probe)."""

    def __init__(self, breaker: CircuitBreaker) -> None:
        self._breaker = breaker

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._breaker.state is BreakerState.OPEN


@dataclass(frozen=True, slots=True)
class RetryOutcome:
    """What :meth:`DerivManager.retry_now` did, in words fit for the person who asked."""

    status: RetryStatus
    message: str
    retry_after_s: float = 0.0


def classify_connect_error(exc: BaseException, url: str = "", *, timeout_s: float | None = None) -> ErrorInfo:
    """Turn whatever a connection attempt to ``url`` raised into a stable code and plain words.

    The codes are what the status page chooses its troubleshooting tips by; every message
    names the host (never credentials) and is never empty.
    """
    from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

    parts = urlsplit(url)
    host = parts.hostname or "the market data server"
    try:
        port = parts.port or (443 if parts.scheme == "wss" else 80)
    except ValueError:
        port = None
    where = f"{host}:{port}" if parts.hostname and port else host
    detail = _words(exc)

    def info(code: str, message: str) -> ErrorInfo:
        return ErrorInfo(code, protocol.clip_text(message), 0.0)

    if isinstance(exc, TimeoutError):
        within = f" within {timeout_s:g} s" if timeout_s is not None else " in time"
        return info(ErrorCode.CONNECT_TIMEOUT, f"{where} did not answer{within}: check the network path to it.")
    if isinstance(exc, socket.gaierror):
        return info(
            ErrorCode.DNS_LOOKUP_FAILED, f"This server cannot resolve {host}: check its DNS and internet access."
        )
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or detail
        return info(ErrorCode.TLS_CERTIFICATE_INVALID, f"The TLS certificate of {host} was not accepted: {why}.")
    if isinstance(exc, ssl.SSLError) or (
        parts.scheme == "wss" and isinstance(exc, ConnectionResetError | ConnectionAbortedError | EOFError)
    ):
        # A wss:// URL to a server that does not speak TLS ends the handshake like this.
        why = getattr(exc, "reason", None) or "the server closed the connection"
        return info(
            ErrorCode.TLS_HANDSHAKE_FAILED,
            f"The TLS handshake with {where} failed ({why}): does it speak TLS (wss://)?",
        )
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        body = bytes(exc.response.body or b"")[:200].decode("utf-8", "replace")
        if status == 401 and DerivCode.INVALID_APP_ID in body:
            return info(DerivCode.INVALID_APP_ID, f"{host} refused our app_id (HTTP 401 InvalidAppID).")
        if status == 403:
            return info(DerivCode.ACCESS_RESTRICTED, f"{host} refused access for this app or origin (HTTP 403).")
        phrase = exc.response.reason_phrase
        return info(ErrorCode.HANDSHAKE_REFUSED, f"{where} answered the WebSocket upgrade with HTTP {status} {phrase}.")
    if isinstance(exc, InvalidURI):
        return info(ErrorCode.INVALID_URL, "The configured DERIV_WS_URL is not a valid WebSocket URL.")
    if isinstance(exc, InvalidHandshake):
        return info(ErrorCode.HANDSHAKE_FAILED, f"The WebSocket handshake with {where} failed: {detail}.")
    if isinstance(exc, ConnectionRefusedError):
        return info(ErrorCode.CONNECTION_REFUSED, f"{where} refused the connection: nothing is listening there.")
    if isinstance(exc, OSError):
        if exc.errno in (errno.ENETUNREACH, errno.EHOSTUNREACH):
            return info(ErrorCode.NETWORK_ERROR, f"This server has no route to {host}: {detail}.")
        return info(ErrorCode.NETWORK_ERROR, f"Network error while connecting to {where}: {detail}.")
    if isinstance(exc, UpstreamError):  # DerivAPIError included
        return info(exc.code, exc.message)
    return info(ErrorCode.CONNECT_ERROR, f"{type(exc).__name__}: {exc}"[:200])


def _words(exc: BaseException) -> str:
    """The exception in words, never empty (``ConnectionResetError()`` has no text)."""
    text = getattr(exc, "strerror", None) or str(exc)
    return text.strip() or type(exc).__name__


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


class _Session:
    """One connected link: its socket, permit and the two deadlines the protocol armed."""

    __slots__ = ("armed", "permit", "proven", "rearm", "up", "ws")

    def __init__(self, ws: UpstreamConnection, permit: Permit) -> None:
        self.ws = ws
        self.permit = permit
        self.proven = False
        self.up = asyncio.Event()
        self.armed: dict[act.Timer, float | None] = dict.fromkeys(act.Timer)
        self.rearm = {timer: asyncio.Event() for timer in act.Timer}

    def arm(self, timer: act.Timer, at: float | None) -> None:
        self.armed[timer] = at
        self.rearm[timer].set()


@dataclass(frozen=True, slots=True)
class _SessionEnd:
    cause: ErrorInfo
    planned: bool = False
    internal: bool = False  # a bug of ours ended it, not the upstream


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
        backfill_count: int = protocol.MAX_HISTORY_COUNT,
        backfill_max_pages: int = DEFAULT_MAX_PAGES,
        simulated: bool = False,
        connect: Connector = connect_websocket,
        link_type: type[LinkProtocol] = LinkProtocol,
    ) -> None:
        self._settings = settings
        self._sink = sink
        self._breaker = breaker
        self._clock = clock or SystemClock()
        self._url = build_url(url, settings.DERIV_APP_ID)
        self._public_url = redact_url(url)
        self._connect = connect
        self._manual_retry_min_interval_s = manual_retry_min_interval_s
        self._stable_session_s = stable_session_s
        # One backoff for every retry loop here: connect, subscribe and the supervisor.
        self._backoff = FullJitter(backoff_base_s, backoff_cap_s, rng or random.Random())
        config = LinkConfig(
            symbols=settings.DERIV_SYMBOLS,
            ping_interval_s=settings.DERIV_PING_INTERVAL,
            pong_deadline_s=settings.WEBSOCKET_CONNECTION_TIMEOUT,
            request_timeout_s=request_timeout_s,
            stale_stream_s=stale_stream_s,
            backfill_count=backfill_count,
            backfill_max_pages=backfill_max_pages,
            token=settings.DERIV_API_TOKEN,
        )
        self._link = link_type(config, self._backoff)

        self._session: _Session | None = None
        self._waiters: dict[int, asyncio.Future[messages.Message]] = {}
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._wake = asyncio.Event()
        self._manual_probe = False
        self._last_manual_retry_at: float | None = None
        self._short_sessions = 0
        self._planned_reconnect = False
        self._last_message_at: float | None = None
        self._errors_by_code: dict[str, int] = {}

        self._snap = UpstreamSnapshot(
            state=LinkState.STOPPED,
            since=self._clock.wall(),
            url=self._public_url,
            simulated=simulated,
            max_attempts=settings.WEBSOCKET_MAX_RETRY_ATTEMPTS,
        )

    # ------------------------------------------------------------------ public surface

    @property
    def url(self) -> str:
        return self._public_url

    def snapshot(self) -> UpstreamSnapshot:
        """The current state (cheap; never awaits the upstream)."""
        link = self._link
        return replace(
            self._snap,
            symbols=link.symbol_statuses(self._clock.wall() - self._clock.monotonic()),
            last_message_at=self._last_message_at,
            last_pong_latency_s=link.last_pong_latency_s,
            site_status=link.site_status,
            planned_reconnect=self._planned_reconnect or (link.is_open and link.planned),
        )

    def stats(self) -> dict[str, Any]:
        """Counters for metrics: ticks received/published/backfilled/paged, errors by code."""
        return {
            **self._link.stats,
            "duplicates_dropped": self._link.duplicates,
            "errors_by_code": dict(self._errors_by_code),
            "pending_requests": self._link.pending_count,
            "reconnects": self._snap.reconnect_count,
        }

    @property
    def running(self) -> bool:
        return self._task is not None

    def seed_epochs(self, epochs: Mapping[str, int]) -> None:
        """Before :meth:`start`: backfill from these epochs (a cluster's newest) on subscribe."""
        self._link.seed_epochs(epochs)

    async def start(self) -> None:
        if self._task is not None:
            return
        self._stopping = False
        self._task = asyncio.create_task(self._supervise(), name="deriv-manager")

    async def stop(self) -> None:
        """Close the link and every task and timer; idempotent."""
        self._stopping = True
        self._wake.set()
        session = self._session
        if session is not None:
            with contextlib.suppress(Exception):
                async with self._clock.timeout(CLOSE_TIMEOUT_S):
                    await session.ws.close(1000, "client shutting down")
            session.ws.transport.abort()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail_waiters(ConnectionLost("the upstream manager stopped"))
        self._set_state(LinkState.STOPPED, next_attempt_at=None, retry_in_progress=False)

    def retry_now(self) -> RetryOutcome:
        """A user's manual retry: coalesced, rate-limited, allowed to probe an open breaker."""
        if self._stopping or self._task is None:
            return RetryOutcome("stopped", "The upstream manager is not running.")
        state = self._snap.state
        waiting = self._link.waiting_symbols() if state == LinkState.CONNECTED else []
        if state == LinkState.CONNECTED and not waiting:
            return RetryOutcome("already_connected", "The market feed is already connected.")
        if self._snap.retry_in_progress or self._wake.is_set() or state == LinkState.CONNECTING:
            return RetryOutcome("in_progress", "A connection attempt is already under way.")
        now = self._clock.monotonic()
        if self._last_manual_retry_at is not None:
            wait = self._last_manual_retry_at + self._manual_retry_min_interval_s - now
            if wait > 0:
                return RetryOutcome("too_soon", f"Please wait {wait:.0f} s before retrying again.", wait)
        self._last_manual_retry_at = now
        session = self._session
        if waiting and session is not None:
            # The link is up; only some symbols wait for their next attempt: ask now.
            self._arm_only(session, self._link.retry_requested(now))
            log.info("manual retry requested: asking again for %s", ", ".join(waiting))
            return RetryOutcome("already_connected", f"The feed is connected; asking again for {', '.join(waiting)}.")
        self._manual_probe = True
        self._wake.set()
        self._set_state(state, retry_in_progress=True)
        log.info("manual retry requested: state=%s", state.value)
        return RetryOutcome("started", "Retrying the market feed connection now.")

    async def request(self, payload: dict[str, Any], *, timeout: float | None = None) -> messages.Message:
        """Send a request and await its reply (matched by ``req_id``).

        Raises :class:`UpstreamUnavailable` without a link, :class:`TooManyPendingRequests`
        when the pending map is full, :class:`RequestTimeout`, :class:`ConnectionLost` when
        the link drops first, and :class:`DerivAPIError` for an error reply.
        """
        session = self._session
        if session is None:
            raise UpstreamUnavailable("the market data link is not connected")
        actions = self._link.request(payload, self._clock.monotonic(), timeout)
        req_id: int = payload["req_id"]
        future: asyncio.Future[messages.Message] = asyncio.get_running_loop().create_future()
        self._waiters[req_id] = future
        try:
            for action in actions:
                if type(action) is act.Send:
                    try:
                        await session.ws.send(protocol.encode(action.payload))
                    except websockets.ConnectionClosed:
                        # The reader sees the close too and ends the session.
                        raise ConnectionLost(f"the link closed while sending {action.method}") from None
                elif type(action) is act.ArmDeadline:
                    session.arm(action.timer, action.at)
            return await future
        finally:
            self._waiters.pop(req_id, None)

    # ------------------------------------------------------------------ state helpers

    def _set_state(self, state: LinkState, **changes: Any) -> None:
        snap = self._snap
        if state != snap.state:
            changes["since"] = self._clock.wall()
            log.info("upstream %s -> %s", snap.state.value, state.value)
        self._snap = replace(snap, state=state, **changes)
        self._publish_status()

    def _publish_status(self) -> None:
        self._sink.publish_status(self.snapshot())

    def _record_error(self, info: ErrorInfo) -> ErrorInfo:
        stamped = replace(info, at=self._clock.wall())
        counts = self._errors_by_code
        key = stamped.code if stamped.code in counts or len(counts) < MAX_ERROR_CODES else "other"
        counts[key] = counts.get(key, 0) + 1
        self._snap = replace(self._snap, last_error=stamped)
        return stamped

    def _fail_waiters(self, exc: UpstreamError) -> None:
        waiters, self._waiters = self._waiters, {}
        for future in waiters.values():
            if not future.done():
                future.set_exception(exc)

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
                self._record_error(ErrorInfo(ErrorCode.INTERNAL_ERROR, f"Unexpected error: {type(exc).__name__}", 0))
                # A small floor keeps a failing round from spinning when the jitter draws ~0.
                await self._pause(self._backoff.delay(failures) + 0.05, LinkState.RECONNECTING)

    async def _one_round(self, first: bool) -> bool:
        """One retry cycle and, if it connects, one session. Returns whether it is still the first."""
        try:
            ws, permit = await self._connect_cycle(LinkState.CONNECTING if first else LinkState.RECONNECTING)
        except CircuitOpenError as exc:
            await self._wait_circuit_open(exc.retry_after_s)
            return first
        except _AttemptFailed:
            if self._breaker.state is BreakerState.OPEN:
                # The last failure of the cycle opened the breaker: say so, and wait for its probe.
                await self._wait_circuit_open(self._breaker.retry_after_s)
            else:
                # The cycle is spent but the breaker is still closed (its threshold is
                # above the attempts per cycle): wait as long as its recovery timeout.
                await self._pause(self._breaker.config.recovery_timeout_s, LinkState.RECONNECTING)
            return first
        started = self._clock.monotonic()
        end = await self._run_session(ws, permit)
        lasted = self._clock.monotonic() - started
        self._short_sessions = 0 if lasted >= self._stable_session_s or end.planned else self._short_sessions + 1
        if self._stopping:
            return False
        self._snap = replace(self._snap, reconnect_count=self._snap.reconnect_count + 1)
        if self._short_sessions:
            await self._pause(self._backoff.delay(self._short_sessions), LinkState.RECONNECTING)
        return False

    async def _connect_cycle(self, state: LinkState) -> tuple[UpstreamConnection, Permit]:
        """Up to max_attempts attempts with backoff; raises CircuitOpenError or _AttemptFailed."""
        retrying = AsyncRetrying(
            # A failure that opened the breaker (its threshold, or a half-open probe that
            # failed) ends the cycle at once: the next attempt is the breaker's probe, and
            # the status shows that wait, not a backoff no attempt would follow.
            stop=stop_after_attempt(self._settings.WEBSOCKET_MAX_RETRY_ATTEMPTS) | _StopWhenOpen(self._breaker),
            wait=self._backoff,
            retry=retry_if_exception_type(_AttemptFailed),
            sleep=self._backoff_sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                number = attempt.retry_state.attempt_number
                return await self._attempt(number, state)
        raise AssertionError("unreachable: tenacity re-raises the last failure")  # pragma: no cover

    async def _attempt(self, number: int, state: LinkState) -> tuple[UpstreamConnection, Permit]:
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
        settings = self._settings
        log.info("connecting to %s (attempt %d of %d)", self._public_url, number, settings.WEBSOCKET_MAX_RETRY_ATTEMPTS)
        timeout_s = settings.WEBSOCKET_CONNECTION_TIMEOUT
        try:
            async with self._clock.timeout(timeout_s):
                ws = await self._connect(self._url)
        except asyncio.CancelledError:
            self._breaker.release(permit)
            raise
        except Exception as exc:
            info = self._record_error(classify_connect_error(exc, self._public_url, timeout_s=timeout_s))
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

    async def _run_session(self, ws: UpstreamConnection, permit: Permit) -> _SessionEnd:
        """Serve one connected link until its session ends; say why it ended."""
        session = _Session(ws, permit)
        self._session = session
        end = _SessionEnd(ErrorInfo(ErrorCode.CONNECTION_LOST, "The market data link dropped.", 0))
        try:
            async with asyncio.TaskGroup() as tasks:
                # Setup first: it tells the protocol a session began before any frame is read.
                work = {
                    "setup": self._setup(session),
                    "reader": self._read(session),
                    "heartbeat": self._timer(session, act.Timer.HEARTBEAT),
                    "watchdog": self._timer(session, act.Timer.WATCHDOG),
                }
                for name, coro in work.items():
                    tasks.create_task(self._guard(name, coro), name=f"deriv-{name}")
        except ExceptionGroup as group:
            end = self._why_ended(group)
        finally:
            self._session = None
            ws.transport.abort()
            self._link.closed("the session ended", self._clock.monotonic())  # a no-op unless cancelled
            self._fail_waiters(ConnectionLost(f"the market data link dropped ({end.cause.message})"))
        if not session.proven:
            # The link never answered a request: this attempt failed, mid-stream. A bug of
            # ours (or a stop) says nothing about the upstream: its permit is only given back.
            if end.internal or self._stopping:
                self._breaker.release(permit)
            else:
                self._breaker.record_failure(permit, ConnectionLost(end.cause.message))
        if not self._stopping:
            if end.planned:
                self._planned_reconnect = True
                log.info("upstream closed for a planned update; reconnecting now")
            else:
                self._record_error(end.cause)
                if not end.internal:  # an internal error was logged already, with its traceback
                    log.warning("upstream link dropped: %s (%s)", end.cause.message, end.cause.code)
            self._set_state(LinkState.RECONNECTING, attempt=0, connected_since=None)
        return end

    def _why_ended(self, group: ExceptionGroup[Exception]) -> _SessionEnd:
        """The session's end from what its tasks raised; a task failure is logged here, once."""
        over, failed = group.split(_SessionOver)
        if failed is not None:
            errors = _leaves(failed)
            first = errors[0]
            task, error = (first.task, first.error) if isinstance(first, _TaskFailed) else ("session", first)
            others = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
            log.error("upstream %s task failed%s: ending the session and reconnecting", task, others, exc_info=error)
            message = f"Internal error in the upstream {task} task ({type(error).__name__}); reconnecting."
            return _SessionEnd(ErrorInfo(ErrorCode.INTERNAL_ERROR, message, 0), internal=True)
        assert over is not None
        close = next(e for e in _leaves(over) if isinstance(e, _SessionOver)).close
        return _SessionEnd(close.cause, close.planned)

    async def _guard(self, task: str, work: Awaitable[None]) -> None:
        try:
            await work
        except _SessionOver:
            raise
        except Exception as exc:
            raise _TaskFailed(task, exc) from exc

    async def _setup(self, session: _Session) -> None:
        """Start the exchange (website_status, then authorize and subscribe) and await its proof."""
        await self._execute(session, self._link.connected(self._clock.monotonic()))
        await session.up.wait()
        log.info("upstream connected: %s", self._public_url)

    async def _read(self, session: _Session) -> None:
        """Move frames from the socket to the protocol until the link closes."""
        ws, link, clock = session.ws, self._link, self._clock
        try:
            async for raw in ws:
                self._last_message_at = clock.wall()
                actions = link.frame(messages.parse(raw), clock.monotonic())
                if actions:
                    await self._execute(session, actions)
        except websockets.ConnectionClosed as exc:
            reason = _describe_close(exc)
        except OSError as exc:
            reason = f"network error: {_words(exc)}"
        else:
            reason = _describe_close_code(ws.close_code, ws.close_reason)
        await self._execute(session, link.closed(reason, clock.monotonic()))
        # The protocol always answers a close with CloseLink; should it not, end anyway.
        raise _SessionOver(
            act.CloseLink(ErrorInfo(ErrorCode.CONNECTION_LOST, f"The market data link dropped: {reason}.", 0))
        )

    async def _timer(self, session: _Session, timer: act.Timer) -> None:
        """Wait for the deadline the protocol armed for ``timer`` (on the clock), then tell it."""
        rearm = session.rearm[timer]
        while True:
            at = session.armed[timer]
            rearm.clear()
            if at is None:
                await rearm.wait()
                continue
            try:
                async with self._clock.timeout_at(at):
                    await rearm.wait()
            except TimeoutError:
                if session.armed[timer] == at:
                    session.armed[timer] = None
                await self._execute(session, self._link.deadline_reached(timer, self._clock.monotonic()))

    async def _execute(self, session: _Session, actions: Iterable[act.Action]) -> None:
        """Carry out the protocol's actions in order; CloseLink ends the session."""
        for action in actions:
            if type(action) is act.PublishTick:
                self._sink.publish_tick(action.tick)
            elif type(action) is act.PublishTicks:
                publish = self._sink.publish_tick
                for tick in action.ticks:
                    publish(tick)
            elif type(action) is act.Send:
                try:
                    await session.ws.send(protocol.encode(action.payload))
                except websockets.ConnectionClosed as exc:
                    failed = self._link.send_failed(action.req_id, _describe_close(exc), self._clock.monotonic())
                    await self._execute(session, failed)
            elif type(action) is act.ArmDeadline or type(action) is act.Resolve or type(action) is act.Fail:
                self._arm_only(session, (action,))
            elif type(action) is act.PublishStatus:
                if action.error is not None:
                    self._record_error(action.error)
                self._publish_status()
            elif type(action) is act.LinkUp:
                self._link_up(session)
            elif type(action) is act.CloseLink:
                raise _SessionOver(action)

    def _arm_only(self, session: _Session, actions: Iterable[act.Action]) -> None:
        """Carry out actions that need no I/O (deadlines, replies to requests)."""
        for action in actions:
            if isinstance(action, act.ArmDeadline):
                session.arm(action.timer, action.at)
            elif isinstance(action, act.Resolve | act.Fail):
                future = self._waiters.get(action.req_id)
                if future is not None and not future.done():
                    if isinstance(action, act.Resolve):
                        future.set_result(action.message)
                    else:
                        future.set_exception(action.error)

    def _link_up(self, session: _Session) -> None:
        """The link answered end to end: the attempt succeeded, the feed is connected."""
        session.proven = True
        self._breaker.record_success(session.permit)
        self._planned_reconnect = False
        self._snap = replace(self._snap, last_error=None)
        self._set_state(
            LinkState.CONNECTED,
            attempt=0,
            next_attempt_at=None,
            retry_in_progress=False,
            connected_since=self._clock.wall(),
        )
        session.up.set()


def _leaves(group: BaseExceptionGroup[Exception]) -> list[Exception]:
    out: list[Exception] = []
    for exc in group.exceptions:
        out.extend(_leaves(exc) if isinstance(exc, BaseExceptionGroup) else [exc])
    return out


def _describe_close(exc: websockets.ConnectionClosed) -> str:
    rcvd = exc.rcvd
    if rcvd is None:
        return "closed without a close frame (1006)"
    return _describe_close_code(rcvd.code, rcvd.reason)


def _describe_close_code(code: int | None, reason: str | None) -> str:
    if code is None:
        return "closed"
    return f"closed with code {code}" + (f" ({protocol.clip_text(reason, 120)})" if reason else "")
