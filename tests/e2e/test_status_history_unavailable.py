"""The history section when the history database cannot be reached, in real Chromium.

An app of its own whose ``DB_URL`` names a PostgreSQL server on a loopback port where
nothing listens (every connection is refused at once): the app starts anyway, the live
parts of the page work, and the history section says calmly that history is unavailable.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from playwright.sync_api import Page, expect

from tests.app_process import RunningApp, free_port
from tests.e2e.conftest import e2e_app
from tests.e2e.test_status_page import HISTORY_S, LOAD_S, ms, open_status_page

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    with e2e_app(tmp_path_factory, f"postgresql+psycopg://status:status@127.0.0.1:{free_port()}/status") as running:
        yield running


def test_an_unreachable_database_is_said_calmly_and_the_rest_of_the_page_works(page: Page, app: RunningApp) -> None:
    open_status_page(page, app)
    expect(page.locator("#feed-link")).to_have_attribute("data-state", "connected", timeout=ms(LOAD_S))
    expect(page.locator('[data-symbol="R_50"] .tick-price')).to_have_text(re.compile(r"^[\d,]+\.\d+$"), timeout=ms(10))

    expect(page.locator("#history")).to_have_attribute("data-state", "unavailable", timeout=ms(HISTORY_S))
    notice = page.locator("#history-notice")
    expect(notice).to_have_text(
        re.compile(r"^History is unavailable: the history database is not answering right now\. Live status above")
    )
    expect(notice).to_have_attribute("role", "status")
    expect(page.locator("#incidents")).to_contain_text("The incident list is not available right now.")
    expect(page.locator("#incidents-empty")).to_have_count(0)  # never "no incidents" when it cannot know
    expect(page.locator("#uptime .uptime-bar")).to_have_count(0)
    expect(page.locator('#health [data-component="database"]')).to_have_attribute("data-status", "warn")
    expect(page.locator("#status-banner")).to_contain_text("All systems live")
