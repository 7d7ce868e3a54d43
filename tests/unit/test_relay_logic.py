"""The pure parts of the relay: message validation, rate limiting, resume, origin, heartbeat, frames."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from websockets.frames import Frame, Opcode

from backend_core.clock import FakeClock
from backend_core.events import ErrorInfo, LinkState, Tick, UpstreamSnapshot
from backend_core.hub import InMemoryHub
from backend_core.relay.connection import Connection
from backend_core.relay.eager import WRITE_FRAMED, WRITE_TEXT
from backend_core.relay.frames import FrameCache, text_frame
from backend_core.relay.policy import (
    Heartbeat,
    MessageRateLimiter,
    RateVerdict,
    SendWatch,
    heartbeat_step,
    origin_allowed,
)
from backend_core.relay.protocol import (
    ClientError,
    PingRequest,
    PongReply,
    SubscribeRequest,
    UnsubscribeRequest,
    error_frame,
    parse_client_message,
    status_frame,
    tick_frame,
)
from backend_core.relay.resume import is_stale, plan_resume
from backend_core.relay.sender import MAX_BATCH_BYTES, MAX_WRITE_BYTES, Sender

KNOWN = frozenset({"R_50", "R_100", "1HZ100V"})


def parse(obj: object) -> object:
    return parse_client_message(json.dumps(obj), KNOWN)


# --- parse_client_message -------------------------------------------------------------------


def test_subscribe_with_resume_and_id() -> None:
    msg = parse({"action": "subscribe", "symbols": ["R_50", "R_100", "R_50"], "resume": {"R_50": 5}, "id": "a1"})
    assert msg == SubscribeRequest(("R_50", "R_100"), {"R_50": 5}, "a1")


def test_subscribe_batch_option() -> None:
    assert parse({"action": "subscribe", "symbols": ["R_50"], "batch": True}) == SubscribeRequest(
        ("R_50",), {}, None, True
    )
    assert parse({"action": "subscribe", "symbols": ["R_50"], "batch": False}).batch is False  # type: ignore[attr-defined]
    assert parse({"action": "subscribe", "symbols": ["R_50"]}).batch is None  # type: ignore[attr-defined]


def test_simple_actions() -> None:
    assert parse({"action": "ping", "id": 7}) == PingRequest(7)
    assert parse({"action": "pong"}) == PongReply(None)
    assert parse({"type": "pong"}) == PongReply(None)  # "type" is an alias of "action"
    assert parse({"action": "unsubscribe"}) == UnsubscribeRequest(None)
    assert parse({"action": "unsubscribe", "symbols": ["R_50"]}) == UnsubscribeRequest(("R_50",))
    assert parse({"action": "ping", "future_field": [1, 2]}) == PingRequest(None)  # extra fields ignored


@pytest.mark.parametrize("text", ["", "{", "not json", '{"action": "ping"', "\x00"])
def test_invalid_json(text: str) -> None:
    result = parse_client_message(text, KNOWN)
    assert isinstance(result, ClientError) and result.code == "invalid_json"


def test_deeply_nested_json_is_invalid_not_a_crash() -> None:
    result = parse_client_message("[" * 100_000 + "]" * 100_000, KNOWN)
    assert isinstance(result, ClientError) and result.code in {"invalid_json", "invalid_message"}


@pytest.mark.parametrize(
    ("obj", "code"),
    [
        ([1, 2], "invalid_message"),
        ("ping", "invalid_message"),
        (None, "invalid_message"),
        ({}, "invalid_message"),
        ({"action": 3}, "invalid_message"),
        ({"action": "dance"}, "unknown_action"),
        ({"action": "subscribe"}, "invalid_message"),
        ({"action": "subscribe", "symbols": "R_50"}, "invalid_message"),
        ({"action": "subscribe", "symbols": []}, "invalid_message"),
        ({"action": "subscribe", "symbols": [1]}, "invalid_message"),
        ({"action": "subscribe", "symbols": ["R_50"] * 4}, "invalid_message"),
        ({"action": "subscribe", "symbols": ["NOPE"]}, "unknown_symbol"),
        ({"action": "subscribe", "symbols": ["R_50", "frxEURUSD"]}, "unknown_symbol"),
        ({"action": "unsubscribe", "symbols": ["NOPE"]}, "unknown_symbol"),
        ({"action": "unsubscribe", "symbols": 5}, "invalid_message"),
        ({"action": "subscribe", "symbols": ["R_50"], "resume": [1]}, "invalid_message"),
        ({"action": "subscribe", "symbols": ["R_50"], "resume": {"R_50": "5"}}, "invalid_message"),
        ({"action": "subscribe", "symbols": ["R_50"], "resume": {"R_50": -1}}, "invalid_message"),
        ({"action": "subscribe", "symbols": ["R_50"], "resume": {"R_50": True}}, "invalid_message"),
        ({"action": "subscribe", "symbols": ["R_50"], "resume": {"R_50": 1.5}}, "invalid_message"),
        ({"action": "subscribe", "symbols": ["R_50"], "resume": {"R_100": 1}}, "invalid_message"),
        ({"action": "subscribe", "symbols": ["R_50"], "batch": "yes"}, "invalid_message"),
        ({"action": "subscribe", "symbols": ["R_50"], "batch": 1}, "invalid_message"),
        ({"action": "ping", "id": True}, "invalid_message"),
        ({"action": "ping", "id": [1]}, "invalid_message"),
        ({"action": "ping", "id": "x" * 65}, "invalid_message"),
        ({"action": "ping", "id": 2**60}, "invalid_message"),
    ],
)
def test_bad_messages_get_specific_codes(obj: object, code: str) -> None:
    result = parse(obj)
    assert isinstance(result, ClientError), result
    assert result.code == code
    assert result.message


def test_errors_echo_a_valid_id() -> None:
    result = parse({"action": "dance", "id": "q"})
    assert isinstance(result, ClientError) and result.id == "q"
    result = parse({"action": "subscribe", "symbols": ["NOPE"], "id": 3})
    assert isinstance(result, ClientError) and result.id == 3
    assert "R_50" in result.message  # names what is available


def test_unknown_action_text_is_truncated() -> None:
    result = parse({"action": "x" * 1000})
    assert isinstance(result, ClientError) and len(result.message) < 200


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failures
@given(st.text(max_size=300))
def test_any_text_is_answered_never_raises(text: str) -> None:
    result = parse_client_message(text, KNOWN)
    assert isinstance(result, ClientError | SubscribeRequest | UnsubscribeRequest | PingRequest | PongReply)


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failures
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda c: st.lists(c) | st.dictionaries(st.text(max_size=8), c),
        max_leaves=20,
    )
)
def test_any_json_is_answered_never_raises(value: object) -> None:
    for wrapped in (
        value,
        {"action": "subscribe", "symbols": value},
        {"action": "subscribe", "symbols": ["R_50"], "resume": value},
        {"action": "ping", "id": value},
    ):
        result = parse(wrapped)
        assert result is not None


# --- rate limiting --------------------------------------------------------------------------


def test_rate_limiter_rejects_then_closes_a_client_that_keeps_going() -> None:
    limiter = MessageRateLimiter(now=0.0, rate_per_s=20, burst=40, max_rejections=20, window_s=10)
    verdicts = [limiter.check(0.0) for _ in range(40 + 20 + 1)]
    assert verdicts[:40] == [RateVerdict.ALLOW] * 40
    assert verdicts[40:60] == [RateVerdict.REJECT] * 20
    assert verdicts[60] is RateVerdict.CLOSE


def test_rate_limiter_forgives_after_the_window() -> None:
    limiter = MessageRateLimiter(now=0.0, rate_per_s=1, burst=1, max_rejections=3, window_s=10)
    now = 0.0
    for _ in range(10):  # 3 rejections per 11 s window: never closed
        assert limiter.check(now) is RateVerdict.ALLOW
        assert [limiter.check(now) for _ in range(3)] == [RateVerdict.REJECT] * 3
        now += 11.0


def test_rate_limiter_allows_a_steady_client() -> None:
    limiter = MessageRateLimiter(now=0.0, rate_per_s=20, burst=40)
    assert all(limiter.check(i * 0.05) is RateVerdict.ALLOW for i in range(10_000))


# --- resume -----------------------------------------------------------------------------------


def tick(symbol: str, epoch: int) -> Tick:
    return Tick(symbol=symbol, epoch=epoch, quote=float(epoch), pip_size=2)


def hub_with(ticks: list[Tick], ring_size: int = 1000) -> InMemoryHub:
    hub = InMemoryHub(FakeClock(), ring_size=ring_size)
    for t in ticks:
        hub.publish_tick(t)
    return hub


def test_resume_replays_missed_ticks_merged_by_epoch() -> None:
    hub = hub_with([tick("R_50", 1), tick("R_100", 2), tick("R_50", 3), tick("R_100", 4), tick("R_50", 5)])
    plan = plan_resume({"R_50": 1, "R_100": 0}, hub)
    assert [(t.symbol, t.epoch) for t in plan.replay] == [("R_100", 2), ("R_50", 3), ("R_100", 4), ("R_50", 5)]
    assert plan.live_after == {"R_50": 5, "R_100": 4}
    assert plan.report == {
        "R_50": {"from_epoch": 1, "replayed": 2, "truncated": False},
        "R_100": {"from_epoch": 0, "replayed": 2, "truncated": False},
    }


def test_resume_with_nothing_missed_still_filters_live() -> None:
    hub = hub_with([tick("R_50", 1), tick("R_50", 2)])
    plan = plan_resume({"R_50": 7}, hub)
    assert plan.replay == ()
    assert plan.live_after == {"R_50": 7}
    assert is_stale(tick("R_50", 7), plan.live_after)
    assert not is_stale(tick("R_50", 8), plan.live_after)
    assert not is_stale(tick("R_100", 1), plan.live_after)


def test_resume_reports_a_gap_when_ticks_fell_out_of_the_ring() -> None:
    hub = hub_with([tick("R_50", e) for e in range(1, 11)], ring_size=4)
    plan = plan_resume({"R_50": 2}, hub)
    assert [t.epoch for t in plan.replay] == [7, 8, 9, 10]
    assert plan.report["R_50"]["truncated"] is True
    assert plan_resume({"R_50": 6}, hub).report["R_50"]["truncated"] is False


def test_resume_limit_is_reported_as_truncated() -> None:
    hub = hub_with([tick("R_50", e) for e in range(1, 11)])
    plan = plan_resume({"R_50": 0}, hub, limit_per_symbol=3)
    assert [t.epoch for t in plan.replay] == [1, 2, 3]
    assert plan.report["R_50"] == {"from_epoch": 0, "replayed": 3, "truncated": True}
    assert plan.live_after == {"R_50": 3}


@settings(deadline=None)  # a loaded CI machine must not turn slowness into failures
@given(
    published=st.lists(st.integers(1, 60), max_size=50),
    resume_from=st.integers(0, 60),
    split=st.integers(0, 50),
)
def test_resume_then_live_has_no_gap_and_no_duplicate(published: list[int], resume_from: int, split: int) -> None:
    """Ticks published before the resume come from the ring, later ones live; joined they are
    exactly the ticks after ``resume_from``, once each, in order."""
    epochs = sorted(set(published))
    before, after = epochs[:split], epochs[split:]
    hub = hub_with([tick("R_50", e) for e in before])
    sub = hub.subscribe(["R_50"])  # subscribe first ...
    plan = plan_resume({"R_50": resume_from}, hub)  # ... then read the ring
    for e in after:
        hub.publish_tick(tick("R_50", e))
    received = [t.epoch for t in plan.replay]
    live_after = dict(plan.live_after)
    while (event := sub.get_nowait()) is not None:
        assert isinstance(event, Tick)
        if not is_stale(event, live_after):
            live_after[event.symbol] = event.epoch
            received.append(event.epoch)
    expected = [e for e in epochs if e > resume_from]
    assert received == expected


# --- origin --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("origin", "host", "allowed", "ok"),
    [
        (None, "127.0.0.1:8000", (), True),
        (None, None, (), True),
        ("http://127.0.0.1:8000", "127.0.0.1:8000", (), True),
        ("HTTP://LOCALHOST:3000", "localhost:3000", (), True),
        ("https://example.com", "example.com", (), True),
        ("https://example.com:443", "example.com", (), True),
        ("http://example.com", "example.com:80", (), True),
        ("http://[::1]:8000", "[::1]:8000", (), True),
        ("http://evil.example", "127.0.0.1:8000", (), False),
        ("http://127.0.0.1:3000", "127.0.0.1:8000", (), False),
        ("https://example.com", "example.com:80", (), False),
        ("null", "127.0.0.1:8000", (), False),
        ("file://", "127.0.0.1:8000", (), False),
        ("http://127.0.0.1:8000", None, (), False),
        ("http://[bad", "127.0.0.1:8000", (), False),
        ("http://127.0.0.1:3000", "127.0.0.1:8000", ("http://127.0.0.1:3000",), True),
        ("http://127.0.0.1:3000/", "127.0.0.1:8000", ("HTTP://127.0.0.1:3000",), True),
        ("http://anything.example", "127.0.0.1:8000", ("*",), True),
    ],
)
def test_origin_allowed(origin: str | None, host: str | None, allowed: tuple[str, ...], ok: bool) -> None:
    assert origin_allowed(origin, host, allowed) is ok


# --- heartbeat -----------------------------------------------------------------------------------


def test_heartbeat_step() -> None:
    assert heartbeat_step(5.0, None, 0.0, interval_s=10, timeout_s=3) is Heartbeat.WAIT
    assert heartbeat_step(10.0, None, 0.0, interval_s=10, timeout_s=3) is Heartbeat.PING
    assert heartbeat_step(12.0, 10.0, 10.0, interval_s=10, timeout_s=3) is Heartbeat.WAIT
    assert heartbeat_step(13.0, 10.0, 10.0, interval_s=10, timeout_s=3) is Heartbeat.TIMEOUT
    # answered (outstanding cleared by the reader): next ping one interval after the last
    assert heartbeat_step(15.0, None, 10.0, interval_s=10, timeout_s=3) is Heartbeat.WAIT
    assert heartbeat_step(20.0, None, 10.0, interval_s=10, timeout_s=3) is Heartbeat.PING


# --- send watch ----------------------------------------------------------------------------------


def test_send_watch_measures_one_stuck_send() -> None:
    watch = SendWatch()
    assert watch.observe(0.0, in_send=False, sends_completed=0) == 0.0
    assert watch.observe(1.0, in_send=True, sends_completed=5) == 0.0  # first seen now
    assert watch.observe(2.5, in_send=True, sends_completed=5) == pytest.approx(1.5)  # the same send
    assert watch.observe(3.0, in_send=True, sends_completed=6) == 0.0  # that one finished; a new one
    assert watch.observe(4.0, in_send=True, sends_completed=6) == pytest.approx(1.0)
    assert watch.observe(5.0, in_send=False, sends_completed=7) == 0.0
    assert watch.observe(6.0, in_send=True, sends_completed=7) == 0.0  # after an idle sweep, starts over


def test_send_watch_never_flags_a_flowing_connection() -> None:
    watch = SendWatch()
    assert all(watch.observe(float(i), in_send=True, sends_completed=i) == 0.0 for i in range(100))


# --- frames ----------------------------------------------------------------------------------------


def test_tick_frame() -> None:
    t = Tick(symbol="R_50", epoch=9, quote=1.5, pip_size=4, bid=1.4, ask=1.6)
    assert tick_frame(t) == {
        "type": "tick",
        "symbol": "R_50",
        "epoch": 9,
        "quote": 1.5,
        "bid": 1.4,
        "ask": 1.6,
        "pip_size": 4,
        "backfill": False,
    }
    assert tick_frame(t, replay=True)["replay"] is True
    assert t.to_dict() == {k: v for k, v in tick_frame(t).items() if k != "type"}


def test_the_first_tick_after_an_unfilled_gap_says_where_the_gap_began() -> None:
    t = Tick(symbol="R_50", epoch=9000, quote=1.5, pip_size=4, backfill=True, gap_from=100)
    assert tick_frame(t)["gap_from"] == 100 and tick_frame(t, replay=True)["gap_from"] == 100
    assert t.to_dict()["gap_from"] == 100  # the REST fallback says so too


def test_error_frame() -> None:
    assert error_frame("unknown_action", "no") == {"type": "error", "code": "unknown_action", "message": "no"}
    assert error_frame("x", "y", 4)["id"] == 4


def test_status_frame_merges_hub_and_provider() -> None:
    snap = UpstreamSnapshot(
        state=LinkState.RECONNECTING,
        since=1_700_000_000.0,
        url="wss://example/websockets/v3",
        simulated=False,
        last_error=ErrorInfo("ConnectionLost", "the link dropped", 1_700_000_000.5),
        reconnect_count=2,
    )
    frame = status_frame(snap, {"breaker_state": "open", "retry_after_s": 12.5, "type": "nope"}, 1_700_000_001.0)
    assert frame["type"] == "status"
    assert frame["state"] == "reconnecting"
    assert frame["since"] == "2023-11-14T22:13:20.000Z"
    assert frame["last_error"] == {
        "code": "ConnectionLost",
        "message": "the link dropped",
        "at": "2023-11-14T22:13:20.500Z",
    }
    assert frame["breaker_state"] == "open"
    assert frame["retry_after_s"] == 12.5
    assert frame["reconnect_count"] == 2
    assert frame["at"] == "2023-11-14T22:13:21.000Z"
    provider_wins = status_frame(snap, {"state": "circuit_open"}, 0.0)
    assert provider_wins["state"] == "circuit_open"


def test_status_frame_before_any_status() -> None:
    frame = status_frame(None, None, 0.0)
    assert frame["state"] == "unknown"
    assert frame["breaker_state"] is None
    assert frame["retry_after_s"] is None


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_a_prebuilt_text_frame_is_what_websockets_would_send(size: int) -> None:
    # The relay writes these bytes itself to connections without extensions.
    data = ("é" * size).encode()[:size]
    assert text_frame(data) == Frame(Opcode.TEXT, data).serialize(mask=False, extensions=[])


# --- the write path -------------------------------------------------------------------------


class _Client:
    """A relay connection whose writes are recorded: through the ASGI ``send`` (``mode`` 0) or
    through the server's synchronous write (``WRITE_TEXT``, ``WRITE_FRAMED``)."""

    def __init__(self, hub: InMemoryHub, mode: int, *, batch: bool) -> None:
        self.mode = mode
        self.messages: list[str] = []
        self.writes = 0
        self.socket_full: asyncio.Future[None] | None = None
        writer = (self._ready, self._write) if mode else None
        self.conn = Connection("c1", None, self._send, writer, "test", None, 0.0, 0.0, MessageRateLimiter(0.0))  # type: ignore[arg-type]
        self.conn.sub = hub.subscribe(["R_50"], queue_size=4096)
        self.conn.symbols = frozenset({"R_50"})
        self.conn.batch = batch

    async def _send(self, message: dict[str, Any]) -> None:
        self.messages.append(message["text"])
        if self.socket_full is not None:  # this send waits until the client reads
            await self.socket_full

    def _ready(self) -> int:
        return self.mode

    def _write(self, texts: list[bytes], framed: list[bytes] | None) -> None:
        self.writes += 1
        if self.mode == WRITE_FRAMED:
            assert framed == [text_frame(data) for data in texts]
        else:
            assert framed is None
        self.messages.extend(data.decode() for data in texts)


@pytest.mark.parametrize("mode", [0, WRITE_TEXT, WRITE_FRAMED])
@pytest.mark.parametrize("batch", [False, True])
def test_a_flush_sends_every_waiting_tick_once_in_order(mode: int, batch: bool) -> None:
    hub = InMemoryHub(FakeClock())
    client = _Client(hub, mode, batch=batch)
    sender = Sender(hub, FrameCache(FakeClock(), dict))
    published = [tick("R_50", epoch) for epoch in range(1, 1501)]  # about 3 batches' worth
    for t in published:
        hub.publish_tick(t)
    sender.flush(client.conn)
    lines = [json.loads(line) for message in client.messages for line in message.split("\n")]
    assert [(f["type"], f["epoch"]) for f in lines] == [("tick", t.epoch) for t in published]
    assert sender.ticks_sent == len(published) and client.conn.messages_out == len(client.messages)
    if batch:
        assert 3 <= len(client.messages) < 10
        frame_bytes = max(len(line) for message in client.messages for line in message.split("\n"))
        assert all(len(message.encode()) < MAX_BATCH_BYTES + frame_bytes for message in client.messages)
    else:
        assert len(client.messages) == len(published)
    if mode:  # one write per MAX_WRITE_BYTES or so, not one per frame nor one for all
        assert sum(len(m.encode()) for m in client.messages) // MAX_WRITE_BYTES <= client.writes < 10


async def test_a_batch_client_whose_socket_fills_at_a_batch_boundary_loses_nothing() -> None:
    hub = InMemoryHub(FakeClock())
    client = _Client(hub, 0, batch=True)
    sender = Sender(hub, FrameCache(FakeClock(), dict))
    published = [tick("R_50", epoch) for epoch in range(1, 1501)]
    for t in published:
        hub.publish_tick(t)
    client.socket_full = asyncio.get_running_loop().create_future()
    sender.flush(client.conn)  # the first full batch's send waits: the flusher task takes over
    assert len(client.messages) == 1 and client.conn.stalled is not None
    client.socket_full.set_result(None)
    client.socket_full = None
    flusher = client.conn.flusher
    assert flusher is not None
    await flusher
    lines = [json.loads(line) for message in client.messages for line in message.split("\n")]
    assert [f["epoch"] for f in lines] == [t.epoch for t in published]
    assert sender.ticks_sent == len(published) and client.conn.messages_out == len(client.messages)
