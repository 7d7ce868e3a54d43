"""How a Runtime joins a cluster: the Redis client, the member, the link adapter, health.

With ``REDIS_URL`` set the Runtime builds one :class:`ClusterMember` here. The Deriv
manager publishes into ``member.sink`` and runs only while the member leads or is
degraded (:class:`ManagerLink`); everything else keeps reading the local hub.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from backend_core.clock import Clock, iso_utc
from backend_core.cluster.breaker_store import RedisBreakerStore
from backend_core.cluster.coordinator import LeaseTiming, Role
from backend_core.cluster.keys import ClusterKeys
from backend_core.cluster.member import ClusterMember, MemberSnapshot
from backend_core.cluster.resp import redis_errors
from backend_core.health import CheckResult

if TYPE_CHECKING:
    from backend_core.config import Settings
    from backend_core.deriv.manager import DerivManager
    from backend_core.hub import Hub

# Client timeouts: every Redis call is bounded. The socket timeout must outlast the
# reader's blocking XREAD (1 s).
SOCKET_TIMEOUT_S = 3.0
CONNECT_TIMEOUT_S = 2.0
# The health check's Redis round trips, all together.
REDIS_CHECK_TIMEOUT_S = 0.6


class ManagerLink:
    """Starts the Deriv manager seeded with the cluster's newest epochs; stops it on demotion."""

    def __init__(self, manager: Callable[[], DerivManager | None]) -> None:
        self._manager = manager

    async def start_link(self, seed_epochs: Mapping[str, int]) -> None:
        manager = self._manager()
        if manager is not None:
            manager.seed_epochs(seed_epochs)
            await manager.start()

    async def stop_link(self) -> None:
        manager = self._manager()
        if manager is not None:
            await manager.stop()


def build_member(
    settings: Settings,
    hub: Hub,
    symbols: Iterable[str],
    link: ManagerLink,
    clock: Clock,
    ring_size: int,
    breaker_store: RedisBreakerStore | None = None,
) -> ClusterMember:
    from redis.asyncio import Redis

    assert settings.REDIS_URL is not None
    redis = Redis.from_url(
        settings.REDIS_URL.get_secret_value(),
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
    )
    ttl = settings.CLUSTER_LEASE_TTL
    return ClusterMember(
        redis,
        ClusterKeys(settings.CLUSTER_NAME),
        settings.INSTANCE_ID,
        symbols,
        hub,
        link,
        clock,
        timing=LeaseTiming(ttl_s=ttl, degrade_after_s=2 * ttl),
        ring_size=ring_size,
        breaker_store=breaker_store,
    )


def leader_check(snap: MemberSnapshot) -> CheckResult:
    """``cluster:leader``: the holder and term; a warn "no leader since <time>" when this
    follower has seen no sign of a leader for longer than the lease TTL."""
    since = snap.no_leader_since
    return CheckResult(
        "cluster",
        "component",
        "leader",
        "pass" if since is None else "warn",
        snap.leader,
        None,
        "" if since is None else f"no leader since {iso_utc(since)}",
        {
            "term": snap.leader_term,
            **({} if snap.leader_seen_s is None else {"lastSeenS": round(snap.leader_seen_s, 1)}),
            **({} if since is None else {"noLeaderSince": iso_utc(since)}),
        },
    )


def log_lag_check(snap: MemberSnapshot) -> CheckResult:
    """``cluster:followerLag``: milliseconds since this member last read a tick entry from
    the log (informational: a quiet market writes nothing; the upstream checks judge the feed)."""
    age = snap.log_age_s
    return CheckResult("cluster", "component", "followerLag", "pass", None if age is None else round(age * 1000), "ms")


def cluster_check(member: ClusterMember | None, clock: Clock) -> Callable[[], Any]:
    """``cluster:mode``, ``cluster:redis``, ``cluster:leader``, ``cluster:members`` (CLUSTER.md 2.6)."""

    async def check() -> list[CheckResult]:
        if member is None:
            return [CheckResult("cluster", "component", "mode", "pass", "single")]
        snap = member.snapshot()
        role = snap.role
        degraded = role == Role.DEGRADED.value
        results = [
            CheckResult(
                "cluster",
                "component",
                "mode",
                "warn" if degraded else "pass",
                role,
                None,
                f"cluster degraded: {snap.last_error or 'Redis unreachable'}; serving from this member's own link"
                if degraded
                else "",
                {"instance": snap.instance_id},
            )
        ]
        if degraded:
            results.append(CheckResult("cluster", "component", "redis", "warn", None, "ms", "Redis unreachable"))
            return results
        leader = leader_check(snap)
        lag = log_lag_check(snap)
        try:
            # Well inside the health check's own 1 s: Redis slow or away is a warn, not a fail.
            async with clock.timeout(REDIS_CHECK_TIMEOUT_S):
                rtt = await member.ping_ms()
                members = await member.members()
        except redis_errors() as exc:
            results.append(
                CheckResult(
                    "cluster", "component", "redis", "warn", None, "ms", f"Redis unreachable ({type(exc).__name__})"
                )
            )
            return [*results, leader, lag]
        results.append(CheckResult("cluster", "component", "redis", "pass", round(rtt, 2), "ms"))
        results.append(leader)
        results.append(
            CheckResult("cluster", "component", "members", "pass", len(members), None, "", {"roles": members})
        )
        results.append(lag)
        return results

    return check
