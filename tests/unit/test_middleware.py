"""Per-route breakers as ASGI middleware: in-process ASGI calls, a fake clock, no sockets."""

from __future__ import annotations

import httpx
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from backend_core.breakers import BreakerRegistry
from backend_core.clock import FakeClock
from backend_core.config import load_settings
from backend_core.middleware import BreakerMiddleware


def build() -> tuple[httpx.AsyncClient, BreakerRegistry, FakeClock, dict[str, int]]:
    clock = FakeClock()
    settings = load_settings({"API_CB_FAILURE_THRESHOLD": "2", "API_CB_RECOVERY_TIMEOUT": "10"})
    registry = BreakerRegistry.from_settings(settings, clock=clock)
    calls = {"broken": 0, "item": 0, "other": 0}

    async def broken(request: Request) -> Response:
        calls["broken"] += 1
        return JSONResponse({"error": "boom"}, status_code=500)

    async def raises(request: Request) -> Response:
        raise RuntimeError("kaboom")

    async def item(request: Request) -> Response:
        calls["item"] += 1
        if request.path_params["name"] == "bad":
            return PlainTextResponse("no", status_code=502)
        return PlainTextResponse("ok")

    async def not_found(request: Request) -> Response:
        return PlainTextResponse("missing", status_code=404)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "fail"}, status_code=503)

    async def other(scope, receive, send):  # type: ignore[no-untyped-def]
        calls["other"] += 1
        await PlainTextResponse("reflex page", status_code=500)(scope, receive, send)

    routes = [
        Route("/api/broken", broken),
        Route("/api/raises", raises),
        Route("/api/items/{name}", item),
        Route("/api/missing", not_found),
        Route("/health", health),
    ]
    app = Starlette(
        routes=[*routes, Mount("/", app=other)],
        middleware=[Middleware(BreakerMiddleware, registry=registry, routes=routes)],
    )
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    return httpx.AsyncClient(transport=transport, base_url="http://test"), registry, clock, calls


async def test_repeated_5xx_opens_the_route_breaker_and_it_answers_503_at_once() -> None:
    client, registry, clock, calls = build()
    async with client:
        assert (await client.get("/api/broken")).status_code == 500
        assert (await client.get("/api/broken")).status_code == 500
        response = await client.get("/api/broken")
        assert response.status_code == 503
        assert response.headers["retry-after"] == "10"
        body = response.json()
        assert body["error"] == "circuit_open" and body["breaker"] == "api:/api/broken"
        assert calls["broken"] == 2, "the handler ran while the breaker was open"
        clock.advance(10)
        assert (await client.get("/api/broken")).status_code == 500  # the half-open probe ran
        assert calls["broken"] == 3


async def test_one_broken_route_never_takes_others_down() -> None:
    client, registry, clock, calls = build()
    async with client:
        for _ in range(3):
            await client.get("/api/raises")
        assert registry.get("api:/api/raises").snapshot().state == "open"
        assert (await client.get("/api/items/fine")).text == "ok"
        assert registry.get("api:/api/items/{name}").snapshot().state == "closed"


async def test_breakers_are_per_route_template_not_per_path() -> None:
    client, registry, clock, calls = build()
    async with client:
        await client.get("/api/items/bad")
        await client.get("/api/items/bad")
        assert (await client.get("/api/items/fine")).status_code == 503
        assert "api:/api/items/bad" not in registry.names()


async def test_4xx_is_not_a_failure() -> None:
    client, registry, clock, calls = build()
    async with client:
        for _ in range(5):
            assert (await client.get("/api/missing")).status_code == 404
        assert registry.get("api:/api/missing").snapshot().state == "closed"


async def test_health_and_foreign_routes_are_exempt() -> None:
    client, registry, clock, calls = build()
    async with client:
        for _ in range(5):
            assert (await client.get("/health")).status_code == 503
            assert (await client.get("/some/reflex/page")).status_code == 500
        assert calls["other"] == 5
        assert not any(name.startswith("api:/health") for name in registry.names())
        assert all(not name.endswith("/some/reflex/page") for name in registry.names())
