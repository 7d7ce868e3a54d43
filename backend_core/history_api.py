"""History endpoints: uptime bars, incidents and breaker transitions, read from the database.

=====================================================  ==========================================
``GET /api/v1/history?component=upstream&days=90``     per-day bars and 24h/7d/30d/90d uptime
``GET /api/v1/incidents?limit=50&component=...``       newest incidents first
``GET /api/v1/transitions?limit=100&name=...``         newest breaker transitions first
=====================================================  ==========================================

Handlers only read through :class:`~backend_core.history.store.HistoryStore`, whose
queries run on its own read threads with a timeout; they never touch the upstream (DESIGN.md rule 4). Parameters
are validated: a bad one gets ``400`` with ``{"error": "invalid_parameter", "message": ...}``
naming it; a database that cannot answer gets ``503`` with ``Retry-After``. Components are
``upstream`` and ``breaker:<name>`` (e.g. ``breaker:websocket``). An incident's ``cause``
and ``recovery`` are codes (:class:`~backend_core.incidents.Cause`,
:class:`~backend_core.incidents.Recovery`), with ``attempts`` for a reconnection.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final, NamedTuple, TypeAlias

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from backend_core.history.queries import (
    MAX_HISTORY_DAYS,
    MAX_INCIDENTS_LIMIT,
    MAX_TRANSITIONS_LIMIT,
    StoreUnavailable,
)
from backend_core.history.store import HistoryStore
from backend_core.http_input import BadParameter, error_response, parse_int, parse_name
from backend_core.incidents import UPSTREAM

# How long a client should wait before asking again when the database is down.
RETRY_AFTER_S: Final = 10


class Bound(NamedTuple):
    """A numeric query parameter's default and its largest value (the smallest is 1)."""

    default: int
    most: int


#: ``?days=`` of /history, ``?limit=`` of /incidents and /transitions: what the handlers
#: accept and what /openapi.json documents.
BOUNDS: Final[Mapping[str, Bound]] = {
    "days": Bound(90, MAX_HISTORY_DAYS),
    "incidents": Bound(50, MAX_INCIDENTS_LIMIT),
    "transitions": Bound(100, MAX_TRANSITIONS_LIMIT),
}


def _unavailable(exc: StoreUnavailable) -> JSONResponse:
    return error_response(503, "history_unavailable", str(exc), headers={"Retry-After": str(RETRY_AFTER_S)})


def _json(body: object) -> JSONResponse:
    return JSONResponse(body, headers={"cache-control": "no-store"})


_Fetch: TypeAlias = Callable[[int, str | None], Awaitable[list[dict[str, Any]]]]


def _listing(key: str, name_param: str, fetch: _Fetch) -> Callable[[Request], Awaitable[Response]]:
    """A route listing ``key`` rows, newest first: ``?limit=`` (``BOUNDS[key]``) and an optional ``?<name_param>=``."""
    bound = BOUNDS[key]

    async def route(request: Request) -> Response:
        try:
            limit = parse_int(request.query_params.get("limit"), "limit", default=bound.default, low=1, high=bound.most)
            name = parse_name(request.query_params.get(name_param), name_param, default=None)
        except BadParameter as exc:
            return exc.response()
        try:
            rows = await fetch(limit, name)
        except StoreUnavailable as exc:
            return _unavailable(exc)
        return _json({key: rows, "count": len(rows), "limit": limit, name_param: name})

    return route


def history_routes(store: HistoryStore) -> list[Route]:
    """The three routes, for ``create_api`` to add to its route list."""

    days_bound = BOUNDS["days"]

    async def history(request: Request) -> Response:
        try:
            component = parse_name(request.query_params.get("component"), "component", default=UPSTREAM) or UPSTREAM
            days = parse_int(
                request.query_params.get("days"), "days", default=days_bound.default, low=1, high=days_bound.most
            )
        except BadParameter as exc:
            return exc.response()
        try:
            return _json(await store.history(component, days))
        except StoreUnavailable as exc:
            return _unavailable(exc)

    incidents = _listing("incidents", "component", store.incidents)
    transitions = _listing("transitions", "name", store.transitions)

    return [
        Route("/api/v1/history", history, methods=["GET"]),
        Route("/api/v1/incidents", incidents, methods=["GET"]),
        Route("/api/v1/transitions", transitions, methods=["GET"]),
    ]


__all__ = ["history_routes"]
