"""The incident domain: tracking upstream and breaker outages, and the feed that shares them (pure, fake time)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend_core.breakers.breaker import Transition
from backend_core.breakers.core import BreakerState
from backend_core.clock import FakeClock
from backend_core.events import ErrorInfo, LinkState, UpstreamSnapshot
from backend_core.incidents import (
    MESSAGE_CHARS,
    Cause,
    IncidentClosed,
    IncidentEvent,
    IncidentFeed,
    IncidentOpened,
    IncidentTracker,
    Recovery,
)
from tests.helpers import counting_keys, upstream_snapshot

T0 = 1_700_000_040.0  # a whole minute (28,333,334 * 60)


def snap(state: LinkState, **fields: Any) -> UpstreamSnapshot:
    return upstream_snapshot(state, since=T0, **fields)


keys = counting_keys


def tracker() -> IncidentTracker:
    return IncidentTracker(new_key=keys())


# ---------------------------------------------------------------------------- upstream incidents


def test_a_fresh_start_is_not_an_incident() -> None:
    t = tracker()
    assert t.upstream(snap(LinkState.STOPPED), T0) == []
    assert t.upstream(snap(LinkState.CONNECTING, attempt=1, in_progress=True), T0) == []
    assert t.upstream(snap(LinkState.CONNECTED), T0 + 1) == []
    assert t.open_incidents == []


def test_a_dropped_link_opens_an_incident_that_closes_with_the_attempt_count() -> None:
    t = tracker()
    t.upstream(snap(LinkState.CONNECTED), T0)
    [opened] = t.upstream(snap(LinkState.RECONNECTING, error="ConnectionLost"), T0 + 10)
    assert isinstance(opened, IncidentOpened)
    assert (opened.component, opened.kind, opened.cause) == ("upstream", "upstream", Cause.CONNECTION_LOST)
    assert (opened.error_code, opened.message, opened.started_at) == (
        "ConnectionLost",
        "ConnectionLost happened",
        T0 + 10,
    )
    for attempt in (1, 1, 2, 2):
        assert t.upstream(snap(LinkState.RECONNECTING, error="ConnectionRefused", attempt=attempt), T0 + 11) == []
    [closed] = t.upstream(snap(LinkState.CONNECTED), T0 + 20)
    assert isinstance(closed, IncidentClosed)
    assert closed.key == opened.key and closed.ended_at == T0 + 20
    assert (closed.recovery, closed.attempts) == (Recovery.RECONNECTED, 2)
    assert t.open_incidents == []


Step = Callable[[IncidentTracker], list[IncidentEvent]]


def up(state: LinkState, at: float, **fields: Any) -> Step:
    """The manager publishes ``snap(state, **fields)`` at ``T0 + at``."""
    return lambda t: t.upstream(snap(state, **fields), T0 + at)


def breaker_opens(name: str, at: float) -> Step:
    return lambda t: t.transition(name, "closed", "open", "failure_threshold", T0 + at)


def manual_retry(at: float) -> Step:
    def step(t: IncidentTracker) -> list[IncidentEvent]:
        t.manual_retry(T0 + at)
        return []

    return step


CONNECTED, RECONNECTING, CIRCUIT_OPEN = LinkState.CONNECTED, LinkState.RECONNECTING, LinkState.CIRCUIT_OPEN
DROPPED = [up(CONNECTED, 0), up(RECONNECTING, 0, error="ConnectionLost")]
# Dropped, and the automatic retry counting down to T0 + 9.
COUNTING_DOWN = [up(CONNECTED, 0), up(RECONNECTING, 0, error="ConnectionLost", next_at=T0 + 9)]

# How the link came back, from the snapshots (and breaker and retry events) before it did:
# the steps, then the recovery and the attempts the closing event names (None: not checked).
RECOVERIES: dict[str, tuple[list[Step], tuple[Recovery, int | None]]] = {
    "attempts are summed over retry cycles": (
        [
            *DROPPED,
            *(
                step
                for attempt in (1, 2, 3, 1, 2)
                for step in (
                    up(RECONNECTING, 0, error="X", attempt=attempt, in_progress=True),
                    up(RECONNECTING, 0, error="X", attempt=attempt),
                )
            ),
            up(CONNECTED, 5),
        ],
        (Recovery.RECONNECTED, 5),
    ),
    "one attempt is counted": (
        [
            up(CONNECTED, 0),
            up(RECONNECTING, 0, error="ConnectionLost", attempt=1, in_progress=True),
            up(CONNECTED, 1),
        ],
        (Recovery.RECONNECTED, 1),
    ),
    "recovery through the open breaker is a breaker probe": (
        [
            *DROPPED,
            up(CIRCUIT_OPEN, 3, error="ConnectionRefused", next_at=T0 + 30),
            up(RECONNECTING, 33, error="ConnectionRefused", attempt=1, in_progress=True),
            up(CONNECTED, 34),
        ],
        (Recovery.BREAKER_PROBE, None),
    ),
    "the websocket breaker opening during an outage means a probe recovery": (
        [*DROPPED, breaker_opens("websocket", 1), up(CONNECTED, 40)],
        (Recovery.BREAKER_PROBE, None),
    ),
    "a manual retry that connects is credited": (
        [
            up(CONNECTED, 0),
            up(CIRCUIT_OPEN, 0, error="ConnectionLost", next_at=T0 + 30),
            manual_retry(2),
            # An older event still queued before the retry's own snapshot must not cancel it.
            up(CIRCUIT_OPEN, 2, error="ConnectionLost", next_at=T0 + 30),
            up(RECONNECTING, 2, error="ConnectionLost", attempt=1, in_progress=True),
            up(CONNECTED, 3),
        ],
        (Recovery.MANUAL_RETRY, None),
    ),
    "a manual retry is recognised from the snapshots alone": (
        [
            *COUNTING_DOWN,
            # The manager marks a manual retry: in progress while the automatic countdown is still set.
            up(RECONNECTING, 1, error="ConnectionLost", next_at=T0 + 9, in_progress=True),
            up(RECONNECTING, 1, error="ConnectionLost", attempt=1, in_progress=True),
            up(CONNECTED, 2),
        ],
        (Recovery.MANUAL_RETRY, None),
    ),
    "a failed manual retry is not credited with a later recovery": (
        [
            *COUNTING_DOWN,
            manual_retry(1),
            up(RECONNECTING, 1, error="X", attempt=1, in_progress=True),
            up(RECONNECTING, 2, error="X", attempt=1),  # it failed
            up(RECONNECTING, 5, error="X", attempt=2, in_progress=True),
            up(CONNECTED, 6),
        ],
        (Recovery.RECONNECTED, 2),
    ),
}


@pytest.mark.parametrize(("steps", "expected"), list(RECOVERIES.values()), ids=list(RECOVERIES))
def test_the_closing_event_names_how_the_link_recovered(
    steps: list[Step], expected: tuple[Recovery, int | None]
) -> None:
    recovery, attempts = expected
    t = tracker()
    for step in steps[:-1]:
        step(t)
    [closed] = steps[-1](t)
    assert isinstance(closed, IncidentClosed) and closed.recovery == recovery
    if attempts is not None:
        assert closed.attempts == attempts


def test_a_failed_start_is_an_incident_too() -> None:
    t = tracker()
    t.upstream(snap(LinkState.CONNECTING, attempt=1, in_progress=True), T0)
    [opened] = t.upstream(snap(LinkState.CONNECTING, error="ConnectionRefused", attempt=1), T0 + 1)
    assert isinstance(opened, IncidentOpened) and opened.cause == Cause.COULD_NOT_CONNECT


def test_announced_maintenance_is_planned() -> None:
    t = tracker()
    t.upstream(snap(LinkState.CONNECTED), T0)
    t.upstream(snap(LinkState.CONNECTED, error="SiteUpdating", planned=True), T0 + 1)
    [opened] = t.upstream(snap(LinkState.RECONNECTING, error="SiteUpdating", planned=True), T0 + 2)
    assert isinstance(opened, IncidentOpened)
    assert opened.planned and opened.cause == Cause.PLANNED_MAINTENANCE and opened.error_code == "SiteUpdating"


def test_maintenance_announced_only_while_connected_still_counts_as_planned() -> None:
    t = tracker()
    t.upstream(snap(LinkState.CONNECTED, error="SiteUpdating", planned=True), T0)
    [opened] = t.upstream(snap(LinkState.RECONNECTING, error="ConnectionLost"), T0 + 1)
    assert isinstance(opened, IncidentOpened) and opened.planned


def test_stopping_closes_the_open_incident_as_not_recovered() -> None:
    t = tracker()
    t.upstream(snap(LinkState.CONNECTED), T0)
    t.upstream(snap(LinkState.RECONNECTING, error="ConnectionLost"), T0)
    [closed] = t.upstream(snap(LinkState.STOPPED), T0 + 4)
    assert isinstance(closed, IncidentClosed) and closed.recovery == Recovery.SERVICE_STOPPED
    assert t.upstream(snap(LinkState.STOPPED), T0 + 5) == []


def test_long_upstream_text_is_clipped_to_the_column() -> None:
    t = tracker()
    t.upstream(snap(LinkState.CONNECTED), T0)
    snapshot = UpstreamSnapshot(
        state=LinkState.RECONNECTING,
        since=T0,
        url="x",
        simulated=True,
        last_error=ErrorInfo("E" * 300, "m" * 5000, T0),
    )
    [opened] = t.upstream(snapshot, T0)
    assert isinstance(opened, IncidentOpened)
    assert len(opened.message) == MESSAGE_CHARS and opened.message.endswith("…")
    assert opened.error_code is not None and len(opened.error_code) == 100


# ---------------------------------------------------------------------------- breaker incidents


def test_a_breaker_incident_spans_open_to_closed_including_half_open_flaps() -> None:
    t = tracker()
    [opened] = t.transition("websocket", "closed", "open", "failure_threshold", T0)
    assert isinstance(opened, IncidentOpened)
    assert (opened.component, opened.kind, opened.error_code) == ("breaker:websocket", "breaker", "failure_threshold")
    assert opened.cause == Cause.BREAKER_OPENED and opened.message == "", "the reason is a code, not a sentence"
    assert t.transition("websocket", "open", "half_open", "recovery_timeout", T0 + 30) == []
    assert t.transition("websocket", "half_open", "open", "probe_failed", T0 + 31) == []
    assert t.transition("websocket", "open", "half_open", "recovery_timeout", T0 + 90) == []
    [closed] = t.transition("websocket", "half_open", "closed", "probe_succeeded", T0 + 91)
    assert isinstance(closed, IncidentClosed)
    assert closed.key == opened.key and closed.recovery == Recovery.BREAKER_PROBE and closed.ended_at == T0 + 91


def test_an_admin_reset_closes_a_breaker_incident() -> None:
    t = tracker()
    t.transition("api:/api/v1/status", "closed", "open", "failure_threshold", T0)
    [closed] = t.transition("api:/api/v1/status", "open", "closed", "reset", T0 + 5)
    assert isinstance(closed, IncidentClosed) and closed.recovery == Recovery.RESET
    assert closed.component == "breaker:api:/api/v1/status"


def test_closing_a_breaker_that_never_opened_is_nothing() -> None:
    assert tracker().transition("websocket", "half_open", "closed", "probe_succeeded", T0) == []


def test_open_breaker_incidents_are_bounded() -> None:
    t = IncidentTracker(new_key=keys(), max_open=2)
    for name in ("a", "b", "c"):
        t.transition(name, "closed", "open", "failure_threshold", T0)
    assert len(t.open_incidents) == 2 and t.ignored_breaker_incidents == 1


def test_close_all_closes_every_open_incident() -> None:
    t = tracker()
    t.upstream(snap(LinkState.CONNECTED), T0)
    t.upstream(snap(LinkState.RECONNECTING, error="ConnectionLost"), T0)
    t.transition("websocket", "closed", "open", "failure_threshold", T0)
    closed = t.close_all(T0 + 9, Recovery.SERVICE_STOPPED)
    assert {c.component for c in closed} == {"upstream", "breaker:websocket"}
    assert all(c.recovery == Recovery.SERVICE_STOPPED and c.ended_at == T0 + 9 for c in closed)
    assert t.open_incidents == []


_states = st.sampled_from(list(LinkState))
_step = st.one_of(
    st.tuples(
        st.just("up"),
        _states,
        st.sampled_from([None, "ConnectionLost"]),
        st.integers(0, 3),
        st.booleans(),
        st.booleans(),
    ),
    st.tuples(
        st.just("br"),
        st.sampled_from(["websocket", "api:/x"]),
        st.sampled_from(["closed", "open", "half_open", "disabled"]),
        st.sampled_from(["failure_threshold", "probe_succeeded", "reset", "recovery_timeout"]),
        st.booleans(),
        st.booleans(),
    ),
    st.tuples(st.just("manual"), st.none(), st.none(), st.none(), st.booleans(), st.booleans()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_step, max_size=60))
def test_incident_events_are_well_formed_for_any_event_order(steps: list[tuple[Any, ...]]) -> None:
    t = tracker()
    opened: dict[str, IncidentOpened] = {}
    closed: set[str] = set()
    now = T0
    for kind, a, b, c, d, e in steps:
        now += 1
        if kind == "up":
            events = t.upstream(snap(a, error=b, attempt=c, in_progress=d, planned=e), now)
        elif kind == "br":
            events = t.transition(a, "closed", b, c, now)
        else:
            t.manual_retry(now)
            events = []
        for event in events:
            if isinstance(event, IncidentOpened):
                assert event.key not in opened
                open_same = [o for k, o in opened.items() if k not in closed and o.component == event.component]
                assert not open_same, "one open incident per component"
                opened[event.key] = event
            else:
                assert event.key in opened and event.key not in closed
                assert event.ended_at >= event.opened.started_at and event.recovery
                closed.add(event.key)
    assert {o.key for o in t.open_incidents} == set(opened) - closed


def test_the_recovery_says_whether_it_recovered() -> None:
    assert [r for r in Recovery if not r.recovered] == [Recovery.SERVICE_STOPPED, Recovery.SERVICE_RESTARTED]


def test_an_unknown_closing_reason_still_closes_the_breaker_incident() -> None:
    t = tracker()
    t.transition("x", "closed", "open", "failure_threshold", T0)
    [closed] = t.transition("x", "open", "closed", "something_new", T0 + 1)
    assert isinstance(closed, IncidentClosed) and closed.recovery == Recovery.BREAKER_CLOSED


def test_the_incident_feed_survives_a_bug_in_tracking_or_in_a_subscriber(caplog: pytest.LogCaptureFixture) -> None:
    feed = IncidentFeed(FakeClock(start_wall=T0), new_key=keys())
    seen: list[Any] = []

    def broken(*args: Any) -> Any:
        raise RuntimeError("bug")

    feed.subscribe(broken)
    feed.subscribe(seen.extend)
    feed.status(snap(LinkState.RECONNECTING, error="ConnectionLost"))
    # The broken subscriber loses the event; the next one still gets it.
    assert [type(e) for e in seen] == [IncidentOpened] and feed.faults == 1
    feed._tracker.transition = broken  # type: ignore[method-assign]
    feed._tracker.manual_retry = broken  # type: ignore[method-assign]
    feed.transition(Transition("websocket", BreakerState.CLOSED, BreakerState.OPEN, "x", 0.0, T0))
    feed.manual_retry()
    assert feed.faults == 3
    assert sum(r.getMessage().startswith("incidents: ") for r in caplog.records) == 1, "logged once a minute"
    feed.status(snap(LinkState.CONNECTED))
    assert [type(e) for e in seen] == [IncidentOpened, IncidentClosed]


def test_the_incident_feed_closes_everything_open_and_starts_afresh_after_a_reset() -> None:
    feed = IncidentFeed(FakeClock(start_wall=T0), new_key=keys())
    seen: list[Any] = []
    feed.subscribe(seen.extend)
    feed.status(snap(LinkState.CONNECTED))
    feed.status(snap(LinkState.RECONNECTING, error="ConnectionLost"))
    feed.transition(Transition("api:/x", BreakerState.CLOSED, BreakerState.OPEN, "failure_threshold", 0.0, T0))
    assert {o.component for o in feed.open_incidents} == {"upstream", "breaker:api:/x"}
    feed.close_all()
    closed = [e for e in seen if isinstance(e, IncidentClosed)]
    assert {(c.component, c.recovery) for c in closed} == {
        ("upstream", Recovery.SERVICE_STOPPED),
        ("breaker:api:/x", Recovery.SERVICE_STOPPED),
    }
    assert feed.open_incidents == []
    feed.status(snap(LinkState.RECONNECTING, error="ConnectionLost"))
    assert seen[-1].cause == Cause.CONNECTION_LOST  # it was connected before: a lost connection
    feed.reset()
    feed.status(snap(LinkState.RECONNECTING, error="ConnectionRefused"))
    assert seen[-1].cause == Cause.COULD_NOT_CONNECT  # a new run has never been connected
