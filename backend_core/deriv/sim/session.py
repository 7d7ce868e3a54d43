"""One connection's protocol state: triage, validation, envelopes, subscriptions, limits. Pure.

:class:`Session` takes decoded frames and a time, and returns encoded frames and what
to do with the connection; the server sends them. Requests are checked with
:mod:`.schema`'s pydantic models; the replies, errors included, are the real server's
(``shared/deriv-protocol.md`` sections 1-5):

* a frame that is not UTF-8 or not JSON closes the connection (code 1007, no reply);
  JSON that is not an object gets ``BadRequest``; bad keys or values get
  ``SanityCheckFailed``; an unknown call is ``UnrecognisedRequest``; a known call with
  bad values is ``InputValidationFailed`` (sections 1-4);
* more than 10 ``ping``/``time`` per ~1 s window: ``RateLimit``, then close 1008 (5.2);
* subscriptions are per connection (5.3), one per symbol x stream type x granularity.
"""

from __future__ import annotations

import json
import math
import secrets
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from backend_core.deriv.protocol import (
    MAX_HISTORY_COUNT,
    MAX_RESPONSE_BYTES,
    PING_TIME_LIMIT,
    PING_TIME_WINDOW_S,
    DerivCode,
)
from backend_core.deriv.sim.faults import INJECTABLE_ERRORS
from backend_core.deriv.sim.market import (
    DAY_S,
    CandleState,
    HistoryRefusal,
    Market,
    build_candles,
    history_window,
    update_candle,
)
from backend_core.deriv.sim.schema import coerce_int, find_action, redact, sanity_check, validate
from backend_core.events import Tick

# --- limits ---------------------------------------------------------------------------


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


# --- payloads -----------------------------------------------------------------------


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


# --- one connection -----------------------------------------------------------------


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
                "error": {"code": DerivCode.BAD_REQUEST, "message": "The application sent an invalid request."},
            }
            return Received("(bad_request)", frames=(_dumps(bad_request),))
        req_id = coerce_int(body.get("req_id"))
        passthrough = body.get("passthrough") if type(body.get("passthrough")) is dict else None
        if not sanity_check(body):
            request = CallRequest("", body, req_id, passthrough)
            frame = self._error_frame(
                request, "error", DerivCode.SANITY_CHECK_FAILED, "Parameters sanity check failed.", echo=redact(body)
            )
            return Received("(insane)", frames=(frame,))
        action = find_action(body)
        request = CallRequest(action or "", body, req_id, passthrough)
        if action is None:
            frame = self._error_frame(request, "error", DerivCode.UNRECOGNISED_REQUEST, "Unrecognised request")
            return Received("(unrecognised)", frames=(frame,))
        if action in ("ping", "time") and not self.rate_window.hit(now):
            frame = self.error_reply(request, DerivCode.RATE_LIMIT)
            return Received(action, frames=(frame,), close=CloseDirective(1008))
        return Received(action, request=request)

    def error_reply(self, request: CallRequest, code: str) -> str:
        """An injected, rate-limit or timeout error for ``request`` (sections 1, 4 and 5.2)."""
        template = INJECTABLE_ERRORS[code]
        msg_type = request.action if code == DerivCode.RATE_LIMIT else error_msg_type(request.action)
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
                    DerivCode.INPUT_VALIDATION_FAILED,
                    "Input validation failed: " + ", ".join(fields),
                    details=details or None,
                    echo=dict(request.body),  # section 2: this error echoes the raw request
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
                frames.append(self._error_frame(request, "tick", DerivCode.INVALID_SYMBOL, f"Symbol {symbol} invalid."))
                continue
            key = (symbol, "ticks", 0, "tick")
            if key in self._keys:
                frames.append(self._already_subscribed(request, "tick", symbol))
                continue
            self._subscribe("tick", key, symbol, 0, request)
        return frames

    def _call_ticks_history(self, request: CallRequest, params: dict[str, Any], now: float) -> list[str]:
        symbol = params["ticks_history"]
        if symbol not in self.market.specs:
            return [self._error_frame(request, "ticks_history", DerivCode.INVALID_SYMBOL, f"Symbol {symbol} invalid.")]
        window = history_window(params, now)
        if isinstance(window, HistoryRefusal):
            return [self._error_frame(request, "ticks_history", window.code, window.message)]
        spec = self.market.specs[symbol]
        subscribe = params.get("subscribe") == 1
        key = (symbol, window.style, window.granularity, "ticks_history")
        if subscribe and key in self._keys:
            return [self._already_subscribed(request, "ticks_history", symbol)]
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
                    request, "authorize", DerivCode.INVALID_TOKEN, "When using multiple tokens, set authorize to MULTI."
                )
            ]
        tokens = params.get("tokens", []) if token == "MULTI" else [token]
        if not tokens or any(t not in self.accepted_tokens for t in tokens):
            return [self._error_frame(request, "authorize", DerivCode.INVALID_TOKEN, "The token is invalid.")]
        self.authorized = True
        return [self._reply(request, "authorize", {"authorize": authorize_payload()})]

    def _call_website_status(self, request: CallRequest, params: dict[str, Any], now: float) -> list[str]:
        sub_id = None
        if params.get("subscribe") == 1:
            key = ("", "website_status", 0, "website_status")
            if key in self._keys:
                return [self._already_subscribed(request, "website_status", "website_status")]
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

    def _already_subscribed(self, request: CallRequest, msg_type: str, stream: str) -> str:
        """A second stream of the same kind on this connection (sections 3.3, 3.4, 3.9)."""
        message = f"You are already subscribed to {stream}"
        return self._error_frame(request, msg_type, DerivCode.ALREADY_SUBSCRIBED, message)

    def _error_frame(
        self,
        request: CallRequest,
        msg_type: str,
        code: str,
        message: str,
        *,
        details: Mapping[str, Any] | None = None,
        echo: dict[str, Any] | None = None,
    ) -> str:
        error: dict[str, Any] = {"code": code, "message": message}
        if details:
            error["details"] = dict(details)
        frame: dict[str, Any] = {
            "echo_req": request.echo if echo is None else echo,
            "error": error,
            "msg_type": msg_type,
        }
        if request.req_id is not None:
            frame["req_id"] = request.req_id
        if request.passthrough is not None:
            frame["passthrough"] = request.passthrough
        return _dumps(frame)

    def _limit_size(self, request: CallRequest, frame: str) -> str:
        if len(frame) <= MAX_RESPONSE_BYTES:
            return frame
        return self._error_frame(request, "error", DerivCode.RESPONSE_TOO_LARGE, "Response too large.")


def _reject_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
