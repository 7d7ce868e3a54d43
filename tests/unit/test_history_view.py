"""The history section's words, tones and labels: pure functions of store answers and the time."""

from __future__ import annotations

from typing import Any

import pytest

from backend_core.history.reader import MAX_INCIDENT_ROWS, MAX_TRANSITION_ROWS
from backend_core.incidents import Cause, Recovery
from rxapp.history_view import (
    CAUSE_WORDS,
    RECOVERY_WORDS,
    bar_label,
    component_name,
    format_ago,
    format_day,
    format_uptime,
    format_when_utc,
    history_notice,
    history_state,
    incident_cause,
    incident_row,
    incident_rows,
    incident_title,
    recovery_words,
    transition_row,
    transition_rows,
    unavailable_reason,
    uptime_bars,
    uptime_view,
    uptime_windows,
)
from rxapp.ui_logic import TIPS, breaker_rows
from tests.helpers import iso

# 2027-01-15 08:00:00 UTC
NOW = 1_800_000_000.0


def incident(**changes: Any) -> dict[str, Any]:
    """An upstream incident as HistoryStore.incidents() answers (resolved, 95 s long)."""
    base: dict[str, Any] = {
        "id": "9f1c",
        "component": "upstream",
        "kind": "upstream",
        "started_at": iso(NOW - 600),
        "ended_at": iso(NOW - 505),
        "ongoing": False,
        "duration_s": 95.0,
        "cause": "connection_lost",
        "error_code": "HandshakeRefused",
        "message": "The server refused the connection (HTTP 503).",
        "recovery": "manual_retry",
        "attempts": 4,
        "planned": False,
    }
    base.update(changes)
    return base


def breaker_incident(**changes: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "component": "breaker:websocket",
        "kind": "breaker",
        "cause": "breaker_opened",
        "error_code": "failure_threshold",
        "message": "",
        "recovery": "breaker_probe",
        "attempts": None,
    }
    return incident(**{**fields, **changes})


def bar(day: str, status: str = "up", uptime: float | None = 100.0, incidents: int = 0) -> dict[str, Any]:
    return {
        "date": day,
        "uptime_pct": uptime,
        "worst_status": status,
        "observed_s": 0.0 if uptime is None else 86_400.0,
        "down_s": 0.0,
        "incidents": incidents,
    }


def history(component: str = "upstream", days: int = 3, **uptime: float | None) -> dict[str, Any]:
    bars = [bar(f"2027-01-{13 + i:02d}") for i in range(days)]
    bars[0] = bar("2027-01-13", "no_data", None)
    bars[-1] = bar("2027-01-15", "down", 99.3, incidents=2)
    return {
        "component": component,
        "days": days,
        "retention_days": 90,
        "generated_at": iso(NOW),
        "uptime_pct": {"24h": 99.3, "7d": 99.9, "30d": 99.97, "90d": 99.97, **uptime},
        "bars": bars,
    }


# ---------------------------------------------------------------------------- numbers and times


@pytest.mark.parametrize(
    ("pct", "text"),
    [
        (100.0, "100%"),
        (99.999, "99.99%"),  # rounded down: a day with any downtime never says 100%
        (99.95, "99.95%"),
        (98.333, "98.33%"),
        (50.0, "50.00%"),
        (0.0, "0%"),
        (None, "no data"),
        (float("nan"), "no data"),
    ],
)
def test_uptime_is_rounded_down_so_any_downtime_shows(pct: float | None, text: str) -> None:
    assert format_uptime(pct) == text


def test_days_and_times_are_plain_and_utc() -> None:
    assert format_day("2025-03-04") == "4 Mar 2025"
    assert format_day("not a date") == "not a date"
    assert format_when_utc(NOW - 3600 * 8 + 5 * 60 + 7) == "15 Jan, 00:05:07 UTC"


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "just now"),
        (59.9, "just now"),
        (60, "1 min ago"),
        (3599, "59 min ago"),
        (3600 * 5 + 1800, "5 h ago"),
        (86400 * 1.5, "1 day ago"),
        (86400 * 40, "40 days ago"),
        (None, ""),
    ],
)
def test_relative_times_are_coarse_so_the_list_changes_once_a_minute(seconds: float | None, text: str) -> None:
    assert format_ago(seconds) == text


# ---------------------------------------------------------------------------- components


def test_component_names_say_what_it_is() -> None:
    assert component_name("upstream") == "Market feed"
    assert component_name("breaker:websocket") == "Circuit breaker: Market feed link"
    assert component_name("breaker:api:/api/v1/status") == "Circuit breaker: API /api/v1/status"


# ---------------------------------------------------------------------------- bars


def test_every_bar_has_a_label_with_the_date_uptime_and_incidents() -> None:
    assert bar_label(bar("2027-01-14", "up", 100.0)) == "14 Jan 2027: 100% uptime, no incidents, operational"
    assert (
        bar_label(bar("2027-01-15", "down", 99.3, incidents=1), today=True)
        == "Today, 15 Jan 2027: 99.30% uptime, 1 incident, down at times"
    )
    assert bar_label(bar("2027-01-14", "degraded", 99.991, incidents=3)).endswith(
        "99.99% uptime, 3 incidents, degraded at times"
    )
    assert bar_label(bar("2027-01-14", "maintenance", 97.0)).endswith("planned maintenance")
    assert bar_label(bar("2027-01-13", "no_data", None)) == "13 Jan 2027: no data"


def test_bars_are_coloured_by_the_worst_state_of_the_day_and_days_without_data_are_neutral() -> None:
    rows = uptime_bars([bar("2027-01-13", "no_data", None), bar("2027-01-14"), bar("2027-01-15", "down", 99.3)])
    assert [(r["status"], r["tone"], r["word"]) for r in rows] == [
        ("no_data", "gray", "No data"),
        ("up", "grass", "Operational"),
        ("down", "red", "Down"),
    ]
    assert [r["today"] for r in rows] == ["", "", "true"]
    assert rows[-1]["label"].startswith("Today, 15 Jan 2027: 99.30% uptime")


def test_an_unknown_day_status_is_shown_as_the_worst_not_the_best() -> None:
    [row] = uptime_bars([bar("2027-01-15", "on_fire", 90.0)])
    assert row["status"] == "down"
    [row] = uptime_bars([bar("2027-01-15", "up", None)])
    assert row["status"] == "no_data"


def test_phones_hide_all_but_the_newest_30_bars() -> None:
    rows = uptime_bars([bar(f"2027-01-{1 + i % 28:02d}") for i in range(90)])
    assert [r["older"] for r in rows].count("true") == 60
    assert rows[59]["older"] == "true" and rows[60]["older"] == ""


def test_uptime_windows_and_the_row_summary() -> None:
    assert uptime_windows({"24h": 100.0, "7d": 99.5, "30d": None}) == [
        {"key": "24h", "label": "24 h", "value": "100%"},
        {"key": "7d", "label": "7 d", "value": "99.50%"},
        {"key": "30d", "label": "30 d", "value": "no data"},
        {"key": "90d", "label": "90 d", "value": "no data"},
    ]
    view = uptime_view(history("breaker:websocket", days=90))
    assert view.name == "Circuit breaker: Market feed link"
    assert view.summary == "Circuit breaker: Market feed link: 99.97% uptime over the last 90 days"
    assert len(view.bars) == 90
    assert uptime_view(history(**{"90d": None})).summary == "Market feed: no data yet"


# ---------------------------------------------------------------------------- incidents


def test_an_incident_says_what_failed_why_when_how_long_and_how_it_recovered() -> None:
    row = incident_row(incident(), NOW)
    assert row["title"] == "Market feed down"
    assert (row["state"], row["word"], row["icon"], row["tone"]) == ("resolved", "Resolved", "circle-check", "grass")
    assert row["cause"] == TIPS["HandshakeRefused"].title  # the same words as the live tips
    assert row["detail"] == "The server refused the connection (HTTP 503)."
    assert row["code"] == "HandshakeRefused"
    assert row["started"] == "15 Jan, 07:50:00 UTC"
    assert row["ago"] == "10 min ago"
    assert row["duration"] == "1 min 35 s"
    assert row["recovery"] == "Recovered when someone pressed Retry"


def test_an_ongoing_incident_says_so_with_a_live_duration() -> None:
    ongoing = incident(ended_at=None, ongoing=True, recovery=None, duration_s=1.0)
    assert incident_row(ongoing, NOW)["duration"] == "ongoing · 10 min so far"
    later = incident_row(ongoing, NOW + 65)
    assert later["duration"] == "ongoing · 11 min 5 s so far"
    assert (later["state"], later["word"], later["tone"]) == ("ongoing", "Ongoing", "red")
    assert later["recovery"] == "Not recovered yet"


def test_causes_without_a_known_code_fall_back_to_plain_words() -> None:
    assert incident_cause(incident(error_code=None, cause=Cause.COULD_NOT_CONNECT))[0] == (
        "Could not connect to the market data server"
    )
    assert incident_cause(incident(error_code="Brand new", cause=Cause.CONNECTION_LOST))[0] == (
        "The link to the market data server dropped"
    )
    assert incident_cause(incident(error_code=None, cause=Cause.CIRCUIT_OPEN))[0] == (
        "Retries were paused by the circuit breaker"
    )
    assert incident_cause(incident(error_code=None, cause="something_odd"))[0] == "Something odd"
    assert incident_cause(incident(error_code=None, cause=""))[0] == "The market feed was down"


def test_planned_maintenance_is_told_apart() -> None:
    planned = incident(
        planned=True, cause="planned_maintenance", error_code="SiteUpdating", message="Deriv is updating"
    )
    assert incident_title(planned) == "Market feed: planned maintenance"
    assert incident_cause(planned) == ("Planned maintenance by Deriv", "Deriv is updating")


def test_an_upstream_incident_without_a_message_says_the_link_was_down() -> None:
    assert incident_cause(incident(error_code=None, message=""))[1] == "The market data link is down."


def test_breaker_incidents_say_which_breaker_and_why_it_opened() -> None:
    row = incident_row(breaker_incident(), NOW)
    assert row["title"] == "Circuit breaker opened: Market feed link"
    assert row["cause"] == "Opened: too many failures in a row"
    assert row["detail"] == "" and row["code"] == ""  # the reason is not an error code
    assert row["recovery"] == "Recovered: the circuit breaker's test connection succeeded"
    api = incident_row(breaker_incident(component="breaker:api:/api/v1/status", error_code="odd_reason"), NOW)
    assert api["title"] == "Circuit breaker opened: API /api/v1/status"
    assert api["cause"] == "Opened: odd reason"


@pytest.mark.parametrize(
    ("recovery", "attempts", "text"),
    [
        ("reconnected", 3, "Reconnected by itself after 3 attempts"),
        ("reconnected", 1, "Reconnected by itself after 1 attempt"),
        ("reconnected", None, "Reconnected by itself"),
        ("manual_retry", 2, "Recovered when someone pressed Retry"),
        ("breaker_probe", None, "Recovered: the circuit breaker's test connection succeeded"),
        ("reset", None, "Reset by an admin"),
        ("breakers_enabled", None, "Circuit breakers were switched back on"),
        ("service_stopped", 2, "Not recovered: the service was stopped"),
        ("service_restarted", None, "Not recovered: the service restarted"),
        ("something_new", None, "Something new"),
        (None, None, "Ended (how is not recorded)"),
    ],
)
def test_recoveries_in_plain_words(recovery: str | None, attempts: int | None, text: str) -> None:
    assert recovery_words(recovery, ongoing=False, attempts=attempts) == text


def test_every_recovery_and_upstream_cause_has_words() -> None:
    assert set(RECOVERY_WORDS) == set(Recovery)
    assert set(CAUSE_WORDS) == set(Cause) - {Cause.BREAKER_OPENED}  # a breaker's reason says why


def test_a_reconnection_lists_its_attempts() -> None:
    row = incident_row(incident(recovery="reconnected", attempts=4), NOW)
    assert row["recovery"] == "Reconnected by itself after 4 attempts"


def test_an_incident_the_service_stopped_in_is_ended_not_resolved() -> None:
    row = incident_row(incident(recovery="service_stopped"), NOW)
    assert (row["state"], row["word"], row["icon"], row["tone"]) == ("ended", "Ended", "circle-stop", "gray")


def test_the_incident_list_is_bounded_and_keeps_the_stores_order() -> None:
    many = [incident(id=str(i)) for i in range(30)]
    rows = incident_rows(many, NOW)
    assert len(rows) == MAX_INCIDENT_ROWS
    assert [r["id"] for r in rows[:3]] == ["0", "1", "2"]
    assert incident_rows([], NOW) == []


# ---------------------------------------------------------------------------- breaker log


@pytest.mark.parametrize(
    ("transition", "now", "shown"),
    [
        pytest.param(
            {
                "name": "websocket",
                "from_state": "closed",
                "to_state": "open",
                "reason": "failure_threshold",
                "at": iso(NOW),
            },
            NOW + 90,
            {
                "breaker": "Market feed link",
                "from_word": "Closed",
                "to_word": "Open",
                "tone": "red",
                "reason": "too many failures in a row",
                "at": "15 Jan, 08:00:00 UTC",
                "ago": "1 min ago",
            },
            id="opened",
        ),
        pytest.param(
            {
                "name": "websocket",
                "from_state": "half_open",
                "to_state": "closed",
                "reason": "probe_succeeded",
                "at": "",
            },
            NOW,
            {
                "from_word": "Half-open",
                "to_word": "Closed",
                "tone": "grass",
                "reason": "the test call succeeded",
                "at": "unknown time",
            },
            id="closed by a probe, time unknown",
        ),
        pytest.param(
            {"name": "x", "from_state": "weird", "to_state": "", "reason": "new_reason"},
            NOW,
            {"from_word": "weird", "to_word": "?", "reason": "new reason"},
            id="words it does not know",
        ),
    ],
)
def test_a_transition_says_which_breaker_from_to_why_and_when(
    transition: dict[str, str], now: float, shown: dict[str, str]
) -> None:
    row = transition_row(transition, now)
    assert {key: row[key] for key in shown} == shown


@pytest.mark.parametrize("state", ["closed", "open", "half_open", "disabled"])
def test_the_breaker_log_names_a_state_as_the_breakers_panel_does(state: str) -> None:
    [panel] = breaker_rows([{"name": "websocket", "state": state, "failure_count": 0, "config": {}}])
    log = transition_row({"name": "websocket", "from_state": state, "to_state": state, "reason": ""}, NOW)
    assert log["from_word"] == log["to_word"] == panel["word"]
    assert log["tone"] == panel["tone"]


def test_the_breaker_log_is_bounded() -> None:
    row = {"name": "websocket", "from_state": "open", "to_state": "half_open", "reason": "recovery_timeout"}
    assert len(transition_rows([row] * 50, NOW)) == MAX_TRANSITION_ROWS


# ---------------------------------------------------------------------------- when history cannot be read


def test_history_state() -> None:
    assert history_state(0, has_data=False) == "loading"
    assert history_state(1, has_data=True) == "ready"
    assert history_state(4, has_data=False) == "unavailable"


def test_a_database_that_cannot_answer_is_said_calmly_without_internals() -> None:
    assert unavailable_reason("the history database is unreachable") == "is not answering right now"
    assert unavailable_reason("the history database did not answer within 10s") == "is not answering right now"
    assert unavailable_reason("the history database is unusable: psycopg missing") == (
        "is not set up correctly (operators: see /health/detailed)"
    )
    assert unavailable_reason("the history database is not available yet") == "is still starting"
    assert unavailable_reason("the history database is not available yet (the history database is unreachable)") == (
        "is not answering right now"
    )
    never = history_notice("the history database is unreachable", has_data=False, updated_at=None)
    assert never.startswith("History is unavailable: the history database is not answering right now.")
    assert "Live status above is not affected" in never
    stale = history_notice("the history database is unreachable", has_data=True, updated_at=NOW)
    assert stale.startswith("History may be out of date")
    assert "08:00 UTC" in stale
    assert history_notice("", has_data=True, updated_at=NOW) == ""


def test_a_planned_maintenance_reads_and_colours_as_maintenance() -> None:
    planned = incident(planned=True, cause="planned_maintenance", error_code="SiteUpdating", recovery="reconnected")
    row = incident_row(planned, NOW)
    assert (row["state"], row["word"], row["tone"], row["kind"], row["icon"]) == (
        "resolved",
        "Completed",
        "blue",
        "maintenance",
        "circle-check",
    )
    assert row["cause_icon"] == "wrench" and row["title"] == "Market feed: planned maintenance"
    ongoing = incident_row({**planned, "ended_at": None, "ongoing": True, "recovery": None}, NOW)
    assert (ongoing["state"], ongoing["word"], ongoing["tone"], ongoing["icon"]) == (
        "ongoing",
        "In maintenance",
        "blue",
        "wrench",
    )
    # An outage keeps its red and its words.
    outage = incident_row({**incident(), "ended_at": None, "ongoing": True}, NOW)
    assert (outage["word"], outage["tone"], outage["kind"], outage["cause_icon"]) == (
        "Ongoing",
        "red",
        "outage",
        "triangle-alert",
    )
