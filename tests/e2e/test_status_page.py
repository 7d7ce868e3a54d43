"""The status page in real Chromium, against the app started with ``make run``.

Everything asserted is what a person would see or hear (text, titles, visible regions);
every wait is an ``expect`` with an explicit bound, never a sleep. The tests share one app
(module scope) and run in file order: live, outage, recovery with Retry, the browser's
own link cut, keyboard use, then screenshots of the recovered page.
"""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Route, expect

from tests.app_process import RunningApp
from tests.e2e.conftest import DESKTOP, PHONE, publish_screenshot
from tests.e2e.page_checks import NETWORK_CUT, assert_accessible, watch

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

# Bounds, not expectations: the page normally reacts within a second.
LOAD_S = 30
STATUS_VISIBLE_S = 2
RECOVERY_S = 15
# A page asks for history at most every 10 s after a status change (then one read).
HISTORY_S = 25


def ms(seconds: float) -> float:
    return seconds * 1000


def open_status_page(page: Page, app: RunningApp) -> None:
    page.goto(app.base_url + "/", wait_until="domcontentloaded", timeout=ms(LOAD_S))
    expect(page.locator("#browser-link")).to_have_attribute("data-state", "connected", timeout=ms(LOAD_S))


def handshakes(app: RunningApp) -> int:
    body = httpx.get(f"{app.control_url}/stats", timeout=10).json()
    return int(body["result"]["handshake_attempts"])


def start_outage(app: RunningApp) -> None:
    """The simulator drops every link and refuses new ones (HTTP 503) until reset."""
    app.control("refuse_connections", seconds=600)
    app.control("drop_all")


def test_page_loads_with_both_links_connected_and_ticks_updating(page: Page, app: RunningApp) -> None:
    open_status_page(page, app)
    feed = page.locator("#feed-link")
    expect(feed).to_have_attribute("data-state", "connected", timeout=ms(LOAD_S))
    expect(page.locator("#feed-badge")).to_have_text("Connected")
    expect(page.locator("#browser-link")).to_contain_text("Connected")
    expect(page.locator("#browser-link-since")).to_have_text(re.compile(r"^for \d+ s$"), timeout=ms(3))
    expect(page.locator("#status-banner")).to_contain_text("All systems live")
    expect(page).to_have_title("● Live — Market feed status", timeout=ms(5))

    for symbol in ("R_50", "R_100", "1HZ100V"):
        expect(page.locator(f'[data-symbol="{symbol}"] .tick-price')).to_have_text(
            re.compile(r"^[\d,]+\.\d+$"), timeout=ms(10)
        )
    # 1HZ100V ticks every second: its sparkline gains a point with every tick.
    line = page.locator('[data-symbol="1HZ100V"] polyline')
    expect(line).to_have_attribute("points", re.compile(r"\d"), timeout=ms(10))
    before = line.get_attribute("points")
    expect(line).not_to_have_attribute("points", before or "", timeout=ms(10))
    expect(page.locator('[data-symbol="1HZ100V"] .tick-age')).to_have_text(re.compile(r"just now|\d+ s ago"))
    expect(page.locator('[data-stale="true"]')).to_have_count(0)
    assert_accessible(page, "live")


def test_feed_outage_shows_reconnecting_then_circuit_open_with_countdown_and_tip(page: Page, app: RunningApp) -> None:
    open_status_page(page, app)
    feed = page.locator("#feed-link")
    expect(feed).to_have_attribute("data-state", "connected", timeout=ms(LOAD_S))

    start_outage(app)
    expect(feed).to_have_attribute("data-state", "reconnecting", timeout=ms(STATUS_VISIBLE_S))
    expect(page.locator("#feed-detail")).to_have_text(re.compile(r"attempt [123] of 3"), timeout=ms(STATUS_VISIBLE_S))
    expect(page.locator("#feed-error")).to_have_text("The server refused the connection (HTTP 503).")
    expect(page.locator("#status-banner")).to_contain_text("Reconnecting to the market feed")
    expect(page.locator('[data-tip="HandshakeRefused"]')).to_be_visible()
    assert_accessible(page, "outage")

    # The 4th failure opens the breaker: retries pause, with a countdown to the next probe.
    expect(feed).to_have_attribute("data-state", "circuit_open", timeout=ms(30))
    detail = page.locator("#feed-detail")
    expect(detail).to_have_text(re.compile(r"retries paused · next attempt in \d+ s"), timeout=ms(3))
    expect(page.locator("#feed-badge")).to_have_text("Circuit open")
    expect(page.locator("#status-banner")).to_contain_text("Market feed is down")
    expect(page).to_have_title("○ Down — Market feed status", timeout=ms(3))
    expect(page.locator('[data-tip="CircuitOpen"]')).to_contain_text("Automatic retries are paused")
    expect(page.locator('[data-tip="HandshakeRefused"]')).to_contain_text("refused the connection")
    expect(page.locator('[data-breaker="websocket"]')).to_contain_text("Open")
    expect(page.locator("#live-announcer")).to_have_text(re.compile("Market feed is down"))
    # The countdown counts.
    shown = detail.inner_text()
    expect(detail).not_to_have_text(shown, timeout=ms(3))
    expect(page.locator('[data-stale="true"]')).to_have_count(3, timeout=ms(15))
    assert_accessible(page, "circuit open")

    # The rest of the page keeps working: prices are marked stale, the browser's own link
    # is fine, the colour theme menu and the tips still respond.
    expect(page.locator('[data-stale="true"]')).to_have_count(3, timeout=ms(15))
    expect(page.locator("#browser-link")).to_have_attribute("data-state", "connected")
    page.get_by_role("button", name="Colour theme: light, dark or system").click()
    page.get_by_role("menuitem", name="Dark").click()
    expect(page.locator("html")).to_have_class(re.compile(r"\bdark\b"), timeout=ms(3))
    page.locator("#connection-tips summary").click()
    expect(page.locator("#connection-tips li").first).to_be_visible()
    assert_accessible(page, "circuit open, dark mode")


def test_recovery_and_retry_bring_the_feed_back_with_one_upstream_attempt(
    page: Page, context: BrowserContext, app: RunningApp
) -> None:
    open_status_page(page, app)
    feed = page.locator("#feed-link")
    if feed.get_attribute("data-state") == "connected":  # run alone: make the outage first
        start_outage(app)
    expect(feed).to_have_attribute("data-state", re.compile("circuit_open|reconnecting"), timeout=ms(30))
    other = context.new_page()
    open_status_page(other, app)
    expect(other.locator("#retry-button")).to_be_enabled(timeout=ms(5))

    app.control("reset")  # the simulator recovers
    before = handshakes(app)
    # Many clicks on two pages at once: the manager coalesces them into one attempt.
    burst = "() => { for (let i = 0; i < 5; i++) document.getElementById('retry-button').click(); }"
    page.evaluate(burst)
    other.evaluate(burst)

    expect(feed).to_have_attribute("data-state", "connected", timeout=ms(RECOVERY_S))
    expect(page.locator("#feed-badge")).to_have_text("Connected")
    expect(page.locator("#retry-outcome")).to_have_text(
        re.compile("Retrying the market feed connection now|already connected|already under way")
    )
    expect(page.locator("#feed-error")).to_have_count(0)
    expect(page.locator("#troubleshooting")).to_have_count(0)
    expect(page.locator("#status-banner")).to_contain_text("All systems live", timeout=ms(RECOVERY_S))
    expect(page.locator("#retry-button")).to_be_disabled()
    expect(other.locator("#feed-link")).to_have_attribute("data-state", "connected", timeout=ms(RECOVERY_S))
    assert handshakes(app) - before <= 1, "many Retry clicks caused more than one upstream attempt"


def test_browser_link_cut_shows_polled_status_and_recovers(browser: Browser, app: RunningApp) -> None:
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        recorder = watch(page, allowed=NETWORK_CUT)

        # Offline cuts the page's own socket (Chromium closes it and fails every reconnect);
        # the REST status stays reachable because Playwright fetches it from outside.
        def serve_status(route: Route) -> None:
            route.fulfill(response=route.fetch(timeout=5000))

        page.route("**/api/v1/status", serve_status)
        open_status_page(page, app)
        expect(page.locator("#feed-link")).to_have_attribute("data-state", "connected", timeout=ms(RECOVERY_S))

        context.set_offline(True)
        link = page.locator("#browser-link")
        expect(link).to_have_attribute("data-state", re.compile("reconnecting|lost"), timeout=ms(STATUS_VISIBLE_S))
        expect(link).to_contain_text(re.compile(r"Reconnecting · attempt \d+ of 5|Lost after 5 attempts"))
        expect(link).to_contain_text("The live connection to this server was interrupted")
        expect(page.locator("#status-banner")).to_contain_text("Lost the live link to this server")
        expect(page).to_have_title("◌ Reconnecting… — Market feed status", timeout=ms(3))
        region = page.locator("#fallback-region")
        expect(region).to_contain_text(
            re.compile(r"Live updates paused, showing polled status from \d{1,2}:\d{2}:\d{2}"), timeout=ms(5)
        )
        expect(region).to_contain_text("Market feed: Connected")
        expect(region).to_contain_text("R_50")
        expect(page.locator('[data-tip="BrowserOffline"]')).to_be_visible()
        expect(link).to_have_attribute("data-state", "lost", timeout=ms(15))

        context.set_offline(False)
        expect(link).to_have_attribute("data-state", "connected", timeout=ms(RECOVERY_S))
        expect(region).to_be_empty(timeout=ms(3))
        expect(page.locator("#status-banner")).to_contain_text("All systems live")
        # Live updates flow again (the page's refresh loop restarted with the socket).
        updated = page.locator("#updated-at")
        shown = updated.inner_text()
        expect(updated).not_to_have_text(shown, timeout=ms(5))
        recorder.assert_clean()
    finally:
        context.close()


def test_keyboard_reaches_every_control_with_a_visible_focus(page: Page, app: RunningApp) -> None:
    open_status_page(page, app)
    page.keyboard.press("Tab")
    theme = page.get_by_role("button", name="Colour theme: light, dark or system")
    expect(theme).to_be_focused(timeout=ms(3))
    outline = theme.evaluate("el => getComputedStyle(el).outlineStyle")
    assert outline not in ("none", ""), "the focused button shows no focus ring"
    page.keyboard.press("Enter")
    expect(page.get_by_role("menuitem", name="System")).to_be_visible(timeout=ms(3))
    page.keyboard.press("Escape")
    summary = page.locator("#connection-tips summary")
    summary.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#connection-tips")).to_have_attribute("open", "", timeout=ms(3))
    expect(page.locator("#live-announcer")).to_have_attribute("aria-live", "polite")


def test_screenshots_at_desktop_and_phone_width(browser: Browser, app: RunningApp, artifacts: Path) -> None:
    shots = [("status-desktop.png", DESKTOP, "light"), ("status-phone.png", PHONE, "dark")]
    for name, viewport, scheme in shots:
        context = browser.new_context(viewport=viewport, color_scheme=scheme)
        try:
            page = context.new_page()
            recorder = watch(page)
            open_status_page(page, app)
            expect(page.locator("#feed-link")).to_have_attribute("data-state", "connected", timeout=ms(RECOVERY_S))
            expect(page.locator("#status-banner")).to_contain_text("All systems live", timeout=ms(RECOVERY_S))
            # The system preference decides the theme until the reader picks one.
            expect(page.locator("html")).to_have_class(re.compile(rf"\b{scheme}\b"), timeout=ms(3))
            expect(page.locator('[data-stale="true"]')).to_have_count(0, timeout=ms(RECOVERY_S))
            expect(page.locator("#browser-link-since")).to_have_text(re.compile(r"^for [1-9]\d* s$"), timeout=ms(5))
            # History shows the outage of the tests above as over (read after the recovery).
            expect(page.locator("#history")).to_have_attribute("data-state", "ready", timeout=ms(HISTORY_S))
            expect(page.locator('#incidents li[data-state="ongoing"]')).to_have_count(0, timeout=ms(HISTORY_S))
            if viewport is PHONE:
                width = page.evaluate("() => document.documentElement.scrollWidth")
                assert width <= PHONE["width"], f"the page scrolls sideways at phone width ({width} px)"
            path = artifacts / name
            page.screenshot(path=str(path), full_page=True, animations="disabled")
            assert path.stat().st_size > 10_000
            publish_screenshot(path, name)
            assert_accessible(page, f"live, {scheme} mode")
            recorder.assert_clean()
        finally:
            context.close()
