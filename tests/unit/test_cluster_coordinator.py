"""The cluster role state machine, driven with plain numbers for time."""

from __future__ import annotations

import pytest

from backend_core.cluster.coordinator import Coordinator, LeaseTiming, Role, Step

TIMING = LeaseTiming(ttl_s=5.0, degrade_after_s=10.0)


def test_a_new_member_follows_and_asks_for_the_lease_at_once_then_every_second() -> None:
    c = Coordinator(TIMING, now=100.0)
    assert c.role is Role.FOLLOWER
    plan = c.next_step(100.0)
    assert plan.step is Step.ACQUIRE
    assert c.not_acquired(100.0) is None
    assert c.next_step(100.5).step is Step.WAIT
    assert c.next_step(101.0).step is Step.ACQUIRE  # min(1 s, ttl/4)


def test_acquiring_makes_the_member_leader_and_it_renews_every_third_of_the_ttl() -> None:
    c = Coordinator(TIMING, now=0.0)
    change = c.acquired(term=7, sent_at=0.0, now=0.01)
    assert change is not None and (change.before, change.after, change.term) == (Role.FOLLOWER, Role.LEADER, 7)
    assert c.next_step(1.0).step is Step.WAIT
    assert c.next_step(0.01 + 5 / 3).step is Step.RENEW


def test_a_leader_whose_renewals_fail_steps_down_at_four_fifths_of_the_ttl_after_the_last_good_send() -> None:
    c = Coordinator(TIMING, now=0.0)
    c.acquired(term=1, sent_at=0.0, now=0.0)
    c.renewed(sent_at=1.7, now=1.71)
    assert c.redis_failed(3.4) is None
    assert c.check(1.7 + 3.99) is None
    change = c.check(1.7 + 4.0)
    assert change is not None and change.after is Role.FOLLOWER
    assert "not renewed" in change.reason


def test_a_reply_delayed_by_a_pause_does_not_refresh_the_lease() -> None:
    # The renew was sent at 1.0, the process was paused, the reply is read at 9.0: the
    # lease may already have expired in Redis, so the step-down counts from the send.
    c = Coordinator(TIMING, now=0.0)
    c.acquired(term=1, sent_at=0.0, now=0.0)
    c.renewed(sent_at=1.0, now=9.0)
    change = c.check(9.0)
    assert change is not None and change.after is Role.FOLLOWER


def test_a_refused_renewal_or_fenced_write_steps_down_at_once() -> None:
    c = Coordinator(TIMING, now=0.0)
    c.acquired(term=3, sent_at=0.0, now=0.0)
    change = c.lease_lost(now=0.5)
    assert change is not None and (change.before, change.after) == (Role.LEADER, Role.FOLLOWER)
    assert c.lease_lost(now=0.6) is None  # already a follower
    assert c.next_step(1.6).step is Step.ACQUIRE


def test_without_redis_a_member_degrades_and_rejoins_when_redis_answers() -> None:
    c = Coordinator(TIMING, now=0.0)
    for now in range(1, 10):
        assert c.redis_failed(float(now)) is None
    change = c.redis_failed(10.0)
    assert change is not None and change.after is Role.DEGRADED
    assert c.redis_failed(11.0) is None  # stays degraded, keeps trying
    assert c.next_step(12.0).step is Step.ACQUIRE
    back = c.not_acquired(12.0)
    assert back is not None and (back.before, back.after) == (Role.DEGRADED, Role.FOLLOWER)


def test_a_degraded_member_can_win_the_lease_directly() -> None:
    c = Coordinator(TIMING, now=0.0)
    c.check(10.0)
    assert c.role is Role.DEGRADED
    change = c.acquired(term=9, sent_at=12.0, now=12.0)
    assert change is not None and (change.before, change.after) == (Role.DEGRADED, Role.LEADER)


def test_a_leader_cut_off_from_redis_steps_down_then_degrades() -> None:
    c = Coordinator(TIMING, now=0.0)
    c.acquired(term=1, sent_at=0.0, now=0.0)
    first = c.redis_failed(4.0)
    assert first is not None and first.after is Role.FOLLOWER
    assert c.redis_failed(9.0) is None
    second = c.redis_failed(10.0)
    assert second is not None and second.after is Role.DEGRADED


def test_a_leader_that_hears_nothing_until_it_degrades_reports_one_change_from_leader() -> None:
    # The renew in flight timed out after degrade_after_s: the driver must see that the
    # leader itself degraded, so it lets its grant go.
    c = Coordinator(TIMING, now=0.0)
    c.acquired(term=4, sent_at=0.0, now=0.0)
    change = c.redis_failed(10.0)
    assert change is not None and (change.before, change.after, change.term) == (Role.LEADER, Role.DEGRADED, 4)
    assert c.check(10.5) is None


def test_stopping_ends_every_step() -> None:
    c = Coordinator(TIMING, now=0.0)
    c.acquired(term=1, sent_at=0.0, now=0.0)
    change = c.stopping()
    assert change is not None and (change.before, change.after) == (Role.LEADER, Role.STOPPING)
    assert c.next_step(100.0).step is Step.WAIT
    assert c.check(100.0) is None


@pytest.mark.parametrize(("ttl", "degrade"), [(0.1, 1.0), (5.0, 4.0)])
def test_timing_that_cannot_work_is_refused(ttl: float, degrade: float) -> None:
    with pytest.raises(ValueError):
        LeaseTiming(ttl_s=ttl, degrade_after_s=degrade)
