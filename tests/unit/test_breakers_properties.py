"""Property-based tests of the breaker's invariants over a fake clock.

Calls are driven by hand, without an event loop: each protected call awaits a
:class:`Step`, which suspends it until the test decides its outcome (success, failure,
ignored, cancelled). Each call runs in its own ``contextvars`` context, as an asyncio
task would, so every shape (``call``, decorator, ``async with``, permits) can be kept in
flight at once and settled in any order, at any fake time.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
from collections.abc import Coroutine, Generator
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from backend_core.breakers import BreakerConfig, BreakerState, CircuitBreaker, Permit, SlidingWindow
from backend_core.clock import FakeClock
from backend_core.errors import CircuitOpenError

VALID_STATES = set(BreakerState)


class Boom(Exception):
    pass


class Step:
    """An awaitable that suspends once; the test then says what the await gives."""

    def __init__(self) -> None:
        self.outcome: Any = None

    def __await__(self) -> Generator[Any, None, Any]:
        yield self
        if isinstance(self.outcome, BaseException):
            raise self.outcome
        return self.outcome


async def protected(step: Step) -> Any:
    return await step


@dataclass
class InFlight:
    shape: str
    step: Step
    coro: Coroutine[Any, Any, Any] | None
    context: contextvars.Context
    permit: Permit | None
    generation: int  # of the breaker when it was admitted
    probe: bool
    started_at: float


def start(breaker: CircuitBreaker, shape: str) -> InFlight | None:
    """Begin one call; None when the breaker rejected it."""
    step = Step()
    generation = breaker._generation
    if shape == "permit":
        try:
            permit = breaker.acquire()
        except CircuitOpenError:
            return None
        started_at = breaker._clock.monotonic()
        return InFlight(shape, step, None, contextvars.Context(), permit, permit.generation, permit.probe, started_at)
    coro: Coroutine[Any, Any, Any]
    if shape == "call":
        coro = breaker.call(protected, step)
    elif shape == "decorator":
        coro = breaker(protected)(step)
    else:

        async def block() -> Any:
            async with breaker:
                return await step

        coro = block()
    context = contextvars.Context()
    try:
        context.run(coro.send, None)
    except CircuitOpenError:
        return None
    # The call is suspended inside the protected function: it was admitted. A transition
    # (OPEN -> HALF_OPEN) may have happened on the way in.
    if breaker._generation != generation:
        generation = breaker._generation
    probe = breaker._state is BreakerState.HALF_OPEN
    return InFlight(shape, step, coro, context, None, generation, probe, breaker._clock.monotonic())


def finish(breaker: CircuitBreaker, call: InFlight, outcome: str) -> None:
    """Settle a call in flight: "success", "failure", "ignored" or "cancelled"."""
    if call.permit is not None:
        if outcome == "success":
            breaker.record_success(call.permit)
        elif outcome == "failure":
            breaker.record_exception(call.permit, Boom())
        elif outcome == "ignored":
            breaker.record_exception(call.permit, KeyError("ignored"))
        else:
            breaker.release(call.permit)
        return
    assert call.coro is not None
    expected: type[BaseException] | None
    if outcome == "cancelled":
        expected = asyncio.CancelledError
        thrown: BaseException | None = asyncio.CancelledError()
    else:
        thrown = None
        call.step.outcome = {"success": "value", "failure": Boom(), "ignored": KeyError("ignored")}[outcome]
        expected = {"success": None, "failure": Boom, "ignored": KeyError}[outcome]
    try:
        if thrown is not None:
            call.context.run(call.coro.throw, thrown)
        else:
            call.context.run(call.coro.send, None)
    except StopIteration as stop:
        assert expected is None and stop.value == "value"
    except BaseException as exc:
        assert expected is not None and isinstance(exc, expected), exc
    else:
        raise AssertionError("the call did not finish")


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
        ignore=KeyError,
        failure_result=draw(st.sampled_from([None, lambda result: result == "never"])),
        backoff_multiplier=2.0 if growth else 1.0,
        max_recovery_timeout_s=recovery * 4 if growth else None,
        jitter_ratio=draw(st.sampled_from([0.0, 0.5])) if growth else 0.0,
    )


class Model:
    """Drives one breaker through a sequence of operations and checks every invariant."""

    def __init__(self, config: BreakerConfig, random_value: float) -> None:
        self.clock = FakeClock()
        self.config = config
        self.breaker = CircuitBreaker("prop", config, clock=self.clock, random=lambda: random_value)
        self.in_flight: list[InFlight] = []
        self.model_generation = 0
        self.model_failures = 0  # consecutive failures of the current CLOSED generation
        self.totals = (0, 0, 0, 0)
        self.transitions = 0
        self.states_seen: set[BreakerState] = set()
        self.undo: tuple[int, str] | None = None  # (operations left, control that undoes)

    def apply(self, op: tuple[Any, ...]) -> None:
        kind = op[0]
        if kind == "start":
            for shape in op[1]:
                if len(self.in_flight) < MAX_IN_FLIGHT:
                    self.start_call(shape)
        elif kind == "finish" and self.in_flight:
            self.finish_call(op[1], op[2])
        elif kind == "advance":
            self.clock.advance(op[1])
            if op[2]:
                self.check_snapshot()
        elif kind == "to_retry_time" and self.breaker._state is BreakerState.OPEN and not self.breaker._forced:
            # Land just before, on, or just after the retry time: where boundary bugs live.
            self.clock.advance(max(0.0, self.breaker._open_until - self.clock.monotonic() + op[1]))
        elif kind == "to_probe_deadline" and self.breaker._state is BreakerState.HALF_OPEN:
            if self.breaker._probes_in_flight:
                self.clock.advance(max(0.0, self.breaker._half_open_deadline - self.clock.monotonic() + op[1]))
        elif kind == "control" and op[1] is not None:
            getattr(self.breaker, op[1])()
            if op[1] in ("disable", "force_open"):
                # Both last until undone; undo a few operations later to get back to work.
                self.undo = (op[2], "enable" if op[1] == "disable" else "reset")
        if self.undo is not None:
            left, control = self.undo
            self.undo = (left - 1, control) if left else None
            if not left:
                getattr(self.breaker, control)()
        self._sync_model()
        self.check_invariants()

    def _sync_model(self) -> None:
        if self.breaker._generation != self.model_generation:
            self.model_generation = self.breaker._generation
            self.model_failures = 0

    def start_call(self, shape: str) -> None:
        breaker = self.breaker
        now = self.clock.monotonic()
        state = breaker._state
        open_until = breaker._open_until
        forced = breaker._forced
        probes = breaker._probes_in_flight
        hung = state is BreakerState.HALF_OPEN and probes and now >= breaker._half_open_deadline
        call = start(breaker, shape)
        if hung:
            assert call is None and breaker._state is BreakerState.OPEN, "a hung probe was not reclaimed"
        if state is BreakerState.OPEN and (forced or now < open_until):
            assert call is None, "OPEN admitted a call before its retry time"
        if state is BreakerState.CLOSED or state is BreakerState.DISABLED:
            assert call is not None, f"{state} rejected a call"
        if state is BreakerState.HALF_OPEN and probes >= self.config.half_open_max_probes:
            assert call is None, "a full HALF_OPEN admitted another probe"
        self._sync_model()
        if call is not None:
            self.in_flight.append(call)

    def finish_call(self, index: int, outcome: str) -> None:
        breaker = self.breaker
        call = self.in_flight.pop(index % len(self.in_flight))
        before = (breaker._state, breaker._generation, breaker._failure_count, breaker._probes_in_flight)
        current = call.generation == breaker._generation
        slow_s = self.config.slow_call_threshold_s
        slow = slow_s is not None and self.clock.monotonic() - call.started_at >= slow_s
        finish(breaker, call, outcome)
        after = (breaker._state, breaker._generation, breaker._failure_count, breaker._probes_in_flight)
        if not current:
            assert after == before, "a result of an older generation changed the breaker"
            return
        if before[0] is BreakerState.CLOSED and outcome in ("success", "failure"):
            failed = outcome == "failure" or slow
            self.model_failures = self.model_failures + 1 if failed else 0
            if self.model_failures >= self.config.failure_threshold:
                assert breaker._state is BreakerState.OPEN, "threshold consecutive failures left it closed"
        if before[0] is BreakerState.HALF_OPEN:
            if outcome in ("ignored", "cancelled"):
                assert after[0] is BreakerState.HALF_OPEN and after[3] == before[3] - 1
            elif outcome == "failure" or slow:
                assert after[0] is BreakerState.OPEN
            else:
                assert after[0] is BreakerState.CLOSED

    def check_snapshot(self) -> None:
        snapshot = self.breaker.snapshot()
        self._sync_model()
        assert snapshot.state in VALID_STATES
        if snapshot.state is not BreakerState.OPEN:
            assert snapshot.retry_after_s == 0
            assert not snapshot.forced
        elif not snapshot.forced:
            assert 0 < snapshot.retry_after_s <= snapshot.open_period_s + 1e-9  # float rounding of now + period - now
        if snapshot.state in (BreakerState.CLOSED, BreakerState.DISABLED):
            assert snapshot.opened_at is None
        else:
            assert snapshot.opened_at is not None
        if snapshot.state is BreakerState.CLOSED:
            assert snapshot.failure_count < self.config.failure_threshold
        if snapshot.failure_rate is not None:
            assert 0 <= snapshot.failure_rate <= 1
            assert snapshot.calls_in_window > 0
        window = self.config.window
        if window is None:
            assert snapshot.calls_in_window == 0
        elif window.kind == "count":
            assert snapshot.calls_in_window <= window.size
        assert snapshot.in_flight_probes <= self.config.half_open_max_probes
        assert snapshot.generation == self.breaker._generation
        json.dumps(snapshot.to_dict())

    def check_invariants(self) -> None:
        breaker = self.breaker
        self.states_seen.add(breaker._state)
        # The state is always one of the valid ones; forced only ever means OPEN.
        assert breaker._state in VALID_STATES
        assert breaker._forced is False or breaker._state is BreakerState.OPEN
        # In-flight probes never exceed the limit, and each one is a call we hold.
        assert 0 <= breaker._probes_in_flight <= self.config.half_open_max_probes
        ours = sum(1 for call in self.in_flight if call.probe and call.generation == breaker._generation)
        assert breaker._probes_in_flight == (ours if breaker._state is BreakerState.HALF_OPEN else 0)
        # CLOSED counts exactly the consecutive failures of its own generation.
        if breaker._state is BreakerState.CLOSED:
            assert breaker._failure_count == self.model_failures
            assert breaker._failure_count < self.config.failure_threshold
        # Counters only grow.
        totals = (
            breaker._successes_total,
            breaker._failures_total,
            breaker._rejections_total,
            breaker._ignored_total,
        )
        assert all(now >= before for now, before in zip(totals, self.totals, strict=True))
        assert breaker._transition_count >= self.transitions
        self.totals = totals
        self.transitions = breaker._transition_count

    def close(self) -> None:
        for call in self.in_flight:
            if call.coro is not None:
                call.context.run(call.coro.close)


# At most this many calls in flight at once: plenty to fill every probe slot.
MAX_IN_FLIGHT = 12

SHAPES = st.sampled_from(["call", "decorator", "with", "permit"])
OUTCOMES = st.sampled_from(["success", "failure", "failure", "failure", "ignored", "cancelled"])
KINDS = st.sampled_from(
    ["start"] * 3 + ["finish"] * 3 + ["to_retry_time"] * 2 + ["advance", "deadline", "control"],
)
START = st.tuples(st.just("start"), st.lists(SHAPES, min_size=1, max_size=4))
FINISH = st.tuples(st.just("finish"), st.integers(0, MAX_IN_FLIGHT - 1), OUTCOMES)
ARGUMENTS: dict[str, st.SearchStrategy[tuple[Any, ...]]] = {
    "start": START,
    "finish": FINISH,
    "to_retry_time": st.tuples(st.just("to_retry_time"), st.sampled_from([-1e-3, 0.0, 1e-3])),
    "advance": st.tuples(st.just("advance"), st.sampled_from([0.5, 1.0, 2.5, 4.0, 10.0, 30.0]), st.booleans()),
    "deadline": st.tuples(st.just("to_probe_deadline"), st.sampled_from([-1e-3, 0.0])),
    "control": st.tuples(
        st.just("control"),
        st.sampled_from(["reset", "force_open", "disable", "enable", "allow_probe_now", None]),
        st.integers(0, 4),
    ),
}
# The kind is drawn first from a weighted list: mostly calls and outcomes, often at the
# end of the open period, now and then an operator's control.
OPERATIONS = KINDS.flatmap(ARGUMENTS.__getitem__)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(config=configs(), random_value=st.floats(0.0, 0.999), operations=st.lists(OPERATIONS, min_size=30, max_size=80))
def test_invariants_hold_over_any_sequence_of_calls_outcomes_time_and_controls(
    config: BreakerConfig, random_value: float, operations: list[tuple[Any, ...]]
) -> None:
    model = Model(config, random_value)
    try:
        for op in operations:
            model.apply(op)
        model.check_snapshot()
    finally:
        model.close()
    event(f"states seen: {sorted(model.states_seen)}")


@settings(max_examples=200, deadline=None)
@given(threshold=st.integers(1, 5), outcomes=st.lists(st.booleans(), max_size=40))
def test_count_mode_opens_exactly_when_threshold_consecutive_failures_happen(
    threshold: int, outcomes: list[bool]
) -> None:
    """The permit-free fast path: open iff some run of failures reached the threshold."""
    breaker = CircuitBreaker("fast", BreakerConfig(failure_threshold=threshold), clock=FakeClock())
    run = 0
    should_be_open = False
    for failed in outcomes:
        step = Step()
        step.outcome = Boom() if failed else "ok"
        coro = breaker.call(protected, step)
        try:
            coro.send(None)  # suspends in the protected call (or is rejected)
            coro.send(None)
        except StopIteration:
            assert not should_be_open
        except Boom:
            assert not should_be_open
        except CircuitOpenError:
            assert should_be_open
            continue
        run = run + 1 if failed else 0
        should_be_open = should_be_open or run >= threshold
        assert (breaker.state is BreakerState.OPEN) == should_be_open
        assert breaker.snapshot().failure_count == run  # an open breaker shows the run that tripped it
