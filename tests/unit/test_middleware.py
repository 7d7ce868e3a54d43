"""Per-route breakers as ASGI middleware: in-process ASGI calls, a fake clock, no sockets.

A breaker counts only what the server cannot blame on the request: a handler's 502/503/504
(its dependency failed) and a TimeoutError. A 4xx, a 500 (a bug a request may provoke) and
a cancelled request never move it towards open.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import Message, Receive, Scope, Send

from backend_core.breakers.registry import BreakerRegistry
from backend_core.clock import FakeClock
from backend_core.config import load_settings
from backend_core.middleware import BreakerMiddleware


@dataclass(frozen=True)
class Served:
    """An app with guarded and unguarded routes, a client for it, and what it counts."""

    client: httpx.AsyncClient
    registry: BreakerRegistry
    clock: FakeClock
    calls: dict[str, int]

    def state(self, template: str) -> str:
        return self.registry.get(f"api:{template}").snapshot().state

    async def status(self, path: str) -> int:
        return (await self.client.get(path)).status_code


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    clock = FakeClock()
    settings = load_settings({"API_CB_FAILURE_THRESHOLD": "2", "API_CB_RECOVERY_TIMEOUT": "10"})
    registry = BreakerRegistry.from_settings(settings, clock=clock)
    calls = {"database": 0, "item": 0, "other": 0}

    async def database_down(request: Request) -> Response:
        calls["database"] += 1
        return JSONResponse({"error": "history_unavailable", "message": "down"}, status_code=503)

    async def times_out(request: Request) -> Response:
        raise TimeoutError

    async def buggy(request: Request) -> Response:
        raise RuntimeError("kaboom")

    async def server_error(request: Request) -> Response:
        return PlainTextResponse("bug", status_code=500)

    async def item(request: Request) -> Response:
        calls["item"] += 1
        if request.path_params["name"] == "bad":
            return PlainTextResponse("no", status_code=502)
        return PlainTextResponse("ok")

    async def not_found(request: Request) -> Response:
        return PlainTextResponse("missing", status_code=404)

    async def unguarded(request: Request) -> Response:
        return JSONResponse({"error": "x", "message": "y"}, status_code=503)

    async def other(scope, receive, send):  # type: ignore[no-untyped-def]
        calls["other"] += 1
        await PlainTextResponse("reflex page", status_code=503)(scope, receive, send)

    guarded = [
        Route("/api/database", database_down),
        Route("/api/timeout", times_out),
        Route("/api/buggy", buggy),
        Route("/api/error", server_error),
        Route("/api/items/{name}", item),
        Route("/api/missing", not_found),
    ]
    app = Starlette(
        routes=[*guarded, Route("/api/unguarded", unguarded), Mount("/", app=other)],
        middleware=[Middleware(BreakerMiddleware, registry=registry, routes=guarded)],
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield Served(client, registry, clock, calls)


async def test_a_failing_dependency_opens_the_route_breaker_and_it_answers_503_at_once(served: Served) -> None:
    assert await served.status("/api/database") == 503
    assert await served.status("/api/database") == 503
    response = await served.client.get("/api/database")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "10"
    body = response.json()
    assert body["error"] == "circuit_open" and body["breaker"] == "api:/api/database" and body["message"]
    assert served.calls["database"] == 2, "the handler ran while the breaker was open"
    served.clock.advance(10)
    assert await served.status("/api/database") == 503  # the half-open probe ran
    assert served.calls["database"] == 3


async def test_timeouts_count_as_failures(served: Served) -> None:
    assert [await served.status("/api/timeout") for _ in range(2)] == [500, 500]
    assert served.state("/api/timeout") == "open"


async def test_bugs_and_client_errors_never_open_a_breaker(served: Served) -> None:
    for _ in range(10):
        assert await served.status("/api/buggy") == 500
        assert await served.status("/api/error") == 500
        assert await served.status("/api/missing") == 404
    assert served.state("/api/buggy") == "closed"
    assert served.state("/api/error") == "closed"
    assert served.state("/api/missing") == "closed"
    assert served.registry.get("api:/api/missing").snapshot().successes_total == 10


async def test_a_cancelled_request_is_neither_success_nor_failure(served: Served) -> None:
    started = asyncio.Event()

    async def receive() -> Message:
        raise AssertionError("not read")

    async def send(message: Message) -> None:
        raise AssertionError("nothing is sent")

    scope: Scope = {
        "type": "http",
        "method": "GET",
        "path": "/api/database",
        "raw_path": b"/api/database",
        "query_string": b"",
        "headers": [],
        "root_path": "",
        "scheme": "http",
        "server": ("test", 80),
        "client": ("127.0.0.1", 1),
        "http_version": "1.1",
    }

    async def hang(scope: Scope, receive: Receive, send: Send) -> None:
        started.set()
        await asyncio.Event().wait()  # a slow query; the client goes away meanwhile

    middleware = BreakerMiddleware(hang, registry=served.registry, routes=[Route("/api/database", hang)])
    for _ in range(5):
        started.clear()
        task = asyncio.create_task(middleware(scope, receive, send))
        await started.wait()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    snap = served.registry.get("api:/api/database").snapshot()
    assert snap.state == "closed" and snap.failures_total == 0 and snap.in_flight_probes == 0


async def test_one_broken_route_never_takes_others_down(served: Served) -> None:
    for _ in range(3):
        await served.client.get("/api/database")
    assert served.state("/api/database") == "open"
    assert (await served.client.get("/api/items/fine")).text == "ok"
    assert served.state("/api/items/{name}") == "closed"


async def test_breakers_are_per_route_template_not_per_path(served: Served) -> None:
    await served.client.get("/api/items/bad")
    await served.client.get("/api/items/bad")
    assert await served.status("/api/items/fine") == 503
    assert "api:/api/items/bad" not in served.registry.names()


async def test_routes_not_given_to_it_pass_untouched(served: Served) -> None:
    for _ in range(5):
        assert await served.status("/api/unguarded") == 503
        assert await served.status("/some/reflex/page") == 503
    assert served.calls["other"] == 5
    assert served.registry.names() == ["websocket"]
