"""The status page behind a balancer: two instances (``make run`` twice) on one Redis, a page
whose instance is killed is live again from the other within 5 s (issue 11, item 7).

In front of the two instances sits a tiny TCP proxy that sends each new connection to the
first instance that accepts it (A, then B), which is what a balancer with health checks
does once A is gone. The page is built with ``REFLEX_API_URL`` pointing at the proxy, so
its socket goes through it too, and reconnects through it after A dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from tests.app_process import RunningApp, free_port, start_app, stop_app
from tests.e2e.conftest import APP_ENV, CHROMIUM, DESKTOP
from tests.e2e.page_checks import assert_accessible
from tests.integration.redis_server import RedisServer, redis_server

CONNECT_TIMEOUT_S = 2.0
RELAY_CHUNK = 65536
LIVE_AGAIN_MS = 5000


class FailoverProxy:
    """127.0.0.1:<port> -> the first of ``backends`` that accepts; counts live connections."""

    def __init__(self, backends: list[int]) -> None:
        self.port = free_port()
        self.backends = backends
        self.live = dict.fromkeys(backends, 0)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.Server | None = None

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", self.port))
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(10), "the proxy did not start"

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            handlers = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
            for task in handlers:
                task.cancel()
            await asyncio.gather(*handlers, return_exceptions=True)  # each closes its sockets
            if self._server is not None:
                await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        for port in self.backends:
            try:
                upstream_r, upstream_w = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), CONNECT_TIMEOUT_S
                )
            except (OSError, TimeoutError):
                continue
            break
        else:
            client_w.close()
            return
        self.live[port] += 1
        pipes = [
            asyncio.ensure_future(self._pipe(client_r, upstream_w)),
            asyncio.ensure_future(self._pipe(upstream_r, client_w)),
        ]
        try:
            await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            pass  # the proxy stops: close both sides below
        finally:
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            self.live[port] -= 1
            for writer in (client_w, upstream_w):
                with contextlib.suppress(Exception):
                    writer.close()
                    await writer.wait_closed()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(RELAY_CHUNK):
                writer.write(data)
                await writer.drain()


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as running:
        yield running


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, redis: RedisServer
) -> Iterator[tuple[RunningApp, RunningApp, FailoverProxy]]:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does)")
    tmp = tmp_path_factory.mktemp("e2e-cluster")
    port_a, port_b = free_port(), free_port()
    proxy = FailoverProxy([port_a, port_b])
    proxy.start()
    shared = {**APP_ENV, "REDIS_URL": redis.url, "REFLEX_API_URL": f"http://localhost:{proxy.port}"}
    started: list[RunningApp] = []
    try:
        # One after the other: each `make run` builds the page into the same .web folder.
        for name, port in (("a", port_a), ("b", port_b)):
            env = {**shared, "DB_URL": f"sqlite:///{tmp / f'status-{name}.db'}"}
            started.append(start_app(["make", "run", f"PORT={port}"], tmp / f"app-{name}.log", port, env))
        yield started[0], started[1], proxy
    finally:
        for app in started:
            stop_app(app)
        proxy.stop()


def test_a_page_whose_instance_is_killed_is_live_again_from_the_other(
    cluster: tuple[RunningApp, RunningApp, FailoverProxy], browser: Browser
) -> None:
    instance_a, instance_b, proxy = cluster
    context = browser.new_context(viewport=DESKTOP)
    try:
        page = context.new_page()
        page.goto(f"http://127.0.0.1:{proxy.port}/", wait_until="domcontentloaded")
        updated = page.locator("#updated-at")
        expect(page.locator("#browser-link")).to_have_attribute("data-state", "connected", timeout=60_000)
        expect(updated).not_to_have_text("", timeout=30_000)
        shown = updated.inner_text()
        expect(updated).not_to_have_text(shown, timeout=LIVE_AGAIN_MS)  # live, from A
        assert proxy.live[instance_a.port] >= 1 and proxy.live[instance_b.port] == 0
        # The Cluster section names the instance serving the page and its role.
        serving = page.locator('#cluster [data-cluster="role"]')
        expect(serving).to_contain_text("Leader", timeout=30_000)
        expect(page.locator('#cluster [data-cluster="members"]')).to_contain_text("2 live", timeout=30_000)
        serving_a = serving.inner_text()
        assert_accessible(page, "clustered, with the Cluster section")

        os.killpg(instance_a.process.pid, signal.SIGKILL)  # a crash: no goodbye to anyone
        at_kill = updated.inner_text()
        # B's loop pushes the page's time again (an on_load alone would move it once).
        expect(updated).not_to_have_text(at_kill, timeout=LIVE_AGAIN_MS)
        again = updated.inner_text()
        expect(updated).not_to_have_text(again, timeout=LIVE_AGAIN_MS)
        assert proxy.live[instance_b.port] >= 1, "the page's socket did not move to the other instance"
        expect(page.locator("#browser-link")).to_have_attribute("data-state", "connected")
        expect(page.locator("#fallback-region")).to_be_empty()
        # Served by the other instance now, which has taken the lease (within the TTL).
        expect(serving).not_to_have_text(serving_a, timeout=30_000)
        expect(serving).to_contain_text("Leader", timeout=30_000)
    finally:
        context.close()
