"""The Deriv WebSocket API v3 requests and protocol facts, with no I/O.

Modelled on ``websockets``' sans-I/O ``protocol.py``: everything here is a pure
function of its arguments, so the connection manager only moves strings and the codec
is tested without sockets. Section numbers refer to ``shared/deriv-protocol.md``. The
frames that come back are parsed by :mod:`backend_core.deriv.messages`.

Requests (section 2, "Request")
    Every builder returns a ``dict`` ready for :func:`encode` (compact JSON). Each
    request carries exactly one method key, the integer ``req_id`` that matches the
    reply to it (section 2: replies may come back out of order), and optionally a
    ``passthrough`` object that the server returns unchanged. Builders validate their
    arguments against the send-schema rules quoted in section 3 and raise
    :class:`ValueError` for values the server would reject, so a bad request is caught
    before it is sent. Tokens never appear in those error messages.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any, Final, Literal

__all__ = [
    "APP_ID_PATTERN",
    "BACKEND_ERRORS",
    "DEFAULT_HISTORY_COUNT",
    "FORGET_ALL_TYPES",
    "GRANULARITIES",
    "MAX_HISTORY_COUNT",
    "MAX_RESPONSE_BYTES",
    "PING_TIME_LIMIT",
    "PING_TIME_WINDOW_S",
    "PROCESSING_TIMEOUT_S",
    "STREAM_TIMEOUT_S",
    "SUBSCRIPTION_ID_PATTERN",
    "SYMBOL_PATTERN",
    "TOKEN_PATTERN",
    "DerivCode",
    "active_symbols",
    "authorize",
    "clip_code",
    "clip_text",
    "encode",
    "forget",
    "forget_all",
    "ping",
    "ticks",
    "ticks_history",
    "time",
    "website_status",
]

# --- the server's limits (sections 1 and 5) -----------------------------------------

#: A request without a result within 15 s gets a ``Timeout`` error (section 1).
PROCESSING_TIMEOUT_S: Final = 15.0
#: A connection with no frame either way for 120 s is dropped: ``stream_timeout`` (5.1).
STREAM_TIMEOUT_S: Final = 120.0
#: ``ping`` and ``time`` share one per-connection counter: at most 10 per ~1 s (5.2).
PING_TIME_LIMIT: Final = 10
PING_TIME_WINDOW_S: Final = 1.0
#: Responses above this size are replaced by ``ResponseTooLarge`` (section 1).
MAX_RESPONSE_BYTES: Final = 600_000


class DerivCode(StrEnum):
    """The error codes Deriv sends (section 4), and the two of its HTTP refusals (section 1).

    A member is its string, so it compares equal to the ``code`` of a parsed error reply.
    """

    INPUT_VALIDATION_FAILED = "InputValidationFailed"
    ALREADY_SUBSCRIBED = "AlreadySubscribed"
    INVALID_SYMBOL = "InvalidSymbol"
    MARKET_IS_CLOSED = "MarketIsClosed"
    NO_REALTIME_QUOTES = "NoRealtimeQuotes"
    STREAMING_NOT_ALLOWED = "StreamingNotAllowed"
    INVALID_START_END = "InvalidStartEnd"
    INVALID_STYLE = "InvalidStyle"
    INVALID_GRANULARITY = "InvalidGranularity"
    INVALID_TOKEN = "InvalidToken"
    AUTHORIZATION_REQUIRED = "AuthorizationRequired"
    PERMISSION_DENIED = "PermissionDenied"
    RATE_LIMIT = "RateLimit"
    UNRECOGNISED_REQUEST = "UnrecognisedRequest"
    BAD_REQUEST = "BadRequest"
    SANITY_CHECK_FAILED = "SanityCheckFailed"
    RESPONSE_TOO_LARGE = "ResponseTooLarge"
    # Backend problems: they say nothing about the request (section 1).
    TIMEOUT = "Timeout"
    WRONG_RESPONSE = "WrongResponse"
    CALL_ERROR = "CallError"
    # The HTTP refusals of the WebSocket handshake: 401 and 403 (section 1).
    INVALID_APP_ID = "InvalidAppID"
    ACCESS_RESTRICTED = "AccessRestricted"


#: The codes of a server-side failure, and the message each comes with (section 1).
BACKEND_ERRORS: Final[Mapping[str, str]] = {
    DerivCode.TIMEOUT: "Timeout",
    DerivCode.WRONG_RESPONSE: "Sorry, an error occurred while processing your request.",
    DerivCode.CALL_ERROR: "Sorry, an error occurred while processing your request.",
}

# --- send-schema rules (section 3) -------------------------------------------------

#: A Deriv application id, the ``app_id`` query parameter of the endpoint (section 1).
APP_ID_PATTERN: Final = re.compile(r"^(?!0)[0-9]{1,19}$")
#: A ``ticks`` / ``ticks_history`` symbol (section 3.3).
SYMBOL_PATTERN: Final = re.compile(r"^\w{2,30}$")
#: A subscription id accepted by ``forget`` (section 3.5).
SUBSCRIPTION_ID_PATTERN: Final = re.compile(r"^[\w-]{32,128}$")
#: An API token accepted by ``authorize`` (section 3.8).
TOKEN_PATTERN: Final = re.compile(r"^[\w\-]{1,128}$")
#: Candle sizes in seconds accepted by ``ticks_history`` (section 3.4).
GRANULARITIES: Final = frozenset({60, 120, 180, 300, 600, 900, 1800, 3600, 7200, 14400, 28800, 86400})
#: Stream types accepted by ``forget_all`` (section 3.6).
FORGET_ALL_TYPES: Final = frozenset(
    {"ticks", "candles", "proposal", "proposal_open_contract", "balance", "transaction", "website_status"}
)
#: ``ticks_history``'s ``count`` when the request has none (the schema default), and what
#: it clamps ``count`` to (section 3.4).
DEFAULT_HISTORY_COUNT: Final = 1000
MAX_HISTORY_COUNT: Final = 5000

# --- upstream strings (DESIGN.md rules 5 and 6) ------------------------------------
# The upstream chooses error codes, messages and message types. They key counters,
# choose the status page's tips, and reach logs and the page, so each is bounded here,
# once, before any other module sees it.

#: Longest upstream error code (or unknown msg_type) kept; Deriv's are under 30.
MAX_CODE_CHARS: Final = 64
#: Longest upstream text kept (error messages, the website_status banner).
MAX_TEXT_CHARS: Final = 300
_UNSAFE_CODE_CHARS: Final = re.compile(r"[^A-Za-z0-9_.-]")
# Control characters (newlines included: a log line must stay one line) and Unicode line breaks.
_CONTROL_CHARS: Final = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def clip_code(code: str) -> str:
    """An upstream code fit to key a counter: at most 64 of ``A-Za-z0-9_.-`` (others become ``_``)."""
    if len(code) <= MAX_CODE_CHARS and not _UNSAFE_CODE_CHARS.search(code) and code:
        return code
    return _UNSAFE_CODE_CHARS.sub("_", code[:MAX_CODE_CHARS]) or "Unknown"


def clip_text(text: str, limit: int = MAX_TEXT_CHARS) -> str:
    """Upstream text fit for one log line and the page: no control characters, at most ``limit`` long."""
    clean = _CONTROL_CHARS.sub(" ", text[: limit + 1])
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


# --- requests ----------------------------------------------------------------------


def encode(request: Mapping[str, Any]) -> str:
    """Serialize a request as compact JSON (one text frame, section 1)."""
    return json.dumps(request, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _check_req_id(req_id: int) -> None:
    # Section 2: req_id is an integer; bool is an int in Python but not in JSON Schema.
    if type(req_id) is not int:
        raise ValueError("req_id must be an integer")


def _envelope(method: str, value: Any, req_id: int, passthrough: Mapping[str, Any] | None) -> dict[str, Any]:
    _check_req_id(req_id)
    request: dict[str, Any] = {method: value}
    if passthrough is not None:
        if not isinstance(passthrough, Mapping):
            raise ValueError("passthrough must be an object")
        request["passthrough"] = dict(passthrough)
    request["req_id"] = req_id
    return request


def _check_symbol(symbol: str) -> str:
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.match(symbol):
        raise ValueError(f"invalid symbol {symbol!r}: expected 2 to 30 letters, digits or '_'")
    return symbol


def ping(req_id: int, *, passthrough: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"ping": 1}`` (section 3.1); the reply is :class:`Pong`."""
    return _envelope("ping", 1, req_id, passthrough)


def time(req_id: int, *, passthrough: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"time": 1}`` (section 3.2); the reply is :class:`Time` (server epoch seconds)."""
    return _envelope("time", 1, req_id, passthrough)


def ticks(symbols: str | Sequence[str], req_id: int, *, passthrough: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"ticks": ..., "subscribe": 1}`` (section 3.3).

    ``ticks`` always subscribes; a list gives one subscription per symbol, each with its
    own id. There is no acknowledgement: the first reply is the first :class:`TickMessage`.
    """
    value: str | list[str]
    if isinstance(symbols, str):
        value = _check_symbol(symbols)
    else:
        value = [_check_symbol(s) for s in symbols]
        if not value:
            raise ValueError("ticks needs at least one symbol")
    request = _envelope("ticks", value, req_id, passthrough)
    request["subscribe"] = 1
    return request


def ticks_history(
    symbol: str,
    req_id: int,
    *,
    end: Literal["latest"] | int | str = "latest",
    start: int | None = None,
    count: int | None = None,
    style: Literal["ticks", "candles"] = "ticks",
    granularity: int | None = None,
    subscribe: bool = False,
    adjust_start_time: bool = False,
    passthrough: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``{"ticks_history": symbol, "end": ..., ...}`` (section 3.4).

    ``end`` is ``"latest"`` or an epoch (sent as a string, as the schema requires).
    ``count`` must be 1 to 5000 (the server would clamp anything else to 5000).
    ``granularity`` is for candles only. The reply is :class:`History` (ticks) or
    :class:`Candles`; with ``subscribe`` it carries a ``subscription_id`` and is followed
    by :class:`TickMessage` or :class:`Ohlc` frames with the same id.
    """
    request = _envelope("ticks_history", _check_symbol(symbol), req_id, passthrough)
    if end == "latest":
        request["end"] = "latest"
    elif type(end) is int and end >= 0:
        request["end"] = str(end)
    elif isinstance(end, str) and end.isdigit() and end.isascii():
        request["end"] = end
    else:
        raise ValueError("end must be 'latest' or a non-negative epoch")
    if start is not None:
        if type(start) is not int or start < 0:
            raise ValueError("start must be a non-negative integer epoch")
        request["start"] = start
    if count is not None:
        if type(count) is not int or not 1 <= count <= MAX_HISTORY_COUNT:
            raise ValueError(f"count must be an integer from 1 to {MAX_HISTORY_COUNT}")
        request["count"] = count
    if style not in ("ticks", "candles"):
        raise ValueError("style must be 'ticks' or 'candles'")
    request["style"] = style
    if granularity is not None:
        if style != "candles":
            raise ValueError("granularity applies to candles only")
        if type(granularity) is not int or granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {sorted(GRANULARITIES)}")
        request["granularity"] = granularity
    if adjust_start_time:
        request["adjust_start_time"] = 1
    if subscribe:
        request["subscribe"] = 1
    return request


def forget(subscription_id: str, req_id: int, *, passthrough: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"forget": id}`` (section 3.5); the reply is :class:`Forget` (``stopped`` false for unknown ids)."""
    if not isinstance(subscription_id, str) or not SUBSCRIPTION_ID_PATTERN.match(subscription_id):
        raise ValueError("subscription id must be 32 to 128 letters, digits, '_' or '-'")
    return _envelope("forget", subscription_id, req_id, passthrough)


def forget_all(
    types: str | Sequence[str], req_id: int, *, passthrough: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``{"forget_all": "ticks"}`` or a list of types (section 3.6); the reply is :class:`ForgetAll`."""
    items = [types] if isinstance(types, str) else list(types)
    if not items or any(t not in FORGET_ALL_TYPES for t in items):
        raise ValueError(f"forget_all types must be among {sorted(FORGET_ALL_TYPES)}")
    return _envelope("forget_all", types if isinstance(types, str) else items, req_id, passthrough)


def active_symbols(
    req_id: int,
    *,
    kind: Literal["brief", "full"] = "brief",
    product_type: Literal["basic"] | None = None,
    passthrough: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``{"active_symbols": "brief" | "full"}`` (section 3.7); the reply is :class:`ActiveSymbols`."""
    if kind not in ("brief", "full"):
        raise ValueError("active_symbols must be 'brief' or 'full'")
    request = _envelope("active_symbols", kind, req_id, passthrough)
    if product_type is not None:
        if product_type != "basic":
            raise ValueError("product_type must be 'basic'")
        request["product_type"] = product_type
    return request


def authorize(token: str, req_id: int, *, passthrough: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``{"authorize": token}`` (section 3.8); the reply is :class:`Authorize`.

    The returned dict holds the token: never log it. The error for a malformed token
    does not repeat it.
    """
    if not isinstance(token, str) or not TOKEN_PATTERN.match(token):
        raise ValueError("token must be 1 to 128 letters, digits, '_' or '-'")
    return _envelope("authorize", token, req_id, passthrough)


def website_status(
    req_id: int, *, subscribe: bool = False, passthrough: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """``{"website_status": 1}``, optionally subscribed (section 3.9); replies are :class:`WebsiteStatus`."""
    request = _envelope("website_status", 1, req_id, passthrough)
    if subscribe:
        request["subscribe"] = 1
    return request
