"""The mounted API over a real socket: the whole Runtime (embedded simulator) under uvicorn.

Health, readiness, metrics, REST fallback and the admin rules, as an orchestrator, an
operator or an API client sees them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from starlette.routing import Route
from websockets.asyncio.client import connect

from backend_core import status_view
from backend_core.api import create_api
from backend_core.config import load_settings
from backend_core.deriv.sim.server import DerivSimulator
from backend_core.events import LinkState
from backend_core.runtime import Runtime
from tests.helpers import WAIT_S, until
from tests.integration.conftest import ServedApp
from tests.integration.test_alerts import Receiver

ADMIN = "admin-token-0123456789"


@contextlib.asynccontextmanager
async def serve_runtime(
    asgi_server: Callable[..., Awaitable[ServedApp]], **env: str
) -> AsyncIterator[tuple[Runtime, httpx.AsyncClient]]:
    with tempfile.TemporaryDirectory(prefix="deriv-status-test-", ignore_cleanup_errors=True) as data:
        settings = load_settings(
            {
                "DERIV_SYMBOLS": "1HZ100V,R_50",
                "DERIV_SIMULATOR_TIME_SCALE": "20",
                "DERIV_PING_INTERVAL": "0.5",
                "WEBSOCKET_CONNECTION_TIMEOUT": "1",
                "WEBSOCKET_CB_RECOVERY_TIMEOUT": "30",
                "ADMIN_TOKEN": ADMIN,
                "DB_URL": f"sqlite:///{data}/status.db",
                **env,
            }
        )
        runtime = Runtime(settings)
        async with runtime.lifespan():
            served = await asgi_server(create_api(runtime))
            async with httpx.AsyncClient(base_url=served.http_url, timeout=5.0) as client:
                yield runtime, client


def live(runtime: Runtime) -> Callable[[], bool]:
    def check() -> bool:
        snap = runtime.upstream_snapshot()
        return (
            snap is not None
            and snap.state == LinkState.CONNECTED
            and all(runtime.hub.latest(s) is not None for s in runtime.settings.DERIV_SYMBOLS)
        )

    return check


async def cut_the_upstream(runtime: Runtime) -> DerivSimulator:
    """Once live, the embedded simulator refuses connections (60 s) and drops the link; returns it."""
    await until(live(runtime))
    sim = runtime.simulator
    assert sim is not None
    sim.refuse_connections(60)
    await sim.drop_all()
    return sim


async def test_health_routes_tell_the_truth_while_live(asgi_server: Callable[..., Awaitable[ServedApp]]) -> None:
    async with serve_runtime(asgi_server) as (runtime, client):
        await until(live(runtime))
        response = await client.get("/health")
        assert response.status_code == 200
        # Every component passes; only the event loop may be late on a loaded test machine.
        components = response.json()["components"]
        assert {name for name, status in components.items() if status != "pass"} <= {"eventLoop"}
        assert response.json()["status"] == "pass" or components["eventLoop"] == "warn"

        detailed = await client.get("/health/detailed")
        assert detailed.status_code == 200
        assert detailed.headers["content-type"].startswith("application/health+json")
        body = detailed.json()
        assert body["status"] in ("pass", "warn") and body["serviceId"] == "deriv-status"
        assert {"upstream:state", "relay:connections", "eventLoop:lag", "circuitBreaker.websocket:state"} <= set(
            body["checks"]
        )
        for entries in body["checks"].values():
            for entry in entries:
                assert {"componentType", "observedValue", "status", "time"} <= set(entry)

        ws = (await client.get("/health/websocket")).json()
        assert ws["upstream"]["state"] == "connected"
        assert {s["symbol"] for s in ws["upstream"]["symbols"]} == {"1HZ100V", "R_50"}
        assert all(s["tick_age_s"] is not None for s in ws["upstream"]["symbols"])
        assert ws["relay"]["active"] == 0

        breakers = (await client.get("/health/circuit-breakers")).json()
        assert breakers["enabled"] is True
        assert {b["name"] for b in breakers["breakers"]} >= {"websocket"}

        assert (await client.get("/livez")).status_code == 200
        assert (await client.get("/readyz")).json()["ready"] is True


async def test_upstream_outage_is_warn_and_the_service_stays_ready(
    asgi_server: Callable[..., Awaitable[ServedApp]],
) -> None:
    async with serve_runtime(asgi_server) as (runtime, client):
        await cut_the_upstream(runtime)
        await until(lambda: status_view.upstream_status(runtime)["state"] == "circuit_open")
        health = await client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "warn"
        assert health.json()["components"]["upstream"] == "warn"
        assert (await client.get("/readyz")).status_code == 200
        latest = (await client.get("/api/v1/ticks/latest")).json()
        assert latest["upstream_state"] == "circuit_open"
        assert all(t is not None and t["stale"] for t in latest["ticks"].values())
        status = (await client.get("/api/v1/status")).json()
        assert status["upstream"]["breaker_state"] == "open"
        assert status["upstream"]["retry_after_s"] is not None
        assert status["upstream"]["last_error"]["code"] == "HandshakeRefused"


async def test_rest_fallback_serves_ticks_from_the_ring_buffer(
    asgi_server: Callable[..., Awaitable[ServedApp]],
) -> None:
    async with serve_runtime(asgi_server) as (runtime, client):
        await until(live(runtime))
        await until(lambda: len(runtime.hub.ticks_since("1HZ100V", 0, 1000)) >= 5)
        latest = (await client.get("/api/v1/ticks/latest", params={"symbols": "1HZ100V"})).json()
        tick = latest["ticks"]["1HZ100V"]
        assert tick["symbol"] == "1HZ100V" and isinstance(tick["epoch"], int) and tick["stale"] is False
        all_ticks = (await client.get("/api/v1/ticks/1HZ100V")).json()["ticks"]
        epochs = [t["epoch"] for t in all_ticks]
        assert epochs == sorted(set(epochs)) and len(epochs) >= 5
        since = (await client.get("/api/v1/ticks/1HZ100V", params={"since": epochs[2]})).json()["ticks"]
        assert [t["epoch"] for t in since][: len(epochs) - 3] == epochs[3:]


HOSTILE = [
    ("/api/v1/ticks/latest?symbols=NOPE", 400, "unknown_symbol"),
    ("/api/v1/ticks/latest?symbols=,", 400, "invalid_symbols"),
    ("/api/v1/ticks/latest?symbols=R%0A50", 400, "invalid_symbols"),
    ("/api/v1/ticks/latest?symbols=" + ",".join(["R_50"] * 51), 400, "invalid_symbols"),
    ("/api/v1/ticks/latest?symbols=%C2%B2%C2%B2", 400, "unknown_symbol"),
    ("/api/v1/ticks/NOPE", 404, "unknown_symbol"),
    ("/api/v1/ticks/R_50%0A", 404, "unknown_symbol"),
    ("/api/v1/ticks/R_50?since=yesterday", 400, "invalid_since"),
    ("/api/v1/ticks/R_50?since=-1", 400, "invalid_since"),
    ("/api/v1/ticks/R_50?since=%C2%B2", 400, "invalid_since"),  # '²': str.isdigit() says yes
    ("/api/v1/ticks/R_50?since=%D9%A1%D9%A2", 400, "invalid_since"),  # Arabic-Indic digits
    ("/api/v1/ticks/R_50?since=1e3", 400, "invalid_since"),
    ("/api/v1/ticks/R_50?since=%201", 400, "invalid_since"),
    ("/api/v1/ticks/R_50?since=" + "9" * 5000, 400, "invalid_since"),
    ("/api/v1/ticks/R_50?limit=0", 400, "invalid_limit"),
    ("/api/v1/ticks/R_50?limit=99999", 400, "invalid_limit"),
    ("/api/v1/ticks/R_50?limit=%C2%B9", 400, "invalid_limit"),  # '¹': used to drop the connection
    ("/api/v1/ticks/R_50?limit=1.0", 400, "invalid_limit"),
    ("/api/v1/history?days=%C2%B2", 400, "invalid_parameter"),
    ("/api/v1/history?days=0", 400, "invalid_parameter"),
    ("/api/v1/history?component=up%0Astream", 400, "invalid_parameter"),
    ("/api/v1/incidents?limit=%EF%BC%91", 400, "invalid_parameter"),  # fullwidth one
    ("/api/v1/incidents?component=" + "x" * 300, 400, "invalid_parameter"),
    ("/api/v1/transitions?limit=-5", 400, "invalid_parameter"),
    ("/api/v1/transitions?name=a%00b", 400, "invalid_parameter"),
]


async def test_hostile_input_gets_a_specific_4xx_and_never_opens_a_breaker(
    asgi_server: Callable[..., Awaitable[ServedApp]],
) -> None:
    # A low threshold: if any of these counted as a failure, the breakers would open at once.
    env = {"API_CB_FAILURE_THRESHOLD": "1", "API_RATE_LIMIT_BURST": "1000"}
    async with serve_runtime(asgi_server, **env) as (runtime, client):
        await until(live(runtime))
        for _ in range(3):
            for path, status, code in HOSTILE:
                response = await client.get(path)
                assert response.status_code == status, path
                assert response.headers["content-type"] == "application/json", path
                assert response.json()["error"] == code, path
                assert response.json()["message"], path
        assert all(b.state == "closed" for b in runtime.breakers.snapshots())
        for path in (
            "/api/v1/ticks/R_50?since=0&limit=5",
            "/api/v1/ticks/latest?symbols=R_50",
            "/api/v1/history",
            "/api/v1/incidents",
            "/api/v1/transitions",
            "/api/v1/status",
        ):
            assert (await client.get(path)).status_code == 200, path


async def assert_admin_only(client: httpx.AsyncClient, method: str, url: str) -> None:
    """Without the admin token, with a wrong one or in another scheme: 401 and a Bearer challenge."""
    none = await client.request(method, url)
    assert none.status_code == 401 and none.headers["www-authenticate"].startswith("Bearer")
    for authorization in ("Bearer not-the-token-at-all", f"Basic {ADMIN}"):
        wrong = await client.request(method, url, headers={"Authorization": authorization})
        assert wrong.status_code == 401


async def test_admin_reset_rules_and_audit(
    asgi_server: Callable[..., Awaitable[ServedApp]], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="backend_core")
    bearer = {"Authorization": f"Bearer {ADMIN}"}
    async with serve_runtime(asgi_server) as (runtime, client):
        url = "/health/circuit-breakers/websocket/reset"
        await assert_admin_only(client, "POST", url)
        unknown = await client.post("/health/circuit-breakers/nope/reset", headers=bearer)
        assert unknown.status_code == 404 and unknown.json()["error"] == "unknown_breaker"
        forged = await client.post("/health/circuit-breakers/websocket%0Aforged audit line/reset", headers=bearer)
        assert forged.status_code == 400 and forged.json()["error"] == "invalid_breaker_name"
        control = await client.post("/health/circuit-breakers/web%1Bsocket/reset", headers=bearer)
        assert control.status_code == 400
        websocket = runtime.breakers.websocket
        for _ in range(websocket.config.failure_threshold):  # open it the way failures do
            websocket.record_failure(websocket.acquire())
        assert websocket.state == "open"
        ok = await client.post(url, headers=bearer)
        assert ok.status_code == 200
        assert ok.json()["breaker"]["state"] == "closed"
        assert ADMIN not in ok.text
        # An "api:<route>" breaker's name holds slashes: it is reachable too.
        history = runtime.breakers.api("/api/v1/history")
        for _ in range(history.config.failure_threshold):
            history.record_failure(history.acquire())
        api = await client.post("/health/circuit-breakers/api:/api/v1/history/reset", headers=bearer)
        assert api.status_code == 200 and api.json()["breaker"]["state"] == "closed"
        messages = [r.getMessage() for r in caplog.records]
        assert any("breaker reset by admin: breaker=websocket" in m for m in messages)
        assert any("breaker=api:/api/v1/history" in m for m in messages)
        assert all(ADMIN not in m for m in messages)
        assert all("forged" not in m and "\n" not in m and "\x1b" not in m for m in messages)


@pytest.mark.parametrize(
    ("method", "url"), [("POST", "/health/circuit-breakers/websocket/reset"), ("GET", "/health/websocket/connections")]
)
async def test_admin_routes_are_refused_without_admin_token(
    asgi_server: Callable[..., Awaitable[ServedApp]], method: str, url: str
) -> None:
    async with serve_runtime(asgi_server, ADMIN_TOKEN="") as (runtime, client):
        response = await client.request(method, url, headers={"Authorization": "Bearer anything-at-all-here"})
        assert response.status_code == 403 and response.json()["error"] == "admin_disabled"
        assert "ADMIN_TOKEN" in response.json()["message"]


async def test_metrics_are_prometheus_text_with_the_promised_series(
    asgi_server: Callable[..., Awaitable[ServedApp]],
) -> None:
    async with serve_runtime(asgi_server) as (runtime, client):
        await until(live(runtime))
        await client.get("/health")
        text = (await client.get("/metrics")).text
        for series in (
            "deriv_status_relay_connections_active ",
            "deriv_status_relay_connections_max ",
            'deriv_status_upstream_state{state="connected"} 1.0',
            'deriv_status_circuit_breaker_state{breaker="websocket",state="closed"} 1.0',
            "deriv_status_circuit_breaker_transitions_total",
            "deriv_status_upstream_reconnects_total",
            "deriv_status_ticks_received_total",
            "deriv_status_backfill_gaps_total 0.0",
            "deriv_status_ticks_relayed_total",
            "deriv_status_ticks_dropped_total",
            "deriv_status_upstream_outage_seconds_bucket",
            "deriv_status_health_check_duration_seconds_bucket",
        ):
            assert series in text, series


async def test_manual_retry_endpoint_coalesces(asgi_server: Callable[..., Awaitable[ServedApp]]) -> None:
    async with serve_runtime(asgi_server) as (runtime, client):
        await until(live(runtime))
        already = await client.post("/api/v1/retry")
        assert already.json()["status"] == "already_connected"
        sim = runtime.simulator
        assert sim is not None
        sim.refuse_connections(60)
        await sim.drop_all()
        await until(lambda: status_view.upstream_status(runtime)["state"] == "circuit_open")
        sim.refuse_connections(0)
        responses = await asyncio.gather(*(client.post("/api/v1/retry") for _ in range(10)))
        statuses = sorted(r.json()["status"] for r in responses)
        assert statuses.count("started") == 1
        await until(live(runtime))


async def test_public_health_shows_relay_counts_and_only_the_admin_sees_clients(
    asgi_server: Callable[..., Awaitable[ServedApp]],
) -> None:
    async with serve_runtime(asgi_server) as (runtime, client):
        await until(live(runtime))
        ws_url = str(client.base_url).replace("http://", "ws://").rstrip("/") + "/api/v1/ws"
        async with connect(ws_url) as ws:
            local_port = str(ws.local_address[1])
            await until(lambda: runtime.relay.snapshot()["active"] == 1)
            public = await client.get("/health/websocket")
            assert public.json()["relay"]["active"] == 1
            assert "peer" not in public.text and local_port not in public.text
            assert "connections" not in public.json()["relay"]
            assert local_port not in (await client.get("/api/v1/status")).text
            assert local_port not in (await client.get("/health/detailed")).text
            assert local_port not in (await client.get("/metrics")).text

            url = "/health/websocket/connections"
            await assert_admin_only(client, "GET", url)
            detail = await client.get(url, headers={"Authorization": f"Bearer {ADMIN}"})
            assert detail.status_code == 200
            [entry] = detail.json()["connections"]
            assert entry["peer"].endswith(f":{local_port}")


async def test_retry_on_a_stopped_service_is_503(asgi_server: Callable[..., Awaitable[ServedApp]]) -> None:
    runtime = Runtime(load_settings({"DERIV_SYMBOLS": "R_50"}))
    served = await asgi_server(create_api(runtime))  # never started
    async with httpx.AsyncClient(base_url=served.http_url, timeout=5.0) as client:
        response = await client.post("/api/v1/retry")
        assert response.status_code == 503 and response.json()["status"] == "stopped"


async def test_openapi_describes_exactly_the_http_routes(asgi_server: Callable[..., Awaitable[ServedApp]]) -> None:
    runtime = Runtime(load_settings({"DERIV_SYMBOLS": "R_50,R_100"}))
    app = create_api(runtime)
    served = await asgi_server(app)
    async with httpx.AsyncClient(base_url=served.http_url, timeout=5.0) as client:
        spec = (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.1")
    described = {(path, method.upper()) for path, item in spec["paths"].items() for method in item}
    routes = {(r.path_format, m) for r in app.routes if isinstance(r, Route) for m in r.methods or () if m != "HEAD"}
    assert described == routes
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            assert operation["responses"], (path, method)


async def test_the_history_routes_do_what_openapi_documents_of_their_bounds(
    asgi_server: Callable[..., Awaitable[ServedApp]],
) -> None:
    async with serve_runtime(asgi_server) as (runtime, client):
        spec = (await client.get("/openapi.json")).json()
        for path, param, echoed in (
            ("/api/v1/history", "days", "days"),
            ("/api/v1/incidents", "limit", "limit"),
            ("/api/v1/transitions", "limit", "limit"),
        ):
            [schema] = [p["schema"] for p in spec["paths"][path]["get"]["parameters"] if p["name"] == param]
            assert (await client.get(path)).json()[echoed] == schema["default"], path
            assert (await client.get(path, params={param: schema["maximum"]})).status_code == 200, path
            too_many = await client.get(path, params={param: schema["maximum"] + 1})
            assert too_many.status_code == 400 and param in too_many.text, path
            assert (await client.get(path, params={param: schema["minimum"] - 1})).status_code == 400, path


async def test_one_client_over_its_rate_gets_429_and_health_stays_open(
    asgi_server: Callable[..., Awaitable[ServedApp]],
) -> None:
    # One token a minute: the burst is all this client gets during the test.
    env = {"API_RATE_LIMIT_PER_S": "0.0166", "API_RATE_LIMIT_BURST": "20"}
    async with serve_runtime(asgi_server, **env) as (runtime, client):
        responses = []
        for _ in range(8):  # 400 requests, 50 at once
            responses += await asyncio.gather(*(client.get("/api/v1/status") for _ in range(50)))
        codes = [r.status_code for r in responses]
        assert codes.count(200) == 20 and codes.count(429) == 380
        refused = next(r for r in responses if r.status_code == 429)
        assert int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"] == "rate_limited"
        for path in ("/health", "/health/detailed", "/livez", "/readyz", "/metrics"):
            assert (await client.get(path)).status_code in (200, 503), path
        assert all(b.state == "closed" for b in runtime.breakers.snapshots())


async def test_alerts_and_history_tell_of_the_same_incidents(asgi_server: Callable[..., Awaitable[ServedApp]]) -> None:
    receiver = Receiver()
    hook = await asgi_server(receiver.app())
    env = {"ALERT_WEBHOOK_URL": f"{hook.http_url}/hook", "ALERT_AFTER_SECONDS": "0"}
    async with serve_runtime(asgi_server, **env) as (runtime, client):
        await until(live(runtime))
        sim = runtime.simulator
        assert sim is not None
        sim.refuse_connections(60)
        await sim.drop_all()
        await until(lambda: any(a["event"] == "upstream_down" for a in receiver.accepted))
        sim.refuse_connections(0)
        runtime.retry_now()
        await until(live(runtime))
        await until(lambda: any(a["event"] == "upstream_recovered" for a in receiver.accepted))
        assert await runtime.alerts.wait_idle(WAIT_S) and await runtime.store.wait_idle(WAIT_S)
        incidents = {i["id"]: i for i in (await client.get("/api/v1/incidents")).json()["incidents"]}
        assert runtime.incidents.open_incidents == []
    # One tracker feeds both: each alert is about an incident the history lists, told alike.
    alerts = receiver.accepted
    assert alerts and {a["incident_id"] for a in alerts} <= set(incidents)
    for alert in alerts:
        incident = incidents[alert["incident_id"]]
        assert (alert["component"], alert["cause"], alert["error_code"]) == (
            incident["component"],
            incident["cause"],
            incident["error_code"],
        )
        assert alert["started_at"] == incident["started_at"]
        if alert["status"] == "resolved":
            assert (alert["recovery"], alert["ended_at"]) == (incident["recovery"], incident["ended_at"])
    upstream = [a for a in alerts if a["component"] == "upstream"]
    assert [a["event"] for a in upstream] == ["upstream_down", "upstream_recovered"]
    assert upstream[0]["error_code"] == "ConnectionLost"  # the drop opened it


async def test_allowed_origins_setting_governs_the_relay(asgi_server: Callable[..., Awaitable[ServedApp]]) -> None:
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    async with serve_runtime(asgi_server, ALLOWED_ORIGINS="https://status.example.com") as (runtime, client):
        ws_url = str(client.base_url).replace("http://", "ws://").rstrip("/") + "/api/v1/ws"
        async with connect(ws_url, origin="https://status.example.com", open_timeout=5) as ws:  # type: ignore[arg-type]
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "status"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(ws_url, origin="https://evil.example", open_timeout=5):  # type: ignore[arg-type]
                pass
        assert refused.value.response.status_code == 403
        # The page's own origin (same host) stays allowed next to the listed ones.
        async with connect(ws_url, origin=str(client.base_url).rstrip("/"), open_timeout=5) as ws:  # type: ignore[arg-type]
            assert json.loads(await asyncio.wait_for(ws.recv(), 5))["type"] == "status"
