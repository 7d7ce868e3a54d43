"""Resume after a reconnect: which retained ticks to replay, and where the live stream joins.

Pure: it reads the hub's rings through :class:`TickHistory` and decides; the server sends
the replay and skips live ticks the plan says the client already has (:func:`is_stale`).
The no-gap, no-duplicate argument is in :class:`ResumePlan` and ``docs/websocket-api.md``.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from backend_core.events import Tick
from backend_core.hub import DEFAULT_RING_SIZE

# Ticks replayed per symbol on resume; the hub keeps no more than this by default.
MAX_REPLAY_PER_SYMBOL = DEFAULT_RING_SIZE


# --- resume (pure) -------------------------------------------------------------------------


class TickHistory(Protocol):
    """The part of the hub that resume reads."""

    def ticks_since(self, symbol: str, epoch: int, limit: int) -> list[Tick]: ...

    def evicted_through(self, symbol: str) -> int | None: ...


@dataclass(frozen=True, slots=True)
class ResumePlan:
    """What to replay for a ``resume`` request, and how to join the live stream after it.

    ``replay`` holds the missed ticks of every symbol, merged in epoch order.
    ``live_after`` is, per symbol, the epoch up to which the client now has everything:
    live ticks at or below it are duplicates and must be skipped. ``report`` goes into the
    ``subscribed`` ack (``replayed`` count; ``truncated`` when some missed ticks are no
    longer retained, so the client knows it has a gap).
    """

    replay: tuple[Tick, ...]
    live_after: dict[str, int]
    report: dict[str, dict[str, Any]]


def plan_resume(
    requested: Mapping[str, int], history: TickHistory, limit_per_symbol: int = MAX_REPLAY_PER_SYMBOL
) -> ResumePlan:
    per_symbol: list[list[Tick]] = []
    live_after: dict[str, int] = {}
    report: dict[str, dict[str, Any]] = {}
    for symbol, epoch in requested.items():
        # One more than the limit tells whether the limit cut the replay short.
        ticks = history.ticks_since(symbol, epoch, limit_per_symbol + 1)
        cut = len(ticks) > limit_per_symbol
        ticks = ticks[:limit_per_symbol]
        evicted = history.evicted_through(symbol)
        truncated = cut or (evicted is not None and evicted > epoch)
        per_symbol.append(ticks)
        live_after[symbol] = ticks[-1].epoch if ticks else epoch
        report[symbol] = {"from_epoch": epoch, "replayed": len(ticks), "truncated": truncated}
    replay = tuple(heapq.merge(*per_symbol, key=lambda t: t.epoch))
    return ResumePlan(replay, live_after, report)


def is_stale(tick: Tick, live_after: Mapping[str, int]) -> bool:
    """True when the client already has ``tick`` (it was replayed, or sent live before)."""
    last = live_after.get(tick.symbol)
    return last is not None and tick.epoch <= last
