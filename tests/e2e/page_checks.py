"""What every e2e page must be: free of page and console errors, and accessible.

``ConsoleWatch`` records every uncaught page error and every console error of a page; a
test (through the ``page`` fixture, or by calling ``watch`` on a page it made itself)
fails when there was any. A test that cuts the network on purpose passes the network
failures it expects as ``allowed`` patterns, and nothing else is forgiven.

``assert_accessible`` runs axe-core (shipped inside axe-playwright-python, injected into
the page) and fails on any serious or critical violation, naming the rule and the nodes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import ConsoleMessage, Page

# What Chromium logs by itself when a test takes the network away (context.set_offline).
NETWORK_CUT = (
    re.compile(r"net::ERR_INTERNET_DISCONNECTED"),
    re.compile(r"WebSocket connection to .* failed"),
    re.compile(r"Failed to load resource: net::ERR_"),
)

_AXE = Axe()


@dataclass
class ConsoleWatch:
    allowed: tuple[re.Pattern[str], ...] = ()
    problems: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and not any(p.search(message.text) for p in self.allowed):
            where = message.location.get("url", "") if message.location else ""
            self.problems.append(f"console error: {message.text[:500]} ({where})")

    def on_page_error(self, error: Exception) -> None:
        self.problems.append(f"page error: {str(error)[:500]}")

    def assert_clean(self) -> None:
        assert not self.problems, "the page logged errors:\n" + "\n".join(self.problems)


def watch(page: Page, allowed: tuple[re.Pattern[str], ...] = ()) -> ConsoleWatch:
    recorder = ConsoleWatch(allowed)
    page.on("console", recorder.on_console)
    page.on("pageerror", recorder.on_page_error)
    return recorder


def assert_accessible(page: Page, state: str) -> None:
    """No serious or critical axe-core violation on the page as it is now."""
    results = _AXE.run(page).response
    serious = [v for v in results["violations"] if v.get("impact") in ("serious", "critical")]
    lines = [
        f"{v['id']} ({v['impact']}): {v['help']} at " + ", ".join(str(n["target"]) for n in v["nodes"][:5])
        for v in serious
    ]
    assert not serious, f"axe-core in state '{state}':\n" + "\n".join(lines)
