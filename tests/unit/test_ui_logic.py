"""What the status page says: pure functions of a status snapshot and the time."""

from __future__ import annotations

from typing import Any

import pytest

from rxapp import ui_logic
from rxapp.ui_logic import (
    BREAKER_OPEN_TIPS,
    TIPS,
    UNKNOWN_ERROR_TIPS,
    announcement,
    banner_for,
    breaker_rows,
    feed_link_view,
    format_age,
    format_change,
    format_countdown,
    format_duration,
    format_price,
    health_view,
    parse_iso,
    sparkline_points,
    tick_rows,
    tips_for,
)
from tests.helpers import iso

NOW = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC


def upstream(state: str = "connected", **changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "state": state,
        "since": iso(NOW - 65),
        "simulated": True,
        "attempt": 0,
        "max_attempts": 3,
        "retry_after_s": None,
        "retry_in_progress": False,
        "planned_reconnect": False,
        "breaker_state": "closed",
        "last_error": None,
        "symbols": [
            {"symbol": "R_50", "subscribed": state == "connected", "failed_code": None},
            {"symbol": "R_100", "subscribed": state == "connected", "failed_code": None},
        ],
    }
    base.update(changes)
    return base


def status(up: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "service": {"version": "0.1.0"},
        "upstream": up or upstream(),
        "ticks": [
            {"symbol": "R_50", "epoch": int(NOW), "quote": 218.6311, "pip_size": 4, "age_s": 0.4, "stale": False},
        ],
        "circuit_breakers": [
            {"name": "websocket", "state": "closed", "failure_count": 0, "config": {"failure_threshold": 3}},
        ],
    }
    body.update(changes)
    return body


REFUSED = {"code": "HandshakeRefused", "message": "The server refused the connection (HTTP 503).", "at": iso(NOW - 3)}


# ---------------------------------------------------------------------------- time words


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0 s"),
        (0.9, "0 s"),
        (59.9, "59 s"),
        (60, "1 min"),
        (185, "3 min 5 s"),
        (3600, "1 h"),
        (3600 * 2 + 4 * 60 + 59, "2 h 4 min"),
        (86400 * 3 + 3600, "3 d 1 h"),
        (-5, "0 s"),
    ],
)
def test_durations_are_short_and_calm(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_durations_of_nothing_say_so() -> None:
    assert format_duration(None) == "unknown"
    assert format_duration(float("inf")) == "unknown"


def test_countdowns_round_up_so_they_never_show_zero_too_early() -> None:
    assert format_countdown(4.01) == "in 5 s"
    assert format_countdown(0.5) == "in 1 s"
    assert format_countdown(0) == "now"
    assert format_countdown(None) == ""
    assert format_countdown(90) == "in 1 min 30 s"


def test_ages() -> None:
    assert format_age(0.3) == "just now"
    assert format_age(4.2) == "4 s ago"
    assert format_age(130) == "2 min 10 s ago"
    assert format_age(None) == "never"


def test_parse_iso_reads_the_api_times() -> None:
    assert parse_iso(iso(NOW)) == pytest.approx(NOW, abs=0.001)
    assert parse_iso(None) is None
    assert parse_iso("yesterday") is None


def test_clock_time_is_utc() -> None:
    assert ui_logic.clock_time_utc(0) == "00:00:00 UTC"


# ---------------------------------------------------------------------------- prices


def test_prices_have_exactly_pip_size_decimals() -> None:
    assert format_price(218.6, 4) == "218.6000"
    assert format_price(1239.7199999, 2) == "1,239.72"
    assert format_price(5.0, 0) == "5"


def test_change_has_a_direction_word_as_well_as_a_sign() -> None:
    assert format_change(None, 1.0, 2) == ("none", "–")
    assert format_change(1.00, 1.25, 2) == ("up", "+0.25")
    assert format_change(1.25, 1.00, 2) == ("down", "−0.25")
    assert format_change(1.0, 1.0000001, 2) == ("flat", "0.00")


def test_sparkline_scales_into_the_box_oldest_first() -> None:
    assert sparkline_points([]) == ""
    assert sparkline_points([1.0]) == ""
    points = sparkline_points([1.0, 3.0, 2.0], width=100, height=20, pad=0)
    assert points == "0.0,20.0 50.0,0.0 100.0,10.0"
    flat = sparkline_points([5.0, 5.0], width=10, height=20, pad=0)
    assert flat == "0.0,10.0 10.0,10.0"


def test_tick_rows_cover_every_configured_symbol() -> None:
    rows = tick_rows(
        [{"symbol": "R_50", "quote": 218.6311, "pip_size": 4, "age_s": 3.2, "stale": False}],
        {"R_50": [218.6, 218.6311]},
        ("R_50", "R_100"),
    )
    assert rows[0]["price"] == "218.6311"
    assert rows[0]["direction"] == "up" and rows[0]["change"] == "+0.0311"
    assert rows[0]["age"] == "3 s ago" and rows[0]["stale"] == ""
    assert rows[0]["points"]
    assert rows[1] == {
        "symbol": "R_100",
        "price": "—",
        "direction": "none",
        "change": "–",
        "age": "no price yet",
        "stale": "true",
        "points": "",
        "gap": "",
    }


def test_prices_lost_for_good_are_named_on_their_symbol_only() -> None:
    # 1732611000 is 08:50:00 UTC; the ticks after it and before 09:10:00 were lost.
    statuses = [
        {"symbol": "R_50", "gap": {"from_epoch": 1732611000, "to_epoch": 1732612200}},
        {"symbol": "R_100", "gap": None},
    ]
    rows = tick_rows([], {}, ("R_50", "R_100"), statuses)
    assert (
        rows[0]["gap"] == "Prices from 08:50:01 to 09:09:59 UTC were lost: the outage outlasted what Deriv can resend."
    )
    assert rows[1]["gap"] == ""
    one = tick_rows([], {}, ("R_50",), [{"symbol": "R_50", "gap": {"from_epoch": 10, "to_epoch": 12}}])
    assert one[0]["gap"].startswith("Prices at 00:00:11 UTC were lost")
    nothing_between = [{"symbol": "R_50", "gap": {"from_epoch": 10, "to_epoch": 11}}]
    assert tick_rows([], {}, ("R_50",), nothing_between)[0]["gap"] == ""


def test_stale_ticks_are_marked() -> None:
    rows = tick_rows([{"symbol": "R_50", "quote": 1.0, "pip_size": 2, "age_s": 40, "stale": True}], {}, ("R_50",))
    assert rows[0]["stale"] == "true" and rows[0]["direction"] == "none"


# ---------------------------------------------------------------------------- tips


def test_tips_exist_for_every_code_the_manager_produces() -> None:
    codes = [
        "ConnectTimeout",
        "HandshakeRefused",
        "ConnectionRefused",
        "NetworkError",
        "InvalidAppID",
        "AccessRestricted",
        "InvalidToken",
        "RateLimit",
        "HeartbeatTimeout",
        "ConnectionLost",
        "SiteUpdating",
        "ProtocolError",
        "InvalidSymbol",
        "MarketIsClosed",
        "HandshakeFailed",
        "InvalidURL",
        "DNSLookupFailed",
        "TLSHandshakeFailed",
        "TLSCertificateInvalid",
        "HeartbeatRejected",
        "RequestTimeout",
        "TooManyPendingRequests",
        "InternalError",
    ]
    for code in codes:
        group = TIPS[code]
        assert group.key == code and group.title and 1 <= len(group.tips) <= 4
        assert all(len(tip) <= 120 for tip in group.tips), code


def test_tips_are_chosen_by_the_actual_error_code() -> None:
    assert tips_for(["HandshakeRefused"], breaker_open=False) == [TIPS["HandshakeRefused"]]
    assert tips_for(["InvalidAppID"], breaker_open=False)[0].title.startswith("Deriv does not recognise")


def test_breaker_open_comes_first_and_codes_are_not_repeated() -> None:
    groups = tips_for(["HandshakeRefused", None, "", "HandshakeRefused", "MarketIsClosed"], breaker_open=True)
    assert [g.key for g in groups] == ["CircuitOpen", "HandshakeRefused", "MarketIsClosed"]
    assert groups[0] is BREAKER_OPEN_TIPS


def test_an_unknown_code_still_gets_advice_and_nothing_wrong_gets_none() -> None:
    assert tips_for(["SomethingNew"], breaker_open=False) == [UNKNOWN_ERROR_TIPS]
    assert tips_for([None, ""], breaker_open=False) == []


# ---------------------------------------------------------------------------- the feed link


def test_connected_feed() -> None:
    view = feed_link_view(upstream("connected"), NOW)
    assert (view.state, view.word, view.icon, view.tone) == ("connected", "Connected", "circle-check", "grass")
    assert view.since == "for 1 min 5 s"
    assert view.detail == "2 of 2 symbols streaming"
    assert view.error == ""


def test_connected_feed_hides_an_old_error() -> None:
    view = feed_link_view(upstream("connected", last_error=REFUSED), NOW)
    assert view.error == "" and view.error_code == ""


def test_reconnecting_shows_attempt_n_of_max_and_the_next_attempt_countdown() -> None:
    view = feed_link_view(upstream("reconnecting", attempt=2, retry_after_s=3.2, last_error=REFUSED), NOW)
    assert view.word == "Reconnecting" and view.tone == "amber"
    assert view.detail == "attempt 2 of 3 failed · next attempt in 4 s"
    assert view.error == "The server refused the connection (HTTP 503)." and view.error_code == "HandshakeRefused"


def test_an_attempt_in_progress_says_so() -> None:
    view = feed_link_view(upstream("reconnecting", attempt=3, retry_in_progress=True), NOW)
    assert view.detail == "attempt 3 of 3 in progress"


def test_circuit_open_shows_the_time_until_the_next_probe() -> None:
    view = feed_link_view(upstream("circuit_open", attempt=3, retry_after_s=12.0, last_error=REFUSED), NOW)
    assert (view.word, view.icon, view.tone) == ("Circuit open", "circle-pause", "red")
    assert view.detail == "retries paused · next attempt in 12 s"
    assert feed_link_view(upstream("circuit_open", retry_in_progress=True), NOW).detail == "trying once now"


def test_stopped_and_connecting() -> None:
    assert feed_link_view(upstream("stopped"), NOW).word == "Stopped"
    connecting = feed_link_view(upstream("connecting", attempt=1), NOW)
    assert connecting.word == "Connecting" and "attempt 1 of 3" in connecting.detail


# ---------------------------------------------------------------------------- banner and title


def test_banner_levels() -> None:
    live = banner_for(status(), NOW)
    assert (live.level, live.title, live.tone) == ("live", "All systems live", "grass")
    assert live.page_title == "● Live — Market feed status"

    reconnecting = banner_for(status(upstream("reconnecting", attempt=1)), NOW)
    assert reconnecting.level == "degraded" and reconnecting.page_title == "◐ Reconnecting… — Market feed status"

    down = banner_for(status(upstream("circuit_open", retry_after_s=9.5)), NOW)
    assert down.level == "down" and down.title == "Market feed is down"
    assert "next attempt is in 10 s" in down.detail
    assert down.page_title == "○ Down — Market feed status"

    assert banner_for(status(upstream("stopped")), NOW).level == "down"


def test_a_connected_feed_with_problems_is_degraded() -> None:
    failed = upstream("connected")
    failed["symbols"][1]["failed_code"] = "InvalidSymbol"
    banner = banner_for(status(failed), NOW)
    assert banner.level == "degraded" and "Not streaming: R_100." in banner.detail

    stale = status(ticks=[{"symbol": "R_50", "quote": 1.0, "pip_size": 2, "age_s": 30, "stale": True}])
    assert "Stale prices: R_50." in banner_for(stale, NOW).detail

    api_open = status(
        circuit_breakers=[{"name": "api:/api/v1/status", "state": "open", "failure_count": 10, "config": {}}]
    )
    assert "Paused API routes: /api/v1/status." in banner_for(api_open, NOW).detail


def test_the_announcement_changes_with_the_state_not_with_every_second() -> None:
    one = upstream("reconnecting", attempt=2, retry_after_s=5.0)
    two = upstream("reconnecting", attempt=2, retry_after_s=4.0)
    say_one = announcement(banner_for(status(one), NOW), feed_link_view(one, NOW))
    say_two = announcement(banner_for(status(two), NOW + 1), feed_link_view(two, NOW + 1))
    assert say_one == say_two == "Reconnecting to the market feed. Market feed: reconnecting, attempt 2 of 3."
    live = announcement(banner_for(status(), NOW), feed_link_view(upstream(), NOW))
    assert live == "All systems live. Market feed: connected."


# ---------------------------------------------------------------------------- breakers and health


def test_breaker_rows_put_the_feed_first_and_show_the_countdown() -> None:
    rows = breaker_rows(
        [
            {"name": "api:/api/v1/status", "state": "closed", "failure_count": 0, "config": {"failure_threshold": 10}},
            {
                "name": "websocket",
                "state": "open",
                "failure_count": 3,
                "retry_after_s": 7.2,
                "last_failure": "InvalidStatus: HTTP 503",
                "config": {"failure_threshold": 3},
            },
        ]
    )
    assert [r["name"] for r in rows] == ["Market feed link", "API /api/v1/status"]
    assert rows[0]["word"] == "Open" and rows[0]["icon"] == "circle-pause" and rows[0]["tone"] == "red"
    assert rows[0]["failures"] == "3 of 3 failures" and rows[0]["countdown"] == "retry in 8 s"
    assert rows[1]["word"] == "Closed" and rows[1]["countdown"] == "passing calls"


def test_breaker_other_states() -> None:
    rows = breaker_rows(
        [
            {"name": "a", "state": "half_open", "failure_count": 1, "config": {}},
            {"name": "b", "state": "disabled", "failure_count": 0, "config": {}},
            {"name": "c", "state": "open", "forced": True, "failure_count": 0, "config": {}},
        ]
    )
    assert [(r["word"], r["countdown"]) for r in rows] == [
        ("Half-open", "testing one call"),
        ("Disabled", "passes everything"),
        ("Open", "held open by an admin"),
    ]


def test_health_view_groups_breakers_and_keeps_the_worst_note() -> None:
    view = health_view(
        "warn",
        [
            ("upstream", "warn", "reconnecting"),
            ("upstream", "warn", ""),
            ("relay", "pass", "0/100 connections"),
            ("circuitBreaker.websocket", "warn", "open: calls are rejected"),
            ("circuitBreaker.api:/x", "pass", "closed"),
        ],
    )
    assert (view.word, view.tone) == ("Warning", "amber")
    by_key = {r["key"]: r for r in view.rows}
    assert by_key["upstream"]["note"] == "reconnecting" and by_key["upstream"]["name"] == "Market feed link"
    assert by_key["relay"]["word"] == "Operational" and by_key["relay"]["note"] == ""
    assert by_key["circuitBreakers"]["status"] == "warn" and by_key["circuitBreakers"]["note"].startswith("open")
    failing = health_view("fail", [])
    assert (failing.word, failing.icon) == ("Failing", "circle-x")


def test_a_healthy_breaker_does_not_repeat_an_old_failure() -> None:
    old = {"name": "websocket", "state": "closed", "failure_count": 0, "last_failure": "HTTP 503", "config": {}}
    assert breaker_rows([old])[0]["last_failure"] == ""
    counting = {**old, "failure_count": 1}
    assert breaker_rows([counting])[0]["last_failure"] == "HTTP 503"


def test_health_components_have_readable_names_even_new_ones() -> None:
    view = health_view("pass", [("database", "pass", ""), ("somethingNew", "pass", "")])
    assert [r["name"] for r in view.rows] == ["History database", "SomethingNew"]


def test_browser_settings_words_follow_the_running_values() -> None:
    live = ui_logic.browser_settings(reconnect_attempts=7, interval_ms=3000, real_time=True, fallback=True)
    assert (live.reconnect_attempts, live.lost_after_attempts, live.live_text) == (7, 7, "Live updates are streaming.")
    timer = ui_logic.browser_settings(reconnect_attempts=0, interval_ms=2500, real_time=False, fallback=False)
    assert timer.lost_after_attempts == 1  # the first failed attempt already counts
    assert timer.live_text == "Refreshing every 2.5 s (real-time updates are off)."


def test_a_planned_maintenance_reads_blue_not_as_an_outage() -> None:
    dropped = upstream(
        "reconnecting",
        attempt=1,
        retry_after_s=2.0,
        planned_reconnect=True,
        site_status="updating",
        maintenance=True,
        last_error={"code": "SiteUpdating", "message": "Deriv is updating its servers; reconnecting."},
    )
    banner = banner_for(status(dropped), NOW)
    assert (banner.level, banner.tone, banner.icon) == ("maintenance", "blue", "wrench")
    assert banner.title == "Planned maintenance by Deriv"
    assert banner.page_title == "◐ Maintenance — Market feed status"
    feed = feed_link_view(dropped, NOW)
    assert (feed.state, feed.word, feed.tone, feed.icon) == ("reconnecting", "Maintenance", "blue", "wrench")
    assert feed.detail == "attempt 1 of 3 failed · next attempt in 2 s · planned update by Deriv"
    assert announcement(banner, feed) == "Planned maintenance by Deriv. Market feed: maintenance, attempt 1 of 3."
    # Retries paused by the breaker during the maintenance: still maintenance, not "down".
    paused = banner_for(status(upstream("circuit_open", planned_reconnect=True, maintenance=True)), NOW)
    assert paused.level == "maintenance"
    assert feed_link_view(upstream("circuit_open", maintenance=True), NOW).tone == "blue"


def test_an_announced_maintenance_while_connected_says_so_and_streams() -> None:
    announced = upstream("connected", planned_reconnect=True, site_status="updating", maintenance=True)
    banner = banner_for(status(announced), NOW)
    assert (banner.level, banner.title, banner.tone) == ("maintenance", "Deriv announced maintenance", "blue")
    feed = feed_link_view(announced, NOW)
    assert (feed.word, feed.tone) == ("Connected", "grass")
    assert feed.detail == "2 of 2 symbols streaming · Deriv announced an update"
    # Once the link is back and the site is up again, the page is live.
    assert banner_for(status(upstream("connected")), NOW).level == "live"
    # A stopped service is not "in maintenance".
    assert banner_for(status(upstream("stopped", maintenance=True)), NOW).level == "down"
