"""The circuit breaker's decisions: a pure state machine (no asyncio, no clock, no I/O).

::

            failure_threshold consecutive failures,
            or failure rate >= limit over the window
   CLOSED ─────────────────────────────────────────────► OPEN ◄──────────┐
     ▲                                                    │              │
     │ a probe succeeds                 recovery period   │              │ a probe fails, or a probe
     │                                  has passed (lazy, │              │ hangs past half_open_max_wait_s
     │                                  on the next call) ▼              │ (the open period grows)
     └─────────────────────────────────────────────── HALF_OPEN ─────────┘

   DISABLED (CIRCUIT_BREAKER_ENABLED=false): every call is admitted, nothing is counted.

- CLOSED counts consecutive failures and, with a :class:`SlidingWindow`, the failure rate
  over the last N calls or the last T seconds once ``minimum_calls`` are in the window. A
  success slower than ``slow_call_threshold_s`` is a failure.
- OPEN rejects with ``retry_after_s``. The open period is ``recovery_timeout_s`` the first
  time and grows after each failed probe by the :class:`~backend_core.backoff.Growth`
  strategy (doubling, up to ``max_recovery_timeout_s``, jitter only shortening a grown
  period and never below the recovery timeout).
- HALF_OPEN admits at most ``half_open_max_probes`` calls. The first successful probe
  closes, a failed one re-opens. A probe without a verdict for ``half_open_max_wait_s``
  is a failed probe (found on the next admission or read), so a hung call never wedges it.

Every transition (and every reset) starts a new *generation*. A permit remembers the
generation it was admitted in; a verdict on a permit of an older generation is counted in
the totals but settles nothing: a late success after its sibling probe failed, or a
failure of a call started before a reset, cannot move the breaker.

Time is an argument: ``now`` is monotonic seconds from the caller's clock. Time-driven
transitions are applied lazily by :meth:`BreakerCore.admit` and :meth:`BreakerCore.advance`.
The async shell is :class:`backend_core.breakers.breaker.CircuitBreaker`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from typing import Any, Final, Literal

from backend_core.backoff import Growth

__all__ = [
    "BreakerConfig",
    "BreakerCore",
    "BreakerState",
    "Change",
    "Outcome",
    "Permit",
    "Reason",
    "Rejection",
    "SlidingWindow",
]

# A count window is a bytearray of this many outcomes at most (100 kB).
MAX_COUNT_WINDOW: Final = 100_000
# A time window is kept as this many buckets: memory does not depend on the call rate,
# and old outcomes leave the window in steps of size/TIME_WINDOW_BUCKETS seconds.
TIME_WINDOW_BUCKETS: Final = 20
# The longest time window: a day (longer is not a failure *rate* of a live dependency).
MAX_TIME_WINDOW_S: Final = 86_400.0


class BreakerState(StrEnum):
    """The state reported to health, metrics and listeners."""

    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"
    DISABLED = "disabled"


class Reason(StrEnum):
    """Why a transition happened (stored with each transition in the history)."""

    FAILURE_THRESHOLD = "failure_threshold"
    FAILURE_RATE = "failure_rate"
    PROBE_FAILED = "probe_failed"
    PROBE_TIMEOUT = "probe_timeout"
    RECOVERY_TIMEOUT = "recovery_timeout"
    MANUAL_PROBE = "manual_probe"
    PROBE_SUCCEEDED = "probe_succeeded"
    RESET = "reset"
    # Another process decided it: the state was read from a shared BreakerStore.
    SYNCED = "synced"


class Outcome(Enum):
    """The verdict on one admitted call."""

    SUCCESS = "success"
    FAILURE = "failure"
    # No verdict (cancelled, shutting down): a probe slot is given back.
    RELEASED = "released"


_CLOSED: Final = BreakerState.CLOSED
_OPEN: Final = BreakerState.OPEN
_HALF_OPEN: Final = BreakerState.HALF_OPEN
_DISABLED: Final = BreakerState.DISABLED

# The generation of permits admitted while disabled: never equal to a real one.
UNTRACKED: Final = -1


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
        if self.kind == "time" and not 0 < self.size <= MAX_TIME_WINDOW_S:
            raise ValueError(f"a time window lasts more than 0 and at most {MAX_TIME_WINDOW_S:.0f} seconds")
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
    # None: every open period is recovery_timeout_s. Else it doubles after each failed
    # probe up to this cap, shortened by up to jitter_ratio (never below the recovery timeout).
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
        if self.max_recovery_timeout_s is not None and self.max_recovery_timeout_s < self.recovery_timeout_s:
            raise ValueError("max_recovery_timeout_s must be at least recovery_timeout_s")
        if not 0 <= self.jitter_ratio < 1:
            raise ValueError("jitter_ratio must be from 0 up to (not including) 1")

    def growth(self, rng: random.Random | None = None) -> Growth:
        """The open-period strategy of this config (its randomness injected)."""
        cap = self.max_recovery_timeout_s if self.max_recovery_timeout_s is not None else self.recovery_timeout_s
        return Growth(self.recovery_timeout_s, cap, self.jitter_ratio, rng)

    def summary(self) -> dict[str, Any]:
        """The numbers of this config, for health output."""
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
            "max_recovery_timeout_s": self.max_recovery_timeout_s,
            "jitter_ratio": self.jitter_ratio,
        }


@dataclass(frozen=True, slots=True)
class Change:
    """One state change decided by the core, at monotonic time ``at``."""

    from_state: BreakerState
    to_state: BreakerState
    reason: Reason
    at: float


@dataclass(eq=False, repr=False, slots=True)
class Permit:
    """Leave to make one call; settle it exactly once (later settlements are no-ops).

    ``change`` is the transition the admission itself made (OPEN -> HALF_OPEN), if any.
    """

    generation: int
    admitted_at_monotonic: float
    probe: bool
    change: Change | None = None
    settled: bool = field(default=False, init=False)

    def __repr__(self) -> str:
        return f"Permit(generation={self.generation}, probe={self.probe}, settled={self.settled})"


class Rejection:
    """No leave: try again in ``retry_after_s``. ``change``: a transition the attempt made
    (a hung probe found, the breaker re-opened), if any."""

    __slots__ = ("change", "retry_after_s")

    def __init__(self, retry_after_s: float, change: Change | None = None) -> None:
        self.retry_after_s = retry_after_s
        self.change = change


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


class BreakerCore:
    """One breaker's state and decisions. Single-threaded; every method is synchronous.

    The public attributes are for reading (snapshots); only the methods change them.
    ``clock_free`` is True while :meth:`admit` and a SUCCESS :meth:`settle` ignore ``now``
    (CLOSED or DISABLED, with no slow-call rule and no failure-rate window). While it is
    True and the state is CLOSED, :meth:`admit` is ``Permit(generation, now, False)`` and
    changes nothing, and a SUCCESS (of any generation) while ``failure_count == 0`` changes
    nothing but ``successes_total``: a caller may take those two steps itself, reading only
    (the shell's fast path, ``breaker.py``).
    """

    __slots__ = (
        "_growth",
        "_slow_s",
        "_timed",
        "_window",
        "clock_free",
        "config",
        "failure_count",
        "failures_total",
        "generation",
        "half_open_deadline",
        "last_failure",
        "last_failure_at",
        "last_outage_s",
        "open_level",
        "open_period_s",
        "open_until",
        "outage_started",
        "probes_in_flight",
        "rejections_total",
        "state",
        "successes_total",
        "transition_count",
    )

    def __init__(self, config: BreakerConfig, *, enabled: bool = True, rng: random.Random | None = None) -> None:
        self.config = config
        self._growth = config.growth(rng)
        self._slow_s = config.slow_call_threshold_s
        window = config.window
        self._window: _CountWindow | _TimeWindow | None
        if window is None:
            self._window = None
        elif window.kind == "count":
            self._window = _CountWindow(int(window.size))
        else:
            self._window = _TimeWindow(window.size)
        self.state: BreakerState = _CLOSED if enabled else _DISABLED
        # Whether a CLOSED breaker needs the time to admit a call or settle a success (a
        # success may open it on the failure rate, and then the time is the open's start).
        self._timed = self._slow_s is not None or window is not None
        self.clock_free = not self._timed
        self.generation = 0
        self.failure_count = 0
        self.probes_in_flight = 0
        self.half_open_deadline = 0.0
        self.open_until = 0.0
        self.open_level = 0
        self.open_period_s = 0.0
        # Monotonic time the current outage began (first OPEN since CLOSED), or None.
        self.outage_started: float | None = None
        self.last_outage_s: float | None = None
        self.last_failure: str | None = None
        self.last_failure_at: float | None = None
        self.transition_count = 0
        self.successes_total = 0
        self.failures_total = 0
        self.rejections_total = 0

    # ----------------------------------------------------------------- decisions

    def admit(self, now: float) -> Permit | Rejection:
        """A permit for one call, or a rejection with the seconds to wait."""
        state = self.state
        if state is _CLOSED:
            return Permit(self.generation, now, False)
        if state is _DISABLED:
            disabled = Permit(UNTRACKED, now, False)
            disabled.settled = True  # born settled: nothing about it is ever counted
            return disabled
        if state is _OPEN and now < self.open_until:
            self.rejections_total += 1
            return Rejection(self.open_until - now)
        change = self.advance(now)
        if self.state is _OPEN:  # a hung probe was just found: open again
            self.rejections_total += 1
            return Rejection(self.open_until - now, change)
        if self.probes_in_flight < self.config.half_open_max_probes:
            if not self.probes_in_flight:
                self.half_open_deadline = now + self.config.half_open_max_wait_s
            self.probes_in_flight += 1
            return Permit(self.generation, now, True, change)
        # HALF_OPEN and full: the verdict is due by the half-open deadline at the latest.
        self.rejections_total += 1
        return Rejection(min(max(0.0, self.half_open_deadline - now), self.config.recovery_timeout_s), change)

    def settle(self, permit: Permit, outcome: Outcome, now: float, detail: str = "Failure") -> Change | None:
        """The verdict on ``permit``'s call (``detail`` describes a failure)."""
        if permit.settled:
            return None
        permit.settled = True
        if outcome is Outcome.SUCCESS:
            slow_s = self._slow_s
            if slow_s is None or now - permit.admitted_at_monotonic < slow_s:
                self.successes_total += 1
                if permit.generation != self.generation:
                    return None  # a late result of an older generation: counted, never decisive
                if self.state is _CLOSED and self._window is None:
                    self.failure_count = 0
                    return None
                return self._succeeded(now)
            detail = f"SlowCall: took {now - permit.admitted_at_monotonic:.3f}s (limit {slow_s:.3f}s)"
        elif outcome is Outcome.RELEASED:
            if permit.probe and permit.generation == self.generation and self.probes_in_flight:
                self.probes_in_flight -= 1
            return None
        return self._failed(permit.generation, now, detail)

    def advance(self, now: float) -> Change | None:
        """Apply the time-driven transition that is due by ``now``, if any."""
        if self.state is _OPEN:
            if now >= self.open_until:
                return self._transition(_HALF_OPEN, Reason.RECOVERY_TIMEOUT, now)
        elif self.state is _HALF_OPEN and self.probes_in_flight and now >= self.half_open_deadline:
            return self._open(now, Reason.PROBE_TIMEOUT, after_probe=True)
        return None

    def retry_after(self, now: float) -> float:
        """Seconds until a call may be admitted (0 unless OPEN; call :meth:`advance` first)."""
        return max(0.0, self.open_until - now) if self.state is _OPEN else 0.0

    def window_totals(self, now: float) -> tuple[int, int]:
        """Calls and failures in the failure-rate window (0, 0 without one)."""
        return (0, 0) if self._window is None else self._window.totals(now)

    def allow_probe_now(self, now: float) -> Change | None:
        """End an open period early so the next admission is the half-open probe."""
        if self.state is not _OPEN:
            return None
        self.open_until = now
        return self._transition(_HALF_OPEN, Reason.MANUAL_PROBE, now)

    def reset(self, now: float) -> Change | None:
        """Back to CLOSED with counters cleared; calls in flight become stale.

        The ``*_total`` counters are kept (metrics counters only go up). A disabled breaker
        stays disabled, and a closed one only starts a new generation (nothing to tell).
        """
        if self.state is _DISABLED or self.state is _CLOSED:
            self.generation += 1
            self._clear_counters()
            return None
        return self._transition(_CLOSED, Reason.RESET, now)

    def adopt(
        self, state: BreakerState, *, open_until: float, open_level: int, outage_started: float, now: float
    ) -> Change | None:
        """Take the state another process decided (read from a shared store).

        OPEN elsewhere is OPEN here until ``open_until``; HALF_OPEN elsewhere is an open
        period that is over (that process's probes are not ours). CLOSED closes. A disabled
        breaker ignores it.
        """
        if self.state is _DISABLED or state is _DISABLED:
            return None
        if state is _CLOSED:
            return None if self.state is _CLOSED else self._transition(_CLOSED, Reason.SYNCED, now)
        self.open_level = open_level
        self.open_until = open_until if state is _OPEN else now
        self.open_period_s = max(0.0, self.open_until - now)
        if self.state is _OPEN:
            return None
        change = self._transition(_OPEN, Reason.SYNCED, now)
        self.outage_started = min(outage_started, now)
        return change

    # ----------------------------------------------------------------- the state machine

    def _succeeded(self, now: float) -> Change | None:
        """A success of the current generation (counted already)."""
        if self.state is _CLOSED:
            self.failure_count = 0
            window = self._window
            if window is not None:
                window.record(False, now)
                if self._rate_exceeded(now):
                    return self._open(now, Reason.FAILURE_RATE, after_probe=False)
            return None
        if self.state is _HALF_OPEN:
            return self._transition(_CLOSED, Reason.PROBE_SUCCEEDED, now)
        return None

    def _failed(self, generation: int, now: float, detail: str) -> Change | None:
        self.failures_total += 1
        self.last_failure = detail
        self.last_failure_at = now
        if generation != self.generation:
            return None
        if self.state is _CLOSED:
            self.failure_count += 1
            window = self._window
            if window is not None:
                window.record(True, now)
            if self.failure_count >= self.config.failure_threshold:
                return self._open(now, Reason.FAILURE_THRESHOLD, after_probe=False)
            if window is not None and self._rate_exceeded(now):
                return self._open(now, Reason.FAILURE_RATE, after_probe=False)
            return None
        if self.state is _HALF_OPEN:
            return self._open(now, Reason.PROBE_FAILED, after_probe=True)
        return None

    def _rate_exceeded(self, now: float) -> bool:
        window = self.config.window
        if self._window is None or window is None:
            return False
        calls, failures = self._window.totals(now)
        return calls >= window.minimum_calls and failures >= window.failure_rate_threshold * calls

    def _open(self, now: float, reason: Reason, *, after_probe: bool) -> Change:
        self.open_level = self.open_level + 1 if after_probe else 0
        base = self.config.recovery_timeout_s
        # Jitter may only shorten a grown period, never below the documented recovery timeout.
        self.open_period_s = base if self.open_level == 0 else max(base, self._growth.period(self.open_level))
        self.open_until = now + self.open_period_s
        return self._transition(_OPEN, reason, now)

    def _clear_counters(self) -> None:
        self.failure_count = 0
        self.probes_in_flight = 0
        self.open_level = 0
        if self._window is not None:
            self._window.clear()

    def _transition(self, to_state: BreakerState, reason: Reason, now: float) -> Change:
        from_state = self.state
        self.state = to_state
        self.clock_free = to_state is _CLOSED and not self._timed
        self.generation += 1
        self.probes_in_flight = 0
        self.transition_count += 1
        if to_state is _CLOSED:
            self._clear_counters()
            if self.outage_started is not None:
                self.last_outage_s = now - self.outage_started
            self.outage_started = None
            self.open_period_s = 0.0
        elif to_state is _OPEN and self.outage_started is None:
            self.outage_started = now
        return Change(from_state, to_state, reason, now)
