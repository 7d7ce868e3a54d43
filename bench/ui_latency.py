"""Status page latency and cost: how fast a fault reaches the page, and what 20 pages cost.

Run: ``.venv/bin/python bench/ui_latency.py`` (5 trials, 20 pages, 20 s CPU window;
``--quick``: 2 trials, 10 s).

The app is started as the README says (``make run`` on a free port, embedded simulator,
via ``tests/app_process.py``) and driven in Debian's Chromium.

Latency, per trial, in the real browser:

- **fault**: the simulator refuses new connections and drops the feed
  (``refuse_connections`` + ``drop_all``). Measured: fault → the server's state change
  (``upstream.since`` from ``/api/v1/status``: the floor, the manager's own detection),
  server → page (the push through the Reflex state to the DOM), and fault → page (what a
  person waits).
- **recovery**: the simulator recovers (``reset``) and Retry is pressed over HTTP
  (``POST /api/v1/retry``, as a person or another page would). Measured the same way, to
  the page showing "connected".

The page's times come from a MutationObserver on ``#feed-link[data-state]`` stamping
``Date.now()``; the bench stamps ``time.time()``: one wall clock on one machine.
Failure threshold is raised so the state stays "reconnecting" for the whole trial.

Cost: the CPU time (utime + stime from ``/proc/<pid>/stat``) of every process of the
app's process group over a steady-state window, first with no page open (the floor:
simulator, feed, pings), then with 20 pages open, as % of one core; and once more after
the pages are closed (their refresh loops must have ended: back to the floor).

Goals: the fault visible on the page within 1 s (median); 20 pages cost under 10% of one
core at steady state. Everything is bounded: start-up, every wait, every window.
The last line of output is one JSON object (DESIGN.md "Testing and measuring").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from playwright.sync_api import Page, sync_playwright  # noqa: E402

from tests.app_process import RunningApp, group_processes, running_app  # noqa: E402
from tests.measure import cpu_seconds  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
APP_ENV = {
    "WEBSOCKET_CONNECTION_TIMEOUT": "3",
    # The state stays "reconnecting" for the whole trial (no breaker transition mid-trial).
    "WEBSOCKET_CB_FAILURE_THRESHOLD": "50",
    "WEBSOCKET_CB_RECOVERY_TIMEOUT": "5",
    "LOG_LEVEL": "WARNING",
}
# The manager accepts one manual retry per 5 s (MANUAL_RETRY_MIN_INTERVAL_S); trials wait it out.
MANUAL_RETRY_GAP_S = 5.5
WAIT_S = 15.0
LOAD_S = 60.0
SETTLE_S = 3.0
GOAL_VISIBLE_MS = 1000.0
GOAL_CPU_PCT = 10.0

MARKS_JS = """() => {
  window.__marks = [];
  const el = document.getElementById('feed-link');
  new MutationObserver(() => window.__marks.push([el.dataset.state, Date.now()]))
    .observe(el, {attributes: true, attributeFilter: ['data-state']});
}"""


def wait_connected(page: Page, app: RunningApp) -> None:
    """Wait (bounded) for the page to show a connected feed; say what it shows instead."""
    try:
        page.wait_for_selector("#feed-link[data-state=connected]", timeout=LOAD_S * 1000)
    except Exception as exc:
        shown = {
            "browser_link": page.get_attribute("#browser-link", "data-state"),
            "feed": page.get_attribute("#feed-link", "data-state"),
            "detail": page.inner_text("#feed-detail"),
        }
        raise RuntimeError(f"page not connected: {shown}; app log tail:\n{app.log()[-2000:]}") from exc


def page_mark(page: Page, state: str, after_ms: float) -> float:
    """When (ms, wall clock) the page first showed ``state`` after ``after_ms``."""
    handle = page.wait_for_function(
        "([state, after]) => (window.__marks || []).find(m => m[0] === state && m[1] >= after)",
        arg=[state, after_ms],
        timeout=WAIT_S * 1000,
    )
    return float(handle.json_value()[1])


def server_since_ms(app: RunningApp, state: str) -> float:
    """When (ms, wall clock) the server entered ``state``, from the status API."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        upstream = httpx.get(f"{app.base_url}/api/v1/status", timeout=5).json()["upstream"]
        if upstream["state"] == state:
            from datetime import datetime

            return datetime.fromisoformat(upstream["since"].replace("Z", "+00:00")).timestamp() * 1000
        time.sleep(0.02)
    raise TimeoutError(f"the server did not report {state!r} within {WAIT_S}s")


def run_trials(app: RunningApp, page: Page, trials: int) -> list[dict[str, float]]:
    rows = []
    last_retry = 0.0
    for _ in range(trials):
        page.evaluate("() => { window.__marks = window.__marks || []; }")
        # Fault.
        app.control("refuse_connections", seconds=600)
        fault_ms = time.time() * 1000
        app.control("drop_all")
        fault_page = page_mark(page, "reconnecting", fault_ms)
        fault_server = server_since_ms(app, "reconnecting")
        # Recovery (and a Retry, spaced past the manager's manual-retry interval).
        time.sleep(max(0.0, last_retry + MANUAL_RETRY_GAP_S - time.monotonic()))
        recover_ms = time.time() * 1000
        app.control("reset")
        httpx.post(f"{app.base_url}/api/v1/retry", timeout=5)
        last_retry = time.monotonic()
        recover_page = page_mark(page, "connected", recover_ms)
        recover_server = server_since_ms(app, "connected")
        rows.append(
            {
                "fault_to_server_ms": fault_server - fault_ms,
                "fault_server_to_page_ms": fault_page - fault_server,
                "fault_to_page_ms": fault_page - fault_ms,
                "recovery_to_server_ms": recover_server - recover_ms,
                "recovery_server_to_page_ms": recover_page - recover_server,
                "recovery_to_page_ms": recover_page - recover_ms,
            }
        )
        time.sleep(1.0)
    return rows


def group_cpu_seconds(pgid: int) -> float:
    """CPU time of every process in group ``pgid`` (one that ends meanwhile counts nothing)."""
    total = 0.0
    for line in group_processes(pgid):
        with contextlib.suppress(OSError):
            total += cpu_seconds(int(line.split()[0]))
    return total


def cpu_percent(pgid: int, seconds: float) -> float:
    start_cpu, start = group_cpu_seconds(pgid), time.monotonic()
    time.sleep(seconds)
    return (group_cpu_seconds(pgid) - start_cpu) / (time.monotonic() - start) * 100


def main(quick: bool, trials: int | None, pages: int, window_s: float | None) -> dict[str, Any]:
    trials = trials or (2 if quick else 5)
    window_s = window_s or (10.0 if quick else 20.0)
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_app(Path(tmp), {**APP_ENV, "DB_URL": f"sqlite:///{tmp}/b.db"}) as app,
    ):
        pgid = app.process.pid
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                context = browser.new_context(viewport={"width": 1280, "height": 900})
                page = context.new_page()
                page.goto(app.base_url + "/", timeout=LOAD_S * 1000)
                wait_connected(page, app)
                page.evaluate(MARKS_JS)
                rows = run_trials(app, page, trials)
                context.close()

                time.sleep(SETTLE_S)
                idle_pct = cpu_percent(pgid, window_s)
                context = browser.new_context(viewport={"width": 800, "height": 600})
                opened = [context.new_page() for _ in range(pages)]
                for p in opened:
                    p.goto(app.base_url + "/", timeout=LOAD_S * 1000)
                for p in opened:
                    wait_connected(p, app)
                time.sleep(SETTLE_S)
                pages_pct = cpu_percent(pgid, window_s)
                context.close()
                # Each page's refresh loop must end with its socket: back to the floor.
                time.sleep(SETTLE_S)
                closed_pct = cpu_percent(pgid, window_s / 2)
            finally:
                browser.close()

    print(
        f"{'trial':>6} {'fault→server':>13} {'server→page':>12} {'fault→page':>11} "
        f"{'recover→server':>15} {'server→page':>12} {'recover→page':>13}  (ms)"
    )
    for i, r in enumerate(rows, 1):
        print(
            f"{i:>6} {r['fault_to_server_ms']:>13.0f} {r['fault_server_to_page_ms']:>12.0f} "
            f"{r['fault_to_page_ms']:>11.0f} {r['recovery_to_server_ms']:>15.0f} "
            f"{r['recovery_server_to_page_ms']:>12.0f} {r['recovery_to_page_ms']:>13.0f}"
        )

    def med(key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 1)

    def top(key: str) -> float:
        return round(max(r[key] for r in rows), 1)

    print(
        f"{'median':>6} {med('fault_to_server_ms'):>13.0f} {med('fault_server_to_page_ms'):>12.0f} "
        f"{med('fault_to_page_ms'):>11.0f} {med('recovery_to_server_ms'):>15.0f} "
        f"{med('recovery_server_to_page_ms'):>12.0f} {med('recovery_to_page_ms'):>13.0f}"
    )
    print(
        f"{'max':>6} {top('fault_to_server_ms'):>13.0f} {top('fault_server_to_page_ms'):>12.0f} "
        f"{top('fault_to_page_ms'):>11.0f} {top('recovery_to_server_ms'):>15.0f} "
        f"{top('recovery_server_to_page_ms'):>12.0f} {top('recovery_to_page_ms'):>13.0f}"
    )
    cost = pages_pct - idle_pct
    print()
    print(
        f"backend CPU, % of one core over {window_s:.0f} s: no page {idle_pct:.1f}%, "
        f"{pages} pages {pages_pct:.1f}% (the pages cost {cost:.1f}%); "
        f"after closing them {closed_pct:.1f}% (over {window_s / 2:.0f} s)"
    )
    fault_median = med("fault_to_page_ms")
    return {
        "bench": "ui_latency",
        "trials": trials,
        "fault_to_page_ms_median": fault_median,
        "fault_to_page_ms_max": top("fault_to_page_ms"),
        "fault_server_to_page_ms_median": med("fault_server_to_page_ms"),
        "recovery_to_page_ms_median": med("recovery_to_page_ms"),
        "recovery_to_page_ms_max": top("recovery_to_page_ms"),
        "recovery_server_to_page_ms_median": med("recovery_server_to_page_ms"),
        "pages": pages,
        "cpu_window_s": window_s,
        "cpu_no_page_pct": round(idle_pct, 2),
        "cpu_pages_pct": round(pages_pct, 2),
        "cpu_pages_cost_pct": round(cost, 2),
        "cpu_after_close_pct": round(closed_pct, 2),
        "goal_visible_within_1s": fault_median <= GOAL_VISIBLE_MS,
        "goal_pages_under_10pct": cost < GOAL_CPU_PCT,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 trials, 10 s CPU windows")
    parser.add_argument("--trials", type=int, default=None, help="fault/recovery trials (default 5)")
    parser.add_argument("--pages", type=int, default=20, help="pages open for the CPU window")
    parser.add_argument("--window", type=float, default=None, help="seconds per CPU window (default 20)")
    args = parser.parse_args()
    print(json.dumps(main(args.quick, args.trials, args.pages, args.window)))
