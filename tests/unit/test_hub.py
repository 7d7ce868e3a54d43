"""InMemoryHub: fan-out, bounded queues, drop-oldest, slow-consumer close, ring buffer."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend_core.clock import FakeClock
from backend_core.events import LinkState, Tick, UpstreamSnapshot
from backend_core.hub import Closed, Dropped, Hub, InMemoryHub, Subscription


def tick(symbol: str, epoch: int, quote: float = 1.0, backfill: bool = False) -> Tick:
    return Tick(symbol=symbol, epoch=epoch, quote=quote, pip_size=2, backfill=backfill)


def status(state: LinkState = LinkState.CONNECTED, since: float = 1.0) -> UpstreamSnapshot:
    return UpstreamSnapshot(state=state, since=since, url="sim://", simulated=True)


def drain(sub: Subscription) -> list[object]:
    out: list[object] = []
    while (event := sub.get_nowait()) is not None:
        out.append(event)
        if isinstance(event, Closed):
            break
    return out


def test_in_memory_hub_is_a_hub() -> None:
    hub: Hub = InMemoryHub(FakeClock())
    assert hub.status() is None


def test_ticks_reach_only_interested_subscribers() -> None:
    hub = InMemoryHub(FakeClock())
    everything = hub.subscribe(None)
    r50 = hub.subscribe(["R_50"])
    nothing = hub.subscribe([])
    hub.publish_tick(tick("R_50", 1))
    hub.publish_tick(tick("R_100", 1))
    assert [t.symbol for t in drain(everything)] == ["R_50", "R_100"]  # type: ignore[attr-defined]
    assert drain(r50) == [tick("R_50", 1)]
    assert drain(nothing) == []


def test_status_goes_to_everyone_and_is_kept_for_newcomers() -> None:
    hub = InMemoryHub(FakeClock())
    a = hub.subscribe(["R_50"])
    b = hub.subscribe([])
    snap = status(LinkState.RECONNECTING)
    hub.publish_status(snap)
    assert drain(a) == [snap]
    assert drain(b) == [snap]
    late = hub.subscribe(["R_50"])
    assert hub.status() is snap
    assert drain(late) == []  # newcomers read hub.status(); nothing is queued for them


def test_set_symbols_changes_delivery() -> None:
    hub = InMemoryHub(FakeClock())
    sub = hub.subscribe(["R_50"])
    sub.set_symbols(["R_100"])
    hub.publish_tick(tick("R_50", 1))
    hub.publish_tick(tick("R_100", 1))
    assert drain(sub) == [tick("R_100", 1)]
    sub.set_symbols(None)
    assert sub.symbols is None
    hub.publish_tick(tick("R_50", 2))
    assert drain(sub) == [tick("R_50", 2)]
    sub.set_symbols([])
    hub.publish_tick(tick("R_50", 3))
    assert drain(sub) == []


def test_duplicate_and_older_epochs_are_suppressed() -> None:
    hub = InMemoryHub(FakeClock())
    sub = hub.subscribe(None)
    hub.publish_tick(tick("R_50", 10))
    hub.publish_tick(tick("R_50", 10, quote=2.0))
    hub.publish_tick(tick("R_50", 9))
    hub.publish_tick(tick("R_100", 9))  # other symbols have their own sequence
    hub.publish_tick(tick("R_50", 11))
    assert [(t.symbol, t.epoch) for t in drain(sub)] == [("R_50", 10), ("R_100", 9), ("R_50", 11)]  # type: ignore[attr-defined]
    snap = hub.snapshot()
    assert snap["duplicates_suppressed"] == 2
    assert snap["published_ticks_total"] == 3


def test_ring_keeps_the_latest_ticks_and_answers_ticks_since() -> None:
    hub = InMemoryHub(FakeClock(), ring_size=5)
    assert hub.latest("R_50") is None
    assert hub.ticks_since("R_50", 0, 10) == []
    for epoch in range(1, 9):
        hub.publish_tick(tick("R_50", epoch * 2))  # epochs 2, 4, ..., 16
    latest = hub.latest("R_50")
    assert latest is not None and latest.epoch == 16
    assert [t.epoch for t in hub.ticks_since("R_50", 0, 100)] == [8, 10, 12, 14, 16]
    assert [t.epoch for t in hub.ticks_since("R_50", 10, 100)] == [12, 14, 16]  # strictly after
    assert [t.epoch for t in hub.ticks_since("R_50", 11, 100)] == [12, 14, 16]
    assert [t.epoch for t in hub.ticks_since("R_50", 8, 2)] == [10, 12]  # oldest first, so callers page forward
    assert hub.ticks_since("R_50", 16, 10) == []
    assert hub.ticks_since("R_50", 8, 0) == []
    assert hub.evicted_through("R_50") == 6
    assert hub.evicted_through("R_100") is None
    assert hub.snapshot()["ring_sizes"] == {"R_50": 5}


def test_full_queue_drops_oldest_and_reports_the_count_first() -> None:
    hub = InMemoryHub(FakeClock(), queue_size=3)
    slow = hub.subscribe(["R_50"])
    for epoch in range(1, 6):
        hub.publish_tick(tick("R_50", epoch))
    assert slow.backlog == 3
    events = drain(slow)
    assert events[0] == Dropped(2)
    assert [t.epoch for t in events[1:]] == [3, 4, 5]  # type: ignore[attr-defined]
    assert slow.dropped == 2
    assert slow.delivered == 3
    snap = hub.snapshot()
    assert snap["dropped_total"] == 2
    assert snap["delivered_total"] == 3


def test_a_slow_consumer_does_not_hold_back_a_fast_one() -> None:
    hub = InMemoryHub(FakeClock(), queue_size=4, max_drops_in_window=10_000)
    slow = hub.subscribe(None)
    fast = hub.subscribe(None)
    received = []
    for epoch in range(1, 101):
        hub.publish_tick(tick("R_50", epoch))
        received.extend(drain(fast))
    assert [t.epoch for t in received] == list(range(1, 101))  # type: ignore[attr-defined]
    assert slow.backlog == 4
    assert slow.closed is None


def test_too_many_drops_in_a_window_closes_the_subscription() -> None:
    clock = FakeClock()
    hub = InMemoryHub(clock, queue_size=2, max_drops_in_window=3, drop_window_s=10.0, max_full_s=1000.0)
    slow = hub.subscribe(None)
    other = hub.subscribe(None)
    for epoch in range(1, 6):  # 3 drops: at the limit, still open
        hub.publish_tick(tick("R_50", epoch))
        drain(other)
    assert slow.closed is None
    hub.publish_tick(tick("R_50", 6))  # the 4th drop within 10 s
    assert slow.closed is not None and slow.closed.slow
    assert "dropped" in slow.closed.reason
    assert slow.backlog == 0
    assert drain(slow) == [slow.closed]
    assert slow.get_nowait() == slow.closed  # sticky
    hub.publish_tick(tick("R_50", 7))
    assert drain(other) == [tick("R_50", 6), tick("R_50", 7)]
    snap = hub.snapshot()
    assert snap["slow_disconnects_total"] == 1
    assert snap["subscribers"] == 1


def test_drops_spread_over_windows_do_not_close() -> None:
    clock = FakeClock()
    hub = InMemoryHub(clock, queue_size=1, max_drops_in_window=2, drop_window_s=1.0, max_full_s=1000.0)
    sub = hub.subscribe(None)
    epoch = 0
    for _ in range(5):
        for _ in range(3):  # 2 drops per window
            epoch += 1
            hub.publish_tick(tick("R_50", epoch))
        clock.advance(1.5)
        drain(sub)
    assert sub.closed is None


def test_backlog_full_for_too_long_closes_the_subscription() -> None:
    clock = FakeClock()
    hub = InMemoryHub(clock, queue_size=2, max_drops_in_window=10_000, max_full_s=5.0)
    sub = hub.subscribe(None)
    hub.publish_tick(tick("R_50", 1))
    hub.publish_tick(tick("R_50", 2))  # full now
    clock.advance(4.0)
    hub.publish_tick(tick("R_50", 3))
    assert sub.closed is None
    clock.advance(2.0)  # full for 6 s
    hub.publish_tick(tick("R_50", 4))
    assert sub.closed is not None and sub.closed.slow
    assert "backlog full" in sub.closed.reason


def test_reading_resets_the_full_timer() -> None:
    clock = FakeClock()
    hub = InMemoryHub(clock, queue_size=2, max_drops_in_window=10_000, max_full_s=5.0)
    sub = hub.subscribe(None)
    epoch = 0
    for _ in range(10):
        for _ in range(3):
            epoch += 1
            hub.publish_tick(tick("R_50", epoch))
        clock.advance(3.0)
        sub.get_nowait()
        sub.get_nowait()
    assert sub.closed is None


def test_oldest_pending_age_follows_the_clock() -> None:
    clock = FakeClock()
    hub = InMemoryHub(clock)
    sub = hub.subscribe(None)
    assert sub.oldest_pending_age_s == 0.0
    hub.publish_tick(tick("R_50", 1))
    clock.advance(2.5)
    hub.publish_tick(tick("R_50", 2))
    assert sub.backlog == 2
    assert sub.oldest_pending_age_s == pytest.approx(2.5)
    sub.get_nowait()
    assert sub.oldest_pending_age_s == pytest.approx(0.0)
    sub.get_nowait()
    assert sub.oldest_pending_age_s == 0.0


async def test_get_waits_for_a_publish() -> None:
    hub = InMemoryHub(FakeClock())
    sub = hub.subscribe(["R_50"])
    getter = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    assert not getter.done()
    hub.publish_tick(tick("R_50", 1))
    async with asyncio.timeout(1):
        assert await getter == tick("R_50", 1)


async def test_wake_releases_a_waiter_without_an_event() -> None:
    hub = InMemoryHub(FakeClock())
    sub = hub.subscribe([])
    waiter = asyncio.create_task(sub.wait())
    await asyncio.sleep(0)
    assert not waiter.done()
    sub.wake()
    async with asyncio.timeout(1):
        await waiter
    assert sub.get_nowait() is None
    sub.wake()  # a wake before the wait is not lost
    async with asyncio.timeout(1):
        await sub.wait()


async def test_closing_releases_a_waiter() -> None:
    hub = InMemoryHub(FakeClock())
    sub = hub.subscribe([])
    getter = asyncio.create_task(sub.get())
    await asyncio.sleep(0)
    hub.close()
    async with asyncio.timeout(1):
        event = await getter
    assert event == Closed("hub closed")
    assert not event.slow


def test_consumer_close_unsubscribes() -> None:
    hub = InMemoryHub(FakeClock())
    sub = hub.subscribe(None)
    hub.publish_tick(tick("R_50", 1))
    sub.close()
    sub.close()  # idempotent
    assert hub.snapshot()["subscribers"] == 0
    hub.publish_tick(tick("R_50", 2))
    assert drain(sub) == [Closed("unsubscribed")]
    sub.set_symbols(["R_50"])  # harmless after close
    assert hub.snapshot()["subscribers"] == 0


def test_hub_close_closes_everything_and_ignores_later_publishes() -> None:
    hub = InMemoryHub(FakeClock())
    a = hub.subscribe(None)
    b = hub.subscribe(["R_50"])
    hub.close()
    hub.close()
    assert a.closed == Closed("hub closed")
    assert b.closed == Closed("hub closed")
    hub.publish_tick(tick("R_50", 1))
    hub.publish_status(status())
    assert hub.latest("R_50") is None
    late = hub.subscribe(None)
    assert late.get_nowait() == Closed("hub closed")
    snap = hub.snapshot()
    assert snap["closed"] is True
    assert snap["subscribers"] == 0
    assert snap["slow_disconnects_total"] == 0


def test_symbol_count_is_bounded() -> None:
    hub = InMemoryHub(FakeClock(), max_symbols=2)
    for symbol in ("A1", "B2", "C3"):
        hub.publish_tick(tick(symbol, 1))
    assert hub.latest("C3") is None
    assert hub.snapshot()["symbols_refused"] == 1


def test_per_subscription_queue_size() -> None:
    hub = InMemoryHub(FakeClock(), queue_size=100)
    sub = hub.subscribe(None, queue_size=1)
    hub.publish_tick(tick("R_50", 1))
    hub.publish_tick(tick("R_50", 2))
    assert drain(sub) == [Dropped(1), tick("R_50", 2)]
    with pytest.raises(ValueError):
        hub.subscribe(None, queue_size=0)


@pytest.mark.parametrize(
    "kwargs",
    [{"queue_size": 0}, {"ring_size": 0}, {"max_symbols": 0}, {"max_drops_in_window": 0}, {"drop_window_s": 0}],
)
def test_limits_must_be_positive(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        InMemoryHub(FakeClock(), **kwargs)  # type: ignore[arg-type]


def test_snapshot_counts() -> None:
    hub = InMemoryHub(FakeClock(), queue_size=2, max_drops_in_window=100)
    a = hub.subscribe(None)
    hub.subscribe(["R_100"])
    hub.publish_status(status())
    for epoch in range(1, 4):
        hub.publish_tick(tick("R_50", epoch))
    drain(a)
    snap = hub.snapshot()
    assert snap["subscribers"] == 2
    assert snap["published_ticks_total"] == 3
    assert snap["published_status_total"] == 1
    assert snap["dropped_total"] == 2  # a: status + tick 1
    assert snap["delivered_total"] == 2  # a: ticks 2, 3 (the Dropped marker is not an event)
    assert snap["backlog_total"] == 1  # the R_100 subscriber's status


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(
        st.one_of(
            st.tuples(st.just("tick"), st.sampled_from(["A1", "B2"]), st.integers(0, 30)),
            st.tuples(st.just("read"), st.integers(0, 5), st.just(0)),
            st.tuples(st.just("advance"), st.just(""), st.integers(0, 3)),
        ),
        max_size=120,
    ),
    queue_size=st.integers(1, 6),
)
def test_property_no_duplicates_no_reordering_and_counts_add_up(
    ops: list[tuple[str, str, int]], queue_size: int
) -> None:
    clock = FakeClock()
    hub = InMemoryHub(clock, queue_size=queue_size, max_drops_in_window=5, drop_window_s=2.0, max_full_s=4.0)
    sub = hub.subscribe(None)
    seen: list[object] = []
    for kind, symbol, value in ops:
        if kind == "tick":
            hub.publish_tick(tick(symbol, value))
        elif kind == "read":
            for _ in range(value):
                event = sub.get_nowait()
                if event is not None:
                    seen.append(event)
        else:
            clock.advance(value)
    seen.extend(drain(sub))
    ticks = [e for e in seen if isinstance(e, Tick)]
    for symbol in ("A1", "B2"):
        epochs = [t.epoch for t in ticks if t.symbol == symbol]
        assert epochs == sorted(set(epochs))  # strictly increasing: no duplicate, no reorder
    dropped = sum(e.count for e in seen if isinstance(e, Dropped))
    snap = hub.snapshot()
    published = snap["published_ticks_total"]
    if sub.closed is None:
        assert len(ticks) + dropped == published
    else:
        assert len(ticks) + sub.dropped <= published  # later publishes no longer reach it
        assert sub.closed.slow
    assert sub.delivered == len(ticks)
