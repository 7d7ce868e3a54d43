"""The OpenAPI 3.1 description of every HTTP route of the mounted API (``GET /openapi.json``).

Written out explicitly rather than generated from docstrings: the parameters' bounds and
the error answers are the contract, and schemathesis checks the running app against it
(tests/integration/test_schemathesis.py); tests/integration/test_api.py checks that its
paths are exactly the app's routes. ``/api/v1/ws`` is a WebSocket (OpenAPI has no words
for it): docs/websocket-api.md describes it.

Schemas name the fields clients rely on and allow more (``additionalProperties`` is left
open), so adding a field is never a breaking change.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from backend_core.http_input import MAX_SYMBOLS_PER_REQUEST, NAME_PATTERN

JSON: Final = "application/json"
HEALTH_JSON: Final = "application/health+json"
PROMETHEUS_TEXT: Final = "text/plain"
ATOM: Final = "application/atom+xml"
SVG: Final = "image/svg+xml"

Schema = dict[str, Any]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _object(required: dict[str, Schema], optional: dict[str, Schema] | None = None) -> Schema:
    return {"type": "object", "required": list(required), "properties": {**required, **(optional or {})}}


def _nullable(schema: Schema) -> Schema:
    return {"anyOf": [schema, {"type": "null"}]}


STRING: Final[Schema] = {"type": "string"}
INTEGER: Final[Schema] = {"type": "integer"}
NUMBER: Final[Schema] = {"type": "number"}
BOOLEAN: Final[Schema] = {"type": "boolean"}
OBJECT: Final[Schema] = {"type": "object"}
STATUS: Final[Schema] = {"type": "string", "enum": ["pass", "warn", "fail"]}


def _json(description: str, schema: Schema, media_type: str = JSON, headers: dict[str, Any] | None = None) -> Schema:
    response: Schema = {"description": description, "content": {media_type: {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


RETRY_AFTER: Final = {"Retry-After": {"description": "whole seconds to wait", "schema": INTEGER}}
WWW_AUTHENTICATE: Final = {"WWW-Authenticate": {"description": "Bearer challenge", "schema": STRING}}


def _error(description: str, headers: dict[str, Any] | None = None) -> Schema:
    return _json(description, _ref("Error"), headers=headers)


RATE_LIMITED: Final = _error(
    "too many requests from this client (API_RATE_LIMIT_PER_S, API_RATE_LIMIT_BURST)", RETRY_AFTER
)
BAD_PARAMETER: Final = _error("a parameter is malformed or out of range; the message names it")
CIRCUIT_OPEN: Final = _error(
    "the database failed repeatedly and this route's breaker is open, or the database cannot answer now",
    RETRY_AFTER,
)
ADMIN_ERRORS: Final = {
    "401": _error("no or a wrong Bearer token", WWW_AUTHENTICATE),
    "403": _error("ADMIN_TOKEN is not set: admin actions are disabled"),
    "429": RATE_LIMITED,
}
BEARER: Final[list[dict[str, list[str]]]] = [{"adminToken": []}]


def _query(name: str, description: str, schema: Schema) -> Schema:
    return {"name": name, "in": "query", "required": False, "description": description, "schema": schema}


def _digits(low: int, high: int, default: int) -> Schema:
    # Sent as text: the server reads ASCII digits only, so the contract says so too.
    return {"type": "integer", "minimum": low, "maximum": high, "default": default}


def _bounded(name: str, bounds: Mapping[str, tuple[int, int]]) -> Schema:
    default, most = bounds[name]
    return _digits(1, most, default)


def _name_schema() -> Schema:
    return {"type": "string", "pattern": f"^{NAME_PATTERN.pattern}$"}


def _schemas(symbols: tuple[str, ...]) -> dict[str, Schema]:
    symbol = {"type": "string", "enum": list(symbols)}
    tick_view = _object(
        {
            "symbol": STRING,
            "epoch": INTEGER,
            "quote": NUMBER,
            "pip_size": INTEGER,
            "age_s": NUMBER,
            "stale": BOOLEAN,
            "backfill": BOOLEAN,
        }
    )
    tick = _object(
        {"symbol": STRING, "epoch": INTEGER, "quote": NUMBER, "pip_size": INTEGER, "backfill": BOOLEAN},
        {"bid": _nullable(NUMBER), "ask": _nullable(NUMBER)},
    )
    upstream = _object(
        {"state": STRING, "breaker_state": STRING, "retry_after_s": _nullable(NUMBER)},
        {
            "since": _nullable(STRING),
            "simulated": BOOLEAN,
            "attempt": INTEGER,
            "max_attempts": INTEGER,
            "last_error": _nullable(_object({"code": STRING, "message": STRING, "at": _nullable(STRING)})),
        },
    )
    breaker = _object({"name": STRING, "state": STRING})
    return {
        "Error": _object(
            {"error": STRING, "message": STRING},
            {"retry_after_s": NUMBER, "breaker": STRING},
        ),
        "HealthSummary": _object(
            {"status": STATUS, "components": {"type": "object", "additionalProperties": STATUS}},
            {"time": STRING},
        ),
        "HealthDetailed": _object(
            {
                "status": STATUS,
                "serviceId": STRING,
                "checks": {
                    "type": "object",
                    "additionalProperties": {
                        "type": "array",
                        "items": _object({"componentType": STRING, "status": STATUS, "time": STRING}),
                    },
                },
            },
            {"version": STRING, "releaseId": STRING, "description": STRING},
        ),
        "Upstream": upstream,
        "RelayCounts": _object(
            {
                "enabled": BOOLEAN,
                "accepting": BOOLEAN,
                "max_connections": INTEGER,
                "active": INTEGER,
                "totals": OBJECT,
            }
        ),
        "RelayConnections": _object(
            {
                "active": INTEGER,
                "connections": {"type": "array", "items": _object({"id": STRING, "peer": STRING})},
                "connections_truncated": BOOLEAN,
            }
        ),
        "Breaker": breaker,
        "Breakers": _object({"enabled": BOOLEAN, "breakers": {"type": "array", "items": _ref("Breaker")}}),
        "Reset": _object({"reset": STRING, "from": STRING, "breaker": _ref("Breaker")}),
        "Ready": _object({"status": STATUS, "ready": BOOLEAN}, {"output": STRING}),
        "Status": _object(
            {
                "service": _object({"version": STRING, "ready": BOOLEAN}),
                "upstream": upstream,
                "ticks": {"type": "array", "items": tick_view},
                "circuit_breakers": {"type": "array", "items": breaker},
                "relay": OBJECT,
            },
            {"frontend": OBJECT},
        ),
        "Retry": _object(
            {
                "status": {
                    "type": "string",
                    "enum": ["started", "in_progress", "already_connected", "too_soon", "stopped"],
                },
                "message": STRING,
                "retry_after_s": NUMBER,
            }
        ),
        "LatestTicks": _object(
            {
                "upstream_state": STRING,
                "ticks": {"type": "object", "additionalProperties": _nullable(tick_view)},
            }
        ),
        "RecentTicks": _object(
            {
                "symbol": symbol,
                "upstream_state": STRING,
                "stale": BOOLEAN,
                "age_s": _nullable(NUMBER),
                "ticks": {"type": "array", "items": tick},
            }
        ),
        "History": _object(
            {
                "component": STRING,
                "days": INTEGER,
                "uptime_pct": {"type": "object", "additionalProperties": _nullable(NUMBER)},
                "bars": {
                    "type": "array",
                    "items": _object({"date": STRING, "uptime_pct": _nullable(NUMBER), "worst_status": STRING}),
                },
            }
        ),
        "Incidents": _object(
            {
                "incidents": {"type": "array", "items": OBJECT},
                "count": INTEGER,
                "limit": INTEGER,
                "component": _nullable(STRING),
            }
        ),
        "Transitions": _object(
            {
                "transitions": {"type": "array", "items": OBJECT},
                "count": INTEGER,
                "limit": INTEGER,
                "name": _nullable(STRING),
            }
        ),
    }


def _get(summary: str, responses: dict[str, Schema], **extra: Any) -> Schema:
    return {"get": {"summary": summary, "responses": responses, **extra}}


def _paths(
    symbols: tuple[str, ...], max_ticks: int, max_epoch: int, bounds: Mapping[str, tuple[int, int]]
) -> dict[str, Schema]:
    health = {"200": _json("pass or warn", _ref("HealthSummary")), "503": _json("fail", _ref("HealthSummary"))}
    detailed = {
        "200": _json("pass or warn", _ref("HealthDetailed"), HEALTH_JSON),
        "503": _json("fail", _ref("HealthDetailed"), HEALTH_JSON),
    }
    symbols_param = _query(
        "symbols",
        f"comma-separated symbols streamed here (1 to {MAX_SYMBOLS_PER_REQUEST}); default: all",
        {"type": "string", "pattern": f"^({'|'.join(symbols)})(,({'|'.join(symbols)}))*$"},
    )
    history_ok = {"400": BAD_PARAMETER, "429": RATE_LIMITED, "503": CIRCUIT_OPEN}
    component = _query("component", "upstream or breaker:<name>", _name_schema())
    return {
        "/health": _get("summary of every check", health),
        "/health/detailed": _get("every check, IETF health+json", detailed),
        "/health/websocket": _get(
            "upstream link detail and relay counts (no client addresses)",
            {"200": _json("ok", _object({"upstream": _ref("Upstream"), "relay": _ref("RelayCounts")}))},
        ),
        "/health/websocket/connections": _get(
            "one entry per relay client, addresses included (admin only)",
            {"200": _json("ok", _ref("RelayConnections")), **ADMIN_ERRORS},
            security=BEARER,
        ),
        "/health/circuit-breakers": _get("every circuit breaker", {"200": _json("ok", _ref("Breakers"))}),
        "/health/circuit-breakers/{name}/reset": {
            "post": {
                "summary": "close one circuit breaker (admin only)",
                "security": BEARER,
                "parameters": [
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "description": "a breaker name as /health/circuit-breakers lists it",
                        "schema": {"type": "string"},
                    }
                ],
                "responses": {
                    "200": _json("reset", _ref("Reset")),
                    "400": _error("not a breaker name"),
                    "404": _error("no breaker has this name"),
                    **ADMIN_ERRORS,
                },
            }
        },
        "/livez": _get("liveness", {"200": _json("alive", _object({"status": STATUS}))}),
        "/readyz": _get(
            "readiness", {"200": _json("ready", _ref("Ready")), "503": _json("starting or stopping", _ref("Ready"))}
        ),
        "/metrics": _get("Prometheus text exposition format", {"200": _json("metrics", STRING, PROMETHEUS_TEXT)}),
        "/openapi.json": _get("this document", {"200": _json("OpenAPI 3.1", OBJECT), "429": RATE_LIMITED}),
        "/api/v1/status": _get(
            "everything the status page shows", {"200": _json("ok", _ref("Status")), "429": RATE_LIMITED}
        ),
        "/api/v1/retry": {
            "post": {
                "summary": "retry the upstream link now (coalesced)",
                "responses": {
                    "200": _json("nothing to do: connected or a retry is in progress", _ref("Retry")),
                    "202": _json("a retry started", _ref("Retry")),
                    "429": _json(
                        "too soon after the last retry, or rate limited",
                        {"anyOf": [_ref("Retry"), _ref("Error")]},
                        headers=RETRY_AFTER,
                    ),
                    "503": _json("the service is not running", _ref("Retry")),
                },
            }
        },
        "/api/v1/ticks/latest": _get(
            "the latest tick of each symbol",
            {"200": _json("ok", _ref("LatestTicks")), "400": BAD_PARAMETER, "429": RATE_LIMITED},
            parameters=[symbols_param],
        ),
        "/api/v1/ticks/{symbol}": _get(
            "recent ticks of one symbol from the ring buffer (the REST fallback)",
            {
                "200": _json("ok", _ref("RecentTicks")),
                "400": BAD_PARAMETER,
                "404": _error("this symbol is not streamed here"),
                "429": RATE_LIMITED,
            },
            parameters=[
                {
                    "name": "symbol",
                    "in": "path",
                    "required": True,
                    "description": f"one of {', '.join(symbols)}",
                    "schema": {"type": "string"},
                },
                _query("since", "only ticks after this Unix epoch (seconds)", _digits(0, max_epoch, 0)),
                _query("limit", "at most this many ticks, the newest", _digits(1, max_ticks, max_ticks)),
            ],
        ),
        **_statuspage_paths(),
        "/api/v1/history": _get(
            "per-day uptime bars and 24h/7d/30d/90d uptime",
            {"200": _json("ok", _ref("History")), **history_ok},
            parameters=[component, _query("days", "days of bars", _bounded("days", bounds))],
        ),
        "/api/v1/incidents": _get(
            "newest incidents first",
            {"200": _json("ok", _ref("Incidents")), **history_ok},
            parameters=[_query("limit", "at most this many", _bounded("incidents", bounds)), component],
        ),
        "/api/v1/transitions": _get(
            "newest breaker transitions first",
            {"200": _json("ok", _ref("Transitions")), **history_ok},
            parameters=[
                _query("limit", "at most this many", _bounded("transitions", bounds)),
                _query("name", "a breaker name", _name_schema()),
            ],
        ),
    }


def _statuspage_paths() -> dict[str, Schema]:
    """The Statuspage-compatible documents, the feed and the badge (docs/statuspage-api.md)."""
    page = _object({"id": STRING, "name": STRING})
    status = _object({"indicator": STRING, "description": STRING})
    incidents = {"type": "array", "items": _object({"id": STRING, "status": STRING})}
    components = {"type": "array", "items": _object({"id": STRING, "name": STRING, "status": STRING})}

    def document(summary: str, schema: Schema) -> Schema:
        return _get(summary, {"200": _json("ok", schema), "429": RATE_LIMITED})

    return {
        "/api/v2/status.json": document("page and overall indicator", _object({"page": page, "status": status})),
        "/api/v2/summary.json": document(
            "page, components, unresolved incidents, indicator",
            _object({"page": page, "components": components, "incidents": incidents, "status": status}),
        ),
        "/api/v2/components.json": document("page and components", _object({"page": page, "components": components})),
        "/api/v2/incidents.json": document("the latest incidents", _object({"page": page, "incidents": incidents})),
        "/api/v2/incidents/unresolved.json": document(
            "the incidents still going on", _object({"page": page, "incidents": incidents})
        ),
        "/history.atom": _get("the incidents as Atom 1.0", {"200": _json("feed", STRING, ATOM), "429": RATE_LIMITED}),
        "/badge.svg": _get("a shields-style status badge", {"200": _json("badge", STRING, SVG), "429": RATE_LIMITED}),
    }


def openapi_document(
    symbols: tuple[str, ...], version: str, *, max_ticks: int, max_epoch: int, bounds: Mapping[str, tuple[int, int]]
) -> dict[str, Any]:
    """The whole document; ``bounds`` holds the history API's ``(default, most)`` for ``days``,
    ``incidents`` and ``transitions``."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "deriv-status",
            "version": version,
            "description": "Live Deriv market-data feed: health, status, REST fallback and history. "
            "The tick stream is the WebSocket /api/v1/ws (docs/websocket-api.md). Every error is JSON: "
            '{"error": <code>, "message": <sentence>}.',
        },
        "paths": _paths(symbols, max_ticks, max_epoch, bounds),
        "components": {
            "schemas": _schemas(symbols),
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer", "description": "ADMIN_TOKEN"}},
        },
    }


__all__ = ["openapi_document"]
