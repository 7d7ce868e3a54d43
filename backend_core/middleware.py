"""Per-route circuit breakers for the HTTP routes that read a dependency, as plain ASGI.

A breaker guards a dependency (the history database), not a route's input: DESIGN.md
rule 8 says a client can never open it. One "api:<route template>" breaker per guarded
route (``/api/v1/history``, not the concrete path, so the number of breakers is bounded
by the number of routes and one broken dependency never takes other routes down).

What a breaker counts (docs/operations.md, "Security"):

- **failure**: the handler answered 502, 503 or 504 (the way a handler says "my
  dependency failed, was unavailable or timed out": the history routes answer 503 when
  the store cannot), or it raised :class:`TimeoutError`;
- **success**: any other answer below 500, 4xx included (a bad request proves the route
  works);
- **neither** (the permit is released): a 500 or any other exception (a bug in this
  server, which a request could provoke: it is logged by the server and must not switch
  the route off for everyone), and a client that went away or a cancelled request
  (disconnect, shutdown).

While a breaker is open its route answers 503 at once with ``Retry-After`` and a JSON
reason, without running the handler. Routes not given to the middleware (health, the
in-memory REST fallback, Reflex's pages, WebSocket scopes) pass through untouched.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend_core.breakers.registry import BreakerRegistry
from backend_core.errors import CircuitOpenError
from backend_core.http_input import error_response

# A handler's own way of saying its dependency failed (bad gateway, unavailable, timeout).
DEPENDENCY_FAILURE_STATUSES = frozenset({502, 503, 504})


class BreakerMiddleware:
    """Wraps ``app``; ``routes`` are the guarded routes (their path templates name the breakers)."""

    def __init__(self, app: ASGIApp, *, registry: BreakerRegistry, routes: Iterable[BaseRoute]) -> None:
        self.app = app
        self._registry = registry
        self._routes = [r for r in routes if isinstance(r, Route)]

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
        if template is None:
            await self.app(scope, receive, send)
            return
        breaker = self._registry.api(template)
        try:
            permit = breaker.acquire()
        except CircuitOpenError as exc:
            await _send_open(scope, receive, send, template, exc.retry_after_s)
            return

        status_code = 0

        async def capture(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        except TimeoutError as exc:
            breaker.record_failure(permit, exc)
            raise
        except BaseException:
            # A bug (500), a client that went away, a cancelled request: none of them
            # says anything about the dependency.
            breaker.release(permit)
            raise
        if status_code in DEPENDENCY_FAILURE_STATUSES:
            breaker.record_failure(permit, RuntimeError(f"HTTP {status_code}"))
        elif 0 < status_code < 500:
            breaker.record_success(permit)
        else:
            breaker.release(permit)


async def _send_open(scope: Scope, receive: Receive, send: Send, template: str, retry_after_s: float) -> None:
    retry_after = max(1, math.ceil(retry_after_s))
    response = error_response(
        503,
        "circuit_open",
        f"This endpoint is temporarily disabled after repeated failures of what it depends on; "
        f"retry in {retry_after} s.",
        {"Retry-After": str(retry_after)},
        breaker=f"api:{template}",
        retry_after_s=round(retry_after_s, 3),
    )
    await response(scope, receive, send)
