"""One member of a cluster: the lease, the tick log and the local hub, driven together.

The pure :class:`~backend_core.cluster.coordinator.Coordinator` decides the role; this
module only moves data and calls it:

- the **lease loop** acquires or renews as told, and on a role change starts or stops the
  local upstream link through :class:`LinkControl` (a leader and a degraded member run it,
  a follower does not);
- the **writer loop** (leader only) writes what the link published, fenced by the lease
  token; a refused write steps the member down at once;
- the **reader loop** (every member) follows every symbol's stream with one blocking
  XREAD (``READ_BLOCK_MS``, bounded by the reader's own deadline) and publishes
  into the local hub, which drops what it already has (the leader's
  own ticks, overlap after a takeover), and, on a follower, the leader's status.

:attr:`ClusterMember.sink` is what the upstream link publishes into: the local hub,
plus the tick log while this member leads. Publishing never waits (DESIGN rule 4).
Every Redis call has a deadline, so no loop hangs on a hung Redis; failures are counted,
logged at a bounded rate, and retried with the house backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from backend_core.backoff import FullJitter
from backend_core.clock import Clock
from backend_core.cluster.breaker_store import RedisBreakerStore
from backend_core.cluster.coordinator import Coordinator, LeaseTiming, Role, RoleChange, Step
from backend_core.cluster.keys import ClusterKeys
from backend_core.cluster.lease import Grant, LeaseClient
from backend_core.cluster.resp import CALL_TIMEOUT_S, redis_errors, text
from backend_core.cluster.status import PUBLISH_STATUS, decode_status, encode_status
from backend_core.cluster.ticklog import FencedOut, TickLogReader, TickLogWriter
from backend_core.events import Tick, UpstreamSnapshot
from backend_core.hub import Hub
from backend_core.logs import LogThrottle

log = logging.getLogger(__name__)

# How long one XREAD waits for new entries (its deadline is this plus 2 s: ticklog.TickLogReader).
READ_BLOCK_MS = 1000
# Status entries kept in Redis: new members read only the newest.
STATUS_MAXLEN = 100
# Redis errors are logged at most this often (the count says how many there were).
ERROR_LOG_INTERVAL_S = 30.0
# Heartbeats: member:<id> lives MEMBER_TTL_MS, renewed every HEARTBEAT_EVERY_S.
HEARTBEAT_EVERY_S = 5.0
MEMBER_TTL_MS = 15_000
# A manual retry from any member closes this gate for the cluster (= MANUAL_RETRY_MIN_INTERVAL_S).
RETRY_GATE_MS = 5000
CONTROL_MAXLEN = 1000
# How long stop() waits for the loops to end before it gives up on them (logged).
STOP_TIMEOUT_S = 5.0
# How often stop() cancels a loop again while it has not ended.
RECANCEL_EVERY_S = 0.2


class LinkControl(Protocol):
    """Starts and stops this member's upstream link (the Deriv manager)."""

    async def start_link(self, seed_epochs: Mapping[str, int]) -> None:
        """Start publishing into the sink; ``seed_epochs`` are the newest epochs known per
        symbol, from which the link backfills (``ticks_history``) so no tick is lost."""

    async def stop_link(self) -> None: ...


@dataclass(frozen=True, slots=True)
class MemberSnapshot:
    instance_id: str
    role: str
    term: int | None
    leader: str | None
    leader_term: int | None
    redis_ok: bool
    redis_errors_total: int
    fenced_writes_total: int
    failovers_total: int
    last_error: str | None
    #: A follower that has seen no sign of a leader for longer than the lease TTL: the
    #: wall time of the last one (or of its own start), else None.
    no_leader_since: float | None = None
    #: Seconds since this member last saw the lease held (its own renewal while leading,
    #: the holder read or a status entry while following); None before the first sign.
    leader_seen_s: float | None = None
    #: Seconds since this member's reader last got a tick entry from the log (the
    #: follower's lag; the leader reads its own writes back); None before the first.
    log_age_s: float | None = None


class _ClusterSink:
    """The link's sink: the local hub, plus the tick log while leading."""

    def __init__(self, member: ClusterMember) -> None:
        self._member = member

    def publish_tick(self, tick: Tick) -> None:
        # The tick log first: its way (Redis, then every follower) is the long one, so the
        # writer task wakes ahead of this member's own relay.
        self._member._offer_tick(tick)
        self._member.hub.publish_tick(tick)

    def publish_status(self, snapshot: UpstreamSnapshot) -> None:
        self._member.hub.publish_status(snapshot)
        self._member._offer_status(snapshot)


def _unless_cancelled() -> None:
    """Re-raise a cancellation that arrived as a timeout.

    A stop that cancels a loop while a client-side timeout expires can reach the loop as
    a TimeoutError (redis-py converts its own read timeouts); the loop would swallow it
    as a Redis failure and never end. ``Task.cancelling()`` tells the two apart.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


async def _cancel_until_done(tasks: list[asyncio.Task[None]], clock: Clock, timeout_s: float) -> None:
    """Cancel ``tasks`` and again every ``RECANCEL_EVERY_S`` until all have ended (a
    cancellation can be lost, see :meth:`ClusterMember.stop`), at most ``timeout_s``.
    The caller's own cancellation is not swallowed."""
    deadline = clock.monotonic() + timeout_s
    pending = {t for t in tasks if not t.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=RECANCEL_EVERY_S)
        if pending and clock.monotonic() >= deadline:
            log.error("cluster: %s did not stop in %.0f s", sorted(t.get_name() for t in pending), timeout_s)
            return


class _Closable(Protocol):
    async def close(self) -> None: ...


async def _closing(loop: Coroutine[Any, Any, None], holder: _Closable) -> None:
    """Run ``loop``; when it ends, ``holder`` gives its held connection back to the pool."""
    try:
        await loop
    finally:
        with contextlib.suppress(*redis_errors()):
            await holder.close()


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("cluster: %s ended with an error", task.get_name(), exc_info=exc)


class ClusterMember:
    def __init__(
        self,
        redis: Any,
        keys: ClusterKeys,
        instance_id: str,
        symbols: Iterable[str],
        hub: Hub,
        link: LinkControl,
        clock: Clock,
        *,
        timing: LeaseTiming | None = None,
        ring_size: int = 1000,
        breaker_store: RedisBreakerStore | None = None,
    ) -> None:
        self.redis = redis
        self.keys = keys
        self.instance_id = instance_id
        self.symbols = tuple(symbols)
        self.hub = hub
        self.clock = clock
        self.timing = timing or LeaseTiming()
        self._link = link
        self._ring_size = ring_size
        self.breaker_store = breaker_store
        if breaker_store is not None:
            breaker_store.on_save = self._write_wanted_soon
        self.coordinator = Coordinator(self.timing, clock.monotonic())
        self.lease = LeaseClient(redis, keys, instance_id, self.timing.ttl_s, clock)
        self.writer = TickLogWriter(redis, keys, clock, maxlen=ring_size)
        self.reader = TickLogReader(redis, keys, self.symbols, clock, status_key=keys.status, control_key=keys.control)
        #: Called on every member with each control entry ({"type": "retry"|"breaker_reset",
        #: "name": ..., "from": ...}); what applies where is the caller's to decide.
        self.on_control: Callable[[dict[str, str]], None] | None = None
        #: When this member last saw a status entry from the leader (monotonic), for health.
        self.last_status_at: float | None = None
        self._entry_at: float | None = None  # when the reader last got a tick entry (monotonic)
        #: When this member last saw the lease held (by anyone) or held it (monotonic).
        self._leader_seen_at = clock.monotonic()
        self._heartbeat_at = float("-inf")
        self._status_script = redis.register_script(PUBLISH_STATUS)
        self.sink = _ClusterSink(self)
        self.ready = asyncio.Event()
        self._grant: Grant | None = None
        self._link_running = False
        self._link_lock = asyncio.Lock()
        self._pending_status: UpstreamSnapshot | None = None
        self._write_wanted = asyncio.Event()
        self._wake_lease = asyncio.Event()
        self._main: asyncio.Task[None] | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._stopped = False
        self._refresh_status = False
        self._errors = 0
        self._last_error: str | None = None
        self._error_log = LogThrottle(log, ERROR_LOG_INTERVAL_S)
        self._failovers = 0
        self._leader: tuple[str, int] | None = None
        self._backoff = FullJitter(0.1, 2.0)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Fill the hub from the log, then run the loops. Ready once the hub is filled
        (or once Redis has been given up on and the member degrades)."""
        self._main = asyncio.create_task(self._run(), name=f"cluster-member-{self.instance_id}")

    async def stop(self) -> None:
        """A leader writes what it has, releases the lease at once, then stops its link.

        Bounded (``STOP_TIMEOUT_S``) and not reliant on one cancellation: on Python 3.11
        ``asyncio.wait_for``, which redis-py uses around every socket write when a socket
        timeout is set, returns the write's result and drops a cancellation that arrives
        as the write completes (CPython gh-86296, fixed in 3.12). So every loop also ends
        at its next turn once ``_stopped`` is set, and the tasks are cancelled again until
        they end.
        """
        self._stopped = True
        self.coordinator.stopping()
        self._wake_lease.set()
        self._write_wanted.set()
        tasks = [t for t in (self._main, *self._loops) if t is not None]
        self._main, self._loops = None, []
        await _cancel_until_done(tasks, self.clock, STOP_TIMEOUT_S)
        grant, self._grant = self._grant, None
        if grant is not None:
            with contextlib.suppress(FencedOut, *redis_errors()):
                while self.writer.pending:
                    await self.writer.flush(grant.token)
            with contextlib.suppress(*redis_errors()):
                await self.lease.release(grant)
                await self.writer.close()  # the held connection of that last flush
        async with self._link_lock:
            await self._set_link(False, {})

    def snapshot(self) -> MemberSnapshot:
        leader = self._leader
        return MemberSnapshot(
            instance_id=self.instance_id,
            role=self.coordinator.role.value,
            term=self.coordinator.term if self.coordinator.role is Role.LEADER else None,
            leader=leader[0] if leader else None,
            leader_term=leader[1] if leader else None,
            redis_ok=self._last_error is None,
            redis_errors_total=self._errors,
            fenced_writes_total=self.writer.fenced_writes,
            failovers_total=self._failovers,
            last_error=self._last_error,
            no_leader_since=self._no_leader_since(),
            leader_seen_s=self._age(self._leader_sign_at()) if leader else None,
            log_age_s=self._age(self._entry_at),
        )

    def _age(self, at: float | None) -> float | None:
        return None if at is None else max(0.0, self.clock.monotonic() - at)

    def _leader_sign_at(self) -> float:
        return max(self._leader_seen_at, self.last_status_at or self._leader_seen_at)

    def _no_leader_since(self) -> float | None:
        """A follower's last sign of a leader (a lease holder or a status entry), as wall
        time, when it is older than the lease TTL. The status alone is no sign of life: a
        leader writes it only when it changes, while a held lease is renewed every TTL/3."""
        if self.coordinator.role is not Role.FOLLOWER:
            return None
        now = self.clock.monotonic()
        seen = self._leader_sign_at()
        if now - seen <= self.timing.ttl_s:
            return None
        return self.clock.wall() - (now - seen)

    @property
    def role(self) -> Role:
        return self.coordinator.role

    # --- the loops --------------------------------------------------------------------------

    async def _run(self) -> None:
        await self._prefill()
        self.ready.set()
        if self._stopped:
            return
        self._loops = [
            asyncio.create_task(self._lease_loop(), name="cluster-lease"),
            asyncio.create_task(_closing(self._write_forever(), self.writer), name="cluster-writer"),
            asyncio.create_task(_closing(self._read_forever(), self.reader), name="cluster-reader"),
        ]
        for task in self._loops:
            task.add_done_callback(_log_crash)

    async def _prefill(self) -> None:
        deadline = self.clock.monotonic() + self.timing.degrade_after_s
        attempt = 0
        while not self._stopped:
            try:
                for symbol in self.symbols:
                    for tick in await self.reader.latest(symbol, self._ring_size):
                        self.hub.publish_tick(tick)
                    latest = self.hub.latest(symbol)
                    if latest is not None:
                        self.reader.resume_from(symbol, latest.epoch)
                status_id = await self._publish_newest_status()
                if status_id is not None:
                    self.reader.status_from(status_id)
                async with self.clock.timeout(CALL_TIMEOUT_S):
                    newest_control = await self.redis.xrevrange(self.keys.control, count=1)
                for raw_id, _ in newest_control:
                    self.reader.control_from(text(raw_id))
                self._ok()
                return
            except redis_errors() as exc:
                _unless_cancelled()
                self.note_failure(exc, "reading the tick log at start")
                if self.clock.monotonic() >= deadline:
                    await self._apply(self.coordinator.check(self.clock.monotonic()))
                    return
                attempt += 1
                await self.clock.sleep(self._backoff.delay(attempt))

    async def _lease_loop(self) -> None:
        while not self._stopped:
            now = self.clock.monotonic()
            await self._apply(self.coordinator.check(now))
            plan = self.coordinator.next_step(now)
            if plan.step is Step.WAIT:
                self._wake_lease.clear()
                try:
                    async with self.clock.timeout(max(0.0, plan.next_at - now)):
                        await self._wake_lease.wait()
                except TimeoutError:
                    _unless_cancelled()
                continue
            sent_at = now
            try:
                if plan.step is Step.ACQUIRE:
                    grant = await self.lease.acquire() or await self._own_lease()
                    if grant is None:
                        await self._apply(self.coordinator.not_acquired(self.clock.monotonic()))
                    else:
                        await self._take_over(grant, sent_at)
                elif plan.step is Step.RENEW and self._grant is not None:
                    if await self.lease.renew(self._grant):
                        self._leader_seen_at = self.clock.monotonic()
                        await self._apply(self.coordinator.renewed(sent_at, self.clock.monotonic()))
                    else:
                        await self._apply(self.coordinator.lease_lost(self.clock.monotonic()))
                await self._heartbeat()
                self._ok()
            except redis_errors() as exc:
                _unless_cancelled()
                self.note_failure(exc, "renewing the lease" if plan.step is Step.RENEW else "asking for the lease")
                await self._apply(self.coordinator.redis_failed(self.clock.monotonic()))

    async def _own_lease(self) -> Grant | None:
        """The lease when Redis holds it for this member although the acquire said no.

        An acquire whose reply was lost (timed out while Redis was paused or slow) still
        runs once Redis reads it; the lease it took is this member's, and nobody else can
        use it. It is renewed at once (its age is unknown) and taken over; otherwise the
        cluster would have no leader until it expired.
        """
        self._leader = holder = await self.lease.holder()
        if holder is not None:
            self._leader_seen_at = self.clock.monotonic()
        if holder is None or holder[0] != self.instance_id:
            return None
        grant = Grant(*holder)
        return grant if await self.lease.renew(grant) else None

    async def _take_over(self, grant: Grant, sent_at: float) -> None:
        """Lead with ``grant``: first make the log continue where its newest entry ends.

        While this member was not writing, its hub may have received ticks the log never
        got (its own link ran while it was degraded, or ran later than the previous
        leader's). A member that follows keeps what its own hub has and reads the log
        after that, so the log must hold every tick after its newest entry: they are
        queued from this hub before anything the link publishes from now on. Where the hub
        no longer holds them (its ring moved past the log's newest entry), the link is
        (re)started from the log's newest epoch instead, and its backfill writes them.
        """
        tops = await self._log_tops()
        bridge: list[Tick] = []
        reseed: dict[str, int] = {}
        for symbol in self.symbols:
            top = tops.get(symbol)
            evicted = self.hub.evicted_through(symbol)
            if top is not None and evicted is not None and evicted > top:
                reseed[symbol] = top
            bridge.extend(self.hub.ticks_since(symbol, top or 0, self._ring_size))
        self.writer.requeue(bridge)  # what an earlier term left queued is in the hub too
        self._grant = grant
        self._leader = (grant.instance_id, grant.term)
        self._leader_seen_at = self.clock.monotonic()
        await self._apply(self.coordinator.acquired(grant.term, sent_at, self.clock.monotonic()), reseed)

    async def _log_tops(self) -> dict[str, int]:
        """The newest epoch in each symbol's stream (absent: the stream is empty)."""
        async with self.clock.timeout(CALL_TIMEOUT_S), self.redis.pipeline(transaction=False) as pipe:
            for symbol in self.symbols:
                pipe.xrevrange(self.keys.ticks(symbol), count=1)
            replies = await pipe.execute()
        tops: dict[str, int] = {}
        for symbol, entries in zip(self.symbols, replies, strict=True):
            epoch = text(entries[0][0]).partition("-")[0] if entries else ""
            if epoch.isascii() and epoch.isdigit():
                tops[symbol] = int(epoch)
        return tops

    async def _publish_newest_status(self) -> str | None:
        """Publish the status stream's newest snapshot; returns that entry's id (None: empty)."""
        async with self.clock.timeout(CALL_TIMEOUT_S):
            newest = await self.redis.xrevrange(self.keys.status, count=1)
        for raw_id, fields in newest:
            snapshot = decode_status(fields.get(b"s", b""))
            if snapshot is not None:
                self.hub.publish_status(snapshot)
            return text(raw_id)
        return None

    async def _heartbeat(self) -> None:
        """Every ``HEARTBEAT_EVERY_S``: ``member:<id>`` (PX) and the ``members`` zset."""
        now = self.clock.monotonic()
        if now - self._heartbeat_at < HEARTBEAT_EVERY_S:
            return
        self._heartbeat_at = now
        wall_ms = int(self.clock.wall() * 1000)
        body = json.dumps({"role": self.coordinator.role.value, "at": wall_ms})
        async with self.clock.timeout(CALL_TIMEOUT_S), self.redis.pipeline(transaction=False) as pipe:
            pipe.set(self.keys.member(self.instance_id), body, px=MEMBER_TTL_MS)
            pipe.zadd(self.keys.members, {self.instance_id: wall_ms})
            pipe.zremrangebyscore(self.keys.members, "-inf", wall_ms - MEMBER_TTL_MS)
            await pipe.execute()

    async def members(self) -> dict[str, str]:
        """The live members and their roles (from their heartbeats)."""
        async with self.clock.timeout(CALL_TIMEOUT_S):
            ids = await self.redis.zrangebyscore(
                self.keys.members, int(self.clock.wall() * 1000) - MEMBER_TTL_MS, "+inf"
            )
            names = [text(i) for i in ids]
            bodies = await self.redis.mget([self.keys.member(n) for n in names]) if names else []
        out: dict[str, str] = {}
        for name, body in zip(names, bodies, strict=False):
            if body is not None:
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    out[name] = str(json.loads(body).get("role", "?"))
        return out

    async def ping_ms(self) -> float:
        """One round trip to Redis, in milliseconds."""
        started = self.clock.monotonic()
        async with self.clock.timeout(CALL_TIMEOUT_S):
            await self.redis.ping()
        return (self.clock.monotonic() - started) * 1000

    async def request_retry(self) -> bool:
        """Ask the leader for a retry, coalesced cluster-wide: False when one was asked
        for in the last ``RETRY_GATE_MS`` (by any member)."""
        async with self.clock.timeout(CALL_TIMEOUT_S):
            if not await self.redis.set(self.keys.retry_gate, self.instance_id, nx=True, px=RETRY_GATE_MS):
                return False
            await self.send_control("retry", "")
        return True

    async def send_control(self, kind: str, name: str) -> None:
        """Append to the control stream (the leader applies it)."""
        async with self.clock.timeout(CALL_TIMEOUT_S):
            await self.redis.xadd(
                self.keys.control,
                {"type": kind, "name": name, "from": self.instance_id},
                maxlen=CONTROL_MAXLEN,
                approximate=True,
            )

    async def _write_forever(self) -> None:
        attempt = 0
        while not self._stopped:
            await self._write_wanted.wait()
            self._write_wanted.clear()
            grant = self._grant
            if self._stopped or grant is None or self.coordinator.role is not Role.LEADER:
                continue
            try:
                while self.writer.pending:
                    await self.writer.flush(grant.token)
                # The breaker before the status: a follower mirrors the breaker on each status.
                store = self.breaker_store
                written = (
                    store is None
                    or not store.pending
                    or await store.write(self.redis, grant.token, grant.term, self.clock)
                )
                if not written:
                    raise FencedOut("the lease is held by another member")
                status, self._pending_status = self._pending_status, None
                if status is not None:
                    await self._write_status(grant, status)
                attempt = 0
                self._ok()
            except FencedOut:
                # Only a write under the current grant says the lease is gone: a flush
                # still under way for an older term is refused, but this member may have
                # won the lease again since.
                if self._grant is grant:
                    await self._apply(self.coordinator.lease_lost(self.clock.monotonic(), "a write was fenced off"))
            except redis_errors() as exc:
                _unless_cancelled()
                self.note_failure(exc, "writing the tick log")
                attempt += 1
                await self.clock.sleep(self._backoff.delay(attempt))
                self._write_wanted.set()

    async def _write_status(self, grant: Grant, snapshot: UpstreamSnapshot) -> None:
        async with self.clock.timeout(CALL_TIMEOUT_S):
            result = await self._status_script(
                keys=[self.keys.leader, self.keys.status],
                args=[grant.token, STATUS_MAXLEN, grant.term, encode_status(snapshot)],
            )
        if int(result) < 0:
            raise FencedOut("the lease is held by another member")

    async def _read_forever(self) -> None:
        attempt = 0
        while not self._stopped:
            try:
                batch = await self.reader.read(block_ms=READ_BLOCK_MS)
                for tick in batch.ticks:
                    self.hub.publish_tick(tick)  # the hub drops epochs it already has
                if batch.ticks:
                    self._entry_at = self.clock.monotonic()
                if self._refresh_status and self.coordinator.role is Role.FOLLOWER:
                    self._refresh_status = False
                    await self._publish_newest_status()
                if batch.statuses:
                    self.last_status_at = self.clock.monotonic()
                    if self.breaker_store is not None and self.coordinator.role is Role.FOLLOWER:
                        await self.breaker_store.refresh(self.redis, self.clock)  # mirrored for display
                if batch.statuses and self.coordinator.role is Role.FOLLOWER:
                    snapshot = decode_status(batch.statuses[-1].get(b"s", b""))
                    if snapshot is not None:
                        self.hub.publish_status(snapshot)
                if batch.controls and self.on_control is not None:  # every member: resets are for all
                    for fields in batch.controls:
                        self.on_control({text(k): text(v) for k, v in fields.items()})
                attempt = 0
                self._ok()
            except redis_errors() as exc:
                _unless_cancelled()
                self.note_failure(exc, "reading the tick log")
                await self._apply(self.coordinator.redis_failed(self.clock.monotonic()))
                attempt += 1
                await self.clock.sleep(self._backoff.delay(attempt))

    # --- role changes ---------------------------------------------------------------------------

    async def _apply(self, change: RoleChange | None, reseed: Mapping[str, int] | None = None) -> None:
        """Act on a role change: a leader and a degraded member run the link, a follower not.

        Changes can come from every loop; they are applied one at a time, and the link is
        set for the role the member has once it is its turn (a later change may already
        have superseded this one).
        """
        if change is None:
            return
        log.info("cluster member %s: %s -> %s (%s)", self.instance_id, change.before, change.after, change.reason)
        if change.after is Role.LEADER:
            self._failovers += 1
            self._write_wanted.set()
        if change.before is Role.LEADER:
            self._grant = None
            self.writer.requeue([])  # the hub has it; a next term queues from the log's top
        if change.after is Role.FOLLOWER:
            self._refresh_status = True  # the stopped link's last word is not the cluster's status
        async with self._link_lock:
            await self._set_link(self.coordinator.role in (Role.LEADER, Role.DEGRADED), reseed or {})

    async def _set_link(self, running: bool, reseed: Mapping[str, int]) -> None:
        """Start or stop the link; ``reseed``: symbols whose backfill must begin at an epoch
        older than the hub's newest (a running link is restarted for them)."""
        if running == self._link_running and not (running and reseed):
            return
        if self._link_running:
            self._link_running = False
            await self._link.stop_link()
        if not running:
            return
        self._link_running = True
        store = self.breaker_store
        if store is not None and self.coordinator.role is Role.LEADER:
            store.drop_pending()
            try:  # inherit the cluster's breaker (an open one keeps the new leader waiting)
                await store.refresh(self.redis, self.clock)
            except redis_errors() as exc:
                _unless_cancelled()
                self.note_failure(exc, "reading the shared breaker")
        # Backfill from the newest epoch this member's own hub has: what its clients saw.
        seed = {}
        for symbol in self.symbols:
            latest = self.hub.latest(symbol)
            seed[symbol] = reseed.get(symbol, latest.epoch if latest else 0)
        await self._link.start_link(seed)

    # --- publishing (never waits) -----------------------------------------------------------------

    def _write_wanted_soon(self) -> None:
        if self.coordinator.role is Role.LEADER:
            self._write_wanted.set()

    def _offer_tick(self, tick: Tick) -> None:
        if self.coordinator.role is Role.LEADER:
            self.writer.offer(tick)
            self._write_wanted.set()

    def _offer_status(self, snapshot: UpstreamSnapshot) -> None:
        if self.coordinator.role is Role.LEADER:
            self._pending_status = snapshot  # only the newest matters
            self._write_wanted.set()

    # --- errors -----------------------------------------------------------------------------------

    def _ok(self) -> None:
        self._last_error = None

    def note_failure(self, exc: BaseException, doing: str) -> None:
        """A Redis call failed: counted, kept as the last error, logged at a bounded rate."""
        self._errors += 1
        self._last_error = f"{type(exc).__name__} while {doing}"
        self._error_log.log(
            self.clock.monotonic(),
            logging.WARNING,
            "redis",
            "cluster: Redis failed while %s: %s (%d errors so far)",
            doing,
            type(exc).__name__,
            self._errors,
        )
