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
import redis

from backend_core.cluster.keys import ClusterKeys
from deploy.cluster import MissingBinary
from tests.app_process import group_processes
from tests.cluster_harness import Cluster, Member, RelayClient, cluster
from tests.helpers import blocking_until, until

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
        await until(
            lambda: sum(len(t) for t in client.ticks.values()) >= until_ticks, timeout_s, what=f"{until_ticks} ticks"
        )
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
            await until(lambda: len(client.ticks.get("R_100", [])) >= 2, WAIT_S, what="the first ticks")
            first = running.member(client.connections[0][1])
            first.pause()
            try:
                await asyncio.to_thread(running.wait_server_state, first, "DOWN", WAIT_S)
                await until(
                    lambda: len(client.connections) >= 2 and len(client.ticks["R_100"]) >= 4,
                    WAIT_S,
                    what="ticks over a second connection",
                )
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


def leader_term(member: Member) -> int:
    """The lease term this member has seen, from /health/detailed's ``cluster:leader``."""
    body = httpx.get(f"{member.url}/health/detailed", timeout=5).json()
    return int(body["checks"]["cluster:leader"][0]["term"])


def metric(member: Member, name: str) -> float:
    for line in httpx.get(f"{member.url}/metrics", timeout=5).text.splitlines():
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in {member.server}'s /metrics")


def status_terms(c: Cluster) -> list[int]:
    """The lease term of every entry in the cluster's status stream, oldest first."""
    assert c.redis_url is not None
    client = redis.Redis.from_url(c.redis_url, socket_timeout=5)
    try:
        return [int(fields[b"term"]) for _, fields in client.xrange(ClusterKeys("harness").status)]
    finally:
        client.close()


def test_a_leader_stopped_past_its_lease_is_replaced_and_fenced_off_and_follows_after(running: Cluster) -> None:
    # SIGSTOP the leader process: a follower takes the lease (a new term); when the stopped
    # one runs again it writes nothing more into the cluster's log and follows, and relay
    # clients on the other members see every upstream tick once.
    blocking_until(lambda: running.leader() is not None, WAIT_S, what="a leader")
    old = running.leader()
    assert old is not None
    others = [m for m in running.members if m is not old and m.alive]
    blocking_until(lambda: all(m.role() == "follower" for m in others), WAIT_S, what="the others follow")
    old_term = leader_term(old)
    clients = [RelayClient(f"ws://127.0.0.1:{m.port}/api/v1/ws", ["R_100"]) for m in others]

    def received() -> int:
        return min(len(c.ticks.get("R_100", [])) for c in clients)

    async def scenario() -> Member:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(c.run(stop)) for c in clients]
        try:
            await until(lambda: received() >= 3, WAIT_S, what="the first ticks")
            old.pause()
            try:
                await asyncio.to_thread(
                    blocking_until, lambda: any(m.role() == "leader" for m in others), WAIT_S, what="a new leader"
                )
                before = received()
                await until(lambda: received() >= before + 10, WAIT_S, what="the new leader's ticks")
            finally:
                old.resume()
            await asyncio.to_thread(
                blocking_until, lambda: old.role() == "follower", WAIT_S, what="the old leader follows"
            )
            after = received()
            await until(lambda: received() >= after + 5, WAIT_S, what="ticks with the old leader following")
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
        return next(m for m in others if m.role() == "leader")

    new = asyncio.run(scenario())
    new_term = leader_term(new)
    assert new_term > old_term
    assert leader_term(old) == new_term  # the old leader follows the new term
    assert metric(old, 'deriv_status_cluster_role{role="follower"}') == 1.0
    # Fenced: once the new term wrote, no entry of the old term comes after it.
    terms = status_terms(running)
    assert old_term not in terms[terms.index(new_term) :]
    expected = running.upstream_epochs("R_100")
    for client in clients:
        got = [e for e, *_ in client.ticks["R_100"]]
        assert client.lost_and_duplicated("R_100", got[0], got[-1], expected) == (0, 0)
        assert len(client.connections) == 1  # a follower's relay does not depend on the leader process


def test_leaving_the_block_stops_every_process(tmp_path: Path) -> None:
    try:
        with cluster(tmp_path, members=1) as small:
            groups = [p.pid for p in (small.simulator, small.haproxy, *small.members) if p.process]
            if small.redis is not None:
                groups.append(small.redis.pid)
    except MissingBinary as exc:
        pytest.skip(str(exc))
    assert [g for g in groups if group_processes(g)] == []
