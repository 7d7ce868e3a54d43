"""Where breakers keep their state (DESIGN.md "Growing past one machine").

A breaker writes a :class:`BreakerRecord` on every transition and reads one when it is
created. When the store is *shared* (other processes write to it too, e.g. Redis, see
CLUSTER.md 2.5) the breaker also reads it on every admission and every state read, and
takes a record another process wrote as its own state; the one-process store is not
shared, so the call path never touches it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from backend_core.breakers.core import BreakerState

__all__ = ["BreakerRecord", "BreakerStore", "InMemoryBreakerStore"]


@dataclass(frozen=True, slots=True)
class BreakerRecord:
    """A breaker's decisive state. Times are wall-clock so another process (or this one
    after a restart) can read them; ``open_until_wall`` is set while OPEN only."""

    state: BreakerState
    opened_at_wall: float | None
    open_until_wall: float | None
    open_level: int


class BreakerStore(Protocol):
    """The breakers' persistence. Both methods are called on the event loop, so they must
    not block: a networked store keeps a local copy, answers ``load`` from it and queues
    ``save``. ``load`` returns the newest record this process saved, unless another
    process saved one since. An exception from either is logged and the breaker carries
    on with its own state.
    """

    @property
    def shared(self) -> bool:
        """True when other processes write too: breakers then read on every admission."""
        ...

    def load(self, name: str) -> BreakerRecord | None: ...

    def save(self, name: str, record: BreakerRecord) -> None: ...


class InMemoryBreakerStore:
    """The one-process store: a dict, bounded by the number of breakers that use it."""

    __slots__ = ("_records",)

    shared = False

    def __init__(self) -> None:
        self._records: dict[str, BreakerRecord] = {}

    def load(self, name: str) -> BreakerRecord | None:
        return self._records.get(name)

    def save(self, name: str, record: BreakerRecord) -> None:
        self._records[name] = record
