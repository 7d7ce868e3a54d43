"""LinkProtocol, the upstream link's decisions, driven with plain calls and numbers for time.

No asyncio, no sockets, no clock: each test feeds events (connected, frames, deadlines,
closes) and checks the actions that come back, as python-websockets tests its protocol.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr

from backend_core.backoff import FullJitter
from backend_core.deriv import actions as act
from backend_core.deriv import messages, protocol
from backend_core.deriv.backfill import PAGE_TRIES, Backfill, Page, Release, TickSequencer, backfill_gap
from backend_core.deriv.link import (
    LinkConfig,
    LinkProtocol,
    RetryPolicy,
    retry_policy,
)
from backend_core.errors import DerivAPIError, RequestTimeout, TooManyPendingRequests, UpstreamUnavailable
from backend_core.events import Tick

SYMBOLS = ("R_50", "1HZ100V")
PING_S = 30.0
PONG_S = 10.0
REQUEST_S = 15.0


def sub_id(n: int) -> str:
    return f"{n:08x}-0744-c46b-f59b-cb7dd936bafa"


class Ceiling(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return b  # the longest wait full jitter may choose


def make(symbols: Sequence[str] = SYMBOLS, *, rng: random.Random | None = None, **overrides: Any) -> LinkProtocol:
    options: dict[str, Any] = {"ping_interval_s": PING_S, "pong_deadline_s": PONG_S, "request_timeout_s": REQUEST_S}
    config = LinkConfig(symbols=tuple(symbols), **{**options, **overrides})
    return LinkProtocol(config, FullJitter(1.0, 30.0, rng or random.Random(1)))


def parse(frame: dict[str, Any]) -> messages.Message:
    return messages.parse(json.dumps(frame))


def sends(actions: Sequence[act.Action], method: str | None = None) -> list[act.Send]:
    return [a for a in actions if isinstance(a, act.Send) and (method is None or a.method == method)]


def one_send(actions: Sequence[act.Action], method: str) -> act.Send:
    [send] = sends(actions, method)
    return send


def ticks_of(actions: Sequence[act.Action]) -> list[Tick]:
    """The ticks the actions publish, in order (live ones alone, a backfill's together)."""
    out: list[Tick] = []
    for a in actions:
        if isinstance(a, act.PublishTick):
            out.append(a.tick)
        elif isinstance(a, act.PublishTicks):
            out.extend(a.ticks)
    return out


def closed_with(actions: Sequence[act.Action]) -> act.CloseLink | None:
    return next((a for a in actions if isinstance(a, act.CloseLink)), None)


def armed(actions: Sequence[act.Action], timer: act.Timer) -> float | None:
    arms = [a for a in actions if isinstance(a, act.ArmDeadline) and a.timer is timer]
    assert arms, f"{timer} was not armed"
    return arms[-1].at


def errors(actions: Sequence[act.Action]) -> list[str]:
    return [a.error.code for a in actions if isinstance(a, act.PublishStatus) and a.error is not None]


def tick(symbol: str, epoch: int, req_id: int | None, n: int = 1) -> messages.Message:
    frame = {
        "msg_type": "tick",
        "tick": {"symbol": symbol, "epoch": epoch, "quote": 100.0 + epoch, "pip_size": 2, "id": sub_id(n)},
        "subscription": {"id": sub_id(n)},
    }
    if req_id is not None:
        frame["req_id"] = req_id
    return parse(frame)


def history(symbol: str, times: Sequence[int], req_id: int, n: int = 1, pip_size: int | None = 2) -> messages.Message:
    """A ``history`` reply; ``pip_size=None``: without it, as an upstream breaking 3.4 sends it."""
    frame = {
        "msg_type": "history",
        "echo_req": {"ticks_history": symbol},
        "history": {"times": list(times), "prices": [float(t) for t in times]},
        "pip_size": pip_size,
        "subscription": {"id": sub_id(n)},
        "req_id": req_id,
    }
    if pip_size is None:
        del frame["pip_size"]
    return parse(frame)


def error(msg_type: str, code: str, req_id: int | None, message: str = "nope") -> messages.Message:
    frame: dict[str, Any] = {"msg_type": msg_type, "error": {"code": code, "message": message}}
    if req_id is not None:
        frame["req_id"] = req_id
    return parse(frame)


def reply(msg_type: str, req_id: int, **body: Any) -> messages.Message:
    return parse({"msg_type": msg_type, "req_id": req_id, **body})


def website_status(req_id: int | None, site_status: str = "up", message: str | None = None) -> messages.Message:
    payload: dict[str, Any] = {"site_status": site_status}
    if message is not None:
        payload["message"] = message
    frame: dict[str, Any] = {"msg_type": "website_status", "website_status": payload}
    if req_id is not None:
        frame["req_id"] = req_id
    return parse(frame)


def pong(req_id: int) -> messages.Message:
    return reply("ping", req_id, ping="pong")


def connect(link: LinkProtocol, now: float = 0.0) -> dict[str, act.Send]:
    """Connect and answer the probe; the subscribe request of each symbol."""
    probe = one_send(link.connected(now), "website_status")
    actions = link.frame(website_status(probe.req_id), now)
    assert any(isinstance(a, act.LinkUp) for a in actions)
    return {str(s.payload.get("ticks") or s.payload["ticks_history"]): s for s in sends(actions)}


def stream(link: LinkProtocol, subscribes: dict[str, act.Send], epoch: int, now: float) -> list[Tick]:
    """Every symbol ticks once at ``epoch``."""
    out: list[Tick] = []
    for n, (symbol, send) in enumerate(subscribes.items()):
        out += ticks_of(link.frame(tick(symbol, epoch, send.req_id, n + 1), now))
    return out


def ping_due(link: LinkProtocol, now: float) -> act.Send:
    return one_send(link.deadline_reached(act.Timer.HEARTBEAT, now), "ping")


# --------------------------------------------------------------------------- setup


def test_a_website_status_round_trip_proves_the_link_before_anything_is_subscribed() -> None:
    link = make()
    actions = link.connected(100.0)
    assert [s.method for s in sends(actions)] == ["website_status"]
    assert armed(actions, act.Timer.HEARTBEAT) == 100.0 + REQUEST_S  # the probe's deadline comes first
    probe = one_send(actions, "website_status")
    assert probe.payload["subscribe"] == 1
    actions = link.frame(website_status(probe.req_id), 101.0)
    assert isinstance(actions[0], act.LinkUp)
    assert [(s.method, s.payload["ticks"]) for s in sends(actions)] == [("ticks", "R_50"), ("ticks", "1HZ100V")]


def test_an_error_reply_to_the_probe_is_still_a_reply() -> None:
    link = make()
    probe = one_send(link.connected(0.0), "website_status")
    actions = link.frame(error("website_status", "RateLimit", probe.req_id), 1.0)
    assert errors(actions) == ["RateLimit"]
    assert any(isinstance(a, act.LinkUp) for a in actions) and len(sends(actions, "ticks")) == 2


def test_a_probe_without_an_answer_ends_the_session_with_its_cause() -> None:
    link = make()
    link.connected(0.0)
    close = closed_with(link.deadline_reached(act.Timer.HEARTBEAT, REQUEST_S))
    assert close is not None and close.cause.code == "RequestTimeout" and "website_status" in close.cause.message


def test_authorize_comes_before_the_subscribes_and_its_failure_does_not_stop_them() -> None:
    link = make(token=SecretStr("good-token-123"))
    probe = one_send(link.connected(0.0), "website_status")
    auth = one_send(link.frame(website_status(probe.req_id), 1.0), "authorize")
    assert auth.payload["authorize"] == "good-token-123"
    assert "good-token-123" not in repr(link.config)
    actions = link.frame(error("authorize", "InvalidToken", auth.req_id), 2.0)
    assert errors(actions) == ["InvalidToken"] and len(sends(actions, "ticks")) == 2


# --------------------------------------------------------------------------- ticks


def test_ticks_leave_once_in_order_and_the_first_tick_answers_the_subscribe() -> None:
    link = make()
    subs = connect(link)
    req = subs["R_50"].req_id
    out = [ticks_of(link.frame(tick("R_50", epoch, req), 2.0)) for epoch in (10, 11, 11, 9, 12)]
    assert [[t.epoch for t in ts] for ts in out] == [[10], [11], [], [], [12]]
    assert link.duplicates == 2
    [r50] = [s for s in link.symbol_statuses(0.0) if s.symbol == "R_50"]
    assert r50.subscribed and r50.last_epoch == 12
    assert link.stats["ticks_received"] == 5 and link.stats["ticks_published"] == 3


def test_after_a_reconnect_each_symbol_is_backfilled_from_its_last_epoch_without_duplicates() -> None:
    link = make()
    subs = connect(link)
    stream(link, subs, 100, 1.0)
    assert closed_with(link.closed("closed with code 1011", 2.0)) is not None
    again = connect(link, 10.0)
    history_request = again["R_50"]
    assert history_request.method == "ticks_history"
    assert history_request.payload["start"] == 100 and history_request.payload["subscribe"] == 1
    actions = link.frame(history("R_50", [100, 101, 102], history_request.req_id), 11.0)
    assert [(t.epoch, t.backfill, t.gap_from) for t in ticks_of(actions)] == [(101, True, None), (102, True, None)]


def test_with_paging_off_an_outage_longer_than_one_backfill_reply_announces_its_gap() -> None:
    link = make(backfill_count=3, backfill_max_pages=0)
    subs = connect(link)
    stream(link, subs, 100, 1.0)
    link.closed("closed", 2.0)
    again = connect(link, 10.0)
    actions = link.frame(history("R_50", [150, 151, 152], again["R_50"].req_id), 11.0)
    first = ticks_of(actions)[0]
    assert (first.epoch, first.gap_from) == (150, 100)
    [r50] = [s for s in link.symbol_statuses(0.0) if s.symbol == "R_50"]
    assert (r50.gap_from, r50.gap_to) == (100, 150)
    assert link.stats["backfill_gaps"] == 1


# --------------------------------------------------------------------------- paging backwards


def outage(link: LinkProtocol, last: int) -> dict[str, act.Send]:
    """Both symbols publish ``last``, the link drops and reconnects: the subscribes."""
    stream(link, connect(link), last, 1.0)
    assert closed_with(link.closed("closed", 2.0)) is not None
    return connect(link, 10.0)


def answer(send: act.Send, market: Sequence[int], pip_size: int | None = 2) -> messages.Message:
    """Deriv's answer to a ``ticks_history``: the latest ``count`` epochs in [start, end] (3.4)."""
    p = send.payload
    end = market[-1] if p["end"] == "latest" else int(p["end"])
    inside = [e for e in market if p["start"] <= e <= end][-p["count"] :]
    return history(str(p["ticks_history"]), inside, send.req_id, pip_size=pip_size)


def page_of(actions: Sequence[act.Action]) -> act.Send | None:
    pages = [s for s in sends(actions, "ticks_history") if "subscribe" not in s.payload]
    assert len(pages) <= 1
    return pages[0] if pages else None


def page_through(link: LinkProtocol, actions: Sequence[act.Action], market: Sequence[int], now: float) -> list[Tick]:
    """What ``actions`` and the answers to every page that follows publish."""
    published = ticks_of(actions)
    while (page := page_of(actions)) is not None:
        actions = link.frame(answer(page, market), now)
        published += ticks_of(actions)
    return published


def test_a_12000_tick_outage_is_filled_completely_in_three_replies_with_live_ticks_held_meanwhile() -> None:
    link = make()
    again = outage(link, last=1000)
    market = range(1000, 13_001)  # 12,000 ticks after the last one published
    subscribe = again["R_50"]
    assert (subscribe.payload["start"], subscribe.payload["count"], subscribe.payload["subscribe"]) == (1000, 5000, 1)
    actions = link.frame(answer(subscribe, market), 11.0)
    assert ticks_of(actions) == []  # the newest 5000 are held until the older ones are in
    page = page_of(actions)
    assert page is not None and (page.payload["start"], page.payload["end"], page.payload["count"]) == (
        1000,
        "8000",
        5000,
    )
    assert ticks_of(link.frame(tick("R_50", 13_001, None), 11.5)) == []  # live, held too
    page = page_of(link.frame(answer(page, market), 12.0))
    assert page is not None and page.payload["end"] == "3000"
    actions = link.frame(answer(page, market), 13.0)
    assert page_of(actions) is None
    [release] = [a for a in actions if isinstance(a, act.PublishTicks)]  # one action for the whole outage
    published = ticks_of(actions)
    assert list(release.ticks) == published
    assert [t.epoch for t in published] == list(range(1001, 13_002))
    assert all(t.gap_from is None for t in published) and published[-1].backfill is False
    assert (link.stats["backfill_pages"], link.stats["ticks_paged"], link.stats["backfill_gaps"]) == (2, 7000, 0)
    assert link.stats["ticks_backfilled"] == 12_000
    [r50] = [s for s in link.symbol_statuses(0.0) if s.symbol == "R_50"]
    assert r50.gap_from is None and r50.last_epoch == 13_001
    # From now on live ticks go straight through.
    assert [t.epoch for t in ticks_of(link.frame(tick("R_50", 13_002, None), 14.0))] == [13_002]


MARKET_PAST_THE_BOUND = range(100, 201)


def paged_to_the_bound(reply: Callable[[act.Send], messages.Message]) -> tuple[LinkProtocol, list[act.Action]]:
    """An outage of 100 ticks (``MARKET_PAST_THE_BOUND``) with 3 ticks a reply and 2 pages at
    most: the first reply is Deriv's, each page is answered with ``reply(page)``. The link and
    the actions of the last answer, after which no page is asked."""
    link = make(backfill_count=3, backfill_max_pages=2)
    again = outage(link, last=100)
    actions = link.frame(answer(again["R_50"], MARKET_PAST_THE_BOUND), 11.0)
    for _ in range(2):
        page = page_of(actions)
        assert page is not None
        actions = link.frame(reply(page), 12.0)
    assert page_of(actions) is None
    return link, list(actions)


def test_an_outage_past_the_page_bound_publishes_what_it_got_and_announces_only_the_rest() -> None:
    link, actions = paged_to_the_bound(lambda page: answer(page, MARKET_PAST_THE_BOUND))
    published = ticks_of(actions)
    assert [(t.epoch, t.gap_from) for t in published][:2] == [(192, 100), (193, None)]
    assert [t.epoch for t in published] == list(range(192, 201))
    assert any(isinstance(a, act.PublishStatus) for a in actions)
    [r50] = [s for s in link.symbol_statuses(0.0) if s.symbol == "R_50"]
    assert (r50.gap_from, r50.gap_to) == (100, 192)
    assert (link.stats["backfill_pages"], link.stats["ticks_paged"], link.stats["backfill_gaps"]) == (2, 6, 1)


def test_a_full_page_from_outside_the_range_asked_is_no_proof_the_range_is_complete() -> None:
    # An upstream that ignores ``end`` answers every page with the newest ticks again.
    link, actions = paged_to_the_bound(lambda page: history("R_50", [198, 199, 200], page.req_id))
    published = ticks_of(actions)
    assert [(t.epoch, t.gap_from) for t in published] == [(198, 100), (199, None), (200, None)]
    assert link.stats["backfill_gaps"] == 1


@pytest.mark.parametrize("failure", ["InvalidSymbol", "MarketIsClosed", "InputValidationFailed", "no_pip_size"])
def test_a_page_that_fails_for_good_is_not_retried_and_releases_what_was_received(failure: str) -> None:
    link = make(backfill_count=3)
    again = outage(link, last=100)
    market = range(100, 121)
    page = page_of(link.frame(answer(again["R_50"], market), 11.0))
    assert page is not None
    other = link.frame(history("1HZ100V", [100, 101], again["1HZ100V"].req_id, 2), 11.0)
    assert [t.epoch for t in ticks_of(other)] == [101]  # not held: only R_50 is paging
    if failure == "no_pip_size":
        actions = link.frame(answer(page, market, pip_size=None), 12.0)
    else:
        actions = link.frame(error("ticks_history", failure, page.req_id), 12.0)
    assert closed_with(actions) is None and page_of(actions) is None
    assert [(t.epoch, t.gap_from) for t in ticks_of(actions)] == [(118, 100), (119, None), (120, None)]
    statuses = {s.symbol: s for s in link.symbol_statuses(0.0)}
    assert statuses["R_50"].subscribed and statuses["R_50"].gap_from == 100
    assert statuses["1HZ100V"].subscribed and statuses["1HZ100V"].gap_from is None
    # A late answer to the failed page cannot publish anything out of order.
    assert ticks_of(link.frame(answer(page, market), 30.0)) == []
    assert page_of(link.deadline_reached(act.Timer.HEARTBEAT, 40.0)) is None  # never asked again
    assert (link.stats["backfill_page_retries"], link.stats["backfill_gaps"]) == (0, 1)


@pytest.mark.parametrize("missed", [5, 20], ids=["within one reply", "past one reply"])
def test_a_subscribe_reply_without_pip_size_is_announced_lost_on_the_first_live_tick(missed: int) -> None:
    # An upstream breaking 3.4: the reply's history cannot be published, but the stream it
    # subscribed is live. What it held is lost, and the first live tick says so.
    link = make(backfill_count=10, backfill_deadline_s=5.0)
    again = outage(link, last=100)
    subscribe = again["R_50"]
    actions = link.frame(answer(subscribe, range(100, 101 + missed), pip_size=None), 11.0)
    assert ticks_of(actions) == [] and page_of(actions) is None and closed_with(actions) is None
    assert {s.symbol: s.subscribed for s in link.symbol_statuses(0.0)} == {"R_50": True, "1HZ100V": False}
    assert [t.epoch for t in ticks_of(link.frame(answer(again["1HZ100V"], [100, 101]), 11.0))] == [101]
    actions = link.deadline_reached(act.Timer.HEARTBEAT, 16.0)  # when a paging would have ended
    assert ticks_of(actions) == [] and sends(actions) == []
    first = 101 + missed
    live = [ticks_of(link.frame(tick("R_50", e, subscribe.req_id), 17.0)) for e in (100, first, first + 1)]
    assert [[(t.epoch, t.backfill, t.gap_from) for t in ts] for ts in live] == [
        [],  # already published before the outage
        [(first, False, 100)],
        [(first + 1, False, None)],
    ]
    statuses = {s.symbol: s for s in link.symbol_statuses(0.0)}
    assert statuses["R_50"].subscribed and (statuses["R_50"].gap_from, statuses["R_50"].gap_to) == (100, first)
    assert statuses["1HZ100V"].gap_from is None
    assert link.stats["backfill_gaps"] == 1 and link.stats["ticks_backfilled"] == 1  # 1HZ100V's 101


@given(missed=st.integers(0, 40), count=st.integers(1, 6), live=st.integers(0, 3))
def test_after_a_reply_without_pip_size_live_ticks_flow_once_and_only_a_real_loss_is_announced(
    missed: int, count: int, live: int
) -> None:
    link = make(backfill_count=count)
    again = outage(link, last=100)
    published = ticks_of(link.frame(answer(again["R_50"], range(100, 101 + missed), pip_size=None), 11.0))
    for epoch in (100, *range(101 + missed, 101 + missed + live)):  # one published before, then live
        published += ticks_of(link.frame(tick("R_50", epoch, again["R_50"].req_id), 12.0))
    assert [t.epoch for t in published] == list(range(101 + missed, 101 + missed + live))
    gaps = [(t.epoch, t.gap_from) for t in published if t.gap_from is not None]
    assert gaps == ([(101 + missed, 100)] if missed and live else [])  # the reply held ticks after 100
    assert link.stats["backfill_gaps"] == len(gaps)


def test_a_reconnect_before_the_first_live_tick_after_a_reply_without_pip_size_fills_the_outage() -> None:
    link = make(backfill_count=10)
    again = outage(link, last=100)
    assert ticks_of(link.frame(answer(again["R_50"], range(100, 106), pip_size=None), 11.0)) == []
    assert ticks_of(link.closed("closed", 12.0)) == []
    third = connect(link, 20.0)
    assert third["R_50"].payload["start"] == 100  # nothing was published: it starts over
    market = range(100, 109)
    published = ticks_of(link.frame(answer(third["R_50"], market), 21.0))
    published += ticks_of(link.frame(tick("R_50", 109, third["R_50"].req_id), 22.0))
    assert [(t.epoch, t.gap_from) for t in published] == [(e, None) for e in range(101, 110)]
    assert link.stats["backfill_gaps"] == 0


def test_replies_without_pip_size_are_logged_at_a_bounded_rate(caplog: pytest.LogCaptureFixture) -> None:
    link = make(backfill_count=10)
    again = outage(link, last=100)
    for n in range(3):  # an upstream that keeps breaking 3.4, reconnect after reconnect
        link.frame(answer(again["R_50"], range(100, 106), pip_size=None), 11.0 + n)
        link.closed("closed", 11.5 + n)
        again = connect(link, 11.6 + n)
    lines = [r.getMessage() for r in caplog.records if "pip_size" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("R_50:")


def test_paging_that_outlasts_its_deadline_is_released_when_the_deadline_passes() -> None:
    link = make(backfill_count=3, backfill_deadline_s=5.0)
    again = outage(link, last=100)
    actions = link.frame(answer(again["R_50"], range(100, 121)), 11.0)
    assert page_of(actions) is not None and armed(actions, act.Timer.HEARTBEAT) == 16.0
    link.frame(tick("R_50", 121, None), 12.0)
    actions = link.deadline_reached(act.Timer.HEARTBEAT, 16.0)
    assert [(t.epoch, t.gap_from) for t in ticks_of(actions)] == [(118, 100), (119, None), (120, None), (121, None)]


def test_a_reconnect_during_paging_starts_over_from_the_last_published_epoch() -> None:
    link = make(backfill_count=3)
    again = outage(link, last=100)
    assert page_of(link.frame(answer(again["R_50"], range(100, 111)), 11.0)) is not None
    assert ticks_of(link.frame(tick("R_50", 111, None), 11.5)) == []
    assert ticks_of(link.closed("closed", 12.0)) == []  # what was held is dropped, unpublished
    third = connect(link, 20.0)
    assert third["R_50"].payload["start"] == 100
    market = range(100, 116)
    published = page_through(link, link.frame(answer(third["R_50"], market), 21.0), market, 22.0)
    assert [(t.epoch, t.gap_from) for t in published] == [(e, None) for e in range(101, 116)]
    assert link.stats["backfill_pages"] == 1 + 5


# --------------------------------------------------------------------------- a failed page's retries


def paging_with_one_page_out(link: LinkProtocol, market: Sequence[int]) -> act.Send:
    """An outage of R_50 past one reply (``backfill_count=3``): its first page, in flight at 11 s."""
    again = outage(link, last=100)
    page = page_of(link.frame(answer(again["R_50"], market), 11.0))
    assert page is not None
    # The other symbol is not paging: its reply is published at once, whatever R_50 waits for.
    assert [t.epoch for t in ticks_of(link.frame(answer(again["1HZ100V"], [100, 101]), 11.0))] == [101]
    return page


def retry_of(link: LinkProtocol, page: act.Send, actions: Sequence[act.Action]) -> tuple[act.Send, float]:
    """After ``page`` failed (``actions``): nothing released yet; the same page asked again when
    the heartbeat armed for its retry fires, not before."""
    assert ticks_of(actions) == [] and page_of(actions) is None and closed_with(actions) is None
    retry_at = armed(actions, act.Timer.HEARTBEAT)
    assert retry_at is not None
    assert page_of(link.deadline_reached(act.Timer.HEARTBEAT, retry_at - 0.001)) is None
    retry = page_of(link.deadline_reached(act.Timer.HEARTBEAT, retry_at))
    assert retry is not None and retry.req_id != page.req_id
    assert (retry.payload["start"], retry.payload["end"]) == (page.payload["start"], page.payload["end"])
    return retry, retry_at


@pytest.mark.parametrize("failure", ["RateLimit", "Timeout", "WrongResponse", "no_reply"])
def test_a_page_that_fails_for_a_transient_reason_is_asked_again_and_the_outage_is_filled(failure: str) -> None:
    link = make(backfill_count=3)
    market = range(100, 111)
    page = paging_with_one_page_out(link, market)
    if failure == "no_reply":
        now = 11.0 + REQUEST_S
        actions = link.deadline_reached(act.Timer.HEARTBEAT, now)
    else:
        now = 12.0
        actions = link.frame(error("ticks_history", failure, page.req_id), now)
    assert ticks_of(link.frame(tick("R_50", 111, None), now)) == []  # live ticks are held meanwhile
    retry, retry_at = retry_of(link, page, actions)
    assert now < retry_at <= now + 1.0  # the house backoff's first step
    assert ticks_of(link.frame(answer(page, market), retry_at)) == []  # a late answer to the failed try
    published = page_through(link, link.frame(answer(retry, market), retry_at), market, retry_at)
    assert [(t.epoch, t.gap_from) for t in published] == [(e, None) for e in range(101, 112)]
    assert (link.stats["backfill_page_retries"], link.stats["backfill_gaps"]) == (1, 0)
    assert link.stats["backfill_pages"] == 3  # distinct pages; the retry is counted apart
    assert all(s.gap_from is None for s in link.symbol_statuses(0.0))


def test_a_page_that_keeps_failing_is_given_up_after_its_tries_with_an_honest_gap() -> None:
    link = make(backfill_count=3)
    market = range(100, 121)
    page = paging_with_one_page_out(link, market)
    actions = link.frame(error("ticks_history", "RateLimit", page.req_id), 12.0)
    for _ in range(PAGE_TRIES - 1):
        page, now = retry_of(link, page, actions)
        actions = link.frame(error("ticks_history", "RateLimit", page.req_id), now)
    assert page_of(actions) is None
    assert [(t.epoch, t.gap_from) for t in ticks_of(actions)] == [(118, 100), (119, None), (120, None)]
    assert {s.symbol: s.gap_from for s in link.symbol_statuses(0.0)} == {"R_50": 100, "1HZ100V": None}
    assert (link.stats["backfill_page_retries"], link.stats["backfill_gaps"]) == (PAGE_TRIES - 1, 1)
    assert page_of(link.deadline_reached(act.Timer.HEARTBEAT, 100.0)) is None


def test_the_paging_deadline_reached_while_a_retry_waits_releases_with_an_honest_gap() -> None:
    link = make(backfill_count=3, backfill_deadline_s=5.0)  # paging ends at 16 s
    market = range(100, 121)
    page = paging_with_one_page_out(link, market)
    retry_at = armed(link.frame(error("ticks_history", "RateLimit", page.req_id), 12.0), act.Timer.HEARTBEAT)
    assert retry_at is not None and retry_at < 16.0
    link.frame(tick("R_50", 121, None), 12.5)
    actions = link.deadline_reached(act.Timer.HEARTBEAT, 16.0)  # the driver woke late: both are due
    assert page_of(actions) is None
    assert [(t.epoch, t.gap_from) for t in ticks_of(actions)] == [(118, 100), (119, None), (120, None), (121, None)]
    assert (link.stats["backfill_page_retries"], link.stats["backfill_gaps"]) == (0, 1)


def test_a_retry_that_would_come_after_the_paging_deadline_is_not_waited_for() -> None:
    link = make(backfill_count=3, backfill_deadline_s=1.5, rng=Ceiling())  # paging ends at 12.5 s
    page = paging_with_one_page_out(link, range(100, 121))
    actions = link.frame(error("ticks_history", "RateLimit", page.req_id), 12.0)  # a retry at 13 s
    assert page_of(actions) is None
    assert [(t.epoch, t.gap_from) for t in ticks_of(actions)] == [(118, 100), (119, None), (120, None)]


def test_a_retry_timer_from_before_a_reconnect_is_void() -> None:
    link = make(backfill_count=3, rng=Ceiling())
    market = range(100, 116)
    page = paging_with_one_page_out(link, market)
    retry_at = armed(link.frame(error("ticks_history", "RateLimit", page.req_id), 12.0), act.Timer.HEARTBEAT)
    assert retry_at == 13.0
    assert ticks_of(link.closed("closed", 12.5)) == []  # what was held is dropped, unpublished
    third = connect(link, 12.6)
    assert third["R_50"].payload["start"] == 100  # starts over
    assert page_of(link.deadline_reached(act.Timer.HEARTBEAT, retry_at)) is None
    published = page_through(link, link.frame(answer(third["R_50"], market), 14.0), market, 14.0)
    assert [(t.epoch, t.gap_from) for t in published] == [(e, None) for e in range(101, 116)]
    assert link.stats["backfill_page_retries"] == 0


@given(
    missed=st.integers(0, 40),
    count=st.integers(1, 6),
    max_pages=st.integers(0, 5),
    live=st.integers(0, 3),
    fail_at=st.integers(0, 6),
    fail_code=st.sampled_from(["WrongResponse", "InputValidationFailed"]),
    fail_times=st.integers(1, PAGE_TRIES),
)
def test_whatever_the_outage_and_bounds_each_epoch_is_published_once_in_order_or_announced_lost(
    missed: int, count: int, max_pages: int, live: int, fail_at: int, fail_code: str, fail_times: int
) -> None:
    link = make(backfill_count=count, backfill_max_pages=max_pages)
    again = outage(link, last=100)
    market = range(100, 101 + missed)
    actions = link.frame(answer(again["R_50"], market), 11.0)
    published = ticks_of(actions)
    for n in range(live):
        published += ticks_of(link.frame(tick("R_50", 101 + missed + n, None), 11.0))
    asked, now = 0, 12.0
    while (page := page_of(actions)) is not None:
        asked += 1  # requests: tries fail_at .. fail_at + fail_times - 1 fail
        failing = fail_at <= asked < fail_at + fail_times
        reply = error("ticks_history", fail_code, page.req_id) if failing else answer(page, market)
        actions = link.frame(reply, now)
        published += ticks_of(actions)
        if failing and not ticks_of(actions):  # a retry waits: its timer fires
            retry_at = armed(actions, act.Timer.HEARTBEAT)
            assert retry_at is not None
            now = retry_at
            actions = link.deadline_reached(act.Timer.HEARTBEAT, now)
            published += ticks_of(actions)
    epochs = [t.epoch for t in published if t.symbol == "R_50"]
    assert epochs == sorted(set(epochs)) and link.stats["backfill_pages"] <= max_pages
    assert link.stats["backfill_page_retries"] <= (PAGE_TRIES - 1) * link.stats["backfill_pages"]
    expected = set(range(101, 101 + missed + live))
    gaps = [t for t in published if t.gap_from is not None]
    if fail_code == "WrongResponse" and fail_times < PAGE_TRIES and missed <= count * (max_pages + 1):
        assert not gaps  # transient failures within the tries cost nothing
    if gaps:
        [gap] = gaps
        lost = set(range(gap.gap_from + 1 if gap.gap_from is not None else 0, gap.epoch))
        assert gap.gap_from == 100 and lost and set(epochs) == expected - lost
    else:
        assert set(epochs) == expected


# --------------------------------------------------------------------------- one symbol's failure


def test_invalid_symbol_is_final_and_the_others_stream_on() -> None:
    link = make(("R_50", "NOPE_1"))
    subs = connect(link)
    link.frame(tick("R_50", 1, subs["R_50"].req_id), 1.0)
    actions = link.frame(error("tick", "InvalidSymbol", subs["NOPE_1"].req_id, "Symbol NOPE_1 invalid."), 1.0)
    assert errors(actions) == ["InvalidSymbol"] and closed_with(actions) is None
    statuses = {s.symbol: s for s in link.symbol_statuses(0.0)}
    assert statuses["NOPE_1"].failed_code == "InvalidSymbol" and "NOPE_1" in (statuses["NOPE_1"].failed_reason or "")
    assert statuses["R_50"].subscribed
    # Never asked again: not on a timer, not after a reconnect.
    later = link.deadline_reached(act.Timer.HEARTBEAT, 10_000.0)
    assert not sends(later, "ticks")
    link.closed("closed", 10_001.0)
    assert set(connect(link, 10_002.0)) == {"R_50"}


@pytest.mark.parametrize(
    ("code", "earliest", "latest"),
    [("MarketIsClosed", 300.0, 300.0), ("RateLimit", 0.0, 1.0), ("WrongResponse", 0.0, 1.0)],
)
def test_a_failed_subscribe_is_asked_again_after_its_policy_delay(code: str, earliest: float, latest: float) -> None:
    link = make(ping_interval_s=1000.0)
    subs = connect(link)
    link.frame(tick("1HZ100V", 1, subs["1HZ100V"].req_id), 1.0)
    actions = link.frame(error("tick", code, subs["R_50"].req_id), 10.0)
    assert errors(actions) == [code] and closed_with(actions) is None
    retry_at = armed(actions, act.Timer.HEARTBEAT)
    assert retry_at is not None and 10.0 + earliest <= retry_at <= 10.0 + latest
    assert link.waiting_symbols() == ["R_50"]
    assert not sends(link.deadline_reached(act.Timer.HEARTBEAT, retry_at - 0.001))
    again = link.deadline_reached(act.Timer.HEARTBEAT, retry_at)
    assert [s.payload.get("ticks") for s in sends(again, "ticks")] == ["R_50"]  # only the failed symbol


def test_one_symbols_request_timeout_affects_only_that_symbol() -> None:
    link = make()
    subs = connect(link)
    link.frame(tick("1HZ100V", 1, subs["1HZ100V"].req_id), 1.0)
    actions = link.deadline_reached(act.Timer.HEARTBEAT, REQUEST_S)
    assert closed_with(actions) is None
    assert errors(actions) == ["RequestTimeout"]
    statuses = {s.symbol: s for s in link.symbol_statuses(0.0)}
    assert statuses["R_50"].failed_code == "RequestTimeout" and not statuses["R_50"].subscribed
    assert statuses["1HZ100V"].subscribed and statuses["1HZ100V"].failed_code is None
    # Retried with backoff; the healthy stream goes on meanwhile.
    retry_at = armed(actions, act.Timer.HEARTBEAT)
    assert retry_at is not None and retry_at <= REQUEST_S + 1.0
    assert [t.epoch for t in ticks_of(link.frame(tick("1HZ100V", 2, subs["1HZ100V"].req_id), 16.0))] == [2]
    assert sends(link.deadline_reached(act.Timer.HEARTBEAT, retry_at), "ticks")


def test_backoff_delays_double_with_each_failure_in_a_row_up_to_the_cap() -> None:
    link = make(rng=Ceiling(), ping_interval_s=1000.0)
    subs = connect(link)
    link.frame(tick("1HZ100V", 1, subs["1HZ100V"].req_id), 0.0)
    req, now, delays = subs["R_50"].req_id, 0.0, []
    for _ in range(7):
        retry_at = armed(link.frame(error("tick", "RateLimit", req), now), act.Timer.HEARTBEAT)
        assert retry_at is not None
        delays.append(retry_at - now)
        now = retry_at
        req = one_send(link.deadline_reached(act.Timer.HEARTBEAT, now), "ticks").req_id
    assert delays == [1, 2, 4, 8, 16, 30, 30]
    link.frame(tick("R_50", 1, req), now)  # subscribed: the next failure starts again at 1 s
    assert link.waiting_symbols() == []


def test_a_late_answer_to_a_subscribe_that_timed_out_still_counts() -> None:
    link = make()
    subs = connect(link)
    link.deadline_reached(act.Timer.HEARTBEAT, REQUEST_S)
    actions = link.frame(tick("R_50", 5, subs["R_50"].req_id), REQUEST_S + 0.5)
    assert [t.epoch for t in ticks_of(actions)] == [5]
    assert {s.symbol: s.subscribed for s in link.symbol_statuses(0.0)}["R_50"]
    assert "R_50" not in link.waiting_symbols()


def test_a_retry_request_asks_for_waiting_symbols_now() -> None:
    link = make()
    subs = connect(link)
    link.frame(tick("1HZ100V", 1, subs["1HZ100V"].req_id), 1.0)
    link.frame(error("tick", "MarketIsClosed", subs["R_50"].req_id), 10.0)
    assert armed(link.retry_requested(20.0), act.Timer.HEARTBEAT) == 20.0
    assert sends(link.deadline_reached(act.Timer.HEARTBEAT, 20.0), "ticks")


# --------------------------------------------------------------------------- dead and sick links


def test_pings_go_out_an_interval_after_each_pong() -> None:
    link = make()
    subs = connect(link)
    stream(link, subs, 1, 1.0)
    ping = ping_due(link, PING_S)
    actions = link.frame(pong(ping.req_id), PING_S + 0.25)
    assert link.last_pong_latency_s == 0.25
    assert armed(actions, act.Timer.HEARTBEAT) == PING_S + 0.25 + PING_S
    assert not sends(link.deadline_reached(act.Timer.HEARTBEAT, PING_S + 10.0), "ping")


def test_no_pong_in_time_is_a_dead_link_even_while_ticks_still_flow() -> None:
    link = make()
    subs = connect(link)
    ping_due(link, PING_S)
    for second in range(1, 10):
        assert closed_with(link.frame(tick("R_50", second, subs["R_50"].req_id), PING_S + second)) is None
    close = closed_with(link.deadline_reached(act.Timer.HEARTBEAT, PING_S + PONG_S))
    assert close is not None and close.cause.code == "HeartbeatTimeout"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"msg_type": "ping", "ping": ["x"]}, "ProtocolError"),  # a malformed pong
        ({"msg_type": "ping", "ping": "pang"}, "ProtocolError"),
        ({"msg_type": "time", "time": 1}, "ProtocolError"),  # a reply of the wrong kind
        ({"msg_type": "ping", "error": {"code": "RateLimit", "message": "slow down"}}, "HeartbeatRejected"),
    ],
)
def test_a_ping_answered_wrongly_is_a_sick_link_at_once(frame: dict[str, Any], code: str) -> None:
    link = make()
    subs = connect(link)
    stream(link, subs, 1, 1.0)
    ping = ping_due(link, PING_S)
    close = closed_with(link.frame(parse({**frame, "req_id": ping.req_id}), PING_S + 0.1))
    assert close is not None and close.cause.code == code and not close.planned
    assert close.cause.message
    assert not link.is_open and link.frame(tick("R_50", 2, None), PING_S + 0.2) == []


def test_an_unreadable_reply_to_a_subscribe_ends_the_session() -> None:
    link = make()
    subs = connect(link)
    bad = parse({"msg_type": "history", "history": {"times": "x"}, "req_id": subs["R_50"].req_id})
    close = closed_with(link.frame(bad, 1.0))
    assert close is not None and close.cause.code == "ProtocolError" and "ticks" in close.cause.message


def test_an_unreadable_frame_nobody_waits_for_is_counted_and_the_link_stays() -> None:
    link = make()
    connect(link)
    actions = link.frame(messages.parse('{"msg_type": "tick", "tick": {'), 1.0)
    assert errors(actions) == ["ProtocolError"] and closed_with(actions) is None
    assert link.is_open and link.stats["protocol_errors"] == 1


def test_repeated_upstream_errors_are_all_counted_but_logged_at_a_bounded_rate(
    caplog: pytest.LogCaptureFixture,
) -> None:
    link = make()
    connect(link)
    shown = []
    for n in range(100):
        shown += errors(link.frame(messages.parse("{not json"), 1.0 + n / 100))
        shown += errors(link.frame(error("tick", "WrongResponse", None), 1.0 + n / 100))
    assert shown.count("ProtocolError") == 100 and shown.count("WrongResponse") == 100
    assert link.stats["protocol_errors"] == 100
    assert len([r for r in caplog.records if r.name == "backend_core.deriv.link"]) == 2  # one line per kind
    link.frame(messages.parse("{not json"), 100.0)
    assert "(99 more like it held back)" in caplog.records[-1].getMessage()


def test_a_full_pending_map_is_a_sick_link_found_at_the_next_ping() -> None:
    link = make(max_pending=2, request_timeout_s=1000.0)
    connect(link)  # two subscribes, never answered
    close = closed_with(link.deadline_reached(act.Timer.HEARTBEAT, PING_S))
    assert close is not None and close.cause.code == "TooManyPendingRequests"


def test_a_send_that_fails_ends_the_session_naming_what_was_sent() -> None:
    link = make()
    subs = connect(link)
    close = closed_with(link.send_failed(subs["R_50"].req_id, "closed without a close frame (1006)", 1.0))
    assert close is not None and close.cause.code == "ConnectionLost" and "ticks" in close.cause.message


def test_a_deploy_notice_makes_the_next_close_planned() -> None:
    link = make()
    connect(link)
    notice = "We're updating our site in a short while."
    assert errors(link.frame(website_status(None, "updating", notice), 1.0)) == ["SiteUpdating"]
    assert link.planned and link.site_status == "updating"
    close = closed_with(link.closed("closed with code 1001", 2.0))
    assert close is not None and close.planned and close.cause.code == "SiteUpdating"


# --------------------------------------------------------------------------- silent streams


def test_a_silent_stream_on_a_live_link_is_forgotten_then_subscribed_again_with_backfill() -> None:
    link = make(stale_stream_s=60.0)
    subs = connect(link)
    stream(link, subs, 1, 1.0)
    now = 1.0
    for epoch in range(2, 4):  # 1HZ100V keeps ticking, R_50 falls silent after epoch 1
        now += PING_S  # the second pong comes 60 s after R_50's tick: silent for stale_stream_s
        link.frame(tick("1HZ100V", epoch, None, 2), now - 1)
        actions = link.frame(pong(ping_due(link, now).req_id), now)
    forget = one_send(actions, "forget")
    assert forget.payload["forget"] == sub_id(1)
    assert not sends(actions, "ticks_history"), "the subscribe waits for the forget's reply"
    resubscribe = one_send(link.frame(reply("forget", forget.req_id, forget=1), now), "ticks_history")
    assert resubscribe.payload["ticks_history"] == "R_50" and resubscribe.payload["start"] == 1


def test_an_unforgettable_subscription_id_is_renewed_by_subscribing_again() -> None:
    link = make(stale_stream_s=60.0)
    subs = connect(link)
    odd = parse(
        {
            "msg_type": "tick",
            "tick": {"symbol": "R_50", "epoch": 1, "quote": 1.0, "pip_size": 2},
            "subscription": {"id": "short id!"},
            "req_id": subs["R_50"].req_id,
        }
    )
    link.frame(odd, 1.0)
    now = 1.0
    for _ in range(2):  # silent for stale_stream_s at the second pong
        now += PING_S
        actions = link.frame(pong(ping_due(link, now).req_id), now)
    assert not sends(actions, "forget") and one_send(actions, "ticks_history").payload["ticks_history"] == "R_50"


def test_the_watchdog_waits_while_a_ping_is_in_flight() -> None:
    link = make(stale_stream_s=40.0)
    subs = connect(link)
    stream(link, subs, 1, 1.0)
    actions = link.frame(pong(ping_due(link, PING_S).req_id), PING_S)
    watchdog_at = armed(actions, act.Timer.WATCHDOG)
    assert watchdog_at == 41.0
    in_flight = link.deadline_reached(act.Timer.HEARTBEAT, 2 * PING_S)
    assert sends(in_flight, "ping") and armed(in_flight, act.Timer.WATCHDOG) is None  # disarmed: the pong decides
    assert link.deadline_reached(act.Timer.WATCHDOG, 2 * PING_S) == []


def test_the_watchdog_acts_at_the_moment_it_armed_itself_for() -> None:
    """A deadline fires once its time is reached, not after: at exactly that moment the
    stream is stale, so the watchdog acts instead of arming itself for the same instant
    again (which a driver would wake for at once, again and again, until time moved)."""
    link = make(stale_stream_s=40.0)
    subs = connect(link)
    stream(link, subs, 1, 1.0)
    watchdog_at = armed(link.frame(pong(ping_due(link, PING_S).req_id), PING_S), act.Timer.WATCHDOG)
    assert watchdog_at is not None
    actions = link.deadline_reached(act.Timer.WATCHDOG, watchdog_at)
    assert sends(actions, "forget"), "the silent stream is renewed at its deadline"
    assert act.ArmDeadline(act.Timer.WATCHDOG, watchdog_at) not in actions


# --------------------------------------------------------------------------- someone else's requests


def test_someone_elses_request_is_answered_failed_or_timed_out_by_req_id() -> None:
    link = make()
    connect(link)
    actions = link.request(protocol.time(9001), 1.0)
    assert one_send(actions, "time").req_id == 9001
    assert link.frame(reply("time", 9001, time=5), 2.0) == [act.Resolve(9001, messages.Time(5, 9001))]
    link.request(protocol.time(9002), 3.0)
    [failed] = link.frame(error("time", "WrongResponse", 9002), 4.0)
    assert isinstance(failed, act.Fail) and isinstance(failed.error, DerivAPIError)
    link.request(protocol.time(9003), 5.0, timeout_s=2.0)
    timed_out = [a for a in link.deadline_reached(act.Timer.HEARTBEAT, 7.0) if isinstance(a, act.Fail)]
    assert [f.req_id for f in timed_out] == [9003] and isinstance(timed_out[0].error, RequestTimeout)


def test_callers_can_never_crowd_out_the_links_own_requests() -> None:
    link = make(max_pending=130)
    connect(link)
    with pytest.raises(TooManyPendingRequests):
        link.request(protocol.time(9001), 1.0)  # 2 of 130 in flight; callers get 130 - 128
    with pytest.raises(ValueError):
        link.request({"time": 1}, 1.0)
    link.closed("closed", 2.0)
    with pytest.raises(UpstreamUnavailable):
        link.request(protocol.time(9002), 3.0)


# --------------------------------------------------------------------------- the pure helpers


@pytest.mark.parametrize(
    ("code", "policy"),
    [
        ("AlreadySubscribed", RetryPolicy.SUBSCRIBED),
        ("InvalidSymbol", RetryPolicy.NEVER),
        ("MarketIsClosed", RetryPolicy.MARKET_CLOSED),
        ("RateLimit", RetryPolicy.BACKOFF),
        ("WrongResponse", RetryPolicy.BACKOFF),
        ("CallError", RetryPolicy.BACKOFF),
        ("Timeout", RetryPolicy.BACKOFF),
        ("RequestTimeout", RetryPolicy.BACKOFF),
        ("NoRealtimeQuotes", RetryPolicy.LATER),
    ],
)
def test_each_subscribe_error_code_has_its_policy(code: str, policy: RetryPolicy) -> None:
    assert retry_policy(code) is policy


def plain_tick(symbol: str, epoch: int) -> Tick:
    return Tick(symbol=symbol, epoch=epoch, quote=1.0, pip_size=2)


def test_sequencer_lets_each_epoch_through_once_in_order() -> None:
    seq = TickSequencer()
    accepted = [seq.accept(plain_tick(s, e)) for s, e in [("A", 1), ("A", 2), ("A", 2), ("A", 1), ("B", 1)]]
    assert accepted == [True, True, False, False, True]
    assert seq.duplicates == 2
    assert seq.last_epoch("A") == 2 and seq.last_epoch("B") == 1 and seq.last_epoch("C") is None


@given(st.lists(st.tuples(st.sampled_from("AB"), st.integers(0, 6)), max_size=30), st.integers(0, 30))
def test_the_sequencer_lets_a_batch_through_as_it_would_one_tick_at_a_time(
    ticks: list[tuple[str, int]], split: int
) -> None:
    one_by_one, batched = TickSequencer(), TickSequencer()
    batched.seed("A", 2)
    one_by_one.seed("A", 2)
    each = [plain_tick(s, e) for s, e in ticks]
    expected = [t for t in each if one_by_one.accept(t)]
    # In two batches: the second goes on from where the first left off.
    assert list(batched.accept_all(each[:split]) + batched.accept_all(each[split:])) == expected
    assert batched.duplicates == one_by_one.duplicates
    assert all(batched.last_epoch(s) == one_by_one.last_epoch(s) for s in "AB")


def test_the_ticks_held_for_all_symbols_paging_at_once_are_bounded() -> None:
    backfill = Backfill(count=3, max_pages=10, deadline_s=100.0, backoff=FullJitter(1.0, 30.0), max_held=8)
    assert backfill.replied("A", 100, [plain_tick("A", e) for e in (150, 151, 152)], 0.0) == Page(100, 149)
    released = backfill.replied("B", 100, [plain_tick("B", e) for e in (150, 151, 152)], 0.0)
    assert isinstance(released, Release) and released.gap == (100, 150) and "held" in released.reason
    assert [t.gap_from for t in released.ticks] == [100, None, None]
    assert set(backfill.paging) == {"A"}


def test_a_reply_that_cannot_be_published_waits_for_the_first_live_tick_to_carry_its_gap() -> None:
    backfill = Backfill(count=3, max_pages=10, deadline_s=5.0, backoff=FullJitter(1.0, 30.0))
    assert backfill.replied("A", 100, [], 0.0, unpublished=[100, 150, 151]) == Release([])
    assert set(backfill.paging) == {"A"}  # its live ticks are held, not published
    assert backfill.next_deadline() is None and backfill.due(1000.0) == []  # nothing to wait for but a tick
    old = plain_tick("A", 100)
    assert backfill.hold(old) == Release([old])  # published before (the sequencer drops it): no carrier
    released = backfill.hold(plain_tick("A", 152))
    assert isinstance(released, Release) and released.gap == (100, 152) and "2 ticks" in released.reason
    assert [(t.epoch, t.gap_from) for t in released.ticks] == [(152, 100)]
    assert backfill.paging == {}
    # Nothing after the last published epoch, or nothing published before: nothing is lost.
    assert backfill.replied("B", 100, [], 0.0, unpublished=[99, 100]) == Release([])
    assert backfill.replied("C", None, [], 0.0, unpublished=[5, 6]) == Release([])
    assert backfill.paging == {}


def test_a_backfill_gap_is_found_only_when_a_full_reply_starts_after_the_last_tick() -> None:
    # Deriv answers the latest `count` ticks of [start, end], start inclusive (3.4).
    assert backfill_gap(100, [100, 101, 102], requested=3) is None  # full, reaches back: no gap
    assert backfill_gap(100, [101, 102], requested=3) is None  # short: the whole range
    assert backfill_gap(100, [], requested=3) is None  # nothing missed
    assert backfill_gap(None, [5, 6, 7], requested=3) is None  # nothing published before
    assert backfill_gap(100, [150, 151, 152], requested=3) == 100  # full and later: 101..149 lost


_EVENTS = st.one_of(
    st.tuples(st.just("tick"), st.sampled_from(SYMBOLS), st.integers(0, 40)),
    st.tuples(st.just("history"), st.sampled_from(SYMBOLS), st.integers(0, 40)),
    st.tuples(st.just("history without pip_size"), st.sampled_from(SYMBOLS), st.integers(0, 40)),
    st.tuples(st.just("error"), st.sampled_from(["RateLimit", "InvalidSymbol", "MarketIsClosed", "Weird"]), st.just(0)),
    st.tuples(st.just("garbage"), st.just(""), st.just(0)),
    st.tuples(st.just("advance"), st.just(""), st.integers(1, 40)),
    st.tuples(st.just("reconnect"), st.just(""), st.just(0)),
)


@given(st.lists(_EVENTS, max_size=80))
def test_whatever_arrives_ticks_leave_in_order_once_and_the_pending_map_stays_bounded(
    events: list[tuple[str, str, int]],
) -> None:
    link = make(max_pending=8)
    connect(link)
    now, published = 0.0, []
    req_ids = itertools.count(1)
    for kind, arg, number in events:
        if not link.is_open:
            connect(link, now)
        if kind == "tick":
            actions = link.frame(tick(arg, number, next(req_ids) % 7), now)
        elif kind == "history":
            actions = link.frame(history(arg, sorted({number, number + 1}), next(req_ids) % 7), now)
        elif kind == "history without pip_size":
            actions = link.frame(history(arg, [number], next(req_ids) % 7, pip_size=None), now)
        elif kind == "error":
            actions = link.frame(error("tick", arg, next(req_ids) % 7), now)
        elif kind == "garbage":
            actions = link.frame(messages.parse("{not json"), now)
        elif kind == "advance":
            now += number
            actions = link.deadline_reached(act.Timer.HEARTBEAT, now) + link.deadline_reached(act.Timer.WATCHDOG, now)
        else:
            actions = link.closed("closed", now)
        published += ticks_of(actions)
        assert link.pending_count <= 8
    for symbol in SYMBOLS:
        epochs = [t.epoch for t in published if t.symbol == symbol]
        assert epochs == sorted(set(epochs))
