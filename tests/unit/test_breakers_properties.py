"""A black-box model of the circuit breaker, checked by a hypothesis state machine.

:class:`Spec` is the breaker as documented (``backend_core.breakers.core``'s docstring),
written from the rules and not from the implementation: its own notion of generations,
its own windows, its own open periods. The machine drives a real
:class:`~backend_core.breakers.breaker.CircuitBreaker` on a fake clock through the permit
API (admissions, verdicts in any order, releases, double settlements, time, resets,
manual probes) and compares only what the public surface shows: admissions, rejections
and their ``retry_after_s``, the transitions listeners hear, ``state``, ``retry_after_s``
and ``snapshot()``. The one figure read back from the breaker is a jittered open period,
and only after checking that it lies within the documented bounds.
"""

from __future__ import annotations

import json
import math
import random
from collections import deque
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from backend_core.breakers.breaker import CircuitBreaker, Transition
from backend_core.breakers.core import TIME_WINDOW_BUCKETS, BreakerConfig, BreakerState, SlidingWindow
from backend_core.clock import FakeClock
from backend_core.errors import CircuitOpenError

CLOSED, OPEN, HALF_OPEN, DISABLED = (
    BreakerState.CLOSED,
    BreakerState.OPEN,
    BreakerState.HALF_OPEN,
    BreakerState.DISABLED,
)
# At most this many calls in flight at once: plenty to fill every probe slot.
MAX_IN_FLIGHT = 12
# Settled permits kept around to settle again (which must change nothing).
MAX_SETTLED = 4
# Failures twice as often as successes: enough of them to open and to fail probes.
OUTCOMES = st.sampled_from(["success", "failure", "failure", "release"])
# Controls are rare: each one starts the breaker over.
CONTROLS = st.sampled_from(["reset", "allow_probe_now", None, None, None, None, None, None])


@dataclass
class Held:
    """A permit the test holds, with what the spec says about it."""

    permit: object
    epoch: int  # the spec's generation when it was admitted
    probe: bool
    admitted_at: float


@dataclass
class Spec:
    """The documented breaker. Times are the fake clock's monotonic seconds."""

    config: BreakerConfig
    enabled: bool
    state: BreakerState = CLOSED
    epoch: int = 0
    failures: int = 0
    probes: set[int] = field(default_factory=set)  # ids of current probe permits
    half_open_deadline: float = 0.0
    open_until: float = 0.0
    level: int = 0
    period: float = 0.0
    period_unknown: bool = False  # just opened: the (jittered) period is read back once
    opened_now: float = 0.0
    entered: list[tuple[BreakerState, float]] = field(default_factory=list)  # each state entered, and when
    last_failure: str | None = None
    last_failure_at: float | None = None
    successes_total: int = 0
    failures_total: int = 0
    rejections_total: int = 0
    transitions: list[tuple[str, str, str]] = field(default_factory=list)
    count_window: deque[bool] = field(default_factory=deque)
    time_window: list[tuple[int, bool]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.enabled:
            self.state = DISABLED

    # -- the failure-rate window, as documented: last N calls, or the last T seconds in
    # TIME_WINDOW_BUCKETS buckets (old calls leave in steps of T / buckets)
    def _bucket(self, now: float) -> int:
        assert self.config.window is not None
        return int(now // (self.config.window.size / TIME_WINDOW_BUCKETS))

    def window_totals(self, now: float) -> tuple[int, int]:
        window = self.config.window
        if window is None:
            return 0, 0
        if window.kind == "count":
            return len(self.count_window), sum(self.count_window)
        oldest = self._bucket(now) - TIME_WINDOW_BUCKETS
        kept = [(bucket, failed) for bucket, failed in self.time_window if bucket > oldest]
        self.time_window = kept
        return len(kept), sum(failed for _, failed in kept)

    def _record(self, failed: bool, now: float) -> None:
        window = self.config.window
        if window is None:
            return
        if window.kind == "count":
            if len(self.count_window) == int(window.size):
                self.count_window.popleft()
            self.count_window.append(failed)
        else:
            self.time_window.append((self._bucket(now), failed))

    def _rate_exceeded(self, now: float) -> bool:
        window = self.config.window
        if window is None:
            return False
        calls, failed = self.window_totals(now)
        return calls >= window.minimum_calls and failed >= window.failure_rate_threshold * calls

    # -- transitions
    def _to(self, to_state: BreakerState, reason: str, now: float) -> None:
        self.transitions.append((str(self.state), str(to_state), reason))
        self.state = to_state
        self.epoch += 1
        self.probes = set()
        self.entered.append((to_state, now))
        if to_state is CLOSED:
            self._clear()
            self.period = 0.0

    # -- outages, as documented: one runs from the first open after a close (or the start)
    # until the next close, whatever happens between
    def _outages(self) -> tuple[float | None, float | None]:
        """(start of the outage still running, length of the last one that ended)."""
        started: float | None = None
        last: float | None = None
        for state, at in self.entered:
            if state is OPEN and started is None:
                started = at
            elif state is CLOSED and started is not None:
                last = at - started
                started = None
        return started, last

    @property
    def outage_started(self) -> float | None:
        return self._outages()[0]

    @property
    def last_outage_s(self) -> float | None:
        return self._outages()[1]

    def _clear(self) -> None:
        self.failures = 0
        self.level = 0
        self.probes = set()
        self.count_window.clear()
        self.time_window.clear()

    def _open(self, reason: str, now: float, *, after_probe: bool) -> None:
        self.level = self.level + 1 if after_probe else 0
        self.period_unknown = True
        self.opened_now = now
        self._to(OPEN, reason, now)

    def learn_period(self, period: float) -> None:
        """The breaker's period for the open it just made, checked against the rules."""
        config = self.config
        base = config.recovery_timeout_s
        cap = config.max_recovery_timeout_s if config.max_recovery_timeout_s is not None else base
        grown = min(cap, base * 2**self.level)
        if self.level == 0 or config.jitter_ratio == 0:
            assert period == (base if self.level == 0 else grown), (period, self.level)
        else:
            assert max(base, grown * (1 - config.jitter_ratio)) - 1e-9 <= period <= grown + 1e-9, (period, self.level)
        self.period = period
        self.open_until = self.opened_now + period
        self.period_unknown = False

    def due(self, now: float) -> None:
        """Time-driven transitions, applied by every admission and every read."""
        if self.state is OPEN and now >= self.open_until:
            self._to(HALF_OPEN, "recovery_timeout", now)
        elif self.state is HALF_OPEN and self.probes and now >= self.half_open_deadline:
            self._open("probe_timeout", now, after_probe=True)

    # -- the permit API
    def admit(self, now: float) -> tuple[bool, bool, float | None]:
        """(admitted, probe, retry_after_s or None when it depends on a period to learn)."""
        if self.state is CLOSED or self.state is DISABLED:
            return True, False, None
        if self.state is OPEN and now < self.open_until:
            self.rejections_total += 1
            return False, False, self.open_until - now
        self.due(now)
        if self.state is OPEN:
            self.rejections_total += 1
            return False, False, None
        if len(self.probes) < self.config.half_open_max_probes:
            if not self.probes:
                self.half_open_deadline = now + self.config.half_open_max_wait_s
            return True, True, None
        self.rejections_total += 1
        return False, False, min(max(0.0, self.half_open_deadline - now), self.config.recovery_timeout_s)

    def settle(self, held: Held, outcome: str, now: float) -> None:
        if not self.enabled:
            return
        current = held.epoch == self.epoch
        if outcome == "release":
            if held.probe and current:
                self.probes.discard(id(held))
            return
        slow_s = self.config.slow_call_threshold_s
        if outcome == "success" and slow_s is not None and now - held.admitted_at >= slow_s:
            outcome = "slow"
        if outcome == "success":
            self.successes_total += 1
            if not current:
                return
            if self.state is CLOSED:
                self.failures = 0
                self._record(False, now)
                if self._rate_exceeded(now):
                    self._open("failure_rate", now, after_probe=False)
            elif self.state is HALF_OPEN:
                self._to(CLOSED, "probe_succeeded", now)
            return
        self.failures_total += 1
        self.last_failure = "SlowCall" if outcome == "slow" else "Boom: down"
        self.last_failure_at = now
        if not current:
            return
        if self.state is CLOSED:
            self.failures += 1
            self._record(True, now)
            if self.failures >= self.config.failure_threshold:
                self._open("failure_threshold", now, after_probe=False)
            elif self._rate_exceeded(now):
                self._open("failure_rate", now, after_probe=False)
        elif self.state is HALF_OPEN:
            self._open("probe_failed", now, after_probe=True)

    def reset(self, now: float) -> None:
        if self.state is CLOSED or self.state is DISABLED:
            self.epoch += 1  # calls in flight become stale; nothing to tell
            self._clear()
        else:
            self._to(CLOSED, "reset", now)

    def allow_probe_now(self, now: float) -> bool:
        self.due(now)
        if self.state is OPEN:
            self.open_until = now
            self.period_unknown = False  # over before it could be read (a hung probe just found)
            self._to(HALF_OPEN, "manual_probe", now)
        return self.state is HALF_OPEN


class Boom(Exception):
    pass


@st.composite
def configs(draw: st.DrawFn) -> BreakerConfig:
    window_kind = draw(st.sampled_from([None, "count", "time"]))
    window: SlidingWindow | None = None
    if window_kind == "count":
        size = draw(st.integers(2, 8))
        rate = draw(st.sampled_from([0.3, 0.5, 1.0]))
        window = SlidingWindow.count(size, failure_rate_threshold=rate, minimum_calls=draw(st.integers(1, size)))
    elif window_kind == "time":
        window = SlidingWindow.time(
            draw(st.sampled_from([5.0, 20.0])),
            failure_rate_threshold=draw(st.sampled_from([0.3, 0.5, 1.0])),
            minimum_calls=draw(st.integers(1, 5)),
        )
    recovery = draw(st.sampled_from([1.0, 5.0, 10.0]))
    growth = draw(st.booleans())
    return BreakerConfig(
        failure_threshold=draw(st.integers(1, 4)),
        recovery_timeout_s=recovery,
        half_open_max_probes=draw(st.integers(1, 3)),
        half_open_max_wait_s=draw(st.sampled_from([2.0, 15.0])),
        window=window,
        slow_call_threshold_s=draw(st.sampled_from([None, 3.0])),
        max_recovery_timeout_s=recovery * 4 if growth else None,
        jitter_ratio=draw(st.sampled_from([0.0, 0.5])),
    )


class BreakerMachine(RuleBasedStateMachine):
    """Drives one breaker and the spec side by side; every rule compares what is visible."""

    @initialize(config=configs(), enabled=st.sampled_from([True] * 9 + [False]), seed=st.integers(0, 2**32))
    def start(self, config: BreakerConfig, enabled: bool, seed: int) -> None:
        self.clock = FakeClock()
        self.breaker = CircuitBreaker("prop", config, clock=self.clock, rng=random.Random(seed), enabled=enabled)
        self.heard: list[Transition] = []
        self.breaker.add_listener(self.heard.append)  # no loop runs: delivered at once
        self.spec = Spec(config, enabled)
        self.held: list[Held] = []
        self.settled: list[Held] = []
        self.generation = -1

    def _learn_period(self) -> None:
        if self.spec.period_unknown:
            self.spec.learn_period(self.breaker.snapshot().open_period_s)

    # ------------------------------------------------------------------ calls

    @precondition(lambda self: len(self.held) < MAX_IN_FLIGHT)
    @rule()
    def acquire(self) -> None:
        now = self.clock.monotonic()
        admitted, probe, retry_after = self.spec.admit(now)
        try:
            permit = self.breaker.acquire()
        except CircuitOpenError as rejected:
            self._learn_period()
            assert not admitted, "the breaker rejected a call the spec admits"
            if retry_after is None:  # a hung probe was found: open for a new period
                retry_after = self.spec.open_until - now
            assert rejected.retry_after_s == retry_after
            return
        assert admitted, f"the breaker admitted a call the spec rejects ({self.spec.state})"
        held = Held(permit, self.spec.epoch, probe, now)
        if probe:
            self.spec.probes.add(id(held))
        self.held.append(held)

    @precondition(lambda self: bool(self.held))
    @rule(index=st.integers(0, MAX_IN_FLIGHT - 1), outcome=OUTCOMES)
    def settle(self, index: int, outcome: str) -> None:
        held = self.held.pop(index % len(self.held))
        self._settle(held, outcome)
        self.settled = [*self.settled[-(MAX_SETTLED - 1) :], held]
        self.spec.settle(held, outcome, self.clock.monotonic())
        self._learn_period()

    @precondition(lambda self: len(self.held) < MAX_IN_FLIGHT)
    @rule(outcome=OUTCOMES)
    def call_through(self, outcome: str) -> None:
        """A whole call at one instant: admitted (or not) and settled at once."""
        before = len(self.held)
        self.acquire()
        if len(self.held) > before:
            self.settle(len(self.held) - 1, outcome)

    @precondition(lambda self: bool(self.settled))
    @rule(index=st.integers(0, MAX_SETTLED - 1), outcome=st.sampled_from(["success", "failure", "release"]))
    def settle_again(self, index: int, outcome: str) -> None:
        self._settle(self.settled[index % len(self.settled)], outcome)  # the spec: nothing happens

    def _settle(self, held: Held, outcome: str) -> None:
        permit = held.permit
        if outcome == "success":
            self.breaker.record_success(permit)  # type: ignore[arg-type]
        elif outcome == "failure":
            self.breaker.record_failure(permit, Boom("down"))  # type: ignore[arg-type]
        else:
            self.breaker.release(permit)  # type: ignore[arg-type]

    # ------------------------------------------------------------------ time

    @rule(seconds=st.sampled_from([0.5, 1.0, 2.5, 4.0, 10.0, 30.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: self.spec.state is OPEN)
    @rule(offset=st.sampled_from([-1e-3, 0.0, 1e-3]))
    def to_retry_time(self, offset: float) -> None:
        """Just before, on, or just after the retry time: where boundary bugs live."""
        self.clock.advance(max(0.0, self.spec.open_until - self.clock.monotonic() + offset))

    @precondition(lambda self: self.spec.state is HALF_OPEN and bool(self.spec.probes))
    @rule(offset=st.sampled_from([-1e-3, 0.0]))
    def to_probe_deadline(self, offset: float) -> None:
        self.clock.advance(max(0.0, self.spec.half_open_deadline - self.clock.monotonic() + offset))

    # ------------------------------------------------------------------ controls and reads

    @rule(control=CONTROLS)
    def control(self, control: str | None) -> None:
        """Now and then an operator's reset or a person's Retry (each starts things over)."""
        if control == "reset":
            self.reset()
        elif control == "allow_probe_now":
            self.allow_probe_now()

    def reset(self) -> None:
        self.breaker.reset()
        self.spec.reset(self.clock.monotonic())

    def allow_probe_now(self) -> None:
        got = self.breaker.allow_probe_now()
        expected = self.spec.allow_probe_now(self.clock.monotonic()) if self.spec.enabled else False
        self._learn_period()
        assert got is expected

    @rule(what=st.sampled_from(["retry_after", "snapshot"]))
    def read(self, what: str) -> None:
        if what == "retry_after":
            self.read_retry_after()
        else:
            self.observe()

    def read_retry_after(self) -> None:
        got = self.breaker.retry_after_s
        now = self.clock.monotonic()
        if self.spec.enabled:
            self.spec.due(now)
        self._learn_period()
        assert got == (self.spec.open_until - now if self.spec.state is OPEN else 0.0)

    def observe(self) -> None:
        snapshot = self.breaker.snapshot()
        spec = self.spec
        now = self.clock.monotonic()
        if spec.enabled:
            spec.due(now)
        self._learn_period()
        assert snapshot.state is spec.state
        assert snapshot.failure_count == spec.failures
        assert snapshot.in_flight_probes == len(spec.probes)
        assert snapshot.retry_after_s == (spec.open_until - now if spec.state is OPEN else 0.0)
        assert snapshot.open_period_s == (spec.period if spec.state is OPEN else 0.0)
        assert (snapshot.successes_total, snapshot.failures_total, snapshot.rejections_total) == (
            spec.successes_total,
            spec.failures_total,
            spec.rejections_total,
        )
        assert snapshot.transition_count == len(spec.transitions)
        wall = self.clock.wall()
        if spec.outage_started is None:
            assert snapshot.opened_at is None
        else:
            assert snapshot.opened_at == pytest.approx(wall - (now - spec.outage_started), abs=1e-6)
        if spec.last_outage_s is None:
            assert snapshot.last_outage_s is None
        else:
            assert snapshot.last_outage_s == pytest.approx(spec.last_outage_s, abs=1e-9)
        if spec.last_failure is None:
            assert snapshot.last_failure is None and snapshot.last_failure_at is None
        else:
            assert snapshot.last_failure is not None and snapshot.last_failure.startswith(spec.last_failure)
            assert spec.last_failure_at is not None
            assert snapshot.last_failure_at == pytest.approx(wall - (now - spec.last_failure_at), abs=1e-6)
        calls, failed = spec.window_totals(now)
        assert snapshot.calls_in_window == calls
        assert snapshot.failure_rate == (pytest.approx(failed / calls) if calls else None)
        assert snapshot.generation >= self.generation  # generations only move forward
        self.generation = snapshot.generation
        json.dumps(snapshot.to_dict())

    @invariant()
    def listeners_heard_exactly_the_specified_transitions(self) -> None:
        if hasattr(self, "spec"):
            heard = [(str(t.from_state), str(t.to_state), t.reason) for t in self.heard]
            assert heard == self.spec.transitions
            assert all(t.name == "prop" for t in self.heard)


BreakerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_the_breaker_behaves_as_its_spec = BreakerMachine.TestCase


@settings(max_examples=200, deadline=None)
@given(threshold=st.integers(1, 5), outcomes=st.lists(st.booleans(), max_size=40))
def test_count_mode_opens_exactly_when_threshold_consecutive_failures_happen(
    threshold: int, outcomes: list[bool]
) -> None:
    breaker = CircuitBreaker("count", BreakerConfig(failure_threshold=threshold), clock=FakeClock())
    run = 0
    should_be_open = False
    for failed in outcomes:
        try:
            permit = breaker.acquire()
        except CircuitOpenError:
            assert should_be_open
            continue
        assert not should_be_open
        if failed:
            breaker.record_failure(permit, Boom())
        else:
            breaker.record_success(permit)
        run = run + 1 if failed else 0
        should_be_open = should_be_open or run >= threshold
        assert (breaker.state is BreakerState.OPEN) == should_be_open
        assert breaker.snapshot().failure_count == run  # an open breaker shows the run that tripped it
    assert math.isfinite(breaker.retry_after_s)


@st.composite
def windowed_configs(draw: st.DrawFn) -> BreakerConfig:
    if draw(st.booleans()):
        size = draw(st.integers(2, 8))
        window = SlidingWindow.count(size, draw(st.sampled_from([0.3, 0.5, 1.0])), draw(st.integers(1, size)))
    else:
        window = SlidingWindow.time(draw(st.sampled_from([5.0, 20.0])), draw(st.sampled_from([0.3, 0.5, 1.0])))
    return BreakerConfig(
        failure_threshold=draw(st.integers(2, 6)),
        recovery_timeout_s=draw(st.sampled_from([1.0, 5.0])),
        window=window,
        slow_call_threshold_s=draw(st.sampled_from([None, 3.0])),
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    config=windowed_configs(),
    steps=st.lists(st.tuples(st.sampled_from([0.0, 0.0, 0.5, 2.0, 6.0]), OUTCOMES), min_size=5, max_size=40),
)
def test_failure_rate_mode_follows_the_spec_call_by_call(config: BreakerConfig, steps: list[tuple[float, str]]) -> None:
    """Whole calls in a row, with time passing between them: where the window rules live."""
    machine = BreakerMachine()
    machine.start(config, True, 0)
    for seconds, outcome in steps:
        machine.advance(seconds)
        machine.call_through(outcome)
        machine.listeners_heard_exactly_the_specified_transitions()
        machine.observe()
