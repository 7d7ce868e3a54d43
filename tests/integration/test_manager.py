"""DerivManager against the simulator over real sockets on 127.0.0.1, one test per fault.

Every test asserts the recovered state and the tick sequence: each symbol's epochs are
exactly the simulator's own history between the first and last delivered tick (no gap),
strictly increasing (no duplicate, in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import random
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import websockets
from websockets.asyncio.server import ServerConnection, serve

from backend_core.breakers.registry import BreakerRegistry
from backend_core.config import Settings, load_settings
from backend_core.deriv import protocol
from backend_core.deriv.manager import DerivManager
from backend_core.deriv.sim.server import DerivSimulator
from backend_core.errors import ConnectionLost, UpstreamUnavailable
from backend_core.events import LinkState, Tick, UpstreamSnapshot

SYMBOLS = ("1HZ100V", "R_50")
# 20x simulated time: 1HZ ticks every 50 ms, R_ every 100 ms; the 120 s idle timeout is 6 s.
TIME_SCALE = 20.0
WAIT_S = 15.0


class Recorder:
    """A FeedSink that remembers everything and lets tests wait for a condition."""

    def __init__(self) -> None:
        self.ticks: list[Tick] = []
        self.statuses: list[UpstreamSnapshot] = []
        self._changed = asyncio.Event()

    def publish_tick(self, tick: Tick) -> None:
        self.ticks.append(tick)
        self._changed.set()

    def publish_status(self, snapshot: UpstreamSnapshot) -> None:
        self.statuses.append(snapshot)
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT_S) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    def states(self) -> list[str]:
        out: list[str] = []
        for s in self.statuses:
            if not out or out[-1] != s.state.value:
                out.append(s.state.value)
        return out

    def count(self, symbol: str) -> int:
        return sum(1 for t in self.ticks if t.symbol == symbol)


def settings_for(**overrides: str) -> Settings:
    env = {
        "DERIV_SYMBOLS": ",".join(SYMBOLS),
        "DERIV_PING_INTERVAL": "0.3",
        "WEBSOCKET_CONNECTION_TIMEOUT": "1",
        "WEBSOCKET_MAX_RETRY_ATTEMPTS": "3",
        "WEBSOCKET_CB_FAILURE_THRESHOLD": "3",
        "WEBSOCKET_CB_RECOVERY_TIMEOUT": "1",
    }
    env.update(overrides)
    return load_settings(env)


def assert_no_gap_no_duplicate(recorder: Recorder, sim: DerivSimulator) -> None:
    for symbol in SYMBOLS:
        epochs = [t.epoch for t in recorder.ticks if t.symbol == symbol]
        assert epochs, f"no ticks for {symbol}"
        assert epochs == sorted(set(epochs)), f"{symbol}: duplicate or out-of-order epochs"
        expected, _ = sim.market.history(symbol).window(epochs[0], epochs[-1], 1_000_000)
        missing = sorted(set(expected) - set(epochs))
        assert not missing, f"{symbol}: gap, missing epochs {missing[:10]}"
        assert epochs == expected
    assert not [t for t in recorder.ticks if t.gap_from is not None], "a gap was announced where there was none"


@contextlib.asynccontextmanager
async def running(
    settings: Settings | None = None, *, url_suffix: str = "", **manager_kwargs: Any
) -> AsyncIterator[tuple[DerivManager, DerivSimulator, Recorder, BreakerRegistry]]:
    settings = settings or settings_for()
    sim = DerivSimulator(time_scale=TIME_SCALE, seed=7, accepted_tokens=("good-token-123",))
    await sim.start()
    recorder = Recorder()
    breakers = BreakerRegistry.from_settings(settings)
    kwargs: dict[str, Any] = {
        "rng": random.Random(1),
        "backoff_base_s": 0.05,
        "backoff_cap_s": 0.3,
        "manual_retry_min_interval_s": 0.5,
        "stable_session_s": 0.5,
    }
    kwargs.update(manager_kwargs)
    manager = DerivManager(settings, recorder, breakers.websocket, url=sim.url + url_suffix, **kwargs)
    await manager.start()
    try:
        yield manager, sim, recorder, breakers
    finally:
        await manager.stop()
        await sim.stop()


def connected(manager: DerivManager) -> Callable[[], bool]:
    return lambda: manager.snapshot().state == LinkState.CONNECTED


async def wait_live(recorder: Recorder, manager: DerivManager, extra: int = 5) -> None:
    """Connected, and every symbol has `extra` more ticks than now."""
    await recorder.wait_for(connected(manager))
    base = {s: recorder.count(s) for s in SYMBOLS}
    await recorder.wait_for(lambda: all(recorder.count(s) >= base[s] + extra for s in SYMBOLS))


async def test_connects_subscribes_and_streams_every_symbol_in_order() -> None:
    async with running() as (manager, sim, recorder, _):
        await wait_live(recorder, manager)
        snap = manager.snapshot()
        assert snap.state == LinkState.CONNECTED
        assert snap.simulated is False
        assert {s.symbol for s in snap.symbols if s.subscribed} == set(SYMBOLS)
        assert all(s.last_epoch is not None for s in snap.symbols)
        assert recorder.states()[:2] == ["connecting", "connected"]
        assert not any(t.backfill for t in recorder.ticks)
        assert_no_gap_no_duplicate(recorder, sim)


async def test_abrupt_drop_reconnects_and_backfills_without_gap_or_duplicate() -> None:
    async with running() as (manager, sim, recorder, _):
        await wait_live(recorder, manager)
        await sim.drop_all()  # no close frame: clients see 1006
        await recorder.wait_for(lambda: manager.snapshot().reconnect_count >= 1)
        await wait_live(recorder, manager)
        assert "reconnecting" in recorder.states()
        assert manager.snapshot().last_error is None  # cleared once live again
        assert_no_gap_no_duplicate(recorder, sim)


async def test_drop_with_close_code_while_feed_keeps_moving_is_backfilled() -> None:
    async with running() as (manager, sim, recorder, _):
        await wait_live(recorder, manager)
        # Refuse reconnects for a while so ticks are missed, then let it back in.
        sim.refuse_connections(0.4)
        await sim.drop_all(1011, "internal error")
        await recorder.wait_for(lambda: manager.snapshot().reconnect_count >= 1)
        await wait_live(recorder, manager)
        backfilled = [t for t in recorder.ticks if t.backfill]
        assert backfilled, "ticks missed during the outage were not backfilled"
        assert_no_gap_no_duplicate(recorder, sim)


async def jump_while_away(recorder: Recorder, manager: DerivManager, sim: DerivSimulator, ticks: int) -> int:
    """Drop the link, make the market jump ``ticks`` ahead before it is back; wait until
    every symbol is live past the jump. The jump's last epoch."""
    await wait_live(recorder, manager)
    await sim.drop_all()  # aborted at once: no reconnect can start before the jump
    to_epoch = int(sim.advance(ticks)["to_epoch"])
    await recorder.wait_for(lambda: manager.snapshot().reconnect_count >= 1)
    await recorder.wait_for(
        lambda: all(any(t.symbol == s and t.epoch > to_epoch + 4 for t in recorder.ticks[-50:]) for s in SYMBOLS)
    )
    return to_epoch


async def test_an_outage_of_12000_ticks_is_paged_in_completely_without_gap_or_duplicate() -> None:
    # 12,000 ticks of 1HZ100V and 6,000 of R_50 are missed: more than one 5000-tick reply.
    async with running() as (manager, sim, recorder, _):
        await jump_while_away(recorder, manager, sim, 12_000)
        assert_no_gap_no_duplicate(recorder, sim)
        stats = manager.stats()
        assert stats["backfill_gaps"] == 0
        assert stats["backfill_pages"] >= 2 + 1  # 1HZ100V: two pages; R_50: at least one
        assert stats["ticks_paged"] >= 7_000 + 1_000
        assert all(s.gap_from is None for s in manager.snapshot().symbols)


@pytest.mark.parametrize("code", ["RateLimit", "Timeout"])
async def test_pages_refused_for_a_transient_reason_are_asked_again_and_the_outage_is_still_filled(code: str) -> None:
    async with running() as (manager, sim, recorder, _):
        await wait_live(recorder, manager)
        history_before = sim.stats().requests_by_type.get("ticks_history", 0)
        sim.inject_error(code, count=2, pages_only=True)  # the first two pages after the reconnect
        await jump_while_away(recorder, manager, sim, 12_000)
        assert_no_gap_no_duplicate(recorder, sim)
        stats = manager.stats()
        assert (stats["backfill_gaps"], stats["backfill_page_retries"]) == (0, 2)
        # Two subscribes, the pages, and one more request for each refused page.
        requests = sim.stats().requests_by_type.get("ticks_history", 0) - history_before
        assert requests == len(SYMBOLS) + stats["backfill_pages"] + 2
        assert manager.snapshot().reconnect_count == 1, "a refused page must not cost the link"


async def test_an_outage_past_the_paging_bound_announces_exactly_the_part_it_could_not_fill() -> None:
    # A reply holds 100 ticks here and two more pages may be asked for: 300 ticks at most
    # per symbol, against 2000 (1HZ100V) and 1000 (R_50) missed.
    async with running(backfill_count=100, backfill_max_pages=2) as (manager, sim, recorder, _):
        await jump_while_away(recorder, manager, sim, 2_000)
        for symbol in SYMBOLS:
            ticks = [t for t in recorder.ticks if t.symbol == symbol]
            epochs = [t.epoch for t in ticks]
            assert epochs == sorted(set(epochs)), f"{symbol}: duplicate or out-of-order epochs"
            gaps = [(before.epoch, t) for before, t in itertools.pairwise(ticks) if t.gap_from is not None]
            assert gaps, f"{symbol}: the outage outlasted the backfill but no gap was announced"
            for before, tick in gaps:
                # gap_from is the last epoch published before, and the tick is backfilled.
                assert tick.gap_from == before and tick.backfill
            expected, _ = sim.market.history(symbol).window(epochs[0], epochs[-1], 1_000_000)
            missing = sorted(set(expected) - set(epochs))
            assert missing, f"{symbol}: nothing was lost, yet a gap was announced"
            unannounced = [m for m in missing if not any(t.gap_from < m < t.epoch for _, t in gaps)]
            assert not unannounced, f"{symbol}: missing epochs outside any announced gap: {unannounced[:10]}"
            # What the reply and its pages could hold was recovered: 300 ticks before the live stream.
            assert sum(1 for t in ticks if t.backfill) >= 300
            # The status names the latest lost stretch (what the status page shows).
            [status] = [s for s in manager.snapshot().symbols if s.symbol == symbol]
            assert (status.gap_from, status.gap_to) == (gaps[-1][1].gap_from, gaps[-1][1].epoch)
        assert manager.stats()["backfill_gaps"] >= len(SYMBOLS)
        assert manager.stats()["backfill_pages"] >= 2 * len(SYMBOLS)


async def test_refused_connections_open_the_breaker_then_a_probe_recovers() -> None:
    async with running() as (manager, sim, recorder, breakers):
        await wait_live(recorder, manager)
        sim.refuse_connections(2.0)
        await sim.drop_all()
        await recorder.wait_for(lambda: manager.snapshot().state == LinkState.CIRCUIT_OPEN)
        snap = manager.snapshot()
        assert snap.last_error is not None and snap.last_error.code == "HandshakeRefused"
        assert snap.next_attempt_at is not None
        assert breakers.websocket.snapshot().state == "open"
        attempts = [s.attempt for s in recorder.statuses if s.state == LinkState.RECONNECTING and s.attempt]
        assert max(attempts) == 3, "a retry cycle makes WEBSOCKET_MAX_RETRY_ATTEMPTS attempts"
        await wait_live(recorder, manager)
        assert breakers.websocket.snapshot().state == "closed"
        assert_no_gap_no_duplicate(recorder, sim)


@pytest.mark.parametrize(
    ("fault", "code"),
    [("blackhole_handshakes", "ConnectTimeout"), ("ignore_pings", "HeartbeatTimeout")],
    ids=["a handshake that never completes", "unanswered pings"],
)
async def test_a_dead_link_is_named_and_replaced_without_a_gap(fault: str, code: str) -> None:
    async with running() as (manager, sim, recorder, _):
        await wait_live(recorder, manager)
        switch = getattr(sim, fault)
        switch(True)
        if fault == "blackhole_handshakes":
            await sim.drop_all()  # the handshake that follows is the one held
        await recorder.wait_for(lambda: (e := manager.snapshot().last_error) is not None and e.code == code)
        switch(False)
        await recorder.wait_for(lambda: manager.snapshot().reconnect_count >= 1)
        await wait_live(recorder, manager)
        assert_no_gap_no_duplicate(recorder, sim)


async def test_paused_feed_keeps_the_link_and_resumes_without_reconnecting() -> None:
    async with running() as (manager, sim, recorder, _):
        await wait_live(recorder, manager)
        sim.pause_feed(True)
        before = len(recorder.ticks)
        await asyncio.sleep(1.0)  # several ping intervals of silence
        assert manager.snapshot().state == LinkState.CONNECTED
        assert manager.snapshot().last_pong_latency_s is not None
        sim.pause_feed(False)
        await recorder.wait_for(lambda: len(recorder.ticks) > before + 5)
        assert manager.snapshot().reconnect_count == 0
        # The pause is a gap in the simulator's own history too, so the sequence still matches it.
        assert_no_gap_no_duplicate(recorder, sim)


@pytest.mark.parametrize("code", ["RateLimit", "WrongResponse"])
async def test_transient_errors_on_subscribe_back_off_and_subscribe(code: str) -> None:
    async with running() as (manager, sim, recorder, _):
        await wait_live(recorder, manager)
        history_before = sim.stats().requests_by_type.get("ticks_history", 0)
        # The next three requests fail: the probe after the reconnect and two subscribes.
        sim.inject_error(code, count=3)
        await sim.drop_all()
        await recorder.wait_for(lambda: manager.snapshot().reconnect_count >= 1)
        await wait_live(recorder, manager)
        await recorder.wait_for(lambda: all(s.subscribed for s in manager.snapshot().symbols))
        assert all(s.failed_code is None for s in manager.snapshot().symbols)
        assert manager.stats()["errors_by_code"].get(code, 0) == 3
        # Both symbols re-subscribed once, plus one retry per failed subscribe.
        assert sim.stats().requests_by_type.get("ticks_history", 0) - history_before == len(SYMBOLS) + 2
        assert manager.snapshot().reconnect_count == 1, "an error reply must not cost the link"
        assert_no_gap_no_duplicate(recorder, sim)


async def test_malformed_frame_is_counted_and_the_link_survives() -> None:
    async with running() as (manager, sim, recorder, _):
        await wait_live(recorder, manager)
        await sim.send_malformed_frame()
        await recorder.wait_for(lambda: manager.stats()["protocol_errors"] >= 1)
        await wait_live(recorder, manager)
        assert manager.snapshot().reconnect_count == 0
        assert_no_gap_no_duplicate(recorder, sim)


async def test_deploy_is_a_planned_drop_with_prompt_reconnect() -> None:
    async with running() as (manager, sim, recorder, _):
        await wait_live(recorder, manager)
        await sim.deploy(close_after_s=0.2)
        await recorder.wait_for(lambda: any(s.planned_reconnect for s in recorder.statuses))
        planned = [s for s in recorder.statuses if s.planned_reconnect]
        assert planned[0].last_error is not None and planned[0].last_error.code == "SiteUpdating"
        await recorder.wait_for(lambda: manager.snapshot().reconnect_count >= 1)
        await wait_live(recorder, manager)
        assert_no_gap_no_duplicate(recorder, sim)


async def test_invalid_symbol_is_marked_failed_without_looping() -> None:
    settings = settings_for(DERIV_SYMBOLS="1HZ100V,R_50,NOPE_1")
    async with running(settings) as (manager, sim, recorder, _):
        await wait_live(recorder, manager)
        bad = next(s for s in manager.snapshot().symbols if s.symbol == "NOPE_1")
        assert bad.failed_code == "InvalidSymbol" and not bad.subscribed
        assert "NOPE_1" in (bad.failed_reason or "")
        requests_before = sim.stats().requests_by_type.get("ticks", 0)
        await wait_live(recorder, manager, extra=10)
        assert sim.stats().requests_by_type.get("ticks", 0) == requests_before, "InvalidSymbol was retried"


async def test_invalid_app_id_is_reported_by_code() -> None:
    settings = settings_for()
    sim = DerivSimulator(time_scale=TIME_SCALE, blocked_app_ids=(settings.DERIV_APP_ID,))
    await sim.start()
    recorder = Recorder()
    breakers = BreakerRegistry.from_settings(settings)
    manager = DerivManager(settings, recorder, breakers.websocket, url=sim.url, backoff_base_s=0.05, backoff_cap_s=0.1)
    await manager.start()
    try:
        await recorder.wait_for(lambda: manager.snapshot().last_error is not None)
        error = manager.snapshot().last_error
        assert error is not None and error.code == "AccessRestricted"
    finally:
        await manager.stop()
        await sim.stop()


async def test_authorize_is_sent_again_after_every_reconnect() -> None:
    settings = settings_for(DERIV_API_TOKEN="good-token-123")
    async with running(settings) as (manager, sim, recorder, _):
        await wait_live(recorder, manager)
        assert sim.stats().requests_by_type.get("authorize") == 1
        await sim.drop_all()
        await recorder.wait_for(lambda: manager.snapshot().reconnect_count >= 1)
        await wait_live(recorder, manager)
        assert sim.stats().requests_by_type.get("authorize") == 2
        assert manager.snapshot().last_error is None


async def test_invalid_token_is_reported_and_ticks_still_flow() -> None:
    settings = settings_for(DERIV_API_TOKEN="wrong-token-456")
    async with running(settings) as (manager, sim, recorder, _):
        await wait_live(recorder, manager)
        error = manager.snapshot().last_error
        assert error is not None and error.code == "InvalidToken"


async def test_requests_in_flight_fail_at_once_when_the_link_drops() -> None:
    async with running() as (manager, sim, recorder, _):
        await wait_live(recorder, manager)
        sim.drop_replies(True)
        pending = [asyncio.create_task(manager.request(protocol.time(10_000 + i))) for i in range(5)]
        await asyncio.sleep(0.1)
        assert not any(t.done() for t in pending)
        await sim.drop_all()
        results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 2.0)
        assert all(isinstance(r, ConnectionLost) for r in results)
        sim.drop_replies(False)
        await wait_live(recorder, manager)


async def test_request_without_a_link_fails_fast() -> None:
    settings = settings_for()
    recorder = Recorder()
    breakers = BreakerRegistry.from_settings(settings)
    manager = DerivManager(settings, recorder, breakers.websocket, url="ws://127.0.0.1:9/websockets/v3")
    with pytest.raises(UpstreamUnavailable):
        await manager.request(protocol.ping(1))


async def test_manual_retries_coalesce_into_one_attempt() -> None:
    settings = settings_for(WEBSOCKET_CB_RECOVERY_TIMEOUT="60")
    async with running(settings, manual_retry_min_interval_s=0.2) as (manager, sim, recorder, breakers):
        await wait_live(recorder, manager)
        sim.refuse_connections(60)
        await sim.drop_all()
        await recorder.wait_for(lambda: manager.snapshot().state == LinkState.CIRCUIT_OPEN)
        attempts_before = sim.stats().handshake_attempts
        sim.refuse_connections(0)
        outcomes = [manager.retry_now() for _ in range(20)]
        assert [o.status for o in outcomes].count("started") == 1
        assert {o.status for o in outcomes[1:]} == {"in_progress"}
        await wait_live(recorder, manager)
        assert sim.stats().handshake_attempts == attempts_before + 1
        assert manager.retry_now().status == "already_connected"


async def test_stop_leaves_no_task_behind() -> None:
    before = set(asyncio.all_tasks())
    async with running() as (manager, sim, recorder, _):
        await wait_live(recorder, manager)
    await asyncio.sleep(0)
    leftover = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert not leftover, [t.get_name() for t in leftover]
    assert manager.snapshot().state == LinkState.STOPPED


async def test_streams_ended_without_a_disconnect_are_resubscribed_and_backfilled() -> None:
    async with running() as (manager, sim, recorder, _):
        await wait_live(recorder, manager)
        await sim.restart(disconnect=False)  # every subscription silently invalidated
        subscribes_before = sim.stats().requests_by_type.get("ticks_history", 0)
        await recorder.wait_for(lambda: sim.stats().requests_by_type.get("ticks_history", 0) >= subscribes_before + 2)
        await wait_live(recorder, manager)
        assert manager.snapshot().reconnect_count == 0
        assert_no_gap_no_duplicate(recorder, sim)


async def test_wss_to_a_server_without_tls_says_so_in_plain_words() -> None:
    settings = settings_for()
    sim = DerivSimulator(time_scale=TIME_SCALE)
    await sim.start()
    recorder = Recorder()
    breakers = BreakerRegistry.from_settings(settings)
    manager = DerivManager(settings, recorder, breakers.websocket, url=sim.url.replace("ws://", "wss://", 1))
    await manager.start()
    try:
        await recorder.wait_for(lambda: manager.snapshot().last_error is not None)
        error = manager.snapshot().last_error
        assert error is not None and error.code == "TLSHandshakeFailed"
        assert f"127.0.0.1:{sim.port}" in error.message and "TLS" in error.message
    finally:
        await manager.stop()
        await sim.stop()


class TinyDeriv:
    """A few lines of Deriv over a real socket, for replies the simulator never sends.

    Answers website_status, streams ticks for each ``ticks`` subscribe, and answers pings
    with ``bad_pong`` on the first connection (then properly).
    """

    def __init__(self, bad_pong: dict[str, Any]) -> None:
        self.bad_pong = bad_pong
        self.connections = 0
        self.epochs = itertools.count(1_700_000_000)

    async def handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        first = self.connections == 1
        streams: list[asyncio.Task[None]] = []
        try:
            async for raw in ws:  # ends quietly when the manager closes the link
                request = json.loads(raw)
                req_id = request.get("req_id")
                if "website_status" in request:
                    body = {"site_status": "up"}
                    await ws.send(json.dumps({"msg_type": "website_status", "website_status": body, "req_id": req_id}))
                elif "ticks" in request:
                    streams.append(asyncio.create_task(self.stream(ws, request["ticks"], req_id)))
                elif "ticks_history" in request:  # a resubscribe with backfill: nothing was missed
                    symbol = request["ticks_history"]
                    history = {"msg_type": "history", "history": {"times": [], "prices": []}, "req_id": req_id}
                    await ws.send(json.dumps({**history, "echo_req": {"ticks_history": symbol}, "pip_size": 2}))
                    streams.append(asyncio.create_task(self.stream(ws, symbol, req_id)))
                elif "ping" in request:
                    pong = self.bad_pong if first else {"msg_type": "ping", "ping": "pong"}
                    await ws.send(json.dumps({**pong, "req_id": req_id}))
        except websockets.ConnectionClosed:
            pass  # the manager dropped this link (that is the point)
        finally:
            for task in streams:
                task.cancel()
            await asyncio.gather(*streams, return_exceptions=True)

    async def stream(self, ws: ServerConnection, symbol: str, req_id: int) -> None:
        sub = "b4d42748-0744-c46b-f59b-cb7dd936bafa"
        with contextlib.suppress(Exception):
            while True:  # ticks keep flowing whatever the pings get
                body = {"symbol": symbol, "epoch": next(self.epochs), "quote": 1.25, "pip_size": 2, "id": sub}
                frame = {"msg_type": "tick", "tick": body, "subscription": {"id": sub}, "req_id": req_id}
                await ws.send(json.dumps(frame))
                await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    ("bad_pong", "cause"),
    [
        ({"msg_type": "ping", "ping": ["x"]}, "ProtocolError"),
        (
            {"msg_type": "ping", "error": {"code": "RateLimit", "message": "You have reached the rate limit."}},
            "HeartbeatRejected",
        ),
    ],
)
async def test_a_malformed_or_refused_pong_over_a_real_socket_is_a_sick_link_and_a_reconnect(
    bad_pong: dict[str, Any], cause: str
) -> None:
    tiny = TinyDeriv(bad_pong)
    async with serve(tiny.handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        settings = settings_for()
        recorder = Recorder()
        breakers = BreakerRegistry.from_settings(settings)
        manager = DerivManager(
            settings, recorder, breakers.websocket, url=f"ws://127.0.0.1:{port}/websockets/v3", backoff_cap_s=0.3
        )
        await manager.start()
        try:
            await recorder.wait_for(lambda: tiny.connections >= 2 and connected(manager)())
            drops = [s for s in recorder.statuses if s.state == LinkState.RECONNECTING and s.last_error is not None]
            assert drops and drops[0].last_error is not None and drops[0].last_error.code == cause
            # The heartbeat lives on in the new session: pongs keep coming back.
            pongs_before = manager.snapshot().last_pong_latency_s
            await recorder.wait_for(lambda: manager.snapshot().last_pong_latency_s != pongs_before)
        finally:
            await manager.stop()


async def test_a_bug_in_the_hub_is_logged_once_and_the_manager_reconnects(caplog: pytest.LogCaptureFixture) -> None:
    class Buggy(Recorder):
        fail = 1

        def publish_tick(self, tick: Tick) -> None:
            if self.fail:
                self.fail -= 1
                raise RuntimeError("hub bug")
            super().publish_tick(tick)

    settings = settings_for()
    sim = DerivSimulator(time_scale=TIME_SCALE, seed=7)
    await sim.start()
    recorder = Buggy()
    breakers = BreakerRegistry.from_settings(settings)
    manager = DerivManager(settings, recorder, breakers.websocket, url=sim.url, backoff_cap_s=0.3)
    await manager.start()
    try:
        await recorder.wait_for(lambda: manager.snapshot().reconnect_count >= 1)
        await wait_live(recorder, manager)
        drops = [s.last_error for s in recorder.statuses if s.state == LinkState.RECONNECTING and s.last_error]
        assert drops[0] is not None and drops[0].code == "InternalError" and "reader" in drops[0].message
        tracebacks = [r for r in caplog.records if r.exc_info is not None and r.levelno >= logging.ERROR]
        assert len(tracebacks) == 1 and "reader" in tracebacks[0].getMessage()
    finally:
        await manager.stop()
        await sim.stop()
