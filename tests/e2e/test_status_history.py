"""The status page's history section in real Chromium, against the app started with ``make run``.

An app of its own (module scope, a fresh SQLite file as DB_URL), so what is listed is
exactly what these tests did: first an empty history, then one outage of the market feed
(the simulator refuses connections until the "websocket" breaker opens, then recovers and
a Retry brings the feed back) becomes an incident with its cause and recovery, a bar for
today that is not fully up, and breaker transitions; after a restart of the app on the
same database, all of it is still listed. Waits are ``expect`` with explicit bounds.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Locator, Page, expect

from tests.app_process import RunningApp, restart_app
from tests.e2e.page_checks import assert_accessible
from tests.e2e.test_status_page import (
    HISTORY_S,
    LOAD_S,
    RECOVERY_S,
    STATUS_VISIBLE_S,
    ms,
    open_status_page,
    start_outage,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

# The feed's incident, as the page words the simulator's refusal (rxapp.ui_logic.TIPS).
UPSTREAM_CAUSE = re.compile(r"refused the connection|link to the market data server dropped")


def upstream_incident(page: Page) -> Locator:
    return page.locator('#incidents li.incident[data-component="upstream"]')


def today_bar(page: Page, component: str) -> Locator:
    return page.locator(f'#uptime [data-component="{component}"] .uptime-bar[data-today="true"]')


def test_a_fresh_history_is_calm_and_empty(page: Page, app: RunningApp) -> None:
    open_status_page(page, app)
    expect(page.locator("#history")).to_have_attribute("data-state", "ready", timeout=ms(HISTORY_S))
    expect(page.locator("#incidents-empty")).to_have_text("No incidents in the last 90 days.")
    expect(page.locator("#transitions-empty")).to_be_visible()
    expect(page.locator("#history-notice")).to_have_count(0)

    feed = page.locator('#uptime [data-component="upstream"]')
    expect(feed.locator(".uptime-bar")).to_have_count(90)
    expect(page.locator('#uptime [data-component="breaker:websocket"] .uptime-bar')).to_have_count(90)
    # Every bar says its date, uptime and incidents (tooltip and accessible name alike).
    # (The store counts the first connect after a start as "degraded", with no downtime.)
    today = today_bar(page, "upstream")
    label = re.compile(r"^Today, \d{1,2} \w{3} \d{4}: 100% uptime, no incidents, (operational|degraded at times)$")
    expect(today).to_have_attribute("aria-label", label)
    expect(today).to_have_attribute("title", label)
    expect(today).to_have_attribute("data-status", re.compile("^(up|degraded)$"))
    expect(feed.locator(".uptime-bar").first).to_have_attribute("aria-label", re.compile(r": no data$"))
    expect(feed.locator(".uptime-bar").first).to_have_attribute("data-status", "no_data")
    expect(feed.locator('[data-window="24h"]')).to_have_text("24 h 100%")
    expect(page.locator("#uptime-legend")).to_contain_text("No data")


def test_an_outage_becomes_an_incident_a_bar_and_breaker_transitions(page: Page, app: RunningApp) -> None:
    open_status_page(page, app)
    feed = page.locator("#feed-link")
    expect(feed).to_have_attribute("data-state", "connected", timeout=ms(LOAD_S))

    start_outage(app)
    expect(feed).to_have_attribute("data-state", "circuit_open", timeout=ms(30))
    # While it lasts the incident is listed as ongoing, its duration counting.
    incident = upstream_incident(page).first
    expect(incident).to_have_attribute("data-state", "ongoing", timeout=ms(HISTORY_S))
    duration = incident.locator(".incident-duration")
    expect(duration).to_have_text(re.compile(r"^ongoing · .+ so far$"))
    shown = duration.inner_text()
    expect(duration).not_to_have_text(shown, timeout=ms(3))
    expect(incident.locator(".incident-recovery")).to_have_text("Not recovered yet")

    app.control("reset")  # the simulator recovers; a Retry tries at once
    page.locator("#retry-button").click()
    expect(feed).to_have_attribute("data-state", "connected", timeout=ms(RECOVERY_S))

    expect(incident).to_have_attribute("data-state", "resolved", timeout=ms(HISTORY_S))
    expect(upstream_incident(page)).to_have_count(1)
    expect(incident.locator(".incident-title")).to_have_text("Market feed down")
    expect(incident.locator(".incident-cause")).to_have_text(UPSTREAM_CAUSE)
    expect(incident.locator(".incident-recovery")).to_have_text("Recovered when someone pressed Retry")
    expect(incident.locator(".incident-duration")).to_have_text(re.compile(r"^\d+ (s|min)"))
    expect(incident).to_contain_text(re.compile(r"\d{2}:\d{2}:\d{2} UTC · (just now|1 min ago)"))
    breaker_incident = page.locator('#incidents li.incident[data-component="breaker:websocket"]').first
    expect(breaker_incident).to_contain_text("Circuit breaker opened: Market feed link")
    expect(breaker_incident).to_contain_text("Opened: too many failures in a row")

    # Today's bar is no longer all green, and says so in words.
    today = today_bar(page, "upstream")
    expect(today).to_have_attribute("data-status", re.compile("^(degraded|down)$"))
    expect(today).to_have_attribute(
        "aria-label", re.compile(r"^Today, .*: \d{1,2}\.\d{2}% uptime, 1 incident, (degraded|down) at times$")
    )
    expect(page.locator('#uptime [data-component="upstream"] [data-window="24h"]')).not_to_have_text("24 h 100%")

    # The breaker log: the market feed's breaker opened, was tested, and closed.
    log = page.locator('#transitions li.transition[data-breaker="websocket"]')
    opened = log.and_(page.locator('[data-from="closed"][data-to="open"]'))
    closed = log.and_(page.locator('[data-to="closed"]'))
    expect(opened.first).to_contain_text("Closed")
    expect(opened.first).to_contain_text("too many failures in a row")
    expect(closed.first).to_contain_text("Market feed link")
    expect(closed.first).to_contain_text("the test call succeeded")
    expect(page.locator("#history-notice")).to_have_count(0)


def test_history_survives_a_restart(page: Page, app: RunningApp) -> None:
    restart_app(app)
    open_status_page(page, app)
    incident = upstream_incident(page).first
    expect(incident).to_have_attribute("data-state", "resolved", timeout=ms(HISTORY_S))
    expect(incident.locator(".incident-cause")).to_have_text(UPSTREAM_CAUSE)
    expect(incident.locator(".incident-recovery")).to_have_text("Recovered when someone pressed Retry")
    expect(today_bar(page, "upstream")).to_have_attribute("data-status", re.compile("^(degraded|down)$"))
    expect(page.locator('#transitions li.transition[data-breaker="websocket"][data-to="open"]')).not_to_have_count(0)


def test_a_deriv_deploy_shows_as_maintenance_not_as_an_outage(page: Page, app: RunningApp) -> None:
    # Last in this module: its incident is the newest from here on.
    open_status_page(page, app)
    feed = page.locator("#feed-link")
    expect(feed).to_have_attribute("data-state", "connected", timeout=ms(LOAD_S))

    # Deriv announces an update, drops every link, and refuses reconnects while it deploys.
    app.control("refuse_connections", seconds=600)
    app.control("deploy", close_after_s=0.5)
    banner = page.locator("#status-banner")
    expect(banner).to_have_attribute("data-level", "maintenance", timeout=ms(STATUS_VISIBLE_S + 2))
    expect(feed).not_to_have_attribute("data-state", "connected", timeout=ms(STATUS_VISIBLE_S + 2))
    expect(banner).to_contain_text("Planned maintenance by Deriv")
    expect(page.locator("#feed-badge")).to_have_text("Maintenance")
    expect(page.locator("#feed-detail")).to_contain_text("planned update by Deriv")
    expect(page).to_have_title("◐ Maintenance — Market feed status", timeout=ms(3))
    incident = upstream_incident(page).first
    expect(incident).to_have_attribute("data-kind", "maintenance", timeout=ms(HISTORY_S))
    expect(incident).to_have_attribute("data-state", "ongoing")
    expect(incident.locator(".incident-title")).to_have_text("Market feed: planned maintenance")
    expect(incident).to_contain_text("In maintenance")
    expect(incident.locator(".incident-cause")).to_have_text("Planned maintenance by Deriv")
    assert_accessible(page, "maintenance")

    app.control("reset")
    page.locator("#retry-button").click()
    expect(feed).to_have_attribute("data-state", "connected", timeout=ms(RECOVERY_S))
    expect(banner).not_to_have_attribute("data-level", "maintenance", timeout=ms(STATUS_VISIBLE_S))
    expect(incident).to_have_attribute("data-state", "resolved", timeout=ms(HISTORY_S))
    expect(incident).to_contain_text("Completed")
