"""The status page's state: every panel tells the same state, and the VITE_* settings come
from the running server, not from the build.

The state is driven with a Runtime on a fake clock (nothing started, no sockets); the
components are compiled to the JavaScript the page is built from.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from backend_core import status_view
from backend_core.config import load_settings
from rxapp import ui_logic
from rxapp.components.banner import browser_settings
from rxapp.components.browser_link import browser_link_card
from rxapp.pages.index import index
from rxapp.runtime_ref import get_runtime
from rxapp.state import BROWSER_DEFAULTS, HEALTH_REFRESH_S, StatusState, browser_settings_of, health_for_round
from tests.helpers import open_feed_breaker, runtime_counting_health_runs

PAGES = 20


def page_state() -> StatusState:
    return StatusState(_reflex_internal_init=True)  # type: ignore[call-arg]


def health_row(state: StatusState, key: str) -> dict[str, str]:
    return next(row for row in state.health_rows if row["key"] == key)


# ---------------------------------------------------------------------------- one truth


async def test_a_change_brings_health_that_agrees_with_the_breakers_on_every_page(tmp_path: Path) -> None:
    runtime, clock, runs = runtime_counting_health_runs(tmp_path)
    pages = [page_state() for _ in range(PAGES)]
    # Every page's first round: health while all is well.
    for page, report in zip(
        pages,
        await asyncio.gather(*(health_for_round(runtime, changed=True, health_at=0.0) for _ in pages)),
        strict=True,
    ):
        assert report is not None
        page._set_health(report)
    assert health_row(pages[0], "circuitBreakers")["word"] == "Operational"

    clock.advance(0.1)  # the report is still young: before the fix, pages reused it
    await open_feed_breaker(runtime)
    reports = await asyncio.gather(*(health_for_round(runtime, changed=True, health_at=0.0) for _ in pages))
    assert len(runs) == 2, "a change seen by every page must still be one health run"

    breakers = ui_logic.breaker_rows(status_view.status(runtime)["circuit_breakers"])
    websocket = next(row for row in breakers if row["key"] == "websocket")
    assert websocket["word"] == "Open"
    for page, report in zip(pages, reports, strict=True):
        assert report is not None
        page._set_health(report)
        row = health_row(page, "circuitBreakers")
        assert row["status"] == "warn" and row["word"] == "Warning"
        assert row["note"].startswith("open")
        assert page.health_word != "Operational"


async def test_without_a_change_health_waits_for_its_period(tmp_path: Path) -> None:
    runtime, clock, runs = runtime_counting_health_runs(tmp_path)
    assert await health_for_round(runtime, changed=True, health_at=clock.monotonic()) is not None
    health_at = clock.monotonic()
    clock.advance(HEALTH_REFRESH_S / 2)
    assert await health_for_round(runtime, changed=False, health_at=health_at) is None
    clock.advance(HEALTH_REFRESH_S / 2)
    assert await health_for_round(runtime, changed=False, health_at=health_at) is not None
    assert len(runs) == 2


# ---------------------------------------------------------------------------- VITE_* at run time

RUN_TIME = {
    "VITE_WS_RECONNECT_ATTEMPTS": "7",
    "VITE_WS_RECONNECT_INTERVAL": "1500",
    "VITE_ENABLE_REAL_TIME_UPDATES": "false",
    "VITE_WEBSOCKET_FALLBACK_ENABLED": "false",
}


def test_the_compiled_page_holds_state_vars_not_the_builds_vite_values(monkeypatch: pytest.MonkeyPatch) -> None:
    built = str(index())
    monkeypatch.setattr(get_runtime(), "settings", load_settings(RUN_TIME))
    assert str(index()) == built, "the compiled page changed with the VITE_* settings"

    settings_js = str(browser_settings())
    for var in (
        StatusState.reconnect_attempts,
        StatusState.reconnect_interval_ms,
        StatusState.real_time_updates,
        StatusState.fallback_enabled,
    ):
        assert str(var) in settings_js
    card_js = str(browser_link_card())
    for var in (StatusState.reconnect_attempts, StatusState.lost_after_attempts, StatusState.live_text):
        assert str(var) in card_js
    assert "of 7" not in card_js and "of 5" not in card_js


def test_on_load_gives_the_page_the_running_servers_values() -> None:
    page = page_state()
    assert page.reconnect_attempts == BROWSER_DEFAULTS.reconnect_attempts == 5
    page._apply_settings(load_settings(RUN_TIME))
    assert page.reconnect_attempts == 7 and page.lost_after_attempts == 7
    assert page.reconnect_interval_ms == 1500
    assert page.real_time_updates is False and page.fallback_enabled is False
    assert page.live_text == "Refreshing every 1.5 s (real-time updates are off)."


def test_the_compiled_defaults_are_the_documented_ones() -> None:
    """Not the build's environment: they are what a page shows before its state arrives."""
    documented = ui_logic.browser_settings(reconnect_attempts=5, interval_ms=3000, real_time=True, fallback=True)
    assert documented == BROWSER_DEFAULTS


def test_no_reconnect_attempts_still_counts_one_before_lost() -> None:
    view = browser_settings_of(load_settings({"VITE_WS_RECONNECT_ATTEMPTS": "0"}))
    assert view.reconnect_attempts == 0 and view.lost_after_attempts == 1
    assert view.live_text == "Live updates are streaming."
