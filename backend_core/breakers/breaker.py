"""The breaker the app uses: the pure core under a clock, a store and listeners.

The one call shape is the permit API, for work that may fail at any point::

    permit = breaker.acquire()          # CircuitOpenError (with retry_after_s) if rejected
    try:
        await work()
    except Exception as exc:
        breaker.record_failure(permit, exc)
        raise
    except BaseException:               # cancelled: neither success nor failure
        breaker.release(permit)
        raise
    breaker.record_success(permit)

Every decision is synchronous and taken before or after the await, never across it, so
asyncio code needs no lock. A rejection allocates one small exception whose message is
formatted only when read. Listeners hear each :class:`Transition` via ``loop.call_soon``
(synchronously when no loop runs), never on the call path; one that raises is logged and
never breaks the breaker; once the :class:`Delivery` is closed (the registry's
``close()``) nobody hears anything, including transitions already scheduled.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from backend_core.breakers.core import (
    BreakerConfig,
    BreakerCore,
    BreakerState,
    Change,
    Outcome,
    Permit,
    Rejection,
)
from backend_core.breakers.store import BreakerRecord, BreakerStore, InMemoryBreakerStore
from backend_core.clock import Clock, SystemClock, iso_utc
from backend_core.errors import CircuitOpenError

__all__ = [
    "LAST_FAILURE_MAX_CHARS",
    "BreakerSnapshot",
    "CircuitBreaker",
    "CircuitOpenRejection",
    "Delivery",
    "Listener",
    "Transition",
    "describe",
]

logger = logging.getLogger(__name__)

_new_object: Final = object.__new__

# Longest "Type: message" kept for last_failure: enough to say what went wrong, short
# enough for a status page and a health payload (and never a traceback).
LAST_FAILURE_MAX_CHARS: Final = 200

_CLOSED: Final = BreakerState.CLOSED
_OPEN: Final = BreakerState.OPEN
_HALF_OPEN: Final = BreakerState.HALF_OPEN
_DISABLED: Final = BreakerState.DISABLED


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change, as given to listeners (and stored by the history)."""

    name: str
    from_state: BreakerState
    to_state: BreakerState
    reason: str
    at_monotonic: float
    at_wall: float


Listener: TypeAlias = Callable[[Transition], None]


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A consistent read of one breaker for health and metrics (times are wall-clock)."""

    name: str
    state: BreakerState
    failure_count: int
    failure_rate: float | None
    calls_in_window: int
    in_flight_probes: int
    opened_at: float | None
    retry_after_s: float
    open_period_s: float
    last_failure: str | None
    last_failure_at: float | None
    transition_count: int
    generation: int
    last_outage_s: float | None
    successes_total: int
    failures_total: int
    rejections_total: int
    config: dict[str, Any] = field(hash=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values; wall times also as UTC ISO 8601 (DESIGN rule 7)."""
        return {
            "name": self.name,
            "state": str(self.state),
            "failure_count": self.failure_count,
            "failure_rate": self.failure_rate,
            "calls_in_window": self.calls_in_window,
            "in_flight_probes": self.in_flight_probes,
            "opened_at": self.opened_at,
            "opened_at_utc": iso_utc(self.opened_at),
            "retry_after_s": self.retry_after_s,
            "open_period_s": self.open_period_s,
            "last_failure": self.last_failure,
            "last_failure_at": self.last_failure_at,
            "last_failure_at_utc": iso_utc(self.last_failure_at),
            "transition_count": self.transition_count,
            "generation": self.generation,
            "last_outage_s": self.last_outage_s,
            "successes_total": self.successes_total,
            "failures_total": self.failures_total,
            "rejections_total": self.rejections_total,
            "config": dict(self.config),
        }


class CircuitOpenRejection(CircuitOpenError):
    """The :class:`~backend_core.errors.CircuitOpenError` a breaker raises, one per rejection.

    Same fields, ``str()`` and ``code`` as its base, but the message is formatted when it
    is read rather than when the error is made: formatting a float costs more than all the
    rest of a rejection, and most rejections are only counted, never printed.
    """

    __slots__ = ("name", "retry_after_s")

    def __init__(self, name: str, retry_after_s: float) -> None:
        # No super().__init__(): BaseException.__new__ already keeps (name, retry_after_s)
        # as ``args`` (so copy and pickle work), and nothing gets formatted here.
        self.name = name
        self.retry_after_s = retry_after_s

    @property
    def message(self) -> str:  # type: ignore[override]
        return f"circuit '{self.name}' is open; retry after {self.retry_after_s:.1f}s"

    def __str__(self) -> str:
        return self.message


class Delivery:
    """Hands transitions to listeners off the call path, until closed."""

    __slots__ = ("closed",)

    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        """From now on nothing is delivered, not even transitions already scheduled."""
        self.closed = True

    def publish(self, listeners: tuple[Listener, ...], transition: Transition) -> None:
        if self.closed or not listeners:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._deliver(listeners, transition)
        else:
            loop.call_soon(self._deliver, listeners, transition)

    def _deliver(self, listeners: tuple[Listener, ...], transition: Transition) -> None:
        for listener in listeners:
            if self.closed:
                return
            try:
                listener(transition)
            except Exception:
                # Transitions are rare (bounded by the state machine), so this log is too.
                logger.exception(
                    "circuit breaker listener %r failed on %s %s->%s",
                    listener,
                    transition.name,
                    transition.from_state,
                    transition.to_state,
                )


def describe(exc: BaseException | None) -> str:
    """``"Type: message"`` of a failure, bounded, for ``last_failure`` (never a traceback)."""
    if exc is None:
        return "Failure"
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not break the breaker
        message = "<unprintable>"
    kind = type(exc).__name__
    return (f"{kind}: {message}" if message else kind)[:LAST_FAILURE_MAX_CHARS]


class CircuitBreaker:
    """One circuit breaker (see :mod:`backend_core.breakers.core` for the state machine)."""

    __slots__ = (
        "_clock",
        "_core",
        "_delivery",
        "_fast_successes",
        "_listeners",
        "_monotonic",
        "_seen",
        "_shared",
        "_store",
        "name",
    )

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        clock: Clock | None = None,
        store: BreakerStore | None = None,
        rng: random.Random | None = None,
        enabled: bool = True,
        listeners: Iterable[Listener] = (),
        delivery: Delivery | None = None,
    ) -> None:
        if not name:
            raise ValueError("a circuit breaker needs a name")
        self.name = name
        self._core = BreakerCore(config or BreakerConfig(), enabled=enabled, rng=rng)
        self._clock: Clock = clock or SystemClock()
        # Read twice a call: bound once, and SystemClock's is time.monotonic itself (one
        # Python frame less than calling through the method).
        self._monotonic = time.monotonic if type(self._clock) is SystemClock else self._clock.monotonic
        self._store: BreakerStore = store if store is not None else InMemoryBreakerStore()
        self._shared = enabled and self._store.shared
        self._listeners: tuple[Listener, ...] = tuple(listeners)
        self._delivery = delivery if delivery is not None else Delivery()
        self._seen: BreakerRecord | None = None  # the record last written or taken
        self._fast_successes = 0  # successes counted by the fast path of record_success
        if enabled:
            self._sync(self._monotonic(), publish=False)

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._core.state}>"

    # ----------------------------------------------------------------- the permit API

    def acquire(self) -> Permit:
        """Leave to make one call, or :class:`CircuitOpenError` (a fresh one each time)."""
        core = self._core
        if core.clock_free and core.state is _CLOSED and not self._shared:
            # The core's answer is known and changes nothing (see BreakerCore): give the
            # permit here, without its calls and frames (the app's every call; the bench).
            permit = _new_object(Permit)
            permit.generation = core.generation
            permit.admitted_at_monotonic = 0.0
            permit.probe = permit.settled = False
            permit.change = None
            return permit
        now = self._monotonic()
        if self._shared:
            self._sync(now)
        admitted = core.admit(now)
        if admitted.change is not None:
            self._publish(admitted.change)
        if isinstance(admitted, Rejection):
            raise CircuitOpenRejection(self.name, admitted.retry_after_s)
        return admitted

    def record_success(self, permit: Permit) -> None:
        """The call of ``permit`` succeeded (a slow one still counts as a failure)."""
        core = self._core
        if core.clock_free and not core.failure_count and core.state is _CLOSED and not permit.settled:
            # All the core would do is count it (see BreakerCore): count it here.
            permit.settled = True
            self._fast_successes += 1
            return
        change = core.settle(permit, Outcome.SUCCESS, self._monotonic())
        if change is not None:
            self._publish(change)

    def record_failure(self, permit: Permit, exc: BaseException | None = None) -> None:
        """The call of ``permit`` failed, whatever ``exc`` is (the caller classifies)."""
        if permit.settled:
            return
        change = self._core.settle(permit, Outcome.FAILURE, self._monotonic(), describe(exc))
        if change is not None:
            self._publish(change)

    def release(self, permit: Permit) -> None:
        """The call of ``permit`` ended with no verdict (e.g. cancelled): give its slot back."""
        self._core.settle(permit, Outcome.RELEASED, self._monotonic())

    # ----------------------------------------------------------------- controls

    def allow_probe_now(self) -> bool:
        """End the open period early so the next :meth:`acquire` is the half-open probe.

        For a person's explicit "Retry": it neither closes the breaker nor lets more than
        the configured probes through. Returns whether the breaker is now HALF_OPEN.
        """
        now = self._read(self._monotonic())
        change = self._core.allow_probe_now(now)
        if change is not None:
            self._publish(change)
        return self._core.state is _HALF_OPEN

    def reset(self) -> None:
        """Back to CLOSED with counters cleared; calls in flight can no longer change it."""
        change = self._core.reset(self._monotonic())
        if change is not None:
            self._publish(change)

    # ----------------------------------------------------------------- read side

    @property
    def config(self) -> BreakerConfig:
        return self._core.config

    @property
    def state(self) -> BreakerState:
        """The current state, after applying any transition that is due by now."""
        self._read(self._monotonic())
        return self._core.state

    @property
    def retry_after_s(self) -> float:
        """Seconds until a call may be admitted again (0 unless OPEN)."""
        now = self._read(self._monotonic())
        return self._core.retry_after(now)

    def snapshot(self) -> BreakerSnapshot:
        """A consistent read for health and metrics (applies due transitions first)."""
        now = self._read(self._monotonic())
        core = self._core
        wall = self._clock.wall()
        calls, failures = core.window_totals(now)
        state = core.state
        return BreakerSnapshot(
            name=self.name,
            state=state,
            failure_count=core.failure_count,
            failure_rate=(failures / calls) if calls else None,
            calls_in_window=calls,
            in_flight_probes=core.probes_in_flight,
            opened_at=_to_wall(core.outage_started, now, wall),
            retry_after_s=core.retry_after(now),
            open_period_s=core.open_period_s if state is _OPEN else 0.0,
            last_failure=core.last_failure,
            last_failure_at=_to_wall(core.last_failure_at, now, wall),
            transition_count=core.transition_count,
            generation=core.generation,
            last_outage_s=core.last_outage_s,
            successes_total=core.successes_total + self._fast_successes,
            failures_total=core.failures_total,
            rejections_total=core.rejections_total,
            config=core.config.summary(),
        )

    # ----------------------------------------------------------------- listeners

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(transition)`` on every transition of this breaker (off the call path)."""
        if listener not in self._listeners:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners = tuple(existing for existing in self._listeners if existing != listener)

    # ----------------------------------------------------------------- internals

    def _read(self, now: float) -> float:
        """Bring the state up to ``now`` (the shared store first, then due time transitions)."""
        if self._shared:
            self._sync(now)
        change = self._core.advance(now)
        if change is not None:
            self._publish(change)
        return now

    def _publish(self, change: Change, *, save: bool = True) -> None:
        wall = self._clock.wall()
        if save:
            self._save(change.at, wall)
        transition = Transition(self.name, change.from_state, change.to_state, change.reason, change.at, wall)
        self._delivery.publish(self._listeners, transition)

    def _save(self, now: float, wall: float) -> None:
        core = self._core
        record = BreakerRecord(
            state=core.state,
            opened_at_wall=_to_wall(core.outage_started, now, wall),
            open_until_wall=wall + (core.open_until - now) if core.state is _OPEN else None,
            open_level=core.open_level,
        )
        self._seen = record
        try:
            self._store.save(self.name, record)
        except Exception:
            logger.exception("circuit breaker %r could not save its state", self.name)

    def _sync(self, now: float, *, publish: bool = True) -> None:
        """Take a record another process wrote (or a previous life of this one)."""
        try:
            record = self._store.load(self.name)
        except Exception:
            logger.exception("circuit breaker %r could not load its state; keeping its own", self.name)
            return
        if record is None or record is self._seen or record == self._seen:
            return
        self._seen = record
        wall = self._clock.wall()
        state = BreakerState(record.state)
        opened_at_wall = record.opened_at_wall if record.opened_at_wall is not None else wall
        remaining = 0.0
        if state is _OPEN and record.open_until_wall is not None:
            remaining = max(0.0, record.open_until_wall - wall)
        change = self._core.adopt(
            state,
            open_until=now + remaining,
            open_level=record.open_level,
            outage_started=now - max(0.0, wall - opened_at_wall),
            now=now,
        )
        if change is not None and publish:
            self._publish(change, save=False)


def _to_wall(monotonic: float | None, now: float, wall: float) -> float | None:
    return None if monotonic is None else wall - (now - monotonic)
