"""Shared fixtures for integration tests: a real uvicorn server on 127.0.0.1.

``asgi_server`` is a factory: ``served = await asgi_server(app, **uvicorn_config)`` starts
``app`` under ``uvicorn.Server`` on a free loopback port (the socket is bound here, so
there is no race for the port) and returns where it listens. Every server started is
stopped, bounded in time, when the test ends.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
import uvicorn

# Start-up and shutdown of a loopback server take milliseconds; these only stop a broken
# test from hanging the run.
SERVER_START_TIMEOUT_S = 10.0
SERVER_STOP_TIMEOUT_S = 15.0


@dataclass(frozen=True)
class ServedApp:
    host: str
    port: int
    server: uvicorn.Server

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"


def free_loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def start_asgi_server(app: Any, **config: Any) -> tuple[ServedApp, Callable[[], Awaitable[None]]]:
    """Start ``app``; returns where it listens and a coroutine function that stops it."""
    sock = free_loopback_socket()
    options: dict[str, Any] = {"lifespan": "off", "log_level": "warning", "access_log": False}
    options.setdefault("timeout_graceful_shutdown", 5)
    options.update(config)
    server = uvicorn.Server(uvicorn.Config(app, **options))
    task = asyncio.create_task(server.serve(sockets=[sock]), name="uvicorn-test-server")
    try:
        async with asyncio.timeout(SERVER_START_TIMEOUT_S):
            while not server.started:
                if task.done():
                    task.result()  # raises the start-up error
                    raise RuntimeError("uvicorn exited before it started")
                await asyncio.sleep(0.01)
    except BaseException:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        sock.close()
        raise

    async def stop() -> None:
        server.should_exit = True
        try:
            async with asyncio.timeout(SERVER_STOP_TIMEOUT_S):
                await task
        except TimeoutError:
            server.force_exit = True
            task.cancel()
        finally:
            sock.close()

    return ServedApp("127.0.0.1", sock.getsockname()[1], server), stop


@pytest.fixture
async def asgi_server() -> AsyncIterator[Callable[..., Awaitable[ServedApp]]]:
    stoppers: list[Callable[[], Awaitable[None]]] = []

    async def start(app: Any, **config: Any) -> ServedApp:
        served, stop = await start_asgi_server(app, **config)
        stoppers.append(stop)
        return served

    yield start
    for stop in reversed(stoppers):
        await stop()
