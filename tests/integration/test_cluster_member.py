"""Cluster members over a real redis-server: one link per cluster, no tick lost on failover.

The upstream is a fake market whose epochs advance with real time (like Deriv's 1-second
symbols, faster); a member's link, when started, backfills every epoch after the seed it
is given and then publishes live, as the Deriv manager does with ``ticks_history``. Each
member has its own in-memory hub; what a follower's hub holds is what its relay clients
and pages would see.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar

import pytest
from redis.asyncio import Redis

from backend_core.clock import SystemClock
from backend_core.cluster.coordinator import LeaseTiming, Role
from backend_core.cluster.keys import ClusterKeys
from backend_core.cluster.member import ClusterMember
from backend_core.cluster.ticklog import FencedOut
from backend_core.cluster.wiring import cluster_check
from backend_core.events import LinkState, Tick, UpstreamSnapshot
from backend_core.hub import Closed, Dropped, InMemoryHub
from tests.helpers import WAIT_S, assert_contiguous, until
from tests.integration.redis_server import RedisServer, redis_server

SYMBOL = "R_50"
TIMING = LeaseTiming(ttl_s=1.0, degrade_after_s=2.0)
CLOCK = SystemClock()


class Market:
    """Epochs advance 50 a second from a start; every epoch has a tick."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def newest(self) -> int:
        return 1_000 + int((time.monotonic() - self.t0) * 50)


class FakeLink:
    """A member's upstream link: backfill after the seed, then live; counts what runs."""

    running: ClassVar[set[str]] = set()

    def __init__(self, name: str, market: Market) -> None:
        self.name = name
        self.market = market
        self.member: ClusterMember | None = None
        self.task: asyncio.Task[None] | None = None
        self.starts = 0
        #: While set, the upstream sends this member nothing (a slow connection); what it
        #: missed comes as backfill once it is cleared.
        self.held = False

    async def start_link(self, seed_epochs: Mapping[str, int]) -> None:
        self.starts += 1
        FakeLink.running.add(self.name)
        self.task = asyncio.create_task(self._run(seed_epochs.get(SYMBOL, 0)))

    async def stop_link(self) -> None:
        FakeLink.running.discard(self.name)
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    async def _run(self, seed: int) -> None:
        assert self.member is not None
        sink = self.member.sink
        sink.publish_status(UpstreamSnapshot(LinkState.CONNECTED, time.time(), f"ws://{self.name}", True))
        last = seed if seed else self.market.newest() - 1
        while True:
            newest = self.market.newest()
            if self.held:
                await asyncio.sleep(0.01)
                continue
            for epoch in range(last + 1, newest + 1):
                sink.publish_tick(Tick(SYMBOL, epoch, 100 + epoch / 1000, 3, backfill=epoch < newest))
            last = max(last, newest)
            await asyncio.sleep(0.01)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as running:
        yield running


@pytest.fixture
async def make_member(server: RedisServer) -> AsyncIterator[Callable[[str, Market], Any]]:
    FakeLink.running = set()
    made: list[tuple[ClusterMember, Any]] = []

    async def make(name: str, market: Market, timing: LeaseTiming = TIMING) -> ClusterMember:
        redis = Redis.from_url(server.url, socket_timeout=2.5, socket_connect_timeout=1)
        link = FakeLink(name, market)
        member = ClusterMember(
            redis,
            ClusterKeys("t"),
            name,
            [SYMBOL],
            InMemoryHub(CLOCK, ring_size=5000),
            link,
            CLOCK,
            timing=timing,
            ring_size=5000,
        )
        link.member = member
        made.append((member, redis))
        await member.start()
        async with asyncio.timeout(WAIT_S):
            await member.ready.wait()
        return member

    yield make
    for member, redis in made:
        try:
            async with asyncio.timeout(10):
                await member.stop()
        except TimeoutError:
            for task in asyncio.all_tasks():
                task.print_stack(limit=8)
            raise
        await redis.aclose()


def epochs(member: ClusterMember) -> list[int]:
    latest = member.hub.latest(SYMBOL)
    return [t.epoch for t in member.hub.ticks_since(SYMBOL, 0, 10_000)] if latest else []


async def leader_and_follower(make_member: Any) -> tuple[Market, ClusterMember, ClusterMember]:
    """Member a leads, member b follows and has received ticks from a's link."""
    market = Market()
    a = await make_member("a", market)
    await until(lambda: a.role is Role.LEADER)
    b = await make_member("b", market)
    await until(lambda: len(epochs(b)) > 20)
    return market, a, b


async def both_degraded(a: ClusterMember, b: ClusterMember) -> None:
    await until(lambda: (a.role, b.role) == (Role.DEGRADED, Role.DEGRADED), TIMING.degrade_after_s + 5)


async def takes_over_with_no_tick_lost(b: ClusterMember, market: Market) -> None:
    """``b`` leads within the TTL (+ slack), runs the only link and has every epoch since."""
    await until(lambda: b.role is Role.LEADER, TIMING.ttl_s + 2)
    taken_at = market.newest()
    await until(lambda: epochs(b)[-1] > taken_at + 50)
    assert FakeLink.running == {"b"}
    assert_contiguous(epochs(b))


async def test_one_leader_runs_the_only_link_and_followers_get_its_ticks_and_status(make_member: Any) -> None:
    market = Market()
    a = await make_member("a", market)
    await until(lambda: a.role is Role.LEADER)
    b = await make_member("b", market)
    c = await make_member("c", market)
    await until(lambda: len(epochs(b)) > 20 and len(epochs(c)) > 20)
    assert FakeLink.running == {"a"}
    assert (b.role, c.role) == (Role.FOLLOWER, Role.FOLLOWER)
    assert b.snapshot().leader == "a"
    status = b.hub.status()
    assert status is not None and status.url == "ws://a"
    assert_contiguous(epochs(b))


async def test_a_graceful_stop_hands_over_with_no_tick_lost_or_repeated(make_member: Any) -> None:
    market, a, b = await leader_and_follower(make_member)
    await a.stop()
    await takes_over_with_no_tick_lost(b, market)


async def test_a_crashed_leader_is_replaced_after_the_ttl_with_no_tick_lost(make_member: Any) -> None:
    market, a, b = await leader_and_follower(make_member)
    # kill -9: the loops and the link stop, nothing is released.
    a._stopped = True
    for task in [a._main, *a._loops]:
        assert task is not None
        task.cancel()
    a._grant = None
    await a._link.stop_link()  # type: ignore[attr-defined]
    await takes_over_with_no_tick_lost(b, market)


async def test_a_refusal_of_a_write_sent_under_an_older_grant_does_not_demote_the_leader(make_member: Any) -> None:
    # A flush under way when the member renewed into a new grant (a lease it won again)
    # comes back refused: that says nothing about the lease it holds now.
    market, a, b = await leader_and_follower(make_member)
    send = a.writer.flush
    refused = asyncio.Event()

    async def refused_after_a_new_grant(token: str) -> Any:
        assert a._grant is not None
        a._grant = dataclasses.replace(a._grant)  # the grant it holds by the time the reply comes
        a.writer.flush = send  # type: ignore[method-assign]
        refused.set()
        raise FencedOut("the lease is held by another member")

    a.writer.flush = refused_after_a_new_grant  # type: ignore[method-assign]
    await asyncio.wait_for(refused.wait(), WAIT_S)
    refused_at = market.newest()
    await until(lambda: epochs(b)[-1] > refused_at + 50)
    assert (a.role, b.role) == (Role.LEADER, Role.FOLLOWER)
    assert a.snapshot().failovers_total == 1 and FakeLink.running == {"a"}
    assert_contiguous(epochs(b))


async def test_a_leader_whose_lease_was_taken_is_fenced_off_and_stops_its_link(
    make_member: Any, server: RedisServer
) -> None:
    market, a, b = await leader_and_follower(make_member)
    # As after a pause longer than the TTL: the lease expired and b took it.
    raw = Redis.from_url(server.url)
    try:
        await raw.delete(ClusterKeys("t").leader)
    finally:
        await raw.aclose()
    await until(lambda: b.role is Role.LEADER)
    await until(lambda: a.role is Role.FOLLOWER)
    await until(lambda: FakeLink.running == {"b"})
    resumed_at = market.newest()
    await until(lambda: epochs(a)[-1] > resumed_at + 50)
    assert_contiguous(epochs(a))


async def test_without_redis_every_member_degrades_to_its_own_link_and_rejoins_after(
    make_member: Any, server: RedisServer
) -> None:
    market, a, b = await leader_and_follower(make_member)
    server.pause()
    try:
        await both_degraded(a, b)
        assert FakeLink.running == {"a", "b"}
        degraded_at = market.newest()
        await until(lambda: epochs(b)[-1] > degraded_at + 20)  # b serves its own ticks
        assert b.snapshot().redis_ok is False
    finally:
        server.resume()
    await until(lambda: sorted([a.role, b.role]) == [Role.FOLLOWER, Role.LEADER], WAIT_S)
    await until(lambda: len(FakeLink.running) == 1)
    rejoined_at = market.newest()
    await until(lambda: epochs(a)[-1] > rejoined_at + 50 and epochs(b)[-1] > rejoined_at + 50)
    assert_contiguous(epochs(a))
    assert_contiguous(epochs(b))


async def test_a_member_whose_own_link_lagged_while_degraded_misses_nothing_when_another_leads_after(
    make_member: Any, server: RedisServer
) -> None:
    # While Redis is away each member's hub holds what its own link published; b's link
    # lags behind a's. a then wins the lease and b follows: the log must carry every tick
    # after its newest entry, including those a published before it became the leader.
    market, a, b = await leader_and_follower(make_member)
    b_link = b._link
    assert isinstance(b_link, FakeLink)
    real_acquire = b.lease.acquire

    async def acquire_once_a_leads() -> Any:  # b loses the race for the lease
        if a.role is not Role.LEADER:
            raise ConnectionError("b is slower to reach Redis")
        return await real_acquire()

    server.pause()
    try:
        await both_degraded(a, b)
        b.lease.acquire = acquire_once_a_leads  # type: ignore[method-assign]
        b_link.held = True
        held_at = market.newest()
        await until(lambda: epochs(a)[-1] > held_at + 20)
    finally:
        server.resume()
    await until(lambda: (a.role, b.role) == (Role.LEADER, Role.FOLLOWER), WAIT_S)
    assert FakeLink.running == {"a"}
    rejoined_at = market.newest()
    await until(lambda: epochs(b)[-1] > rejoined_at + 50)
    assert_contiguous(epochs(a))
    assert_contiguous(epochs(b))


@pytest.mark.parametrize("degraded_first", [False, True], ids=["quick", "after-degrading"])
async def test_a_redis_restart_with_empty_memory_is_survived_with_no_tick_lost_or_repeated(
    make_member: Any, server: RedisServer, degraded_first: bool
) -> None:
    market, a, b = await leader_and_follower(make_member)
    seen: list[int] = []
    subscription = b.hub.subscribe([SYMBOL], name="relay client", queue_size=10_000)
    last_before = epochs(b)[-1]
    server.kill()  # no persistence: the streams, the lease, the term and the status are gone
    if degraded_first:
        await both_degraded(a, b)
    server.start()
    restarted_at = market.newest()
    raw = Redis.from_url(server.url)
    try:
        # A leader again, and the new log carries on past what the members already had.
        await until(lambda: Role.LEADER in (a.role, b.role), WAIT_S)
        await until(lambda: epochs(b)[-1] > restarted_at + 50 and epochs(a)[-1] > restarted_at + 50, WAIT_S)
        newest = await raw.xrevrange(ClusterKeys("t").ticks(SYMBOL), count=1)
        assert int(newest[0][0].decode().partition("-")[0]) > restarted_at
        assert int(await raw.get(ClusterKeys("t").term)) >= 1
    finally:
        await raw.aclose()
    await until(lambda: len(FakeLink.running) == 1)
    while (item := subscription.get_nowait()) is not None:
        assert not isinstance(item, (Closed, Dropped)), item
        if isinstance(item, Tick):
            seen.append(item.epoch)
    assert seen[0] == last_before + 1
    assert_contiguous(seen)  # what b's relay clients got: no gap, no repeat
    assert_contiguous(epochs(a))
    assert_contiguous(epochs(b))


async def test_a_follower_that_sees_no_leader_for_longer_than_the_ttl_says_since_when(
    make_member: Any, server: RedisServer
) -> None:
    # Redis is away, but for less than it takes to degrade: the follower cannot see the
    # lease or any status, and /health/detailed's cluster:leader says since when.
    slow_to_degrade = LeaseTiming(ttl_s=1.0, degrade_after_s=60.0)
    market = Market()
    a = await make_member("a", market, slow_to_degrade)
    await until(lambda: a.role is Role.LEADER)
    b = await make_member("b", market, slow_to_degrade)
    await until(lambda: b.snapshot().leader == "a")
    check = cluster_check(b, CLOCK)

    async def leader_entry() -> dict[str, Any]:
        results = {r.key: r for r in await check()}
        return results["cluster:leader"].to_json(CLOCK.wall())

    assert (await leader_entry())["status"] == "pass"
    server.pause()
    try:
        await until(lambda: b.snapshot().no_leader_since is not None, WAIT_S)
        entry = await leader_entry()
        assert entry["status"] == "warn"
        assert entry["output"] == f"no leader since {entry['noLeaderSince']}"
        since = b.snapshot().no_leader_since
        assert since is not None and since <= CLOCK.wall() - slow_to_degrade.ttl_s
        assert b.role is Role.FOLLOWER
    finally:
        server.resume()
    await until(lambda: b.snapshot().no_leader_since is None, WAIT_S)
    entry = await leader_entry()
    assert entry["status"] == "pass" and "noLeaderSince" not in entry
