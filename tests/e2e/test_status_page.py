"""The status page in real Chromium, against the app started with ``make run``.

Everything asserted is what a person would see or hear (text, titles, visible regions);
every wait is an ``expect`` with an explicit bound, never a sleep. The tests share one app
(module scope) and run in file order: live, outage, recovery with Retry, the browser's
own link cut, keyboard use, screenshots of the recovered page, then the page built by
``make run`` served again, without a rebuild, by a server with other ``VITE_*`` settings.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Locator, Page, Route, expect

from tests.app_process import ROOT, RunningApp, start_app, stop_app
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


def breaker_card(page: Page, name: str) -> Locator:
    """One breaker in the circuit breakers panel (the history's breaker log has them too)."""
    return page.locator(f'#breakers [data-breaker="{name}"]')


def health_row(page: Page, component: str) -> Locator:
    """One row of the health panel (``upstream``, ``circuitBreakers``, ...)."""
    return page.locator(f'#health [data-component="{component}"]')


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
    # One truth: the health panel says what the feed card says, in the same push.
    expect(health_row(page, "upstream")).to_contain_text("reconnecting", timeout=ms(STATUS_VISIBLE_S))
    expect(page.locator("#feed-detail")).to_have_text(re.compile(r"attempt [123] of 3"), timeout=ms(STATUS_VISIBLE_S))
    expect(page.locator("#feed-error")).to_have_text(
        re.compile(r"^127\.0\.0\.1:\d+ answered the WebSocket upgrade with HTTP 503 Service Unavailable\.$")
    )
    expect(page.locator("#status-banner")).to_contain_text("Reconnecting to the market feed")
    expect(page.locator('[data-tip="HandshakeRefused"]')).to_be_visible()
    assert_accessible(page, "outage")

    # The 4th failure opens the breaker: retries pause, with a countdown to the next probe.
    expect(feed).to_have_attribute("data-state", "circuit_open", timeout=ms(30))
    # Every panel agrees at once: the breaker card, the health panel's breakers and feed link.
    expect(breaker_card(page, "websocket")).to_have_attribute("data-state", "open", timeout=ms(STATUS_VISIBLE_S))
    breakers_health = health_row(page, "circuitBreakers")
    expect(breakers_health).to_have_attribute("data-status", "warn", timeout=ms(STATUS_VISIBLE_S))
    expect(breakers_health).to_contain_text("open: calls are rejected", timeout=ms(STATUS_VISIBLE_S))
    expect(health_row(page, "upstream")).to_contain_text("circuit breaker open", timeout=ms(STATUS_VISIBLE_S))
    expect(page.locator("#status-banner")).to_contain_text("Market feed is down", timeout=ms(STATUS_VISIBLE_S))
    detail = page.locator("#feed-detail")
    expect(detail).to_have_text(re.compile(r"retries paused · next attempt in \d+ s"), timeout=ms(3))
    expect(page.locator("#feed-badge")).to_have_text("Circuit open")
    expect(page.locator("#status-banner")).to_contain_text("Market feed is down")
    expect(page).to_have_title("○ Down — Market feed status", timeout=ms(3))
    expect(page.locator('[data-tip="CircuitOpen"]')).to_contain_text("Automatic retries are paused")
    expect(page.locator('[data-tip="HandshakeRefused"]')).to_contain_text("refused the connection")
    expect(breaker_card(page, "websocket")).to_contain_text("Open")
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
    # While open, the (modal) menu hides the rest of the page from assistive technology
    # (aria-hidden, marked data-aria-hidden) until its closing has run: the check below is
    # of the page at rest, so it waits for that first (a page left hidden fails here).
    expect(page.get_by_role("menu")).to_have_count(0, timeout=ms(3))
    expect(page.locator("[data-aria-hidden]")).to_have_count(0, timeout=ms(3))
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
    # ... and every panel says so with it.
    expect(breaker_card(page, "websocket")).to_have_attribute("data-state", "closed", timeout=ms(STATUS_VISIBLE_S))
    for key in ("upstream", "circuitBreakers"):
        expect(health_row(page, key)).to_have_attribute("data-status", "pass", timeout=ms(STATUS_VISIBLE_S))
        expect(health_row(page, key)).to_contain_text("Operational", timeout=ms(STATUS_VISIBLE_S))
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


# The Docker image's way of serving (Dockerfile CMD and ENV): the page built before, no compile.
PREBUILT_ENV = {
    "REFLEX_ENV_MODE": "prod",
    "__REFLEX_SKIP_COMPILE": "true",
    "__REFLEX_MOUNT_FRONTEND_COMPILED_APP": "true",
    "REFLEX_CHECK_LATEST_VERSION": "false",
}
# Not what the page was built with (conftest's APP_ENV) nor the defaults.
RUN_TIME_VITE = {
    "VITE_WS_RECONNECT_ATTEMPTS": "7",
    "VITE_WS_RECONNECT_INTERVAL": "1500",
    "VITE_ENABLE_REAL_TIME_UPDATES": "false",
}


def serve_prebuilt(app: RunningApp, env: dict[str, str]) -> None:
    """Stop ``app`` and serve the page it built on the same port, as the image does (gunicorn,
    no compile), with ``env`` on top of its settings. ``app`` is updated in place, so the
    fixture stops the new server."""
    leftovers = stop_app(app)
    assert not leftovers, f"the app left processes behind: {leftovers}"
    fresh = ("DERIV_SIMULATOR_PORT", "DERIV_SIMULATOR_CONTROL_PORT")
    settings = {name: value for name, value in app.env.items() if name not in fresh}
    command = [
        sys.executable,
        "-m",
        "gunicorn",
        "--worker-class",
        "uvicorn.workers.UvicornH11Worker",
        "--workers",
        "1",
        "--bind",
        f"127.0.0.1:{app.port}",
        "rxapp.rxapp:app()",
    ]
    log_path = app.log_path.with_name(f"{app.log_path.stem}.prebuilt{app.log_path.suffix}")
    again = start_app(command, log_path, app.port, {**settings, **PREBUILT_ENV, **env})
    for name in ("base_url", "simulator_port", "control_port", "process", "log_path", "log_file", "env"):
        setattr(app, name, getattr(again, name))


def test_vite_settings_set_at_run_time_reach_the_prebuilt_page(browser: Browser, app: RunningApp) -> None:
    built = ROOT / ".web" / "build" / "client" / "index.html"  # what `make run` built
    built_at = built.stat().st_mtime_ns
    serve_prebuilt(app, RUN_TIME_VITE)
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        recorder = watch(page, allowed=NETWORK_CUT)
        page.route("**/api/v1/status", lambda route: route.fulfill(response=route.fetch(timeout=5000)))
        open_status_page(page, app)
        link = page.locator("#browser-link")
        settings = page.locator("#status-settings")
        expect(settings).to_have_attribute("data-reconnect-attempts", "7", timeout=ms(STATUS_VISIBLE_S))
        expect(settings).to_have_attribute("data-poll-interval-ms", "1500")
        expect(settings).to_have_attribute("data-real-time", "false")
        expect(link).to_contain_text("Refreshing every 1.5 s (real-time updates are off).")
        expect(page.locator("#feed-link")).to_have_attribute("data-state", "connected", timeout=ms(RECOVERY_S))

        context.set_offline(True)
        expect(link).to_contain_text(
            re.compile(r"Reconnecting · attempt \d+ of 7|Lost after 7 attempts"), timeout=ms(STATUS_VISIBLE_S)
        )
        expect(page.locator("#fallback-region")).to_contain_text("Market feed: Connected", timeout=ms(5))
        context.set_offline(False)
        expect(link).to_have_attribute("data-state", "connected", timeout=ms(RECOVERY_S))
        recorder.assert_clean()
        assert built.stat().st_mtime_ns == built_at, "the page was rebuilt: this proves nothing about run time"
    finally:
        context.close()
