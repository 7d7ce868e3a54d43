"""The Deriv WebSocket API v3 frame parser and its messages, with no I/O.

The other half of the codec in :mod:`backend_core.deriv.protocol` (which builds the
requests). Section numbers refer to ``shared/deriv-protocol.md``.

Frames (section 2, "Response")
    :func:`parse` turns every incoming frame into one immutable message. It never
    raises: a frame that is not UTF-8, not JSON, not an object, has no ``msg_type``, or
    has a payload of the wrong shape becomes a :class:`ProtocolFrameError` carrying a
    :class:`~backend_core.errors.ProtocolError`. A frame with an ``error`` object is an
    :class:`ApiError` (section 4), whatever its ``msg_type``. Valid frames of types this
    codec does not model become :class:`UnknownMessage`.

    ============================  ==============================  ==========
    ``msg_type``                  message class                   section
    ============================  ==============================  ==========
    ``tick``                      :class:`TickMessage`            3.3
    ``history``                   :class:`History`                3.4
    ``candles``                   :class:`Candles`                3.4
    ``ohlc``                      :class:`Ohlc`                   3.4
    ``ping``                      :class:`Pong`                   3.1
    ``time``                      :class:`Time`                   3.2
    ``forget``                    :class:`Forget`                 3.5
    ``forget_all``                :class:`ForgetAll`              3.6
    ``active_symbols``            :class:`ActiveSymbols`          3.7
    ``authorize``                 :class:`Authorize`              3.8
    ``website_status``            :class:`WebsiteStatus`          3.9
    any, with ``error``           :class:`ApiError`               4
    any other                     :class:`UnknownMessage`
    (unparseable)                 :class:`ProtocolFrameError`
    ============================  ==============================  ==========

Every message has ``req_id`` (``int | None``: absent on frames of requests sent
without one) and ``msg_type``. Stream frames carry ``subscription_id`` (section 2:
``subscription.id``) and repeat the ``req_id`` of the request that started the stream.

The tick path is the hot one (a benchmark, ``bench/codec_bench.py``, compares it with
bare ``json.loads``): one decode plus direct dict access and exact ``type`` checks.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from itertools import repeat
from typing import Any, ClassVar, Final, TypeAlias

from backend_core.deriv.protocol import clip_code, clip_text
from backend_core.errors import DerivAPIError, ProtocolError
from backend_core.events import Tick

__all__ = [
    "ActiveSymbol",
    "ActiveSymbols",
    "ApiError",
    "Authorize",
    "Candle",
    "Candles",
    "Forget",
    "ForgetAll",
    "History",
    "Message",
    "Ohlc",
    "Pong",
    "ProtocolFrameError",
    "TickMessage",
    "Time",
    "UnknownMessage",
    "WebsiteStatus",
    "parse",
]


@dataclass(frozen=True, slots=True)
class TickMessage:
    """A ``tick`` stream frame (section 3.3), from ``ticks`` or ``ticks_history`` with subscribe.

    ``tick`` is the :class:`backend_core.events.Tick` the manager publishes as is.
    """

    msg_type: ClassVar[str] = "tick"
    tick: Tick
    subscription_id: str | None
    req_id: int | None = None


@dataclass(frozen=True, slots=True)
class History:
    """A ``history`` reply to ``ticks_history`` with style ``ticks`` (section 3.4).

    ``prices[i]`` was quoted at ``times[i]``, ascending. ``symbol`` comes from
    ``echo_req`` (the frame itself does not name it) and is ``None`` if that is missing.
    """

    msg_type: ClassVar[str] = "history"
    prices: tuple[float, ...]
    times: tuple[int, ...]
    pip_size: int | None
    symbol: str | None = None
    subscription_id: str | None = None
    req_id: int | None = None

    def to_ticks(self) -> tuple[Tick, ...]:
        """The history as backfilled :class:`Tick` values (no bid/ask, section 3.4)."""
        if self.symbol is None or self.pip_size is None:
            return ()
        n = len(self.times)
        if len(self.prices) != n:
            raise ValueError("history prices and times differ in length")
        # Tick(symbol, epoch, quote, pip_size, bid=None, ask=None, backfill=True), the loop in C.
        symbol, pip_size, bid, ask = repeat(self.symbol, n), repeat(self.pip_size, n), repeat(None), repeat(None)
        return tuple(map(Tick, symbol, self.times, self.prices, pip_size, bid, ask, repeat(True)))


@dataclass(frozen=True, slots=True)
class Candle:
    """One candle of a ``candles`` reply; ``epoch`` is the candle's open time (section 3.4)."""

    epoch: int
    open: float
    high: float
    low: float
    close: float


@dataclass(frozen=True, slots=True)
class Candles:
    """A ``candles`` reply to ``ticks_history`` with style ``candles`` (section 3.4)."""

    msg_type: ClassVar[str] = "candles"
    candles: tuple[Candle, ...]
    pip_size: int | None
    symbol: str | None = None
    subscription_id: str | None = None
    req_id: int | None = None


@dataclass(frozen=True, slots=True)
class Ohlc:
    """An ``ohlc`` stream frame (section 3.4); the wire's OHLC strings are converted to floats."""

    msg_type: ClassVar[str] = "ohlc"
    symbol: str
    epoch: int
    open_time: int
    granularity: int
    open: float
    high: float
    low: float
    close: float
    pip_size: int | None
    subscription_id: str | None
    req_id: int | None = None


@dataclass(frozen=True, slots=True)
class Pong:
    """The reply to ``ping`` (section 3.1)."""

    msg_type: ClassVar[str] = "ping"
    req_id: int | None = None


@dataclass(frozen=True, slots=True)
class Time:
    """The reply to ``time``: the server's epoch in whole seconds (section 3.2)."""

    msg_type: ClassVar[str] = "time"
    epoch: int
    req_id: int | None = None


@dataclass(frozen=True, slots=True)
class ActiveSymbol:
    """One entry of ``active_symbols`` (section 3.7). ``pip`` is the pip value (0.01), not decimals."""

    symbol: str
    display_name: str
    pip: float
    market: str
    submarket: str
    exchange_is_open: bool
    is_trading_suspended: bool
    spot: float | None = None
    spot_time: int | None = None


@dataclass(frozen=True, slots=True)
class ActiveSymbols:
    """The reply to ``active_symbols`` (section 3.7)."""

    msg_type: ClassVar[str] = "active_symbols"
    symbols: tuple[ActiveSymbol, ...]
    req_id: int | None = None


@dataclass(frozen=True, slots=True)
class Authorize:
    """A successful ``authorize`` reply (section 3.8). The token is never kept."""

    msg_type: ClassVar[str] = "authorize"
    loginid: str
    currency: str | None
    is_virtual: bool
    scopes: tuple[str, ...]
    balance: float | None
    req_id: int | None = None


@dataclass(frozen=True, slots=True)
class WebsiteStatus:
    """A ``website_status`` reply or pushed update (section 3.9).

    ``site_status`` is ``up``, ``down`` or ``updating`` (``None`` if absent); before a
    deploy subscribers get ``updating`` with a banner ``message`` (section 5.3).
    """

    msg_type: ClassVar[str] = "website_status"
    site_status: str | None
    message: str | None
    subscription_id: str | None = None
    req_id: int | None = None


@dataclass(frozen=True, slots=True)
class Forget:
    """The reply to ``forget``: ``stopped`` is false when the id did not exist (section 3.5)."""

    msg_type: ClassVar[str] = "forget"
    stopped: bool
    req_id: int | None = None


@dataclass(frozen=True, slots=True)
class ForgetAll:
    """The reply to ``forget_all``: the ids that were cancelled (section 3.6)."""

    msg_type: ClassVar[str] = "forget_all"
    subscription_ids: tuple[str, ...]
    req_id: int | None = None


@dataclass(frozen=True, slots=True)
class ApiError:
    """An error reply (sections 2 and 4): ``msg_type`` tells which call failed.

    ``echo_req`` is the server's copy of the request (``None`` if absent), for example
    to find the symbol of an ``InvalidSymbol`` error for one symbol of a list.
    """

    code: str
    message: str
    details: Mapping[str, Any] | None
    msg_type: str
    req_id: int | None = None
    echo_req: Mapping[str, Any] | None = None

    def to_exception(self) -> DerivAPIError:
        """The matching :class:`~backend_core.errors.DerivAPIError`, e.g. to fail a pending request."""
        return DerivAPIError(self.code, self.message, dict(self.details) if self.details else None, self.msg_type)


@dataclass(frozen=True, slots=True)
class UnknownMessage:
    """A well-formed frame of a type this codec does not model; ``data`` is the decoded frame."""

    msg_type: str
    data: Mapping[str, Any]
    req_id: int | None = None


@dataclass(frozen=True, slots=True)
class ProtocolFrameError:
    """A frame that cannot be understood. ``req_id``/``msg_type`` are kept when readable.

    ``error`` is the :class:`~backend_core.errors.ProtocolError` (with a truncated
    ``raw`` excerpt) the manager can raise, log or count.
    """

    error: ProtocolError
    msg_type: str | None = None
    req_id: int | None = None

    @property
    def reason(self) -> str:
        return self.error.message


Message: TypeAlias = (
    TickMessage
    | History
    | Candles
    | Ohlc
    | Pong
    | Time
    | ActiveSymbols
    | Authorize
    | WebsiteStatus
    | Forget
    | ForgetAll
    | ApiError
    | UnknownMessage
    | ProtocolFrameError
)

# --- parsing -----------------------------------------------------------------------


class _BadFrame(Exception):
    """Raised inside the payload parsers; :func:`parse` turns it into a ProtocolFrameError."""


def _reject_constant(name: str) -> Any:
    # JSON has no NaN or Infinity; Python's decoder accepts them unless told not to.
    raise ValueError(f"{name} is not valid JSON")


# One decoder built once: json.loads(text, **kwargs) would build a new decoder per call.
_DECODER: Final = json.JSONDecoder(parse_constant=_reject_constant)
_decode: Final = _DECODER.decode
_isfinite: Final = math.isfinite
# Exact types, as the per-value checks use (a bool is not a number here).
_NUMBER_TYPES: Final = frozenset({float, int})
_INTEGER_TYPE: Final = frozenset({int})


def _frame_error(
    reason: str, raw: str | bytes, msg_type: str | None = None, req_id: int | None = None
) -> ProtocolFrameError:
    return ProtocolFrameError(ProtocolError(reason, raw), None if msg_type is None else clip_code(msg_type), req_id)


def _number(value: Any, name: str) -> float:
    if type(value) is float:
        if not _isfinite(value):
            raise _BadFrame(f"{name} is not a finite number")
        return value
    if type(value) is int:
        return float(value)
    raise _BadFrame(f"{name} is not a number")


def _numeric_string(value: Any, name: str) -> float:
    # Section 3.4: ohlc sends OHLC as strings; accept numbers too, be strict on text.
    if type(value) is str:
        try:
            number = float(value)
        except ValueError:
            raise _BadFrame(f"{name} is not a numeric string") from None
        if not _isfinite(number):
            raise _BadFrame(f"{name} is not a finite number")
        return number
    return _number(value, name)


def _integer(value: Any, name: str) -> int:
    if type(value) is not int:
        raise _BadFrame(f"{name} is not an integer")
    return value


def _pip_size(value: Any, name: str) -> int | None:
    # pip_size is "number" in the receive schema; it is a count of decimals (section 3.3).
    if value is None:
        return None
    if type(value) is int and 0 <= value <= 20:
        return value
    if type(value) is float and value.is_integer() and 0 <= value <= 20:
        return int(value)
    raise _BadFrame(f"{name} is not a number of decimals")


def _string(value: Any, name: str) -> str:
    if type(value) is not str:
        raise _BadFrame(f"{name} is not a string")
    return value


def _optional_string(value: Any, name: str) -> str | None:
    return None if value is None else _string(value, name)


def _object(value: Any, name: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise _BadFrame(f"{name} is not an object")
    return value


def _objects(value: Any, name: str) -> Iterator[dict[str, Any]]:
    """The items of an array of objects; each item is checked as it is reached."""
    if type(value) is not list:
        raise _BadFrame(f"{name} is not an array")
    item_name = f"{name}[]"
    return (_object(item, item_name) for item in value)


def _flag(value: Any, name: str) -> bool:
    if value is None:
        return False
    if type(value) is bool:
        return value
    if type(value) is int and value in (0, 1):
        return value == 1
    raise _BadFrame(f"{name} is not 0 or 1")


def _subscription_id(frame: dict[str, Any]) -> str | None:
    sub = frame.get("subscription")
    if sub is None:
        return None
    sub_id = sub.get("id") if type(sub) is dict else None
    if type(sub_id) is not str:
        raise _BadFrame("subscription.id is not a string")
    return sub_id


def _echo_symbol(frame: dict[str, Any]) -> str | None:
    echo = frame.get("echo_req")
    if type(echo) is dict:
        symbol = echo.get("ticks_history")
        if type(symbol) is str:
            return symbol
    return None


def _parse_tick(frame: dict[str, Any], req_id: int | None) -> TickMessage:
    body = frame.get("tick")
    if type(body) is not dict:
        raise _BadFrame("tick is not an object")
    epoch = body.get("epoch")
    if type(epoch) is not int:
        raise _BadFrame("tick.epoch is not an integer")
    quote = body.get("quote")
    if type(quote) is not float or not _isfinite(quote):
        quote = _number(quote, "tick.quote")
    symbol = body.get("symbol")
    if type(symbol) is not str:
        raise _BadFrame("tick.symbol is not a string")
    pip_size = body.get("pip_size")
    if type(pip_size) is not int or not 0 <= pip_size <= 20:
        pip_size = _pip_size(pip_size, "tick.pip_size")
        if pip_size is None:
            raise _BadFrame("tick.pip_size is missing")
    bid = body.get("bid")
    if bid is not None and (type(bid) is not float or not _isfinite(bid)):
        bid = _number(bid, "tick.bid")
    ask = body.get("ask")
    if ask is not None and (type(ask) is not float or not _isfinite(ask)):
        ask = _number(ask, "tick.ask")
    sub = frame.get("subscription")
    if sub is None:
        sub_id = body.get("id")
        if sub_id is not None and type(sub_id) is not str:
            raise _BadFrame("tick.id is not a string")
    elif type(sub) is dict and type(sub_id := sub.get("id")) is str:
        pass
    else:
        raise _BadFrame("subscription.id is not a string")
    return TickMessage(Tick(symbol, epoch, quote, pip_size, bid, ask), sub_id, req_id)


def _parse_history(frame: dict[str, Any], req_id: int | None) -> History:
    body = _object(frame.get("history"), "history")
    prices_raw = body.get("prices", [])
    times_raw = body.get("times", [])
    if type(prices_raw) is not list or type(times_raw) is not list:
        raise _BadFrame("history.prices and history.times must be arrays")
    if len(prices_raw) != len(times_raw):
        raise _BadFrame("history.prices and history.times differ in length")
    # A page holds up to 5000 of each: checked a whole array at a time (type set, then
    # finiteness), and element by element only to name what is wrong.
    price_types = set(map(type, prices_raw))
    if price_types <= _NUMBER_TYPES and all(map(_isfinite, prices_raw)):
        prices = tuple(prices_raw) if int not in price_types else tuple(map(float, prices_raw))
    else:
        prices = tuple(_number(p, "history.prices[]") for p in prices_raw)
    if set(map(type, times_raw)) <= _INTEGER_TYPE:
        times = tuple(times_raw)
    else:
        times = tuple(_integer(t, "history.times[]") for t in times_raw)
    return History(
        prices,
        times,
        _pip_size(frame.get("pip_size"), "pip_size"),
        _echo_symbol(frame),
        _subscription_id(frame),
        req_id,
    )


def _parse_candles(frame: dict[str, Any], req_id: int | None) -> Candles:
    candles = tuple(
        Candle(
            _integer(c.get("epoch"), "candles[].epoch"),
            _number(c.get("open"), "candles[].open"),
            _number(c.get("high"), "candles[].high"),
            _number(c.get("low"), "candles[].low"),
            _number(c.get("close"), "candles[].close"),
        )
        for c in _objects(frame.get("candles"), "candles")
    )
    return Candles(
        candles,
        _pip_size(frame.get("pip_size"), "pip_size"),
        _echo_symbol(frame),
        _subscription_id(frame),
        req_id,
    )


def _parse_ohlc(frame: dict[str, Any], req_id: int | None) -> Ohlc:
    body = _object(frame.get("ohlc"), "ohlc")
    sub_id = _subscription_id(frame)
    if sub_id is None:
        sub_id = _optional_string(body.get("id"), "ohlc.id")
    return Ohlc(
        _string(body.get("symbol"), "ohlc.symbol"),
        _integer(body.get("epoch"), "ohlc.epoch"),
        _integer(body.get("open_time"), "ohlc.open_time"),
        _integer(body.get("granularity"), "ohlc.granularity"),
        _numeric_string(body.get("open"), "ohlc.open"),
        _numeric_string(body.get("high"), "ohlc.high"),
        _numeric_string(body.get("low"), "ohlc.low"),
        _numeric_string(body.get("close"), "ohlc.close"),
        _pip_size(body.get("pip_size"), "ohlc.pip_size"),
        sub_id,
        req_id,
    )


def _parse_ping(frame: dict[str, Any], req_id: int | None) -> Pong:
    if frame.get("ping") != "pong":
        raise _BadFrame("ping is not 'pong'")
    return Pong(req_id)


def _parse_time(frame: dict[str, Any], req_id: int | None) -> Time:
    return Time(_integer(frame.get("time"), "time"), req_id)


def _parse_active_symbols(frame: dict[str, Any], req_id: int | None) -> ActiveSymbols:
    symbols = []
    for s in _objects(frame.get("active_symbols"), "active_symbols"):
        spot = s.get("spot")
        spot_time = s.get("spot_time")
        symbols.append(
            ActiveSymbol(
                symbol=_string(s.get("symbol"), "active_symbols[].symbol"),
                display_name=_string(s.get("display_name"), "active_symbols[].display_name"),
                pip=_number(s.get("pip"), "active_symbols[].pip"),
                market=_optional_string(s.get("market"), "active_symbols[].market") or "",
                submarket=_optional_string(s.get("submarket"), "active_symbols[].submarket") or "",
                exchange_is_open=_flag(s.get("exchange_is_open"), "active_symbols[].exchange_is_open"),
                is_trading_suspended=_flag(s.get("is_trading_suspended"), "active_symbols[].is_trading_suspended"),
                spot=None if spot is None else _number(spot, "active_symbols[].spot"),
                # spot_time is a string of digits in the receive schema; tolerate an integer.
                spot_time=_epoch_text(spot_time, "active_symbols[].spot_time"),
            )
        )
    return ActiveSymbols(tuple(symbols), req_id)


def _epoch_text(value: Any, name: str) -> int | None:
    if value is None or value == "":
        return None
    if type(value) is int:
        return value
    if type(value) is str and value.isascii() and value.isdigit() and len(value) <= 12:
        return int(value)
    raise _BadFrame(f"{name} is not an epoch")


def _parse_authorize(frame: dict[str, Any], req_id: int | None) -> Authorize:
    body = _object(frame.get("authorize"), "authorize")
    scopes = body.get("scopes", [])
    if type(scopes) is not list or any(type(s) is not str for s in scopes):
        raise _BadFrame("authorize.scopes is not an array of strings")
    balance = body.get("balance")
    return Authorize(
        loginid=_string(body.get("loginid"), "authorize.loginid"),
        currency=_optional_string(body.get("currency"), "authorize.currency"),
        is_virtual=_flag(body.get("is_virtual"), "authorize.is_virtual"),
        scopes=tuple(scopes),
        balance=None if balance is None else _number(balance, "authorize.balance"),
        req_id=req_id,
    )


def _parse_website_status(frame: dict[str, Any], req_id: int | None) -> WebsiteStatus:
    body = _object(frame.get("website_status"), "website_status")
    site_status = _optional_string(body.get("site_status"), "website_status.site_status")
    message = _optional_string(body.get("message"), "website_status.message")
    return WebsiteStatus(
        None if site_status is None else clip_code(site_status),
        None if message is None else clip_text(message),
        _subscription_id(frame),
        req_id,
    )


def _parse_forget(frame: dict[str, Any], req_id: int | None) -> Forget:
    value = frame.get("forget")
    if type(value) is not int or value not in (0, 1):
        raise _BadFrame("forget is not 0 or 1")
    return Forget(value == 1, req_id)


def _parse_forget_all(frame: dict[str, Any], req_id: int | None) -> ForgetAll:
    ids = frame.get("forget_all")
    if type(ids) is not list or any(type(i) is not str for i in ids):
        raise _BadFrame("forget_all is not an array of strings")
    return ForgetAll(tuple(ids), req_id)


def _parse_error(frame: dict[str, Any], msg_type: str, req_id: int | None) -> ApiError:
    body = _object(frame.get("error"), "error")
    code = _string(body.get("code"), "error.code")
    message = _string(body.get("message"), "error.message")
    details = body.get("details")
    if details is not None and type(details) is not dict:
        raise _BadFrame("error.details is not an object")
    echo = frame.get("echo_req")
    return ApiError(
        clip_code(code), clip_text(message), details, clip_code(msg_type), req_id, echo if type(echo) is dict else None
    )


# Keyed by each message class's own msg_type (``tick`` is parsed first, on the hot path).
_PARSERS: Final[dict[str, Any]] = {
    History.msg_type: _parse_history,
    Candles.msg_type: _parse_candles,
    Ohlc.msg_type: _parse_ohlc,
    Pong.msg_type: _parse_ping,
    Time.msg_type: _parse_time,
    ActiveSymbols.msg_type: _parse_active_symbols,
    Authorize.msg_type: _parse_authorize,
    WebsiteStatus.msg_type: _parse_website_status,
    Forget.msg_type: _parse_forget,
    ForgetAll.msg_type: _parse_forget_all,
}


def parse(raw: str | bytes) -> Message:
    """Decode one frame into a message. Never raises (see the module docstring).

    ``bytes`` must be UTF-8 (section 1: text frames); anything else is a
    :class:`ProtocolFrameError`, as is JSON that is not an object, lacks a string
    ``msg_type``, has a non-integer ``req_id``, or whose payload has the wrong types.
    """
    try:
        text = raw.decode("utf-8") if type(raw) is bytes else raw
        frame = _decode(text)  # type: ignore[arg-type]
    except UnicodeDecodeError:
        return _frame_error("frame is not valid UTF-8", raw)
    except (ValueError, TypeError, RecursionError):
        # JSONDecodeError is a ValueError; RecursionError: absurdly deep nesting.
        return _frame_error("frame is not valid JSON", raw)
    if type(frame) is not dict:
        return _frame_error("frame is not a JSON object", raw)
    msg_type = frame.get("msg_type")
    if type(msg_type) is not str:
        return _frame_error("frame has no msg_type", raw)
    req_id = frame.get("req_id")
    if req_id is not None and type(req_id) is not int:
        return _frame_error("req_id is not an integer", raw, msg_type)
    try:
        if "error" in frame:
            return _parse_error(frame, msg_type, req_id)
        if msg_type == TickMessage.msg_type:
            return _parse_tick(frame, req_id)
        parser = _PARSERS.get(msg_type)
        if parser is None:
            return UnknownMessage(clip_code(msg_type), frame, req_id)
        result: Message = parser(frame, req_id)
        return result
    except _BadFrame as exc:
        return _frame_error(str(exc), raw, msg_type, req_id)
    except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as exc:
        # A shape no specific check foresaw (for example a huge integer where a float
        # is expected): still a frame error, never an exception to the caller.
        return _frame_error(f"malformed {clip_code(msg_type)} frame: {type(exc).__name__}", raw, msg_type, req_id)
