"""A Deriv deploy (the simulator's ``deploy`` fault: it announces, then drops) is maintenance, not an outage.

The whole Runtime with its embedded simulator under uvicorn, and a real webhook receiver:
the alerts say ``maintenance_started`` / ``maintenance_ended`` (never ``upstream_down``),
the history keeps a planned incident and a blue (maintenance) day with no down seconds,
and /metrics and /api/v1/status tell the same while it lasts.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tests.helpers import WAIT_S, until
from tests.integration.conftest import ServedApp
from tests.integration.test_alerts import Receiver
from tests.integration.test_api import live, serve_runtime


def events(receiver: Receiver) -> list[str]:
    return [a["event"] for a in receiver.accepted if a["component"] == "upstream"]


async def test_a_deriv_deploy_is_maintenance_with_no_outage_alert(
    asgi_server: Callable[..., Awaitable[ServedApp]],
) -> None:
    receiver = Receiver()
    hook = await asgi_server(receiver.app())
    env = {
        "ALERT_WEBHOOK_URL": f"{hook.http_url}/hook",
        "ALERT_AFTER_SECONDS": "0.5",
        # The breaker stays closed however many attempts the refusal below fails.
        "WEBSOCKET_CB_FAILURE_THRESHOLD": "1000",
    }
    async with serve_runtime(asgi_server, **env) as (runtime, client):
        await until(live(runtime))
        sim = runtime.simulator
        assert sim is not None
        # Deriv pushes website_status "updating", drops every connection, and is still
        # deploying for a while: the reconnects are refused until it is done.
        sim.refuse_connections(60)
        await sim.deploy(close_after_s=0.3)
        await until(lambda: "maintenance_started" in events(receiver), WAIT_S)

        status = (await client.get("/api/v1/status")).json()["upstream"]
        assert status["maintenance"] is True and status["state"] != "connected"
        metrics = (await client.get("/metrics")).text
        assert 'deriv_status_upstream_state{state="maintenance"} 1.0' in metrics
        assert 'deriv_status_upstream_state{state="reconnecting"} 0.0' in metrics
        today = (await client.get("/api/v1/history", params={"days": 1})).json()["bars"][-1]
        assert today["worst_status"] == "maintenance" and today["down_s"] == 0.0

        sim.refuse_connections(0)
        runtime.retry_now()
        await until(live(runtime))
        await until(lambda: "maintenance_ended" in events(receiver), WAIT_S)
        assert await runtime.alerts.wait_idle(WAIT_S) and await runtime.store.wait_idle(WAIT_S)
        assert (await client.get("/api/v1/status")).json()["upstream"]["maintenance"] is False
        incidents = (await client.get("/api/v1/incidents", params={"component": "upstream"})).json()["incidents"]

    assert events(receiver) == ["maintenance_started", "maintenance_ended"]  # no upstream_down page
    started, ended = (a for a in receiver.accepted if a["component"] == "upstream")
    assert started["planned"] is True and started["cause"] == "planned_maintenance"
    assert started["summary"].startswith("Market data feed in planned maintenance for")
    assert ended["recovered"] is True and started["incident_id"] == ended["incident_id"]
    [incident] = [i for i in incidents if i["id"] == started["incident_id"]]
    assert incident["planned"] is True and incident["cause"] == "planned_maintenance"
    assert incident["error_code"] == "SiteUpdating" and incident["ended_at"] is not None
