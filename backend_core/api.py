"""create_api(runtime): the Starlette app that the Reflex backend mounts (api_transformer).

Routes (every HTTP handler reads snapshots; none awaits the upstream):

=====================================================  ==========================================
``GET  /health``                                       summary; 200 pass/warn, 503 fail
``GET  /health/detailed``                              application/health+json (IETF draft)
``GET  /health/websocket``                             upstream and relay detail
``GET  /health/circuit-breakers``                      every breaker's snapshot
``POST /health/circuit-breakers/{name}/reset``         admin only (Bearer ADMIN_TOKEN)
``GET  /livez``, ``GET /readyz``                       liveness, readiness
``GET  /metrics``                                      Prometheus text, or OpenMetrics on Accept
``GET  /api/v1/status``                                everything the status page shows
``POST /api/v1/retry``                                 a manual upstream retry (coalesced)
``GET  /api/v1/ticks/latest?symbols=A,B``              latest tick per symbol
``GET  /api/v1/ticks/{symbol}?since=<epoch>``          recent ticks from the ring buffer
``WS   /api/v1/ws``                                    the relay (docs/websocket-api.md)
=====================================================  ==========================================

Every HTTP route but health, liveness, readiness and metrics runs behind its own
"api:<route>" circuit breaker (:mod:`backend_core.middleware`).
"""

from __future__ import annotations

import hmac
import logging
import re

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute

from backend_core import __version__, status_view
from backend_core.history_api import history_routes
from backend_core.middleware import BreakerMiddleware
from backend_core.runtime import Runtime
from backend_core.statuspage_api import routes as statuspage_routes

audit = logging.getLogger("backend_core.audit")

_SYMBOL = re.compile(r"^\w{2,30}$")
# The most ticks one REST call returns: the ring buffer's own size bounds it anyway.
MAX_TICKS_PER_REQUEST = 1000


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def create_api(runtime: Runtime) -> Starlette:
    settings = runtime.settings

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
        return JSONResponse(status_view.websocket_health(runtime))

    async def health_breakers(request: Request) -> Response:
        return JSONResponse(
            {
                "enabled": settings.CIRCUIT_BREAKER_ENABLED,
                "breakers": [b.to_dict() for b in runtime.breakers.snapshots()],
            }
        )

    async def reset_breaker(request: Request) -> Response:
        name = request.path_params["name"]
        peer = request.client.host if request.client else "?"
        if settings.ADMIN_TOKEN is None:
            audit.warning("breaker reset refused: ADMIN_TOKEN is not set (breaker=%s peer=%s)", name[:100], peer)
            return _error(403, "admin_disabled", "Admin actions are disabled: set ADMIN_TOKEN to enable them.")
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        challenge = {"WWW-Authenticate": 'Bearer realm="admin"'}
        if not header or scheme.lower() != "bearer" or not credentials.strip():
            return _error(401, "unauthorized", "Send Authorization: Bearer <ADMIN_TOKEN>.", challenge)
        expected = settings.ADMIN_TOKEN.get_secret_value().encode()
        if not hmac.compare_digest(credentials.strip().encode(), expected):
            audit.warning("breaker reset refused: wrong token (breaker=%s peer=%s)", name[:100], peer)
            return _error(
                401,
                "unauthorized",
                "The admin token is not valid.",
                {**challenge, "WWW-Authenticate": 'Bearer realm="admin", error="invalid_token"'},
            )
        try:
            before = runtime.breakers.get(name).snapshot().state
            runtime.breakers.reset(name)
        except KeyError:
            return _error(404, "unknown_breaker", f"No circuit breaker is named {name[:100]!r}.")
        after = runtime.breakers.get(name).snapshot()
        audit.warning("breaker reset by admin: breaker=%s from=%s peer=%s", name, before, peer)
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
        code = 202 if outcome.status == "started" else 429 if outcome.status == "too_soon" else 200
        headers = {"Retry-After": str(max(1, round(outcome.retry_after_s)))} if outcome.status == "too_soon" else None
        return JSONResponse(
            {"status": outcome.status, "message": outcome.message, "retry_after_s": round(outcome.retry_after_s, 1)},
            status_code=code,
            headers=headers,
        )

    def _known_symbols(raw: str) -> tuple[str, ...] | Response:
        names = tuple(dict.fromkeys(s.strip() for s in raw.split(",") if s.strip()))
        if not names:
            return _error(400, "invalid_symbols", "Pass symbols as a comma-separated list, e.g. ?symbols=R_50,R_100.")
        unknown = [s for s in names if s not in settings.DERIV_SYMBOLS]
        if unknown:
            shown = ", ".join(s[:30] for s in unknown[:5])
            return _error(
                404, "unknown_symbol", f"Not streamed here: {shown}. Known: {', '.join(settings.DERIV_SYMBOLS)}."
            )
        return names

    async def ticks_latest(request: Request) -> Response:
        raw = request.query_params.get("symbols")
        symbols = _known_symbols(raw) if raw is not None else settings.DERIV_SYMBOLS
        if isinstance(symbols, Response):
            return symbols
        views = {v.symbol: v.to_dict() for v in status_view.tick_views(runtime, symbols)}
        return JSONResponse(
            {
                "upstream_state": status_view.upstream_status(runtime)["state"],
                "ticks": {s: views.get(s) for s in symbols},
            }
        )

    async def ticks_since(request: Request) -> Response:
        symbol = request.path_params["symbol"]
        if not _SYMBOL.match(symbol) or symbol not in settings.DERIV_SYMBOLS:
            return _error(404, "unknown_symbol", f"Not streamed here: {symbol[:30]!r}.")
        raw_since = request.query_params.get("since", "0")
        raw_limit = request.query_params.get("limit", str(MAX_TICKS_PER_REQUEST))
        if not raw_since.isdigit() or len(raw_since) > 12:
            return _error(400, "invalid_since", "since must be a Unix epoch in whole seconds, e.g. since=1700000000.")
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_TICKS_PER_REQUEST:
            return _error(400, "invalid_limit", f"limit must be a whole number from 1 to {MAX_TICKS_PER_REQUEST}.")
        ticks = runtime.hub.ticks_since(symbol, int(raw_since), int(raw_limit))
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

    routes: list[BaseRoute] = [
        Route("/health", health, methods=["GET"]),
        Route("/health/detailed", health_detailed, methods=["GET"]),
        Route("/health/websocket", health_websocket, methods=["GET"]),
        Route("/health/circuit-breakers", health_breakers, methods=["GET"]),
        Route("/health/circuit-breakers/{name}/reset", reset_breaker, methods=["POST"]),
        Route("/livez", livez, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/api/v1/status", status, methods=["GET"]),
        Route("/api/v1/retry", retry, methods=["POST"]),
        Route("/api/v1/ticks/latest", ticks_latest, methods=["GET"]),
        Route("/api/v1/ticks/{symbol}", ticks_since, methods=["GET"]),
        *history_routes(runtime.store),
        *statuspage_routes(runtime),
        WebSocketRoute("/api/v1/ws", runtime.relay.endpoint),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(BreakerMiddleware, registry=runtime.breakers, routes=routes)],
    )
    app.state.runtime = runtime
    return app
