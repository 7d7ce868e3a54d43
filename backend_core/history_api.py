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

import re
from typing import Final

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
from backend_core.incidents import COMPONENT_CHARS, UPSTREAM

# Component and breaker names: what breakers.py can produce ("websocket", "api:<route
# template>", "api:*") with the "breaker:" prefix. Anything else cannot match a row.
_NAME: Final = re.compile(r"^[A-Za-z0-9_:./{}*\-]+$")
# ASCII digits only (str.isdigit accepts '²'), and short enough that int() stays cheap.
_DIGITS: Final = re.compile(r"^[0-9]{1,6}$")
# How long a client should wait before asking again when the database is down.
RETRY_AFTER_S: Final = 10
DEFAULT_DAYS: Final = 90
DEFAULT_INCIDENTS: Final = 50
DEFAULT_TRANSITIONS: Final = 100
# A bad value is echoed back (as a repr) at most this long.
_ECHO_CHARS: Final = 40


class _BadParameter(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def _echo(value: str) -> str:
    return repr(value if len(value) <= _ECHO_CHARS else value[:_ECHO_CHARS] + "…")


def _int_param(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    text = raw.strip()
    if not _DIGITS.match(text) or not low <= int(text) <= high:
        raise _BadParameter(f"{name} must be a whole number from {low} to {high}, not {_echo(raw)}.")
    return int(text)


def _name_param(request: Request, name: str, default: str | None) -> str | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if len(raw) > COMPONENT_CHARS or not _NAME.match(raw):
        raise _BadParameter(
            f"{name} must be a component name such as 'upstream' or 'breaker:websocket' "
            f"(letters, digits and _:./{{}}*-, at most {COMPONENT_CHARS}), not {_echo(raw)}."
        )
    return raw


def _unavailable(exc: StoreUnavailable) -> JSONResponse:
    return _error(503, "history_unavailable", str(exc), headers={"Retry-After": str(RETRY_AFTER_S)})


def _json(body: object) -> JSONResponse:
    return JSONResponse(body, headers={"cache-control": "no-store"})


def history_routes(store: HistoryStore) -> list[Route]:
    """The three routes, for ``create_api`` to add to its route list."""

    async def history(request: Request) -> Response:
        try:
            component = _name_param(request, "component", UPSTREAM) or UPSTREAM
            days = _int_param(request, "days", DEFAULT_DAYS, 1, MAX_HISTORY_DAYS)
        except _BadParameter as exc:
            return _error(400, "invalid_parameter", exc.message)
        try:
            return _json(await store.history(component, days))
        except StoreUnavailable as exc:
            return _unavailable(exc)

    async def incidents(request: Request) -> Response:
        try:
            limit = _int_param(request, "limit", DEFAULT_INCIDENTS, 1, MAX_INCIDENTS_LIMIT)
            component = _name_param(request, "component", None)
        except _BadParameter as exc:
            return _error(400, "invalid_parameter", exc.message)
        try:
            rows = await store.incidents(limit, component)
        except StoreUnavailable as exc:
            return _unavailable(exc)
        return _json({"incidents": rows, "count": len(rows), "limit": limit, "component": component})

    async def transitions(request: Request) -> Response:
        try:
            limit = _int_param(request, "limit", DEFAULT_TRANSITIONS, 1, MAX_TRANSITIONS_LIMIT)
            name = _name_param(request, "name", None)
        except _BadParameter as exc:
            return _error(400, "invalid_parameter", exc.message)
        try:
            rows = await store.transitions(limit, name)
        except StoreUnavailable as exc:
            return _unavailable(exc)
        return _json({"transitions": rows, "count": len(rows), "limit": limit, "name": name})

    return [
        Route("/api/v1/history", history, methods=["GET"]),
        Route("/api/v1/incidents", incidents, methods=["GET"]),
        Route("/api/v1/transitions", transitions, methods=["GET"]),
    ]


__all__ = ["history_routes"]
