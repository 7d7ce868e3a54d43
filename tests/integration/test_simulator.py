"""The simulator over real sockets on 127.0.0.1, driven by the ``websockets`` client.

Time is accelerated with ``time_scale`` so scenarios of minutes take fractions of a
second; every wait is bounded with ``asyncio.timeout`` and nothing asserts durations.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from backend_core.deriv import messages
from backend_core.deriv.sim import control as control_module
from backend_core.deriv.sim import server as server_module
from backend_core.deriv.sim.faults import DEPLOY_MESSAGE
from backend_core.deriv.sim.market import DEFAULT_SYMBOLS
from backend_core.deriv.sim.server import DerivSimulator
from tests.helpers import closed_code, until

TOKEN = "good-token"
WAIT_S = 5.0  # upper bound for anything expected to happen
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def _leftover_tasks() -> list[asyncio.Task[Any]]:
    current = asyncio.current_task()
    return [t for t in asyncio.all_tasks() if t is not current and not t.done()]


@pytest.fixture
async def sim() -> AsyncIterator[DerivSimulator]:
    simulator = DerivSimulator(time_scale=20, seed=1, accepted_tokens=(TOKEN,), history_prefill_s=600)
    async with simulator:
        yield simulator
    assert _leftover_tasks() == []


@pytest.fixture
async def controlled_sim() -> AsyncIterator[DerivSimulator]:
    """The ``sim`` fixture's simulator with its control interface on a free loopback port."""
    simulator = DerivSimulator(time_scale=20, seed=1, accepted_tokens=(TOKEN,), history_prefill_s=600, control_port=0)
    async with simulator:
        yield simulator
    assert _leftover_tasks() == []


def make_sim(**kwargs: Any) -> DerivSimulator:
    kwargs.setdefault("seed", 2)
    kwargs.setdefault("accepted_tokens", (TOKEN,))
    kwargs.setdefault("history_prefill_s", 600)
    return DerivSimulator(**kwargs)


def client(simulator: DerivSimulator, query: str = "?app_id=1089&l=EN&brand=", **kwargs: Any) -> Any:
    kwargs.setdefault("ping_interval", None)
    kwargs.setdefault("open_timeout", WAIT_S)
    kwargs.setdefault("close_timeout", 1)
    return connect(simulator.url + query, **kwargs)


async def send(ws: ClientConnection, request: dict[str, Any]) -> None:
    await ws.send(json.dumps(request))


async def recv(ws: ClientConnection, within_s: float = WAIT_S) -> dict[str, Any]:
    async with asyncio.timeout(within_s):
        frame: dict[str, Any] = json.loads(await ws.recv())
    return frame


async def recv_until(
    ws: ClientConnection, predicate: Callable[[dict[str, Any]], bool], limit: int = 500
) -> dict[str, Any]:
    """The first frame matching ``predicate``, skipping up to ``limit`` others."""
    async with asyncio.timeout(WAIT_S):
        for _ in range(limit):
            frame: dict[str, Any] = json.loads(await ws.recv())
            if predicate(frame):
                return frame
    raise AssertionError("no matching frame")


async def reply(ws: ClientConnection, req_id: int) -> dict[str, Any]:
    # Stream frames repeat their subscribe request's req_id: skip them, but not errors.
    def is_reply(frame: dict[str, Any]) -> bool:
        return frame.get("req_id") == req_id and ("error" in frame or frame.get("msg_type") not in ("tick", "ohlc"))

    return await recv_until(ws, is_reply)


async def call(ws: ClientConnection, request: dict[str, Any]) -> dict[str, Any]:
    await send(ws, request)
    return await reply(ws, request["req_id"])


async def ticks(ws: ClientConnection, n: int, symbol: str | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    while len(out) < n:
        frame = await recv_until(ws, lambda f: f.get("msg_type") == "tick")
        if symbol is None or frame["tick"]["symbol"] == symbol:
            out.append(frame)
    return out


async def no_frame_within(ws: ClientConnection, seconds: float) -> bool:
    try:
        async with asyncio.timeout(seconds):
            await ws.recv()
    except TimeoutError:
        return True
    return False


# --- handshake ------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["", "?app_id=", "?app_id=0123", "?app_id=abc", "?app_id=12345678901234567890"])
async def test_invalid_app_id_gets_401(sim: DerivSimulator, query: str) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with client(sim, query):
            pass
    response = info.value.response
    assert response.status_code == 401
    assert response.body == b'{"error":"InvalidAppID"}'
    assert response.headers["Content-Type"] == "application/json"


async def test_blocked_app_id_gets_403() -> None:
    async with make_sim(blocked_app_ids=("666",)) as simulator:
        with pytest.raises(InvalidStatus) as info:
            async with client(simulator, "?app_id=666"):
                pass
    assert info.value.response.status_code == 403
    assert info.value.response.body == b'{"error":"AccessRestricted"}'


async def test_unknown_path_gets_404(sim: DerivSimulator) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(sim.url.replace("/websockets/v3", "/other") + "?app_id=1", open_timeout=WAIT_S):
            pass
    assert info.value.response.status_code == 404


async def test_permessage_deflate_is_negotiated(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        assert [e.name for e in ws.protocol.extensions] == ["permessage-deflate"]


# --- envelope and calls ------------------------------------------------------------------


async def test_envelope_echo_req_id_passthrough(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        frame = await call(ws, {"ping": 1, "req_id": 1, "passthrough": {"trace": ["a", 1]}})
    assert frame == {
        "echo_req": {"ping": 1, "req_id": 1, "passthrough": {"trace": ["a", 1]}},
        "msg_type": "ping",
        "ping": "pong",
        "req_id": 1,
        "passthrough": {"trace": ["a", 1]},
    }


async def test_frame_without_req_id_gets_reply_without_req_id(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        await send(ws, {"time": 1})
        frame = await recv(ws)
    assert set(frame) == {"echo_req", "msg_type", "time"}
    assert isinstance(frame["time"], int)
    assert frame["time"] <= int(sim.now())


async def test_authorize_redacts_token(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        ok = await call(ws, {"authorize": TOKEN, "req_id": 2})
        bad = await call(ws, {"authorize": "wrong-token", "req_id": 3})
    assert ok["echo_req"] == {"authorize": "<not shown>", "req_id": 2}
    assert TOKEN not in json.dumps(ok)
    assert isinstance(messages.parse(json.dumps(ok)), messages.Authorize)
    assert bad["error"] == {"code": "InvalidToken", "message": "The token is invalid."}
    assert bad["echo_req"]["authorize"] == "<not shown>"


async def test_errors_of_section_1(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        await ws.send("[1]")
        assert (await recv(ws))["error"]["code"] == "BadRequest"
        assert (await call(ws, {"proposal": 1, "req_id": 4}))["error"]["code"] == "UnrecognisedRequest"
        assert (await call(ws, {"ping": 1, "req_id": 5, "x y": 1}))["error"]["code"] == "SanityCheckFailed"
        invalid = await call(ws, {"ticks": "R_50", "subscribe": 2, "req_id": 7})
        assert invalid["msg_type"] == "ticks"
        assert invalid["error"]["code"] == "InputValidationFailed"
        assert invalid["error"]["details"] == {"subscribe": "Not in enum list: 1."}


async def test_malformed_json_closes_connection_without_reply(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        await ws.send("{not json")
        with pytest.raises(ConnectionClosed):
            await recv(ws)  # no JSON reply: the connection just closes
        assert ws.close_code == 1007


async def test_active_symbols(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        frame = await call(ws, {"active_symbols": "brief", "product_type": "basic", "req_id": 1})
    message = messages.parse(json.dumps(frame))
    assert isinstance(message, messages.ActiveSymbols)
    assert {s.symbol for s in message.symbols} == {s.symbol for s in DEFAULT_SYMBOLS}


# --- ticks ------------------------------------------------------------------------------


async def test_ticks_stream_on_one_second_grid(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        await send(ws, {"ticks": "1HZ100V", "subscribe": 1, "req_id": 3})
        frames = await ticks(ws, 5)
    epochs = [f["tick"]["epoch"] for f in frames]
    assert epochs == list(range(epochs[0], epochs[0] + 5))
    sub_ids = {f["subscription"]["id"] for f in frames}
    assert len(sub_ids) == 1 and UUID_RE.match(sub_ids.pop())
    for frame in frames:
        message = messages.parse(json.dumps(frame))
        assert isinstance(message, messages.TickMessage)
        assert message.req_id == 3
        assert message.tick.symbol == "1HZ100V" and message.tick.pip_size == 2
        assert round(message.tick.quote, 2) == message.tick.quote
        assert frame["echo_req"] == {"ticks": "1HZ100V", "subscribe": 1, "req_id": 3}


async def test_r_symbols_tick_every_two_seconds(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        await send(ws, {"ticks": ["R_50", "1HZ50V"], "req_id": 3})
        frames = await ticks(ws, 3, symbol="R_50")
    epochs = [f["tick"]["epoch"] for f in frames]
    assert all(e % 2 == 0 for e in epochs)
    assert [b - a for a, b in itertools.pairwise(epochs)] == [2, 2]
    assert frames[0]["tick"]["pip_size"] == 4


async def test_ticks_list_gives_one_subscription_per_symbol(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        await send(ws, {"ticks": ["1HZ100V", "1HZ50V"], "req_id": 9})
        frames = await ticks(ws, 6)
    ids = {f["tick"]["symbol"]: f["subscription"]["id"] for f in frames}
    assert set(ids) == {"1HZ100V", "1HZ50V"} and len(set(ids.values())) == 2
    assert {f["req_id"] for f in frames} == {9}


async def test_history_agrees_with_live_ticks(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        await send(ws, {"ticks": "1HZ100V", "req_id": 1})
        live = await ticks(ws, 5)
        history = await call(ws, {"ticks_history": "1HZ100V", "end": "latest", "count": 100, "req_id": 2})
    pairs = dict(zip(history["history"]["times"], history["history"]["prices"], strict=True))
    for frame in live:
        assert pairs[frame["tick"]["epoch"]] == frame["tick"]["quote"]
    assert history["pip_size"] == 2


async def test_two_connections_share_one_price_path(sim: DerivSimulator) -> None:
    async with client(sim) as a, client(sim) as b:
        await send(a, {"ticks": "1HZ10V", "req_id": 1})
        await send(b, {"ticks": "1HZ10V", "req_id": 1})
        ticks_a = await ticks(a, 4)
        ticks_b = await ticks(b, 4)
    seen_a = {f["tick"]["epoch"]: f["tick"]["quote"] for f in ticks_a}
    common = [f for f in ticks_b if f["tick"]["epoch"] in seen_a]
    assert common, "the two streams overlap"
    assert all(seen_a[f["tick"]["epoch"]] == f["tick"]["quote"] for f in common)
    assert ticks_a[0]["subscription"]["id"] != ticks_b[0]["subscription"]["id"]


async def test_ticks_history_subscribe_continues_without_gap(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        history = await call(
            ws, {"ticks_history": "1HZ100V", "end": "latest", "count": 3, "style": "ticks", "subscribe": 1, "req_id": 4}
        )
        stream = await ticks(ws, 3)
    assert history["msg_type"] == "history"
    assert stream[0]["tick"]["epoch"] == history["history"]["times"][-1] + 1
    assert {f["subscription"]["id"] for f in stream} == {history["subscription"]["id"]}
    assert {f["req_id"] for f in stream} == {4}


async def test_candles_with_ohlc_stream(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        request = {"ticks_history": "R_100", "end": "latest", "count": 2, "style": "candles", "granularity": 60}
        candles = await call(ws, {**request, "subscribe": 1, "req_id": 5})
        ohlc = await recv_until(ws, lambda f: f.get("msg_type") == "ohlc")
    parsed = messages.parse(json.dumps(candles))
    assert isinstance(parsed, messages.Candles) and len(parsed.candles) == 2
    message = messages.parse(json.dumps(ohlc))
    assert isinstance(message, messages.Ohlc)
    assert message.subscription_id == candles["subscription"]["id"]
    assert message.open_time == message.epoch - message.epoch % 60
    assert isinstance(ohlc["ohlc"]["close"], str)


async def test_already_subscribed_and_invalid_symbol(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        await send(ws, {"ticks": "R_50", "req_id": 1})
        duplicate = await call(ws, {"ticks": "R_50", "req_id": 2})
        invalid = await call(ws, {"ticks": "R_12312312", "req_id": 3})
    assert duplicate["msg_type"] == "tick"
    assert duplicate["error"] == {"code": "AlreadySubscribed", "message": "You are already subscribed to R_50"}
    assert invalid["msg_type"] == "tick"
    assert invalid["error"] == {"code": "InvalidSymbol", "message": "Symbol R_12312312 invalid."}


async def test_forget_stops_the_stream(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        await send(ws, {"ticks": "1HZ100V", "req_id": 1})
        sub_id = (await ticks(ws, 1))[0]["subscription"]["id"]
        assert (await call(ws, {"forget": sub_id, "req_id": 2}))["forget"] == 1
        assert (await call(ws, {"forget": sub_id, "req_id": 3}))["forget"] == 0
        # Use another stream as the clock: several of its ticks, none from the forgotten one.
        await send(ws, {"ticks": "1HZ50V", "req_id": 4})
        later = await ticks(ws, 4)
    assert all(f["subscription"]["id"] != sub_id for f in later)


async def test_forget_all(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        await send(ws, {"ticks": ["1HZ100V", "1HZ50V"], "req_id": 1})
        ids = {f["subscription"]["id"] for f in await ticks(ws, 4)}
        frame = await call(ws, {"forget_all": "ticks", "req_id": 2})
        assert set(frame["forget_all"]) == ids
        message = messages.parse(json.dumps(frame))
        assert isinstance(message, messages.ForgetAll)
        assert await no_frame_within(ws, 0.3)  # 6 simulated seconds without a tick
        assert (await call(ws, {"forget_all": ["ticks", "candles"], "req_id": 3}))["forget_all"] == []


async def test_website_status_subscribe(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        first = await call(ws, {"website_status": 1, "subscribe": 1, "req_id": 1})
        duplicate = await call(ws, {"website_status": 1, "subscribe": 1, "req_id": 2})
        await sim.set_site_status("down", "maintenance")
        push = await recv(ws)
    assert first["website_status"]["site_status"] == "up"
    assert UUID_RE.match(first["subscription"]["id"])
    assert duplicate["error"]["code"] == "AlreadySubscribed"
    assert push["subscription"] == first["subscription"]
    assert push["req_id"] == 1
    message = messages.parse(json.dumps(push))
    assert message == messages.WebsiteStatus("down", "maintenance", first["subscription"]["id"], 1)


# --- connection behaviour -------------------------------------------------------------------


async def test_ping_rate_limit_then_close_1008() -> None:
    async with make_sim(time_scale=1) as simulator, client(simulator) as ws:
        for i in range(11):
            await send(ws, {"ping": 1, "req_id": i + 1})
        frames = []
        with pytest.raises(ConnectionClosed):
            while True:
                frames.append(await recv(ws))
        assert ws.close_code == 1008
    assert [f["req_id"] for f in frames] == list(range(1, 12))
    assert all(f["ping"] == "pong" for f in frames[:10])
    assert frames[10]["msg_type"] == "ping"
    assert frames[10]["error"] == {"code": "RateLimit", "message": "You have reached the rate limit for ping."}


async def test_idle_timeout_closes_with_1006() -> None:
    # 120 simulated seconds are 0.4 s at this scale.
    async with make_sim(time_scale=300) as simulator, client(simulator) as ws:
        assert (await call(ws, {"ping": 1, "req_id": 1}))["ping"] == "pong"
        assert await closed_code(ws) == 1006
        assert simulator.stats().connection_count == 0


async def test_silent_tcp_client_is_cut_at_the_idle_timeout() -> None:
    # The idle deadline covers the opening handshake too: a socket that never sends its
    # HTTP request is aborted (a slowloris cannot hold a slot forever).
    async with make_sim(time_scale=300) as simulator:
        reader, writer = await asyncio.open_connection("127.0.0.1", simulator.port)
        try:
            # Aborted (a reset) or closed (EOF): either way the read ends.
            async with asyncio.timeout(WAIT_S):
                with contextlib.suppress(ConnectionResetError):
                    assert await reader.read() == b""
        finally:
            writer.close()
        assert simulator.stats().handshake_attempts == 0


async def test_traffic_keeps_the_connection_alive() -> None:
    async with make_sim(time_scale=300) as simulator, client(simulator) as ws:
        # A live 1 s stream (one frame every 3 ms here) keeps it open for many idle periods.
        await send(ws, {"ticks": "1HZ100V", "req_id": 1})
        frames = await ticks(ws, 400)
        assert frames[-1]["tick"]["epoch"] - frames[0]["tick"]["epoch"] == 399  # over 3 idle timeouts
        assert (await call(ws, {"forget_all": "ticks", "req_id": 2}))["msg_type"] == "forget_all"
        assert await closed_code(ws) == 1006  # and without traffic it times out


async def test_json_pings_keep_the_connection_alive() -> None:
    async with make_sim(time_scale=300) as simulator, client(simulator) as ws:
        start = int(simulator.now())
        req_id = 0
        while int(simulator.now()) - start < 3 * 120:
            req_id += 1
            assert (await call(ws, {"ping": 1, "req_id": req_id}))["ping"] == "pong"
            await asyncio.sleep(0.05)  # 15 simulated seconds between pings, within the rate limit
        assert ws.close_code is None


# --- fault controls ---------------------------------------------------------------------------


async def test_drop_all_abruptly_gives_1006(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        await call(ws, {"ping": 1, "req_id": 1})
        assert await sim.drop_all() == 1
        assert await closed_code(ws) == 1006


async def test_drop_all_with_close_code(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        await call(ws, {"ping": 1, "req_id": 1})
        await sim.drop_all(4000, "bye")
        assert await closed_code(ws) == 4000
        assert ws.close_reason == "bye"


async def test_refuse_connections_gives_503(sim: DerivSimulator) -> None:
    sim.refuse_connections(60)
    with pytest.raises(InvalidStatus) as info:
        async with client(sim):
            pass
    assert info.value.response.status_code == 503
    sim.refuse_connections(0)
    async with client(sim) as ws:
        assert (await call(ws, {"ping": 1, "req_id": 1}))["ping"] == "pong"


async def test_blackholed_handshake_holds_the_client(sim: DerivSimulator) -> None:
    sim.blackhole_handshakes(True)
    attempts = sim.stats().handshake_attempts
    with pytest.raises(TimeoutError):
        async with client(sim, open_timeout=0.3):
            pass
    assert sim.stats().handshake_attempts == attempts + 1  # the request arrived and was never answered
    # A held handshake completes once the blackhole ends.
    pending = asyncio.create_task(_ping_through(sim))
    await until(lambda: sim.stats().handshake_attempts >= attempts + 2, 4 * WAIT_S)
    assert not pending.done()
    sim.blackhole_handshakes(False)
    async with asyncio.timeout(WAIT_S):
        assert await pending == "pong"


async def _ping_through(simulator: DerivSimulator) -> str:
    async with client(simulator) as ws:
        pong: str = (await call(ws, {"ping": 1, "req_id": 1}))["ping"]
        return pong


async def test_stop_releases_blackholed_handshakes() -> None:
    simulator = make_sim(time_scale=20)
    await simulator.start()
    simulator.blackhole_handshakes(True)
    pending = asyncio.create_task(_ping_through(simulator))
    await until(lambda: simulator.stats().handshake_attempts >= 1, 4 * WAIT_S)
    async with asyncio.timeout(WAIT_S):
        await simulator.stop()
        with pytest.raises(InvalidStatus) as info:
            await pending
    assert info.value.response.status_code == 503
    assert _leftover_tasks() == []


async def test_pause_feed_is_silence_without_disconnect(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        await send(ws, {"ticks": "1HZ100V", "req_id": 1})
        before = await ticks(ws, 2)
        sim.pause_feed(True)
        await call(ws, {"ping": 1, "req_id": 2})  # flushes ticks already in flight
        assert await no_frame_within(ws, 0.3)  # 6 simulated seconds
        assert (await call(ws, {"ping": 1, "req_id": 3}))["ping"] == "pong"
        sim.pause_feed(False)
        after = await ticks(ws, 1)
    assert after[0]["tick"]["epoch"] > before[-1]["tick"]["epoch"] + 1  # a gap, not a burst
    assert after[0]["subscription"] == before[0]["subscription"]


async def test_ignore_pings(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        sim.ignore_pings(True)
        await send(ws, {"ping": 1, "req_id": 1})
        assert (await call(ws, {"time": 1, "req_id": 2}))["msg_type"] == "time"
        assert await no_frame_within(ws, 0.2)
        sim.ignore_pings(False)
        assert (await call(ws, {"ping": 1, "req_id": 3}))["ping"] == "pong"


async def test_delay_replies_reorders_and_still_answers(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        sim.delay_replies(0.2)
        await send(ws, {"ping": 1, "req_id": 1})
        await until(lambda: sim.stats().requests_by_type.get("ping") == 1, 4 * WAIT_S)
        sim.delay_replies(0)
        await send(ws, {"time": 1, "req_id": 2})
        first = await recv(ws)
        second = await recv(ws)
    assert [first["req_id"], second["req_id"]] == [2, 1]  # replies are matched by req_id, not order


async def test_long_delay_becomes_timeout_error(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        sim.delay_replies(60)  # beyond 15 simulated seconds (0.75 s here)
        frame = await call(ws, {"ticks_history": "R_50", "end": "latest", "req_id": 1})
    assert frame["msg_type"] == "ticks_history"
    assert frame["error"] == {"code": "Timeout", "message": "Timeout"}


async def test_drop_replies(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        sim.drop_replies(1)
        await send(ws, {"ping": 1, "req_id": 1})
        assert (await call(ws, {"ping": 1, "req_id": 2}))["req_id"] == 2
        sim.drop_replies(True)
        await send(ws, {"time": 1, "req_id": 3})
        assert await no_frame_within(ws, 0.2)
        sim.drop_replies(False)
        restored = await call(ws, {"time": 1, "req_id": 4})
    assert restored["req_id"] == 4


async def test_inject_errors(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        sim.inject_error("RateLimit")
        limited = await call(ws, {"ticks": "R_50", "req_id": 1})
        sim.inject_error("WrongResponse", count=2)
        wrong = [await call(ws, {"time": 1, "req_id": 2}), await call(ws, {"ticks": "R_50", "req_id": 3})]
        fine = await call(ws, {"time": 1, "req_id": 4})
    assert limited["msg_type"] == "ticks"
    assert limited["error"] == {"code": "RateLimit", "message": "You have reached the rate limit for ticks."}
    assert [w["msg_type"] for w in wrong] == ["time", "tick"]
    assert {w["error"]["message"] for w in wrong} == {"Sorry, an error occurred while processing your request."}
    assert "error" not in fine
    message = messages.parse(json.dumps(limited))
    assert isinstance(message, messages.ApiError) and message.code == "RateLimit"


async def test_inject_errors_on_history_pages_only(sim: DerivSimulator) -> None:
    history = {"ticks_history": "R_50", "end": "latest", "count": 5}
    async with client(sim) as ws:
        sim.inject_error("RateLimit", count=1, pages_only=True)
        other = await call(ws, {"time": 1, "req_id": 1})
        subscribed = await call(ws, {**history, "subscribe": 1, "req_id": 2})
        page = await call(ws, {**history, "req_id": 3})
        again = await call(ws, {**history, "req_id": 4})
    assert "error" not in other and "error" not in subscribed  # only pages are refused
    assert page["msg_type"] == "ticks_history" and page["error"]["code"] == "RateLimit"
    assert "error" not in again and again["msg_type"] == "history"  # the count is used up


async def test_send_malformed_frame(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        await call(ws, {"ping": 1, "req_id": 1})
        assert await sim.send_malformed_frame() == 1
        async with asyncio.timeout(WAIT_S):
            raw = await ws.recv()
    assert isinstance(messages.parse(raw), messages.ProtocolFrameError)


async def test_deploy_pushes_updating_then_closes(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        await call(ws, {"website_status": 1, "subscribe": 1, "req_id": 1})
        await sim.deploy(close_after_s=0.2)
        push = await recv(ws)
        assert await closed_code(ws) == 1001
    assert push["website_status"]["site_status"] == "updating"
    assert push["website_status"]["message"] == DEPLOY_MESSAGE
    await until(lambda: sim.site.status == "up", 4 * WAIT_S)


async def test_restart_without_disconnect_invalidates_subscriptions(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        await send(ws, {"ticks": "1HZ100V", "req_id": 1})
        old_id = (await ticks(ws, 1))[0]["subscription"]["id"]
        await sim.restart(disconnect=False)
        assert (await call(ws, {"forget": old_id, "req_id": 2}))["forget"] == 0
        await send(ws, {"ticks": "1HZ100V", "req_id": 3})
        new = await ticks(ws, 1)
    assert new[0]["subscription"]["id"] != old_id


async def test_restart_disconnects_with_1012(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        await call(ws, {"ping": 1, "req_id": 1})
        await sim.restart()
        assert await closed_code(ws) == 1012
    async with client(sim) as ws:  # a fresh connection works and starts unauthorized
        assert (await call(ws, {"ping": 1, "req_id": 1}))["ping"] == "pong"


async def test_counters(sim: DerivSimulator) -> None:
    async with client(sim) as ws:
        await call(ws, {"ping": 1, "req_id": 1})
        await call(ws, {"time": 1, "req_id": 2})
        await call(ws, {"time": 1, "req_id": 3})
        assert sim.stats().connection_count == 1
    with pytest.raises(InvalidStatus):
        async with client(sim, ""):
            pass
    stats = sim.stats()
    assert stats.connections_accepted_total == 1
    assert stats.handshake_attempts == 2
    assert stats.handshakes_refused == 1
    assert sim.stats().requests_by_type == {"ping": 1, "time": 2}
    assert stats.frames_sent_total >= 3


async def test_slow_client_is_dropped_not_buffered(monkeypatch: pytest.MonkeyPatch) -> None:
    # A client that never reads: once the kernel buffers are full its queue fills and it
    # is cut off (a stalled write is no activity, so the idle timeout would end it too).
    monkeypatch.setattr(server_module, "OUTBOUND_QUEUE_FRAMES", 16)
    # Fast ticks fill the buffers soon; the idle timeout (scaled too: 0.12 s real) must
    # not end the stalled connection first on a loaded machine.
    monkeypatch.setattr(server_module, "STREAM_TIMEOUT_S", 120_000)
    async with make_sim(time_scale=1000) as simulator:
        # A small fixed receive window and no compression, so the kernel buffers fill soon.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", simulator.port))
        async with client(simulator, max_queue=1, compression=None, sock=sock) as ws:
            await send(ws, {"ticks": [s.symbol for s in DEFAULT_SYMBOLS], "req_id": 1})
            await until(lambda: simulator.stats().slow_clients_dropped > 0, 4 * WAIT_S)
        assert simulator.stats().connection_count == 0
        # Dropped (and logged) once, however many ticks arrived for it after that.
        assert simulator.stats().slow_clients_dropped == 1


# --- control HTTP interface ------------------------------------------------------------------


async def test_control_interface_from_loopback(controlled_sim: DerivSimulator) -> None:
    async with (
        client(controlled_sim) as ws,
        httpx.AsyncClient(base_url=controlled_sim.control_url, timeout=WAIT_S) as http,
    ):
        await call(ws, {"ping": 1, "req_id": 1})
        stats = await http.get("/stats")
        assert stats.status_code == 200
        assert stats.json()["result"]["connection_count"] == 1
        response = await http.post("/drop_all", json={"code": 4001, "reason": "control"})
        assert response.status_code == 200
        assert response.json()["result"] == {"dropped": 1}
        assert await closed_code(ws) == 4001


async def test_control_interface_toggles_faults(controlled_sim: DerivSimulator) -> None:
    async with httpx.AsyncClient(base_url=controlled_sim.control_url, timeout=WAIT_S) as http:
        assert (await http.post("/refuse_connections", json={"seconds": 30})).status_code == 200
        with pytest.raises(InvalidStatus):
            async with client(controlled_sim):
                pass
        assert (await http.post("/reset")).status_code == 200
        async with client(controlled_sim) as ws:
            await call(ws, {"website_status": 1, "subscribe": 1, "req_id": 1})
            assert (await http.post("/deploy", json={"close_after_s": 0.1})).json()["ok"] is True
            push = await recv(ws)
            assert push["website_status"]["site_status"] == "updating"
            assert await closed_code(ws) == 1001


async def test_control_advance_makes_an_outage_longer_than_one_reply_that_history_serves_exactly(
    controlled_sim: DerivSimulator,
) -> None:
    async with (
        client(controlled_sim) as ws,
        httpx.AsyncClient(base_url=controlled_sim.control_url, timeout=WAIT_S) as http,
    ):
        first = await call(ws, {"ticks_history": "1HZ100V", "end": "latest", "count": 1, "subscribe": 1, "req_id": 1})
        [last] = first["history"]["times"]
        response = await http.post("/advance", json={"ticks": 12_000})
        assert response.status_code == 200
        result = response.json()["result"]
        assert result["ticks"]["1HZ100V"] == 12_000 and result["to_epoch"] >= last + 12_000
        request: dict[str, Any] = {"ticks_history": "1HZ100V", "start": last, "end": "latest", "count": 5000}
        pages = [(await call(ws, {**request, "req_id": 2}))["history"]["times"]]
        while len(pages[-1]) == 5000 and pages[-1][0] > last:
            older = {**request, "end": str(pages[-1][0] - 1), "req_id": 2 + len(pages)}
            pages.append((await call(ws, older))["history"]["times"])
        epochs = [e for page in reversed(pages) for e in page]
        assert len(pages) == 3 and epochs[0] == last and epochs[-1] >= result["to_epoch"]
        assert epochs == list(range(last, epochs[-1] + 1))  # every epoch once, in order
        # The stream goes on after the jump, without the jump's ticks.
        live = await recv_until(ws, lambda f: f.get("msg_type") == "tick")
        assert live["tick"]["epoch"] > result["to_epoch"]


async def test_control_interface_answers_bad_requests_over_its_port(controlled_sim: DerivSimulator) -> None:
    # Which requests are bad, and the JSON refusal, are tested in process in
    # tests/unit/test_simulator_logic.py; this shows the real port serves the same answers.
    async with httpx.AsyncClient(base_url=controlled_sim.control_url, timeout=WAIT_S) as http:
        unknown = await http.post("/nope", json={})
        bad_body = await http.post("/inject_error", json={"code": "Boom"})
    assert (unknown.status_code, bad_body.status_code) == (404, 400)
    assert unknown.json()["ok"] is False and bad_body.json()["ok"] is False


async def test_control_interface_refuses_large_bodies(controlled_sim: DerivSimulator) -> None:
    async with httpx.AsyncClient(base_url=controlled_sim.control_url, timeout=WAIT_S) as http:
        response = await http.post("/drop_all", content=b"x" * (control_module.CONTROL_MAX_BODY_BYTES + 1))
    assert response.status_code == 413


async def test_control_interface_refuses_non_loopback_peers(
    controlled_sim: DerivSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tests may only use loopback, so pretend the peer is remote.
    monkeypatch.setattr(control_module, "is_loopback_peer", lambda _peer: False)
    async with httpx.AsyncClient(base_url=controlled_sim.control_url, timeout=WAIT_S) as http:
        response = await http.post("/drop_all", json={})
    assert response.status_code == 403
    async with client(controlled_sim) as ws:  # the WebSocket endpoint is unaffected
        assert (await call(ws, {"ping": 1, "req_id": 1}))["ping"] == "pong"


# --- lifecycle --------------------------------------------------------------------------------


async def test_stop_closes_clients_and_leaves_no_task() -> None:
    simulator = make_sim(time_scale=20)
    await simulator.start()
    async with client(simulator) as ws:
        await send(ws, {"ticks": "1HZ100V", "req_id": 1})
        await ticks(ws, 1)
        async with asyncio.timeout(WAIT_S):
            await simulator.stop()
        assert await closed_code(ws) == 1001
    await simulator.stop()  # idempotent
    assert _leftover_tasks() == []


async def test_url_and_port() -> None:
    simulator = make_sim()
    with pytest.raises(RuntimeError):
        _ = simulator.url
    async with simulator:
        assert simulator.url == f"ws://127.0.0.1:{simulator.port}/websockets/v3"


async def test_command_line_runs_until_sigterm() -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "backend_core.deriv.sim",
        "--port",
        "0",
        "--control-port",
        "0",
        "--time-scale",
        "20",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(WAIT_S * 2):
            assert process.stdout is not None
            line = (await process.stdout.readline()).decode()
            url = re.search(r"ws://\S+", line)
            control_url = re.search(r"http://\S+/control", line)
            assert url and control_url, line
            async with connect(url.group(0), open_timeout=WAIT_S) as ws:
                await ws.send('{"ping":1,"req_id":1}')
                assert json.loads(await ws.recv())["ping"] == "pong"
                async with httpx.AsyncClient(timeout=WAIT_S) as http:
                    stats = await http.get(f"{control_url.group(0)}/stats")
                assert stats.json()["result"]["connection_count"] == 1
            process.send_signal(signal.SIGTERM)
            assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
