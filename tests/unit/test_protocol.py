"""The Deriv v3 codec: builders, every message type, every malformed case.

Example frames are copied from shared/deriv-protocol.md (section numbers in test names).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend_core.deriv import messages as m
from backend_core.deriv import protocol as p
from backend_core.errors import DerivAPIError, ProtocolError
from backend_core.events import Tick

SUB_ID = "b4d42748-0744-c46b-f59b-cb7dd936bafa"

# --- builders ------------------------------------------------------------------------


def test_encode_is_compact_json() -> None:
    assert p.encode({"ping": 1, "req_id": 1}) == '{"ping":1,"req_id":1}'


def test_encode_refuses_nan() -> None:
    with pytest.raises(ValueError):
        p.encode({"x": math.nan})


def test_ping_and_time() -> None:
    assert p.ping(1) == {"ping": 1, "req_id": 1}
    assert p.time(2) == {"time": 1, "req_id": 2}


def test_passthrough_is_copied() -> None:
    request = p.ping(3, passthrough={"a": [1]})
    assert request == {"ping": 1, "passthrough": {"a": [1]}, "req_id": 3}


@pytest.mark.parametrize("bad", [True, "1", 1.0, None])
def test_req_id_must_be_an_integer(bad: Any) -> None:
    with pytest.raises(ValueError, match="req_id"):
        p.ping(bad)


def test_passthrough_must_be_an_object() -> None:
    with pytest.raises(ValueError, match="passthrough"):
        p.ping(1, passthrough=[1])  # type: ignore[arg-type]


def test_ticks_single_and_list() -> None:
    assert p.ticks("R_50", 3) == {"ticks": "R_50", "subscribe": 1, "req_id": 3}
    assert p.ticks(["R_50", "1HZ100V"], 4) == {"ticks": ["R_50", "1HZ100V"], "subscribe": 1, "req_id": 4}


@pytest.mark.parametrize("bad", ["R", "R-50", "x" * 31, "", "R 50"])
def test_ticks_rejects_bad_symbols(bad: str) -> None:
    with pytest.raises(ValueError, match="symbol"):
        p.ticks(bad, 1)


def test_ticks_rejects_empty_list() -> None:
    with pytest.raises(ValueError):
        p.ticks([], 1)


def test_ticks_history_defaults() -> None:
    assert p.ticks_history("R_50", 4) == {"ticks_history": "R_50", "end": "latest", "style": "ticks", "req_id": 4}


def test_ticks_history_all_fields() -> None:
    request = p.ticks_history(
        "R_100",
        5,
        end=1700000100,
        start=1700000000,
        count=2,
        style="candles",
        granularity=60,
        subscribe=True,
        adjust_start_time=True,
        passthrough={"k": "v"},
    )
    assert request == {
        "ticks_history": "R_100",
        "end": "1700000100",
        "start": 1700000000,
        "count": 2,
        "style": "candles",
        "granularity": 60,
        "adjust_start_time": 1,
        "subscribe": 1,
        "passthrough": {"k": "v"},
        "req_id": 5,
    }


def test_ticks_history_end_as_digit_string() -> None:
    assert p.ticks_history("R_50", 1, end="1587556950")["end"] == "1587556950"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"end": "yesterday"}, "end"),
        ({"end": -1}, "end"),
        ({"start": -5}, "start"),
        ({"count": 0}, "count"),
        ({"count": 5001}, "count"),
        ({"style": "bars"}, "style"),
        ({"style": "candles", "granularity": 61}, "granularity"),
        ({"granularity": 60}, "candles only"),
    ],
)
def test_ticks_history_rejects_bad_arguments(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        p.ticks_history("R_50", 1, **kwargs)


def test_forget() -> None:
    assert p.forget(SUB_ID, 6) == {"forget": SUB_ID, "req_id": 6}
    with pytest.raises(ValueError):
        p.forget("short", 6)


def test_forget_all() -> None:
    assert p.forget_all("ticks", 7) == {"forget_all": "ticks", "req_id": 7}
    assert p.forget_all(["ticks", "candles"], 8) == {"forget_all": ["ticks", "candles"], "req_id": 8}
    with pytest.raises(ValueError):
        p.forget_all("bogus", 9)
    with pytest.raises(ValueError):
        p.forget_all([], 9)


def test_active_symbols() -> None:
    assert p.active_symbols(9) == {"active_symbols": "brief", "req_id": 9}
    assert p.active_symbols(9, kind="full", product_type="basic") == {
        "active_symbols": "full",
        "product_type": "basic",
        "req_id": 9,
    }
    with pytest.raises(ValueError):
        p.active_symbols(9, kind="medium")  # type: ignore[arg-type]


def test_authorize_never_repeats_the_token_in_errors() -> None:
    assert p.authorize("abc-DEF_123", 10) == {"authorize": "abc-DEF_123", "req_id": 10}
    with pytest.raises(ValueError) as info:
        p.authorize("secret token!", 10)
    assert "secret" not in str(info.value)


def test_website_status() -> None:
    assert p.website_status(11) == {"website_status": 1, "req_id": 11}
    assert p.website_status(12, subscribe=True) == {"website_status": 1, "req_id": 12, "subscribe": 1}


def test_builders_produce_encodable_requests() -> None:
    for request in (
        p.ping(1),
        p.time(1),
        p.ticks(["R_50"], 1),
        p.ticks_history("R_50", 1, count=10, subscribe=True),
        p.forget(SUB_ID, 1),
        p.forget_all("ticks", 1),
        p.active_symbols(1),
        p.authorize("tok", 1),
        p.website_status(1, subscribe=True),
    ):
        assert json.loads(p.encode(request)) == request


# --- parsing the spec's example frames -------------------------------------------------


def test_parse_ping_3_1() -> None:
    msg = m.parse('{"echo_req":{"ping":1,"req_id":1},"msg_type":"ping","ping":"pong","req_id":1}')
    assert msg == m.Pong(req_id=1)
    assert msg.msg_type == "ping"


def test_parse_time_3_2() -> None:
    msg = m.parse('{"echo_req":{"time":1},"msg_type":"time","time":1587544006}')
    assert msg == m.Time(epoch=1587544006, req_id=None)
    assert msg.msg_type == "time"


TICK_FRAME = """{"echo_req":{"ticks":"R_50","subscribe":1,"req_id":3},
 "msg_type":"tick","req_id":3,
 "subscription":{"id":"b4d42748-0744-c46b-f59b-cb7dd936bafa"},
 "tick":{"ask":218.1026,"bid":218.0826,"epoch":1587547610,
         "id":"b4d42748-0744-c46b-f59b-cb7dd936bafa",
         "pip_size":4,"quote":218.0926,"symbol":"R_50"}}"""


def test_parse_tick_3_3() -> None:
    msg = m.parse(TICK_FRAME)
    assert isinstance(msg, m.TickMessage)
    assert msg.tick == Tick(symbol="R_50", epoch=1587547610, quote=218.0926, pip_size=4, bid=218.0826, ask=218.1026)
    assert msg.subscription_id == SUB_ID
    assert msg.req_id == 3
    assert msg.msg_type == "tick"


def test_parse_tick_from_bytes() -> None:
    assert isinstance(m.parse(TICK_FRAME.encode()), m.TickMessage)


def test_parse_tick_integer_quote_becomes_float() -> None:
    frame = json.loads(TICK_FRAME)
    frame["tick"]["quote"] = 218
    msg = m.parse(json.dumps(frame))
    assert isinstance(msg, m.TickMessage)
    assert msg.tick.quote == 218.0 and type(msg.tick.quote) is float


def test_parse_tick_without_subscription_uses_tick_id() -> None:
    frame = json.loads(TICK_FRAME)
    del frame["subscription"]
    msg = m.parse(json.dumps(frame))
    assert isinstance(msg, m.TickMessage)
    assert msg.subscription_id == SUB_ID


def test_parse_tick_without_bid_ask() -> None:
    frame = json.loads(TICK_FRAME)
    del frame["tick"]["bid"], frame["tick"]["ask"]
    msg = m.parse(json.dumps(frame))
    assert isinstance(msg, m.TickMessage)
    assert msg.tick.bid is None and msg.tick.ask is None


HISTORY_FRAME = """{"echo_req":{"ticks_history":"R_50","end":"latest","count":3,"style":"ticks",
   "subscribe":1,"req_id":4},
 "history":{"prices":[218.6404,218.7205,218.7151],"times":[1587556946,1587556948,1587556950]},
 "msg_type":"history","pip_size":4,"req_id":4,
 "subscription":{"id":"0f6f2b6e-1d3c-4b1a-9e1c-5a2b3c4d5e6f"}}"""


def test_parse_history_3_4() -> None:
    msg = m.parse(HISTORY_FRAME)
    assert msg == m.History(
        prices=(218.6404, 218.7205, 218.7151),
        times=(1587556946, 1587556948, 1587556950),
        pip_size=4,
        symbol="R_50",
        subscription_id="0f6f2b6e-1d3c-4b1a-9e1c-5a2b3c4d5e6f",
        req_id=4,
    )
    assert isinstance(msg, m.History)
    ticks = msg.to_ticks()
    assert ticks[0] == Tick("R_50", 1587556946, 218.6404, 4, backfill=True)
    assert len(ticks) == 3


def test_history_prices_given_as_integers_are_floats_and_every_value_is_checked() -> None:
    frame = json.loads(HISTORY_FRAME)
    frame["history"]["prices"] = [218, 218.7205, 219]
    msg = m.parse(json.dumps(frame))
    assert isinstance(msg, m.History) and msg.prices == (218.0, 218.7205, 219.0)
    assert all(type(p) is float for p in msg.prices) and all(type(t.quote) is float for t in msg.to_ticks())
    # One bad value anywhere in a long page is named, whichever check finds it.
    long_page = {"prices": [1.5] * 4999, "times": list(range(1, 5000))}
    for key, bad, fragment in [
        ("prices", True, "history.prices[] is not a number"),
        ("prices", "1.5", "history.prices[] is not a number"),
        ("prices", 1e999, "history.prices[] is not a finite number"),
        ("times", True, "history.times[] is not an integer"),
        ("times", 7.0, "history.times[] is not an integer"),
    ]:
        page = {k: list(v) for k, v in long_page.items()}
        page[key][2500] = bad
        raw = json.dumps({"msg_type": "history", "history": page}).replace("Infinity", "1e999")
        assert _frame_error(raw).reason == fragment, (key, bad)


def test_history_without_symbol_gives_no_ticks() -> None:
    frame = json.loads(HISTORY_FRAME)
    del frame["echo_req"]
    msg = m.parse(json.dumps(frame))
    assert isinstance(msg, m.History)
    assert msg.symbol is None and msg.to_ticks() == ()


CANDLES_FRAME = """{"echo_req":{"ticks_history":"R_100","end":"latest","count":2,"style":"candles","granularity":60},
 "candles":[{"epoch":1700000040,"open":1234.56,"high":1235.10,"low":1234.01,"close":1234.88},
            {"epoch":1700000100,"open":1234.88,"high":1236.00,"low":1234.70,"close":1235.42}],
 "msg_type":"candles","pip_size":2}"""


def test_parse_candles_3_4() -> None:
    msg = m.parse(CANDLES_FRAME)
    assert msg == m.Candles(
        candles=(
            m.Candle(1700000040, 1234.56, 1235.10, 1234.01, 1234.88),
            m.Candle(1700000100, 1234.88, 1236.00, 1234.70, 1235.42),
        ),
        pip_size=2,
        symbol="R_100",
        subscription_id=None,
        req_id=None,
    )


OHLC_FRAME = """{"echo_req":{"ticks_history":"R_100","end":"latest","count":2,"style":"candles","granularity":60,
   "subscribe":1},
 "msg_type":"ohlc","subscription":{"id":"b4d42748-0744-c46b-f59b-cb7dd936bafa"},
 "ohlc":{"close":"1235.61","epoch":1700000113,"granularity":60,"high":"1236.00","id":"b4d42748-0744-c46b-f59b-cb7dd936bafa",
         "low":"1234.70","open":"1234.88","open_time":1700000100,"pip_size":2,"symbol":"R_100"}}"""


def test_parse_ohlc_3_4_strings_to_floats() -> None:
    msg = m.parse(OHLC_FRAME)
    assert msg == m.Ohlc(
        symbol="R_100",
        epoch=1700000113,
        open_time=1700000100,
        granularity=60,
        open=1234.88,
        high=1236.0,
        low=1234.70,
        close=1235.61,
        pip_size=2,
        subscription_id=SUB_ID,
        req_id=None,
    )


def test_parse_forget_3_5() -> None:
    frame = '{"echo_req":{"forget":"d1ee7d0d-3ca9-fbb4-720b-5312d487185b"},"forget":1,"msg_type":"forget"}'
    assert m.parse(frame) == m.Forget(stopped=True)
    assert m.parse(frame.replace('"forget":1', '"forget":0')) == m.Forget(stopped=False)


def test_parse_forget_all_3_6() -> None:
    frame = (
        '{"echo_req":{"forget_all":"ticks"},"forget_all":["ea8d3223-9922-5552-4309-6a1e97522f05"],'
        '"msg_type":"forget_all"}'
    )
    assert m.parse(frame) == m.ForgetAll(subscription_ids=("ea8d3223-9922-5552-4309-6a1e97522f05",))


ACTIVE_SYMBOLS_FRAME = """{"active_symbols":[
  {"allow_forward_starting":0,"display_name":"Volatility 100 (1s) Index","display_order":1,
   "exchange_is_open":1,"is_trading_suspended":0,"market":"synthetic_index",
   "market_display_name":"Derived","pip":0.01,"subgroup":"synthetics",
   "subgroup_display_name":"Synthetics","submarket":"random_index",
   "submarket_display_name":"Continuous Indices","symbol":"1HZ100V","symbol_type":"stockindex"}],
 "echo_req":{"active_symbols":"brief","product_type":"basic"},"msg_type":"active_symbols"}"""


def test_parse_active_symbols_3_7() -> None:
    msg = m.parse(ACTIVE_SYMBOLS_FRAME)
    assert msg == m.ActiveSymbols(
        symbols=(
            m.ActiveSymbol(
                symbol="1HZ100V",
                display_name="Volatility 100 (1s) Index",
                pip=0.01,
                market="synthetic_index",
                submarket="random_index",
                exchange_is_open=True,
                is_trading_suspended=False,
            ),
        )
    )


def test_parse_active_symbols_full_fields() -> None:
    frame = json.loads(ACTIVE_SYMBOLS_FRAME)
    frame["active_symbols"][0].update({"spot": 910.12, "spot_time": "1700000000", "spot_age": "1"})
    msg = m.parse(json.dumps(frame))
    assert isinstance(msg, m.ActiveSymbols)
    assert msg.symbols[0].spot == 910.12 and msg.symbols[0].spot_time == 1700000000


AUTHORIZE_FRAME = """{"authorize":{"account_list":[{"currency":"USD","is_disabled":0,"is_virtual":1,
   "landing_company_name":"virtual","loginid":"VRTC90000028"}],
  "balance":10000,"country":"za","currency":"USD","email":"test@site.com","fullname":"",
  "is_virtual":1,"landing_company_fullname":"Deriv Limited","landing_company_name":"virtual",
  "local_currencies":{},"loginid":"VRTC90000028","scopes":["read","trade"],
  "upgradeable_landing_companies":[],"user_id":29},
 "echo_req":{"authorize":"<not shown>"},"msg_type":"authorize"}"""


def test_parse_authorize_3_8_keeps_no_token() -> None:
    msg = m.parse(AUTHORIZE_FRAME)
    assert msg == m.Authorize(
        loginid="VRTC90000028", currency="USD", is_virtual=True, scopes=("read", "trade"), balance=10000.0
    )
    assert "not shown" not in repr(msg)


WEBSITE_STATUS_FRAME = """{"echo_req":{"website_status":1,"subscribe":1},"msg_type":"website_status",
 "subscription":{"id":"b4d42748-0744-c46b-f59b-cb7dd936bafa"},
 "website_status":{"api_call_limits":{
    "max_proposal_subscription":{"applies_to":"subscribing to proposal concurrently","max":5},
    "max_requestes_general":{"applies_to":"rest of calls","hourly":14400,"minutely":180},
    "max_requests_outcome":{"applies_to":"portfolio, statement and proposal","hourly":1500,"minutely":25},
    "max_requests_pricing":{"applies_to":"proposal and proposal_open_contract","hourly":3600,"minutely":80}},
  "clients_country":"de","currencies_config":{"USD":{"fractional_digits":2,"is_deposit_suspended":0,
    "is_suspended":0,"is_withdrawal_suspended":0,"name":"US Dollar","stake_default":10,"type":"fiat",
    "transfer_between_accounts":{"fees":{},"limits":{"min":1}}}},
  "site_status":"up","supported_languages":["EN"],"terms_conditions_version":"Version 48 2019-05-10"}}"""


def test_parse_website_status_3_9() -> None:
    msg = m.parse(WEBSITE_STATUS_FRAME)
    assert msg == m.WebsiteStatus(site_status="up", message=None, subscription_id=SUB_ID)


def test_parse_website_status_deploy_notice() -> None:
    frame = json.loads(WEBSITE_STATUS_FRAME)
    message = "We're updating our site in a short while. Some services may be temporarily unavailable."
    frame["website_status"].update({"site_status": "updating", "message": message})
    msg = m.parse(json.dumps(frame))
    assert isinstance(msg, m.WebsiteStatus)
    assert (msg.site_status, msg.message) == ("updating", message)


# --- errors --------------------------------------------------------------------------


def test_parse_input_validation_error_with_details_2() -> None:
    frame = """{"echo_req":{"ticks":"R_50","subscribe":2,"req_id":7},
     "error":{"code":"InputValidationFailed","message":"Input validation failed: subscribe",
              "details":{"subscribe":"Not in enum list: 1."}},
     "msg_type":"ticks","req_id":7}"""
    msg = m.parse(frame)
    assert isinstance(msg, m.ApiError)
    assert msg.code == "InputValidationFailed"
    assert msg.message == "Input validation failed: subscribe"
    assert msg.details == {"subscribe": "Not in enum list: 1."}
    assert msg.msg_type == "ticks"
    assert msg.req_id == 7
    assert msg.echo_req == {"ticks": "R_50", "subscribe": 2, "req_id": 7}
    exc = msg.to_exception()
    assert isinstance(exc, DerivAPIError)
    assert (exc.code, exc.msg_type, exc.details) == (
        "InputValidationFailed",
        "ticks",
        {"subscribe": "Not in enum list: 1."},
    )


@pytest.mark.parametrize(
    ("frame", "code", "msg_type"),
    [
        (
            '{"msg_type":"error","error":{"code":"BadRequest","message":"The application sent an invalid request."}}',
            "BadRequest",
            "error",
        ),
        (
            '{"msg_type":"error","error":{"code":"UnrecognisedRequest","message":"Unrecognised request"}}',
            "UnrecognisedRequest",
            "error",
        ),
        (
            '{"msg_type":"tick","echo_req":{"ticks":"R_50"},'
            '"error":{"code":"AlreadySubscribed","message":"You are already subscribed to R_50"}}',
            "AlreadySubscribed",
            "tick",
        ),
        (
            '{"msg_type":"tick","error":{"code":"MarketIsClosed","message":"This market is presently closed.",'
            '"details":{"field":"symbol"}}}',
            "MarketIsClosed",
            "tick",
        ),
        (
            '{"msg_type":"ping","error":{"code":"RateLimit","message":"You have reached the rate limit for ping."}}',
            "RateLimit",
            "ping",
        ),
        (
            '{"msg_type":"authorize","error":{"code":"InvalidToken","message":"The token is invalid."}}',
            "InvalidToken",
            "authorize",
        ),
    ],
)
def test_parse_error_frames_4(frame: str, code: str, msg_type: str) -> None:
    msg = m.parse(frame)
    assert isinstance(msg, m.ApiError)
    assert (msg.code, msg.msg_type) == (code, msg_type)


def test_error_without_details_converts_to_empty_details() -> None:
    msg = m.parse('{"msg_type":"time","error":{"code":"WrongResponse","message":"Sorry"},"req_id":2}')
    assert isinstance(msg, m.ApiError)
    assert msg.details is None and msg.req_id == 2
    assert msg.to_exception().details == {}


def test_upstream_error_codes_and_messages_are_clipped_before_anyone_sees_them() -> None:
    frame = {
        "msg_type": "tick" * 100,
        "error": {"code": "Bad\nCode " + "X" * 500, "message": "line one\nline two " + "m" * 1000},
    }
    msg = m.parse(json.dumps(frame))
    assert isinstance(msg, m.ApiError)
    assert len(msg.code) <= 64 and re.fullmatch(r"[A-Za-z0-9_.-]+", msg.code)
    assert msg.code.startswith("Bad_Code_")
    assert len(msg.msg_type) <= 64
    assert len(msg.message) <= 300 and "\n" not in msg.message and msg.message.startswith("line one line two")
    assert m.parse('{"msg_type":"x","error":{"code":"","message":""}}').code == "Unknown"  # type: ignore[union-attr]


def test_the_website_status_banner_and_state_are_clipped() -> None:
    frame = {"msg_type": "website_status", "website_status": {"site_status": "up\u2028" * 50, "message": "b" * 999}}
    msg = m.parse(json.dumps(frame))
    assert isinstance(msg, m.WebsiteStatus)
    assert msg.site_status is not None and len(msg.site_status) <= 64 and "\u2028" not in msg.site_status
    assert msg.message is not None and len(msg.message) == 300 and msg.message.endswith("…")


def test_unknown_msg_type_is_kept() -> None:
    msg = m.parse('{"msg_type":"proposal","proposal":{"id":"x"},"req_id":5}')
    assert isinstance(msg, m.UnknownMessage)
    assert msg.msg_type == "proposal" and msg.req_id == 5 and msg.data["proposal"] == {"id": "x"}


# --- malformed frames ----------------------------------------------------------------


def _frame_error(raw: str | bytes) -> m.ProtocolFrameError:
    msg = m.parse(raw)
    assert isinstance(msg, m.ProtocolFrameError), msg
    assert isinstance(msg.error, ProtocolError)
    return msg


def test_not_json() -> None:
    msg = _frame_error("{not json")
    assert "not valid JSON" in msg.reason
    assert msg.error.raw == "{not json"
    assert msg.msg_type is None and msg.req_id is None


def test_invalid_utf8() -> None:
    assert "UTF-8" in _frame_error(b'{"msg_type":"ping","ping":"\xff"}').reason


def test_json_nan_is_rejected() -> None:
    assert "JSON" in _frame_error('{"msg_type":"tick","tick":{"quote":NaN}}').reason


@pytest.mark.parametrize("raw", ["[1,2]", '"text"', "3", "null", "true"])
def test_not_an_object(raw: str) -> None:
    assert "not a JSON object" in _frame_error(raw).reason


@pytest.mark.parametrize("raw", ['{"ping":"pong"}', '{"msg_type":1}', '{"msg_type":null}'])
def test_no_msg_type(raw: str) -> None:
    assert "msg_type" in _frame_error(raw).reason


def test_bad_req_id() -> None:
    msg = _frame_error('{"msg_type":"ping","ping":"pong","req_id":"1"}')
    assert "req_id" in msg.reason and msg.msg_type == "ping"


def _tick_with(**changes: Any) -> str:
    frame = json.loads(TICK_FRAME)
    for key, value in changes.items():
        if value is ...:
            del frame["tick"][key]
        else:
            frame["tick"][key] = value
    return json.dumps(frame)


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        (_tick_with(epoch="1587547610"), "tick.epoch"),
        (_tick_with(epoch=1587547610.5), "tick.epoch"),
        (_tick_with(epoch=True), "tick.epoch"),
        (_tick_with(epoch=...), "tick.epoch"),
        (_tick_with(quote="218.0926"), "tick.quote"),
        (_tick_with(quote=None), "tick.quote"),
        (_tick_with(quote=True), "tick.quote"),
        (_tick_with(symbol=50), "tick.symbol"),
        (_tick_with(pip_size="4"), "tick.pip_size"),
        (_tick_with(pip_size=-1), "tick.pip_size"),
        (_tick_with(pip_size=...), "tick.pip_size"),
        (_tick_with(bid="x"), "tick.bid"),
        (_tick_with(ask=[1]), "tick.ask"),
        ('{"msg_type":"tick","tick":[1]}', "tick is not an object"),
        ('{"msg_type":"tick"}', "tick is not an object"),
    ],
)
def test_bad_tick_fields(raw: str, fragment: str) -> None:
    msg = _frame_error(raw)
    assert fragment in msg.reason
    assert msg.msg_type == "tick"


def test_tick_pip_size_as_integral_float_is_accepted() -> None:
    msg = m.parse(_tick_with(pip_size=4.0))
    assert isinstance(msg, m.TickMessage) and msg.tick.pip_size == 4


def test_tick_quote_overflowing_to_infinity_is_rejected() -> None:
    raw = TICK_FRAME.replace("218.0926", "1e999")
    assert "finite" in _frame_error(raw).reason


def test_bad_subscription_id() -> None:
    raw = TICK_FRAME.replace('"subscription":{"id":"b4d42748-0744-c46b-f59b-cb7dd936bafa"}', '"subscription":{"id":5}')
    assert "subscription.id" in _frame_error(raw).reason


@pytest.mark.parametrize(
    ("raw", "fragment"),
    [
        ('{"msg_type":"history","history":{"prices":[1.0],"times":[]}}', "differ in length"),
        ('{"msg_type":"history","history":{"prices":["1"],"times":[1]}}', "history.prices"),
        ('{"msg_type":"history","history":{"prices":[1.0],"times":[1.5]}}', "history.times"),
        ('{"msg_type":"history","history":[]}', "history is not an object"),
        ('{"msg_type":"history","history":{"prices":{},"times":[]}}', "arrays"),
        ('{"msg_type":"candles","candles":{}}', "candles is not an array"),
        ('{"msg_type":"candles","candles":[{"epoch":"1","open":1,"high":1,"low":1,"close":1}]}', "candles[].epoch"),
        (OHLC_FRAME.replace('"1235.61"', '"abc"'), "ohlc.close"),
        (OHLC_FRAME.replace('"1235.61"', '"nan"'), "ohlc.close"),
        (OHLC_FRAME.replace('"open_time":1700000100', '"open_time":"x"'), "ohlc.open_time"),
        ('{"msg_type":"ping","ping":"ping"}', "pong"),
        ('{"msg_type":"time","time":"1587544006"}', "time is not an integer"),
        ('{"msg_type":"forget","forget":2}', "forget"),
        ('{"msg_type":"forget_all","forget_all":[1]}', "forget_all"),
        ('{"msg_type":"active_symbols","active_symbols":{}}', "active_symbols"),
        ('{"msg_type":"active_symbols","active_symbols":[{"symbol":"R_50"}]}', "display_name"),
        ('{"msg_type":"authorize","authorize":{"loginid":5}}', "authorize.loginid"),
        ('{"msg_type":"authorize","authorize":{"loginid":"x","scopes":"read"}}', "authorize.scopes"),
        ('{"msg_type":"website_status","website_status":{"site_status":1}}', "site_status"),
        ('{"msg_type":"website_status","website_status":"up"}', "website_status"),
        ('{"msg_type":"tick","error":"boom"}', "error is not an object"),
        ('{"msg_type":"tick","error":{"code":1,"message":"x"}}', "error.code"),
        ('{"msg_type":"tick","error":{"code":"X","message":"x","details":[1]}}', "error.details"),
    ],
)
def test_bad_payloads(raw: str, fragment: str) -> None:
    assert fragment in _frame_error(raw).reason


def test_raw_excerpt_is_truncated() -> None:
    msg = _frame_error("x" * 10_000)
    assert len(msg.error.raw) <= 200


def test_deeply_nested_json_is_a_frame_error() -> None:
    _frame_error("[" * 100_000 + "]" * 100_000)


def test_messages_are_frozen() -> None:
    msg = m.parse(TICK_FRAME)
    with pytest.raises(AttributeError):
        msg.req_id = 9  # type: ignore[misc]


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_parse_never_raises_on_text(raw: str) -> None:
    m.parse(raw)


@settings(max_examples=300, deadline=None)
@given(st.binary())
def test_parse_never_raises_on_bytes(raw: bytes) -> None:
    m.parse(raw)


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
_msg_types = st.sampled_from(
    [
        *("tick", "history", "candles", "ohlc", "ping", "time", "forget", "forget_all", "active_symbols"),
        *("authorize", "website_status", "error", "proposal"),
    ]
)


@settings(max_examples=500, deadline=None)
@given(
    _msg_types,
    st.dictionaries(
        st.sampled_from(
            [
                "tick",
                "history",
                "candles",
                "ohlc",
                "ping",
                "time",
                "forget",
                "forget_all",
                "active_symbols",
                "authorize",
                "website_status",
                "error",
                "req_id",
                "subscription",
                "pip_size",
                "echo_req",
            ]
        ),
        _json_values,
        max_size=6,
    ),
)
def test_parse_never_raises_on_wrongly_shaped_frames(msg_type: str, body: dict[str, Any]) -> None:
    frame = {"msg_type": msg_type, **body}
    msg = m.parse(json.dumps(frame))
    # Whatever the payload, the frame's msg_type survives into the message.
    assert msg.msg_type == msg_type
