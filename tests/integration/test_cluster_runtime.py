"""Runtimes as one cluster: three members on a real redis-server and one shared simulator.

Every member is a whole Runtime (REDIS_URL set) served over HTTP; what a follower's hub
holds is what its relay clients and pages see, and its /api/v1/status is what users read.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from backend_core.api import create_api
from backend_core.breakers.core import BreakerState
from backend_core.breakers.registry import API_PREFIX
from backend_core.cluster.coordinator import Role
from backend_core.config import load_settings
from backend_core.deriv.sim.server import DerivSimulator
from backend_core.events import LinkState
from backend_core.runtime import Runtime
from rxapp.cluster_view import cluster_rows
from tests import helpers
from tests.helpers import assert_contiguous
from tests.integration.conftest import ServedApp
from tests.integration.redis_server import RedisServer, redis_server

SYMBOL = "1HZ100V"  # one tick per simulated second: consecutive epochs
WAIT_S = 20.0


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as running:
        yield running


@pytest.fixture
async def simulator() -> AsyncIterator[DerivSimulator]:
    sim = DerivSimulator("127.0.0.1", 0, time_scale=10)
    await sim.start()
    try:
        yield sim
    finally:
        await sim.stop()


class Member:
    def __init__(self, runtime: Runtime, client: httpx.AsyncClient) -> None:
        self.runtime = runtime
        self.client = client

    @property
    def role(self) -> Role | None:
        return self.runtime.cluster.role if self.runtime.cluster is not None else None

    def epochs(self) -> list[int]:
        return [t.epoch for t in self.runtime.hub.ticks_since(SYMBOL, 0, 10_000)]


@pytest.fixture
async def cluster(
    redis: RedisServer, simulator: DerivSimulator, asgi_server: Callable[..., Awaitable[ServedApp]]
) -> AsyncIterator[Callable[[str], Awaitable[Member]]]:
    db = f"sqlite:///{tempfile.mkdtemp(prefix='deriv-cluster-test-')}/status.db"
    stack = contextlib.AsyncExitStack()

    async def join(name: str, **env: str) -> Member:
        settings = load_settings(
            {
                "DERIV_WS_URL": simulator.url,
                "DERIV_SYMBOLS": f"{SYMBOL},R_50",
                "DERIV_PING_INTERVAL": "0.5",
                "WEBSOCKET_CONNECTION_TIMEOUT": "1",
                "REDIS_URL": redis.url,
                "CLUSTER_NAME": "test",
                "CLUSTER_LEASE_TTL": "2",
                "INSTANCE_ID": name,
                "DB_URL": db,
                **env,
            }
        )
        runtime = Runtime(settings)
        await runtime.start()
        stack.push_async_callback(runtime.stop)
        served = await asgi_server(create_api(runtime))
        client = await stack.enter_async_context(httpx.AsyncClient(base_url=served.http_url, timeout=5.0))
        return Member(runtime, client)

    async with stack:
        yield join


async def until(predicate: Callable[[], Any], timeout: float = WAIT_S) -> None:
    """tests.helpers.until with this file's longer bound (three runtimes on two cores)."""
    await helpers.until(predicate, timeout)


async def leader_first(cluster: Any, leader: str, *others: str, ticks: int = 5, **env: str) -> list[Member]:
    """``leader`` joins and leads, then ``others`` join; every hub has more than ``ticks`` ticks."""
    first = await cluster(leader, **env)
    await until(lambda: first.role is Role.LEADER)
    members = [first, *[await cluster(name, **env) for name in others]]
    await until(lambda: all(len(m.epochs()) > ticks for m in members))
    return members


async def test_one_upstream_link_for_three_members_and_every_hub_gets_the_same_ticks(
    cluster: Any, simulator: DerivSimulator
) -> None:
    a = await cluster("a")
    await until(lambda: a.role is Role.LEADER and len(a.epochs()) > 5)
    b = await cluster("b")
    c = await cluster("c")
    await until(lambda: len(b.epochs()) > 30 and len(c.epochs()) > 30)
    assert (b.role, c.role) == (Role.FOLLOWER, Role.FOLLOWER)
    assert simulator.stats().connection_count == 1
    newest = min(b.epochs()[-1], c.epochs()[-1])
    await until(lambda: a.epochs()[-1] >= newest)
    window = [e for e in b.epochs() if e <= newest]
    assert [e for e in c.epochs() if window[0] <= e <= newest] == window
    assert [e for e in a.epochs() if window[0] <= e <= newest] == window
    assert_contiguous(window)
    # A follower shows the leader's upstream state (it has no link of its own).
    body = (await b.client.get("/api/v1/status")).json()
    assert body["upstream"]["state"] == LinkState.CONNECTED.value
    detailed = (await b.client.get("/health/detailed")).json()
    assert detailed["checks"]["cluster:mode"][0]["observedValue"] == "follower"
    assert detailed["checks"]["cluster:leader"][0]["observedValue"] == "a"
    assert detailed["checks"]["cluster:members"][0]["observedValue"] == 3
    assert detailed["checks"]["cluster:mode"][0]["instance"] == "b"
    assert detailed["checks"]["cluster:leader"][0]["lastSeenS"] >= 0
    assert isinstance(detailed["checks"]["cluster:followerLag"][0]["observedValue"], int)
    metrics = (await b.client.get("/metrics")).text
    assert 'deriv_status_cluster_role{role="follower"} 1.0' in metrics
    # The follower's own manager is stopped; the link state it exports is the leader's.
    assert 'deriv_status_upstream_state{state="connected"} 1.0' in metrics
    assert "deriv_status_cluster_follower_lag_seconds " in metrics
    assert "deriv_status_cluster_lease_renew_seconds " in metrics
    # The page's cluster section reads the same checks.
    rows = {r["key"]: r for r in cluster_rows((await b.runtime.health_report()).results)}
    assert (rows["role"]["word"], rows["role"]["value"]) == ("Follower", "b")
    assert rows["leader"]["value"].startswith("a · term ")
    assert rows["members"]["value"] == "3 live: a (leader), b (follower), c (follower)"


async def test_stopping_the_leader_hands_over_with_no_tick_lost_or_repeated_at_a_follower(
    cluster: Any, simulator: DerivSimulator
) -> None:
    a, b, c = await leader_first(cluster, "a", "b", "c", ticks=20)
    await a.runtime.stop()
    await until(lambda: Role.LEADER in (b.role, c.role), timeout=5.0)
    handed_over_at = c.epochs()[-1]
    await until(lambda: c.epochs()[-1] > handed_over_at + 30)
    assert_contiguous(c.epochs())
    assert_contiguous(b.epochs())
    assert simulator.stats().connection_count == 1


async def test_retries_spread_over_three_members_make_one_upstream_attempt(
    cluster: Any, simulator: DerivSimulator
) -> None:
    members = await leader_first(cluster, "a", "b", "c")
    a = members[0]
    simulator.refuse_connections(60)
    await simulator.drop_all()
    # The leader's own attempts fail until its breaker opens (30 s): from then on, no
    # attempt is scheduled, so every attempt counted below is a manual one.
    await until(lambda: a.runtime.upstream_snapshot().state == LinkState.CIRCUIT_OPEN)  # type: ignore[union-attr]
    before = simulator.stats().handshake_attempts
    answers = await asyncio.gather(*(members[i % 3].client.post("/api/v1/retry") for i in range(20)))
    assert all(r.status_code < 500 for r in answers)
    await until(lambda: simulator.stats().handshake_attempts > before, timeout=5)
    await asyncio.sleep(1.5)  # any further attempt would come within one XREAD of the leader
    assert simulator.stats().handshake_attempts - before == 1


async def test_an_admin_reset_on_one_follower_resets_that_breaker_on_every_member(cluster: Any) -> None:
    members = await leader_first(cluster, "a", "b", "c")
    route = "/api/v1/incidents"
    for member in members:  # each instance's own "api:" breaker, open
        breaker = member.runtime.breakers.api(route)
        for _ in range(breaker.config.failure_threshold):
            breaker.record_failure(breaker.acquire())
        assert breaker.state is BreakerState.OPEN
    members[1].runtime.reset_breaker(API_PREFIX + route)
    await until(lambda: all(m.runtime.breakers.api(route).state is BreakerState.CLOSED for m in members))


async def test_without_redis_every_member_degrades_to_its_own_link_and_rejoins_after(
    cluster: Any, redis: RedisServer, simulator: DerivSimulator
) -> None:
    a, b = await leader_first(cluster, "a", "b", ticks=10)
    redis.pause()
    try:
        await until(lambda: (a.role, b.role) == (Role.DEGRADED, Role.DEGRADED), timeout=15)
        await until(lambda: simulator.stats().connection_count == 2)
        health = (await b.client.get("/health/detailed")).json()
        assert health["status"] == "warn"
        assert "cluster degraded" in health["output"]
        summary = (await b.client.get("/health")).json()
        assert summary["status"] == "warn" and "cluster degraded" in summary["output"]
        degraded_at = b.epochs()[-1]
        await until(lambda: b.epochs()[-1] > degraded_at + 10)  # b serves its own ticks
    finally:
        redis.resume()
    await until(lambda: sorted([a.role, b.role]) == [Role.FOLLOWER, Role.LEADER])  # type: ignore[type-var]
    await until(lambda: simulator.stats().connection_count == 1)
    assert_contiguous(a.epochs())
    assert_contiguous(b.epochs())


async def test_one_outage_seen_by_three_members_is_one_incident_in_the_shared_history(
    cluster: Any, simulator: DerivSimulator
) -> None:
    quick = {"WEBSOCKET_CB_RECOVERY_TIMEOUT": "1"}
    members = await leader_first(cluster, "a", "b", "c", **quick)
    a = members[0]
    simulator.refuse_connections(2)
    await simulator.drop_all()
    await until(lambda: all(m.runtime.upstream_snapshot().state != LinkState.CONNECTED for m in members))  # type: ignore[union-attr]
    await until(lambda: all(m.runtime.upstream_snapshot().state == LinkState.CONNECTED for m in members))  # type: ignore[union-attr]
    for m in members:
        assert await m.runtime.store.wait_idle(5.0)
    incidents = await a.runtime.store.incidents(component="upstream")
    assert len(incidents) == 1


async def test_a_new_leader_inherits_the_open_websocket_breaker_and_waits_for_it(
    cluster: Any, simulator: DerivSimulator
) -> None:
    a, b = await leader_first(cluster, "a", "b")
    simulator.refuse_connections(60)
    await simulator.drop_all()
    await until(lambda: str(a.runtime.breakers.websocket.snapshot().state) == "open")
    await until(lambda: str(b.runtime.breakers.websocket.snapshot().state) == "open")  # mirrored
    await a.runtime.stop()
    await until(lambda: b.role is Role.LEADER, timeout=5.0)
    before = simulator.stats().handshake_attempts
    await asyncio.sleep(1.5)
    assert str(b.runtime.breakers.websocket.snapshot().state) == "open"
    assert simulator.stats().handshake_attempts == before  # no attempt before the recorded open_until
