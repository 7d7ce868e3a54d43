"""Circuit breakers: one synchronous state machine under thin async shapes.

State machine
=============

::

            failure_threshold consecutive failures,
            or failure rate >= limit over the window
   CLOSED ─────────────────────────────────────────────► OPEN ◄──────────┐
     ▲                                                    │              │
     │ a probe succeeds                 recovery period   │              │ a probe fails, or a probe
     │                                  has passed (lazy, │              │ hangs past half_open_max_wait_s
     │                                  on the next call) ▼              │ (the open period grows)
     └─────────────────────────────────────────────── HALF_OPEN ─────────┘

   DISABLED: every call passes through, nothing is recorded (``disable()`` or
   CIRCUIT_BREAKER_ENABLED=false). ``force_open()`` is OPEN with ``forced=True``: it never
   moves to HALF_OPEN by itself; ``reset()`` brings any state back to CLOSED.

- CLOSED counts consecutive failures (and, when a :class:`SlidingWindow` is configured,
  the failure rate over the last N calls or the last T seconds, once at least
  ``minimum_calls`` are in the window). A call slower than ``slow_call_threshold_s`` is a
  failure even if it returned. Either rule opens the breaker.
- OPEN rejects every call with a fresh :class:`~backend_core.errors.CircuitOpenError`
  carrying ``retry_after_s`` (a :class:`CircuitOpenRejection`, which formats its message
  only when it is read). The open period is ``recovery_timeout_s`` the first time and
  grows by ``backoff_multiplier`` after each failed probe, up to
  ``max_recovery_timeout_s``; jitter only shortens a grown period (never below the
  configured recovery timeout, never above the cap), so spread-out retries of many
  processes do not line up and the documented meaning of the recovery timeout holds.
- HALF_OPEN admits at most ``half_open_max_probes`` calls at once and rejects the rest.
  The first successful probe closes the breaker, a failed one re-opens it. If a probe
  gives no verdict within ``half_open_max_wait_s`` the next call attempt re-opens the
  breaker (a hung probe is a failed probe), so a hung call can never wedge it.

Every transition increments a *generation* counter. Each admitted call remembers the
generation it started in, and an outcome from an older generation is counted in the
totals but never changes the state: a success that arrives after its probe sibling
failed, or a failure of a call started before ``reset()``, cannot flip the breaker.

Outcomes are classified once: ``asyncio.CancelledError`` (and any other BaseException
that is not an Exception) is neither success nor failure and gives a probe slot back;
an exception matched by ``ignore`` is neither and is re-raised; an exception matched by
``record`` (default: every Exception) is a failure; any other exception is a success
(the protected service answered, the answer was an error for the caller). A returned
value for which ``failure_result`` is true is a failure, and is still returned.

Time-driven transitions (OPEN → HALF_OPEN, hung probe → OPEN) are applied lazily on the
next call attempt, ``state`` or ``snapshot()``: no timers, no tasks, the monotonic time of
the injected :class:`~backend_core.clock.Clock` is the only input.

Defects this avoids
===================

- pybreaker 1.4: holds a threading lock across the protected call (and its tornado
  ``call_async`` holds it across the yield); calls listeners inside that lock; counts
  ``asyncio.CancelledError`` (``except BaseException``) as a failure; counts an excluded
  exception as a *success* that resets the failure counter; measures the open period on
  the wall clock (``datetime.now``), so a clock step opens or closes it early or late;
  has no probe limit, so under asyncio (``with cb.calling(): await ...``) every
  concurrent call goes through in HALF_OPEN; a late result of an old call changes the
  current state.
- aiobreaker 1.2: HALF_OPEN lets every concurrent call through; no generation, so a slow
  call started while CLOSED that fails after the breaker re-closed counts against the new
  period, and a late success closes a breaker whose probe just failed; an excluded
  exception counts as a success; replaces the caller's exception by
  ``CircuitBreakerError`` on the tripping call; listeners run inline on the call path;
  wall clock (``datetime.utcnow``).
- purgatory 3.0: the OPEN state object *is* the exception and is raised again for every
  rejection (``raise self``), so one shared instance accumulates a traceback (and keeps
  every rejected frame alive) - memory and time per rejection grow without bound; a
  CancelledError counts as a failure; HALF_OPEN admits everyone; wall clock
  (``time.time``); its decorator resolves the breaker through an async unit of work on
  every call.

Here the state machine is synchronous: decisions are taken before and after the await,
never across it, so asyncio code needs no lock at all. Listeners are scheduled with
``loop.call_soon`` (synchronously when no loop runs), and one that raises is logged and
never breaks the breaker. A rejection allocates one small exception and nothing else.

Shapes
======

``@breaker`` on an async function, ``await breaker.call(fn, *args, **kwargs)``,
``async with breaker:`` and the explicit permit API for work that fails mid-stream
(``permit = breaker.acquire()``, then exactly one of ``record_success(permit)``,
``record_failure(permit, exc)``, ``record_exception(permit, exc)`` or
``release(permit)``). :class:`BreakerRegistry` builds the "websocket" breaker and the
"api:<route>" breakers from :class:`~backend_core.config.Settings`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import random as _random
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from contextvars import ContextVar
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, ParamSpec, Protocol, TypeAlias, TypeVar

from backend_core.clock import Clock, SystemClock, iso_utc
from backend_core.errors import CircuitOpenError

if TYPE_CHECKING:
    from backend_core.config import Settings

__all__ = [
    "MAX_API_BREAKERS",
    "BreakerConfig",
    "BreakerRecord",
    "BreakerRegistry",
    "BreakerSnapshot",
    "BreakerState",
    "BreakerStore",
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitOpenRejection",
    "InMemoryBreakerStore",
    "Permit",
    "SlidingWindow",
    "Transition",
]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

ExceptionFilter: TypeAlias = Callable[[BaseException], bool] | type[BaseException] | tuple[type[BaseException], ...]
"""Which exceptions a rule applies to: a predicate, an exception class or a tuple of them."""

Listener: TypeAlias = Callable[["Transition"], None]

# Longest "Type: message" kept for last_failure: enough to say what went wrong, short
# enough for a status page and a health payload (and never a traceback).
LAST_FAILURE_MAX_CHARS: Final = 200

# Route templates are a finite set written in our code ("/api/v1/ticks/{symbol}"); 256 is
# far above any real API and bounds the registry if a caller passes raw paths by mistake.
# Routes past the bound share one overflow breaker instead of growing the registry.
MAX_API_BREAKERS: Final = 256
API_OVERFLOW_NAME: Final = "api:*"
# A template longer than this is not a template (DESIGN rule 5: bounded everything).
MAX_ROUTE_TEMPLATE_CHARS: Final = 200

# A count window is a bytearray of this many outcomes at most (100 kB).
MAX_COUNT_WINDOW: Final = 100_000
# A time window is kept as this many buckets: memory does not depend on the call rate,
# and old outcomes leave the window in steps of size/_TIME_BUCKETS seconds.
TIME_WINDOW_BUCKETS: Final = 20


class BreakerState(StrEnum):
    """The state reported to health, metrics and listeners."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    DISABLED = "disabled"


_CLOSED: Final = BreakerState.CLOSED
_OPEN: Final = BreakerState.OPEN
_HALF_OPEN: Final = BreakerState.HALF_OPEN
_DISABLED: Final = BreakerState.DISABLED

# The generation of permits handed out while disabled: never equal to a real one.
_UNTRACKED: Final = -1


@dataclass(frozen=True, slots=True)
class SlidingWindow:
    """Failure-rate rule: open when ``failure_rate_threshold`` of the calls in the window
    failed, once the window holds at least ``minimum_calls``.

    ``kind="count"``: the last ``size`` calls. ``kind="time"``: the calls of the last
    ``size`` seconds.
    """

    kind: Literal["count", "time"]
    size: float
    failure_rate_threshold: float = 0.5
    minimum_calls: int = 10

    def __post_init__(self) -> None:
        if self.kind not in ("count", "time"):
            raise ValueError(f"window kind must be 'count' or 'time', not {self.kind!r}")
        if self.kind == "count" and (self.size != int(self.size) or not 1 <= self.size <= MAX_COUNT_WINDOW):
            raise ValueError(f"a count window holds a whole number of calls from 1 to {MAX_COUNT_WINDOW}")
        if self.kind == "time" and not 0 < self.size <= 86_400:
            raise ValueError("a time window lasts more than 0 and at most 86400 seconds")
        if not 0 < self.failure_rate_threshold <= 1:
            raise ValueError("failure_rate_threshold must be greater than 0 and at most 1")
        if self.minimum_calls < 1:
            raise ValueError("minimum_calls must be at least 1")

    @classmethod
    def count(cls, calls: int, failure_rate_threshold: float = 0.5, minimum_calls: int = 10) -> SlidingWindow:
        return cls("count", calls, failure_rate_threshold, minimum_calls)

    @classmethod
    def time(cls, seconds: float, failure_rate_threshold: float = 0.5, minimum_calls: int = 10) -> SlidingWindow:
        return cls("time", seconds, failure_rate_threshold, minimum_calls)


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """How one breaker decides. Every field has a safe default; validated on creation."""

    failure_threshold: int = 5
    recovery_timeout_s: float = 30.0
    half_open_max_probes: int = 1
    # Longer than any sane probe (a connect plus an authorize); past it the probe is hung.
    half_open_max_wait_s: float = 60.0
    window: SlidingWindow | None = None
    slow_call_threshold_s: float | None = None
    record: ExceptionFilter | None = None
    ignore: ExceptionFilter | None = None
    failure_result: Callable[[Any], bool] | None = None
    backoff_multiplier: float = 1.0
    max_recovery_timeout_s: float | None = None
    jitter_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if not self.recovery_timeout_s > 0:
            raise ValueError("recovery_timeout_s must be greater than 0")
        if self.half_open_max_probes < 1:
            raise ValueError("half_open_max_probes must be at least 1")
        if not self.half_open_max_wait_s > 0:
            raise ValueError("half_open_max_wait_s must be greater than 0")
        if self.slow_call_threshold_s is not None and not self.slow_call_threshold_s > 0:
            raise ValueError("slow_call_threshold_s must be greater than 0 or None")
        if not self.backoff_multiplier >= 1:
            raise ValueError("backoff_multiplier must be at least 1")
        if self.max_recovery_timeout_s is not None and self.max_recovery_timeout_s < self.recovery_timeout_s:
            raise ValueError("max_recovery_timeout_s must be at least recovery_timeout_s")
        if not 0 <= self.jitter_ratio < 1:
            raise ValueError("jitter_ratio must be from 0 up to (not including) 1")

    def summary(self) -> dict[str, Any]:
        """The numbers of this config, for health output (predicates are shown as set or not)."""
        window = self.window
        return {
            "failure_threshold": self.failure_threshold,
            "recovery_timeout_s": self.recovery_timeout_s,
            "half_open_max_probes": self.half_open_max_probes,
            "half_open_max_wait_s": self.half_open_max_wait_s,
            "window": None
            if window is None
            else {
                "kind": window.kind,
                "size": window.size,
                "failure_rate_threshold": window.failure_rate_threshold,
                "minimum_calls": window.minimum_calls,
            },
            "slow_call_threshold_s": self.slow_call_threshold_s,
            "backoff_multiplier": self.backoff_multiplier,
            "max_recovery_timeout_s": self.max_recovery_timeout_s,
            "jitter_ratio": self.jitter_ratio,
            "custom_record": self.record is not None,
            "custom_ignore": self.ignore is not None,
            "failure_result": self.failure_result is not None,
        }


@dataclass(frozen=True, slots=True)
class Transition:
    """One state change, as given to listeners (and stored by backend_core.store)."""

    name: str
    from_state: BreakerState
    to_state: BreakerState
    reason: str
    at_monotonic: float
    at_wall: float


@dataclass(frozen=True, slots=True)
class BreakerSnapshot:
    """A consistent read of one breaker for health and metrics."""

    name: str
    state: BreakerState
    forced: bool
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
    ignored_total: int
    config: dict[str, Any] = field(hash=False)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values; wall times also as UTC ISO 8601 (DESIGN rule 7)."""
        return {
            "name": self.name,
            "state": str(self.state),
            "forced": self.forced,
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
            "ignored_total": self.ignored_total,
            "config": dict(self.config),
        }


# --------------------------------------------------------------------------- store


@dataclass(frozen=True, slots=True)
class BreakerRecord:
    """What a breaker writes to its store on every transition.

    Times are wall-clock so another process (or this one after a restart) can read them.
    """

    state: BreakerState
    forced: bool
    opened_at_wall: float | None
    open_until_wall: float | None
    open_level: int


class BreakerStore(Protocol):
    """Where breakers keep their state (DESIGN.md "Growing past one machine").

    Written on transitions only, never on the per-call path; read when a breaker is
    created. A shared implementation (Redis) plugs in here; ``save`` is called from the
    event loop, so such a store queues the write instead of blocking on it. An exception
    from either method is logged and the breaker carries on with its own state.
    """

    def load(self, name: str) -> BreakerRecord | None: ...

    def save(self, name: str, record: BreakerRecord) -> None: ...


class InMemoryBreakerStore:
    """The one-process store: a dict, bounded by the number of breakers that use it."""

    __slots__ = ("_records",)

    def __init__(self) -> None:
        self._records: dict[str, BreakerRecord] = {}

    def load(self, name: str) -> BreakerRecord | None:
        return self._records.get(name)

    def save(self, name: str, record: BreakerRecord) -> None:
        self._records[name] = record


# --------------------------------------------------------------------------- windows


class _CountWindow:
    """The outcomes of the last ``size`` calls in a ring of bytes (1 = failure)."""

    __slots__ = ("_calls", "_failures", "_index", "_outcomes", "_size")

    def __init__(self, size: int) -> None:
        self._size = size
        self._outcomes = bytearray(size)
        self._index = 0
        self._calls = 0
        self._failures = 0

    def record(self, failed: bool, now: float) -> None:
        index = self._index
        if self._calls == self._size:
            self._failures -= self._outcomes[index]
        else:
            self._calls += 1
        self._outcomes[index] = failed
        self._failures += failed
        self._index = (index + 1) % self._size

    def totals(self, now: float) -> tuple[int, int]:
        return self._calls, self._failures

    def clear(self) -> None:
        self._outcomes = bytearray(self._size)
        self._index = self._calls = self._failures = 0


class _TimeWindow:
    """Calls and failures of the last ``seconds``, in TIME_WINDOW_BUCKETS fixed buckets."""

    __slots__ = ("_bucket_s", "_calls", "_epochs", "_failures")

    def __init__(self, seconds: float) -> None:
        self._bucket_s = seconds / TIME_WINDOW_BUCKETS
        self._epochs = [-1] * TIME_WINDOW_BUCKETS
        self._calls = [0] * TIME_WINDOW_BUCKETS
        self._failures = [0] * TIME_WINDOW_BUCKETS

    def record(self, failed: bool, now: float) -> None:
        epoch = int(now // self._bucket_s)
        slot = epoch % TIME_WINDOW_BUCKETS
        if self._epochs[slot] != epoch:
            self._epochs[slot] = epoch
            self._calls[slot] = 0
            self._failures[slot] = 0
        self._calls[slot] += 1
        self._failures[slot] += failed

    def totals(self, now: float) -> tuple[int, int]:
        oldest = int(now // self._bucket_s) - TIME_WINDOW_BUCKETS
        calls = failures = 0
        for slot, epoch in enumerate(self._epochs):
            if epoch > oldest:
                calls += self._calls[slot]
                failures += self._failures[slot]
        return calls, failures

    def clear(self) -> None:
        self._epochs = [-1] * TIME_WINDOW_BUCKETS
        self._calls = [0] * TIME_WINDOW_BUCKETS
        self._failures = [0] * TIME_WINDOW_BUCKETS


# --------------------------------------------------------------------------- permit


class Permit:
    """Leave to make one call; settle it exactly once (later settlements are no-ops)."""

    __slots__ = ("generation", "probe", "settled", "started_at")

    def __init__(self, generation: int, started_at: float, probe: bool) -> None:
        self.generation = generation
        self.started_at = started_at
        self.probe = probe
        self.settled = False

    def __repr__(self) -> str:
        return f"Permit(generation={self.generation}, probe={self.probe}, settled={self.settled})"


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


# The open ``async with breaker:`` blocks of the current task (a ContextVar is task-local),
# innermost first, as a chain of [breaker, permit or generation, enclosing frame]. Leaving
# a block marks its frame finished (breaker slot None) instead of setting the variable
# again, which halves the cost; the next entry skips finished frames, so the chain never
# holds more than the open blocks plus the last finished ones. A child task inherits the
# chain but only ever pushes onto its own copy of the variable, and only finds its own
# frames first.
_ACTIVE_BLOCKS: ContextVar[list[Any] | None] = ContextVar("backend_core_breaker_blocks", default=None)
_get_blocks = _ACTIVE_BLOCKS.get
_set_blocks = _ACTIVE_BLOCKS.set


def _as_predicate(rule: ExceptionFilter) -> Callable[[BaseException], bool]:
    if isinstance(rule, type):
        kind: type[BaseException] = rule
        return lambda exc: isinstance(exc, kind)
    if isinstance(rule, tuple):
        kinds = rule
        return lambda exc: isinstance(exc, kinds)
    return rule


def _is_exception(exc: BaseException) -> bool:
    return isinstance(exc, Exception)


def _describe(kind: str, message: str) -> str:
    text = f"{kind}: {message}" if message else kind
    return text[:LAST_FAILURE_MAX_CHARS]


def _describe_exception(exc: BaseException) -> str:
    try:
        message = str(exc)
    except Exception:  # a broken __str__ must not break the breaker
        message = "<unprintable>"
    return _describe(type(exc).__name__, message)


def _deliver(listeners: tuple[Listener, ...], transition: Transition) -> None:
    for listener in listeners:
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


# --------------------------------------------------------------------------- breaker


class CircuitBreaker:
    """One circuit breaker. See the module docstring for the state machine.

    Single-threaded by design (asyncio): every decision is synchronous and taken before
    or after the protected await, never across it.
    """

    __slots__ = (
        "_clock",
        "_config",
        "_failure_count",
        "_failure_result",
        "_failures_total",
        "_fast",
        "_forced",
        "_generation",
        "_half_open_deadline",
        "_ignore",
        "_ignored_total",
        "_last_failure",
        "_last_failure_at",
        "_last_outage_s",
        "_listeners",
        "_monotonic",
        "_open_level",
        "_open_period_s",
        "_open_until",
        "_opened_at_wall",
        "_outage_started",
        "_probes_in_flight",
        "_random",
        "_record",
        "_rejections_total",
        "_simple",
        "_slow_s",
        "_state",
        "_store",
        "_successes_total",
        "_timed",
        "_transition_count",
        "_window",
        "name",
    )

    def __init__(
        self,
        name: str,
        config: BreakerConfig | None = None,
        *,
        clock: Clock | None = None,
        store: BreakerStore | None = None,
        random: Callable[[], float] | None = None,
        enabled: bool = True,
        listeners: Iterable[Listener] = (),
    ) -> None:
        if not name:
            raise ValueError("a circuit breaker needs a name")
        self.name = name
        config = config or BreakerConfig()
        self._config = config
        self._clock: Clock = clock or SystemClock()
        self._monotonic = self._clock.monotonic  # bound once: it is read on every rejection
        self._store: BreakerStore = store if store is not None else InMemoryBreakerStore()
        self._random = random or _random.random
        self._listeners: tuple[Listener, ...] = tuple(listeners)

        self._record = _as_predicate(config.record) if config.record is not None else _is_exception
        self._ignore = _as_predicate(config.ignore) if config.ignore is not None else None
        self._failure_result = config.failure_result
        self._slow_s = config.slow_call_threshold_s
        self._timed = self._slow_s is not None
        window = config.window
        self._window: _CountWindow | _TimeWindow | None
        if window is None:
            self._window = None
        elif window.kind == "count":
            self._window = _CountWindow(int(window.size))
        else:
            self._window = _TimeWindow(window.size)
        # True when a CLOSED call needs nothing but the generation and an outcome.
        self._simple = window is None and self._slow_s is None and self._failure_result is None

        self._state: BreakerState = _CLOSED if enabled else _DISABLED
        self._fast = enabled and self._simple
        self._forced = False
        self._generation = 0
        self._failure_count = 0
        self._probes_in_flight = 0
        self._half_open_deadline = 0.0
        self._open_until = 0.0
        self._open_level = 0
        self._open_period_s = 0.0
        self._opened_at_wall: float | None = None
        self._outage_started: float | None = None
        self._last_outage_s: float | None = None
        self._last_failure: str | None = None
        self._last_failure_at: float | None = None
        self._transition_count = 0
        self._successes_total = 0
        self._failures_total = 0
        self._rejections_total = 0
        self._ignored_total = 0
        if enabled:
            self._restore()

    def __repr__(self) -> str:
        return f"<CircuitBreaker {self.name!r} {self._state}{' forced' if self._forced else ''}>"

    # ----------------------------------------------------------------- read side

    @property
    def config(self) -> BreakerConfig:
        return self._config

    @property
    def state(self) -> BreakerState:
        """The current state, after applying any transition that is due by now."""
        if self._state is _OPEN or self._state is _HALF_OPEN:
            self._apply_due(self._monotonic())
        return self._state

    @property
    def forced(self) -> bool:
        return self._forced

    @property
    def retry_after_s(self) -> float:
        """Seconds until a call may be admitted again (0 unless OPEN)."""
        if self.state is not _OPEN:
            return 0.0
        if self._forced:
            return self._config.recovery_timeout_s
        return max(0.0, self._open_until - self._monotonic())

    def snapshot(self) -> BreakerSnapshot:
        """A consistent read for health and metrics (applies due time transitions first)."""
        now = self._monotonic()
        if self._state is _OPEN or self._state is _HALF_OPEN:
            self._apply_due(now)
        state = self._state
        calls = failures = 0
        if self._window is not None:
            calls, failures = self._window.totals(now)
        if state is _OPEN:
            retry_after = self._config.recovery_timeout_s if self._forced else max(0.0, self._open_until - now)
        else:
            retry_after = 0.0
        return BreakerSnapshot(
            name=self.name,
            state=state,
            forced=self._forced,
            failure_count=self._failure_count,
            failure_rate=(failures / calls) if calls else None,
            calls_in_window=calls,
            in_flight_probes=self._probes_in_flight,
            opened_at=self._opened_at_wall,
            retry_after_s=retry_after,
            open_period_s=self._open_period_s if state is _OPEN else 0.0,
            last_failure=self._last_failure,
            last_failure_at=self._last_failure_at,
            transition_count=self._transition_count,
            generation=self._generation,
            last_outage_s=self._last_outage_s,
            successes_total=self._successes_total,
            failures_total=self._failures_total,
            rejections_total=self._rejections_total,
            ignored_total=self._ignored_total,
            config=self._config.summary(),
        )

    # ----------------------------------------------------------------- listeners

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener(transition)`` on every transition (via ``loop.call_soon``)."""
        if listener not in self._listeners:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners = tuple(existing for existing in self._listeners if existing != listener)

    # ----------------------------------------------------------------- shapes

    async def call(self, fn: Callable[P, Awaitable[R]], /, *args: P.args, **kwargs: P.kwargs) -> R:
        """Await ``fn(*args, **kwargs)`` under the breaker; raises CircuitOpenError if rejected."""
        if self._fast:
            # CLOSED, consecutive-count mode: no permit object, no clock read.
            generation = self._generation
            try:
                result = await fn(*args, **kwargs)
            except BaseException as exc:
                self._settle_exception(generation, False, 0.0, exc)
                raise
            self._successes_total += 1
            if self._failure_count and generation == self._generation:
                self._failure_count = 0
            return result
        state = self._state
        if state is _OPEN and not self._forced:
            now = self._monotonic()
            if now < self._open_until:
                # acquire()'s rejection, inlined: one frame less per rejected call.
                self._rejections_total += 1
                raise CircuitOpenRejection(self.name, self._open_until - now)
        elif state is _DISABLED:
            return await fn(*args, **kwargs)
        # Acquire before creating the helper coroutine: a rejection allocates only the error.
        return await self._guarded_call(self.acquire(), fn, args, kwargs)

    async def _guarded_call(
        self, permit: Permit, fn: Callable[..., Awaitable[R]], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> R:
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            self.record_exception(permit, exc)
            raise
        failure_result = self._failure_result
        if failure_result is not None and failure_result(result):
            if not permit.settled and permit.generation != _UNTRACKED:
                permit.settled = True
                self._failed(permit.generation, permit.started_at, _describe("FailureResult", repr(result)))
        else:
            self.record_success(permit)
        return result

    def __call__(self, fn: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        """Decorate an async function so that every call goes through this breaker."""
        if not inspect.iscoroutinefunction(fn) and not inspect.iscoroutinefunction(getattr(fn, "__call__", None)):  # noqa: B004
            raise TypeError(f"@{self.name!r} breaker decorates async functions, not {fn!r}")
        breaker = self

        @functools.wraps(fn)
        async def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
            # The fast path of call(), inlined: one coroutine frame less per call.
            if breaker._fast:
                generation = breaker._generation
                try:
                    result = await fn(*args, **kwargs)
                except BaseException as exc:
                    breaker._settle_exception(generation, False, 0.0, exc)
                    raise
                breaker._successes_total += 1
                if breaker._failure_count and generation == breaker._generation:
                    breaker._failure_count = 0
                return result
            state = breaker._state
            if state is _OPEN and not breaker._forced:
                now = breaker._monotonic()
                if now < breaker._open_until:
                    breaker._rejections_total += 1
                    raise CircuitOpenRejection(breaker.name, breaker._open_until - now)
            elif state is _DISABLED:
                return await fn(*args, **kwargs)
            return await breaker._guarded_call(breaker.acquire(), fn, args, kwargs)

        return guarded

    async def __aenter__(self) -> CircuitBreaker:
        held: int | Permit
        if self._fast:
            held = self._generation
        else:
            if self._state is _OPEN and not self._forced:
                now = self._monotonic()
                if now < self._open_until:
                    # acquire()'s rejection, inlined: one frame less per rejected call.
                    self._rejections_total += 1
                    raise CircuitOpenRejection(self.name, self._open_until - now)
            held = self.acquire()
        enclosing = _get_blocks()
        while enclosing is not None and enclosing[0] is None:
            enclosing = enclosing[2]
        _set_blocks([self, held, enclosing])
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        frame = _get_blocks()
        while frame is not None and frame[0] is None:
            frame = frame[2]
        if frame is None or frame[0] is not self:
            raise RuntimeError(f"'async with' blocks of breaker {self.name!r} are not nested properly")
        frame[0] = None
        held = frame[1]
        if type(held) is int:  # entered on the fast path
            if exc is not None:
                self._settle_exception(held, False, 0.0, exc)
                return
            self._successes_total += 1
            if self._failure_count and held == self._generation:
                self._failure_count = 0
        elif exc is None:
            self.record_success(held)
        else:
            self.record_exception(held, exc)

    # ----------------------------------------------------------------- permit API

    def acquire(self) -> Permit:
        """Leave to make one call, or CircuitOpenError (a fresh one each time)."""
        state = self._state
        if state is _CLOSED:
            return Permit(self._generation, self._monotonic() if self._timed else 0.0, False)
        if state is _DISABLED:
            return Permit(_UNTRACKED, 0.0, False)
        now = self._monotonic()
        if state is _OPEN:
            if self._forced:
                self._rejections_total += 1
                raise CircuitOpenRejection(self.name, self._config.recovery_timeout_s)
            if now < self._open_until:
                self._rejections_total += 1
                raise CircuitOpenRejection(self.name, self._open_until - now)
        self._apply_due(now)
        if self._state is _HALF_OPEN and self._probes_in_flight < self._config.half_open_max_probes:
            if not self._probes_in_flight:
                self._half_open_deadline = now + self._config.half_open_max_wait_s
            self._probes_in_flight += 1
            return Permit(self._generation, now, True)
        self._rejections_total += 1
        if self._state is _OPEN:  # a hung probe just re-opened it
            raise CircuitOpenRejection(self.name, self._open_until - now)
        # HALF_OPEN and full: the verdict is due by the half-open deadline at the latest.
        retry_after = min(max(0.0, self._half_open_deadline - now), self._config.recovery_timeout_s)
        raise CircuitOpenRejection(self.name, retry_after)

    def record_success(self, permit: Permit) -> None:
        """The call of ``permit`` succeeded (a slow one still counts as a failure)."""
        if permit.settled or permit.generation == _UNTRACKED:
            return
        permit.settled = True
        self._succeeded(permit.generation, permit.started_at)

    def record_failure(self, permit: Permit, exc: BaseException | None = None) -> None:
        """The call of ``permit`` failed, whatever ``exc`` is (no classification)."""
        if permit.settled or permit.generation == _UNTRACKED:
            return
        permit.settled = True
        self._failed(permit.generation, permit.started_at, "Failure" if exc is None else _describe_exception(exc))

    def record_exception(self, permit: Permit, exc: BaseException) -> None:
        """The call of ``permit`` raised ``exc``: classified by the record/ignore rules."""
        if permit.settled or permit.generation == _UNTRACKED:
            return
        permit.settled = True
        self._settle_exception(permit.generation, permit.probe, permit.started_at, exc)

    def release(self, permit: Permit) -> None:
        """The call of ``permit`` ended with no verdict (e.g. cancelled): give its slot back."""
        if permit.settled:
            return
        permit.settled = True
        self._released(permit.generation, permit.probe)

    # ----------------------------------------------------------------- controls

    def force_open(self) -> None:
        """Reject every call until :meth:`reset` (an operator's decision, not a timer's)."""
        if self._state is _OPEN and self._forced:
            return
        now = self._monotonic()
        self._forced = True
        self._open_period_s = self._config.recovery_timeout_s
        self._open_until = now + self._open_period_s
        self._transition(_OPEN, "forced_open", now)

    def disable(self) -> None:
        """Pass every call through and report "disabled" until :meth:`enable`."""
        if self._state is _DISABLED:
            return
        self._forced = False
        self._transition(_DISABLED, "disabled", self._monotonic())

    def enable(self) -> None:
        """Leave the disabled state for a fresh CLOSED one (no-op when not disabled)."""
        if self._state is not _DISABLED:
            return
        self._transition(_CLOSED, "enabled", self._monotonic())

    def reset(self) -> None:
        """Back to CLOSED with counters cleared; calls in flight can no longer change it.

        The ``*_total`` counters are kept (metrics counters only go up). A disabled breaker
        stays disabled.
        """
        now = self._monotonic()
        self._forced = False
        if self._state is _DISABLED:
            self._generation += 1
            self._clear_counters()
            return
        self._transition(_CLOSED, "reset", now)

    def allow_probe_now(self) -> bool:
        """End the open period early so the next :meth:`acquire` is the half-open probe.

        For a person's explicit "Retry": it neither closes the breaker nor lets more than
        the configured probes through, and a forced-open breaker stays open. Returns
        whether the breaker is now HALF_OPEN.
        """
        if self._state is not _OPEN or self._forced:
            return self._state is _HALF_OPEN
        now = self._monotonic()
        self._open_until = now
        self._transition(_HALF_OPEN, "manual_probe", now)
        return True

    # ----------------------------------------------------------------- the state machine

    def _settle_exception(self, generation: int, probe: bool, started_at: float, exc: BaseException) -> None:
        if not isinstance(exc, Exception):  # CancelledError, KeyboardInterrupt, SystemExit, GeneratorExit
            self._released(generation, probe)
            return
        ignore = self._ignore
        if ignore is not None and ignore(exc):
            self._ignored_total += 1
            self._released(generation, probe)
            return
        if self._record(exc):
            self._failed(generation, started_at, _describe_exception(exc))
        else:
            self._succeeded(generation, started_at)

    def _released(self, generation: int, probe: bool) -> None:
        if probe and generation == self._generation and self._probes_in_flight:
            self._probes_in_flight -= 1

    def _succeeded(self, generation: int, started_at: float) -> None:
        slow_s = self._slow_s
        now = 0.0
        if slow_s is not None or self._window is not None or self._state is _HALF_OPEN:
            now = self._monotonic()
            if slow_s is not None and now - started_at >= slow_s:
                self._failed(
                    generation, started_at, _describe("SlowCall", f"took {now - started_at:.3f}s (limit {slow_s:.3f}s)")
                )
                return
        self._successes_total += 1
        if generation != self._generation:
            return  # a late result of an older generation: counted, never decisive
        state = self._state
        if state is _CLOSED:
            self._failure_count = 0
            window = self._window
            if window is not None:
                window.record(False, now)
                if self._rate_exceeded(now):
                    self._open(now, "failure_rate", after_probe=False)
        elif state is _HALF_OPEN:
            self._transition(_CLOSED, "probe_succeeded", now)

    def _failed(self, generation: int, started_at: float, description: str) -> None:
        self._failures_total += 1
        self._last_failure = description
        self._last_failure_at = self._clock.wall()
        if generation != self._generation:
            return
        now = self._monotonic()
        state = self._state
        if state is _CLOSED:
            self._failure_count += 1
            window = self._window
            if window is not None:
                window.record(True, now)
            if self._failure_count >= self._config.failure_threshold:
                self._open(now, "failure_threshold", after_probe=False)
            elif window is not None and self._rate_exceeded(now):
                self._open(now, "failure_rate", after_probe=False)
        elif state is _HALF_OPEN:
            self._open(now, "probe_failed", after_probe=True)

    def _rate_exceeded(self, now: float) -> bool:
        window_config = self._config.window
        if self._window is None or window_config is None:
            return False
        calls, failures = self._window.totals(now)
        return calls >= window_config.minimum_calls and failures >= window_config.failure_rate_threshold * calls

    def _apply_due(self, now: float) -> None:
        if self._state is _OPEN:
            if not self._forced and now >= self._open_until:
                self._transition(_HALF_OPEN, "recovery_timeout", now)
        elif self._state is _HALF_OPEN and self._probes_in_flight and now >= self._half_open_deadline:
            self._open(now, "probe_timeout", after_probe=True)

    def _open_period(self, level: int) -> float:
        config = self._config
        base = config.recovery_timeout_s
        if level == 0 or config.backoff_multiplier == 1:
            return base
        cap = config.max_recovery_timeout_s if config.max_recovery_timeout_s is not None else base * 64
        period = min(cap, base * config.backoff_multiplier ** min(level, 64))
        if config.jitter_ratio:
            period = max(base, period * (1.0 - config.jitter_ratio * self._random()))
        return period

    def _open(self, now: float, reason: str, *, after_probe: bool) -> None:
        self._open_level = self._open_level + 1 if after_probe else 0
        self._open_period_s = self._open_period(self._open_level)
        self._open_until = now + self._open_period_s
        self._transition(_OPEN, reason, now)

    def _clear_counters(self) -> None:
        self._failure_count = 0
        self._probes_in_flight = 0
        self._open_level = 0
        if self._window is not None:
            self._window.clear()

    def _transition(self, to_state: BreakerState, reason: str, now: float) -> None:
        from_state = self._state
        self._state = to_state
        self._generation += 1
        self._probes_in_flight = 0
        self._fast = to_state is _CLOSED and self._simple
        wall = self._clock.wall()
        if to_state is _CLOSED:
            self._clear_counters()
            self._forced = False
            if self._outage_started is not None:
                self._last_outage_s = now - self._outage_started
            self._outage_started = None
            self._opened_at_wall = None
            self._open_period_s = 0.0
        elif to_state is _OPEN:
            if self._outage_started is None:
                self._outage_started = now
                self._opened_at_wall = wall
        elif to_state is _DISABLED:
            self._clear_counters()
            self._outage_started = None
            self._opened_at_wall = None
            self._open_period_s = 0.0
        if from_state == to_state and reason == "reset":
            return  # a reset of a closed breaker: counters cleared, nothing to tell
        self._transition_count += 1
        self._save(wall)
        if self._listeners:
            transition = Transition(self.name, from_state, to_state, reason, now, wall)
            try:
                loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is None:
                _deliver(self._listeners, transition)
            else:
                loop.call_soon(_deliver, self._listeners, transition)

    def _save(self, wall: float) -> None:
        open_until_wall = None
        if self._state is _OPEN:
            open_until_wall = wall + (self._open_until - self._monotonic())
        record = BreakerRecord(self._state, self._forced, self._opened_at_wall, open_until_wall, self._open_level)
        try:
            self._store.save(self.name, record)
        except Exception:
            logger.exception("circuit breaker %r could not save its state", self.name)

    def _restore(self) -> None:
        try:
            record = self._store.load(self.name)
        except Exception:
            logger.exception("circuit breaker %r could not load its state; starting closed", self.name)
            return
        if record is None or BreakerState(record.state) not in (_OPEN, _HALF_OPEN):
            return
        now = self._monotonic()
        wall = self._clock.wall()
        remaining = 0.0
        if BreakerState(record.state) is _OPEN and record.open_until_wall is not None:
            remaining = max(0.0, record.open_until_wall - wall)
        # Probes of another process (or a previous life) are not ours: resume as OPEN, and
        # a half-open record is one whose open period is over.
        self._state = _OPEN
        self._fast = False
        self._forced = record.forced
        self._open_level = record.open_level
        self._open_period_s = remaining if not record.forced else self._config.recovery_timeout_s
        self._open_until = now + remaining
        self._opened_at_wall = record.opened_at_wall if record.opened_at_wall is not None else wall
        self._outage_started = now - max(0.0, wall - self._opened_at_wall)


# --------------------------------------------------------------------------- registry

# The "websocket" breaker grows its open period after each failed probe so a long Deriv
# outage is not hammered every WEBSOCKET_CB_RECOVERY_TIMEOUT seconds; the growth stops
# at 8x that timeout but no later than 10 minutes (a user waits for recovery), and the
# jitter spreads the probes of several instances.
WEBSOCKET_BACKOFF_MULTIPLIER: Final = 2.0
WEBSOCKET_MAX_RECOVERY_FACTOR: Final = 8.0
WEBSOCKET_MAX_RECOVERY_S: Final = 600.0
WEBSOCKET_JITTER_RATIO: Final = 0.2
# A websocket probe is a connect plus an authorize: each may take the connection timeout.
WEBSOCKET_PROBE_TIMEOUTS: Final = 2.0
# An API probe longer than a minute is hung: re-open rather than wait for it.
API_HALF_OPEN_MAX_WAIT_S: Final = 60.0


def websocket_config_from_settings(settings: Settings) -> BreakerConfig:
    recovery = settings.WEBSOCKET_CB_RECOVERY_TIMEOUT
    return BreakerConfig(
        failure_threshold=settings.WEBSOCKET_CB_FAILURE_THRESHOLD,
        recovery_timeout_s=recovery,
        half_open_max_wait_s=WEBSOCKET_PROBE_TIMEOUTS * settings.WEBSOCKET_CONNECTION_TIMEOUT,
        backoff_multiplier=WEBSOCKET_BACKOFF_MULTIPLIER,
        max_recovery_timeout_s=max(recovery, min(recovery * WEBSOCKET_MAX_RECOVERY_FACTOR, WEBSOCKET_MAX_RECOVERY_S)),
        jitter_ratio=WEBSOCKET_JITTER_RATIO,
    )


def api_config_from_settings(settings: Settings) -> BreakerConfig:
    return BreakerConfig(
        failure_threshold=settings.API_CB_FAILURE_THRESHOLD,
        recovery_timeout_s=settings.API_CB_RECOVERY_TIMEOUT,
        half_open_max_wait_s=API_HALF_OPEN_MAX_WAIT_S,
    )


class BreakerRegistry:
    """All breakers of one process: "websocket" and a bounded set of "api:<route>"."""

    WEBSOCKET: Final = "websocket"

    def __init__(
        self,
        *,
        websocket_config: BreakerConfig | None = None,
        api_config: BreakerConfig | None = None,
        enabled: bool = True,
        clock: Clock | None = None,
        store: BreakerStore | None = None,
        random: Callable[[], float] | None = None,
        max_api_breakers: int = MAX_API_BREAKERS,
    ) -> None:
        if max_api_breakers < 1:
            raise ValueError("max_api_breakers must be at least 1")
        self._enabled = enabled
        self._clock: Clock = clock or SystemClock()
        self._monotonic = self._clock.monotonic  # bound once: it is read on every rejection
        self._store: BreakerStore = store if store is not None else InMemoryBreakerStore()
        self._random = random
        self._api_config = api_config or BreakerConfig()
        self._max_api_breakers = max_api_breakers
        self._api_count = 0
        self._listeners: list[Listener] = []
        self._breakers: dict[str, CircuitBreaker] = {}
        self._websocket = self._create(self.WEBSOCKET, websocket_config or BreakerConfig())

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        clock: Clock | None = None,
        store: BreakerStore | None = None,
        random: Callable[[], float] | None = None,
    ) -> BreakerRegistry:
        return cls(
            websocket_config=websocket_config_from_settings(settings),
            api_config=api_config_from_settings(settings),
            enabled=settings.CIRCUIT_BREAKER_ENABLED,
            clock=clock,
            store=store,
            random=random,
        )

    @property
    def enabled(self) -> bool:
        return self._enabled

    @property
    def websocket(self) -> CircuitBreaker:
        return self._websocket

    def api(self, route_template: str) -> CircuitBreaker:
        """The breaker of one API route template, created on first use.

        Past ``max_api_breakers`` routes, new templates share the "api:*" breaker.
        """
        if not route_template or len(route_template) > MAX_ROUTE_TEMPLATE_CHARS:
            raise ValueError(f"a route template has 1 to {MAX_ROUTE_TEMPLATE_CHARS} characters")
        name = f"api:{route_template}"
        breaker = self._breakers.get(name)
        if breaker is not None:
            return breaker
        if self._api_count >= self._max_api_breakers:
            overflow = self._breakers.get(API_OVERFLOW_NAME)
            if overflow is None:
                logger.warning(
                    "more than %d API route templates; %r and later ones share the %r breaker",
                    self._max_api_breakers,
                    route_template,
                    API_OVERFLOW_NAME,
                )
                overflow = self._create(API_OVERFLOW_NAME, self._api_config)
            return overflow
        self._api_count += 1
        return self._create(name, self._api_config)

    def get(self, name: str) -> CircuitBreaker:
        """The breaker called ``name``; KeyError when there is none."""
        return self._breakers[name]

    def names(self) -> list[str]:
        return list(self._breakers)

    def snapshots(self) -> list[BreakerSnapshot]:
        return [breaker.snapshot() for breaker in self._breakers.values()]

    def reset(self, name: str) -> None:
        """Reset the breaker called ``name``; KeyError when there is none."""
        self._breakers[name].reset()

    def add_listener(self, listener: Listener) -> None:
        """Listen to every breaker, those that exist and those created later."""
        if listener in self._listeners:
            return
        self._listeners.append(listener)
        for breaker in self._breakers.values():
            breaker.add_listener(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners = [existing for existing in self._listeners if existing != listener]
        for breaker in self._breakers.values():
            breaker.remove_listener(listener)

    def __contains__(self, name: object) -> bool:
        return name in self._breakers

    def __len__(self) -> int:
        return len(self._breakers)

    def _create(self, name: str, config: BreakerConfig) -> CircuitBreaker:
        breaker = CircuitBreaker(
            name,
            config,
            clock=self._clock,
            store=self._store,
            random=self._random,
            enabled=self._enabled,
            listeners=self._listeners,
        )
        self._breakers[name] = breaker
        return breaker
