"""The real app, started as the README says, answers /health and stops cleanly."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.app_process import START_TIMEOUT_S, free_port, running_app, start_app, stop_app

# A fresh clone's first start installs the frontend's npm packages and builds it.
pytestmark = pytest.mark.timeout(START_TIMEOUT_S + 120)


def relay_extensions(base_url: str) -> dict[str | None, list[str]]:
    """Connect to the relay offering permessage-deflate, then declining it: both must work."""
    import asyncio
    import json

    from websockets.asyncio.client import connect

    async def probe() -> dict[str | None, list[str]]:
        found: dict[str | None, list[str]] = {}
        for compression in ("deflate", None):
            async with connect(base_url.replace("http://", "ws://") + "/api/v1/ws", compression=compression) as ws:
                assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "status"
                found[compression] = [type(e).__name__ for e in ws.protocol.extensions]
        return found

    return asyncio.run(probe())


def test_make_run_serves_page_and_api_on_one_port_and_stops_without_orphans(tmp_path: Path) -> None:
    with running_app(tmp_path) as app:
        health = httpx.get(f"{app.base_url}/health", timeout=10)
        assert health.status_code == 200
        assert health.json()["status"] in ("pass", "warn")
        page = httpx.get(f"{app.base_url}/", timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()
        status = httpx.get(f"{app.base_url}/api/v1/status", timeout=10).json()
        assert status["upstream"]["simulated"] is True
        assert relay_extensions(app.base_url) == {"deflate": ["PerMessageDeflate"], None: []}
        leftovers = stop_app(app)
        assert leftovers == [], f"processes left after SIGTERM: {leftovers}"
        log = app.log()
        assert "runtime stopped" in log, "the lifespan did not stop the runtime gracefully"
        assert "Traceback" not in log


def test_dev_backend_answers_health_on_its_own_port(tmp_path: Path) -> None:
    port = free_port()
    app = start_app(
        [".venv/bin/reflex", "run", "--env", "dev", "--backend-only", "--backend-port", str(port)],
        tmp_path / "dev.log",
        port,
        {"REFLEX_USE_GRANIAN": "1"},  # as `make dev` runs it
    )
    try:
        health = httpx.get(f"{app.base_url}/health", timeout=10)
        assert health.status_code == 200
        assert health.json()["components"]["upstream"] in ("pass", "warn")
    finally:
        assert stop_app(app) == []


def test_bad_configuration_stops_make_run_with_one_line(tmp_path: Path) -> None:
    import subprocess

    proc = subprocess.run(
        ["make", "run", f"PORT={free_port()}"],
        cwd=Path(__file__).resolve().parents[2],
        env={**__import__("os").environ, "CIRCUIT_BREAKER_ENABLED": "maybe"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode != 0
    assert "Invalid configuration: CIRCUIT_BREAKER_ENABLED='maybe'" in proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout


def test_sigterm_closes_relay_clients_with_1001_and_exits(tmp_path: Path) -> None:
    import asyncio
    import json
    import os
    import signal

    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    with running_app(tmp_path) as app:
        ws_url = app.base_url.replace("http://", "ws://") + "/api/v1/ws"

        async def scenario() -> list[tuple[int | None, str]]:
            clients = [await connect(ws_url, open_timeout=10) for _ in range(3)]
            for client in clients:
                first = json.loads(await asyncio.wait_for(client.recv(), 10))
                assert first["type"] == "status"
            os.killpg(app.process.pid, signal.SIGTERM)
            closes = []
            for client in clients:
                try:
                    async with asyncio.timeout(20):
                        while True:
                            await client.recv()
                except ConnectionClosed as exc:
                    closes.append((exc.rcvd.code if exc.rcvd else None, exc.rcvd.reason if exc.rcvd else ""))
            return closes

        closes = asyncio.run(scenario())
        assert [code for code, _ in closes] == [1001, 1001, 1001]
        assert all("shutting down" in reason for _, reason in closes)
        assert stop_app(app) == []
        assert "runtime stopped" in app.log()


def test_plain_reflex_run_works_without_the_makefile(tmp_path: Path) -> None:
    """A Reflex user types ``reflex run``: no REFLEX_USE_NPM exported, no virtualenv on PATH.

    rxconfig.py itself makes Reflex build with npm and the virtualenv's Node.js (bun
    cannot be downloaded here, and the system's Node is too old for Reflex 0.10).
    """
    port = free_port()
    root = Path(__file__).resolve().parents[2]
    ports = ["--frontend-port", str(port), "--backend-port", str(port)]
    app = start_app(
        [str(root / ".venv" / "bin" / "reflex"), "run", "--env", "prod", "--single-port", *ports],
        tmp_path / "reflex-run.log",
        port,
        {"PATH": "/usr/bin:/bin", "DB_URL": f"sqlite:///{tmp_path / 'status.db'}"},
        unset=("REFLEX_USE_NPM", "VIRTUAL_ENV"),
    )
    try:
        assert httpx.get(f"{app.base_url}/health", timeout=10).status_code == 200
        page = httpx.get(f"{app.base_url}/", timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()
    finally:
        assert stop_app(app) == []


def test_rxconfig_sets_up_npm_and_the_virtualenv_node_before_reflex_looks() -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    probe = "import os, rxconfig; print(os.environ['REFLEX_USE_NPM']); print(os.environ['PATH'].split(os.pathsep)[0])"
    env = {k: v for k, v in __import__("os").environ.items() if k != "REFLEX_USE_NPM"}
    env["PATH"] = "/usr/bin:/bin"
    out = subprocess.run(
        [sys.executable, "-c", probe], cwd=root, env=env, capture_output=True, text=True, timeout=120, check=True
    ).stdout.split()
    assert out == ["1", str(Path(sys.executable).parent)]
