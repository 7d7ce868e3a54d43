"""Routes of the Statuspage-compatible API, the Atom feed and the badge (thin I/O over :mod:`backend_core.statuspage`).

=====================================================  ==========================================
``GET /api/v2/status.json``                            page and overall indicator
``GET /api/v2/summary.json``                           page, components, unresolved incidents,
                                                       scheduled maintenances, indicator
``GET /api/v2/components.json``                        page and components
``GET /api/v2/incidents.json``                         the 50 latest incidents
``GET /api/v2/incidents/unresolved.json``              the incidents still going on
``GET /history.atom``                                  the incidents as Atom 1.0
``GET /badge.svg``                                     a shields-style status badge
=====================================================  ==========================================

Handlers read the health report (shared with /health through the Runtime's short cache)
and the history; they never await the upstream (DESIGN.md rule 4). When the history
database cannot answer, the documents still answer from what the process knows (its open
incidents), and the "History database" component says the database is down. docs/statuspage-api.md
explains the mapping.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from backend_core import statuspage as sp
from backend_core.events import LinkState
from backend_core.health import HealthReport
from backend_core.history.queries import StoreUnavailable
from backend_core.runtime import Runtime

# The documents reuse a health report at most this old: any number of pollers cost one run a second.
HEALTH_MAX_AGE_S: Final = 1.0
# Seconds a badge or feed may be cached (GitHub's image proxy and feed readers honour it):
# short enough that a README shows an outage within half a minute.
BADGE_MAX_AGE_S: Final = 30
FEED_MAX_AGE_S: Final = 30
# incidents.json and the feed wait this long for the history (its own timeout is 10 s), then
# answer with the open incidents only: a poller or a feed reader never hangs on a slow database.
HISTORY_WAIT_S: Final = 2.0
ATOM_TYPE: Final = "application/atom+xml"
SVG_TYPE: Final = "image/svg+xml"
# Pollers revalidate every time (the answer changes within a second). Cross-origin reads
# follow the host's CORS policy (Reflex adds its CORS middleware to the mounted API).
_JSON_HEADERS: Final = {"cache-control": "no-cache"}


# ---------------------------------------------------------------------------- the one incident adapter


async def incident_records(runtime: Runtime, limit: int, *, history: bool) -> list[sp.IncidentRecord]:
    """Every read of incident data goes through here: the open incidents in memory, and the history's rows.

    The tracker's open incidents are the ongoing ones (from their first second, whatever the
    database does). With ``history`` the newest ``limit`` incidents of the database are added,
    waiting at most :data:`HISTORY_WAIT_S` for them: without an answer, only the open ones
    are listed. Newest first.
    """
    rows: list[sp.IncidentRecord] = []
    try:
        stored = []
        if history:
            async with runtime.clock.timeout(HISTORY_WAIT_S):
                stored = await runtime.store.incidents(limit)
        for row in stored:
            ended = row["ended_at"]
            rows.append(
                sp.IncidentRecord(
                    key=str(row["id"]),
                    component=str(row["component"]),
                    started_at=_wall(row["started_at"]),
                    ended_at=None if ended is None else _wall(ended),
                    cause=str(row["cause"]),
                    error_code=row["error_code"],
                    message=str(row["message"] or ""),
                    recovery=None if row["recovery"] is None else str(row["recovery"]),
                    planned=bool(row["planned"]),
                    attempts=row.get("attempts"),
                )
            )
    except (StoreUnavailable, TimeoutError):
        pass  # the "History database" component tells it; the open incidents still show
    known = {r.key for r in rows}
    for opened in runtime.incidents.open_incidents:
        if opened.key not in known:
            rows.append(
                sp.IncidentRecord(
                    key=opened.key,
                    component=opened.component,
                    started_at=opened.started_at,
                    ended_at=None,
                    cause=str(opened.cause),
                    error_code=opened.error_code,
                    message=opened.message,
                    recovery=None,
                    planned=opened.planned,
                )
            )
    rows.sort(key=lambda r: r.started_at, reverse=True)
    return rows[:limit]


def _wall(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


# ---------------------------------------------------------------------------- the observation


def observe(runtime: Runtime, report: HealthReport) -> sp.Observation:
    """The plain inputs of the component mapping, from the health report and the snapshots."""
    checks = {r.key: r for r in report.results}
    snap = runtime.upstream_snapshot()
    state = "stopped" if snap is None else snap.state.value
    upstream = checks.get("upstream:state")
    loop = checks.get("eventLoop:lag")
    database = checks.get("database:reachable")
    reachable = None if database is None or database.observed_value is None else bool(database.observed_value)
    return sp.Observation(
        upstream_state=state,
        upstream_check="warn" if upstream is None else upstream.status,
        upstream_error=snap is not None and snap.last_error is not None and snap.state != LinkState.CONNECTED,
        site_updating=snap is not None and snap.site_status == "updating",
        planned_drop=snap is not None and snap.planned_reconnect,
        relay_enabled=runtime.settings.WEBSOCKET_ENABLED,
        relay_active=int(runtime.relay.snapshot()["active"]),
        relay_max=runtime.settings.WEBSOCKET_MAX_CONNECTIONS,
        api_breaker_states=tuple(b.state for b in runtime.breakers.snapshots() if b.name.startswith("api:")),
        loop_lag_check="pass" if loop is None else loop.status,
        database_check="warn" if database is None else database.status,
        database_reachable=reachable,
        database_unusable=runtime.store.unusable is not None,
    )


# ---------------------------------------------------------------------------- routes


def routes(runtime: Runtime) -> list[Route]:
    """The seven routes, for ``create_api`` to add to its route list (GET only)."""
    changes: sp.ChangeLog | None = None

    async def page_state(request: Request, *, incidents: bool) -> sp.PageState:
        nonlocal changes
        now = runtime.clock.wall()
        started = runtime.started_at if runtime.started_at is not None else now
        if changes is None:
            changes = sp.ChangeLog(started)
        report = await runtime.health_report(max_age_s=HEALTH_MAX_AGE_S)
        statuses = sp.component_statuses(observe(runtime, report))
        updated = {key: changes.since(key, status, now) for key, status in statuses.items()}
        # Every document needs the unresolved incidents (their impact counts in the indicator);
        # only incidents.json and the feed read the history.
        records = await incident_records(runtime, sp.INCIDENTS_LIMIT, history=incidents)
        return sp.PageState(str(request.base_url).rstrip("/"), started, statuses, updated, records)

    def json(body: object) -> Response:
        return JSONResponse(body, headers=_JSON_HEADERS)

    async def status(request: Request) -> Response:
        return json(sp.status_document(await page_state(request, incidents=False)))

    async def summary(request: Request) -> Response:
        return json(sp.summary_document(await page_state(request, incidents=False)))

    async def components(request: Request) -> Response:
        return json(sp.components_document(await page_state(request, incidents=False)))

    async def incidents(request: Request) -> Response:
        return json(sp.incidents_document(await page_state(request, incidents=True)))

    async def unresolved(request: Request) -> Response:
        return json(sp.incidents_document(await page_state(request, incidents=False), unresolved_only=True))

    async def feed(request: Request) -> Response:
        state = await page_state(request, incidents=True)
        body = sp.atom_feed(state, feed_url=str(request.url.replace(query="")), now=runtime.clock.wall())
        return Response(body, media_type=ATOM_TYPE, headers={"cache-control": f"public, max-age={FEED_MAX_AGE_S}"})

    async def badge(request: Request) -> Response:
        message, colour = sp.badge(sp.indicator_of(await page_state(request, incidents=False)))
        return Response(
            sp.badge_svg(sp.BADGE_LABEL, message, colour),
            media_type=SVG_TYPE,
            headers={"cache-control": f"public, max-age={BADGE_MAX_AGE_S}"},
        )

    return [
        Route("/api/v2/status.json", status, methods=["GET"]),
        Route("/api/v2/summary.json", summary, methods=["GET"]),
        Route("/api/v2/components.json", components, methods=["GET"]),
        Route("/api/v2/incidents.json", incidents, methods=["GET"]),
        Route("/api/v2/incidents/unresolved.json", unresolved, methods=["GET"]),
        Route("/history.atom", feed, methods=["GET"]),
        Route("/badge.svg", badge, methods=["GET"]),
    ]


__all__ = ["incident_records", "observe", "routes"]
