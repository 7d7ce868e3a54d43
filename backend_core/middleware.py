"""Per-route circuit breakers for the HTTP routes of the mounted API, as plain ASGI.

One "api:<route template>" breaker per route (``/api/v1/ticks/{symbol}``, not the
concrete path, so the number of breakers is bounded by the number of routes and one
broken route never takes the others down). An exception or a 5xx response counts as a
failure; while a breaker is open its route answers 503 at once with ``Retry-After`` and
a JSON reason, without running the handler.

Health, liveness, readiness and metrics routes are exempt: health must always tell the
truth. Requests that match none of the API's own routes (Reflex's pages, its event
socket, static files) pass through untouched, as do WebSocket scopes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from typing import Any

from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend_core.breakers import BreakerRegistry
from backend_core.errors import CircuitOpenError

EXEMPT_PREFIXES = ("/health", "/livez", "/readyz", "/metrics")


class BreakerMiddleware:
    """Wraps ``app``; ``routes`` are the API's own routes (their path templates name the breakers)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        registry: BreakerRegistry,
        routes: Iterable[BaseRoute],
        exempt: Callable[[str], bool] | None = None,
    ) -> None:
        self.app = app
        self._registry = registry
        self._routes = [r for r in routes if isinstance(r, Route)]
        self._exempt = exempt or (lambda template: template.startswith(EXEMPT_PREFIXES))

    def _template_for(self, scope: Scope) -> str | None:
        for route in self._routes:
            match, _ = route.matches(scope)
            if match is Match.FULL:
                return route.path
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        template = self._template_for(scope)
        if template is None or self._exempt(template):
            await self.app(scope, receive, send)
            return
        breaker = self._registry.api(template)
        try:
            permit = breaker.acquire()
        except CircuitOpenError as exc:
            await _send_open(send, template, exc.retry_after_s)
            return

        status_code = 0

        async def capture(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        except BaseException as exc:
            if isinstance(exc, Exception):
                breaker.record_failure(permit, exc)
            else:  # cancellation or shutdown: neither success nor failure
                breaker.release(permit)
            raise
        if status_code >= 500:
            breaker.record_failure(permit, RuntimeError(f"HTTP {status_code}"))
        else:
            breaker.record_success(permit)


async def _send_open(send: Send, template: str, retry_after_s: float) -> None:
    retry_after = max(1, math.ceil(retry_after_s))
    body: dict[str, Any] = {
        "error": "circuit_open",
        "message": f"This endpoint is temporarily disabled after repeated failures; retry in {retry_after} s.",
        "breaker": f"api:{template}",
        "retry_after_s": round(retry_after_s, 3),
    }
    payload = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"retry-after", str(retry_after).encode()),
                (b"content-length", str(len(payload)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
