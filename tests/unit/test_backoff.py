"""The shared backoff strategies: full jitter within its ceiling, growth with a cap."""

from __future__ import annotations

import random

import pytest
from tenacity import wait_random_exponential

from backend_core.backoff import FullJitter, Growth


def test_full_jitter_stays_within_the_doubling_ceiling_and_its_cap() -> None:
    wait = FullJitter(0.5, 8.0, random.Random(1))
    assert [wait.ceiling(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    for attempt in range(1, 50):
        assert 0.0 <= wait.delay(attempt) <= wait.ceiling(attempt)
    assert wait.ceiling(10_000) == 8.0  # no overflow for huge attempt numbers


def test_full_jitter_is_a_tenacity_wait_and_repeatable_with_a_seed() -> None:
    assert isinstance(FullJitter(1.0, 4.0), wait_random_exponential)

    class State:
        attempt_number = 3

    first = FullJitter(1.0, 30.0, random.Random(7))(State())
    again = FullJitter(1.0, 30.0, random.Random(7))(State())
    assert first == again
    assert 0.0 <= first <= 4.0


def test_full_jitter_spreads_its_waits() -> None:
    wait = FullJitter(1.0, 60.0, random.Random(3))
    delays = {round(wait.delay(6), 3) for _ in range(50)}
    assert len(delays) > 40


def test_growth_doubles_to_its_cap_and_jitter_only_shortens() -> None:
    growth = Growth(30.0, 300.0)
    assert [growth.period(level) for level in range(6)] == [30.0, 60.0, 120.0, 240.0, 300.0, 300.0]
    jittered = Growth(30.0, 300.0, jitter_ratio=0.1, rng=random.Random(5))
    for level in range(6):
        assert 0.9 * growth.period(level) <= jittered.period(level) <= growth.period(level)


@pytest.mark.parametrize(("base", "cap"), [(-1.0, 1.0), (2.0, 1.0)])
def test_growth_refuses_a_schedule_that_makes_no_sense(base: float, cap: float) -> None:
    with pytest.raises(ValueError):
        Growth(base, cap)
