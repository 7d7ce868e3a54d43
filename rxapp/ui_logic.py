"""What the status page says, decided by pure functions (no Reflex, no clock, no I/O).

The Reflex state (:mod:`rxapp.state`) hands these functions the JSON of
:func:`backend_core.status_view.status` and the current wall time, and stores what they return; components
only place the strings. So every word, colour and icon on the page is unit-tested in
``tests/unit/test_ui_logic.py`` without a browser.

Tones are Radix colour names (``grass``, ``amber``, ``red``, ``gray``, ``blue``); icons are
lucide names. Every state has a word and an icon as well as a colour (never colour alone).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from backend_core.deriv.protocol import DerivCode
from backend_core.errors import ErrorCode
from backend_core.health import status_rank
from backend_core.status_view import STALE_TICK_S

PRODUCT = "Market feed status"
# The sparkline's drawing box, in SVG user units (the component scales it with CSS).
SPARK_WIDTH = 120
SPARK_HEIGHT = 32
SPARK_PAD = 2.0

TONE_LIVE = "grass"
TONE_DEGRADED = "amber"
TONE_DOWN = "red"
TONE_NEUTRAL = "gray"
# A planned maintenance (Deriv announced it): blue, never an outage's red.
TONE_MAINTENANCE = "blue"
MAINTENANCE_ICON = "wrench"


# ---------------------------------------------------------------------------- time words


def _whole_units(seconds: float) -> tuple[int, int, int, int]:
    """``(days, hours, minutes, seconds)`` of a finite duration, negatives as zero."""
    minutes, secs = divmod(max(0, int(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    return days, hours, minutes, secs


def format_duration(seconds: float | None) -> str:
    """A calm, short duration: ``"8 s"``, ``"3 min 5 s"``, ``"2 h 4 min"``, ``"3 d 1 h"``."""
    if seconds is None or not math.isfinite(seconds):
        return "unknown"
    days, hours, minutes, secs = _whole_units(seconds)
    if days:
        return f"{days} d {hours} h" if hours else f"{days} d"
    if hours:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    if minutes:
        return f"{minutes} min {secs} s" if secs else f"{minutes} min"
    return f"{secs} s"


def format_countdown(seconds: float | None) -> str:
    """Time until something happens, rounded up: ``"in 5 s"``, ``"now"``."""
    if seconds is None or not math.isfinite(seconds):
        return ""
    if seconds <= 0.05:
        return "now"
    return f"in {format_duration(math.ceil(seconds))}"


def format_age(seconds: float | None, *, coarse: bool = False, unknown: str = "never") -> str:
    """How long ago something happened: every "... ago" on the page is worded here.

    Fine (the default): ``"just now"`` under a second, then :func:`format_duration`'s words,
    ``"4 s ago"``, ``"2 min 10 s ago"``. Coarse, for lists that should change at most once a
    minute: ``"just now"`` under a minute, then the largest whole unit only, ``"5 min ago"``,
    ``"5 h ago"``, ``"1 day ago"``, ``"40 days ago"``. No age (``None``, infinite) says ``unknown``.
    """
    if seconds is None or not math.isfinite(seconds):
        return unknown
    if seconds < (60 if coarse else 1):
        return "just now"
    if not coarse:
        return f"{format_duration(seconds)} ago"
    days, hours, minutes, _ = _whole_units(seconds)
    if days:
        return "1 day ago" if days == 1 else f"{days} days ago"
    return f"{hours} h ago" if hours else f"{minutes} min ago"


def parse_iso(text: str | None) -> float | None:
    """Unix seconds from the API's UTC ISO 8601 strings (``None`` stays ``None``)."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def clock_time_utc(wall: float) -> str:
    """``"14:03:07 UTC"``: the server cannot know the reader's time zone, so it says UTC."""
    return datetime.fromtimestamp(wall, tz=UTC).strftime("%H:%M:%S UTC")


# ---------------------------------------------------------------------------- prices


def _decimals(pip_size: int) -> int:
    """Decimals shown for a symbol's pip size, bounded so a bad upstream value cannot blow up a row."""
    return max(0, min(int(pip_size), 10))


def format_price(quote: float, pip_size: int) -> str:
    """The quote with exactly ``pip_size`` decimals and thousands separators."""
    return f"{quote:,.{_decimals(pip_size)}f}"


def format_change(previous: float | None, current: float | None, pip_size: int) -> tuple[str, str]:
    """``(direction, text)``: direction is ``up``, ``down``, ``flat`` or ``none`` (no previous or no current)."""
    if previous is None or current is None:
        return "none", "–"
    decimals = _decimals(pip_size)
    delta = round(current - previous, decimals)
    if delta > 0:
        return "up", f"+{delta:,.{decimals}f}"
    if delta < 0:
        return "down", f"−{-delta:,.{decimals}f}"
    return "flat", f"{0:.{decimals}f}"


def sparkline_points(
    quotes: Sequence[float], width: float = SPARK_WIDTH, height: float = SPARK_HEIGHT, pad: float = SPARK_PAD
) -> str:
    """SVG ``polyline`` points for ``quotes`` (oldest first), scaled into the box.

    Fewer than two quotes draw nothing; a flat series draws a line through the middle.
    """
    if len(quotes) < 2:
        return ""
    low, high = min(quotes), max(quotes)
    span = high - low
    step = (width - 2 * pad) / (len(quotes) - 1)
    points = []
    for i, quote in enumerate(quotes):
        x = pad + i * step
        y = height / 2 if span == 0 else pad + (high - quote) / span * (height - 2 * pad)
        points.append(f"{x:.1f},{y:.1f}")
    return " ".join(points)


# ---------------------------------------------------------------------------- tips


@dataclass(frozen=True, slots=True)
class TipGroup:
    """Troubleshooting advice for one cause: a plain title and short, actionable steps."""

    key: str
    title: str
    tips: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "title": self.title, "tips": list(self.tips)}


# Keyed by the ``last_error.code`` values DerivManager produces (and a symbol's failed_code):
# backend_core's own ErrorCode members, and Deriv's error codes as Deriv sends them.
TIPS: Mapping[str, TipGroup] = {
    group.key: group
    for group in (
        TipGroup(
            ErrorCode.CONNECT_TIMEOUT,
            "The market data server did not answer in time",
            (
                "Usually a slow or congested network; the service keeps retrying by itself.",
                "Operators: check that this server can reach the Deriv API host (firewall, proxy, DNS).",
                "On a slow link, raise WEBSOCKET_CONNECTION_TIMEOUT.",
            ),
        ),
        TipGroup(
            ErrorCode.HANDSHAKE_REFUSED,
            "The market data server refused the connection",
            (
                "Deriv may be busy or under maintenance; automatic retries continue.",
                "Wait a minute, then press Retry.",
                "Operators: check DERIV_WS_URL points at the Deriv API v3 endpoint.",
            ),
        ),
        TipGroup(
            ErrorCode.HANDSHAKE_FAILED,
            "The server did not speak WebSocket as expected",
            (
                "A proxy or firewall may be rewriting the connection; automatic retries continue.",
                "Operators: check DERIV_WS_URL and any proxy between this server and Deriv.",
            ),
        ),
        TipGroup(
            ErrorCode.INVALID_URL,
            "The market data address is not a valid WebSocket URL",
            (
                "Operators: set DERIV_WS_URL to a ws:// or wss:// URL, e.g. wss://ws.derivws.com/websockets/v3.",
                "Retrying will not help until the setting is fixed.",
            ),
        ),
        TipGroup(
            ErrorCode.CONNECTION_REFUSED,
            "Nothing is accepting connections at the market data address",
            (
                "Operators: check the host and port in DERIV_WS_URL.",
                "If you run the simulator separately, make sure it is started.",
            ),
        ),
        TipGroup(
            ErrorCode.NETWORK_ERROR,
            "A network error stopped the connection",
            (
                "Check this server's internet connection and DNS.",
                "The service retries by itself once the network is back.",
            ),
        ),
        TipGroup(
            ErrorCode.DNS_LOOKUP_FAILED,
            "This server cannot look up the market data host",
            (
                "The service retries by itself once the name resolves again.",
                "Operators: check this server's DNS settings and internet access.",
                "Check the host name in DERIV_WS_URL for typos.",
            ),
        ),
        TipGroup(
            ErrorCode.TLS_HANDSHAKE_FAILED,
            "The secure (TLS) connection could not be set up",
            (
                "A wss:// URL needs a server that speaks TLS; for a plain server use ws://.",
                "Operators: check DERIV_WS_URL and any proxy that intercepts TLS.",
            ),
        ),
        TipGroup(
            ErrorCode.TLS_CERTIFICATE_INVALID,
            "The server's TLS certificate was not accepted",
            (
                "The certificate may be expired, self-signed, or for another host name.",
                "Operators: check the host in DERIV_WS_URL and the clock of this server.",
                "Retrying will not help until the certificate problem is fixed.",
            ),
        ),
        TipGroup(
            DerivCode.INVALID_APP_ID,
            "Deriv does not recognise this app_id",
            (
                "Operators: set DERIV_APP_ID to the app_id registered for this service.",
                "Retrying will not help until the app_id is fixed.",
            ),
        ),
        TipGroup(
            DerivCode.ACCESS_RESTRICTED,
            "Deriv refused access for this app",
            (
                "The app_id or the origin is blocked; check the app's settings with Deriv.",
                "Retrying will not help until access is granted.",
            ),
        ),
        TipGroup(
            DerivCode.INVALID_TOKEN,
            "The API token was rejected",
            (
                "Operators: create a new token and set DERIV_API_TOKEN.",
                "Check that the token has not expired or been revoked.",
            ),
        ),
        TipGroup(
            DerivCode.RATE_LIMIT,
            "Deriv is limiting how fast we may ask",
            (
                "The service slows down by itself; it recovers within a minute.",
                "Pressing Retry repeatedly does not help.",
            ),
        ),
        TipGroup(
            ErrorCode.HEARTBEAT_TIMEOUT,
            "The link stopped answering pings",
            (
                "Often a silent network drop; the service has already started reconnecting.",
                "Operators: if it recurs, check proxies or NAT that cut idle connections.",
            ),
        ),
        TipGroup(
            ErrorCode.HEARTBEAT_REJECTED,
            "The link answered a ping with an error",
            (
                "The service treats such a link as broken and has already reconnected.",
                "Operators: if it recurs, check DERIV_WS_URL points at the Deriv API v3.",
            ),
        ),
        TipGroup(
            ErrorCode.REQUEST_TIMEOUT,
            "The market data server did not answer a request in time",
            (
                "Deriv may be slow right now; the request is retried by itself.",
                "If it keeps happening, the link is reconnected automatically.",
            ),
        ),
        TipGroup(
            ErrorCode.TOO_MANY_PENDING_REQUESTS,
            "The market data server stopped answering requests",
            (
                "The service treats the link as broken and has already reconnected.",
                "Operators: if it recurs, check the network between this server and Deriv.",
            ),
        ),
        TipGroup(
            ErrorCode.INTERNAL_ERROR,
            "The service hit an internal error on the market feed link",
            (
                "It has already reconnected by itself; no action is needed if prices flow.",
                "Operators: the log holds the error with its traceback; please report it.",
            ),
        ),
        TipGroup(
            ErrorCode.CONNECTION_LOST,
            "The link to the market data server dropped",
            (
                "Brief drops are normal: the feed reconnects and fills in missed prices.",
                "If drops keep happening, check the network between this server and Deriv.",
            ),
        ),
        TipGroup(
            ErrorCode.SITE_UPDATING,
            "Deriv is deploying an update",
            (
                "No action needed: the feed reconnects when the update is over.",
                "Updates usually take a minute or two.",
            ),
        ),
        TipGroup(
            ErrorCode.PROTOCOL_ERROR,
            "The server sent data we could not read",
            (
                "The service dropped the bad message and reconnected.",
                "Operators: if it repeats, check DERIV_WS_URL points at the Deriv API v3.",
            ),
        ),
        TipGroup(
            DerivCode.INVALID_SYMBOL,
            "A configured symbol does not exist",
            (
                "Operators: check the names in DERIV_SYMBOLS.",
                "The other symbols keep streaming.",
            ),
        ),
        TipGroup(
            DerivCode.MARKET_IS_CLOSED,
            "A market is closed right now",
            (
                "Prices resume when the market opens; it is checked again every few minutes.",
                "Synthetic indices such as R_50 trade around the clock.",
            ),
        ),
    )
}

BREAKER_OPEN_TIPS = TipGroup(
    ErrorCode.CIRCUIT_OPEN,
    "Automatic retries are paused",
    (
        "Repeated failures opened the circuit breaker, giving the server time to recover.",
        "It tries again by itself when the countdown ends.",
        "Press Retry to try once now.",
    ),
)

BROWSER_OFFLINE_TIPS = TipGroup(
    "BrowserOffline",
    "Your browser lost its live link to this page",
    (
        "Check your internet connection, Wi-Fi or VPN.",
        "The page reconnects by itself; reload it if nothing changes within a minute.",
        "Meanwhile the status below is fetched every few seconds.",
    ),
)

UNKNOWN_ERROR_TIPS = TipGroup(
    "Unknown",
    "The market feed reported a problem",
    (
        "The service keeps retrying by itself.",
        "If it does not recover within a few minutes, press Retry or tell the operators.",
    ),
)

GENERAL_TIPS: tuple[str, ...] = (
    "This page updates by itself: there is no need to reload it.",
    "Retry starts one connection attempt now. Attempts are shared by everyone viewing "
    "this page, so pressing it again does not speed things up.",
    "A circuit breaker pauses retries after repeated failures so a struggling server can "
    "recover; its countdown shows when the next attempt happens.",
    f"Prices marked Stale are more than {STALE_TICK_S:.0f} s old: do not rely on them.",
    "Machines can read the same status as JSON at /api/v1/status, and health at /health.",
)


def tips_for(codes: Iterable[str | None], *, breaker_open: bool) -> list[TipGroup]:
    """The advice for what is wrong now: breaker first, then each distinct error code."""
    groups: list[TipGroup] = []
    if breaker_open:
        groups.append(BREAKER_OPEN_TIPS)
    seen: set[str] = set()
    for code in codes:
        if not code or code in seen:
            continue
        seen.add(code)
        groups.append(TIPS.get(code, UNKNOWN_ERROR_TIPS))
    return groups


# ---------------------------------------------------------------------------- the feed link


@dataclass(frozen=True, slots=True)
class LinkView:
    """One link as the page shows it."""

    state: str  # machine word, also on the DOM as data-state
    word: str  # what a person reads
    icon: str
    tone: str
    since: str  # "for 3 min 5 s"
    detail: str  # attempt n of max, countdown, ...
    error: str  # the last error in plain words ("" when there is none to show)
    error_code: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def feed_link_view(upstream: Mapping[str, Any], now: float, *, real_time: bool = True) -> LinkView:
    """The server's market feed link to Deriv, from ``status_view.status(...)["upstream"]``."""
    state = str(upstream.get("state", "stopped"))
    since_at = parse_iso(upstream.get("since"))
    since = f"for {format_duration(now - since_at)}" if since_at is not None else ""
    attempt = int(upstream.get("attempt") or 0)
    max_attempts = int(upstream.get("max_attempts") or 0)
    retry_after = upstream.get("retry_after_s")
    in_progress = bool(upstream.get("retry_in_progress"))
    last_error = upstream.get("last_error") or {}
    error = str(last_error.get("message") or "")
    code = str(last_error.get("code") or "")
    attempt_text = f"attempt {attempt} of {max_attempts}" if attempt and max_attempts else ""

    if state == "connected":
        symbols = upstream.get("symbols") or []
        live = sum(1 for s in symbols if s.get("subscribed"))
        detail = f"{live} of {len(symbols)} symbols streaming" if symbols else "streaming"
        if upstream.get("maintenance"):
            detail += " · Deriv announced an update"
        return LinkView("connected", "Connected", "circle-check", TONE_LIVE, since, detail, "", "")
    if upstream.get("maintenance") and state in ("connecting", "reconnecting", "circuit_open"):
        # The link is down for a planned maintenance: it says so, in blue, not as an outage.
        if state == "circuit_open":
            detail = _paused_detail(in_progress, retry_after)
        else:
            detail = _attempt_detail(attempt_text, in_progress, retry_after)
        detail = f"{detail} · planned update by Deriv" if detail else "planned update by Deriv"
        return LinkView(state, "Maintenance", MAINTENANCE_ICON, TONE_MAINTENANCE, since, detail, error, code)
    if state == "connecting":
        detail = _attempt_detail(attempt_text, in_progress, retry_after) or "opening the link"
        return LinkView("connecting", "Connecting", "loader", TONE_DEGRADED, since, detail, error, code)
    if state == "reconnecting":
        detail = _attempt_detail(attempt_text, in_progress, retry_after)
        return LinkView("reconnecting", "Reconnecting", "refresh-cw", TONE_DEGRADED, since, detail, error, code)
    if state == "circuit_open":
        detail = _paused_detail(in_progress, retry_after)
        return LinkView("circuit_open", "Circuit open", "circle-pause", TONE_DOWN, since, detail, error, code)
    return LinkView("stopped", "Stopped", "circle-stop", TONE_NEUTRAL, since, "the service is not running", error, code)


def _paused_detail(in_progress: bool, retry_after: float | None) -> str:
    if in_progress:
        return "trying once now"
    countdown = format_countdown(retry_after)
    return f"retries paused · next attempt {countdown}" if countdown else "retries paused"


def _attempt_detail(attempt_text: str, in_progress: bool, retry_after: float | None) -> str:
    if in_progress:
        return f"{attempt_text} in progress" if attempt_text else "attempt in progress"
    countdown = format_countdown(retry_after)
    if attempt_text and countdown:
        return f"{attempt_text} failed · next attempt {countdown}"
    return attempt_text or (f"next attempt {countdown}" if countdown else "")


# ---------------------------------------------------------------------------- overall banner


@dataclass(frozen=True, slots=True)
class Banner:
    level: str  # live | maintenance | degraded | down
    title: str
    detail: str
    icon: str
    tone: str
    page_title: str
    short: str  # the word in the page title


def banner_for(status: Mapping[str, Any], now: float) -> Banner:
    """The overall verdict: all systems live, degraded, or down."""
    upstream = status.get("upstream") or {}
    state = str(upstream.get("state", "stopped"))
    if upstream.get("maintenance") and state != "stopped":
        if state == "connected":
            detail = "Prices are streaming; the feed may drop briefly while Deriv updates its servers."
            return _banner("maintenance", "Deriv announced maintenance", detail, "Maintenance")
        detail = (
            "Deriv is updating its servers. Live prices return when the update is over; the feed reconnects by itself."
        )
        return _banner("maintenance", "Planned maintenance by Deriv", detail, "Maintenance")
    if state == "circuit_open":
        countdown = format_countdown(upstream.get("retry_after_s"))
        detail = "Live prices are unavailable. Retries are paused after repeated failures"
        detail += f"; the next attempt is {countdown}." if countdown and countdown != "now" else "."
        return _banner("down", "Market feed is down", detail, "Down")
    if state == "stopped":
        return _banner("down", "The service is not running", "Live prices are unavailable.", "Down")
    if state in ("connecting", "reconnecting"):
        title = "Connecting to the market feed" if state == "connecting" else "Reconnecting to the market feed"
        detail = "Prices shown may be out of date until the link is back."
        return _banner("degraded", title, detail, "Connecting…" if state == "connecting" else "Reconnecting…")
    problems = degraded_reasons(status)
    if problems:
        return _banner("degraded", "Partially degraded", " ".join(problems), "Degraded")
    return _banner("live", "All systems live", "Prices are streaming in real time.", "Live")


def _banner(level: str, title: str, detail: str, short: str) -> Banner:
    icon, tone, dot = {
        "live": ("circle-check", TONE_LIVE, "●"),
        "maintenance": (MAINTENANCE_ICON, TONE_MAINTENANCE, "◐"),
        "degraded": ("triangle-alert", TONE_DEGRADED, "◐"),
        "down": ("circle-x", TONE_DOWN, "○"),
    }[level]
    return Banner(level, title, detail, icon, tone, f"{dot} {short} — {PRODUCT}", short)


def degraded_reasons(status: Mapping[str, Any]) -> list[str]:
    """Why a connected feed is not fully healthy (failed symbols, stale prices, open API breakers)."""
    reasons = []
    upstream = status.get("upstream") or {}
    failed = [s["symbol"] for s in upstream.get("symbols") or [] if s.get("failed_code")]
    if failed:
        reasons.append(f"Not streaming: {', '.join(failed)}.")
    stale = [t["symbol"] for t in status.get("ticks") or [] if t.get("stale")]
    if stale:
        reasons.append(f"Stale prices: {', '.join(stale)}.")
    open_api = [
        b["name"].removeprefix("api:")
        for b in status.get("circuit_breakers") or []
        if b.get("name", "").startswith("api:") and b.get("state") in ("open", "half_open")
    ]
    if open_api:
        reasons.append(f"Paused API routes: {', '.join(open_api)}.")
    return reasons


def announcement(banner: Banner, feed: LinkView) -> str:
    """The sentence the aria-live region reads: changes only when the state does."""
    parts = [f"{banner.title}.", f"Market feed: {feed.word.lower()}"]
    if feed.state in ("connecting", "reconnecting") and "attempt" in feed.detail:
        parts[-1] += f", {feed.detail.split(' · ')[0].removesuffix(' in progress').removesuffix(' failed')}"
    parts[-1] += "."
    return " ".join(parts)


# ---------------------------------------------------------------------------- ticks


def gap_sentence(gap: Mapping[str, Any] | None) -> str:
    """Which prices were lost for good (an outage longer than the upstream can resend), or ``""``."""
    if not gap or gap.get("from_epoch") is None or gap.get("to_epoch") is None:
        return ""
    first, last = int(gap["from_epoch"]) + 1, int(gap["to_epoch"]) - 1
    if last < first:
        return ""
    span = (
        f"at {clock_time_utc(first)}"
        if first == last
        else f"from {clock_time_utc(first).removesuffix(' UTC')} to {clock_time_utc(last)}"
    )
    return f"Prices {span} were lost: the outage outlasted what Deriv can resend."


def tick_rows(
    ticks: Sequence[Mapping[str, Any]],
    history: Mapping[str, Sequence[float]],
    symbols: Sequence[str],
    statuses: Sequence[Mapping[str, Any]] = (),
) -> list[dict[str, str]]:
    """One row a configured symbol (:func:`tick_row`), with or without a price yet.

    ``statuses`` are the upstream's per-symbol statuses (``status_view.status(...)["upstream"]["symbols"]``).
    """
    by_symbol = {t["symbol"]: t for t in ticks}
    gaps = {s.get("symbol"): gap_sentence(s.get("gap")) for s in statuses}
    return [
        tick_row(symbol, by_symbol.get(symbol), history.get(symbol, ()), gaps.get(symbol, "")) for symbol in symbols
    ]


def tick_row(symbol: str, tick: Mapping[str, Any] | None, quotes: Sequence[float], gap: str = "") -> dict[str, str]:
    """A symbol's price, change, age, stale mark, sparkline points and lost prices.

    ``tick`` is its latest tick (``None``: no price yet, shown as a dash and stale);
    ``quotes`` its recent quotes, oldest first, ending with that tick.
    """
    if tick is None:
        price, age, stale, points = "—", "no price yet", True, ""
        direction, change = format_change(None, None, 0)
    else:
        pip = int(tick.get("pip_size") or 0)
        quote = float(tick["quote"])
        # The history ends with this very tick, so the one before it is the previous price.
        previous = quotes[-2] if len(quotes) >= 2 else None
        direction, change = format_change(previous, quote, pip)
        price = format_price(quote, pip)
        age = format_age(float(tick.get("age_s") or 0.0))
        stale = bool(tick.get("stale"))
        points = sparkline_points(quotes)
    return {
        "symbol": symbol,
        "price": price,
        "direction": direction,
        "change": change,
        "age": age,
        "stale": "true" if stale else "",
        "points": points,
        "gap": gap,
    }


# ---------------------------------------------------------------------------- breakers and health


def breaker_name(name: str) -> str:
    if name == "websocket":
        return "Market feed link"
    if name.startswith("api:"):
        return f"API {name.removeprefix('api:')}"
    return name


# A breaker's state -> word, icon, tone (the breakers panel and the breaker log agree).
BREAKER_LOOK: Mapping[str, tuple[str, str, str]] = {
    "closed": ("Closed", "circle-check", TONE_LIVE),
    "open": ("Open", "circle-pause", TONE_DOWN),
    "half_open": ("Half-open", "flask-conical", TONE_DEGRADED),
    "disabled": ("Disabled", "circle-minus", TONE_NEUTRAL),
}
# What a breaker that is not open does with calls.
BREAKER_PASSING: Mapping[str, str] = {
    "closed": "passing calls",
    "half_open": "testing one call",
    "disabled": "passes everything",
}


def breaker_rows(breakers: Sequence[Mapping[str, Any]]) -> list[dict[str, str]]:
    """The circuit breakers panel: the market feed's breaker first, then the API routes."""
    ordered = sorted(breakers, key=lambda b: (b.get("name") != "websocket", str(b.get("name"))))
    rows = []
    for b in ordered:
        state = str(b.get("state", "closed"))
        threshold = (b.get("config") or {}).get("failure_threshold")
        failures = int(b.get("failure_count") or 0)
        failures_text = f"{failures} of {threshold} failures" if threshold else f"{failures} failures"
        # A state this page does not know is shown as closed.
        word, icon, tone = BREAKER_LOOK.get(state, BREAKER_LOOK["closed"])
        if state == "open":
            countdown = (
                "held open by an admin" if b.get("forced") else f"retry {format_countdown(b.get('retry_after_s'))}"
            )
        else:
            countdown = BREAKER_PASSING.get(state, BREAKER_PASSING["closed"])
        rows.append(
            {
                "name": breaker_name(str(b.get("name", ""))),
                "key": str(b.get("name", "")),
                "state": state,
                "word": word,
                "icon": icon,
                "tone": tone,
                "failures": failures_text,
                "countdown": countdown,
                # A closed breaker with no failures counted has nothing left to explain.
                "last_failure": "" if state == "closed" and not failures else str(b.get("last_failure") or ""),
            }
        )
    return rows


HEALTH_NAMES: Mapping[str, str] = {
    "upstream": "Market feed link",
    "relay": "Streaming API (/api/v1/ws)",
    "hub": "Price fan-out",
    "circuitBreakers": "Circuit breakers",
    "eventLoop": "Server responsiveness",
    "database": "History database",
    "alerts": "Alerts",
}


@dataclass(frozen=True, slots=True)
class HealthView:
    status: str
    word: str
    icon: str
    tone: str
    rows: list[dict[str, str]] = field(default_factory=list)


def health_view(overall: str, results: Iterable[tuple[str, str, str]]) -> HealthView:
    """The health summary from ``(component_id, status, output)`` check results."""
    grouped: dict[str, tuple[str, str]] = {}
    for component_id, status, output in results:
        key = "circuitBreakers" if component_id.startswith("circuitBreaker.") else component_id
        current, note = grouped.get(key, ("pass", ""))
        if status_rank(status) > status_rank(current):
            current, note = status, output
        elif status == current and not note:
            note = output
        grouped[key] = (current, note)
    rows = []
    for key, (status, note) in grouped.items():
        word, icon, tone = health_look(status)
        rows.append(
            {
                "key": key,
                "name": HEALTH_NAMES.get(key, key[:1].upper() + key[1:]),
                "status": status,
                "word": word,
                "icon": icon,
                "tone": tone,
                "note": note if status != "pass" else "",
            }
        )
    word, icon, tone = health_look(overall)
    return HealthView(overall, word, icon, tone, rows)


def health_look(status: str) -> tuple[str, str, str]:
    """A check status's (word, icon, tone), the same in every panel."""
    if status == "pass":
        return "Operational", "circle-check", TONE_LIVE
    if status == "warn":
        return "Warning", "triangle-alert", TONE_DEGRADED
    return "Failing", "circle-x", TONE_DOWN


# ---------------------------------------------------------------------------- the browser's settings


@dataclass(frozen=True, slots=True)
class BrowserSettings:
    """The ``VITE_*`` settings as the page uses them (the running server's, not the build's).

    Each field is named as the state var that holds it (:class:`rxapp.state.StatusState`).
    """

    reconnect_attempts: int
    lost_after_attempts: int  # failed attempts of the page's own link before the card says "Lost"
    reconnect_interval_ms: int
    real_time_updates: bool
    fallback_enabled: bool
    live_text: str  # the browser link card's line while the link is up


def browser_settings(*, reconnect_attempts: int, interval_ms: int, real_time: bool, fallback: bool) -> BrowserSettings:
    live_text = (
        "Live updates are streaming."
        if real_time
        else f"Refreshing every {interval_ms / 1000:g} s (real-time updates are off)."
    )
    return BrowserSettings(reconnect_attempts, max(1, reconnect_attempts), interval_ms, real_time, fallback, live_text)
