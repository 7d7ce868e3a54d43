"""The simulator's pure parts: time, limits, prices, history rules, the per-connection session, control parsing.

No sockets, no sleeps; time comes from a FakeClock or is passed in. Every frame the
session produces is also run through the client codec, which must understand it.
"""

from __future__ import annotations

import json
import re
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from backend_core.clock import FakeClock
from backend_core.deriv import messages
from backend_core.deriv.sim import __main__ as cli
from backend_core.deriv.sim import control, faults, market, schema, server, session
from backend_core.events import Tick

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
START = 1_700_000_000  # divisible by 2: a grid epoch for every symbol


# --- time and limits -----------------------------------------------------------------


def test_simulated_time_runs_time_scale_faster() -> None:
    clock = FakeClock(start_wall=START)
    t = market.SimulatedTime(clock, time_scale=10)
    assert t.now() == START
    clock.advance(1.5)
    assert t.now() == START + 15
    assert t.to_clock_seconds(120) == 12


@pytest.mark.parametrize("scale", [0, -1, float("nan"), float("inf"), 10_001])
def test_simulated_time_rejects_bad_scales(scale: float) -> None:
    with pytest.raises(ValueError):
        market.SimulatedTime(FakeClock(), scale)


def test_idle_deadline_restarts_on_touch() -> None:
    idle = session.IdleDeadline(120, now=0)
    assert idle.remaining(100) == 20
    idle.touch(100)
    assert not idle.expired(219)
    assert idle.expired(220)


def test_rate_window_allows_ten_per_window() -> None:
    window = session.RateWindow(limit=10, window_s=1.0)
    assert all(window.hit(0.01 * i) for i in range(10))
    assert not window.hit(0.5)
    assert window.hit(1.01)  # a new window opened


def test_rate_window_spread_out_calls_never_trip() -> None:
    window = session.RateWindow()
    assert all(window.hit(i * 0.2) for i in range(200))


# --- history and prices --------------------------------------------------------------


def test_tick_history_window_returns_latest_count_ascending() -> None:
    history = market.TickHistory(capacity=100)
    for e in range(10, 30, 2):
        history.append(e, float(e))
    assert history.window(0, 100, 3) == ([24, 26, 28], [24.0, 26.0, 28.0])
    assert history.window(13, 18, 10) == ([14, 16, 18], [14.0, 16.0, 18.0])
    assert history.window(31, 40, 10) == ([], [])
    assert history.latest() == (28, 28.0)
    assert history.first_at_or_after(15) == (16, 16.0)
    assert history.first_at_or_after(29) is None


def test_tick_history_is_bounded() -> None:
    history = market.TickHistory(capacity=8)
    for e in range(1000):
        history.append(e, 1.0)
        assert len(history) <= 8 + 8 // 4
    epochs, _ = history.window(0, 10_000, 10_000)
    assert epochs == list(range(992, 1000))  # never more than capacity visible


def test_tick_history_rejects_non_increasing_epochs() -> None:
    history = market.TickHistory(capacity=4)
    history.append(5, 1.0)
    with pytest.raises(ValueError):
        history.append(5, 2.0)


def _market(**kwargs: Any) -> market.Market:
    kwargs.setdefault("seed", 7)
    kwargs.setdefault("prefill_s", 0)
    return market.Market(start_epoch=START, **kwargs)


def test_market_ticks_on_the_grid() -> None:
    mk = _market()
    ticks = mk.advance_to(START + 4)
    by_symbol: dict[str, list[int]] = {}
    for tick in ticks:
        by_symbol.setdefault(tick.symbol, []).append(tick.epoch)
    assert by_symbol["1HZ100V"] == [START + 1, START + 2, START + 3, START + 4]
    assert by_symbol["R_50"] == [START + 2, START + 4]
    assert [t.epoch for t in ticks] == sorted(t.epoch for t in ticks)  # oldest first
    assert mk.last_epoch == START + 4


def test_market_quotes_are_rounded_with_bid_below_ask() -> None:
    mk = _market()
    for tick in mk.advance_to(START + 20):
        spec = mk.specs[tick.symbol]
        assert type(tick.epoch) is int
        assert tick.pip_size == spec.pip_size
        assert tick.quote == round(tick.quote, spec.pip_size)
        assert tick.bid is not None and tick.ask is not None
        assert tick.bid < tick.quote < tick.ask
        assert tick.bid == round(tick.bid, spec.pip_size)


def test_market_history_matches_published_ticks() -> None:
    mk = _market()
    ticks = [t for t in mk.advance_to(START + 30) if t.symbol == "R_100"]
    epochs, quotes = mk.history("R_100").window(0, START + 30, 1000)
    assert list(zip(epochs, quotes, strict=True)) == [(t.epoch, t.quote) for t in ticks]
    assert mk.latest("R_100") == ticks[-1]


def test_market_is_reproducible_with_a_seed() -> None:
    a = _market(seed=3).advance_to(START + 10)
    b = _market(seed=3).advance_to(START + 10)
    c = _market(seed=4).advance_to(START + 10)
    assert a == b
    assert a != c


def test_market_prefill_builds_history_before_start() -> None:
    mk = _market(prefill_s=100)
    epochs, _ = mk.history("1HZ100V").window(0, START, 10_000)
    assert epochs == list(range(START - 99, START + 1))
    assert len(mk.history("R_10").window(0, START, 10_000)[0]) == 50


def test_market_skip_leaves_a_gap() -> None:
    mk = _market()
    mk.advance_to(START + 2)
    mk.skip_to(START + 10)
    mk.advance_to(START + 12)
    epochs, _ = mk.history("R_50").window(0, START + 100, 100)
    assert epochs == [START + 2, START + 12]


def test_market_catch_up_is_bounded() -> None:
    mk = _market()
    ticks = mk.advance_to(START + 10_000, catch_up_limit_s=10)
    assert min(t.epoch for t in ticks) == START + 9_991


def test_a_market_jump_puts_every_tick_of_it_in_history_and_streams_none() -> None:
    mk = _market()
    mk.advance_to(START + 2)
    made = mk.jump(12_000)
    assert made["1HZ100V"] == 12_000 and made["R_50"] == 6_000
    assert mk.last_epoch == START + 12_002
    epochs, _ = mk.history("1HZ100V").window(0, START + 20_000, 100_000)
    assert epochs == list(range(START + 1, START + 12_003))
    latest = mk.latest("1HZ100V")
    assert latest is not None and latest.epoch == START + 12_002
    assert [t.epoch for t in mk.advance_to(START + 12_003) if t.symbol == "1HZ100V"] == [START + 12_003]
    with pytest.raises(ValueError):
        mk.jump(market.MAX_JUMP_S + 1)


def test_after_a_jump_paging_back_with_ticks_history_serves_every_tick_once() -> None:
    h = Harness()
    h.advance(2)
    last = START + 2
    h.market.jump(12_000)
    h.now += 12_000
    (reply,) = h.call({"ticks_history": "1HZ100V", "start": last, "end": "latest", "count": 5000, "subscribe": 1})
    pages = [reply["history"]["times"]]
    while len(pages[-1]) == 5000 and pages[-1][0] > last:
        (page,) = h.call({"ticks_history": "1HZ100V", "start": last, "end": str(pages[-1][0] - 1), "count": 5000})
        assert "subscription" not in page
        pages.append(page["history"]["times"])
    assert [len(p) for p in pages] == [5000, 5000, 2001]  # the last one reaches back to `last`
    assert sorted(e for p in pages for e in p) == list(range(last, START + 12_003))
    assert [f["tick"]["epoch"] for f in h.advance(1) if f["tick"]["symbol"] == "1HZ100V"] == [START + 12_003]


def test_market_next_due_epoch() -> None:
    mk = _market()
    assert mk.next_due_epoch() == START + 1
    mk.advance_to(START + 1)
    assert mk.next_due_epoch() == START + 2
    only_r = _market(specs=[s for s in market.DEFAULT_SYMBOLS if s.symbol.startswith("R_")])
    assert only_r.next_due_epoch() == START + 2


def test_market_rejects_bad_specs() -> None:
    with pytest.raises(ValueError):
        _market(specs=[])
    with pytest.raises(ValueError):
        _market(specs=[market.SymbolSpec("bad symbol", "x", 0.01, 2, 1, 1.0, 0.1)])


def test_candles_bucket_by_granularity() -> None:
    candles = market.build_candles([60, 70, 119, 120, 150], [1.0, 3.0, 2.0, 5.0, 4.0], 60)
    assert [(c.open_time, c.open, c.high, c.low, c.close, c.epoch) for c in candles] == [
        (60, 1.0, 3.0, 1.0, 2.0, 119),
        (120, 5.0, 5.0, 4.0, 4.0, 150),
    ]


# --- ticks_history rules (section 3.4) -------------------------------------------------

NOW = float(START + 1000)


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"end": "latest"}, market.HistoryWindow(START + 1000 - 86400, START + 1000, 1000, "ticks", 0)),
        ({"end": "latest", "count": 0}, market.HistoryWindow(START + 1000 - 86400, START + 1000, 5000, "ticks", 0)),
        ({"end": "latest", "count": 9999}, market.HistoryWindow(START + 1000 - 86400, START + 1000, 5000, "ticks", 0)),
        ({"end": str(START + 9999)}, market.HistoryWindow(START + 1000 - 86400, START + 1000, 1000, "ticks", 0)),
        (
            {"end": "latest", "granularity": 60},
            market.HistoryWindow(START + 1000 - 86400, START + 1000, 1000, "candles", 60),
        ),
        (
            {"end": "latest", "style": "candles"},
            market.HistoryWindow(START + 1000 - 86400, START + 1000, 1000, "candles", 60),
        ),
        (
            {"end": "latest", "style": "candles", "granularity": 120, "count": 10},
            market.HistoryWindow(START + 1000 - 1200, START + 1000, 10, "candles", 120),
        ),
        (
            {"end": "latest", "start": 5},
            market.HistoryWindow(START + 1000 - 365 * 86400, START + 1000, 1000, "ticks", 0),
        ),
        ({"end": str(START), "start": START - 10, "count": 3}, market.HistoryWindow(START - 10, START, 3, "ticks", 0)),
    ],
)
def test_history_window_rules(params: dict[str, Any], expected: market.HistoryWindow) -> None:
    assert market.history_window(params, NOW) == expected


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"end": "latest", "style": "bars"}, "InvalidStyle"),
        ({"end": "latest", "style": "candles", "granularity": 61}, "InvalidGranularity"),
        ({"end": str(START), "start": START + 1}, "InvalidStartEnd"),
    ],
)
def test_history_window_refusals(params: dict[str, Any], code: str) -> None:
    refusal = market.history_window(params, NOW)
    assert isinstance(refusal, market.HistoryRefusal)
    assert refusal.code == code


def test_invalid_start_end_message() -> None:
    refusal = market.history_window({"end": "10", "start": 20}, NOW)
    assert refusal == market.HistoryRefusal("InvalidStartEnd", "Start time 20 must be before end time 10")


# --- request checks --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ({"ping": 1}, True),
        ({"ticks": ["R_50"], "passthrough": {"a": {"b": [1, 2.5, None, True]}}}, True),
        ({"bad key": 1}, False),
        ({"k" * 51: 1}, False),
        ({"ping": "x" * 301}, False),
        ({"ping": "line\nbreak is fine"}, True),
        ({"ping": "bell\x07"}, False),
        ({"ping": float("inf")}, False),
        ({"passthrough": {"bad/key": 1}}, False),
    ],
)
def test_sanity_check(value: Any, ok: bool) -> None:
    assert schema.sanity_check(value) is ok


def test_sanity_check_limits_depth() -> None:
    deep: Any = 1
    for _ in range(40):
        deep = {"a": deep}
    assert not schema.sanity_check(deep)


def test_find_action() -> None:
    assert schema.find_action({"req_id": 1, "time": 1}) == "time"
    assert schema.find_action({"proposal": 1}) is None


def test_validate_coerces_strings_to_numbers() -> None:
    params, details, general = schema.validate("ticks", {"ticks": "R_50", "subscribe": "1", "req_id": "4"})
    assert (details, general) == ({}, [])
    assert params == {"ticks": "R_50", "subscribe": 1, "req_id": 4}


def test_validate_reports_fields_and_unknown_properties() -> None:
    _params, details, general = schema.validate("ticks_history", {"ticks_history": "R_50", "count": "x", "foo": 1})
    assert details == {"end": "Missing property.", "count": "Expected integer - got string."}
    assert general == ["Properties not allowed: foo."]


def test_redact_hides_tokens() -> None:
    assert schema.redact({"authorize": "secret", "req_id": 1}) == {"authorize": "<not shown>", "req_id": 1}
    assert schema.redact({"authorize": "MULTI", "tokens": ["a"]})["tokens"] == "<not shown>"


def test_subscription_ids_are_uuid_shaped() -> None:
    assert session.new_subscription_id(0) == "00000000-0000-0000-0000-000000000000"
    assert UUID_RE.match(session.new_subscription_id((1 << 128) - 1))
    assert len(session.new_subscription_id(123456789)) == 36


# --- the session ---------------------------------------------------------------------


class Harness:
    """A session over a small market, with helpers that decode frames."""

    def __init__(self, **kwargs: Any) -> None:
        self.market = _market(prefill_s=60)
        self.site = session.SiteState()
        bits = iter(range(1, 10_000))
        kwargs.setdefault("accepted_tokens", ("good-token",))
        self.session = session.Session(self.market, self.site, random_bits=lambda _n: next(bits) * 7919, **kwargs)
        self.now = float(START)

    def call(self, request: Any) -> list[dict[str, Any]]:
        received = self.session.receive(json.dumps(request), self.now)
        frames = list(received.frames)
        if received.request is not None:
            frames += self.session.execute(received.request, self.now)
        return [self.decode(f) for f in frames]

    def advance(self, seconds: int) -> list[dict[str, Any]]:
        self.now += seconds
        out = []
        for tick in self.market.advance_to(int(self.now)):
            out += [self.decode(f) for f in self.session.on_tick(tick)]
        return out

    @staticmethod
    def decode(frame: str) -> dict[str, Any]:
        parsed = messages.parse(frame)
        assert not isinstance(parsed, messages.ProtocolFrameError), parsed
        decoded: dict[str, Any] = json.loads(frame)
        return decoded


def test_session_malformed_frame_closes_without_reply() -> None:
    h = Harness()
    for raw in ("{not json", b"\xff\xfe", '{"ping": NaN}'):
        received = h.session.receive(raw, h.now)
        assert received.frames == ()
        assert received.close == session.CloseDirective(1007, "malformed frame")
        assert received.label == "(malformed)"


def test_session_non_object_is_bad_request() -> None:
    assert Harness().call([1, 2]) == [
        {"msg_type": "error", "error": {"code": "BadRequest", "message": "The application sent an invalid request."}}
    ]


def test_session_unrecognised_request_keeps_envelope() -> None:
    (frame,) = Harness().call({"proposal": 1, "req_id": 9, "passthrough": {"x": 1}})
    assert frame == {
        "echo_req": {"proposal": 1, "req_id": 9, "passthrough": {"x": 1}},
        "error": {"code": "UnrecognisedRequest", "message": "Unrecognised request"},
        "msg_type": "error",
        "req_id": 9,
        "passthrough": {"x": 1},
    }


def test_session_sanity_check_failure() -> None:
    (frame,) = Harness().call({"ping": 1, "bad key": 2})
    assert frame["msg_type"] == "error"
    assert frame["error"] == {"code": "SanityCheckFailed", "message": "Parameters sanity check failed."}


def test_session_ping_envelope() -> None:
    (frame,) = Harness().call({"ping": 1, "req_id": 1, "passthrough": {"p": [1]}})
    assert frame == {
        "echo_req": {"ping": 1, "req_id": 1, "passthrough": {"p": [1]}},
        "msg_type": "ping",
        "ping": "pong",
        "req_id": 1,
        "passthrough": {"p": [1]},
    }


def test_session_time_is_the_simulated_epoch() -> None:
    h = Harness()
    h.now = START + 0.9
    assert h.call({"time": 1})[0]["time"] == START


def test_session_ping_time_rate_limit_then_close_1008() -> None:
    h = Harness()
    for i in range(10):
        received = h.session.receive(json.dumps({"ping" if i % 2 else "time": 1}), 0.05 * i)
        assert received.close is None
    received = h.session.receive(json.dumps({"ping": 1, "req_id": 11}), 0.6)
    assert received.close == session.CloseDirective(1008)
    (frame,) = [json.loads(f) for f in received.frames]
    assert frame["msg_type"] == "ping"
    assert frame["req_id"] == 11
    assert frame["error"] == {"code": "RateLimit", "message": "You have reached the rate limit for ping."}


def test_session_other_calls_do_not_count_against_ping_limit() -> None:
    h = Harness()
    for _ in range(30):
        assert h.session.receive(json.dumps({"active_symbols": "brief"}), 0.0).close is None


def test_session_input_validation_echoes_raw_request() -> None:
    (frame,) = Harness().call({"ticks": "R_50", "subscribe": 2, "req_id": 7})
    assert frame == {
        "echo_req": {"ticks": "R_50", "subscribe": 2, "req_id": 7},
        "error": {
            "code": "InputValidationFailed",
            "message": "Input validation failed: subscribe",
            "details": {"subscribe": "Not in enum list: 1."},
        },
        "msg_type": "ticks",
        "req_id": 7,
    }


def test_session_bad_req_id_is_a_validation_error_without_req_id() -> None:
    (frame,) = Harness().call({"ping": 1, "req_id": "abc"})
    assert frame["error"]["code"] == "InputValidationFailed"
    assert "req_id" in frame["error"]["details"]
    assert "req_id" not in frame


def test_session_ticks_stream() -> None:
    h = Harness()
    assert h.call({"ticks": "1HZ100V", "subscribe": 1, "req_id": 3, "passthrough": {"k": 1}}) == []  # no ack
    frames = h.advance(3)
    assert [f["tick"]["epoch"] for f in frames] == [START + 1, START + 2, START + 3]
    sub_id = frames[0]["subscription"]["id"]
    assert UUID_RE.match(sub_id)
    for frame in frames:
        assert frame["msg_type"] == "tick"
        assert frame["echo_req"] == {"ticks": "1HZ100V", "subscribe": 1, "req_id": 3, "passthrough": {"k": 1}}
        assert frame["req_id"] == 3
        assert frame["passthrough"] == {"k": 1}
        assert frame["subscription"] == {"id": sub_id}
        assert frame["tick"]["id"] == sub_id
        assert frame["tick"]["pip_size"] == 2
        assert frame["tick"]["symbol"] == "1HZ100V"


def test_session_ticks_list_gives_one_subscription_each() -> None:
    h = Harness()
    assert h.call({"ticks": ["1HZ100V", "R_50"], "req_id": 4}) == []
    frames = h.advance(2)
    ids = {f["tick"]["symbol"]: f["subscription"]["id"] for f in frames}
    assert set(ids) == {"1HZ100V", "R_50"}
    assert ids["1HZ100V"] != ids["R_50"]
    assert {f["req_id"] for f in frames} == {4}
    assert h.session.subscription_count == 2


def test_session_already_subscribed_and_invalid_symbol() -> None:
    h = Harness()
    h.call({"ticks": "R_50"})
    (dup,) = h.call({"ticks": "R_50", "req_id": 8})
    assert dup["msg_type"] == "tick"
    assert dup["error"] == {"code": "AlreadySubscribed", "message": "You are already subscribed to R_50"}
    (bad,) = h.call({"ticks": "R_12312312"})
    assert bad["msg_type"] == "tick"
    assert bad["error"] == {"code": "InvalidSymbol", "message": "Symbol R_12312312 invalid."}


def test_session_ticks_list_with_a_bad_symbol_subscribes_the_rest() -> None:
    h = Harness()
    frames = h.call({"ticks": ["R_50", "NOPE_1"]})
    assert [f["error"]["code"] for f in frames] == ["InvalidSymbol"]
    assert h.session.subscription_count == 1


def test_session_history_then_stream_without_gap_or_overlap() -> None:
    h = Harness()
    h.advance(10)
    (history,) = h.call({"ticks_history": "1HZ100V", "end": "latest", "count": 5, "subscribe": 1, "req_id": 4})
    assert history["msg_type"] == "history"
    assert history["pip_size"] == 2
    times = history["history"]["times"]
    assert times == list(range(START + 6, START + 11))
    stream = h.advance(2)
    assert [f["tick"]["epoch"] for f in stream] == [START + 11, START + 12]
    assert {f["subscription"]["id"] for f in stream} == {history["subscription"]["id"]}
    assert stream[0]["echo_req"]["ticks_history"] == "1HZ100V"
    # And a later history request returns exactly what was streamed.
    (later,) = h.call({"ticks_history": "1HZ100V", "end": "latest", "count": 2})
    assert later["history"]["times"] == [f["tick"]["epoch"] for f in stream]
    assert later["history"]["prices"] == [f["tick"]["quote"] for f in stream]
    assert "subscription" not in later


def test_session_ticks_and_ticks_history_streams_are_separate() -> None:
    h = Harness()
    h.call({"ticks": "R_50"})
    (history,) = h.call({"ticks_history": "R_50", "end": "latest", "count": 1, "subscribe": 1})
    assert history["msg_type"] == "history"
    (dup,) = h.call({"ticks_history": "R_50", "end": "latest", "count": 1, "subscribe": 1})
    assert dup["msg_type"] == "ticks_history"
    assert dup["error"]["code"] == "AlreadySubscribed"


@pytest.mark.parametrize(
    ("request_fields", "code"),
    [
        ({"ticks_history": "NOPE_1", "end": "latest"}, "InvalidSymbol"),
        ({"ticks_history": "R_50", "end": "latest", "style": "bars"}, "InvalidStyle"),
        ({"ticks_history": "R_50", "end": "latest", "style": "candles", "granularity": 7}, "InvalidGranularity"),
        ({"ticks_history": "R_50", "end": "100", "start": 200}, "InvalidStartEnd"),
    ],
)
def test_session_history_errors(request_fields: dict[str, Any], code: str) -> None:
    (frame,) = Harness().call(request_fields)
    assert frame["msg_type"] == "ticks_history"
    assert frame["error"]["code"] == code


def test_session_candles_and_ohlc_stream() -> None:
    h = Harness()
    h.advance(200)
    request = {"ticks_history": "R_100", "end": "latest", "count": 2, "style": "candles", "granularity": 60}
    (candles,) = h.call({**request, "subscribe": 1})
    assert candles["msg_type"] == "candles"
    assert len(candles["candles"]) == 2
    assert all(c["epoch"] % 60 == 0 for c in candles["candles"])
    assert all(isinstance(c["open"], float | int) for c in candles["candles"])
    (ohlc,) = h.advance(2)
    assert ohlc["msg_type"] == "ohlc"
    body = ohlc["ohlc"]
    assert all(isinstance(body[k], str) for k in ("open", "high", "low", "close"))
    assert re.match(r"^\d+\.\d{2}$", body["close"])
    assert body["open_time"] == body["epoch"] - body["epoch"] % 60
    assert body["granularity"] == 60 and body["symbol"] == "R_100" and body["pip_size"] == 2
    assert body["id"] == ohlc["subscription"]["id"] == candles["subscription"]["id"]
    last = candles["candles"][-1]
    if last["epoch"] == body["open_time"]:  # same bucket: the stream continues the last candle
        assert float(body["open"]) == last["open"]
        assert float(body["high"]) >= last["high"]


def test_session_forget_and_forget_all() -> None:
    h = Harness()
    h.call({"ticks": ["R_50", "1HZ100V"]})
    h.call({"ticks_history": "R_100", "end": "latest", "style": "candles", "subscribe": 1})
    h.call({"website_status": 1, "subscribe": 1})
    ids = h.session.subscription_ids()
    (forgot,) = h.call({"forget": ids[0], "req_id": 2})
    assert forgot == {"echo_req": {"forget": ids[0], "req_id": 2}, "forget": 1, "msg_type": "forget", "req_id": 2}
    (again,) = h.call({"forget": ids[0]})
    assert again["forget"] == 0
    (ticks_gone,) = h.call({"forget_all": "ticks"})
    assert ticks_gone["forget_all"] == [ids[1]]
    (rest,) = h.call({"forget_all": ["candles", "website_status"]})
    assert sorted(rest["forget_all"]) == sorted(ids[2:])
    (empty,) = h.call({"forget_all": "proposal"})
    assert empty["forget_all"] == []
    assert h.advance(4) == []


def test_session_forget_validation() -> None:
    h = Harness()
    assert h.call({"forget": "short"})[0]["error"]["code"] == "InputValidationFailed"
    assert h.call({"forget_all": "bogus"})[0]["error"]["code"] == "InputValidationFailed"


def test_session_website_status_subscription_and_push() -> None:
    h = Harness()
    (status,) = h.call({"website_status": 1, "subscribe": 1, "req_id": 5})
    assert status["msg_type"] == "website_status"
    assert status["website_status"]["site_status"] == "up"
    assert "max_requestes_general" in status["website_status"]["api_call_limits"]
    (dup,) = h.call({"website_status": 1, "subscribe": 1})
    assert dup["error"] == {"code": "AlreadySubscribed", "message": "You are already subscribed to website_status"}
    h.site.status, h.site.message = "updating", faults.DEPLOY_MESSAGE
    (push,) = [json.loads(f) for f in h.session.on_site_status()]
    assert push["subscription"] == status["subscription"]
    assert push["req_id"] == 5
    assert push["website_status"]["site_status"] == "updating"
    assert push["website_status"]["message"] == (
        "We're updating our site in a short while. Some services may be temporarily unavailable."
    )


def test_session_website_status_without_subscribe() -> None:
    h = Harness()
    (status,) = h.call({"website_status": 1})
    assert "subscription" not in status
    assert h.session.on_site_status() == []


def test_session_authorize() -> None:
    h = Harness()
    (ok,) = h.call({"authorize": "good-token", "req_id": 1})
    assert ok["echo_req"] == {"authorize": "<not shown>", "req_id": 1}
    assert ok["authorize"]["loginid"] == "VRTC90000028"
    assert "good-token" not in json.dumps(ok)
    assert h.session.authorized
    (bad,) = Harness().call({"authorize": "other-token"})
    assert bad["msg_type"] == "authorize"
    assert bad["error"] == {"code": "InvalidToken", "message": "The token is invalid."}
    assert bad["echo_req"] == {"authorize": "<not shown>"}
    (multi,) = Harness().call({"authorize": "good-token", "tokens": ["good-token"]})
    assert multi["error"]["message"] == "When using multiple tokens, set authorize to MULTI."
    (multi_ok,) = Harness().call({"authorize": "MULTI", "tokens": ["good-token"]})
    assert multi_ok["msg_type"] == "authorize" and "error" not in multi_ok


def test_session_active_symbols() -> None:
    h = Harness()
    (brief,) = h.call({"active_symbols": "brief", "product_type": "basic"})
    items = brief["active_symbols"]
    assert [i["display_name"] for i in items] == sorted(i["display_name"] for i in items)
    assert set(items[0]) == {
        "allow_forward_starting",
        "display_name",
        "display_order",
        "exchange_is_open",
        "is_trading_suspended",
        "market",
        "market_display_name",
        "pip",
        "subgroup",
        "subgroup_display_name",
        "submarket",
        "submarket_display_name",
        "symbol",
        "symbol_type",
    }
    by_symbol = {i["symbol"]: i for i in items}
    assert by_symbol["R_50"]["pip"] == 0.0001
    assert by_symbol["1HZ100V"]["display_name"] == "Volatility 100 (1s) Index"
    (full,) = h.call({"active_symbols": "full"})
    item = next(i for i in full["active_symbols"] if i["symbol"] == "R_100")
    assert {"delay_amount", "exchange_name", "spot", "spot_age", "spot_percentage_change", "spot_time"} <= set(item)
    assert item["spot"] == h.market.latest("R_100").quote  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("action", "code", "msg_type", "message"),
    [
        ("ticks", "RateLimit", "ticks", "You have reached the rate limit for ticks."),
        ("ticks", "WrongResponse", "tick", "Sorry, an error occurred while processing your request."),
        ("time", "CallError", "time", "Sorry, an error occurred while processing your request."),
        ("ticks_history", "Timeout", "ticks_history", "Timeout"),
    ],
)
def test_session_error_replies(action: str, code: str, msg_type: str, message: str) -> None:
    request = session.CallRequest(action, {action: "R_50" if action.startswith("ticks") else 1, "req_id": 3}, 3, None)
    frame = json.loads(Harness().session.error_reply(request, code))
    assert frame["msg_type"] == msg_type
    assert frame["error"] == {"code": code, "message": message}
    assert frame["req_id"] == 3


def test_session_forget_everything_silences_streams() -> None:
    h = Harness()
    h.call({"ticks": "1HZ100V"})
    ids = h.session.forget_everything()
    assert len(ids) == 1
    assert h.advance(2) == []
    assert h.call({"forget": ids[0]})[0]["forget"] == 0


def test_session_frames_parse_with_the_client_codec() -> None:
    h = Harness()
    h.call({"ticks": "R_50", "req_id": 1})
    h.call({"ticks_history": "R_100", "end": "latest", "style": "candles", "subscribe": 1, "req_id": 2})
    parsed = [messages.parse(json.dumps(f)) for f in h.advance(2)]
    assert {type(m) for m in parsed} == {messages.TickMessage, messages.Ohlc}
    tick = next(m for m in parsed if isinstance(m, messages.TickMessage))
    assert isinstance(tick.tick, Tick) and tick.req_id == 1


# --- control interface parsing ---------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("POST", "/control/drop_all", b"", control.ControlCommand("drop_all", {})),
        (
            "POST",
            "/control/drop_all",
            b'{"code": 1011, "reason": "x"}',
            control.ControlCommand("drop_all", {"code": 1011, "reason": "x"}),
        ),
        ("POST", "/control/drop_all", b'{"code": null}', control.ControlCommand("drop_all", {"code": None})),
        (
            "POST",
            "/control/refuse_connections",
            b'{"seconds": 2}',
            control.ControlCommand("refuse_connections", {"seconds": 2.0}),
        ),
        (
            "POST",
            "/control/inject_error",
            b'{"code": "WrongResponse", "count": 2}',
            control.ControlCommand("inject_error", {"code": "WrongResponse", "count": 2}),
        ),
        (
            "POST",
            "/control/inject_error",
            b'{"code": "RateLimit", "count": 1, "pages_only": true}',
            control.ControlCommand("inject_error", {"code": "RateLimit", "count": 1, "pages_only": True}),
        ),
        ("POST", "/control/drop_replies?x=1", b'{"count": 3}', control.ControlCommand("drop_replies", {"count": 3})),
        ("POST", "/control/advance", b'{"ticks": 12000}', control.ControlCommand("advance", {"ticks": 12_000})),
        ("GET", "/control/stats", b"", control.ControlCommand("stats", {})),
    ],
)
def test_parse_control_accepts(method: str, path: str, body: bytes, expected: control.ControlCommand) -> None:
    assert control.parse_control(method, path, body) == expected


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/control/nope", b"", 404),
        ("POST", "/control", b"", 404),
        ("GET", "/control/drop_all", b"", 405),
        ("POST", "/control/stats", b"", 405),
        ("POST", "/control/drop_all", b"{", 400),
        ("POST", "/control/drop_all", b"[1]", 400),
        ("POST", "/control/pause_feed", b"[]", 400),  # empty, yet not an object: not taken as no body
        ("POST", "/control/drop_all", b"\xff", 400),
        ("POST", "/control/drop_all", b'{"code": 1006}', 400),
        ("POST", "/control/drop_all", b'{"code": "1000"}', 400),
        ("POST", "/control/drop_all", b'{"extra": 1}', 400),
        ("POST", "/control/refuse_connections", b"{}", 400),
        ("POST", "/control/refuse_connections", b'{"seconds": -1}', 400),
        ("POST", "/control/pause_feed", b'{"enabled": 1}', 400),
        ("POST", "/control/inject_error", b'{"code": "Boom"}', 400),
        ("POST", "/control/drop_replies", b'{"count": 1, "enabled": true}', 400),
        ("POST", "/control/set_site_status", b'{"site_status": "sideways"}', 400),
        ("POST", "/control/advance", b"{}", 400),
        ("POST", "/control/advance", b'{"ticks": 0}', 400),
        ("POST", "/control/advance", b'{"ticks": 86401}', 400),
        ("POST", "/control/advance", b'{"ticks": 1.5}', 400),
    ],
)
def test_parse_control_rejects(method: str, path: str, body: bytes, status: int) -> None:
    result = control.parse_control(method, path, body)
    assert isinstance(result, control.ControlRejection)
    assert result.status == status


class FakeTarget:
    """Records the control calls; the counters are a fixed dict."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []

    def __getattr__(self, name: str) -> Any:
        async def record_async(*args: Any) -> int:
            self.calls.append((name, args))
            return 1

        def record(*args: Any) -> Any:
            self.calls.append((name, args))
            if name == "advance" and args[0] > 100:
                raise ValueError("too long for these symbols")
            return {"to_epoch": 1} if name == "advance" else None

        return record_async if name in ("drop_all", "send_malformed_frame", "deploy", "restart") else record

    def stats(self) -> Any:
        return SimpleNamespace(to_dict=lambda: {"connection_count": 0})


def _control_client(target: FakeTarget, peer: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=control.control_app(target), client=(peer, 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://sim/control")


async def test_control_app_runs_commands() -> None:
    target = FakeTarget()
    async with _control_client(target) as http:
        dropped = await http.post("/drop_all", json={"code": 4001, "reason": "x"})
        paused = await http.post("/pause_feed", json={"enabled": True})
        stats = await http.get("/stats")
    assert dropped.json() == {"ok": True, "action": "drop_all", "result": {"dropped": 1}}
    assert paused.json() == {"ok": True, "action": "pause_feed", "result": {"connection_count": 0}}
    assert stats.json()["result"] == {"connection_count": 0}
    assert target.calls == [("drop_all", (4001, "x")), ("pause_feed", (True,))]


async def test_control_app_advances_the_market_and_refuses_what_the_target_refuses() -> None:
    target = FakeTarget()
    async with _control_client(target) as http:
        advanced = await http.post("/advance", json={"ticks": 12})
        refused = await http.post("/advance", json={"ticks": 1000})
    assert advanced.json() == {"ok": True, "action": "advance", "result": {"to_epoch": 1}}
    assert refused.status_code == 400 and "too long" in refused.json()["error"]
    assert target.calls == [("advance", (12,)), ("advance", (1000,))]


async def test_control_app_answers_json_errors() -> None:
    target = FakeTarget()
    async with _control_client(target) as http:
        elsewhere = await http.get("http://sim/other")
        too_large = await http.post("/drop_all", content=b"x" * (control.CONTROL_MAX_BODY_BYTES + 1))
        wrong_method = await http.delete("/drop_all")
        bad_body = await http.post("/drop_all", content=b"{oops")
    responses = (elsewhere, too_large, wrong_method, bad_body)
    assert [r.status_code for r in responses] == [404, 413, 405, 400]
    assert all(r.json()["ok"] is False for r in responses)
    assert target.calls == []


async def test_control_app_refuses_non_loopback_peers() -> None:
    target = FakeTarget()
    async with _control_client(target, peer="10.0.0.1") as http:
        response = await http.post("/drop_all", json={})
    assert response.status_code == 403
    assert target.calls == []


def test_loopback_checks() -> None:
    assert control.is_loopback_peer(("127.0.0.1", 5000))
    assert control.is_loopback_peer(("::1", 5000, 0, 0))
    assert not control.is_loopback_peer(("10.0.0.1", 5000))
    assert not control.is_loopback_peer(None)
    assert (
        server.is_loopback_host("localhost") and server.is_loopback_host("127.0.0.2") and server.is_loopback_host("::1")
    )
    assert not server.is_loopback_host("0.0.0.0") and not server.is_loopback_host("example.com")


def test_close_codes() -> None:
    assert faults.valid_close_code(1000) and faults.valid_close_code(1008) and faults.valid_close_code(4000)
    assert not faults.valid_close_code(1005) and not faults.valid_close_code(1006) and not faults.valid_close_code(999)


def test_cli_refuses_remote_hosts(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--host", "0.0.0.0"]) == 2
    assert "--allow-remote" in capsys.readouterr().err


def test_simulator_refuses_a_remote_host_unless_allowed() -> None:
    with pytest.raises(ValueError, match="allow_remote"):
        server.DerivSimulator("0.0.0.0", history_prefill_s=0)
    assert server.DerivSimulator("0.0.0.0", allow_remote=True, history_prefill_s=0).host == "0.0.0.0"
    assert server.DerivSimulator("localhost", history_prefill_s=0).host == "localhost"


def test_simulator_without_a_control_port_has_no_control_url() -> None:
    with pytest.raises(RuntimeError):
        _ = server.DerivSimulator(history_prefill_s=0).control_url
