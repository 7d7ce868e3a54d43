"""The Statuspage-compatible API, the Atom feed and the badge over a real socket, through an outage.

The whole app (embedded simulator) under uvicorn on 127.0.0.1, read as a status aggregator,
a feed reader and a README badge would read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from typing import Any

import feedparser
import httpx

from tests.helpers import WAIT_S, until
from tests.integration.conftest import ServedApp
from tests.integration.test_api import cut_the_upstream, live, serve_runtime

ROUTES = {
    "/api/v2/status.json": "application/json",
    "/api/v2/summary.json": "application/json",
    "/api/v2/components.json": "application/json",
    "/api/v2/incidents.json": "application/json",
    "/api/v2/incidents/unresolved.json": "application/json",
    "/history.atom": "application/atom+xml",
    "/badge.svg": "image/svg+xml",
}
SVG = "{http://www.w3.org/2000/svg}"


async def _json(client: httpx.AsyncClient, path: str) -> Any:
    response = await client.get(path)
    assert response.status_code == 200
    return response.json()


def _feed_status(summary: dict[str, Any]) -> str:
    return next(str(c["status"]) for c in summary["components"] if c["id"] == "market-feed")


async def _badge(client: httpx.AsyncClient) -> tuple[str, str]:
    response = await client.get("/badge.svg")
    root = ET.fromstring(response.text)
    title = root.find(f"{SVG}title")
    assert title is not None and title.text is not None
    return root.attrib["aria-label"], title.text


async def _eventually(client: httpx.AsyncClient, path: str, predicate: Callable[[Any], bool]) -> Any:
    """Poll ``path`` until its JSON satisfies ``predicate`` (the health report is cached for a second)."""
    seen: list[Any] = [None]
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(WAIT_S):
            while True:
                seen[-1] = await _json(client, path)
                if predicate(seen[-1]):
                    return seen[-1]
                await asyncio.sleep(0.1)
    raise AssertionError(f"{path} never got there; last answer: {seen[-1]}")


async def test_every_route_answers_with_its_content_type_while_live(
    asgi_server: Callable[..., Awaitable[ServedApp]],
) -> None:
    async with serve_runtime(asgi_server) as (runtime, client):
        await until(live(runtime))
        for path, media_type in ROUTES.items():
            response = await client.get(path)
            assert response.status_code == 200, path
            assert response.headers["content-type"].split(";")[0] == media_type, path

        summary = await _eventually(client, "/api/v2/summary.json", lambda s: s["status"]["indicator"] == "none")
        assert summary["status"]["description"] == "All Systems Operational"
        assert set(summary) == {"page", "components", "incidents", "scheduled_maintenances", "status"}
        assert summary["page"]["url"] == str(client.base_url).rstrip("/")
        assert {c["name"] for c in summary["components"]} == {
            "Market feed link",
            "Streaming API",
            "REST API",
            "History database",
        }
        assert all(c["status"] == "operational" for c in summary["components"])
        assert summary["incidents"] == [] and summary["scheduled_maintenances"] == []
        assert (await _json(client, "/api/v2/incidents/unresolved.json"))["incidents"] == []

        label, title = await _badge(client)
        assert label == title == "market feed: live"
        badge = await client.get("/badge.svg")
        assert badge.headers["cache-control"] == "public, max-age=30"

        feed = feedparser.parse((await client.get("/history.atom")).text)
        assert feed.bozo == 0 and feed.version == "atom10"


async def test_an_outage_shows_everywhere_and_resolves(asgi_server: Callable[..., Awaitable[ServedApp]]) -> None:
    async with serve_runtime(asgi_server) as (runtime, client):
        sim = await cut_the_upstream(runtime)

        summary = await _eventually(
            client, "/api/v2/summary.json", lambda s: s["status"]["indicator"] in {"major", "critical"}
        )
        assert _feed_status(summary) == "major_outage"
        status = await _json(client, "/api/v2/status.json")
        assert status["status"]["indicator"] in {"major", "critical"}
        components = await _json(client, "/api/v2/components.json")
        assert _feed_status(components) == "major_outage"
        # The REST API, the relay and the history keep working: only the feed is down. (A
        # loaded test machine can make the event loop late, which rightly reads as degraded.)
        assert {c["id"]: c["status"] for c in components["components"]}["rest-api"] in (
            "operational",
            "degraded_performance",
        )

        unresolved = (await _json(client, "/api/v2/incidents/unresolved.json"))["incidents"]
        upstream = [i for i in unresolved if i["components"][0]["id"] == "market-feed" and i["impact"] == "critical"]
        assert len(upstream) == 1
        incident = upstream[0]
        assert incident["status"] in {"investigating", "identified"} and incident["resolved_at"] is None
        assert incident["incident_updates"][0]["affected_components"][0]["new_status"] == "major_outage"
        assert incident["id"] in {i["id"] for i in (await _json(client, "/api/v2/summary.json"))["incidents"]}
        listed = await _eventually(
            client, "/api/v2/incidents.json", lambda d: incident["id"] in {i["id"] for i in d["incidents"]}
        )
        assert listed["incidents"][0]["started_at"].endswith("Z")
        label, _ = await _badge(client)
        assert label == "market feed: down"
        feed = feedparser.parse((await client.get("/history.atom")).text)
        assert feed.bozo == 0
        assert any(e.title.endswith("(ongoing)") for e in feed.entries)

        sim.refuse_connections(0)
        runtime.retry_now()
        await until(live(runtime))
        assert await runtime.store.wait_idle(WAIT_S)

        await _eventually(client, "/api/v2/status.json", lambda s: s["status"]["indicator"] == "none")
        resolved = await _eventually(
            client,
            "/api/v2/incidents.json",
            lambda d: any(i["id"] == incident["id"] and i["status"] == "resolved" for i in d["incidents"]),
        )
        done = next(i for i in resolved["incidents"] if i["id"] == incident["id"])
        assert done["resolved_at"] is not None and done["incident_updates"][0]["status"] == "resolved"
        assert (await _json(client, "/api/v2/incidents/unresolved.json"))["incidents"] == []
        assert _feed_status(await _json(client, "/api/v2/summary.json")) == "operational"
        assert (await _badge(client))[0] == "market feed: live"

        feed = feedparser.parse((await client.get("/history.atom")).text)
        assert feed.bozo == 0
        entry = next(e for e in feed.entries if e.id == uuid.UUID(incident["id"]).urn)
        assert entry.title.endswith("(resolved)") and entry.link.endswith("/#incidents")


async def test_a_deriv_deploy_reads_as_maintenance(asgi_server: Callable[..., Awaitable[ServedApp]]) -> None:
    async with serve_runtime(asgi_server) as (runtime, client):
        await until(live(runtime))
        sim = runtime.simulator
        assert sim is not None
        # Deriv pushes website_status "updating", then closes every connection; 3 s of notice.
        await sim.deploy(close_after_s=3.0)
        summary = await _eventually(client, "/api/v2/summary.json", lambda s: s["status"]["indicator"] == "maintenance")
        assert summary["status"]["description"] == "Service Under Maintenance"
        assert _feed_status(summary) == "under_maintenance"
        assert (await _badge(client))[0] == "market feed: maintenance"


async def test_without_the_database_the_documents_still_answer(
    asgi_server: Callable[..., Awaitable[ServedApp]],
) -> None:
    # A directory that cannot exist: the history can never open its database.
    async with serve_runtime(asgi_server, DB_URL="sqlite:////proc/deriv-status-none/status.db") as (runtime, client):
        await cut_the_upstream(runtime)
        components = await _eventually(client, "/api/v2/components.json", lambda d: _feed_status(d) == "major_outage")
        assert {c["id"]: c["status"] for c in components["components"]}["history-database"] == "major_outage"
        # The ongoing incident is known in memory: every list shows it, nothing answers 5xx.
        for path in ("/api/v2/incidents.json", "/api/v2/incidents/unresolved.json", "/api/v2/summary.json"):
            assert "critical" in [i["impact"] for i in (await _json(client, path))["incidents"]], path
        feed = feedparser.parse((await client.get("/history.atom")).text)
        assert feed.bozo == 0 and any(e.title.startswith("Market feed link: ") for e in feed.entries)
