"""The leader lease: one holder per cluster, a fencing token that changes with every grant.

The lease is the string key ``leader`` holding ``<instance_id>:<term>`` with a TTL
(``SET ... PX``, shared/CLUSTER.md 2.3). ``term`` comes from ``INCR leader:term`` once per
grant, so two holders, even a paused ex-leader and its successor, never share a token.
Renew and release are scripts that act only when the key still holds the caller's token;
every write to shared state checks the same token in its own script (see
:mod:`.ticklog`), which is what makes a paused or partitioned ex-leader harmless.

Every call is bounded by the client's socket timeouts (set where the client is made) and,
here, by :data:`~backend_core.cluster.resp.CALL_TIMEOUT_S` on the injected clock, so no
caller ever waits on a hung Redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from backend_core.clock import Clock
from backend_core.cluster.keys import ClusterKeys
from backend_core.cluster.resp import CALL_TIMEOUT_S, text

ACQUIRE: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local term = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. term, 'PX', ARGV[2])
return term
"""

RENEW: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

RELEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class Grant:
    instance_id: str
    term: int

    @property
    def token(self) -> str:
        return f"{self.instance_id}:{self.term}"


class LeaseClient:
    """Acquire, renew and release the lease of one cluster for one member."""

    def __init__(self, redis: Any, keys: ClusterKeys, instance_id: str, ttl_s: float, clock: Clock) -> None:
        if ":" in instance_id or not instance_id:
            raise ValueError("an instance id is a non-empty string without ':'")
        self._redis = redis
        self._keys = keys
        self.instance_id = instance_id
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._clock = clock
        self._acquire = redis.register_script(ACQUIRE)
        self._renew = redis.register_script(RENEW)
        self._release = redis.register_script(RELEASE)

    async def acquire(self) -> Grant | None:
        """The grant when the lease was free, else None (someone holds it)."""
        async with self._clock.timeout(CALL_TIMEOUT_S):
            term = await self._acquire(keys=[self._keys.leader, self._keys.term], args=[self.instance_id, self._ttl_ms])
        return Grant(self.instance_id, int(term)) if term else None

    async def renew(self, grant: Grant) -> bool:
        """True when the lease was still ours and now runs a full TTL again."""
        async with self._clock.timeout(CALL_TIMEOUT_S):
            renewed = await self._renew(keys=[self._keys.leader], args=[grant.token, self._ttl_ms])
        return bool(renewed)

    async def release(self, grant: Grant) -> bool:
        """Give the lease up at once (a graceful stop); False when it was not ours any more."""
        async with self._clock.timeout(CALL_TIMEOUT_S):
            released = await self._release(keys=[self._keys.leader], args=[grant.token])
        return bool(released)

    async def holder(self) -> tuple[str, int] | None:
        """Who holds the lease now, as (instance_id, term)."""
        async with self._clock.timeout(CALL_TIMEOUT_S):
            value = await self._redis.get(self._keys.leader)
        if value is None:
            return None
        instance_id, _, term = text(value).rpartition(":")
        return (instance_id, int(term)) if term.isascii() and term.isdigit() else None
