"""The lease and the tick log against a real redis-server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from backend_core.clock import SystemClock
from backend_core.cluster.keys import ClusterKeys
from backend_core.cluster.lease import LeaseClient
from backend_core.cluster.ticklog import FencedOut, TickLogReader, TickLogWriter
from backend_core.events import Tick
from tests.integration.redis_server import RedisServer, redis_server

KEYS = ClusterKeys("test")
CLOCK = SystemClock()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as running:
        yield running


@pytest.fixture
async def redis(server: RedisServer) -> AsyncIterator[Any]:
    client = Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=2)
    try:
        yield client
    finally:
        await client.aclose()


def ticks(symbol: str, epochs: range, **extra: Any) -> list[Tick]:
    return [Tick(symbol, e, 100.0 + e / 100, 2, **extra) for e in epochs]


async def test_one_member_wins_the_lease_and_the_term_grows_only_per_grant(redis: Any) -> None:
    members = [LeaseClient(redis, KEYS, f"m{i}", ttl_s=5, clock=CLOCK) for i in range(5)]
    grants = await asyncio.gather(*(m.acquire() for m in members))
    won = [g for g in grants if g is not None]
    assert len(won) == 1
    for _ in range(3):
        assert await asyncio.gather(*(m.acquire() for m in members)) == [None] * 5
    assert await members[0].holder() == (won[0].instance_id, won[0].term)
    assert int(await redis.get(KEYS.term)) == won[0].term == 1


async def test_only_the_holder_renews_or_releases_and_the_next_grant_has_a_new_term(redis: Any) -> None:
    a = LeaseClient(redis, KEYS, "a", ttl_s=5, clock=CLOCK)
    b = LeaseClient(redis, KEYS, "b", ttl_s=5, clock=CLOCK)
    grant_a = await a.acquire()
    assert grant_a is not None
    forged = type(grant_a)("b", grant_a.term)
    assert await b.renew(forged) is False
    assert await b.release(forged) is False
    assert await a.renew(grant_a) is True
    assert await a.release(grant_a) is True
    grant_b = await b.acquire()
    assert grant_b is not None and grant_b.term == grant_a.term + 1
    assert await a.renew(grant_a) is False  # the old token is dead for good


async def test_an_expired_lease_goes_to_the_next_member(redis: Any) -> None:
    a = LeaseClient(redis, KEYS, "a", ttl_s=0.5, clock=CLOCK)
    b = LeaseClient(redis, KEYS, "b", ttl_s=0.5, clock=CLOCK)
    grant_a = await a.acquire()
    assert grant_a is not None and await b.acquire() is None
    async with asyncio.timeout(10):
        while (grant_b := await b.acquire()) is None:  # noqa: ASYNC110 - polling Redis is the point
            await asyncio.sleep(0.05)
    assert grant_b.term == grant_a.term + 1
    assert await a.renew(grant_a) is False


async def test_writes_are_fenced_and_idempotent_across_leaders(redis: Any) -> None:
    old = LeaseClient(redis, KEYS, "old", ttl_s=5, clock=CLOCK)
    new = LeaseClient(redis, KEYS, "new", ttl_s=5, clock=CLOCK)
    old_grant = await old.acquire()
    assert old_grant is not None
    old_writer = TickLogWriter(redis, KEYS, CLOCK, maxlen=1000)
    for tick in ticks("R_50", range(1000, 1010)):
        old_writer.offer(tick)
    assert (await old_writer.flush(old_grant.token)).written == 10

    await old.release(old_grant)
    new_grant = await new.acquire()
    assert new_grant is not None
    # The new leader backfills over what the old one wrote: overlap is refused, the rest lands.
    new_writer = TickLogWriter(redis, KEYS, CLOCK, maxlen=1000)
    for tick in ticks("R_50", range(1005, 1015), backfill=True):
        new_writer.offer(tick)
    result = await new_writer.flush(new_grant.token)
    assert (result.written, result.refused_as_duplicates) == (5, 5)

    # A late write of the ex-leader is refused by the fence and kept for nobody.
    for tick in ticks("R_50", range(1015, 1020)):
        old_writer.offer(tick)
    with pytest.raises(FencedOut):
        await old_writer.flush(old_grant.token)
    assert old_writer.fenced_writes == 1
    entries = await redis.xrange(KEYS.ticks("R_50"))
    assert [int(raw_id.decode().split("-")[0]) for raw_id, _ in entries] == list(range(1000, 1015))


async def test_the_reader_sees_every_entry_once_in_order_with_every_field(redis: Any) -> None:
    lease = LeaseClient(redis, KEYS, "leader", ttl_s=5, clock=CLOCK)
    grant = await lease.acquire()
    assert grant is not None
    writer = TickLogWriter(redis, KEYS, CLOCK)
    reader = TickLogReader(redis, KEYS, ["R_50", "1HZ100V"], CLOCK)
    sent = [
        Tick("R_50", 10, 1234.5678, 4, bid=1234.5, ask=1234.6),
        Tick("1HZ100V", 11, 99.12, 2, backfill=True),
        Tick("R_50", 14, 1234.9, 4, bid=1234.8, ask=1235.0, gap_from=10),
    ]
    for tick in sent:
        writer.offer(tick)
    await writer.flush(grant.token)
    got = (await reader.read(block_ms=100)).ticks
    assert sorted(got, key=lambda t: t.epoch) == sent
    assert (await reader.read(block_ms=50)).ticks == []
    assert reader.position("R_50") == 14
    assert await reader.latest("R_50", 1) == [sent[2]]


async def test_a_reader_blocked_on_xread_wakes_for_a_new_entry(redis: Any, server: RedisServer) -> None:
    lease = LeaseClient(redis, KEYS, "leader", ttl_s=5, clock=CLOCK)
    grant = await lease.acquire()
    assert grant is not None
    follower = Redis.from_url(server.url, socket_timeout=5, socket_connect_timeout=2)
    try:
        reader = TickLogReader(follower, KEYS, ["R_50"], CLOCK)
        pending = asyncio.create_task(reader.read(block_ms=3000))
        await asyncio.sleep(0.1)
        writer = TickLogWriter(redis, KEYS, CLOCK)
        writer.offer(Tick("R_50", 42, 1.5, 2))
        await writer.flush(grant.token)
        async with asyncio.timeout(5):
            assert [t.epoch for t in (await pending).ticks] == [42]
    finally:
        await follower.aclose()


async def leader_writer(redis: Any) -> tuple[TickLogWriter, str]:
    grant = await LeaseClient(redis, KEYS, "leader", ttl_s=30, clock=CLOCK).acquire()
    assert grant is not None
    return TickLogWriter(redis, KEYS, CLOCK), grant.token


async def epochs_in(redis: Any, symbol: str) -> list[int]:
    return [int(raw_id.decode().split("-")[0]) for raw_id, _ in await redis.xrange(KEYS.ticks(symbol))]


async def test_one_flush_writes_every_symbol_fenced_as_one(redis: Any) -> None:
    writer, token = await leader_writer(redis)
    for tick in [*ticks("R_50", range(1, 4)), *ticks("1HZ100V", range(1, 6)), *ticks("R_100", range(7, 8))]:
        writer.offer(tick)
    assert (await writer.flush(token)).written == 9
    for tick in [*ticks("R_50", range(3, 5)), *ticks("1HZ100V", range(5, 7))]:
        writer.offer(tick)  # epochs 3 and 5 are there already
    result = await writer.flush(token)
    assert (result.written, result.refused_as_duplicates) == (2, 2)
    assert await epochs_in(redis, "R_50") == [1, 2, 3, 4]
    assert await epochs_in(redis, "1HZ100V") == [1, 2, 3, 4, 5, 6]
    # Fenced: no symbol of the flush is written, and every tick is kept for a retry.
    for tick in [*ticks("R_50", range(10, 12)), *ticks("R_100", range(10, 12))]:
        writer.offer(tick)
    with pytest.raises(FencedOut):
        await writer.flush("someone-else:1")
    assert writer.pending == 4
    assert await epochs_in(redis, "R_50") == [1, 2, 3, 4]
    assert await epochs_in(redis, "R_100") == [7]
    await writer.close()


async def test_the_writer_reloads_its_script_after_redis_forgot_it(redis: Any) -> None:
    writer, token = await leader_writer(redis)
    writer.offer(Tick("R_50", 1, 1.0, 2))
    await writer.flush(token)
    await redis.script_flush()  # as after a Redis restart
    writer.offer(Tick("R_50", 2, 1.0, 2))
    assert (await writer.flush(token)).written == 1
    assert await epochs_in(redis, "R_50") == [1, 2]
    await writer.close()


async def test_a_reader_cancelled_mid_read_or_cut_off_loses_and_repeats_nothing(redis: Any) -> None:
    writer, token = await leader_writer(redis)
    reader = TickLogReader(redis, KEYS, ["R_50"], CLOCK)
    got: list[int] = []
    # Cancelled while blocked: its connection is closed, so no late reply is read as the next one's.
    pending = asyncio.create_task(reader.read(block_ms=3000))
    await asyncio.sleep(0.1)
    pending.cancel()
    with pytest.raises(asyncio.CancelledError):
        await pending
    for tick in ticks("R_50", range(1, 4)):
        writer.offer(tick)
    await writer.flush(token)
    got += [t.epoch for t in (await reader.read(block_ms=100)).ticks]
    # Redis drops every client connection: the next read reconnects and goes on from its position.
    await redis.client_kill_filter(_type="normal", skipme=True)
    for tick in ticks("R_50", range(4, 6)):
        writer.offer(tick)
    with contextlib.suppress(ConnectionError, RedisConnectionError):
        await writer.flush(token)  # its held connection was cut as well
    while writer.pending:
        await writer.flush(token)
    for _ in range(3):
        with contextlib.suppress(ConnectionError, RedisConnectionError):
            got += [t.epoch for t in (await reader.read(block_ms=100)).ticks]
    assert got == [1, 2, 3, 4, 5]
    await reader.close()
    await writer.close()


@pytest.mark.parametrize("options", [{"decode_responses": True}, {"protocol": 3}], ids=["decoded", "resp3"])
async def test_the_reader_works_with_decoded_replies_and_resp3(server: RedisServer, options: dict[str, Any]) -> None:
    client = Redis.from_url(server.url, socket_timeout=2, socket_connect_timeout=2, **options)
    try:
        writer, token = await leader_writer(client)
        reader = TickLogReader(client, KEYS, ["R_50"], CLOCK, status_key=KEYS.status)
        sent = Tick("R_50", 7, 1234.5678, 4, bid=1234.5, ask=1234.6, gap_from=3)
        writer.offer(sent)
        await writer.flush(token)
        await client.xadd(KEYS.status, {"term": "1", "s": "{}"})
        batch = await reader.read(block_ms=100)
        assert batch.ticks == [sent]
        expected: dict[Any, Any] = {"term": "1", "s": "{}"}
        if not options.get("decode_responses"):
            expected = {k.encode(): v.encode() for k, v in expected.items()}
        assert [dict(fields) for fields in batch.statuses] == [expected]
        await reader.close()
        await writer.close()
    finally:
        await client.aclose()


async def test_a_blocked_reader_gets_a_write_to_several_streams_in_one_batch(redis: Any, server: RedisServer) -> None:
    # Redis before 7.2 answers a blocked XREAD with only the stream that woke it; the reader
    # collects the rest of that write before it returns, so the relay sends it as one.
    writer, token = await leader_writer(redis)
    follower = Redis.from_url(server.url, socket_timeout=5, socket_connect_timeout=2)
    try:
        reader = TickLogReader(follower, KEYS, ["R_50", "R_100", "1HZ100V"], CLOCK)
        pending = asyncio.create_task(reader.read(block_ms=3000))
        await asyncio.sleep(0.1)
        sent = [Tick("R_50", 5, 1.0, 2), Tick("R_100", 6, 2.0, 2), Tick("1HZ100V", 7, 3.0, 2)]
        for tick in sent:
            writer.offer(tick)
        await writer.flush(token)
        async with asyncio.timeout(5):
            assert sorted((await pending).ticks, key=lambda t: t.epoch) == sent
        writer.offer(Tick("R_50", 8, 1.0, 2))  # a write to one stream: one XREAD, as before
        await writer.flush(token)
        assert [t.epoch for t in (await reader.read(block_ms=1000)).ticks] == [8]
        await reader.close()
        await writer.close()
    finally:
        await follower.aclose()
