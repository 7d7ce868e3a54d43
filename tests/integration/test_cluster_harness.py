"""The cluster harness itself: real redis-server, simulator, three members and haproxy.

haproxy balances HTTP and the relay over the members and health-checks ``/readyz``; a
member killed with SIGKILL is marked DOWN and new connections land on the others; a
stopped (SIGSTOP) member is marked DOWN too and its open relay sessions are cut, so a
client that resumes lands elsewhere; everything stops when the block ends. These hold
with or without the cluster wiring (``REDIS_URL`` read by the members).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.app_process import group_processes
from tests.cluster_harness import Cluster, MissingBinary, RelayClient, cluster

WAIT_S = 20.0


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    try:
        with cluster(tmp_path_factory.mktemp("cluster"), members=3, time_scale=10) as started:
            yield started
    except MissingBinary as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        pytest.skip(str(exc))


def served_by(c: Cluster, requests: int) -> list[str]:
    # A new connection per request: what haproxy balances is connections.
    return [httpx.get(f"{c.url}/readyz", timeout=5).headers["x-served-by"] for _ in range(requests)]


async def collect(client: RelayClient, until_ticks: int, timeout_s: float = WAIT_S) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(client.run(stop))
    try:
        async with asyncio.timeout(timeout_s):
            while sum(len(t) for t in client.ticks.values()) < until_ticks:  # noqa: ASYNC110 - polling a counter
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


def test_haproxy_balances_http_and_the_relay_over_every_ready_member(running: Cluster) -> None:
    assert running.server_states() == {"s1": "UP", "s2": "UP", "s3": "UP"}
    assert sorted(set(served_by(running, 6))) == ["s1", "s2", "s3"]
    clients = [RelayClient(running.ws_url, ["R_100"]) for _ in range(3)]

    async def three() -> None:
        await asyncio.gather(*(collect(c, 3) for c in clients))

    asyncio.run(three())
    assert {served for c in clients for _, served in c.connections} == {"s1", "s2", "s3"}
    for client in clients:
        epochs = [e for e, *_ in client.ticks["R_100"]]
        assert epochs == sorted(set(epochs))
    # Every member uses the one standalone simulator: without the cluster wiring each has
    # its own upstream connection, with it only the leader has one.
    wired = any(role in ("leader", "follower") for role in running.roles().values())
    assert running.stats()["connection_count"] == (1 if wired else 3)


def test_a_killed_member_is_marked_down_and_new_connections_land_on_the_others(running: Cluster) -> None:
    victim = running.members[1]
    victim.kill()
    running.wait_server_state(victim, "DOWN", WAIT_S)
    assert set(served_by(running, 6)) == {"s1", "s3"}
    client = RelayClient(running.ws_url, ["R_100"])
    asyncio.run(collect(client, 2))
    assert {served for _, served in client.connections} <= {"s1", "s3"}
    running.restart(victim)
    running.wait_server_state(victim, "UP", WAIT_S)
    assert "s2" in served_by(running, 6)


def test_a_paused_member_loses_its_relay_sessions_and_the_client_resumes_elsewhere(running: Cluster) -> None:
    async def scenario() -> RelayClient:
        # Two connections make sure one lands on s1 (leastconn, then the least loaded).
        client = RelayClient(running.ws_url, ["R_100"])
        stop = asyncio.Event()
        task = asyncio.create_task(client.run(stop))
        try:
            async with asyncio.timeout(WAIT_S):
                while len(client.ticks.get("R_100", [])) < 2:  # noqa: ASYNC110 - polling a counter
                    await asyncio.sleep(0.05)
                first = running.member(client.connections[0][1])
                first.pause()
                try:
                    await asyncio.to_thread(running.wait_server_state, first, "DOWN", WAIT_S)
                    while len(client.connections) < 2 or len(client.ticks["R_100"]) < 4:  # noqa: ASYNC110
                        await asyncio.sleep(0.05)
                finally:
                    first.resume()
            await asyncio.to_thread(running.wait_server_state, first, "UP", WAIT_S)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
        return client

    client = asyncio.run(scenario())
    first, second = client.connections[0][1], client.connections[1][1]
    assert first != second
    epochs = [e for e, *_ in client.ticks["R_100"]]
    # Resume by epoch: the second member replays what the first did not deliver, never twice.
    assert len(epochs) == len(set(epochs))


def test_leaving_the_block_stops_every_process(tmp_path: Path) -> None:
    try:
        with cluster(tmp_path, members=1) as small:
            groups = [p.pid for p in (small.simulator, small.haproxy, *small.members) if p.process]
            if small.redis is not None:
                groups.append(small.redis.pid)
    except MissingBinary as exc:
        pytest.skip(str(exc))
    assert [g for g in groups if group_processes(g)] == []
