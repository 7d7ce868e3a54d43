"""End-to-end fixtures: the app started as the README says, and Debian's Chromium.

``app`` is module-scoped: ``make run`` on free ports (prod build, page and API on one
port, embedded simulator) with settings that make fault scenarios take seconds instead
of minutes. ``browser`` drives ``/usr/bin/chromium`` through Playwright (which cannot
download browsers here). Screenshots go to ``artifacts/`` (gitignored); run with
``UPDATE_DOC_SCREENSHOTS=1`` to refresh the committed copies in ``docs/screenshots/``.
Without Chromium every e2e test skips, or fails when ``REQUIRE_E2E_TESTS=1`` (``.ci/run``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from tests.app_process import ROOT, RunningApp, running_app
from tests.e2e.page_checks import watch

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
ARTIFACTS = ROOT / "artifacts"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 375, "height": 812}

# Quick scenarios: a dead connect is given up after 3 s; the "websocket" breaker opens on
# the 4th failure (one more than a retry cycle's 3 attempts, so "reconnecting" is visible
# for a whole recovery period first) and probes again after 6 s; the browser polls every
# second while its live link is down.
APP_ENV = {
    "DERIV_SIMULATOR_TIME_SCALE": "2",
    "DERIV_SYMBOLS": "R_50,R_100,1HZ100V",
    "WEBSOCKET_CONNECTION_TIMEOUT": "3",
    "WEBSOCKET_MAX_RETRY_ATTEMPTS": "3",
    "WEBSOCKET_CB_FAILURE_THRESHOLD": "4",
    "WEBSOCKET_CB_RECOVERY_TIMEOUT": "6",
    "VITE_WS_RECONNECT_INTERVAL": "1000",
    "VITE_WS_RECONNECT_ATTEMPTS": "5",
    "LOG_LEVEL": "INFO",
}


@pytest.fixture(scope="session", autouse=True)
def chromium() -> str:
    """Every e2e test needs Debian's Chromium: without it they skip, or fail when
    ``REQUIRE_E2E_TESTS`` is set (CI), so that CI never passes on skipped browser tests.
    Session-scoped and autouse, so it is checked before any module starts an app."""
    if not Path(CHROMIUM).exists():
        reason = f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)"
        if os.environ.get("REQUIRE_E2E_TESTS"):
            pytest.fail(f"REQUIRE_E2E_TESTS is set but {reason}")
        pytest.skip(reason)
    return CHROMIUM


@contextlib.contextmanager
def e2e_app(tmp_path_factory: pytest.TempPathFactory, db_url: str | None = None) -> Iterator[RunningApp]:
    """The app with ``APP_ENV`` in a fresh folder; its history in SQLite there unless ``db_url``."""
    tmp = tmp_path_factory.mktemp("e2e-app")
    with running_app(tmp, {**APP_ENV, "DB_URL": db_url or f"sqlite:///{tmp / 'status.db'}"}) as running:
        yield running


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningApp]:
    with e2e_app(tmp_path_factory) as running:
        yield running


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as pw:
        yield pw


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    with contextlib.closing(playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)) as browser:
        yield browser


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    with contextlib.closing(browser.new_context(viewport=DESKTOP, color_scheme="light")) as context:
        yield context


@pytest.fixture
def page(context: BrowserContext) -> Iterator[Page]:
    """A page that fails its test on any page error or console error."""
    page = context.new_page()
    recorder = watch(page)
    yield page
    recorder.assert_clean()


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def publish_screenshot(source: Path, name: str) -> None:
    """Copy a screenshot to docs/screenshots/ when it is missing or UPDATE_DOC_SCREENSHOTS=1.

    Opt-in, so that running the tests does not rewrite committed images every time.
    """
    target = ROOT / "docs" / "screenshots" / name
    if target.exists() and os.environ.get("UPDATE_DOC_SCREENSHOTS") != "1":
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
