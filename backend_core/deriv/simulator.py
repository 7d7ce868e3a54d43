"""A local Deriv WebSocket API v3 server, wire-compatible for the subset the app uses.

A Deriv client cannot tell it from ``wss://ws.derivws.com/websockets/v3`` for the calls,
envelopes, errors and connection behaviour of ``shared/deriv-protocol.md`` sections 1-6,
implemented as section 7 recommends. Section numbers below refer to that document.

Wire behaviour
    * ``ws://<host>:<port>/websockets/v3?app_id=N``; a missing or invalid ``app_id`` is
      refused with HTTP 401 ``{"error":"InvalidAppID"}``, a blocked one with 403
      ``{"error":"AccessRestricted"}`` (section 1). permessage-deflate is on.
    * ``ping``, ``time``, ``ticks``, ``ticks_history`` (ticks and candles, with
      ``subscribe``), ``forget``, ``forget_all``, ``active_symbols``, ``authorize``
      (tokens from ``accepted_tokens``) and ``website_status`` (with ``subscribe``);
      anything else is ``UnrecognisedRequest``, known calls with bad values are
      ``InputValidationFailed`` (sections 2-4).
    * A frame that is not UTF-8 or not JSON closes the connection (code 1007, no JSON
      reply); JSON that is not an object gets ``BadRequest``; bad keys or values get
      ``SanityCheckFailed`` (section 1).
    * More than 10 ``ping``/``time`` per ~1 s window: ``RateLimit``, then close 1008
      (section 5.2).
    * 120 s without a frame in either direction: the TCP connection is aborted without a
      close frame, so clients see 1006 (section 5.1).
    * One random-walk price path per symbol, shared by all connections, on a grid of
      integer epochs (1 s for ``1HZ*``, 2 s for ``R_*``); quotes rounded to ``pip_size``
      decimals. ``ticks_history`` reads the same bounded history the stream publishes, so
      history and live ticks agree exactly (section 7.4).

Time
    The simulator keeps a simulated "now" (:class:`SimulatedTime`): it starts at the
    clock's wall time and runs ``time_scale`` times faster than the injected clock's
    monotonic time. Protocol durations (tick grid, 120 s idle timeout, 15 s processing
    timeout, 1 s rate window) are simulated seconds, so ``time_scale=10`` ticks ten times
    faster, with epochs still 1 s / 2 s apart, and times out idle connections after 12 s.
    Durations given to fault controls (``refuse_connections(5)``, ``delay_replies(0.5)``,
    ``deploy(close_after_s=1)``) are clock seconds, so tests reason in real time.

Fault controls (methods, and the HTTP interface below)
    ``drop_all(code=None|int, reason)``, ``refuse_connections(seconds)`` (HTTP 503),
    ``blackhole_handshakes(enabled)`` (TCP accepted, HTTP request never answered),
    ``pause_feed(enabled)`` (no ticks and a gap in history, no disconnect),
    ``ignore_pings(enabled)``, ``delay_replies(seconds)`` (at 15 simulated seconds or more
    the reply is a ``Timeout`` error, as the real dispatcher does), ``drop_replies(True |
    False | count)`` (requests vanish unanswered), ``inject_error(code, count)`` (codes
    ``RateLimit``, ``WrongResponse``, ``CallError``, ``Timeout``), ``send_malformed_frame()``,
    ``deploy(close_after_s, code)`` (pushes ``site_status: "updating"`` with Deriv's
    message to ``website_status`` subscribers, then closes), ``restart(disconnect=True)``
    (all subscriptions invalidated, with or without disconnecting), ``set_site_status``,
    ``reset_faults()``. Counters: :meth:`DerivSimulator.stats`.

Control HTTP interface (same port, loopback peers only, others get 403)
    ``POST /control/<action>`` with an optional JSON object body, answered with JSON
    ``{"ok": true, "action": ..., "result": ...}`` or ``{"ok": false, "error": ...}`` and
    status 400 (bad body), 404 (unknown action), 405 (wrong method) or 413 (too large).
    ``GET /control/stats`` returns the counters. Actions and body fields::

        drop_all               {"code": int | null, "reason": str}
        refuse_connections     {"seconds": number}
        blackhole_handshakes   {"enabled": bool}
        pause_feed             {"enabled": bool}
        ignore_pings           {"enabled": bool}
        delay_replies          {"seconds": number}
        drop_replies           {"enabled": bool} or {"count": int}
        inject_error           {"code": "RateLimit" | "WrongResponse" | "CallError" | "Timeout", "count": int}
        send_malformed_frame   {}
        deploy                 {"close_after_s": number, "code": int | null}
        restart                {"disconnect": bool}
        set_site_status        {"site_status": "up" | "down" | "updating", "message": str | null}
        reset                  {}

    Example: ``curl -X POST localhost:8765/control/drop_all -d '{"code": 1011}'``.

Standalone
    ``python -m backend_core.deriv.simulator --host 127.0.0.1 --port 8765 [--time-scale N]
    [--token T ...] [--seed N]`` runs until Ctrl-C or SIGTERM and stops cleanly. It refuses
    a non-loopback ``--host`` unless ``--allow-remote`` is given.

Structure
    The decisions are pure and tested without sockets: :class:`SimulatedTime`,
    :class:`IdleDeadline`, :class:`RateWindow`, :class:`TickHistory`, :class:`Market`
    (price paths), :func:`history_window`, :func:`build_candles`, :class:`Session` (one
    connection's protocol state: validation, envelopes, subscriptions) and
    :func:`parse_control`. :class:`DerivSimulator` only moves frames between them and
    the sockets.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import dataclasses
import http
import ipaddress
import json
import logging
import math
import random
import re
import secrets
import signal
import sys
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, ClassVar, Final, Literal, Self
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from backend_core.clock import Clock, SystemClock
from backend_core.events import Tick

logger = logging.getLogger(__name__)

# --- protocol facts (simulated seconds) ---------------------------------------------

#: Section 5.1: ``stream_timeout => 120``.
IDLE_TIMEOUT_S: Final = 120.0
#: Section 1: a request without a result within 15 s gets ``Timeout``.
PROCESSING_TIMEOUT_S: Final = 15.0
#: Section 5.2: ping and time share one per-connection counter.
PING_TIME_LIMIT: Final = 10
PING_TIME_WINDOW_S: Final = 1.0
#: Section 3.4: count is clamped to 5000; the schema default is 1000.
MAX_HISTORY_COUNT: Final = 5000
DEFAULT_HISTORY_COUNT: Final = 1000
DAY_S: Final = 86_400
YEAR_S: Final = 365 * DAY_S
#: Section 3.4: the accepted candle sizes.
GRANULARITIES: Final = frozenset({60, 120, 180, 300, 600, 900, 1800, 3600, 7200, 14400, 28800, 86400})
#: Section 1: responses above this size are replaced by ResponseTooLarge.
MAX_RESPONSE_BYTES: Final = 600_000
#: Section 3.9 / 5.3: the banner pushed before a deploy.
DEPLOY_MESSAGE: Final = "We're updating our site in a short while. Some services may be temporarily unavailable."
#: Section 3.6.
FORGET_ALL_TYPES: Final = frozenset(
    {"ticks", "candles", "proposal", "proposal_open_contract", "balance", "transaction", "website_status"}
)
#: Section 1 / 4: what ``inject_error`` can produce, and their messages.
INJECTABLE_ERRORS: Final[Mapping[str, str]] = {
    "RateLimit": "You have reached the rate limit for {action}.",
    "WrongResponse": "Sorry, an error occurred while processing your request.",
    "CallError": "Sorry, an error occurred while processing your request.",
    "Timeout": "Timeout",
}
#: Section 1.
APP_ID_PATTERN: Final = re.compile(r"^(?!0)[0-9]{1,19}$")
SYMBOL_PATTERN: Final = re.compile(r"^\w{2,30}$")
SUBSCRIPTION_ID_PATTERN: Final = re.compile(r"^[\w-]{32,128}$")
TOKEN_PATTERN: Final = re.compile(r"^[\w\-]{1,128}$")
_KEY_PATTERN: Final = re.compile(r"^[A-Za-z0-9_-]{1,50}$")
# "A permissive character set" (section 1): printable text, no control characters
# other than tab and line breaks.
_INSANE_CHARS: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_MAX_SCALAR_CHARS: Final = 300
_END_PATTERN: Final = re.compile(r"^(latest|[0-9]{1,10})$")
_INT_TEXT: Final = re.compile(r"^-?[0-9]{1,18}$")

# --- bounds of this simulator (DESIGN.md rule 5) -------------------------------------

#: Open WebSocket connections at once; the next handshake gets 503. Far above what the
#: app opens (one upstream link), low enough that a runaway test cannot exhaust memory.
MAX_CONNECTIONS: Final = 1000
#: TCP connections still in the opening handshake (slow, blackholed or control
#: requests); beyond this new sockets are aborted at once.
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
#: Nesting depth of a request; deeper JSON fails the sanity check.
_MAX_REQUEST_DEPTH: Final = 16
#: Ticks generated in one feed step after a stall; a longer stall leaves a gap rather
#: than a burst of catch-up work.
MAX_CATCH_UP_S: Final = 600
#: Deploy closers and control actions running at once (each ends by itself; this caps
#: what a loop of control requests can pile up).
MAX_BACKGROUND_TASKS: Final = 1024
#: Control HTTP request head and body sizes.
CONTROL_MAX_HEAD_BYTES: Final = 16 * 1024
CONTROL_MAX_BODY_BYTES: Final = 64 * 1024
#: How long (clock seconds) ``stop()`` waits for polite closes before aborting sockets.
_STOP_CLOSE_TIMEOUT_S: Final = 2.0

#: What ``authorize`` accepts when no tokens are configured (a demo token, not a secret).
DEFAULT_ACCEPTED_TOKENS: Final = ("simulator-demo-token",)

# --- symbols (section 6) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """One synthetic index: section 6's facts plus the simulator's price model.

    ``pip`` is the pip value (active_symbols), ``pip_size`` the decimals of a quote
    (tick). ``start_price`` and ``volatility`` (annualised, e.g. 1.0 for Volatility 100)
    drive the random walk; they are illustrative.
    """

    symbol: str
    display_name: str
    pip: float
    pip_size: int
    interval_s: int
    start_price: float
    volatility: float


DEFAULT_SYMBOLS: Final[tuple[SymbolSpec, ...]] = (
    SymbolSpec("R_10", "Volatility 10 Index", 0.001, 3, 2, 6250.0, 0.10),
    SymbolSpec("R_25", "Volatility 25 Index", 0.001, 3, 2, 2480.0, 0.25),
    SymbolSpec("R_50", "Volatility 50 Index", 0.0001, 4, 2, 218.0926, 0.50),
    SymbolSpec("R_75", "Volatility 75 Index", 0.0001, 4, 2, 52000.0, 0.75),
    SymbolSpec("R_100", "Volatility 100 Index", 0.01, 2, 2, 1234.56, 1.00),
    SymbolSpec("1HZ10V", "Volatility 10 (1s) Index", 0.01, 2, 1, 8400.0, 0.10),
    SymbolSpec("1HZ25V", "Volatility 25 (1s) Index", 0.01, 2, 1, 640000.0, 0.25),
    SymbolSpec("1HZ50V", "Volatility 50 (1s) Index", 0.01, 2, 1, 190.0, 0.50),
    SymbolSpec("1HZ75V", "Volatility 75 (1s) Index", 0.01, 2, 1, 4100.0, 0.75),
    SymbolSpec("1HZ100V", "Volatility 100 (1s) Index", 0.01, 2, 1, 910.0, 1.00),
)

# --- pure: time --------------------------------------------------------------------


class SimulatedTime:
    """The simulator's "now": the clock's wall time at start, running ``time_scale`` x faster.

    Derived from the monotonic clock so it never jumps with the system clock.
    """

    __slots__ = ("_clock", "_mono_origin", "_origin", "time_scale")

    def __init__(self, clock: Clock, time_scale: float = 1.0) -> None:
        if not (math.isfinite(time_scale) and 0 < time_scale <= 10_000):
            raise ValueError("time_scale must be greater than 0 and at most 10000")
        self._clock = clock
        self.time_scale = time_scale
        self._origin = clock.wall()
        self._mono_origin = clock.monotonic()

    def now(self) -> float:
        """Simulated Unix seconds."""
        return self._origin + (self._clock.monotonic() - self._mono_origin) * self.time_scale

    def to_clock_seconds(self, simulated_s: float) -> float:
        """How long ``simulated_s`` lasts on the injected clock."""
        return simulated_s / self.time_scale


class IdleDeadline:
    """Section 5.1's inactivity timeout: restarted by every read or write.

    Times are clock seconds (the caller scales 120 simulated seconds).
    """

    __slots__ = ("last_activity_at", "timeout_s")

    def __init__(self, timeout_s: float, now: float) -> None:
        self.timeout_s = timeout_s
        self.last_activity_at = now

    def touch(self, now: float) -> None:
        self.last_activity_at = now

    def remaining(self, now: float) -> float:
        return self.last_activity_at + self.timeout_s - now

    def expired(self, now: float) -> bool:
        return self.remaining(now) <= 0


class RateWindow:
    """Section 5.2's ping/time limit: at most ``limit`` hits per fixed window.

    The window opens at the first hit after the previous one ended (like an expiring
    counter key), so memory is constant.
    """

    __slots__ = ("_count", "_window_started_at", "limit", "window_s")

    def __init__(self, limit: int = PING_TIME_LIMIT, window_s: float = PING_TIME_WINDOW_S) -> None:
        self.limit = limit
        self.window_s = window_s
        self._window_started_at = -math.inf
        self._count = 0

    def hit(self, now: float) -> bool:
        """Count one call at ``now``; False when it is over the limit."""
        if now >= self._window_started_at + self.window_s:
            self._window_started_at = now
            self._count = 0
        self._count += 1
        return self._count <= self.limit


# --- pure: prices --------------------------------------------------------------------


class TickHistory:
    """The ticks of one symbol, oldest first, keeping at most ``capacity`` of them.

    Two flat arrays (8 bytes per epoch and per quote) instead of tuples: 24 h of 1 s
    ticks is 86 400 entries, 1.4 MB here against ~10 MB as Python objects. Old entries
    are dropped in batches (amortised O(1)), so up to ``capacity * 5/4`` may be held.
    """

    __slots__ = ("_epochs", "_quotes", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._epochs: array[int] = array("q")
        self._quotes: array[float] = array("d")

    def __len__(self) -> int:
        return len(self._epochs)

    def append(self, epoch: int, quote: float) -> None:
        if self._epochs and epoch <= self._epochs[-1]:
            raise ValueError("epochs must increase")
        self._epochs.append(epoch)
        self._quotes.append(quote)
        excess = len(self._epochs) - self.capacity
        if excess > self.capacity // 4:
            del self._epochs[:excess]
            del self._quotes[:excess]

    def latest(self) -> tuple[int, float] | None:
        if not self._epochs:
            return None
        return self._epochs[-1], self._quotes[-1]

    def first_at_or_after(self, epoch: int) -> tuple[int, float] | None:
        skip = max(0, len(self._epochs) - self.capacity)
        index = bisect.bisect_left(self._epochs, epoch, lo=skip)
        if index >= len(self._epochs):
            return None
        return self._epochs[index], self._quotes[index]

    def window(self, start: int, end: int, count: int) -> tuple[list[int], list[float]]:
        """The latest ``count`` ticks with ``start <= epoch <= end``, ascending (section 3.4)."""
        skip = max(0, len(self._epochs) - self.capacity)
        lo = bisect.bisect_left(self._epochs, start, lo=skip)
        hi = bisect.bisect_right(self._epochs, end, lo=lo)
        lo = max(lo, hi - count)
        return self._epochs[lo:hi].tolist(), self._quotes[lo:hi].tolist()


def round_quote(value: float, pip_size: int) -> float:
    return round(value, pip_size)


def half_spread(quote: float, spec: SymbolSpec) -> float:
    """Half the bid/ask spread: 0.5 basis point of the price, at least one pip."""
    return max(spec.pip, round(abs(quote) * 5e-5, spec.pip_size))


class _PricePath:
    """A geometric random walk for one symbol, one step per grid epoch."""

    __slots__ = ("_price", "_rng", "_step_sigma", "spec")

    def __init__(self, spec: SymbolSpec, rng: random.Random) -> None:
        self.spec = spec
        self._rng = rng
        self._price = spec.start_price
        self._step_sigma = spec.volatility * math.sqrt(spec.interval_s / YEAR_S)

    def step(self) -> float:
        self._price *= math.exp(self._step_sigma * self._rng.gauss(0.0, 1.0))
        return round_quote(self._price, self.spec.pip_size)


class Market:
    """Every symbol's price path and history, shared by all connections (section 7.4).

    Ticks exist only on the grid: epochs divisible by the symbol's interval. The market
    is advanced explicitly (:meth:`advance_to`), so it is a pure function of the seed
    and the epochs it is asked for.
    """

    def __init__(
        self,
        specs: Iterable[SymbolSpec] = DEFAULT_SYMBOLS,
        *,
        start_epoch: int,
        seed: int | str | None = None,
        prefill_s: int = 3600,
        retention_s: int = DAY_S,
    ) -> None:
        self.specs: dict[str, SymbolSpec] = {}
        for spec in specs:
            if not SYMBOL_PATTERN.match(spec.symbol) or spec.interval_s < 1 or spec.pip_size < 0:
                raise ValueError(f"invalid symbol spec {spec!r}")
            self.specs[spec.symbol] = spec
        if not self.specs:
            raise ValueError("at least one symbol is needed")
        if seed is None:
            seed = secrets.randbits(64)
        self._paths = {s: _PricePath(spec, random.Random(f"{seed}:{s}")) for s, spec in self.specs.items()}
        self._histories = {s: TickHistory(max(1, retention_s // spec.interval_s)) for s, spec in self.specs.items()}
        self._latest: dict[str, Tick] = {}
        self._last_epoch = start_epoch - max(0, prefill_s)
        self.advance_to(start_epoch, catch_up_limit_s=max(0, prefill_s))

    @property
    def last_epoch(self) -> int:
        """The latest epoch the market has been advanced (or skipped) to."""
        return self._last_epoch

    def history(self, symbol: str) -> TickHistory:
        return self._histories[symbol]

    def latest(self, symbol: str) -> Tick | None:
        return self._latest.get(symbol)

    def next_due_epoch(self) -> int:
        """The first grid epoch after :attr:`last_epoch` for any symbol."""
        after = self._last_epoch
        return min(after + spec.interval_s - (after % spec.interval_s) for spec in self.specs.values())

    def skip_to(self, epoch: int) -> None:
        """Move on without generating ticks (a feed outage leaves a gap in history)."""
        self._last_epoch = max(self._last_epoch, epoch)

    def advance_to(self, epoch: int, *, catch_up_limit_s: int = MAX_CATCH_UP_S) -> list[Tick]:
        """Generate every grid tick in ``(last_epoch, epoch]``, oldest first.

        After a stall longer than ``catch_up_limit_s`` only the most recent part is
        generated, leaving a gap, so one step's work stays bounded.
        """
        if epoch <= self._last_epoch:
            return []
        first = max(self._last_epoch + 1, epoch - catch_up_limit_s + 1)
        out: list[Tick] = []
        for e in range(first, epoch + 1):
            for symbol, path in self._paths.items():
                spec = path.spec
                if e % spec.interval_s:
                    continue
                quote = path.step()
                spread = half_spread(quote, spec)
                tick = Tick(
                    symbol,
                    e,
                    quote,
                    spec.pip_size,
                    round_quote(quote - spread, spec.pip_size),
                    round_quote(quote + spread, spec.pip_size),
                )
                self._histories[symbol].append(e, quote)
                self._latest[symbol] = tick
                out.append(tick)
        self._last_epoch = epoch
        return out


@dataclass(slots=True)
class CandleState:
    """One candle being built; ``open_time = epoch - epoch % granularity`` (section 3.4)."""

    open_time: int
    open: float
    high: float
    low: float
    close: float
    epoch: int


def update_candle(candle: CandleState | None, epoch: int, quote: float, granularity: int) -> CandleState:
    """Fold one tick into the running candle, starting a new one at a bucket boundary."""
    open_time = epoch - epoch % granularity
    if candle is None or candle.open_time != open_time:
        return CandleState(open_time, quote, quote, quote, quote, epoch)
    candle.high = max(candle.high, quote)
    candle.low = min(candle.low, quote)
    candle.close = quote
    candle.epoch = epoch
    return candle


def build_candles(epochs: Sequence[int], quotes: Sequence[float], granularity: int) -> list[CandleState]:
    """Bucket ticks into candles, oldest first."""
    candles: list[CandleState] = []
    current: CandleState | None = None
    for epoch, quote in zip(epochs, quotes, strict=True):
        updated = update_candle(current, epoch, quote, granularity)
        if updated is not current:
            candles.append(updated)
        current = updated
    return candles


@dataclass(frozen=True, slots=True)
class HistoryWindow:
    """A resolved ``ticks_history`` request (section 3.4's server rules applied)."""

    start: int
    end: int
    count: int
    style: Literal["ticks", "candles"]
    granularity: int


@dataclass(frozen=True, slots=True)
class HistoryRefusal:
    code: str
    message: str


def history_window(params: Mapping[str, Any], now: float) -> HistoryWindow | HistoryRefusal:
    """Apply section 3.4's rules to validated ``ticks_history`` parameters.

    ``params`` holds the coerced values (``end`` a string, ``start``/``count``/
    ``granularity`` integers or absent, ``style`` a string or absent).
    """
    now_epoch = int(now)
    granularity = params.get("granularity")
    style = params.get("style")
    if style is None:
        style = "candles" if isinstance(granularity, int) and granularity > 0 else "ticks"
    if style not in ("ticks", "candles"):
        return HistoryRefusal("InvalidStyle", f"Style {style} invalid.")
    if style == "candles":
        if granularity is None:
            granularity = 60
        if granularity not in GRANULARITIES:
            return HistoryRefusal("InvalidGranularity", "Granularity is not valid")
    else:
        granularity = 0
    end_text = params["end"]
    end_given = end_text.isdigit()
    end = int(end_text) if end_given else now_epoch
    start_given = "start" in params
    if start_given and end_given and params["start"] > end:
        return HistoryRefusal("InvalidStartEnd", f"Start time {params['start']} must be before end time {end}")
    if end > now_epoch:
        end = now_epoch
    count = params.get("count", DEFAULT_HISTORY_COUNT)
    if count <= 0 or count > MAX_HISTORY_COUNT:
        count = MAX_HISTORY_COUNT
    if start_given:
        start = params["start"]
    elif style == "candles" and "count" in params:
        start = end - count * granularity
    else:
        start = end - DAY_S
    start = max(start, now_epoch - YEAR_S)
    return HistoryWindow(start, end, count, "candles" if style == "candles" else "ticks", granularity)


# --- pure: requests --------------------------------------------------------------------

#: The calls this simulator implements, in the order a method key is looked for.
ACTIONS: Final = (
    "ping",
    "time",
    "ticks",
    "ticks_history",
    "forget",
    "forget_all",
    "active_symbols",
    "authorize",
    "website_status",
)

_Check = Callable[[Any], tuple[Any, str | None]]


def _coerce_int(value: Any) -> int | None:
    # Section 2: string-to-number coercion, so "subscribe": "1" is accepted.
    if type(value) is int:
        return value
    if type(value) is str and _INT_TEXT.match(value):
        return int(value)
    return None


def _enum_int(*allowed: int) -> _Check:
    text = ", ".join(str(a) for a in allowed)

    def check(value: Any) -> tuple[Any, str | None]:
        coerced = _coerce_int(value)
        if coerced in allowed:
            return coerced, None
        return value, f"Not in enum list: {text}."

    return check


def _integer(minimum: int | None = None) -> _Check:
    def check(value: Any) -> tuple[Any, str | None]:
        coerced = _coerce_int(value)
        if coerced is None:
            return value, f"Expected integer - got {_json_type(value)}."
        if minimum is not None and coerced < minimum:
            return value, f"{coerced} < minimum({minimum})"
        return coerced, None

    return check


def _pattern(regex: re.Pattern[str]) -> _Check:
    def check(value: Any) -> tuple[Any, str | None]:
        if type(value) is not str:
            return value, f"Expected string - got {_json_type(value)}."
        if not regex.match(value):
            return value, f"String does not match {regex.pattern}."
        return value, None

    return check


def _enum_str(*allowed: str) -> _Check:
    text = ", ".join(allowed)

    def check(value: Any) -> tuple[Any, str | None]:
        if value in allowed and type(value) is str:
            return value, None
        return value, f"Not in enum list: {text}."

    return check


def _string() -> _Check:
    def check(value: Any) -> tuple[Any, str | None]:
        if type(value) is not str:
            return value, f"Expected string - got {_json_type(value)}."
        return value, None

    return check


def _one_or_list(item: _Check, max_items: int) -> _Check:
    def check(value: Any) -> tuple[Any, str | None]:
        if type(value) is list:
            if not 1 <= len(value) <= max_items:
                return value, f"Expected 1 to {max_items} items - got {len(value)}."
            out = []
            for element in value:
                coerced, error = item(element)
                if error:
                    return value, error
                out.append(coerced)
            return out, None
        return item(value)

    return check


def _object_value() -> _Check:
    def check(value: Any) -> tuple[Any, str | None]:
        if type(value) is not dict:
            return value, f"Expected object - got {_json_type(value)}."
        return value, None

    return check


def _end_value() -> _Check:
    def check(value: Any) -> tuple[Any, str | None]:
        if type(value) is int and value >= 0:
            value = str(value)
        if type(value) is not str or not _END_PATTERN.match(value):
            return value, f"String does not match {_END_PATTERN.pattern}."
        return value, None

    return check


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if type(value) is bool:
        return "boolean"
    if type(value) is int:
        return "integer"
    if type(value) is float:
        return "number"
    if type(value) is str:
        return "string"
    if type(value) is list:
        return "array"
    return "object"


_COMMON: Final[dict[str, tuple[_Check, bool]]] = {
    "req_id": (_integer(), False),
    "passthrough": (_object_value(), False),
}

#: Send schemas (section 3, S1): method key first; ``additionalProperties: false``.
SCHEMAS: Final[dict[str, dict[str, tuple[_Check, bool]]]] = {
    "ping": {"ping": (_enum_int(1), True)},
    "time": {"time": (_enum_int(1), True)},
    "ticks": {
        "ticks": (_one_or_list(_pattern(SYMBOL_PATTERN), 100), True),
        "subscribe": (_enum_int(1), False),
    },
    "ticks_history": {
        "ticks_history": (_pattern(SYMBOL_PATTERN), True),
        "end": (_end_value(), True),
        "start": (_integer(0), False),
        "count": (_integer(), False),
        "style": (_string(), False),
        "granularity": (_integer(), False),
        "adjust_start_time": (_enum_int(1), False),
        "subscribe": (_enum_int(1), False),
    },
    "forget": {"forget": (_pattern(SUBSCRIPTION_ID_PATTERN), True)},
    "forget_all": {"forget_all": (_one_or_list(_enum_str(*sorted(FORGET_ALL_TYPES)), len(FORGET_ALL_TYPES)), True)},
    "active_symbols": {
        "active_symbols": (_enum_str("brief", "full"), True),
        "product_type": (_enum_str("basic"), False),
        "landing_company": (_pattern(re.compile(r"^\w{1,30}$")), False),
        "landing_company_short": (_pattern(re.compile(r"^\w{1,30}$")), False),
    },
    "authorize": {
        "authorize": (_pattern(TOKEN_PATTERN), True),
        "add_to_login_history": (_enum_int(0, 1), False),
        "tokens": (_one_or_list(_pattern(TOKEN_PATTERN), 25), False),
    },
    "website_status": {
        "website_status": (_enum_int(1), True),
        "subscribe": (_enum_int(1), False),
    },
}


def sanity_check(value: Any, depth: int = 0) -> bool:
    """Section 1's sanity check: keys ``^[A-Za-z0-9_-]{1,50}$``, short printable scalars."""
    if depth > _MAX_REQUEST_DEPTH:
        return False
    if type(value) is dict:
        return all(_KEY_PATTERN.match(k) and sanity_check(v, depth + 1) for k, v in value.items())
    if type(value) is list:
        return all(sanity_check(v, depth + 1) for v in value)
    if type(value) is str:
        return len(value) <= _MAX_SCALAR_CHARS and not _INSANE_CHARS.search(value)
    if type(value) is float:
        return math.isfinite(value)
    if type(value) is int:
        return len(str(value)) <= _MAX_SCALAR_CHARS if abs(value) > 10**18 else True
    return True  # bool, null


def find_action(request: Mapping[str, Any]) -> str | None:
    """The method key of a request (section 2: exactly one is expected)."""
    for action in ACTIONS:
        if action in request:
            return action
    return None


def validate(action: str, request: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Check a request against its send schema.

    Returns the coerced parameters, per-field errors, and general errors (unknown
    properties); both empty means valid.
    """
    schema = SCHEMAS[action]
    params: dict[str, Any] = {}
    details: dict[str, str] = {}
    unknown = [key for key in request if key not in schema and key not in _COMMON]
    for name, (check, required) in (*schema.items(), *_COMMON.items()):
        if name not in request:
            if required:
                details[name] = "Missing property."
            continue
        coerced, error = check(request[name])
        if error:
            details[name] = error
        else:
            params[name] = coerced
    general = [f"Properties not allowed: {', '.join(unknown)}."] if unknown else []
    return params, details, general


def redact(request: Mapping[str, Any]) -> dict[str, Any]:
    """``echo_req`` with sensitive fields replaced (section 2: the authorize token)."""
    echo = dict(request)
    if "authorize" in echo:
        echo["authorize"] = "<not shown>"
    if "tokens" in echo:
        echo["tokens"] = "<not shown>"
    return echo


def new_subscription_id(bits: int) -> str:
    """A 36-character 8-4-4-4-12 hex id from 128 random bits (section 2)."""
    text = f"{bits & ((1 << 128) - 1):032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def error_msg_type(action: str) -> str:
    """The ``msg_type`` of backend errors (Timeout, WrongResponse, ...) for a call (section 4)."""
    return "tick" if action == "ticks" else action


def website_status_payload(site_status: str, message: str | None) -> dict[str, Any]:
    """Section 3.9's payload with the S7 values."""
    payload: dict[str, Any] = {
        "api_call_limits": {
            "max_proposal_subscription": {"applies_to": "subscribing to proposal concurrently", "max": 5},
            "max_requestes_general": {"applies_to": "rest of calls", "hourly": 14400, "minutely": 180},
            "max_requests_outcome": {"applies_to": "portfolio, statement and proposal", "hourly": 1500, "minutely": 25},
            "max_requests_pricing": {
                "applies_to": "proposal and proposal_open_contract",
                "hourly": 3600,
                "minutely": 80,
            },
        },
        "clients_country": "de",
        "currencies_config": {
            "USD": {
                "fractional_digits": 2,
                "is_deposit_suspended": 0,
                "is_suspended": 0,
                "is_withdrawal_suspended": 0,
                "name": "US Dollar",
                "stake_default": 10,
                "type": "fiat",
                "transfer_between_accounts": {"fees": {}, "limits": {"min": 1}},
            }
        },
        "site_status": site_status,
        "supported_languages": ["EN"],
        "terms_conditions_version": "Version 48 2019-05-10",
    }
    if message is not None:
        payload["message"] = message
    return payload


def authorize_payload() -> dict[str, Any]:
    """Section 3.8's shape; values illustrative. The token is never in it."""
    return {
        "account_list": [
            {
                "currency": "USD",
                "is_disabled": 0,
                "is_virtual": 1,
                "landing_company_name": "virtual",
                "loginid": "VRTC90000028",
            }
        ],
        "balance": 10000,
        "country": "za",
        "currency": "USD",
        "email": "test@site.com",
        "fullname": "",
        "is_virtual": 1,
        "landing_company_fullname": "Deriv Limited",
        "landing_company_name": "virtual",
        "local_currencies": {},
        "loginid": "VRTC90000028",
        "scopes": ["read", "trade"],
        "upgradeable_landing_companies": [],
        "user_id": 29,
    }


def active_symbols_payload(market: Market, kind: str, now: float) -> list[dict[str, Any]]:
    """Section 3.7: brief items, plus the ``full`` fields; sorted by display_name."""
    items = []
    ordered = sorted(market.specs.values(), key=lambda s: s.display_name)
    for order, spec in enumerate(ordered, start=1):
        item: dict[str, Any] = {
            "allow_forward_starting": 0,
            "display_name": spec.display_name,
            "display_order": order,
            "exchange_is_open": 1,
            "is_trading_suspended": 0,
            "market": "synthetic_index",
            "market_display_name": "Derived",
            "pip": spec.pip,
            "subgroup": "synthetics",
            "subgroup_display_name": "Synthetics",
            "submarket": "random_index",
            "submarket_display_name": "Continuous Indices",
            "symbol": spec.symbol,
            "symbol_type": "stockindex",
        }
        if kind == "full":
            latest = market.latest(spec.symbol)
            item.update(
                {
                    "delay_amount": 0,
                    "exchange_name": "RETAIL",
                    "intraday_interval_minutes": 1,
                    "quoted_currency_symbol": "",
                    "spot": latest.quote if latest else None,
                    "spot_age": str(max(0, int(now) - latest.epoch)) if latest else "",
                    "spot_percentage_change": f"{_percentage_change(market, spec.symbol):.2f}",
                    "spot_time": str(latest.epoch) if latest else "",
                }
            )
        items.append(item)
    return items


def _percentage_change(market: Market, symbol: str) -> float:
    history = market.history(symbol)
    latest = history.latest()
    first = history.first_at_or_after(latest[0] - DAY_S) if latest else None
    if latest is None or first is None or first[1] == 0:
        return 0.0
    return (latest[1] - first[1]) / first[1] * 100


def _dumps(frame: Mapping[str, Any]) -> str:
    return json.dumps(frame, separators=(",", ":"))


# --- pure: one connection's protocol state ------------------------------------------


@dataclass(frozen=True, slots=True)
class CallRequest:
    """A decoded request that passed the sanity check: what :meth:`Session.execute` runs."""

    action: str
    body: dict[str, Any]
    req_id: int | None
    passthrough: dict[str, Any] | None

    @property
    def echo(self) -> dict[str, Any]:
        return redact(self.body)


@dataclass(frozen=True, slots=True)
class CloseDirective:
    """Close the connection after sending the frames; ``code=None`` aborts the socket."""

    code: int | None
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Received:
    """What :meth:`Session.receive` decided about one incoming frame.

    ``label`` names the request for the counters: the action, or ``(malformed)``,
    ``(bad_request)``, ``(insane)`` or ``(unrecognised)``.
    """

    label: str
    frames: tuple[str, ...] = ()
    close: CloseDirective | None = None
    request: CallRequest | None = None


@dataclass(slots=True)
class _Subscription:
    id: str
    kind: Literal["tick", "ohlc", "website_status"]
    key: tuple[str, str, int, str]
    symbol: str
    granularity: int
    base: dict[str, Any]  # echo_req, req_id, passthrough of the request that started it
    candle: CandleState | None = None


@dataclass(slots=True)
class SiteState:
    """The server-wide ``website_status`` (shared by every session)."""

    status: str = "up"
    message: str | None = None


class Session:
    """One connection's protocol state: validation, envelopes, subscriptions, rate limit.

    Pure: it takes decoded frames and the simulated time, and returns encoded frames;
    the I/O shell sends them. Subscriptions are per connection (section 5.3) and bounded
    by their uniqueness key (symbol x stream type x granularity), at most
    ``symbols * 14 + 1``.
    """

    def __init__(
        self,
        market: Market,
        site: SiteState,
        *,
        accepted_tokens: Iterable[str] = (),
        rate_window: RateWindow | None = None,
        random_bits: Callable[[int], int] = secrets.randbits,
    ) -> None:
        self.market = market
        self.site = site
        self.accepted_tokens = frozenset(accepted_tokens)
        self.rate_window = rate_window or RateWindow()
        self._random_bits = random_bits
        self.authorized = False
        self._subs: dict[str, _Subscription] = {}
        self._keys: dict[tuple[str, str, int, str], str] = {}
        self._by_symbol: dict[str, list[_Subscription]] = {}

    # -- receiving ------------------------------------------------------------------

    def receive(self, raw: str | bytes, now: float) -> Received:
        """Decode and triage one frame (section 1), and apply the ping/time limit (5.2)."""
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            body = json.loads(text, parse_constant=_reject_json_constant)
        except (UnicodeDecodeError, ValueError, RecursionError):
            return Received("(malformed)", close=CloseDirective(1007, "malformed frame"))
        if type(body) is not dict:
            bad_request = {
                "msg_type": "error",
                "error": {"code": "BadRequest", "message": "The application sent an invalid request."},
            }
            return Received("(bad_request)", frames=(_dumps(bad_request),))
        req_id = _coerce_int(body.get("req_id"))
        passthrough = body.get("passthrough") if type(body.get("passthrough")) is dict else None
        if not sanity_check(body):
            request = CallRequest("", body, req_id, passthrough)
            frame = self._error_frame(
                request, "error", "SanityCheckFailed", "Parameters sanity check failed.", echo=redact(body)
            )
            return Received("(insane)", frames=(frame,))
        action = find_action(body)
        request = CallRequest(action or "", body, req_id, passthrough)
        if action is None:
            frame = self._error_frame(request, "error", "UnrecognisedRequest", "Unrecognised request")
            return Received("(unrecognised)", frames=(frame,))
        if action in ("ping", "time") and not self.rate_window.hit(now):
            frame = self._error_frame(request, action, "RateLimit", f"You have reached the rate limit for {action}.")
            return Received(action, frames=(frame,), close=CloseDirective(1008))
        return Received(action, request=request)

    def error_reply(self, request: CallRequest, code: str) -> str:
        """An injected or timeout error for ``request`` (sections 1 and 4)."""
        template = INJECTABLE_ERRORS[code]
        msg_type = request.action if code == "RateLimit" else error_msg_type(request.action)
        return self._error_frame(request, msg_type, code, template.format(action=request.action))

    # -- executing ------------------------------------------------------------------

    def execute(self, request: CallRequest, now: float) -> list[str]:
        """Run one call and return its reply frames."""
        params, details, general = validate(request.action, request.body)
        if details or general:
            fields = [*details, *general]
            return [
                self._error_frame(
                    request,
                    request.action,
                    "InputValidationFailed",
                    "Input validation failed: " + ", ".join(fields),
                    details=details or None,
                    echo=dict(request.body),  # section 2: this error echoes the raw request
                    req_id=params.get("req_id"),
                )
            ]
        handler = getattr(self, f"_call_{request.action}")
        frames: list[str] = handler(request, params, now)
        return [self._limit_size(request, f) for f in frames]

    def _call_ping(self, request: CallRequest, params: dict[str, Any], now: float) -> list[str]:
        return [self._reply(request, "ping", {"ping": "pong"})]

    def _call_time(self, request: CallRequest, params: dict[str, Any], now: float) -> list[str]:
        return [self._reply(request, "time", {"time": int(now)})]

    def _call_ticks(self, request: CallRequest, params: dict[str, Any], now: float) -> list[str]:
        # Section 3.3: always subscribes, one subscription per symbol, no acknowledgement.
        symbols = params["ticks"] if isinstance(params["ticks"], list) else [params["ticks"]]
        frames = []
        for symbol in symbols:
            if symbol not in self.market.specs:
                frames.append(self._error_frame(request, "tick", "InvalidSymbol", f"Symbol {symbol} invalid."))
                continue
            key = (symbol, "ticks", 0, "tick")
            if key in self._keys:
                frames.append(
                    self._error_frame(request, "tick", "AlreadySubscribed", f"You are already subscribed to {symbol}")
                )
                continue
            self._subscribe("tick", key, symbol, 0, request)
        return frames

    def _call_ticks_history(self, request: CallRequest, params: dict[str, Any], now: float) -> list[str]:
        symbol = params["ticks_history"]
        if symbol not in self.market.specs:
            return [self._error_frame(request, "ticks_history", "InvalidSymbol", f"Symbol {symbol} invalid.")]
        window = history_window(params, now)
        if isinstance(window, HistoryRefusal):
            return [self._error_frame(request, "ticks_history", window.code, window.message)]
        spec = self.market.specs[symbol]
        subscribe = params.get("subscribe") == 1
        key = (symbol, window.style, window.granularity, "ticks_history")
        if subscribe and key in self._keys:
            return [
                self._error_frame(
                    request, "ticks_history", "AlreadySubscribed", f"You are already subscribed to {symbol}"
                )
            ]
        history = self.market.history(symbol)
        if window.style == "ticks":
            epochs, quotes = history.window(window.start, window.end, window.count)
            payload: dict[str, Any] = {"history": {"prices": quotes, "times": epochs}, "pip_size": spec.pip_size}
            msg_type = "history"
        else:
            epochs, quotes = history.window(window.start, window.end, MAX_HISTORY_COUNT * DAY_S)
            candles = build_candles(epochs, quotes, window.granularity)[-window.count :]
            payload = {
                "candles": [
                    {"epoch": c.open_time, "open": c.open, "high": c.high, "low": c.low, "close": c.close}
                    for c in candles
                ],
                "pip_size": spec.pip_size,
            }
            msg_type = "candles"
        sub_id = None
        if subscribe:
            sub = self._subscribe(
                "tick" if window.style == "ticks" else "ohlc", key, symbol, window.granularity, request
            )
            sub_id = sub.id
            if sub.kind == "ohlc":
                sub.candle = self._current_candle(symbol, window.granularity)
        return [self._reply(request, msg_type, payload, sub_id=sub_id)]

    def _current_candle(self, symbol: str, granularity: int) -> CandleState | None:
        latest = self.market.history(symbol).latest()
        if latest is None:
            return None
        open_time = latest[0] - latest[0] % granularity
        epochs, quotes = self.market.history(symbol).window(open_time, latest[0], 10**9)
        candles = build_candles(epochs, quotes, granularity)
        return candles[-1] if candles else None

    def _call_forget(self, request: CallRequest, params: dict[str, Any], now: float) -> list[str]:
        stopped = self._unsubscribe(params["forget"])
        return [self._reply(request, "forget", {"forget": 1 if stopped else 0})]

    def _call_forget_all(self, request: CallRequest, params: dict[str, Any], now: float) -> list[str]:
        types = params["forget_all"] if isinstance(params["forget_all"], list) else [params["forget_all"]]
        kinds = {
            kind
            for t, kind in (("ticks", "tick"), ("candles", "ohlc"), ("website_status", "website_status"))
            if t in types
        }
        ids = [sub.id for sub in self._subs.values() if sub.kind in kinds]
        for sub_id in ids:
            self._unsubscribe(sub_id)
        return [self._reply(request, "forget_all", {"forget_all": ids})]

    def _call_active_symbols(self, request: CallRequest, params: dict[str, Any], now: float) -> list[str]:
        items = active_symbols_payload(self.market, params["active_symbols"], now)
        return [self._reply(request, "active_symbols", {"active_symbols": items})]

    def _call_authorize(self, request: CallRequest, params: dict[str, Any], now: float) -> list[str]:
        token = params["authorize"]
        if "tokens" in params and token != "MULTI":
            return [
                self._error_frame(
                    request, "authorize", "InvalidToken", "When using multiple tokens, set authorize to MULTI."
                )
            ]
        tokens = params.get("tokens", []) if token == "MULTI" else [token]
        if not tokens or any(t not in self.accepted_tokens for t in tokens):
            return [self._error_frame(request, "authorize", "InvalidToken", "The token is invalid.")]
        self.authorized = True
        return [self._reply(request, "authorize", {"authorize": authorize_payload()})]

    def _call_website_status(self, request: CallRequest, params: dict[str, Any], now: float) -> list[str]:
        sub_id = None
        if params.get("subscribe") == 1:
            key = ("", "website_status", 0, "website_status")
            if key in self._keys:
                return [
                    self._error_frame(
                        request, "website_status", "AlreadySubscribed", "You are already subscribed to website_status"
                    )
                ]
            sub_id = self._subscribe("website_status", key, "", 0, request).id
        payload = website_status_payload(self.site.status, self.site.message)
        return [self._reply(request, "website_status", {"website_status": payload}, sub_id=sub_id)]

    # -- streams --------------------------------------------------------------------

    def on_tick(self, tick: Tick) -> list[str]:
        """The stream frames this connection gets for one published tick."""
        subs = self._by_symbol.get(tick.symbol)
        if not subs:
            return []
        frames = []
        for sub in subs:
            if sub.kind == "tick":
                body: dict[str, Any] = {
                    "ask": tick.ask,
                    "bid": tick.bid,
                    "epoch": tick.epoch,
                    "id": sub.id,
                    "pip_size": tick.pip_size,
                    "quote": tick.quote,
                    "symbol": tick.symbol,
                }
                frames.append(_dumps({**sub.base, "msg_type": "tick", "subscription": {"id": sub.id}, "tick": body}))
            else:
                sub.candle = update_candle(sub.candle, tick.epoch, tick.quote, sub.granularity)
                c, pip = sub.candle, tick.pip_size
                body = {
                    "close": f"{c.close:.{pip}f}",
                    "epoch": tick.epoch,
                    "granularity": sub.granularity,
                    "high": f"{c.high:.{pip}f}",
                    "id": sub.id,
                    "low": f"{c.low:.{pip}f}",
                    "open": f"{c.open:.{pip}f}",
                    "open_time": c.open_time,
                    "pip_size": pip,
                    "symbol": tick.symbol,
                }
                frames.append(_dumps({**sub.base, "msg_type": "ohlc", "subscription": {"id": sub.id}, "ohlc": body}))
        return frames

    def on_site_status(self) -> list[str]:
        """The pushed ``website_status`` update for a subscriber (section 3.9)."""
        frames = []
        for sub in self._subs.values():
            if sub.kind == "website_status":
                payload = website_status_payload(self.site.status, self.site.message)
                frame = {**sub.base, "msg_type": "website_status", "subscription": {"id": sub.id}}
                frame["website_status"] = payload
                frames.append(_dumps(frame))
        return frames

    def forget_everything(self) -> list[str]:
        """Drop every subscription silently (a backend restart); returns the ids."""
        ids = list(self._subs)
        for sub_id in ids:
            self._unsubscribe(sub_id)
        return ids

    @property
    def subscription_count(self) -> int:
        return len(self._subs)

    def subscription_ids(self) -> list[str]:
        return list(self._subs)

    # -- helpers --------------------------------------------------------------------

    def _subscribe(
        self,
        kind: Literal["tick", "ohlc", "website_status"],
        key: tuple[str, str, int, str],
        symbol: str,
        granularity: int,
        request: CallRequest,
    ) -> _Subscription:
        sub_id = new_subscription_id(self._random_bits(128))
        while sub_id in self._subs:  # pragma: no cover - 128 random bits
            sub_id = new_subscription_id(self._random_bits(128))
        base: dict[str, Any] = {"echo_req": request.echo}
        if request.req_id is not None:
            base["req_id"] = request.req_id
        if request.passthrough is not None:
            base["passthrough"] = request.passthrough
        sub = _Subscription(sub_id, kind, key, symbol, granularity, base)
        self._subs[sub_id] = sub
        self._keys[key] = sub_id
        if kind != "website_status":
            self._by_symbol.setdefault(symbol, []).append(sub)
        return sub

    def _unsubscribe(self, sub_id: str) -> bool:
        sub = self._subs.pop(sub_id, None)
        if sub is None:
            return False
        self._keys.pop(sub.key, None)
        subs = self._by_symbol.get(sub.symbol)
        if subs is not None and sub in subs:
            subs.remove(sub)
            if not subs:
                del self._by_symbol[sub.symbol]
        return True

    def _reply(
        self, request: CallRequest, msg_type: str, payload: Mapping[str, Any], *, sub_id: str | None = None
    ) -> str:
        frame: dict[str, Any] = {"echo_req": request.echo, "msg_type": msg_type, **payload}
        if request.req_id is not None:
            frame["req_id"] = request.req_id
        if request.passthrough is not None:
            frame["passthrough"] = request.passthrough
        if sub_id is not None:
            frame["subscription"] = {"id": sub_id}
        return _dumps(frame)

    def _error_frame(
        self,
        request: CallRequest,
        msg_type: str,
        code: str,
        message: str,
        *,
        details: Mapping[str, Any] | None = None,
        echo: dict[str, Any] | None = None,
        req_id: int | None = None,
    ) -> str:
        error: dict[str, Any] = {"code": code, "message": message}
        if details:
            error["details"] = dict(details)
        frame: dict[str, Any] = {
            "echo_req": request.echo if echo is None else echo,
            "error": error,
            "msg_type": msg_type,
        }
        rid = request.req_id if req_id is None else req_id
        if rid is not None:
            frame["req_id"] = rid
        if request.passthrough is not None:
            frame["passthrough"] = request.passthrough
        return _dumps(frame)

    def _limit_size(self, request: CallRequest, frame: str) -> str:
        if len(frame) <= MAX_RESPONSE_BYTES:
            return frame
        return self._error_frame(request, "error", "ResponseTooLarge", "Response too large.")


def _reject_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# --- pure: control interface ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ControlCommand:
    action: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ControlRejection:
    status: int
    error: str


_CONTROL_FIELDS: Final[dict[str, dict[str, str]]] = {
    "drop_all": {"code": "close_code?", "reason": "reason"},
    "refuse_connections": {"seconds": "seconds"},
    "blackhole_handshakes": {"enabled": "bool"},
    "pause_feed": {"enabled": "bool"},
    "ignore_pings": {"enabled": "bool"},
    "delay_replies": {"seconds": "seconds"},
    "drop_replies": {"enabled": "bool", "count": "count"},
    "inject_error": {"code": "error_code", "count": "count"},
    "send_malformed_frame": {},
    "deploy": {"close_after_s": "seconds", "code": "close_code?"},
    "restart": {"disconnect": "bool"},
    "set_site_status": {"site_status": "site_status", "message": "message?"},
    "reset": {},
    "stats": {},
}


def valid_close_code(code: int) -> bool:
    """Codes an endpoint may send in a close frame (RFC 6455 7.4)."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or 3000 <= code <= 4999


def _control_value(kind: str, value: Any) -> tuple[Any, str | None]:
    optional = kind.endswith("?")
    kind = kind.rstrip("?")
    if value is None and optional:
        return None, None
    if kind == "bool":
        return value, None if type(value) is bool else "must be true or false"
    if kind == "seconds":
        ok = type(value) in (int, float) and math.isfinite(value) and 0 <= value <= DAY_S
        return float(value) if ok else value, None if ok else f"must be a number of seconds from 0 to {DAY_S}"
    if kind == "count":
        ok = type(value) is int and 0 <= value <= 1_000_000
        return value, None if ok else "must be a whole number from 0 to 1000000"
    if kind == "close_code":
        ok = type(value) is int and valid_close_code(value)
        return value, None if ok else "must be a valid close code (1000-1003, 1007-1014, 3000-4999) or null"
    if kind == "reason":
        ok = type(value) is str and len(value.encode()) <= 123
        return value, None if ok else "must be a string of at most 123 bytes"
    if kind == "error_code":
        ok = value in INJECTABLE_ERRORS
        return value, None if ok else f"must be one of {', '.join(INJECTABLE_ERRORS)}"
    if kind == "site_status":
        ok = value in ("up", "down", "updating")
        return value, None if ok else "must be up, down or updating"
    if kind == "message":
        ok = type(value) is str and len(value) <= 300
        return value, None if ok else "must be a string of at most 300 characters or null"
    raise AssertionError(kind)  # pragma: no cover


def parse_control(method: str, path: str, body: bytes) -> ControlCommand | ControlRejection:
    """Validate one control request (hostile input: every field is checked)."""
    parts = urlsplit(path).path.split("/")
    if len(parts) != 3 or parts[1] != "control":
        return ControlRejection(404, "expected /control/<action>")
    action = parts[2]
    fields = _CONTROL_FIELDS.get(action)
    if fields is None:
        return ControlRejection(404, f"unknown action {action!r}; known: {', '.join(sorted(_CONTROL_FIELDS))}")
    expected_method = "GET" if action == "stats" else "POST"
    if method != expected_method:
        return ControlRejection(405, f"{action} expects {expected_method}")
    data: Any = {}
    if body.strip():
        try:
            data = json.loads(body.decode("utf-8"), parse_constant=_reject_json_constant)
        except (UnicodeDecodeError, ValueError, RecursionError):
            return ControlRejection(400, "body is not valid JSON")
    if type(data) is not dict:
        return ControlRejection(400, "body must be a JSON object")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        return ControlRejection(400, f"unknown field(s) {', '.join(unknown)} for {action}")
    params: dict[str, Any] = {}
    for name, kind in fields.items():
        if name not in data:
            continue
        value, error = _control_value(kind, data[name])
        if error:
            return ControlRejection(400, f"{name} {error}")
        params[name] = value
    required = {
        "refuse_connections": ("seconds",),
        "blackhole_handshakes": ("enabled",),
        "pause_feed": ("enabled",),
        "ignore_pings": ("enabled",),
        "delay_replies": ("seconds",),
        "set_site_status": ("site_status",),
    }.get(action, ())
    missing = [name for name in required if name not in params]
    if missing:
        return ControlRejection(400, f"missing field(s) {', '.join(missing)} for {action}")
    if action == "drop_replies" and "enabled" in params and "count" in params:
        return ControlRejection(400, "give either enabled or count")
    return ControlCommand(action, params)


@dataclass(frozen=True, slots=True)
class HttpHead:
    method: str
    target: str
    content_length: int


def parse_http_head(head: bytes) -> HttpHead | ControlRejection:
    """Parse a request line and headers (up to the blank line) of a control request."""
    try:
        text = head.decode("ascii")
    except UnicodeDecodeError:
        return ControlRejection(400, "request head is not ASCII")
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return ControlRejection(400, "bad request line")
    length = 0
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            return ControlRejection(400, "bad header line")
        lowered = name.strip().lower()
        if lowered == "transfer-encoding":
            return ControlRejection(411, "send the body with Content-Length")
        if lowered == "content-length":
            value = value.strip()
            if not value.isdigit() or len(value) > 9:
                return ControlRejection(400, "bad Content-Length")
            length = int(value)
    if length > CONTROL_MAX_BODY_BYTES:
        return ControlRejection(413, f"body larger than {CONTROL_MAX_BODY_BYTES} bytes")
    return HttpHead(parts[0], parts[1], length)


def is_control_request_line(line: bytes) -> bool:
    """Whether the first line of a connection targets ``/control/`` (intercepted before websockets)."""
    parts = line.split(b" ", 2)
    return len(parts) == 3 and (parts[1] == b"/control" or parts[1].startswith(b"/control/"))


def is_loopback_peer(peername: Any) -> bool:
    if not isinstance(peername, tuple) or not peername:
        return False
    try:
        return ipaddress.ip_address(str(peername[0]).split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def is_loopback_host(host: str) -> bool:
    """Whether binding ``host`` keeps the server local (``localhost`` or a loopback address)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _http_response(status: int, body: Mapping[str, Any]) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    phrase = http.HTTPStatus(status).phrase
    head = (
        f"HTTP/1.1 {status} {phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + payload


# --- I/O shell ------------------------------------------------------------------------


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
    """A websockets server connection that tracks activity and intercepts /control/.

    * Every read and write restarts the idle deadline (section 5.1: Mojo's stream
      timeout restarts on each successful read or write, handshake included).
    * A connection whose first line targets ``/control/`` is answered here: websockets'
      HTTP parser refuses request bodies, and the control interface takes JSON bodies.
    """

    simulator: ClassVar[DerivSimulator]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        sim = self.simulator
        self.idle = IdleDeadline(sim._idle_timeout_clock_s, sim._clock.monotonic())
        self._first_line: bytearray | None = bytearray()
        self._control_buffer: bytearray | None = None
        self._control_done = False
        self.is_control = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.simulator._on_tcp_open(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self.simulator._on_tcp_closed(self)

    def data_received(self, data: bytes) -> None:
        self.idle.touch(self.simulator._clock.monotonic())
        if self._first_line is not None:
            self._first_line += data
            if b"\n" not in self._first_line and len(self._first_line) < CONTROL_MAX_HEAD_BYTES:
                return  # wait for the request line before deciding who handles it
            buffered = bytes(self._first_line)
            self._first_line = None
            if is_control_request_line(buffered.split(b"\n", 1)[0].rstrip(b"\r")):
                self.is_control = True
                self._control_buffer = bytearray()
                self._feed_control(buffered)
                return
            data = buffered
        if self._control_buffer is not None:
            self._feed_control(data)
            return
        super().data_received(data)

    def send_data(self) -> None:
        self.idle.touch(self.simulator._clock.monotonic())
        super().send_data()

    async def handshake(self, *args: Any, **kwargs: Any) -> None:
        await self.simulator._await_request(self)
        await super().handshake(*args, **kwargs)

    def _feed_control(self, data: bytes) -> None:
        if self._control_done or self._control_buffer is None:
            return
        if not is_loopback_peer(self.transport.get_extra_info("peername")):
            self._answer_control(403, {"ok": False, "error": "the control interface answers loopback peers only"})
            return
        self._control_buffer += data
        head_end = self._control_buffer.find(b"\r\n\r\n")
        if head_end < 0:
            if len(self._control_buffer) > CONTROL_MAX_HEAD_BYTES:
                self._answer_control(431, {"ok": False, "error": "request head too large"})
            return
        head = parse_http_head(bytes(self._control_buffer[:head_end]))
        if isinstance(head, ControlRejection):
            self._answer_control(head.status, {"ok": False, "error": head.error})
            return
        body = bytes(self._control_buffer[head_end + 4 :])
        if len(body) < head.content_length:
            return
        self._control_done = True
        command = parse_control(head.method, head.target, body[: head.content_length])
        if isinstance(command, ControlRejection):
            self._answer_control(command.status, {"ok": False, "error": command.error})
            return
        try:
            self.simulator._spawn(self._run_control(command))
        except RuntimeError as exc:
            self._answer_control(503, {"ok": False, "error": str(exc)})

    async def _run_control(self, command: ControlCommand) -> None:
        try:
            result = await self.simulator._run_control(command)
        except Exception as exc:  # a bug must not leak a traceback to the client
            logger.exception("control action %s failed", command.action)
            self._answer_control(500, {"ok": False, "error": f"{command.action} failed: {type(exc).__name__}"})
            return
        self._answer_control(200, {"ok": True, "action": command.action, "result": result})

    def _answer_control(self, status: int, body: Mapping[str, Any]) -> None:
        self._control_done = True
        self._control_buffer = None
        if not self.transport.is_closing():
            self.transport.write(_http_response(status, body))
            self.transport.close()


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


class DerivSimulator:
    """The simulator server. See the module docstring for behaviour and controls.

    ``clock`` drives every sleep and deadline; ``time_scale`` speeds simulated time up;
    ``accepted_tokens`` are the tokens ``authorize`` accepts (None: just
    :data:`DEFAULT_ACCEPTED_TOKENS`); ``symbols`` defaults to
    section 6's volatility indices; ``seed`` makes price paths reproducible;
    ``history_prefill_s`` is how much simulated history exists at start.
    """

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
    ) -> None:
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
        self._idle_timeout_clock_s = self._time.to_clock_seconds(IDLE_TIMEOUT_S)
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

        # Faults.
        self._refuse_until = -math.inf
        self._feed_paused = False
        self._ignore_pings = False
        self._delay_s = 0.0
        self._drop_all_replies = False
        self._drop_count = 0
        self._inject_code = "RateLimit"
        self._inject_count = 0

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
        )
        self._port = self._server.sockets[0].getsockname()[1]
        self._feed_task = asyncio.create_task(self._feed_loop(), name="deriv-simulator-feed")
        logger.info("Deriv simulator listening on %s (time_scale=%s)", self.url, self.time_scale)

    async def stop(self) -> None:
        """Close every connection, stop every task; idempotent."""
        if self._server is None:
            return
        self._stopping = True
        self._unblackholed.set()  # release held handshakes; they get 503
        server, self._server = self._server, None
        tasks = [t for t in (self._feed_task, *self._background) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._feed_task = None
        self._background.clear()
        for conn in list(self._tcp):
            # Sockets still waiting for their HTTP request (or a cancelled control
            # action) would hold the close; those with a request are answered 503.
            if conn.protocol.state is State.CONNECTING and (conn.request is None or conn.is_control):
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
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the simulator is not started")
        return self._port

    @property
    def url(self) -> str:
        """``ws://host:port/websockets/v3`` (add ``?app_id=N``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}/websockets/v3"

    @property
    def control_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/control"

    def now(self) -> float:
        """Simulated Unix seconds."""
        return self._time.now()

    # -- counters -------------------------------------------------------------------

    @property
    def connection_count(self) -> int:
        return len(self._clients)

    @property
    def connections_accepted_total(self) -> int:
        return self._accepted_total

    @property
    def handshake_attempts(self) -> int:
        return self._handshake_attempts

    @property
    def requests_by_type(self) -> dict[str, int]:
        return dict(self._requests)

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
            feed_paused=self._feed_paused,
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
        self._refuse_until = self._clock.monotonic() + seconds if seconds > 0 else -math.inf

    def blackhole_handshakes(self, enabled: bool) -> None:
        """Accept TCP but never answer the HTTP upgrade while enabled (held until disabled or stop)."""
        if enabled:
            self._unblackholed.clear()
        else:
            self._unblackholed.set()

    def pause_feed(self, enabled: bool) -> None:
        """No ticks at all while enabled (and a gap in history); connections stay open."""
        self._feed_paused = enabled

    def ignore_pings(self, enabled: bool) -> None:
        """Leave ``ping`` requests unanswered while enabled."""
        self._ignore_pings = enabled

    def delay_replies(self, seconds: float) -> None:
        """Answer each request ``seconds`` (clock) late; at 15 simulated s or more the answer is ``Timeout``."""
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError("seconds must be a non-negative number")
        self._delay_s = seconds

    def drop_replies(self, enabled_or_count: bool | int) -> None:
        """Drop requests unanswered: all while True, none when False, or the next ``count``."""
        if isinstance(enabled_or_count, bool):
            self._drop_all_replies = enabled_or_count
            self._drop_count = 0
        elif enabled_or_count >= 0:
            self._drop_all_replies = False
            self._drop_count = enabled_or_count
        else:
            raise ValueError("count must not be negative")

    def inject_error(self, code: str = "RateLimit", count: int = 1) -> None:
        """Answer the next ``count`` requests (any connection) with error ``code``."""
        if code not in INJECTABLE_ERRORS:
            raise ValueError(f"code must be one of {', '.join(INJECTABLE_ERRORS)}")
        if count < 0:
            raise ValueError("count must not be negative")
        self._inject_code = code
        self._inject_count = count

    async def send_malformed_frame(self) -> int:
        """Send a text frame that is not JSON to every client."""
        clients = list(self._clients)
        for client in clients:
            self._enqueue(client, '{"msg_type": "tick", "tick": {')
        return len(clients)

    async def set_site_status(self, site_status: str, message: str | None = None) -> None:
        """Change ``website_status`` and push it to subscribers."""
        if site_status not in ("up", "down", "updating"):
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
        self._refuse_until = -math.inf
        self._unblackholed.set()
        self._feed_paused = False
        self._ignore_pings = False
        self._delay_s = 0.0
        self._drop_all_replies = False
        self._drop_count = 0
        self._inject_count = 0

    async def _run_control(self, command: ControlCommand) -> Any:
        p = command.params
        action = command.action
        if action == "drop_all":
            return {"dropped": await self.drop_all(p.get("code"), p.get("reason", ""))}
        if action == "refuse_connections":
            self.refuse_connections(p["seconds"])
        elif action == "blackhole_handshakes":
            self.blackhole_handshakes(p["enabled"])
        elif action == "pause_feed":
            self.pause_feed(p["enabled"])
        elif action == "ignore_pings":
            self.ignore_pings(p["enabled"])
        elif action == "delay_replies":
            self.delay_replies(p["seconds"])
        elif action == "drop_replies":
            self.drop_replies(p["count"] if "count" in p else p.get("enabled", True))
        elif action == "inject_error":
            self.inject_error(p.get("code", "RateLimit"), p.get("count", 1))
        elif action == "send_malformed_frame":
            return {"clients": await self.send_malformed_frame()}
        elif action == "deploy":
            await self.deploy(p.get("close_after_s", 1.0), p.get("code", 1001))
        elif action == "restart":
            await self.restart(p.get("disconnect", True))
        elif action == "set_site_status":
            await self.set_site_status(p["site_status"], p.get("message"))
        elif action == "reset":
            self.reset_faults()
        return self.stats().to_dict()

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
            if conn.is_control:
                # Answered and closed by the control task (bounded by its own timeouts).
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                return
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
        if self._clock.monotonic() < self._refuse_until:
            return self._refuse(connection, 503, "Service Unavailable")
        target = urlsplit(request.path)
        if target.path != "/websockets/v3":
            return self._refuse(connection, 404, "Not Found")
        app_ids = parse_qs(target.query).get("app_id", [])
        app_id = app_ids[0] if len(app_ids) == 1 else ""
        if not APP_ID_PATTERN.match(app_id):
            return self._refuse(connection, 401, '{"error":"InvalidAppID"}', json_body=True)
        if app_id in self.blocked_app_ids:
            return self._refuse(connection, 403, '{"error":"AccessRestricted"}', json_body=True)
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
        if request.action == "ping" and self._ignore_pings:
            return
        if self._drop_all_replies:
            return
        if self._drop_count > 0:
            self._drop_count -= 1
            return
        if self._inject_count > 0:
            self._inject_count -= 1
            self._enqueue(client, client.session.error_reply(request, self._inject_code))
            return
        if self._delay_s > 0:
            if len(client.delayed) >= MAX_DELAYED_REQUESTS:
                self._enqueue(client, client.session.error_reply(request, "Timeout"))
                return
            task = asyncio.create_task(self._delayed_reply(client, request, self._delay_s))
            client.delayed.add(task)
            task.add_done_callback(client.delayed.discard)
            return
        for frame in client.session.execute(request, self._time.now()):
            self._enqueue(client, frame)

    async def _delayed_reply(self, client: _Client, request: CallRequest, delay_s: float) -> None:
        timeout_s = self._time.to_clock_seconds(PROCESSING_TIMEOUT_S)
        if delay_s >= timeout_s:
            await self._clock.sleep(timeout_s)
            self._enqueue(client, client.session.error_reply(request, "Timeout"))
            return
        await self._clock.sleep(delay_s)
        for frame in client.session.execute(request, self._time.now()):
            self._enqueue(client, frame)

    def _enqueue(self, client: _Client, item: str | CloseDirective) -> None:
        try:
            client.outbound.put_nowait(item)
        except asyncio.QueueFull:
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
            if self._feed_paused:
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


# --- standalone --------------------------------------------------------------------------


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backend_core.deriv.simulator",
        description="Run the local Deriv v3 WebSocket simulator until Ctrl-C or SIGTERM.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (loopback unless --allow-remote)")
    parser.add_argument("--port", type=int, default=8765, help="port to bind (0: any free port)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="simulated seconds per real second")
    parser.add_argument("--token", action="append", default=[], help="a token authorize accepts (repeatable)")
    parser.add_argument("--seed", default=None, help="seed for reproducible price paths")
    parser.add_argument("--allow-remote", action="store_true", help="allow binding a non-loopback address")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


async def _run(args: argparse.Namespace) -> None:
    tokens = args.token or None
    simulator = DerivSimulator(args.host, args.port, time_scale=args.time_scale, accepted_tokens=tokens, seed=args.seed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with simulator:
        print(f"Deriv simulator on {simulator.url}?app_id=1089  control: {simulator.control_url}/<action>", flush=True)
        await stop.wait()
    print("Deriv simulator stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.allow_remote and not is_loopback_host(args.host):
        print(f"refusing to bind non-loopback host {args.host!r}; pass --allow-remote to do it", file=sys.stderr)
        return 2
    if not 0 <= args.port <= 65535:
        print(f"invalid port {args.port}", file=sys.stderr)
        return 2
    if not (math.isfinite(args.time_scale) and 0 < args.time_scale <= 10_000):
        print("--time-scale must be greater than 0 and at most 10000", file=sys.stderr)
        return 2
    try:
        asyncio.run(_run(args))
    except OSError as exc:
        print(f"cannot start the simulator: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
