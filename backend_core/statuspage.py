"""The Statuspage-compatible documents, the Atom feed of incidents and the status badge (pure).

Atlassian Statuspage's public v2 API (``/api/v2/summary.json`` and friends) is what status
aggregators, chat integrations and scripts already read; this module builds the same
documents, with Statuspage's field names and value sets, from plain inputs:

- an :class:`Observation` of the service (the shell, :mod:`backend_core.statuspage_api`,
  reads it from the health report and the snapshots), which decides the four components'
  statuses (:func:`component_statuses`);
- :class:`IncidentRecord` values (the history's incidents, in plain fields).

Nothing here reads a clock, a socket or the database: every function takes the time and
its inputs as arguments, so the mapping is unit-tested on fixed inputs. docs/statuspage-api.md
documents the mapping for people.
"""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from backend_core.clock import iso_utc
from backend_core.incident_words import CAUSE_TEXT, recovery_text
from backend_core.incidents import Cause, Recovery

ComponentStatus = Literal["operational", "degraded_performance", "partial_outage", "major_outage", "under_maintenance"]
Indicator = Literal["none", "minor", "major", "critical", "maintenance"]
IncidentStatus = Literal["investigating", "identified", "monitoring", "resolved", "postmortem"]

PAGE_ID: Final = "deriv-status"
PAGE_NAME: Final = "Market feed status"
TIME_ZONE: Final = "Etc/UTC"
# Statuspage's incidents.json lists "the 50 most recent incidents".
INCIDENTS_LIMIT: Final = 50


@dataclass(frozen=True, slots=True)
class Component:
    id: str
    name: str
    description: str
    position: int


MARKET_FEED: Final = Component(
    "market-feed", "Market feed link", "The upstream link to the Deriv API that every tick comes through.", 1
)
STREAMING_API: Final = Component(
    "streaming-api", "Streaming API", "The WebSocket relay at /api/v1/ws that streams ticks to clients.", 2
)
REST_API: Final = Component(
    "rest-api", "REST API", "The HTTP API: status, latest ticks, history and the REST fallback.", 3
)
HISTORY_DATABASE: Final = Component(
    "history-database", "History database", "Where incidents, breaker transitions and uptime are kept.", 4
)
COMPONENTS: Final = (MARKET_FEED, STREAMING_API, REST_API, HISTORY_DATABASE)

# Worse is higher. Maintenance loses to any real trouble.
INDICATOR_RANK: Final[Mapping[str, int]] = {"none": 0, "maintenance": 1, "minor": 2, "major": 3, "critical": 4}
INDICATOR_OF_COMPONENT: Final[Mapping[str, Indicator]] = {
    "operational": "none",
    "under_maintenance": "maintenance",
    "degraded_performance": "minor",
    "partial_outage": "major",
    "major_outage": "critical",
}
# The descriptions Statuspage itself shows for each indicator.
DESCRIPTIONS: Final[Mapping[str, str]] = {
    "none": "All Systems Operational",
    "minor": "Minor Service Outage",
    "major": "Partial System Outage",
    "critical": "Major System Outage",
    "maintenance": "Service Under Maintenance",
}


# ---------------------------------------------------------------------------- components


@dataclass(frozen=True, slots=True)
class Observation:
    """What the service looks like right now, in plain values.

    ``*_check`` are health statuses (``pass``, ``warn``, ``fail``) of the matching
    :mod:`backend_core.health` checks, so the Statuspage view tells what /health tells.
    """

    upstream_state: str  # a LinkState value, or "stopped"
    upstream_check: str  # warn while connected: silent past the ping deadline
    upstream_error: bool  # the link has failed since it last connected
    site_updating: bool  # Deriv's website_status says "updating" (a deploy under way)
    planned_drop: bool  # the upstream announced the drop the link is recovering from
    relay_enabled: bool
    relay_active: int
    relay_max: int
    api_breaker_states: tuple[str, ...]  # every "api:<route>" breaker's state
    loop_lag_check: str
    database_check: str
    database_reachable: bool | None  # None: not reached yet
    database_unusable: bool


def feed_status(obs: Observation) -> ComponentStatus:
    state = obs.upstream_state
    if obs.site_updating or (obs.planned_drop and state != "connected"):
        return "under_maintenance"
    if state == "connected":
        return "operational" if obs.upstream_check == "pass" else "degraded_performance"
    if state == "connecting" and not obs.upstream_error:
        return "degraded_performance"  # the first connect of a start: no data yet, nothing failed
    return "major_outage"


def streaming_status(obs: Observation) -> ComponentStatus | None:
    """``None``: the relay is switched off (WEBSOCKET_ENABLED=false), so the page does not list it."""
    if not obs.relay_enabled:
        return None
    if obs.relay_active >= obs.relay_max:
        return "partial_outage"  # new clients are refused with close 1013
    if obs.relay_active >= 0.9 * obs.relay_max:
        return "degraded_performance"
    return "operational"


def rest_status(obs: Observation) -> ComponentStatus:
    if obs.loop_lag_check == "fail":
        return "major_outage"
    if "open" in obs.api_breaker_states:
        return "partial_outage"  # those routes answer 503 until their breaker recovers
    if "half_open" in obs.api_breaker_states or obs.loop_lag_check == "warn":
        return "degraded_performance"
    return "operational"


def database_status(obs: Observation) -> ComponentStatus:
    if obs.database_unusable or obs.database_reachable is False:
        return "major_outage"
    if obs.database_check != "pass":
        return "degraded_performance"  # not reached yet, or the write queue is nearly full
    return "operational"


def component_statuses(obs: Observation) -> dict[str, ComponentStatus]:
    """Component id to status; a component that is switched off is absent."""
    statuses: dict[str, ComponentStatus | None] = {
        MARKET_FEED.id: feed_status(obs),
        STREAMING_API.id: streaming_status(obs),
        REST_API.id: rest_status(obs),
        HISTORY_DATABASE.id: database_status(obs),
    }
    return {key: status for key, status in statuses.items() if status is not None}


class ChangeLog:
    """When each component's status last changed, as this process saw it (4 entries at most)."""

    def __init__(self, started_at: float) -> None:
        self._started_at = started_at
        self._seen: dict[str, tuple[str, float]] = {}

    def since(self, component_id: str, status: str, now: float) -> float:
        seen = self._seen.get(component_id)
        if seen is not None and seen[0] == status:
            return seen[1]
        at = self._started_at if seen is None and status == "operational" else now
        self._seen[component_id] = (status, at)
        return at


def component_json(component: Component, status: str, *, created_at: float, updated_at: float) -> dict[str, Any]:
    return {
        "id": component.id,
        "name": component.name,
        "status": status,
        "created_at": iso_utc(created_at),
        "updated_at": iso_utc(updated_at),
        "position": component.position,
        "description": component.description,
        "showcase": True,
        "start_date": None,
        "group_id": None,
        "page_id": PAGE_ID,
        "group": False,
        "only_show_if_degraded": False,
    }


# ---------------------------------------------------------------------------- incidents


@dataclass(frozen=True, slots=True)
class IncidentRecord:
    """One incident of the history, in plain fields (``cause``/``recovery``: the
    :class:`~backend_core.incidents.Cause` / :class:`~backend_core.incidents.Recovery` codes)."""

    key: str
    component: str  # "upstream" or "breaker:<name>"
    started_at: float
    ended_at: float | None
    cause: str
    error_code: str | None
    message: str
    recovery: str | None
    planned: bool
    attempts: int | None = None

    @property
    def resolved(self) -> bool:
        return self.ended_at is not None


def cause_words(code: str) -> str:
    """A cause code in the words the alerts use too; a code this version does not know, as is."""
    try:
        return CAUSE_TEXT[Cause(code)]
    except (ValueError, KeyError):
        return code.replace("_", " ").strip()


def recovery_words(code: str, attempts: int | None) -> str:
    try:
        return recovery_text(Recovery(code), attempts)
    except ValueError:
        return code.replace("_", " ").strip()


def incident_component(record: IncidentRecord) -> Component:
    if record.component == "upstream" or record.component == "breaker:websocket":
        return MARKET_FEED
    return REST_API  # "breaker:api:<route>"


def incident_impact(record: IncidentRecord) -> Indicator:
    if record.planned:
        return "maintenance"
    if record.component == "upstream":
        return "critical"  # no market data at all: the product's core is down
    if incident_component(record) is MARKET_FEED:
        return "major"  # the websocket breaker: it comes with an upstream incident
    return "minor"  # one REST route refusing calls


def _outage_status(record: IncidentRecord) -> ComponentStatus:
    if record.planned:
        return "under_maintenance"
    if record.component == "upstream":
        return "major_outage"
    return "partial_outage"


def incident_name(record: IncidentRecord) -> str:
    component = incident_component(record)
    if record.component.startswith("breaker:"):
        return f"{component.name}: {cause_words(record.cause)} ({record.component.removeprefix('breaker:')})"
    return f"{component.name}: {cause_words(record.cause)}"


def _first_status(record: IncidentRecord) -> IncidentStatus:
    # An error code or an announcement says what happened; without either it is still being looked into.
    return "identified" if record.planned or record.error_code else "investigating"


def incident_status(record: IncidentRecord) -> IncidentStatus:
    return "resolved" if record.resolved else _first_status(record)


def incident_json(record: IncidentRecord, *, page_url: str) -> dict[str, Any]:
    component = incident_component(record)
    outage = _outage_status(record)
    started = iso_utc(record.started_at)
    ended = iso_utc(record.ended_at)
    body = record.message or "The component is not working."
    if record.error_code:
        body = f"{body} Error code: {record.error_code}."
    updates = [
        _update(
            record,
            1,
            _first_status(record),
            body,
            started,
            {"code": component.id, "name": component.name, "old_status": "operational", "new_status": outage},
        )
    ]
    if record.resolved:
        how = recovery_words(record.recovery, record.attempts) if record.recovery else "recovered"
        updates.insert(
            0,
            _update(
                record,
                2,
                "resolved",
                f"Resolved: {how}.",
                ended,
                {"code": component.id, "name": component.name, "old_status": outage, "new_status": "operational"},
            ),
        )
    return {
        "id": record.key,
        "name": incident_name(record),
        "status": incident_status(record),
        "impact": incident_impact(record),
        "created_at": started,
        "updated_at": ended or started,
        "monitoring_at": None,
        "resolved_at": ended,
        "started_at": started,
        "shortlink": f"{page_url}/#incidents",
        "page_id": PAGE_ID,
        "incident_updates": updates,
        "components": [
            component_json(
                component,
                "operational" if record.resolved else outage,
                created_at=record.started_at,
                updated_at=record.ended_at or record.started_at,
            )
        ],
    }


def _update(
    record: IncidentRecord, number: int, status: str, body: str, at: str | None, affected: dict[str, str]
) -> dict[str, Any]:
    return {
        "id": f"{record.key}-{number}",
        "status": status,
        "body": body,
        "incident_id": record.key,
        "created_at": at,
        "updated_at": at,
        "display_at": at,
        "affected_components": [affected],
        "deliver_notifications": True,
        "custom_tweet": None,
        "tweet_id": None,
    }


# ---------------------------------------------------------------------------- the documents


@dataclass(frozen=True, slots=True)
class PageState:
    """Everything the documents are made of: statuses with their times, and the incidents (newest first)."""

    page_url: str
    started_at: float
    statuses: Mapping[str, str]
    updated_at: Mapping[str, float]
    incidents: Sequence[IncidentRecord]


def overall(statuses: Iterable[str], unresolved: Iterable[IncidentRecord]) -> Indicator:
    """The worst of the components' statuses and the unresolved incidents' impacts."""
    worst: Indicator = "none"
    candidates: list[Indicator] = [INDICATOR_OF_COMPONENT.get(s, "critical") for s in statuses]
    candidates += [incident_impact(r) for r in unresolved]
    for indicator in candidates:
        if INDICATOR_RANK[indicator] > INDICATOR_RANK[worst]:
            worst = indicator
    return worst


def _unresolved(state: PageState) -> list[IncidentRecord]:
    return [r for r in state.incidents if not r.resolved]


def indicator_of(state: PageState) -> Indicator:
    return overall(state.statuses.values(), _unresolved(state))


def page_json(state: PageState) -> dict[str, Any]:
    times = [state.started_at, *state.updated_at.values()]
    times += [r.ended_at or r.started_at for r in state.incidents]
    return {
        "id": PAGE_ID,
        "name": PAGE_NAME,
        "url": state.page_url,
        "time_zone": TIME_ZONE,
        "updated_at": iso_utc(max(times)),
    }


def status_json(state: PageState) -> dict[str, Any]:
    indicator = indicator_of(state)
    return {"indicator": indicator, "description": DESCRIPTIONS[indicator]}


def components_list(state: PageState) -> list[dict[str, Any]]:
    return [
        component_json(
            c,
            state.statuses[c.id],
            created_at=state.started_at,
            updated_at=state.updated_at.get(c.id, state.started_at),
        )
        for c in COMPONENTS
        if c.id in state.statuses
    ]


def status_document(state: PageState) -> dict[str, Any]:
    """``/api/v2/status.json``."""
    return {"page": page_json(state), "status": status_json(state)}


def components_document(state: PageState) -> dict[str, Any]:
    """``/api/v2/components.json``."""
    return {"page": page_json(state), "components": components_list(state)}


def incidents_document(state: PageState, *, unresolved_only: bool = False) -> dict[str, Any]:
    """``/api/v2/incidents.json`` (the latest :data:`INCIDENTS_LIMIT`) or ``incidents/unresolved.json``."""
    records = _unresolved(state) if unresolved_only else list(state.incidents)[:INCIDENTS_LIMIT]
    return {"page": page_json(state), "incidents": [incident_json(r, page_url=state.page_url) for r in records]}


def summary_document(state: PageState) -> dict[str, Any]:
    """``/api/v2/summary.json``: no scheduled maintenance is known ahead, so that list is empty."""
    return {
        "page": page_json(state),
        "components": components_list(state),
        "incidents": [incident_json(r, page_url=state.page_url) for r in _unresolved(state)],
        "scheduled_maintenances": [],
        "status": status_json(state),
    }


# ---------------------------------------------------------------------------- Atom feed (RFC 4287)

ATOM_NS: Final = "http://www.w3.org/2005/Atom"


def entry_id(key: str) -> str:
    """A stable ``urn:uuid:`` for an incident: its key when that is a UUID, else a name-based UUID of it."""
    try:
        return uuid.UUID(key).urn
    except ValueError:
        return uuid.uuid5(uuid.NAMESPACE_URL, f"deriv-status:incident:{key}").urn


def atom_feed(state: PageState, *, feed_url: str, now: float) -> str:
    """The incidents as an Atom 1.0 feed, newest first; ``updated`` is the newest change (``now`` if none)."""
    ET.register_namespace("", ATOM_NS)

    def sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
        element = ET.SubElement(parent, f"{{{ATOM_NS}}}{tag}", attrs)
        if text is not None:
            element.text = text
        return element

    records = list(state.incidents)[:INCIDENTS_LIMIT]
    changed = [r.ended_at or r.started_at for r in records]
    feed = ET.Element(f"{{{ATOM_NS}}}feed")
    sub(feed, "id", uuid.uuid5(uuid.NAMESPACE_URL, feed_url).urn)
    sub(feed, "title", f"{PAGE_NAME}: incidents")
    sub(feed, "subtitle", "Outages of the market feed link and the API, as they start and end.")
    sub(feed, "updated", iso_utc(max(changed) if changed else now))
    sub(feed, "link", rel="self", type="application/atom+xml", href=feed_url)
    sub(feed, "link", rel="alternate", type="text/html", href=f"{state.page_url}/")
    author = sub(feed, "author")
    sub(author, "name", PAGE_NAME)
    sub(feed, "generator", "deriv-status")
    for record in records:
        doc = incident_json(record, page_url=state.page_url)
        entry = sub(feed, "entry")
        sub(entry, "id", entry_id(record.key))
        state_words = "resolved" if record.resolved else "ongoing"
        sub(entry, "title", f"{doc['name']} ({state_words})")
        sub(entry, "updated", doc["updated_at"])
        sub(entry, "published", doc["started_at"])
        sub(entry, "link", rel="alternate", type="text/html", href=doc["shortlink"])
        sub(entry, "category", term=doc["impact"], label=f"impact: {doc['impact']}")
        latest = doc["incident_updates"][0]["body"]
        sub(entry, "summary", latest, type="text")
        lines = [f"{u['display_at']} {u['status']}: {u['body']}" for u in reversed(doc["incident_updates"])]
        sub(entry, "content", "\n".join(lines), type="text")
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(feed, encoding="unicode")


# ---------------------------------------------------------------------------- badge (shields.io style)

BADGE_LABEL: Final = "market feed"
LABEL_COLOUR: Final = "#555555"
# Each keeps white text above WCAG AA contrast (4.5:1); tests/unit/test_statuspage.py checks it.
BADGES: Final[Mapping[str, tuple[str, str]]] = {
    "none": ("live", "#1a7f37"),
    "minor": ("degraded", "#9a6700"),
    "major": ("partial outage", "#9a6700"),
    "critical": ("down", "#cf222e"),
    "maintenance": ("maintenance", "#0969da"),
}
# Verdana 11 px advance widths (px) of the characters a badge uses; others count as 7.
_NARROW: Final = dict.fromkeys("ijlft:|.,' ", 3.9) | dict.fromkeys("r", 4.7)
_WIDE: Final = dict.fromkeys("mw", 10.7) | dict.fromkeys("MW", 11.0)
_PADDING: Final = 10


def _text_width(text: str) -> int:
    return round(sum(_NARROW.get(ch, _WIDE.get(ch, 7.0)) for ch in text))


def badge(indicator: str) -> tuple[str, str]:
    """The message and colour for an overall indicator."""
    return BADGES.get(indicator, BADGES["critical"])


def badge_svg(label: str, message: str, colour: str) -> str:
    """A flat shields.io-style badge: grey label, coloured message, accessible name and ``<title>``."""
    label_w = _text_width(label) + _PADDING
    message_w = _text_width(message) + _PADDING
    width = label_w + message_w
    name = _xml(f"{label}: {message}")

    def text(value: str, x_px: float, width_px: int) -> str:
        x, length, value = round(x_px * 10), (width_px - _PADDING) * 10, _xml(value)
        return (
            f'<text aria-hidden="true" x="{x}" y="150" fill="#010101" fill-opacity=".3" '
            f'transform="scale(.1)" textLength="{length}">{value}</text>'
            f'<text x="{x}" y="140" transform="scale(.1)" fill="#fff" textLength="{length}">{value}</text>'
        )

    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="20" role="img" aria-label="{name}">'
        f"<title>{name}</title>"
        '<linearGradient id="s" x2="0" y2="100%"><stop offset="0" stop-color="#bbb" stop-opacity=".1"/>'
        '<stop offset="1" stop-opacity=".1"/></linearGradient>'
        f'<clipPath id="r"><rect width="{width}" height="20" rx="3" fill="#fff"/></clipPath>'
        f'<g clip-path="url(#r)"><rect width="{label_w}" height="20" fill="{LABEL_COLOUR}"/>'
        f'<rect x="{label_w}" width="{message_w}" height="20" fill="{colour}"/>'
        f'<rect width="{width}" height="20" fill="url(#s)"/></g>'
        '<g fill="#fff" text-anchor="middle" font-family="Verdana,Geneva,DejaVu Sans,sans-serif" '
        'text-rendering="geometricPrecision" font-size="110">'
        f"{text(label, label_w / 2, label_w)}{text(message, label_w + message_w / 2, message_w)}"
        "</g></svg>"
    )


def _xml(value: str) -> str:
    return value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


__all__ = [
    "COMPONENTS",
    "ChangeLog",
    "IncidentRecord",
    "Observation",
    "PageState",
    "atom_feed",
    "badge",
    "badge_svg",
    "component_statuses",
    "components_document",
    "incidents_document",
    "indicator_of",
    "status_document",
    "summary_document",
]
