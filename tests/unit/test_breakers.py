"""Unit tests of backend_core.breakers: fake clock, no sockets, no real sleeps."""

from __future__ import annotations

import asyncio
import json
import logging
import pickle
import random
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from backend_core.breakers.breaker import LAST_FAILURE_MAX_CHARS, CircuitBreaker, Transition
from backend_core.breakers.core import (
    BreakerConfig,
    BreakerCore,
    BreakerState,
    Outcome,
    Permit,
    Reason,
    Rejection,
    SlidingWindow,
)
from backend_core.breakers.registry import API_OVERFLOW_NAME, MAX_API_BREAKERS, BreakerRegistry
from backend_core.breakers.store import BreakerRecord, InMemoryBreakerStore
from backend_core.clock import FakeClock
from backend_core.config import load_settings
from backend_core.errors import CircuitOpenError
from tests.helpers import callbacks_ran, turns_until


class Boom(Exception):
    """The protected service failed."""


async def ok(value: Any = "ok") -> Any:
    return value


async def fail(exc: BaseException | None = None) -> Any:
    raise exc if exc is not None else Boom("service down")


async def call(breaker: CircuitBreaker, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
    """``fn(*args)`` under ``breaker``, the way the app uses the permit API."""
    permit = breaker.acquire()
    try:
        result = await fn(*args)
    except BaseException as exc:  # an error counts as a failure; a cancellation settles nothing
        if isinstance(exc, Exception):
            breaker.record_failure(permit, exc)
        else:
            breaker.release(permit)
        raise
    breaker.record_success(permit)
    return result


def make(clock: FakeClock, name: str = "t", **config: Any) -> CircuitBreaker:
    return CircuitBreaker(name, BreakerConfig(**config), clock=clock)


async def fail_times(breaker: CircuitBreaker, n: int) -> None:
    for _ in range(n):
        with pytest.raises(Boom):
            await call(breaker, fail)


def record_transitions(breaker: CircuitBreaker) -> list[Transition]:
    seen: list[Transition] = []
    breaker.add_listener(seen.append)
    return seen


def make_recorded(clock: FakeClock, name: str = "t", **config: Any) -> tuple[CircuitBreaker, list[Transition]]:
    """``make(...)`` and the transitions its listener is told (once delivered: ``callbacks_ran``)."""
    breaker = make(clock, name, **config)
    return breaker, record_transitions(breaker)


def reasons(transitions: list[Transition]) -> list[tuple[str, str, str]]:
    return [(str(t.from_state), str(t.to_state), t.reason) for t in transitions]


class Gate:
    """An async function whose calls block until released with a value or an exception."""

    def __init__(self) -> None:
        self.entered = 0
        self._release: asyncio.Future[Any] | None = None

    def _future(self) -> asyncio.Future[Any]:
        if self._release is None:
            self._release = asyncio.get_running_loop().create_future()
        return self._release

    async def __call__(self) -> Any:
        self.entered += 1
        return await asyncio.shield(self._future())

    def succeed(self, value: Any = "late") -> None:
        self._future().set_result(value)

    def fail(self, exc: BaseException | None = None) -> None:
        self._future().set_exception(exc if exc is not None else Boom("late failure"))


class Draws(random.Random):
    """A random.Random that returns the given values in turn."""

    def __init__(self, *values: float) -> None:
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0)


def probe_after_opening(breaker: CircuitBreaker, clock: FakeClock, open_s: float) -> Permit:
    """Open ``breaker`` with one failure, let its open period of ``open_s`` pass: the probe's permit."""
    breaker.record_failure(breaker.acquire())
    clock.advance(open_s)
    return breaker.acquire()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


# --------------------------------------------------------------------------- the pure core


def test_the_core_decides_with_the_time_it_is_given() -> None:
    core = BreakerCore(BreakerConfig(failure_threshold=2, recovery_timeout_s=10))
    first = core.admit(100.0)
    assert isinstance(first, Permit) and not first.probe
    assert core.settle(first, Outcome.FAILURE, 100.0, "Boom: x") is None
    second = core.admit(101.0)
    assert isinstance(second, Permit)
    change = core.settle(second, Outcome.FAILURE, 101.0)
    assert change is not None
    assert (change.from_state, change.to_state, change.reason) == ("closed", "open", "failure_threshold")
    assert change.at == 101.0
    rejected = core.admit(105.0)
    assert isinstance(rejected, Rejection) and rejected.retry_after_s == 6.0 and rejected.change is None
    probe = core.admit(111.0)
    assert isinstance(probe, Permit) and probe.probe
    assert probe.change is not None and probe.change.reason is Reason.RECOVERY_TIMEOUT
    closed = core.settle(probe, Outcome.SUCCESS, 111.5)
    assert closed is not None and closed.reason is Reason.PROBE_SUCCEEDED
    assert core.state is BreakerState.CLOSED and core.last_outage_s == 10.5


def test_the_core_settles_a_permit_once_and_never_one_of_an_older_generation() -> None:
    core = BreakerCore(BreakerConfig(failure_threshold=1, recovery_timeout_s=1))
    old = core.admit(0.0)
    tripping = core.admit(0.0)
    assert isinstance(old, Permit) and isinstance(tripping, Permit)
    assert core.settle(tripping, Outcome.FAILURE, 0.0) is not None
    assert core.settle(tripping, Outcome.FAILURE, 0.0) is None  # settled already
    assert core.settle(old, Outcome.SUCCESS, 0.5) is None  # older generation: counted, not decisive
    assert core.state is BreakerState.OPEN and core.successes_total == 1
    probe = core.admit(1.0)
    assert isinstance(probe, Permit)
    assert core.settle(probe, Outcome.RELEASED, 1.0) is None
    assert core.probes_in_flight == 0 and core.state is BreakerState.HALF_OPEN


# --------------------------------------------------------------------------- transitions


async def test_closed_passes_results_and_exceptions_through(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=3)
    assert await call(breaker, ok, 42) == 42
    with pytest.raises(Boom, match="service down"):
        await call(breaker, fail)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot().failure_count == 1


async def test_opens_after_threshold_consecutive_failures(clock: FakeClock) -> None:
    breaker, seen = make_recorded(clock, failure_threshold=3, recovery_timeout_s=10)
    await fail_times(breaker, 2)
    assert breaker.state is BreakerState.CLOSED
    await fail_times(breaker, 1)
    assert breaker.state is BreakerState.OPEN
    await callbacks_ran()
    assert reasons(seen) == [("closed", "open", "failure_threshold")]
    called = 0

    async def counted() -> None:
        nonlocal called
        called += 1

    with pytest.raises(CircuitOpenError):
        await call(breaker, counted)
    assert called == 0


async def test_a_success_resets_the_consecutive_count(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=3)
    await fail_times(breaker, 2)
    await call(breaker, ok)
    await fail_times(breaker, 2)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot().failure_count == 2


async def test_probe_after_recovery_timeout_closes_on_success(clock: FakeClock) -> None:
    breaker, seen = make_recorded(clock, failure_threshold=1, recovery_timeout_s=10)
    await fail_times(breaker, 1)
    clock.advance(9.999)
    with pytest.raises(CircuitOpenError):
        await call(breaker, ok)
    clock.advance(0.001)
    assert await call(breaker, ok, "probe") == "probe"
    assert breaker.state is BreakerState.CLOSED
    await callbacks_ran()
    assert reasons(seen) == [
        ("closed", "open", "failure_threshold"),
        ("open", "half_open", "recovery_timeout"),
        ("half_open", "closed", "probe_succeeded"),
    ]


async def test_failed_probe_reopens_for_a_new_period(clock: FakeClock) -> None:
    breaker, seen = make_recorded(clock, failure_threshold=1, recovery_timeout_s=10)
    await fail_times(breaker, 1)
    clock.advance(10)
    await fail_times(breaker, 1)
    assert breaker.state is BreakerState.OPEN
    clock.advance(9)
    with pytest.raises(CircuitOpenError) as rejected:
        await call(breaker, ok)
    assert rejected.value.retry_after_s == pytest.approx(1.0)
    clock.advance(1)
    assert breaker.state is BreakerState.HALF_OPEN
    await callbacks_ran()
    assert [t.reason for t in seen] == ["failure_threshold", "recovery_timeout", "probe_failed", "recovery_timeout"]


async def test_state_and_snapshot_apply_the_due_half_open_transition(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, recovery_timeout_s=5)
    await fail_times(breaker, 1)
    assert breaker.retry_after_s == 5
    clock.advance(5)
    assert breaker.snapshot().state is BreakerState.HALF_OPEN
    assert breaker.retry_after_s == 0


# --------------------------------------------------------------------------- rejections


async def test_each_rejection_is_a_fresh_error_with_the_right_retry_after(clock: FakeClock) -> None:
    breaker = make(clock, "upstream", failure_threshold=1, recovery_timeout_s=10)
    await fail_times(breaker, 1)
    errors: list[CircuitOpenError] = []
    for step in (0.0, 2.5, 5.0):
        clock.advance(step)
        try:
            await call(breaker, ok)
        except CircuitOpenError as exc:
            errors.append(exc)
    assert [e.retry_after_s for e in errors] == [pytest.approx(10.0), pytest.approx(7.5), pytest.approx(2.5)]
    assert len({id(e) for e in errors}) == 3
    first = errors[0]
    assert first.name == "upstream"
    assert first.code == "CircuitOpen"
    assert str(first) == "circuit 'upstream' is open; retry after 10.0s"
    assert first.message == str(first)
    assert first.__context__ is None and first.__cause__ is None
    # Only the frames the rejection passed through, never an accumulated chain.
    assert len(traceback.extract_tb(first.__traceback__)) <= 3
    copy = pickle.loads(pickle.dumps(first))
    assert isinstance(copy, CircuitOpenError)
    assert (copy.name, copy.retry_after_s) == ("upstream", 10.0)
    assert breaker.snapshot().rejections_total == 3


def test_rejections_keep_no_reference_to_earlier_ones(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)
    breaker.record_failure(breaker.acquire())
    depths = set()
    errors = []
    for _ in range(50):
        try:
            breaker.acquire()
        except CircuitOpenError as exc:
            depths.add(len(traceback.extract_tb(exc.__traceback__)))
            errors.append(exc)
    assert len(depths) == 1
    assert len({id(e) for e in errors}) == 50


# --------------------------------------------------------------------------- half-open concurrency


@pytest.mark.parametrize("probes", [1, 3])
async def test_concurrent_calls_when_the_open_period_ends_reach_the_function_at_most_probes_times(
    clock: FakeClock, probes: int
) -> None:
    breaker = make(clock, failure_threshold=1, recovery_timeout_s=10, half_open_max_probes=probes)
    await fail_times(breaker, 1)
    clock.advance(10)
    gate = Gate()
    tasks = [asyncio.create_task(call(breaker, gate)) for _ in range(20)]
    await turns_until(lambda: gate.entered + sum(t.done() for t in tasks) == 20, "every call admitted or rejected")
    assert gate.entered == probes
    rejected = [t for t in tasks if t.done() and isinstance(t.exception(), CircuitOpenError)]
    assert len(rejected) == 20 - probes
    assert breaker.snapshot().in_flight_probes == probes
    gate.succeed()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert breaker.state is BreakerState.CLOSED
    assert gate.entered == probes


def test_half_open_rejection_retry_after_is_bounded_by_the_recovery_timeout(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, recovery_timeout_s=10, half_open_max_wait_s=4)
    probe = probe_after_opening(breaker, clock, 10)
    clock.advance(1)
    with pytest.raises(CircuitOpenError) as rejected:
        breaker.acquire()
    assert rejected.value.retry_after_s == pytest.approx(3.0)
    breaker.release(probe)


async def test_a_late_success_after_a_failed_probe_leaves_it_open(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, recovery_timeout_s=10, half_open_max_probes=2)
    await fail_times(breaker, 1)
    clock.advance(10)
    slow_probe = Gate()
    slow = asyncio.create_task(call(breaker, slow_probe))
    await turns_until(lambda: slow_probe.entered == 1, "the slow probe running")
    await fail_times(breaker, 1)  # the second probe fails: open again
    assert breaker.state is BreakerState.OPEN
    slow_probe.succeed()
    assert await slow == "late"
    assert breaker.state is BreakerState.OPEN
    snapshot = breaker.snapshot()
    assert snapshot.successes_total == 1  # counted, never decisive
    assert snapshot.retry_after_s == pytest.approx(10.0)


async def test_a_late_failure_of_a_call_started_before_the_last_transition_is_ignored(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, recovery_timeout_s=10)
    old = Gate()
    in_flight = asyncio.create_task(call(breaker, old))
    await turns_until(lambda: old.entered == 1, "the old call running")
    await fail_times(breaker, 1)
    clock.advance(10)
    await call(breaker, ok)  # probe: closed again, a new generation
    assert breaker.state is BreakerState.CLOSED
    old.fail()
    with pytest.raises(Boom):
        await in_flight
    assert breaker.state is BreakerState.CLOSED
    snapshot = breaker.snapshot()
    assert snapshot.failure_count == 0
    assert snapshot.failures_total == 2


async def test_a_late_success_does_not_reset_the_count_of_a_newer_generation(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=2)
    old = Gate()
    in_flight = asyncio.create_task(call(breaker, old))
    await turns_until(lambda: old.entered == 1, "the old call running")
    breaker.reset()
    await fail_times(breaker, 1)
    old.succeed()
    await in_flight
    assert breaker.snapshot().failure_count == 1
    await fail_times(breaker, 1)
    assert breaker.state is BreakerState.OPEN


def test_a_late_success_of_a_closed_call_cannot_close_a_later_half_open(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, recovery_timeout_s=1)
    old = breaker.acquire()
    probe = probe_after_opening(breaker, clock, 1)
    breaker.record_success(old)
    snapshot = breaker.snapshot()
    assert (snapshot.state, snapshot.in_flight_probes) == (BreakerState.HALF_OPEN, 1)
    breaker.record_success(probe)
    assert breaker.state is BreakerState.CLOSED


def test_a_late_success_of_a_reclaimed_probe_cannot_close_the_next_half_open(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, recovery_timeout_s=1, half_open_max_wait_s=2)
    hung = probe_after_opening(breaker, clock, 1)
    clock.advance(2)
    with pytest.raises(CircuitOpenError):
        breaker.acquire()  # the hung probe is reclaimed: open again
    clock.advance(1)
    probe = breaker.acquire()
    breaker.record_success(hung)
    assert breaker.state is BreakerState.HALF_OPEN
    breaker.record_failure(probe)
    assert breaker.state is BreakerState.OPEN


# --------------------------------------------------------------------------- cancellation


async def test_cancellations_are_neither_success_nor_failure(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=2)
    await fail_times(breaker, 1)
    for _ in range(10):
        gate = Gate()
        task = asyncio.create_task(call(breaker, gate))
        await turns_until(lambda gate=gate: gate.entered == 1, "the call running")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    snapshot = breaker.snapshot()
    assert snapshot.state is BreakerState.CLOSED
    assert snapshot.failure_count == 1  # not reset (no success) and not increased (no failure)
    assert (snapshot.successes_total, snapshot.failures_total) == (0, 1)


async def test_a_cancelled_probe_gives_its_slot_back(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, recovery_timeout_s=10)
    await fail_times(breaker, 1)
    clock.advance(10)
    gate = Gate()
    task = asyncio.create_task(call(breaker, gate))
    await turns_until(lambda: gate.entered == 1, "the probe running")
    assert breaker.snapshot().in_flight_probes == 1
    with pytest.raises(CircuitOpenError):
        await call(breaker, ok)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    snapshot = breaker.snapshot()
    assert snapshot.state is BreakerState.HALF_OPEN
    assert snapshot.in_flight_probes == 0
    assert await call(breaker, ok, "next probe") == "next probe"
    assert breaker.state is BreakerState.CLOSED


# --------------------------------------------------------------------------- hung probe


async def test_a_hung_probe_is_reclaimed_after_the_maximum_half_open_wait(clock: FakeClock) -> None:
    breaker, seen = make_recorded(clock, failure_threshold=1, recovery_timeout_s=10, half_open_max_wait_s=5)
    await fail_times(breaker, 1)
    clock.advance(10)
    hung = Gate()
    hung_task = asyncio.create_task(call(breaker, hung))
    await turns_until(lambda: hung.entered == 1, "the probe running")
    clock.advance(4.9)
    with pytest.raises(CircuitOpenError):
        await call(breaker, ok)
    assert breaker.state is BreakerState.HALF_OPEN
    clock.advance(0.1)
    with pytest.raises(CircuitOpenError) as rejected:
        await call(breaker, ok)
    assert breaker.state is BreakerState.OPEN
    assert rejected.value.retry_after_s == pytest.approx(10.0)
    clock.advance(10)
    assert await call(breaker, ok, "fresh probe") == "fresh probe"
    assert breaker.state is BreakerState.CLOSED
    hung.fail()  # the hung probe finally fails: too late to matter
    with pytest.raises(Boom):
        await hung_task
    assert breaker.state is BreakerState.CLOSED
    await callbacks_ran()
    assert [t.reason for t in seen] == [
        "failure_threshold",
        "recovery_timeout",
        "probe_timeout",
        "recovery_timeout",
        "probe_succeeded",
    ]


async def test_a_half_open_breaker_without_probes_in_flight_does_not_time_out(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, recovery_timeout_s=10, half_open_max_wait_s=5)
    await fail_times(breaker, 1)
    clock.advance(10)
    assert breaker.state is BreakerState.HALF_OPEN
    clock.advance(100)
    assert await call(breaker, ok, "probe") == "probe"
    assert breaker.state is BreakerState.CLOSED


# --------------------------------------------------------------------------- failure rate


async def test_count_window_waits_for_minimum_calls_then_opens_on_the_rate(clock: FakeClock) -> None:
    window = SlidingWindow.count(10, failure_rate_threshold=0.5, minimum_calls=4)
    breaker, seen = make_recorded(clock, failure_threshold=100, window=window)
    await fail_times(breaker, 1)
    await call(breaker, ok)
    await fail_times(breaker, 1)
    snapshot = breaker.snapshot()
    assert snapshot.state is BreakerState.CLOSED
    assert (snapshot.calls_in_window, snapshot.failure_rate) == (3, pytest.approx(2 / 3))
    await call(breaker, ok)  # 4 calls, 2 failed: 50% reached on a success
    assert breaker.state is BreakerState.OPEN
    await callbacks_ran()
    assert [t.reason for t in seen] == ["failure_rate"]


async def test_count_window_slides(clock: FakeClock) -> None:
    window = SlidingWindow.count(4, failure_rate_threshold=0.75, minimum_calls=4)
    breaker = make(clock, failure_threshold=100, window=window)
    for outcome in "FFSSSSFF":
        if outcome == "F":
            await fail_times(breaker, 1)
        else:
            await call(breaker, ok)
        assert breaker.state is BreakerState.CLOSED, outcome
    assert breaker.snapshot().calls_in_window == 4
    assert breaker.snapshot().failure_rate == 0.5  # S S F F: the first two failures slid out
    await fail_times(breaker, 1)  # S F F F
    assert breaker.state is BreakerState.OPEN


async def test_time_window_forgets_calls_older_than_its_size(clock: FakeClock) -> None:
    window = SlidingWindow.time(10.0, failure_rate_threshold=0.5, minimum_calls=3)
    breaker = make(clock, failure_threshold=100, window=window)
    await fail_times(breaker, 2)
    assert breaker.snapshot().calls_in_window == 2
    clock.advance(11)
    assert breaker.snapshot().calls_in_window == 0
    assert breaker.snapshot().failure_rate is None
    await fail_times(breaker, 1)
    await call(breaker, ok)
    await call(breaker, ok)
    assert breaker.state is BreakerState.CLOSED  # 1 of 3 failed; with the old two it would be 3 of 5
    await fail_times(breaker, 1)
    assert breaker.state is BreakerState.OPEN  # 2 of 4


async def test_the_window_starts_empty_after_closing(clock: FakeClock) -> None:
    window = SlidingWindow.count(10, failure_rate_threshold=0.5, minimum_calls=2)
    breaker = make(clock, failure_threshold=100, recovery_timeout_s=1, window=window)
    await fail_times(breaker, 2)
    assert breaker.state is BreakerState.OPEN
    clock.advance(1)
    await call(breaker, ok)
    assert breaker.state is BreakerState.CLOSED
    assert breaker.snapshot().calls_in_window == 0
    await fail_times(breaker, 1)
    assert breaker.state is BreakerState.CLOSED


async def test_consecutive_threshold_still_applies_in_rate_mode(clock: FakeClock) -> None:
    window = SlidingWindow.count(100, failure_rate_threshold=1.0, minimum_calls=100)
    breaker = make(clock, failure_threshold=3, window=window)
    await fail_times(breaker, 3)
    assert breaker.state is BreakerState.OPEN


# --------------------------------------------------------------------------- slow calls


async def test_a_slow_call_counts_as_a_failure_and_its_result_is_still_returned(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=2, slow_call_threshold_s=1.0)

    async def slow(seconds: float) -> str:
        clock.advance(seconds)
        return "done"

    assert await call(breaker, slow, 0.5) == "done"
    assert breaker.snapshot().failure_count == 0
    assert await call(breaker, slow, 1.5) == "done"
    snapshot = breaker.snapshot()
    assert snapshot.failure_count == 1
    assert snapshot.last_failure is not None and snapshot.last_failure.startswith("SlowCall: took 1.500s")
    assert await call(breaker, slow, 2.0) == "done"
    assert breaker.state is BreakerState.OPEN


def test_a_slow_probe_reopens(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, recovery_timeout_s=5, slow_call_threshold_s=1.0)
    probe = probe_after_opening(breaker, clock, 5)
    clock.advance(3)
    breaker.record_success(probe)
    assert breaker.state is BreakerState.OPEN


# --------------------------------------------------------------------------- open-period growth


def reopen_after_probe(breaker: CircuitBreaker, clock: FakeClock) -> float:
    """Wait out the open period, fail the probe, return the new open period."""
    clock.advance(breaker.retry_after_s)
    breaker.record_failure(breaker.acquire())
    return breaker.snapshot().retry_after_s


def test_the_open_period_doubles_after_failed_probes_up_to_the_cap(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, recovery_timeout_s=10, max_recovery_timeout_s=35)
    breaker.record_failure(breaker.acquire())
    assert breaker.snapshot().retry_after_s == 10
    periods = [reopen_after_probe(breaker, clock) for _ in range(4)]
    assert periods == [20, 35, 35, 35]
    clock.advance(35)
    breaker.record_success(breaker.acquire())  # closes: the growth starts over
    breaker.record_failure(breaker.acquire())
    assert breaker.snapshot().retry_after_s == 10


def test_jitter_comes_from_the_injected_random_and_stays_between_base_and_cap(clock: FakeClock) -> None:
    config = BreakerConfig(failure_threshold=1, recovery_timeout_s=10, max_recovery_timeout_s=35, jitter_ratio=0.2)
    breaker = CircuitBreaker("t", config, clock=clock, rng=Draws(0.5, 1.0 - 1e-12, 0.0))
    breaker.record_failure(breaker.acquire())
    assert breaker.snapshot().retry_after_s == 10  # the first period is exactly the configured one
    periods = [reopen_after_probe(breaker, clock) for _ in range(3)]
    assert periods == [pytest.approx(20 * 0.9), pytest.approx(35 * 0.8), pytest.approx(35)]


def test_jitter_never_shortens_a_period_below_the_recovery_timeout(clock: FakeClock) -> None:
    config = BreakerConfig(failure_threshold=1, recovery_timeout_s=10, max_recovery_timeout_s=12, jitter_ratio=0.9)
    breaker = CircuitBreaker("t", config, clock=clock, rng=Draws(1.0 - 1e-12))
    breaker.record_failure(breaker.acquire())
    assert reopen_after_probe(breaker, clock) == 10


def test_a_hung_probe_grows_the_open_period_too(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, recovery_timeout_s=10, half_open_max_wait_s=1, max_recovery_timeout_s=40)
    probe_after_opening(breaker, clock, 10)  # a probe that never answers
    clock.advance(1)
    with pytest.raises(CircuitOpenError) as rejected:
        breaker.acquire()
    assert rejected.value.retry_after_s == 20


# --------------------------------------------------------------------------- controls


async def test_a_disabled_breaker_passes_everything_and_reports_disabled(clock: FakeClock) -> None:
    breaker = CircuitBreaker("t", BreakerConfig(failure_threshold=1), clock=clock, enabled=False)
    seen = record_transitions(breaker)
    for _ in range(20):
        with pytest.raises(Boom):
            await call(breaker, fail)
    assert await call(breaker, ok, 1) == 1
    breaker.reset()
    assert breaker.allow_probe_now() is False
    snapshot = breaker.snapshot()
    assert snapshot.state is BreakerState.DISABLED
    assert snapshot.to_dict()["state"] == "disabled"
    assert (snapshot.failures_total, snapshot.successes_total, snapshot.transition_count) == (0, 0, 0)
    await callbacks_ran()
    assert seen == []


async def test_reset_clears_counters_but_keeps_totals(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=3, recovery_timeout_s=10, max_recovery_timeout_s=100)
    await fail_times(breaker, 2)
    breaker.reset()
    snapshot = breaker.snapshot()
    assert snapshot.failure_count == 0
    assert snapshot.failures_total == 2
    await fail_times(breaker, 2)
    assert breaker.state is BreakerState.CLOSED
    await fail_times(breaker, 1)
    clock.advance(10)
    await fail_times(breaker, 1)  # failed probe: the period grew to 20
    assert breaker.retry_after_s == 20
    breaker.reset()
    await fail_times(breaker, 3)
    assert breaker.snapshot().retry_after_s == 10  # the growth was cleared


def test_allow_probe_now_ends_the_open_period_for_one_probe(clock: FakeClock) -> None:
    breaker, seen = make_recorded(clock, failure_threshold=1, recovery_timeout_s=60)
    assert breaker.allow_probe_now() is False  # closed: nothing to end
    breaker.record_failure(breaker.acquire())
    assert breaker.allow_probe_now() is True
    assert breaker.state is BreakerState.HALF_OPEN
    probe = breaker.acquire()
    assert probe.probe
    with pytest.raises(CircuitOpenError):
        breaker.acquire()  # still only the configured number of probes
    assert breaker.allow_probe_now() is True  # already half-open: no new transition
    breaker.record_failure(probe)
    assert breaker.state is BreakerState.OPEN
    assert [t.reason for t in seen] == ["failure_threshold", "manual_probe", "probe_failed"]


def test_the_permit_api_for_work_that_fails_mid_stream(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=2, recovery_timeout_s=5)
    permit = breaker.acquire()
    breaker.record_failure(permit, Boom("stream broke after 10 messages"))
    breaker.record_failure(permit, Boom("counted once"))
    breaker.record_success(permit)
    assert breaker.snapshot().failure_count == 1
    assert breaker.snapshot().failures_total == 1
    breaker.release(breaker.acquire())
    assert breaker.snapshot().failure_count == 1
    breaker.record_failure(breaker.acquire())
    assert breaker.state is BreakerState.OPEN
    assert breaker.snapshot().last_failure == "Failure"
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    clock.advance(5)
    probe = breaker.acquire()
    assert probe.probe
    breaker.release(probe)
    breaker.release(probe)  # idempotent: one slot back, not two
    probe = breaker.acquire()
    with pytest.raises(CircuitOpenError):
        breaker.acquire()
    breaker.record_failure(probe, Boom("failed probe"))
    assert breaker.state is BreakerState.OPEN


# --------------------------------------------------------------------------- listeners


def test_a_failing_listener_is_logged_and_never_breaks_the_breaker(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    breaker = make(clock, failure_threshold=1, recovery_timeout_s=1)
    seen: list[Transition] = []

    def broken(transition: Transition) -> None:
        raise RuntimeError("listener bug")

    breaker.add_listener(broken)
    breaker.add_listener(seen.append)
    with caplog.at_level(logging.ERROR, logger="backend_core.breakers"):
        breaker.record_failure(breaker.acquire(), Boom())  # no loop running: listeners run right here
    assert breaker.state is BreakerState.OPEN
    assert [t.to_state for t in seen] == [BreakerState.OPEN]
    assert any("listener" in r.getMessage() and r.exc_info for r in caplog.records)
    clock.advance(1)
    breaker.record_success(breaker.acquire())
    assert breaker.state is BreakerState.CLOSED
    assert len(seen) == 3


async def test_listeners_run_after_the_call_via_call_soon(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1)
    seen: list[Transition] = []
    breaker.add_listener(seen.append)
    breaker.add_listener(seen.append)  # added once only
    await fail_times(breaker, 1)
    assert seen == []  # not on the call path
    await callbacks_ran()
    assert len(seen) == 1
    breaker.remove_listener(seen.append)
    breaker.reset()
    await callbacks_ran()
    assert len(seen) == 1


async def test_a_transition_carries_name_states_reason_and_both_clocks() -> None:
    clock = FakeClock(start_monotonic=50.0, start_wall=1_700_000_000.0)
    breaker, seen = make_recorded(clock, "websocket", failure_threshold=1)
    clock.advance(2.5)
    await fail_times(breaker, 1)
    await callbacks_ran()
    assert seen == [
        Transition(
            name="websocket",
            from_state=BreakerState.CLOSED,
            to_state=BreakerState.OPEN,
            reason="failure_threshold",
            at_monotonic=52.5,
            at_wall=1_700_000_002.5,
        )
    ]


async def test_a_closed_registry_delivers_nothing_not_even_what_was_already_scheduled(clock: FakeClock) -> None:
    registry = BreakerRegistry(websocket_config=BreakerConfig(failure_threshold=1), clock=clock)
    seen: list[Transition] = []
    registry.add_listener(seen.append)
    websocket = registry.websocket
    websocket.record_failure(websocket.acquire())  # scheduled with call_soon
    registry.close()
    await callbacks_ran()
    assert seen == []
    websocket.reset()  # the breaker still works, nobody hears it
    await callbacks_ran()
    assert seen == [] and websocket.state is BreakerState.CLOSED


# --------------------------------------------------------------------------- snapshot


async def test_snapshot_reports_everything_health_and_metrics_need(clock: FakeClock) -> None:
    breaker = make(
        clock,
        "api:/ticks",
        failure_threshold=2,
        recovery_timeout_s=30,
        window=SlidingWindow.count(10, minimum_calls=5),
    )
    await call(breaker, ok)
    await fail_times(breaker, 1)
    with pytest.raises(Boom):
        await call(breaker, fail, Boom("x" * 1000))
    snapshot = breaker.snapshot()
    assert snapshot.name == "api:/ticks"
    assert snapshot.state is BreakerState.OPEN
    assert snapshot.opened_at == clock.wall()
    assert snapshot.retry_after_s == 30
    assert snapshot.calls_in_window == 3
    assert snapshot.failure_rate == pytest.approx(2 / 3)
    assert snapshot.last_failure is not None
    assert len(snapshot.last_failure) == LAST_FAILURE_MAX_CHARS
    assert snapshot.last_failure.startswith("Boom: xxx")
    assert "Traceback" not in snapshot.last_failure
    assert snapshot.last_failure_at == clock.wall()
    assert (snapshot.successes_total, snapshot.failures_total, snapshot.rejections_total) == (1, 2, 0)
    assert snapshot.transition_count == 1
    assert snapshot.last_outage_s is None
    assert snapshot.config["failure_threshold"] == 2
    assert snapshot.config["window"] == {"kind": "count", "size": 10, "failure_rate_threshold": 0.5, "minimum_calls": 5}
    as_dict = json.loads(json.dumps(snapshot.to_dict()))
    assert as_dict["state"] == "open"
    assert as_dict["opened_at_utc"] == "2023-11-14T22:13:20.000Z"
    assert as_dict["retry_after_s"] == 30
    clock.advance(30)
    await call(breaker, ok)
    closed = breaker.snapshot()
    assert (closed.state, closed.opened_at, closed.retry_after_s) == (BreakerState.CLOSED, None, 0.0)
    assert closed.last_outage_s == 30
    assert closed.transition_count == 3


async def test_last_outage_spans_every_reopen_until_closed(clock: FakeClock) -> None:
    breaker = make(clock, failure_threshold=1, recovery_timeout_s=10)
    await fail_times(breaker, 1)
    opened_at = breaker.snapshot().opened_at
    clock.advance(10)
    await fail_times(breaker, 1)
    assert breaker.snapshot().opened_at == opened_at  # still the same outage
    clock.advance(10)
    await call(breaker, ok)
    assert breaker.snapshot().last_outage_s == 20


def test_an_unprintable_exception_is_described_safely(clock: FakeClock) -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise ValueError("no")

    breaker = make(clock, failure_threshold=5)
    breaker.record_failure(breaker.acquire(), Unprintable())
    assert breaker.snapshot().last_failure == "Unprintable: <unprintable>"


# --------------------------------------------------------------------------- store


class CountingStore(InMemoryBreakerStore):
    """The in-memory store, counting reads; ``shared`` as told."""

    def __init__(self, shared: bool) -> None:
        super().__init__()
        self.shared = shared  # type: ignore[misc]
        self.loads = 0

    def load(self, name: str) -> BreakerRecord | None:
        self.loads += 1
        return super().load(name)


async def test_the_store_gets_every_transition_and_restores_an_open_breaker(clock: FakeClock) -> None:
    store = InMemoryBreakerStore()
    config = BreakerConfig(failure_threshold=1, recovery_timeout_s=10)
    first = CircuitBreaker("websocket", config, clock=clock, store=store)
    await fail_times(first, 1)
    record = store.load("websocket")
    assert record is not None
    assert (record.state, record.opened_at_wall, record.open_level) == (BreakerState.OPEN, clock.wall(), 0)
    assert record.open_until_wall == clock.wall() + 10
    clock.advance(4)
    second = CircuitBreaker("websocket", config, clock=clock, store=store)  # e.g. after a restart
    assert second.state is BreakerState.OPEN
    assert second.retry_after_s == pytest.approx(6)
    assert second.snapshot().opened_at == pytest.approx(clock.wall() - 4)
    clock.advance(6)
    await call(second, ok)
    assert second.state is BreakerState.CLOSED
    assert second.snapshot().last_outage_s == pytest.approx(10)
    stored = store.load("websocket")
    assert stored is not None and stored.state is BreakerState.CLOSED


def test_a_store_that_is_not_shared_is_read_once_not_on_every_call(clock: FakeClock) -> None:
    store = CountingStore(shared=False)
    breaker = CircuitBreaker("x", BreakerConfig(failure_threshold=1), clock=clock, store=store)
    for _ in range(10):
        breaker.record_success(breaker.acquire())
    breaker.snapshot()
    assert store.loads == 1


def test_a_shared_store_carries_state_decided_by_another_process(clock: FakeClock) -> None:
    store = CountingStore(shared=True)
    config = BreakerConfig(failure_threshold=1, recovery_timeout_s=10)
    here = CircuitBreaker("websocket", config, clock=clock, store=store)
    there = CircuitBreaker("websocket", config, clock=clock, store=store)
    seen = record_transitions(here)
    in_flight = here.acquire()  # admitted before the other process opened it
    there.record_failure(there.acquire(), Boom("down over there"))
    clock.advance(3)
    with pytest.raises(CircuitOpenError) as rejected:
        here.acquire()
    assert rejected.value.retry_after_s == pytest.approx(7)
    assert reasons(seen) == [("closed", "open", "synced")]
    here.record_success(in_flight)  # an older generation here: settles nothing
    assert here.state is BreakerState.OPEN
    there.reset()
    assert here.state is BreakerState.CLOSED
    assert [t.reason for t in seen] == ["synced", "synced"]
    assert store.loads > 4


def test_a_half_open_record_from_another_process_is_an_open_period_that_is_over(clock: FakeClock) -> None:
    store = CountingStore(shared=True)
    config = BreakerConfig(failure_threshold=1, recovery_timeout_s=10, max_recovery_timeout_s=1000)
    here = CircuitBreaker("websocket", config, clock=clock, store=store)
    store.save("websocket", BreakerRecord(BreakerState.HALF_OPEN, clock.wall() - 20, None, 2))
    probe = here.acquire()
    assert probe.probe and here.state is BreakerState.HALF_OPEN
    assert here.snapshot().opened_at == pytest.approx(clock.wall() - 20)
    here.record_failure(probe)
    assert here.retry_after_s == 80  # the growth goes on from the record's level: 10 * 2**3
    record = store.load("websocket")
    assert record is not None and record.state is BreakerState.OPEN and record.open_level == 3


def test_a_failing_store_is_logged_and_never_breaks_the_breaker(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    class BrokenStore:
        shared = True

        def load(self, name: str) -> BreakerRecord | None:
            raise OSError("redis down")

        def save(self, name: str, record: BreakerRecord) -> None:
            raise OSError("redis down")

    with caplog.at_level(logging.ERROR, logger="backend_core.breakers"):
        breaker = CircuitBreaker("x", BreakerConfig(failure_threshold=1), clock=clock, store=BrokenStore())
        breaker.record_failure(breaker.acquire())
    assert breaker.state is BreakerState.OPEN
    assert len([r for r in caplog.records if "redis" in str(r.exc_info)]) >= 2


# --------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "bad",
    [
        {"failure_threshold": 0},
        {"recovery_timeout_s": 0},
        {"half_open_max_probes": 0},
        {"half_open_max_wait_s": -1},
        {"slow_call_threshold_s": 0},
        {"recovery_timeout_s": 10, "max_recovery_timeout_s": 5},
        {"jitter_ratio": 1.0},
    ],
)
def test_bad_config_is_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        BreakerConfig(**bad)


@pytest.mark.parametrize(
    "make_window",
    [
        lambda: SlidingWindow.count(0),
        lambda: SlidingWindow.count(2.5),  # type: ignore[arg-type]
        lambda: SlidingWindow.time(0),
        lambda: SlidingWindow.count(10, failure_rate_threshold=0),
        lambda: SlidingWindow.count(10, minimum_calls=0),
        lambda: SlidingWindow("sessions", 10),  # type: ignore[arg-type]
    ],
)
def test_bad_windows_are_refused(make_window: Callable[[], SlidingWindow]) -> None:
    with pytest.raises(ValueError):
        make_window()


def test_a_breaker_needs_a_name() -> None:
    with pytest.raises(ValueError):
        CircuitBreaker("")


# --------------------------------------------------------------------------- registry


def test_registry_from_settings_builds_the_websocket_breaker(clock: FakeClock) -> None:
    settings = load_settings(
        {
            "WEBSOCKET_CB_FAILURE_THRESHOLD": "2",
            "WEBSOCKET_CB_RECOVERY_TIMEOUT": "7",
            "WEBSOCKET_CONNECTION_TIMEOUT": "4",
        }
    )
    registry = BreakerRegistry.from_settings(settings, clock=clock, rng=Draws(0.0, 0.0))
    assert registry.names() == ["websocket"]
    websocket = registry.websocket
    assert registry.get("websocket") is websocket
    assert websocket.config.failure_threshold == 2
    assert websocket.config.recovery_timeout_s == 7
    assert websocket.config.half_open_max_wait_s == 8
    assert websocket.config.max_recovery_timeout_s == 56
    websocket.record_failure(websocket.acquire())
    assert websocket.state is BreakerState.CLOSED
    websocket.record_failure(websocket.acquire())
    assert websocket.state is BreakerState.OPEN
    assert websocket.retry_after_s == 7
    assert reopen_after_probe(websocket, clock) == 14  # grows after a failed probe (no jitter drawn: 0.0)


def test_registry_defaults_follow_the_documented_settings(clock: FakeClock) -> None:
    registry = BreakerRegistry.from_settings(load_settings({}), clock=clock)
    assert (registry.websocket.config.failure_threshold, registry.websocket.config.recovery_timeout_s) == (3, 30)
    api = registry.api("/api/v1/ticks/{symbol}")
    assert (api.config.failure_threshold, api.config.recovery_timeout_s) == (10, 120)
    assert api.config.max_recovery_timeout_s is None  # API breakers do not grow
    assert registry.enabled


async def test_registry_creates_api_breakers_lazily_with_the_api_settings(clock: FakeClock) -> None:
    settings = load_settings({"API_CB_FAILURE_THRESHOLD": "4", "API_CB_RECOVERY_TIMEOUT": "9"})
    registry = BreakerRegistry.from_settings(settings, clock=clock)
    assert "api:/api/v1/ticks/{symbol}" not in registry
    ticks = registry.api("/api/v1/ticks/{symbol}")
    assert ticks.name == "api:/api/v1/ticks/{symbol}"
    assert registry.api("/api/v1/ticks/{symbol}") is ticks
    assert registry.names() == ["websocket", "api:/api/v1/ticks/{symbol}"]
    assert (ticks.config.failure_threshold, ticks.config.recovery_timeout_s) == (4, 9)
    await fail_times(ticks, 4)
    assert ticks.state is BreakerState.OPEN
    assert registry.websocket.state is BreakerState.CLOSED
    assert [s.name for s in registry.snapshots()] == ["websocket", "api:/api/v1/ticks/{symbol}"]
    registry.reset("api:/api/v1/ticks/{symbol}")
    assert ticks.state is BreakerState.CLOSED


def test_registry_bounds_the_number_of_api_breakers(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    registry = BreakerRegistry.from_settings(load_settings({}), clock=clock)
    with caplog.at_level(logging.WARNING, logger="backend_core.breakers"):
        breakers = [registry.api(f"/route/{i}") for i in range(MAX_API_BREAKERS + 50)]
    assert len(registry) == 1 + MAX_API_BREAKERS + 1
    assert breakers[MAX_API_BREAKERS - 1].name == f"api:/route/{MAX_API_BREAKERS - 1}"
    assert {b.name for b in breakers[MAX_API_BREAKERS:]} == {API_OVERFLOW_NAME}
    assert registry.api("/route/0") is breakers[0]  # known routes keep their own
    assert len([r for r in caplog.records if API_OVERFLOW_NAME in r.getMessage()]) == 1


@pytest.mark.parametrize("template", ["", "/x" * 50, "/ticks/<sym>", "/a b", "/ticks\n", "/é", "/x;drop"])
def test_registry_refuses_names_outside_the_bounded_pattern(clock: FakeClock, template: str) -> None:
    registry = BreakerRegistry.from_settings(load_settings({}), clock=clock)
    with pytest.raises(ValueError):
        registry.api(template)
    assert len(registry) == 1
    with pytest.raises(KeyError):
        registry.get("api:" + template)  # an unknown name is a KeyError whatever it holds (404, not 500)


def test_registry_get_and_reset_of_an_unknown_name_raise_key_error(clock: FakeClock) -> None:
    registry = BreakerRegistry.from_settings(load_settings({}), clock=clock)
    with pytest.raises(KeyError):
        registry.get("api:/nope")
    with pytest.raises(KeyError):
        registry.reset("nope")


def test_registry_listeners_reach_existing_and_future_breakers(clock: FakeClock) -> None:
    registry = BreakerRegistry(
        websocket_config=BreakerConfig(failure_threshold=1),
        api_config=BreakerConfig(failure_threshold=1),
        clock=clock,
        max_api_breakers=4,
    )
    before = registry.api("/before")
    seen: list[Transition] = []
    registry.add_listener(seen.append)
    registry.add_listener(seen.append)
    after = registry.api("/after")
    for breaker in (registry.websocket, before, after):
        breaker.record_failure(breaker.acquire())
    assert [t.name for t in seen] == ["websocket", "api:/before", "api:/after"]
    registry.remove_listener(seen.append)
    registry.reset("websocket")
    later = registry.api("/later")
    later.record_failure(later.acquire())
    assert len(seen) == 3


def test_registry_keeps_the_websocket_breaker_in_its_own_store(clock: FakeClock) -> None:
    websocket_store = CountingStore(shared=True)
    registry = BreakerRegistry(
        websocket_config=BreakerConfig(failure_threshold=1),
        api_config=BreakerConfig(failure_threshold=1),
        clock=clock,
        websocket_store=websocket_store,
    )
    api = registry.api("/x")
    api.record_failure(api.acquire())
    websocket = registry.websocket
    websocket.record_failure(websocket.acquire())
    assert websocket_store.load("websocket") is not None
    assert websocket_store.load("api:/x") is None


async def test_circuit_breaker_enabled_false_disables_every_breaker(clock: FakeClock) -> None:
    settings = load_settings({"CIRCUIT_BREAKER_ENABLED": "false", "WEBSOCKET_CB_FAILURE_THRESHOLD": "1"})
    registry = BreakerRegistry.from_settings(settings, clock=clock)
    assert not registry.enabled
    api = registry.api("/api/v1/ticks")
    for breaker in (registry.websocket, api):
        for _ in range(50):
            with pytest.raises(Boom):
                await call(breaker, fail)
        assert await call(breaker, ok, "through") == "through"
    assert [s.state for s in registry.snapshots()] == [BreakerState.DISABLED, BreakerState.DISABLED]
    assert {s.to_dict()["state"] for s in registry.snapshots()} == {"disabled"}


def test_registry_refuses_a_zero_api_bound() -> None:
    with pytest.raises(ValueError):
        BreakerRegistry(max_api_breakers=0)
