"""A whole Runtime (simulator, manager, relay, store on SQLite, alerts, the pages' history reader)
leaves nothing behind.

DESIGN.md rule 3: every task and thread the runtime starts is stopped on shutdown, also
when the start fails halfway and when one stop step fails. Real sockets on 127.0.0.1:
the embedded simulator, the API under uvicorn with one relay client, a webhook receiver.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from backend_core.api import create_api
from backend_core.config import load_settings
from backend_core.deriv.manager import DerivManager
from backend_core.runtime import Runtime
from tests.helpers import closed_code
from tests.integration.conftest import ServedApp
from tests.integration.test_alerts import Receiver

WAIT_S = 15.0
# Threads that end after their pool is shut down get this long to go (bounded join).
THREAD_JOIN_S = 10.0
# The loop's default executor (name resolution) belongs to the event loop, not the runtime.
LOOP_THREAD_PREFIX = "asyncio_"
# Tasks of the test's own server and client: they end once the relay client is closed.
FOREIGN_CODE = ("/uvicorn/", "/websockets/", "/starlette/")


def foreign(task: asyncio.Task[Any]) -> bool:
    code = getattr(task.get_coro(), "cr_code", None)
    return code is not None and any(part in code.co_filename for part in FOREIGN_CODE)


class Leaks:
    """What exists now that did not before: tasks (but the caller) and threads."""

    def __init__(self) -> None:
        self.tasks = set(asyncio.all_tasks())
        self.threads = set(threading.enumerate())

    def new_tasks(self) -> list[asyncio.Task[Any]]:
        current = asyncio.current_task()
        return [t for t in asyncio.all_tasks() if t not in self.tasks and t is not current and not t.done()]

    def runtime_tasks(self) -> list[str]:
        return sorted(t.get_name() for t in self.new_tasks() if not foreign(t))

    async def settled_tasks(self) -> list[str]:
        pending = self.new_tasks()
        if pending:
            await asyncio.wait(pending, timeout=WAIT_S)
        return sorted(t.get_name() for t in self.new_tasks())

    def fresh_threads(self) -> list[threading.Thread]:
        return [
            t
            for t in threading.enumerate()
            if t not in self.threads and not t.name.startswith(LOOP_THREAD_PREFIX) and t.is_alive()
        ]

    async def live_threads(self) -> list[str]:
        fresh = self.fresh_threads()
        for thread in fresh:
            await asyncio.to_thread(thread.join, THREAD_JOIN_S)
        return sorted(t.name for t in fresh if t.is_alive())


def make_runtime(tmp_path: Path, webhook_url: str) -> Runtime:
    return Runtime(
        load_settings(
            {
                "DERIV_SYMBOLS": "R_50,1HZ100V",
                "DERIV_SIMULATOR_TIME_SCALE": "20",
                "DERIV_PING_INTERVAL": "0.5",
                "DB_URL": f"sqlite:///{tmp_path}/status.db",
                "ALERT_WEBHOOK_URL": webhook_url,
            }
        )
    )


@contextlib.asynccontextmanager
async def served(
    tmp_path: Path, asgi_server: Callable[..., Awaitable[ServedApp]]
) -> AsyncIterator[tuple[Runtime, ServedApp]]:
    """A runtime (not started) with its API and a webhook receiver already listening."""
    receiver = await asgi_server(Receiver().app())
    runtime = make_runtime(tmp_path, f"{receiver.http_url}/hook")
    api = await asgi_server(create_api(runtime))
    yield runtime, api


async def first_tick(client: ClientConnection) -> None:
    await client.send(json.dumps({"type": "subscribe", "symbols": ["R_50"]}))
    async with asyncio.timeout(WAIT_S):
        while json.loads(await client.recv()).get("type") != "tick":
            pass


async def test_a_whole_runtime_leaves_no_task_and_no_thread_behind(
    tmp_path: Path, asgi_server: Callable[..., Awaitable[ServedApp]]
) -> None:
    async with served(tmp_path, asgi_server) as (runtime, api):
        leaks = Leaks()
        await runtime.start()
        assert runtime.simulator is not None and runtime.manager is not None
        async with connect(f"{api.ws_url}/api/v1/ws", open_timeout=WAIT_S) as client:
            await first_tick(client)
            # Every part at work: a health run (checks the store), a history read (its threads).
            assert (await runtime.health_report()).status in ("pass", "warn")
            await runtime.store.incidents(10)
            runtime.history_reader.request(runtime.clock.monotonic())  # the pages' reader starts its task
            assert (await runtime.history_reader.read_once()).error == ""
            assert runtime.alerts.snapshot()["enabled"] is True
            assert leaks.fresh_threads() != []  # the store's: the check below has something to see
            await runtime.stop()
            assert await closed_code(client) == 1001
            assert leaks.runtime_tasks() == []  # at once: stop awaited everything it started
        assert await leaks.settled_tasks() == []
        assert await leaks.live_threads() == []
        assert runtime.running is False


@pytest.mark.parametrize("failing", ["history store", "alerts", "upstream manager"])
async def test_a_start_that_fails_halfway_stops_what_it_had_started(
    failing: str, tmp_path: Path, asgi_server: Callable[..., Awaitable[ServedApp]], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken_start(*args: object) -> None:
        raise RuntimeError(f"{failing} cannot start")

    async with served(tmp_path, asgi_server) as (runtime, _):
        target: object = {"history store": runtime.store, "alerts": runtime.alerts}.get(failing, DerivManager)
        monkeypatch.setattr(target, "start", broken_start)
        leaks = Leaks()
        with pytest.raises(RuntimeError, match="cannot start"):
            await runtime.start()
        assert leaks.runtime_tasks() == []
        assert await leaks.live_threads() == []
        assert runtime.running is False and runtime.ready is False
        simulator = runtime.simulator
        assert simulator is not None
        with pytest.raises(OSError):  # the simulator started first and was stopped again
            await asyncio.open_connection("127.0.0.1", simulator.port)
        await runtime.stop()  # nothing left to stop: a no-op


async def test_a_stop_step_that_fails_is_logged_and_the_others_still_run(
    tmp_path: Path,
    asgi_server: Callable[..., Awaitable[ServedApp]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with served(tmp_path, asgi_server) as (runtime, _):
        real_stop = runtime.alerts.stop

        async def stop_then_fail(*args: Any) -> None:
            await real_stop()
            raise RuntimeError("alerts stop failed")

        monkeypatch.setattr(runtime.alerts, "stop", stop_then_fail)
        leaks = Leaks()
        await runtime.start()
        with caplog.at_level(logging.ERROR, logger="backend_core.runtime"):
            await runtime.stop()  # does not raise
        assert any("stopping the alerts failed" in r.getMessage() for r in caplog.records)
        # The steps after it (store, hub, loop-lag probe, simulator) ran: nothing is left.
        assert leaks.runtime_tasks() == []
        assert await leaks.live_threads() == []
        assert runtime.hub.snapshot()["closed"] is True


async def test_a_runtime_starts_once(tmp_path: Path, asgi_server: Callable[..., Awaitable[ServedApp]]) -> None:
    async with served(tmp_path, asgi_server) as (runtime, _):
        async with runtime.lifespan():
            assert runtime.ready is True
            with pytest.raises(RuntimeError, match="already been started"):
                await runtime.start()
        with pytest.raises(RuntimeError, match="build a new Runtime"):
            await runtime.start()
        assert runtime.running is False
