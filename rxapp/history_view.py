"""What the status page's history section says, decided by pure functions.

The inputs are the answers of the history store (``HistoryStore.history``, ``.incidents``,
``.transitions``, the same JSON ``/api/v1/history``, ``/api/v1/incidents`` and
``/api/v1/transitions`` serve: causes and recoveries as codes, attempts as numbers) and
the current wall time; the outputs are the strings, tones and labels the page places.
No Reflex, no clock, no I/O: every word is tested in ``tests/unit/test_history_view.py``.

As in :mod:`rxapp.ui_logic`, tones are Radix colour names and nothing is said by colour
alone: every uptime bar has a label (date, uptime %, incidents, state) used as its
tooltip and its accessible name, and a legend names the colours.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from backend_core.history.reader import HISTORY_DAYS, MAX_INCIDENT_ROWS, MAX_TRANSITION_ROWS
from backend_core.incidents import BREAKER_PREFIX, UPSTREAM, UPTIME_WINDOWS, Cause, Recovery, breaker_reason_words
from rxapp.ui_logic import (
    BREAKER_LOOK,
    MAINTENANCE_ICON,
    TIPS,
    TONE_DEGRADED,
    TONE_DOWN,
    TONE_LIVE,
    TONE_MAINTENANCE,
    TONE_NEUTRAL,
    breaker_name,
    format_age,
    format_duration,
    parse_iso,
)

# Below the xs breakpoint (520 px) only the newest bars are shown, so each stays wide
# enough to see and to point at on a phone.
PHONE_DAYS = 30

# worst_status of a day (the store's severity order) -> word, tone, phrase in a bar label.
DAY_LOOK: Mapping[str, tuple[str, str, str]] = {
    "up": ("Operational", TONE_LIVE, "operational"),
    "maintenance": ("Maintenance", TONE_MAINTENANCE, "planned maintenance"),
    "degraded": ("Degraded", TONE_DEGRADED, "degraded at times"),
    "down": ("Down", TONE_DOWN, "down at times"),
    "no_data": ("No data", TONE_NEUTRAL, "no data"),
}
# The legend under the bars, in severity order.
LEGEND: tuple[tuple[str, str], ...] = tuple(
    (DAY_LOOK[key][0], DAY_LOOK[key][1]) for key in ("up", "maintenance", "degraded", "down", "no_data")
)
# The store's uptime windows ("24h", "7d", ...), as the page labels them.
WINDOW_LABELS: tuple[tuple[str, str], ...] = tuple((key, key[:-1] + " " + key[-1]) for key in UPTIME_WINDOWS)

# Upstream incident causes (backend_core.incidents.Cause) when no error code says more.
CAUSE_WORDS: Mapping[str, str] = {
    Cause.CONNECTION_LOST: "The link to the market data server dropped",
    Cause.COULD_NOT_CONNECT: "Could not connect to the market data server",
    Cause.CIRCUIT_OPEN: "Retries were paused by the circuit breaker",
    Cause.PLANNED_MAINTENANCE: "Planned maintenance by Deriv",
}
# What an upstream incident without an error message says.
NO_ERROR_MESSAGE = "The market data link is down."
# How an incident ended (backend_core.incidents.Recovery) in plain words.
RECOVERY_WORDS: Mapping[str, str] = {
    Recovery.MANUAL_RETRY: "Recovered when someone pressed Retry",
    Recovery.BREAKER_PROBE: "Recovered: the circuit breaker's test connection succeeded",
    Recovery.RECONNECTED: "Reconnected by itself",
    Recovery.RESET: "Reset by an admin",
    Recovery.BREAKERS_ENABLED: "Circuit breakers were switched back on",
    Recovery.BREAKERS_DISABLED: "Circuit breakers were switched off",
    Recovery.BREAKER_CLOSED: "Closed",
    Recovery.SERVICE_STOPPED: "Not recovered: the service was stopped",
    Recovery.SERVICE_RESTARTED: "Not recovered: the service restarted",
}
# Recoveries that mean the service stopped watching first: the incident "ended", it did not resolve.
NOT_RECOVERED: frozenset[str] = frozenset(r.value for r in Recovery if not r.recovered)


# ---------------------------------------------------------------------------- words for numbers and times


def format_uptime(pct: float | None) -> str:
    """``"100%"``, ``"99.95%"``, ``"no data"``. Rounded down, so any downtime shows."""
    if pct is None or not math.isfinite(pct):
        return "no data"
    if pct >= 100:
        return "100%"
    if pct <= 0:
        return "0%"
    return f"{math.floor(pct * 100) / 100:.2f}%"


def format_day(iso_date: str) -> str:
    """``"2025-03-14"`` -> ``"14 Mar 2025"`` (unparseable text is returned as it came)."""
    try:
        day = date.fromisoformat(iso_date)
    except (TypeError, ValueError):
        return str(iso_date)
    return f"{day.day} {day:%b %Y}"


def format_when_utc(wall: float) -> str:
    """``"14 Mar, 09:05:07 UTC"``: the server cannot know the reader's time zone."""
    moment = datetime.fromtimestamp(wall, tz=UTC)
    return f"{moment.day} {moment:%b, %H:%M:%S} UTC"


def format_ago(seconds: float | None) -> str:
    """The history lists' relative time: coarse (:func:`rxapp.ui_logic.format_age`), so a
    list changes at most once a minute, ``"5 min ago"``; ``""`` when there is no time."""
    return format_age(seconds, coarse=True, unknown="")


def plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


# ---------------------------------------------------------------------------- components


def component_name(component: str) -> str:
    """``"upstream"`` -> ``"Market feed"``; ``"breaker:websocket"`` -> ``"Circuit breaker: Market feed link"``."""
    if component == UPSTREAM:
        return "Market feed"
    if component.startswith(BREAKER_PREFIX):
        return f"Circuit breaker: {breaker_name(component.removeprefix(BREAKER_PREFIX))}"
    return component


# ---------------------------------------------------------------------------- uptime bars


@dataclass(frozen=True, slots=True)
class UptimeView:
    """One component's uptime row as the page shows it."""

    key: str
    name: str
    summary: str  # the row's accessible description: "Market feed: 99.95% uptime over 90 days"
    windows: list[dict[str, str]] = field(default_factory=list)
    bars: list[dict[str, str]] = field(default_factory=list)


def bar_label(bar: Mapping[str, Any], *, today: bool = False) -> str:
    """``"Today, 14 Mar 2025: 99.85% uptime, 1 incident, down at times"`` (tooltip and accessible name)."""
    day = format_day(str(bar.get("date", "")))
    if today:
        day = f"Today, {day}"
    status = str(bar.get("worst_status") or "no_data")
    incidents = int(bar.get("incidents") or 0)
    if status == "no_data" or bar.get("uptime_pct") is None:
        text = f"{day}: no data"
        return f"{text}, {plural(incidents, 'incident')}" if incidents else text
    phrase = DAY_LOOK.get(status, DAY_LOOK["down"])[2]
    uptime = format_uptime(bar.get("uptime_pct"))
    return f"{day}: {uptime} uptime, {plural(incidents, 'incident') if incidents else 'no incidents'}, {phrase}"


def uptime_bars(bars: Sequence[Mapping[str, Any]], phone_days: int = PHONE_DAYS) -> list[dict[str, str]]:
    """One dict a day, oldest first (as the store answers): label, status, tone, and
    ``older`` (``"true"`` for the bars a phone hides)."""
    out = []
    count = len(bars)
    for index, bar in enumerate(bars):
        status = str(bar.get("worst_status") or "no_data")
        if bar.get("uptime_pct") is None:
            status = "no_data"
        elif status not in DAY_LOOK or status == "no_data":
            status = "down"  # an unknown word from a newer store: say the worst, not the best
        word, tone, _ = DAY_LOOK[status]
        today = index == count - 1
        out.append(
            {
                "date": str(bar.get("date", "")),
                "status": status,
                "word": word,
                "tone": tone,
                "label": bar_label(bar, today=today),
                "older": "true" if index < count - phone_days else "",
                "today": "true" if today else "",
            }
        )
    return out


def uptime_windows(uptime_pct: Mapping[str, float | None]) -> list[dict[str, str]]:
    """``[{"key": "24h", "label": "24 h", "value": "100%"}, ...]`` for 24 h / 7 d / 30 d / 90 d."""
    return [{"key": key, "label": label, "value": format_uptime(uptime_pct.get(key))} for key, label in WINDOW_LABELS]


def uptime_view(history: Mapping[str, Any]) -> UptimeView:
    """A component's row from ``HistoryStore.history(component, days)``."""
    component = str(history.get("component", ""))
    name = component_name(component)
    uptime = history.get("uptime_pct") or {}
    days = int(history.get("days") or HISTORY_DAYS)
    total = format_uptime(uptime.get("90d"))
    summary = f"{name}: no data yet" if total == "no data" else f"{name}: {total} uptime over the last {days} days"
    return UptimeView(component, name, summary, uptime_windows(uptime), uptime_bars(history.get("bars") or []))


# ---------------------------------------------------------------------------- incidents


def incident_cause(incident: Mapping[str, Any]) -> tuple[str, str]:
    """``(headline, detail)``: what went wrong in plain words, and the message shown then.

    Upstream incidents reuse the status page's wording for the error code
    (:data:`rxapp.ui_logic.TIPS` titles); breaker incidents say why the breaker opened.
    """
    code = str(incident.get("error_code") or "")
    cause = str(incident.get("cause") or "")
    message = str(incident.get("message") or "")
    if incident.get("kind") == "breaker" or str(incident.get("component", "")).startswith(BREAKER_PREFIX):
        reason = breaker_reason_words(code) or "repeated failures"
        return f"Opened: {reason}", ""
    message = message or NO_ERROR_MESSAGE
    if is_planned(incident):
        return CAUSE_WORDS[Cause.PLANNED_MAINTENANCE], message
    if code in TIPS:
        return TIPS[code].title, message
    headline = CAUSE_WORDS.get(cause) or (_sentence(cause) if cause else "The market feed was down")
    return headline, message


def is_planned(incident: Mapping[str, Any]) -> bool:
    """A planned maintenance the upstream announced (shown in blue, not as an outage)."""
    return bool(incident.get("planned")) or incident.get("cause") == Cause.PLANNED_MAINTENANCE


def _sentence(code: str) -> str:
    """A code this version has no words for, readable: ``"new_cause"`` -> ``"New cause"``."""
    text = code.replace("_", " ")
    return text[:1].upper() + text[1:]


def incident_title(incident: Mapping[str, Any]) -> str:
    """What failed: ``"Market feed down"``, ``"Circuit breaker opened: Market feed link"``."""
    component = str(incident.get("component") or "")
    if component.startswith(BREAKER_PREFIX):
        return f"Circuit breaker opened: {breaker_name(component.removeprefix(BREAKER_PREFIX))}"
    if component == UPSTREAM:
        if is_planned(incident):
            return "Market feed: planned maintenance"
        return "Market feed down"
    return f"{component_name(component)} down"


def recovery_words(recovery: str | None, *, ongoing: bool, attempts: int | None = None) -> str:
    """How it ended: ``"Reconnected by itself after 3 attempts"``, ``"Not recovered yet"``."""
    if ongoing:
        return "Not recovered yet"
    text = str(recovery or "")
    if not text:
        return "Ended (how is not recorded)"
    if text == Recovery.RECONNECTED and attempts:
        return f"{RECOVERY_WORDS[Recovery.RECONNECTED]} after {plural(attempts, 'attempt')}"
    if text in RECOVERY_WORDS:
        return RECOVERY_WORDS[text]
    return _sentence(text)


def incident_row(incident: Mapping[str, Any], now: float) -> dict[str, str]:
    """One incident as the list shows it; ``now`` makes an ongoing one's duration live."""
    ongoing = bool(incident.get("ongoing")) or not incident.get("ended_at")
    started = parse_iso(incident.get("started_at"))
    ended = parse_iso(incident.get("ended_at"))
    if ongoing and started is not None:
        duration = f"ongoing · {format_duration(now - started)} so far"
    elif started is not None and ended is not None:
        duration = format_duration(ended - started)
    else:
        duration = format_duration(incident.get("duration_s"))
    recovery = str(incident.get("recovery") or "")
    planned = is_planned(incident)
    if ongoing and planned:
        state, word, icon, tone = "ongoing", "In maintenance", MAINTENANCE_ICON, TONE_MAINTENANCE
    elif ongoing:
        state, word, icon, tone = "ongoing", "Ongoing", "circle-x", TONE_DOWN
    elif recovery in NOT_RECOVERED:
        state, word, icon, tone = "ended", "Ended", "circle-stop", TONE_NEUTRAL
    elif planned:
        state, word, icon, tone = "resolved", "Completed", "circle-check", TONE_MAINTENANCE
    else:
        state, word, icon, tone = "resolved", "Resolved", "circle-check", TONE_LIVE
    headline, detail = incident_cause(incident)
    code = str(incident.get("error_code") or "") if incident.get("kind") != "breaker" else ""
    return {
        "id": str(incident.get("id") or ""),
        "component": str(incident.get("component") or ""),
        "title": incident_title(incident),
        "state": state,
        "word": word,
        "icon": icon,
        "tone": tone,
        "kind": "maintenance" if planned else "outage",  # on the DOM as data-kind
        "cause_icon": MAINTENANCE_ICON if planned else "triangle-alert",
        "cause": headline,
        "detail": detail,
        "code": code,
        "started": format_when_utc(started) if started is not None else "unknown time",
        "started_iso": str(incident.get("started_at") or ""),
        "ago": format_ago(now - started) if started is not None else "",
        "duration": duration,
        "recovery": recovery_words(recovery, ongoing=ongoing, attempts=_attempts(incident.get("attempts"))),
    }


def _attempts(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def incident_rows(
    incidents: Sequence[Mapping[str, Any]], now: float, limit: int = MAX_INCIDENT_ROWS
) -> list[dict[str, str]]:
    """The incident list, newest first (the store's order), at most ``limit`` rows."""
    return [incident_row(incident, now) for incident in incidents[: max(0, limit)]]


# ---------------------------------------------------------------------------- breaker transitions


def _breaker_word(state: str) -> str:
    return BREAKER_LOOK[state][0] if state in BREAKER_LOOK else state or "?"


def transition_row(transition: Mapping[str, Any], now: float) -> dict[str, str]:
    """One line of the breaker log: which breaker, from -> to, why, when."""
    name = str(transition.get("name") or "")
    from_state = str(transition.get("from_state") or "")
    to_state = str(transition.get("to_state") or "")
    reason = str(transition.get("reason") or "")
    at = parse_iso(transition.get("at"))
    return {
        "breaker": breaker_name(name),
        "key": name,
        "from_state": from_state,
        "to_state": to_state,
        "from_word": _breaker_word(from_state),
        "to_word": _breaker_word(to_state),
        "tone": BREAKER_LOOK[to_state][2] if to_state in BREAKER_LOOK else TONE_NEUTRAL,
        "reason": breaker_reason_words(reason),
        "at": format_when_utc(at) if at is not None else "unknown time",
        "at_iso": str(transition.get("at") or ""),
        "ago": format_ago(now - at) if at is not None else "",
    }


def transition_rows(
    transitions: Sequence[Mapping[str, Any]], now: float, limit: int = MAX_TRANSITION_ROWS
) -> list[dict[str, str]]:
    return [transition_row(transition, now) for transition in transitions[: max(0, limit)]]


# ---------------------------------------------------------------------------- when history cannot be read


def history_state(version: int, *, has_data: bool) -> str:
    """``"loading"`` before the first read, ``"ready"`` once one worked, else ``"unavailable"``."""
    if version <= 0:
        return "loading"
    return "ready" if has_data else "unavailable"


def unavailable_reason(error: str) -> str:
    """The store's ``StoreUnavailable`` message, said calmly for a reader (no internals)."""
    text = error.lower()
    if "unusable" in text:
        return "is not set up correctly (operators: see /health/detailed)"
    if "unreachable" in text or "did not answer" in text:
        return "is not answering right now"
    if "not available yet" in text or "not running" in text:
        return "is still starting"
    return "is not answering right now"


def history_notice(error: str, *, has_data: bool, updated_at: float | None) -> str:
    """What the history section says when its last read failed (``""`` when it did not)."""
    if not error:
        return ""
    reason = unavailable_reason(error)
    if has_data and updated_at is not None:
        clock = datetime.fromtimestamp(updated_at, tz=UTC).strftime("%H:%M UTC")
        return (
            f"History may be out of date: the history database {reason}. Showing what it said at {clock}. "
            "Live status above is not affected."
        )
    return (
        f"History is unavailable: the history database {reason}. "
        "Live status above is not affected; history will appear here when the database is back."
    )
