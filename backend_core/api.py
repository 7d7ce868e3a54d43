"""create_api(runtime): the Starlette app that the Reflex backend mounts (api_transformer).

Routes (every HTTP handler reads snapshots; none awaits the upstream):

=====================================================  ==========================================
``GET  /health``                                       summary; 200 pass/warn, 503 fail
``GET  /health/detailed``                              application/health+json (IETF draft)
``GET  /health/websocket``                             upstream detail and relay counts
``GET  /health/websocket/connections``                 admin only: one entry per relay client
``GET  /health/circuit-breakers``                      every breaker's snapshot
``POST /health/circuit-breakers/{name}/reset``         admin only (Bearer ADMIN_TOKEN)
``GET  /livez``, ``GET /readyz``                       liveness, readiness
``GET  /metrics``                                      Prometheus text, or OpenMetrics on Accept
``GET  /openapi.json``                                 OpenAPI 3.1 description of these routes
``GET  /api/v1/status``                                everything the status page shows
``POST /api/v1/retry``                                 a manual upstream retry (coalesced)
``GET  /api/v1/ticks/latest?symbols=A,B``              latest tick per symbol
``GET  /api/v1/ticks/{symbol}?since=<epoch>``          recent ticks from the ring buffer
``WS   /api/v1/ws``                                    the relay (docs/websocket-api.md)
=====================================================  ==========================================

Every parameter is read by :mod:`backend_core.http_input`: bad input is a 4xx with a JSON
reason, never a 5xx. The routes that read a dependency that can fail (the history
database) run behind their own "api:<route>" circuit breaker
(:mod:`backend_core.middleware`); the others read memory only and need none. Every API
route but health, liveness, readiness and metrics is rate limited per client
(:mod:`backend_core.ratelimit`). docs/operations.md ("Security") says what is public.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from backend_core import __version__, status_view
from backend_core.history_api import BOUNDS, history_routes
from backend_core.http_input import (
    BadParameter,
    error_response,
    is_breaker_name,
    parse_int,
    parse_symbol_path,
    parse_symbols,
)
from backend_core.middleware import BreakerMiddleware
from backend_core.openapi import openapi_document
from backend_core.ratelimit import RateLimitMiddleware
from backend_core.runtime import Runtime
from backend_core.statuspage_api import routes as statuspage_routes

audit = logging.getLogger("backend_core.audit")

# The most ticks one REST call returns: the ring buffer's own size bounds it anyway.
MAX_TICKS_PER_REQUEST = 1000
# Epochs are Unix seconds; 12 digits reach the year 33658.
MAX_EPOCH = 999_999_999_999
# Keys of the relay's snapshot that name or describe single clients: admin only.
_PER_CONNECTION_KEYS = frozenset({"connections"})
# Health, liveness, readiness and metrics answer every caller at any rate: orchestrators
# and scrapers must always get the truth. Admin routes are not among them (a token guess
# is a request like any other).
RATE_LIMIT_EXEMPT = frozenset(
    {"/health", "/health/detailed", "/health/websocket", "/health/circuit-breakers", "/livez", "/readyz", "/metrics"}
)


class _AnyText(Convertor[str]):
    """A path parameter of any characters, slashes and newlines included: the handler checks it.

    Starlette's ``path`` convertor stops at a newline, which would turn a forged name into
    a 404 from the router instead of the handler's specific 400.
    """

    regex = "(?s:.+)"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("any_text", _AnyText())


def public_relay_view(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The relay's snapshot without anything about single clients (addresses above all)."""
    return {key: value for key, value in snapshot.items() if key not in _PER_CONNECTION_KEYS}


def create_api(runtime: Runtime) -> Starlette:
    settings = runtime.settings
    challenge = {"WWW-Authenticate": 'Bearer realm="admin"'}

    def admin_refusal(request: Request, action: str) -> Response | None:
        """None when the request carries the admin token; else the 401/403 to send."""
        if settings.ADMIN_TOKEN is None:
            audit.warning("%s refused: ADMIN_TOKEN is not set (peer=%s)", action, _peer(request))
            return error_response(403, "admin_disabled", "Admin actions are disabled: set ADMIN_TOKEN to enable them.")
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        if not header or scheme.lower() != "bearer" or not credentials.strip():
            return error_response(401, "unauthorized", "Send Authorization: Bearer <ADMIN_TOKEN>.", challenge)
        expected = settings.ADMIN_TOKEN.get_secret_value().encode()
        if not hmac.compare_digest(credentials.strip().encode(), expected):
            audit.warning("%s refused: wrong token (peer=%s)", action, _peer(request))
            return error_response(
                401,
                "unauthorized",
                "The admin token is not valid.",
                {"WWW-Authenticate": 'Bearer realm="admin", error="invalid_token"'},
            )
        return None

    async def health(request: Request) -> Response:
        report = await runtime.health_report()
        return JSONResponse(report.summary(), status_code=503 if report.status == "fail" else 200)

    async def health_detailed(request: Request) -> Response:
        report = await runtime.health_report()
        body = report.detailed(
            version=__version__.split(".")[0],
            release_id=__version__,
            service_id="deriv-status",
            description="Live Deriv market-data feed: upstream link, relay, circuit breakers",
        )
        return JSONResponse(
            body,
            status_code=503 if report.status == "fail" else 200,
            media_type="application/health+json",
            headers={"cache-control": "no-store"},
        )

    async def health_websocket(request: Request) -> Response:
        body = status_view.websocket_health(runtime)
        body["relay"] = public_relay_view(body["relay"])
        return JSONResponse(body)

    async def health_breakers(request: Request) -> Response:
        return JSONResponse(
            {
                "enabled": settings.CIRCUIT_BREAKER_ENABLED,
                "breakers": [b.to_dict() for b in runtime.breakers.snapshots()],
            }
        )

    async def relay_connections(request: Request) -> Response:
        refusal = admin_refusal(request, "relay connection list")
        if refusal is not None:
            return refusal
        active = runtime.relay.snapshot()["active"]
        listed = runtime.relay.connections()
        return JSONResponse(
            {
                "active": active,
                "connections": listed,
                "connections_truncated": active > len(listed),
            },
            headers={"cache-control": "no-store"},
        )

    async def reset_breaker(request: Request) -> Response:
        name: str = request.path_params["name"]
        refusal = admin_refusal(request, "breaker reset")
        if refusal is not None:
            return refusal
        # The name comes from the URL (percent-decoded, so it may hold a newline): it is
        # checked before it reaches a log line or an answer.
        if not is_breaker_name(name):
            return error_response(
                400,
                "invalid_breaker_name",
                "A breaker name is 1 to 255 letters, digits or _:./{}*- (see /health/circuit-breakers).",
            )
        try:
            before = runtime.breakers.get(name).snapshot().state
            runtime.reset_breaker(name)
        except KeyError:
            return error_response(404, "unknown_breaker", f"No circuit breaker is named {name!r}.")
        after = runtime.breakers.get(name).snapshot()
        audit.warning("breaker reset by admin: breaker=%s from=%s peer=%s", name, before, _peer(request))
        return JSONResponse({"reset": name, "from": before, "breaker": after.to_dict()})

    async def livez(request: Request) -> Response:
        return JSONResponse({"status": "pass"})

    async def readyz(request: Request) -> Response:
        if runtime.ready and not runtime.shutting_down:
            return JSONResponse({"status": "pass", "ready": True})
        reason = "shutting down" if runtime.shutting_down else "starting"
        return JSONResponse({"status": "fail", "ready": False, "output": reason}, status_code=503)

    async def metrics(request: Request) -> Response:
        body, content_type = runtime.metrics.render(request.headers.get("accept"))
        return Response(body, headers={"content-type": content_type})

    async def status(request: Request) -> Response:
        return JSONResponse(status_view.status(runtime), headers={"cache-control": "no-store"})

    async def retry(request: Request) -> Response:
        outcome = runtime.retry_now()
        codes = {"started": 202, "too_soon": 429, "stopped": 503}
        code = codes.get(outcome.status, 200)
        headers = {"Retry-After": str(max(1, round(outcome.retry_after_s)))} if outcome.status == "too_soon" else None
        return JSONResponse(
            {"status": outcome.status, "message": outcome.message, "retry_after_s": round(outcome.retry_after_s, 1)},
            status_code=code,
            headers=headers,
        )

    async def ticks_latest(request: Request) -> Response:
        raw = request.query_params.get("symbols")
        try:
            symbols = parse_symbols(raw, settings.DERIV_SYMBOLS) if raw is not None else settings.DERIV_SYMBOLS
        except BadParameter as exc:
            return exc.response()
        views = {v.symbol: v.to_dict() for v in status_view.tick_views(runtime, symbols)}
        return JSONResponse(
            {
                "upstream_state": status_view.upstream_status(runtime)["state"],
                "ticks": {s: views.get(s) for s in symbols},
            }
        )

    async def ticks_since(request: Request) -> Response:
        query = request.query_params
        try:
            symbol = parse_symbol_path(request.path_params["symbol"], settings.DERIV_SYMBOLS)
            since = parse_int(query.get("since"), "since", default=0, low=0, high=MAX_EPOCH, code="invalid_since")
            limit = parse_int(
                query.get("limit"),
                "limit",
                default=MAX_TICKS_PER_REQUEST,
                low=1,
                high=MAX_TICKS_PER_REQUEST,
                code="invalid_limit",
            )
        except BadParameter as exc:
            return exc.response()
        ticks = runtime.hub.ticks_since(symbol, since, limit)
        views = status_view.tick_views(runtime, (symbol,))
        latest = views[0] if views else None
        return JSONResponse(
            {
                "symbol": symbol,
                "upstream_state": status_view.upstream_status(runtime)["state"],
                "stale": True if latest is None else latest.stale,
                "age_s": None if latest is None else latest.age_s,
                "ticks": [t.to_dict() for t in ticks],
            }
        )

    async def openapi(request: Request) -> Response:
        return JSONResponse(document)

    history = history_routes(runtime.store)
    routes: list[BaseRoute] = [
        Route("/health", health, methods=["GET"]),
        Route("/health/detailed", health_detailed, methods=["GET"]),
        Route("/health/websocket", health_websocket, methods=["GET"]),
        Route("/health/websocket/connections", relay_connections, methods=["GET"]),
        Route("/health/circuit-breakers", health_breakers, methods=["GET"]),
        # "api:<route template>" names hold slashes.
        Route("/health/circuit-breakers/{name:any_text}/reset", reset_breaker, methods=["POST"]),
        Route("/livez", livez, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/api/v1/status", status, methods=["GET"]),
        Route("/api/v1/retry", retry, methods=["POST"]),
        Route("/api/v1/ticks/latest", ticks_latest, methods=["GET"]),
        Route("/api/v1/ticks/{symbol}", ticks_since, methods=["GET"]),
        *history,
        *statuspage_routes(runtime),
        WebSocketRoute("/api/v1/ws", runtime.relay.endpoint),
    ]
    document = openapi_document(
        settings.DERIV_SYMBOLS,
        __version__,
        max_ticks=MAX_TICKS_PER_REQUEST,
        max_epoch=MAX_EPOCH,
        bounds=BOUNDS,
    )

    async def not_found(request: Request, exc: Exception) -> Response:
        return error_response(404, "not_found", "No such resource; /openapi.json lists them.")

    async def method_not_allowed(request: Request, exc: Exception) -> Response:
        allow = getattr(exc, "headers", None) or {}
        return error_response(405, "method_not_allowed", f"{request.method[:16]} is not allowed here.", allow)

    app = Starlette(
        routes=routes,
        exception_handlers={404: not_found, 405: method_not_allowed},
        middleware=[
            # Outermost: a request refused for its rate never reaches a breaker.
            Middleware(
                RateLimitMiddleware,
                routes=routes,
                rate_per_s=settings.API_RATE_LIMIT_PER_S,
                burst=settings.API_RATE_LIMIT_BURST,
                trusted_proxies=settings.TRUSTED_PROXIES,
                clock=runtime.clock,
                exempt=RATE_LIMIT_EXEMPT.__contains__,
            ),
            # Only the routes that read the database: the others depend on nothing that can fail.
            Middleware(BreakerMiddleware, registry=runtime.breakers, routes=history),
        ],
    )
    app.state.runtime = runtime
    return app


def _peer(request: Request) -> str:
    return request.client.host if request.client else "?"
