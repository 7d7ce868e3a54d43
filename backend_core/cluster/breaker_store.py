"""The "websocket" breaker's state shared through Redis (CLUSTER.md 2.5).

A :class:`~backend_core.breakers.store.BreakerStore` whose ``load`` and ``save`` never
touch the network (they run on the breaker's call path): ``load`` answers from a local
mirror, ``save`` updates the mirror and queues the record. The cluster member writes
queued records while it leads (fenced by the lease token, like the ticks) and refreshes
the mirror from Redis when it is promoted, before its link starts, so a new leader
inherits an open breaker and makes no attempt before the recorded ``open_until``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from backend_core.breakers.core import BreakerState
from backend_core.breakers.store import BreakerRecord
from backend_core.clock import Clock
from backend_core.cluster.keys import ClusterKeys
from backend_core.cluster.resp import CALL_TIMEOUT_S, text

# KEYS: leader, breaker hash. ARGV: token, state, opened_at, open_until, level, term.
SAVE_BREAKER: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('HSET', KEYS[2], 'state', ARGV[2], 'opened_at', ARGV[3], 'open_until', ARGV[4], 'level', ARGV[5],
  'term', ARGV[6])
return 1
"""


def _number(text: str) -> float | None:
    return float(text) if text else None


def decode_record(fields: dict[Any, Any]) -> BreakerRecord | None:
    values = {text(k): text(v) for k, v in fields.items()}
    try:
        return BreakerRecord(
            state=BreakerState(values["state"]),
            opened_at_wall=_number(values.get("opened_at", "")),
            open_until_wall=_number(values.get("open_until", "")),
            open_level=int(values.get("level", "0")),
        )
    except (KeyError, ValueError):
        return None


class RedisBreakerStore:
    """Shared store of the breakers named in ``names`` (the "websocket" one)."""

    shared = True

    def __init__(self, keys: ClusterKeys, names: tuple[str, ...] = ("websocket",)) -> None:
        self._keys = keys
        self._names = names
        self._records: dict[str, BreakerRecord] = {}
        self._pending: dict[str, BreakerRecord] = {}
        #: Called after each save (the member wakes its writer).
        self.on_save: Callable[[], None] | None = None

    def load(self, name: str) -> BreakerRecord | None:
        return self._records.get(name)

    def save(self, name: str, record: BreakerRecord) -> None:
        self._records[name] = record
        self._pending[name] = record  # only the newest per breaker matters
        if self.on_save is not None:
            self.on_save()

    @property
    def pending(self) -> bool:
        return bool(self._pending)

    def drop_pending(self) -> None:
        """What this member saved while it did not lead is not the cluster's state."""
        self._pending.clear()

    async def write(self, redis: Any, token: str, term: int, clock: Clock) -> bool:
        """Write the queued records, fenced; False when the lease is not ``token``'s."""
        script = redis.register_script(SAVE_BREAKER)
        pending, self._pending = self._pending, {}
        try:
            for name, record in pending.items():
                async with clock.timeout(CALL_TIMEOUT_S):
                    result = await script(
                        keys=[self._keys.leader, self._keys.breaker(name)],
                        args=[
                            token,
                            record.state.value,
                            "" if record.opened_at_wall is None else repr(record.opened_at_wall),
                            "" if record.open_until_wall is None else repr(record.open_until_wall),
                            record.open_level,
                            term,
                        ],
                    )
                if int(result) < 0:
                    return False
        except BaseException:
            for name, record in pending.items():
                self._pending.setdefault(name, record)
            raise
        return True

    async def refresh(self, redis: Any, clock: Clock) -> None:
        """Mirror what Redis holds (at promotion, and on followers for display)."""
        for name in self._names:
            async with clock.timeout(CALL_TIMEOUT_S):
                fields = await redis.hgetall(self._keys.breaker(name))
            record = decode_record(fields) if fields else None
            if record is not None:
                self._records[name] = record
