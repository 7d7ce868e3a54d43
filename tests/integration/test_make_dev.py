"""`make dev` runs steadily: what the app writes does not restart it, and a reload of the
code stops the runtime cleanly before the next one starts.

Before, with the default DB_URL (SQLite in data/), every write of the history store
touched data/status.db-journal or -wal, the reloader restarted the backend, and the
runtime did not stop within the reloader's two-second grace (40 restarts in 90 s).
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.app_process import ROOT, START_TIMEOUT_S, free_port, start_app, stop_app
from tests.helpers import blocking_until

pytestmark = pytest.mark.timeout(START_TIMEOUT_S + 240)

STARTED = "runtime started"
STOPPED = "runtime stopped"
# Granian polls for changes every 100 ms; a restart caused by a write shows within a second.
RELOAD_WATCH_S = 3.0
WAIT_S = 60.0
# Each look reads the whole log.
LOG_POLL_S = 0.2


def test_make_dev_backend_starts_once_and_reloads_cleanly(tmp_path: Path) -> None:
    frontend, backend = free_port(), free_port()
    database = ROOT / "data" / f"dev-test-{uuid.uuid4().hex[:8]}.db"
    app = start_app(
        ["make", "dev", f"DEV_FRONTEND_PORT={frontend}", f"DEV_BACKEND_PORT={backend}"],
        tmp_path / "dev.log",
        backend,
        {"DB_URL": f"sqlite:///data/{database.name}", "DERIV_SIMULATOR_TIME_SCALE": "5"},
    )
    try:
        blocking_until(lambda: STARTED in app.log(), WAIT_S, what="the runtime to start", poll_s=LOG_POLL_S)
        # An outage is recorded in the history database: the app writes into the tree.
        app.control("drop_all")
        incidents = f"{app.base_url}/api/v1/incidents"

        def written() -> bool:
            assert app.log().count(STARTED) == 1, "a database write restarted the dev backend"
            try:
                return bool(httpx.get(incidents, timeout=5).json()["incidents"])
            except httpx.HTTPError:
                return False

        blocking_until(written, WAIT_S, what="the incident to be written", poll_s=LOG_POLL_S)
        deadline = time.monotonic() + RELOAD_WATCH_S
        while time.monotonic() < deadline:
            assert app.log().count(STARTED) == 1, "a database write restarted the dev backend"
            time.sleep(0.2)

        # A code change reloads: the old runtime stops within the grace, then a new one starts.
        (ROOT / "rxapp" / "styles.py").touch()
        blocking_until(
            lambda: app.log().count(STARTED) == 2, 120, what="the reload to start a new runtime", poll_s=LOG_POLL_S
        )
        log = app.log()
        assert log.count(STOPPED) >= 1 and log.index(STOPPED) < log.rindex(STARTED)
        assert "refused to gracefully stop" not in log
        assert "Traceback" not in log
        assert httpx.get(f"{app.base_url}/health", timeout=10).status_code == 200
        # Building the frontend leaves the tracked lock folder as committed (Reflex rewrites
        # reflex.lock/package.json on every build, in its own key order).
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--", "reflex.lock"], cwd=ROOT, capture_output=True, text=True, timeout=30
        )
        assert changed.returncode != 0 or changed.stdout == "", f"the build changed tracked files: {changed.stdout}"
    finally:
        leftovers = stop_app(app)
        for suffix in ("", "-journal", "-wal", "-shm"):
            database.with_name(database.name + suffix).unlink(missing_ok=True)
    assert leftovers == [], f"processes left after SIGTERM: {leftovers}"
