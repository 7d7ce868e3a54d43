"""The Statuspage mapping, the Atom feed and the badge, on fixed inputs (backend_core.statuspage)."""

from __future__ import annotations

import re
import uuid
import xml.etree.ElementTree as ET
from typing import Any

import feedparser
import pytest

from backend_core import statuspage as sp
from tests.helpers import statuspage_observation as obs

T0 = 1_780_000_000.0  # 2026-05-28T20:26:40Z
PAGE = "https://status.example.org"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
COMPONENT_STATUSES = {"operational", "degraded_performance", "partial_outage", "major_outage", "under_maintenance"}
INCIDENT_KEYS = {
    "id",
    "name",
    "status",
    "impact",
    "created_at",
    "updated_at",
    "monitoring_at",
    "resolved_at",
    "shortlink",
    "started_at",
    "page_id",
    "incident_updates",
    "components",
}
UPDATE_KEYS = {"id", "status", "body", "incident_id", "created_at", "updated_at", "display_at", "affected_components"}
COMPONENT_KEYS = {
    "id",
    "name",
    "status",
    "created_at",
    "updated_at",
    "position",
    "description",
    "showcase",
    "group_id",
    "page_id",
    "group",
    "only_show_if_degraded",
}
KEY = uuid.UUID(int=7).hex


def outage(**changes: Any) -> sp.IncidentRecord:
    fields: dict[str, Any] = {
        "key": KEY,
        "component": "upstream",
        "started_at": T0 + 60,
        "ended_at": None,
        "cause": "connection_lost",
        "error_code": "ConnectionLost",
        "message": "The market data link dropped.",
        "recovery": None,
        "planned": False,
    }
    fields.update(changes)
    return sp.IncidentRecord(**fields)


def state(statuses: dict[str, str] | None = None, incidents: list[sp.IncidentRecord] | None = None) -> sp.PageState:
    statuses = statuses if statuses is not None else sp.component_statuses(obs())
    return sp.PageState(PAGE, T0, statuses, {k: T0 for k in statuses}, incidents or [])


# ---------------------------------------------------------------------------- components


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, "operational"),
        ({"upstream_check": "warn"}, "degraded_performance"),  # connected but silent
        ({"upstream_state": "connecting"}, "degraded_performance"),  # first connect of a start
        ({"upstream_state": "connecting", "upstream_error": True}, "major_outage"),
        ({"upstream_state": "reconnecting", "upstream_check": "warn"}, "major_outage"),
        ({"upstream_state": "circuit_open", "upstream_check": "warn"}, "major_outage"),
        ({"upstream_state": "stopped"}, "major_outage"),
        ({"upstream_state": "reconnecting", "planned_drop": True}, "under_maintenance"),
        ({"planned_drop": True}, "operational"),  # announced, still connected
        ({"site_updating": True}, "under_maintenance"),  # Deriv is deploying
        ({"upstream_state": "reconnecting", "site_updating": True}, "under_maintenance"),
    ],
)
def test_the_market_feed_follows_the_upstream_link(changes: dict[str, Any], expected: str) -> None:
    assert sp.component_statuses(obs(**changes))["market-feed"] == expected


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"relay_active": 89}, "operational"),
        ({"relay_active": 90}, "degraded_performance"),
        ({"relay_active": 100}, "partial_outage"),
    ],
)
def test_the_streaming_api_follows_the_relay_load(changes: dict[str, Any], expected: str) -> None:
    assert sp.component_statuses(obs(**changes))["streaming-api"] == expected


def test_a_disabled_relay_is_not_listed() -> None:
    statuses = sp.component_statuses(obs(relay_enabled=False))
    assert "streaming-api" not in statuses
    assert [c["id"] for c in sp.components_document(state(statuses))["components"]] == [
        "market-feed",
        "rest-api",
        "history-database",
    ]


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"api_breaker_states": ()}, "operational"),
        ({"api_breaker_states": ("closed", "half_open")}, "degraded_performance"),
        ({"api_breaker_states": ("open", "half_open")}, "partial_outage"),
        ({"loop_lag_check": "warn"}, "degraded_performance"),
        ({"loop_lag_check": "fail"}, "major_outage"),
    ],
)
def test_the_rest_api_follows_its_breakers_and_the_event_loop(changes: dict[str, Any], expected: str) -> None:
    assert sp.component_statuses(obs(**changes))["rest-api"] == expected


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"database_check": "warn", "database_reachable": None}, "degraded_performance"),
        ({"database_check": "warn"}, "degraded_performance"),  # write queue nearly full
        ({"database_check": "warn", "database_reachable": False}, "major_outage"),
        ({"database_check": "warn", "database_unusable": True}, "major_outage"),
    ],
)
def test_the_history_database_follows_the_store_check(changes: dict[str, Any], expected: str) -> None:
    assert sp.component_statuses(obs(**changes))["history-database"] == expected


def test_components_carry_statuspage_fields() -> None:
    document = sp.components_document(state())
    assert set(document) == {"page", "components"}
    for position, component in enumerate(document["components"], start=1):
        assert set(component) >= COMPONENT_KEYS
        assert component["status"] in COMPONENT_STATUSES
        assert component["position"] == position and component["page_id"] == sp.PAGE_ID
        assert component["group"] is False and component["group_id"] is None
        assert ISO.match(component["created_at"]) and ISO.match(component["updated_at"])
    assert set(document["page"]) == {"id", "name", "url", "time_zone", "updated_at"}
    assert document["page"]["url"] == PAGE


def test_the_change_log_keeps_the_time_of_the_last_change() -> None:
    log = sp.ChangeLog(started_at=T0)
    assert log.since("market-feed", "operational", T0 + 10) == T0  # operational since the start
    assert log.since("market-feed", "major_outage", T0 + 20) == T0 + 20
    assert log.since("market-feed", "major_outage", T0 + 30) == T0 + 20
    assert log.since("market-feed", "operational", T0 + 40) == T0 + 40
    assert log.since("rest-api", "partial_outage", T0 + 50) == T0 + 50  # first seen down: from now


# ---------------------------------------------------------------------------- indicator


@pytest.mark.parametrize(
    ("statuses", "incidents", "indicator", "description"),
    [
        ({"a": "operational"}, [], "none", "All Systems Operational"),
        ({"a": "operational", "b": "under_maintenance"}, [], "maintenance", "Service Under Maintenance"),
        ({"a": "degraded_performance", "b": "under_maintenance"}, [], "minor", "Minor Service Outage"),
        ({"a": "partial_outage", "b": "degraded_performance"}, [], "major", "Partial System Outage"),
        ({"a": "major_outage", "b": "partial_outage"}, [], "critical", "Major System Outage"),
        # An unresolved incident counts even before the components show it; a resolved one does not.
        ({"a": "operational"}, [outage()], "critical", "Major System Outage"),
        ({"a": "operational"}, [outage(ended_at=T0 + 90)], "none", "All Systems Operational"),
        ({"a": "operational"}, [outage(component="breaker:api:/api/v1/status")], "minor", "Minor Service Outage"),
    ],
)
def test_the_indicator_is_the_worst_of_components_and_unresolved_incidents(
    statuses: dict[str, str], incidents: list[sp.IncidentRecord], indicator: str, description: str
) -> None:
    assert sp.status_document(state(statuses, incidents))["status"] == {
        "indicator": indicator,
        "description": description,
    }


# ---------------------------------------------------------------------------- incidents


def test_an_ongoing_upstream_incident() -> None:
    document = sp.incidents_document(state(incidents=[outage()]))
    [incident] = document["incidents"]
    assert set(incident) >= INCIDENT_KEYS
    assert incident["id"] == KEY and incident["page_id"] == sp.PAGE_ID
    assert incident["name"] == "Market feed link: connection lost"
    assert (incident["status"], incident["impact"]) == ("identified", "critical")
    assert incident["resolved_at"] is None and incident["monitoring_at"] is None
    assert incident["created_at"] == incident["started_at"] == incident["updated_at"] == "2026-05-28T20:27:40.000Z"
    assert incident["shortlink"] == f"{PAGE}/#incidents"
    [update] = incident["incident_updates"]
    assert set(update) >= UPDATE_KEYS and update["incident_id"] == KEY
    assert update["body"] == "The market data link dropped. Error code: ConnectionLost."
    assert update["affected_components"] == [
        {"code": "market-feed", "name": "Market feed link", "old_status": "operational", "new_status": "major_outage"}
    ]
    assert [c["id"] for c in incident["components"]] == ["market-feed"]
    assert incident["components"][0]["status"] == "major_outage"


def test_a_resolved_incident_has_its_resolution_first() -> None:
    record = outage(ended_at=T0 + 150, recovery="reconnected", attempts=3)
    [incident] = sp.incidents_document(state(incidents=[record]))["incidents"]
    assert incident["status"] == "resolved"
    assert incident["resolved_at"] == incident["updated_at"] == "2026-05-28T20:29:10.000Z"
    resolved, first = incident["incident_updates"]
    assert (resolved["status"], resolved["body"]) == ("resolved", "Resolved: reconnected after 3 attempts.")
    assert resolved["affected_components"][0]["new_status"] == "operational"
    assert first["status"] == "identified" and resolved["id"] != first["id"]
    assert incident["components"][0]["status"] == "operational"


def test_cause_and_recovery_codes_read_as_the_alerts_words() -> None:
    record = outage(cause="could_not_connect", error_code=None, ended_at=T0 + 70, recovery="breaker_probe")
    [incident] = sp.incidents_document(state(incidents=[record]))["incidents"]
    assert incident["name"] == "Market feed link: could not connect"
    assert incident["incident_updates"][-1]["status"] == "investigating"  # no error code: not identified
    assert incident["incident_updates"][0]["body"] == "Resolved: breaker probe."
    # A code from a newer version still reads as words.
    newer = outage(cause="solar_flare", ended_at=T0 + 70, recovery="it_went_away")
    [incident] = sp.incidents_document(state(incidents=[newer]))["incidents"]
    assert incident["name"] == "Market feed link: solar flare"
    assert incident["incident_updates"][0]["body"] == "Resolved: it went away."


def test_breaker_and_planned_incidents() -> None:
    api = outage(component="breaker:api:/api/v1/ticks/{symbol}", cause="breaker_opened", error_code="failures")
    ws = outage(component="breaker:websocket", cause="breaker_opened")
    planned = outage(cause="planned_maintenance", planned=True, error_code=None)
    docs = {
        i["components"][0]["id"] + i["impact"]: i
        for i in sp.incidents_document(state(incidents=[api, ws, planned]))["incidents"]
    }
    assert docs["rest-apiminor"]["name"] == "REST API: circuit breaker opened (api:/api/v1/ticks/{symbol})"
    assert docs["rest-apiminor"]["components"][0]["status"] == "partial_outage"
    assert docs["market-feedmajor"]["name"] == "Market feed link: circuit breaker opened (websocket)"
    maintenance = docs["market-feedmaintenance"]
    assert maintenance["status"] == "identified"
    assert maintenance["incident_updates"][0]["affected_components"][0]["new_status"] == "under_maintenance"


def test_unresolved_and_summary_list_only_ongoing_incidents() -> None:
    ongoing = outage(key=uuid.UUID(int=1).hex, started_at=T0 + 300)
    done = outage(key=uuid.UUID(int=2).hex, ended_at=T0 + 100)
    page = state(incidents=[ongoing, done])
    assert [i["id"] for i in sp.incidents_document(page)["incidents"]] == [ongoing.key, done.key]
    assert [i["id"] for i in sp.incidents_document(page, unresolved_only=True)["incidents"]] == [ongoing.key]
    summary = sp.summary_document(page)
    assert [i["id"] for i in summary["incidents"]] == [ongoing.key]
    assert summary["scheduled_maintenances"] == []
    assert summary["page"]["updated_at"] == "2026-05-28T20:31:40.000Z"  # the newest change: the ongoing start


def test_incidents_json_keeps_the_latest_fifty() -> None:
    records = [outage(key=uuid.UUID(int=n).hex, started_at=T0 - n, ended_at=T0 - n + 1) for n in range(60)]
    assert len(sp.incidents_document(state(incidents=records))["incidents"]) == sp.INCIDENTS_LIMIT


# ---------------------------------------------------------------------------- Atom


def test_the_atom_feed_is_valid_and_ids_are_stable() -> None:
    records = [
        outage(key=uuid.UUID(int=1).hex, started_at=T0 + 300),
        outage(key="not-a-uuid", ended_at=T0 + 120, recovery="manual_retry", message="<b>&amp;</b>"),
    ]
    text = sp.atom_feed(state(incidents=records), feed_url=f"{PAGE}/history.atom", now=T0 + 500)
    feed = feedparser.parse(text)
    assert feed.bozo == 0, feed.get("bozo_exception")
    assert feed.version == "atom10"
    assert feed.feed.title == "Market feed status: incidents"
    links = {link.rel: link.href for link in feed.feed.links}
    assert links == {"self": f"{PAGE}/history.atom", "alternate": f"{PAGE}/"}
    assert feed.feed.updated == "2026-05-28T20:31:40.000Z"
    ongoing, resolved = feed.entries
    assert ongoing.id == uuid.UUID(int=1).urn and ongoing.title.endswith("(ongoing)")
    assert resolved.title == "Market feed link: connection lost (resolved)"
    assert resolved.id.startswith("urn:uuid:") and resolved.published == "2026-05-28T20:27:40.000Z"
    assert resolved.updated == "2026-05-28T20:28:40.000Z"
    assert resolved.summary == "Resolved: manual retry."
    assert "<b>&amp;</b>" in resolved.content[0].value  # text, escaped, not markup
    assert resolved.link == f"{PAGE}/#incidents"
    again = feedparser.parse(sp.atom_feed(state(incidents=records), feed_url=f"{PAGE}/history.atom", now=T0 + 900))
    assert [e.id for e in again.entries] == [e.id for e in feed.entries]
    assert again.feed.id == feed.feed.id


def test_an_empty_feed_is_valid_and_dated_now() -> None:
    feed = feedparser.parse(sp.atom_feed(state(), feed_url=f"{PAGE}/history.atom", now=T0))
    assert feed.bozo == 0 and feed.entries == []
    assert feed.feed.updated == "2026-05-28T20:26:40.000Z"


# ---------------------------------------------------------------------------- badge


def _luminance(hex_colour: str) -> float:
    channels = [int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)]
    linear = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in channels]
    return 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]


@pytest.mark.parametrize(
    ("indicator", "message", "colour"),
    [
        ("none", "live", "#1a7f37"),
        ("minor", "degraded", "#9a6700"),
        ("major", "partial outage", "#9a6700"),
        ("critical", "down", "#cf222e"),
        ("maintenance", "maintenance", "#0969da"),
    ],
)
def test_the_badge_follows_the_verdict_and_is_readable(indicator: str, message: str, colour: str) -> None:
    assert sp.badge(indicator) == (message, colour)
    svg = sp.badge_svg(sp.BADGE_LABEL, message, colour)
    root = ET.fromstring(svg)
    ns = "{http://www.w3.org/2000/svg}"
    assert root.tag == f"{ns}svg" and root.attrib["role"] == "img"
    assert root.attrib["aria-label"] == f"market feed: {message}"
    title = root.find(f"{ns}title")
    assert title is not None and title.text == f"market feed: {message}"
    rects = [r.attrib for r in root.iter(f"{ns}rect")]
    assert any(r.get("fill") == colour for r in rects)
    assert int(root.attrib["width"]) > 60
    texts = [t.text for t in root.iter(f"{ns}text")]
    assert texts.count("market feed") == 2 and texts.count(message) == 2
    # White text on the message colour meets WCAG AA (4.5:1), and on the grey label too.
    for background in (colour, sp.LABEL_COLOUR):
        assert (1.05) / (_luminance(background) + 0.05) >= 4.5


def test_the_badge_escapes_its_text() -> None:
    root = ET.fromstring(sp.badge_svg('a<b>&"c', "x", "#000000"))
    assert root.attrib["aria-label"] == 'a<b>&"c: x'
