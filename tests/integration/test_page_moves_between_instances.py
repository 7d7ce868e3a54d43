"""A tab whose socket moves between two live instances on one Redis keeps its live updates
(CLUSTER.md 2.7), with no sticky sessions, and keeps them when the instance it left dies.

Two app processes (gunicorn, as the Docker image runs it: no frontend build) share one
real redis-server; a minimal Socket.IO client over a WebSocket stands for the browser
(the same connect packet, with the page's ``hydrate_and_load`` event, that Reflex's
frontend sends) and records each push of the page's ``updated_at``, which only the
page's live loop moves once a second.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import websockets

from tests.app_process import RunningApp, free_port, start_app, stop_app
from tests.integration.redis_server import RedisServer, redis_server

NAMESPACE = "/_event"
BOOT_EVENT = {
    "name": "reflex___state____state.hydrate_and_load",
    "payload": {},
    "router_data": {"pathname": "/", "asPath": "/"},
}
UPDATED_AT = "updated_at_rx_state_"
# The page's loop pushes its time every second; these only bound a broken test (a loaded
# machine can take seconds to hand a tab's state lock over between instances).
LIVE_PUSHES = 3
LISTEN_MAX_S = 45.0


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as running:
        yield running


@pytest.fixture(scope="module")
def instances(tmp_path_factory: pytest.TempPathFactory, redis: RedisServer) -> Iterator[list[RunningApp]]:
    tmp = tmp_path_factory.mktemp("instances")
    started: list[RunningApp] = []
    try:
        for name in ("a", "b"):
            port = free_port()
            env = {
                "REDIS_URL": redis.url,
                "REFLEX_ENV_MODE": "prod",
                "__REFLEX_SKIP_COMPILE": "true",
                "DB_URL": f"sqlite:///{tmp / f'status-{name}.db'}",
            }
            command = [
                *(str(Path(sys.executable).parent / "gunicorn"), "--preload"),
                *("--worker-class", "uvicorn.workers.UvicornH11Worker", "--workers", "1"),
                *("--bind", f"127.0.0.1:{port}", "rxapp.rxapp:app()"),
            ]
            started.append(start_app(command, tmp / f"app-{name}.log", port, env))
        yield started
    finally:
        for app in started:
            stop_app(app)


class Tab:
    """One browser tab's socket to one instance: what it was pushed, in order."""

    def __init__(self, port: int, token: str) -> None:
        self.url = f"ws://127.0.0.1:{port}{NAMESPACE}/?EIO=4&transport=websocket&token={token}"
        self.times: list[str] = []
        self.events: list[str] = []

    async def listen(self, *, then: Any = None) -> None:
        """Connect, hydrate, and record pushes until :data:`LIVE_PUSHES` distinct ones came
        (then call ``then`` and wait for as many more), bounded by :data:`LISTEN_MAX_S`."""
        async with websockets.connect(self.url, max_size=None, open_timeout=10) as socket:
            await asyncio.wait_for(socket.recv(), 10)  # Engine.IO open
            await socket.send(f"40{NAMESPACE}," + json.dumps({"event": BOOT_EVENT}))
            started = time.monotonic()
            wanted = LIVE_PUSHES
            while time.monotonic() - started < LISTEN_MAX_S:
                if distinct(self.times) >= wanted:
                    if then is None:
                        return
                    then()
                    then = None
                    wanted = distinct(self.times) + LIVE_PUSHES
                try:
                    message = await asyncio.wait_for(socket.recv(), 0.2)
                except TimeoutError:
                    continue
                self._take(str(message))
                if message == "2":  # Engine.IO ping
                    await socket.send("3")

    def _take(self, message: str) -> None:
        prefix = f"42{NAMESPACE},"
        if not message.startswith(prefix):
            return
        name, data = json.loads(message[len(prefix) :])[:2]
        self.events.append(name)
        for fields in (data.get("delta") or {}).values() if isinstance(data, dict) else ():
            if fields.get(UPDATED_AT):
                self.times.append(fields[UPDATED_AT])


def distinct(times: list[str]) -> int:
    return len(set(times))


async def test_a_tab_that_moves_to_another_instance_stays_live_there_even_when_the_first_dies(
    instances: list[RunningApp],
) -> None:
    instance_a, instance_b = instances
    token = "tab-that-moves"
    on_a = Tab(instance_a.port, token)
    await on_a.listen()
    assert distinct(on_a.times) >= LIVE_PUSHES, f"not live on the first instance: {on_a.times}"

    # The socket reconnects through the balancer to the other instance, the first one
    # still running; later the first one dies (kill -9) while the tab is on the second.
    on_b = Tab(instance_b.port, token)
    killed_at: list[int] = []

    def kill_a() -> None:
        killed_at.append(len(on_b.times))
        os.killpg(instance_a.process.pid, signal.SIGKILL)

    await on_b.listen(then=kill_a)
    assert "new_token" not in on_b.events, "the tab was given a new identity: its state was not found"
    assert killed_at, f"the moved tab is not live on the second instance: {on_b.times}"
    after = on_b.times[killed_at[0] :]
    assert distinct(after) >= LIVE_PUSHES, f"the moved tab's updates stopped when the first instance died: {on_b.times}"
