"""The asyncio driver over a scripted fake connection, on FakeClock: no sockets, no real time.

Each session runs in one TaskGroup (reader, setup, heartbeat, watchdog). These tests make
each task fail and check that the session ends, the error is logged once with its
traceback, the status names the cause, and the manager reconnects; they also drive the
deadlines (connect, pong, request) on fake time.
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

from backend_core.breakers.registry import BreakerRegistry
from backend_core.clock import FakeClock
from backend_core.config import Settings, load_settings
from backend_core.deriv import messages, protocol
from backend_core.deriv.actions import Action, Timer
from backend_core.deriv.link import LinkProtocol
from backend_core.deriv.manager import DerivManager
from backend_core.errors import RequestTimeout
from backend_core.events import LinkState, Tick, UpstreamSnapshot
from tests.helpers import loop_idle, turns_until

SYMBOLS = ("R_50", "1HZ100V")
PING_S = 30.0
DEADLINE_S = 10.0
URL = "wss://ws.derivws.com/websockets/v3"
Frame = dict[str, Any]


class FakeConnection:
    """What the driver needs of a WebSocket: frames in, requests out, close and abort."""

    def __init__(self, server: FakeServer) -> None:
        self._server = server
        self._inbox: asyncio.Queue[str | None] = asyncio.Queue()
        self.closed = False
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.transport = self

    def __aiter__(self) -> FakeConnection:
        return self

    async def __anext__(self) -> str:
        item = await self._inbox.get()
        if item is None:
            raise websockets.ConnectionClosedError(None, None)
        return item

    async def send(self, message: str) -> None:
        if self.closed:
            raise websockets.ConnectionClosedError(None, None)
        request = json.loads(message)
        self._server.requests.append(request)
        for frame in self._server.answer(request):
            self.push(frame)

    def push(self, frame: Frame | str) -> None:
        self._inbox.put_nowait(frame if isinstance(frame, str) else json.dumps(frame))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        self.abort()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self._inbox.put_nowait(None)


class FakeServer:
    """A scripted Deriv: answers each request as ``reply`` says (override per method)."""

    def __init__(self) -> None:
        self.connections: list[FakeConnection] = []
        self.requests: list[Frame] = []
        self.hang = False
        self.refuse = False
        self.refused = 0
        self.overrides: dict[str, Callable[[Frame], list[Frame]]] = {}
        self._epochs = itertools.count(1000)

    async def connect(self, url: str) -> FakeConnection:
        if self.hang:
            await asyncio.Event().wait()  # never answers: only the clock's deadline ends it
        if self.refuse:
            self.refused += 1
            raise ConnectionRefusedError(111, "Connection refused")
        connection = FakeConnection(self)
        self.connections.append(connection)
        return connection

    @property
    def live(self) -> FakeConnection:
        return self.connections[-1]

    def sent(self, method: str) -> list[Frame]:
        return [r for r in self.requests if method in r]

    def answer(self, request: Frame) -> list[Frame]:
        method = next(iter(request))
        if method in self.overrides:
            return self.overrides[method](request)
        req_id = request["req_id"]
        if method == "website_status":
            return [{"msg_type": "website_status", "website_status": {"site_status": "up"}, "req_id": req_id}]
        if method == "ping":
            return [{"msg_type": "ping", "ping": "pong", "req_id": req_id}]
        if method == "ticks":
            return [self.tick(request["ticks"], req_id)]
        if method == "ticks_history":
            history = {"times": [], "prices": []}
            echo = {"ticks_history": request["ticks_history"]}
            return [{"msg_type": "history", "history": history, "echo_req": echo, "pip_size": 2, "req_id": req_id}]
        if method == "forget":
            return [{"msg_type": "forget", "forget": 1, "req_id": req_id}]
        return []  # anything else goes unanswered

    def tick(self, symbol: str, req_id: int) -> Frame:
        sub = f"{abs(hash(symbol)) % 10**8:08d}-0744-c46b-f59b-cb7dd936bafa"
        body = {"symbol": symbol, "epoch": next(self._epochs), "quote": 1.5, "pip_size": 2, "id": sub}
        return {"msg_type": "tick", "tick": body, "subscription": {"id": sub}, "req_id": req_id}


class Recorder:
    def __init__(self) -> None:
        self.ticks: list[Tick] = []
        self.statuses: list[UpstreamSnapshot] = []
        self.fail_ticks = 0  # this many publish_tick calls raise (a bug in the hub)

    def publish_tick(self, tick: Tick) -> None:
        if self.fail_ticks:
            self.fail_ticks -= 1
            raise RuntimeError("hub bug")
        self.ticks.append(tick)

    def publish_status(self, snapshot: UpstreamSnapshot) -> None:
        self.statuses.append(snapshot)

    def causes(self) -> list[str]:
        """The error shown with each drop (the status that says "reconnecting")."""
        shown = [s.last_error for s in self.statuses if s.state == LinkState.RECONNECTING and s.attempt == 0]
        return [e.code for e in dict.fromkeys(e for e in shown if e is not None)]


def settings_for(**overrides: str) -> Settings:
    env = {
        "DERIV_SYMBOLS": ",".join(SYMBOLS),
        "DERIV_PING_INTERVAL": str(PING_S),
        "WEBSOCKET_CONNECTION_TIMEOUT": str(DEADLINE_S),
        "WEBSOCKET_MAX_RETRY_ATTEMPTS": "3",
        "WEBSOCKET_CB_FAILURE_THRESHOLD": "3",
        "WEBSOCKET_CB_RECOVERY_TIMEOUT": "30",
    }
    return load_settings({**env, **overrides})


class Harness:
    def __init__(self, manager: DerivManager, server: FakeServer, recorder: Recorder, clock: FakeClock) -> None:
        self.manager, self.server, self.recorder, self.clock = manager, server, recorder, clock

    def connected(self) -> bool:
        return self.manager.snapshot().state == LinkState.CONNECTED

    def streaming(self) -> bool:
        return self.connected() and all(s.subscribed for s in self.manager.snapshot().symbols)

    async def advance(self, seconds: float) -> None:
        """Move fake time in small steps; after each, the loop runs until every task waits."""
        step = 0.5
        for _ in range(int(seconds / step)):
            self.clock.advance(step)
            await loop_idle()

    async def reconnected(self, connections: int = 2) -> None:
        """Wait (advancing fake time for any backoff) until connection ``connections`` streams."""
        for _ in range(200):
            if len(self.server.connections) >= connections and self.streaming():
                return
            await self.advance(0.5)
        raise AssertionError("the manager did not reconnect")


@contextlib.asynccontextmanager
async def running(
    settings: Settings | None = None, *, link_type: type[LinkProtocol] = LinkProtocol, **kwargs: Any
) -> AsyncIterator[Harness]:
    settings = settings or settings_for()
    clock = FakeClock()
    server = FakeServer()
    recorder = Recorder()
    breakers = BreakerRegistry.from_settings(settings, clock=clock)
    options: dict[str, Any] = {"rng": random.Random(1), "backoff_base_s": 0.5, "backoff_cap_s": 2.0}
    manager = DerivManager(
        settings,
        recorder,
        breakers.websocket,
        url=URL,
        clock=clock,
        connect=server.connect,
        link_type=link_type,
        **{**options, **kwargs},
    )
    harness = Harness(manager, server, recorder, clock)
    await manager.start()
    try:
        yield harness
    finally:
        await manager.stop()


async def streaming(harness: Harness) -> None:
    await turns_until(harness.streaming)


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info is not None]


# --------------------------------------------------------------------------- the basics


async def test_connects_subscribes_and_streams_on_fake_time() -> None:
    async with running() as h:
        await streaming(h)
        assert [r for r in h.server.requests if "ticks" in r] == h.server.sent("ticks")
        assert {t.symbol for t in h.recorder.ticks} == set(SYMBOLS)
        assert h.manager.snapshot().last_error is None


async def test_the_connect_timeout_runs_on_the_clock_and_names_the_host() -> None:
    async with running() as h:
        await streaming(h)
        h.server.hang = True
        h.server.live.abort()
        await turns_until(lambda: h.manager.snapshot().state == LinkState.RECONNECTING)
        await h.advance(DEADLINE_S + 1)
        error = h.manager.snapshot().last_error
        assert error is not None and error.code == "ConnectTimeout" and "ws.derivws.com:443" in error.message
        h.server.hang = False
        await h.reconnected()


async def test_a_request_deadline_runs_on_the_clock() -> None:
    async with running() as h:
        await streaming(h)
        request = asyncio.ensure_future(h.manager.request(protocol.time(9001), timeout=5.0))
        await turns_until(lambda: bool(h.server.sent("time")))
        await h.advance(5.0)
        with pytest.raises(RequestTimeout):
            await request
        assert len(h.server.connections) == 1, "someone else's timeout does not cost the link"


async def test_pings_keep_a_healthy_link_and_measure_the_round_trip() -> None:
    async with running() as h:
        await streaming(h)
        await h.advance(3 * PING_S)
        assert len(h.server.sent("ping")) == 3
        assert h.manager.snapshot().last_pong_latency_s is not None
        assert len(h.server.connections) == 1


# --------------------------------------------------------------------------- dead and sick links


@pytest.mark.parametrize(
    ("pong", "cause"),
    [
        (None, "HeartbeatTimeout"),  # never answered (a half-open link)
        ({"msg_type": "ping", "ping": ["x"]}, "ProtocolError"),  # a malformed pong
        ({"msg_type": "ping", "error": {"code": "RateLimit", "message": "slow"}}, "HeartbeatRejected"),
    ],
)
async def test_a_ping_answered_badly_or_not_at_all_ends_the_session_and_it_reconnects(
    pong: Frame | None, cause: str
) -> None:
    async with running() as h:
        await streaming(h)
        h.server.overrides["ping"] = lambda request: [] if pong is None else [{**pong, "req_id": request["req_id"]}]
        await h.advance(PING_S + DEADLINE_S + 1)
        assert h.recorder.causes()[:1] == [cause]
        del h.server.overrides["ping"]
        await h.reconnected()
        assert h.server.live is not h.server.connections[0] and h.server.connections[0].closed


async def test_one_symbols_request_timeout_leaves_the_link_and_the_other_symbol_alone() -> None:
    async with running() as h:
        unanswered = ["R_50"]  # the first subscribe of R_50 gets no reply

        def ticks(request: Frame) -> list[Frame]:
            if request["ticks"] in unanswered:
                unanswered.remove(request["ticks"])
                return []
            return [h.server.tick(request["ticks"], request["req_id"])]

        h.server.overrides["ticks"] = ticks
        await turns_until(lambda: h.connected() and len(h.recorder.ticks) == 1)
        await h.advance(16.0)  # the request deadline, then the backoff (at most 0.5 s here)
        assert h.streaming() and len(h.server.connections) == 1
        timed_out = [s for s in h.recorder.statuses if {x.symbol: x.failed_code for x in s.symbols}["R_50"]]
        assert timed_out and all(x.subscribed for x in timed_out[0].symbols if x.symbol == "1HZ100V")
        assert timed_out[0].symbols[0].failed_code == "RequestTimeout"
        assert len(h.server.sent("ticks")) == 3


async def test_a_failure_that_opens_the_breaker_ends_the_cycle_and_the_countdown_is_the_probes() -> None:
    # Threshold 2, three attempts per cycle: the second refusal opens the breaker, and the
    # half-open probe 30 s later is refused too (the open period then grows).
    async with running(settings_for(WEBSOCKET_CB_FAILURE_THRESHOLD="2"), stable_session_s=0.0) as h:
        await streaming(h)
        h.server.refuse = True
        h.server.live.abort()
        await h.advance(3.0)  # the backoff after the first refusal (at most 1 s here)
        assert h.server.refused == 2 and h.manager.snapshot().state == LinkState.CIRCUIT_OPEN
        await h.advance(30.0)
        assert h.server.refused == 3 and h.manager.snapshot().state == LinkState.CIRCUIT_OPEN
        countdowns = [
            (s.state, s.next_attempt_at)
            for s in h.recorder.statuses
            if s.next_attempt_at is not None and s.last_error is not None and s.last_error.code == "ConnectionRefused"
        ]
        # No "reconnecting, next attempt in a moment" once the breaker is open: only the
        # backoff after the first refusal, then the waits for the probe, each as long as
        # the breaker's own open period.
        assert [state for state, _ in dict.fromkeys(countdowns)] == [
            LinkState.RECONNECTING,
            LinkState.CIRCUIT_OPEN,
            LinkState.CIRCUIT_OPEN,
        ]
        probe_at = countdowns[-1][1]
        assert probe_at is not None and probe_at >= h.clock.wall() + 29.0
        h.server.refuse = False
        await h.advance(probe_at - h.clock.wall() + 1.0)
        await h.reconnected()
        assert h.server.refused == 3


# --------------------------------------------------------------------------- a task fails


def failing(where: str) -> type[LinkProtocol]:
    """A LinkProtocol whose entry point for one session task raises the first time (a bug)."""

    class Faulty(LinkProtocol):
        armed = True

        def _maybe_fail(self, task: str) -> None:
            if task == where and self.armed:
                self.armed = False
                raise RuntimeError(f"bug in {task}")

        def connected(self, now: float) -> list[Action]:
            self._maybe_fail("setup")
            return super().connected(now)

        def frame(self, message: messages.Message, now: float) -> list[Action]:
            if type(message) is messages.TickMessage:
                self._maybe_fail("reader")
            return super().frame(message, now)

        def deadline_reached(self, timer: Timer, now: float) -> list[Action]:
            self._maybe_fail(timer.value)
            return super().deadline_reached(timer, now)

    return Faulty


@pytest.mark.parametrize("task", ["setup", "reader", "heartbeat", "watchdog"])
async def test_a_failing_session_task_ends_the_session_logs_once_names_the_cause_and_reconnects(
    task: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with running(link_type=failing(task), stale_stream_s=40.0) as h:
        # setup and reader fail at once; the heartbeat at the first ping; the watchdog
        # once a stream could have gone silent (its timer is armed after the first pong).
        for _ in range(200):
            if h.recorder.causes():
                break
            await h.advance(1.0)
        [cause] = h.recorder.causes()
        assert cause == "InternalError"
        error = next(s.last_error for s in h.recorder.statuses if s.last_error and s.last_error.code == cause)
        assert task in error.message and "RuntimeError" in error.message
        await h.reconnected()
        [record] = tracebacks(caplog)
        assert task in record.getMessage() and record.exc_info is not None
        assert str(record.exc_info[1]) == f"bug in {task}"


async def test_a_bug_in_the_hub_ends_the_session_not_the_manager(caplog: pytest.LogCaptureFixture) -> None:
    async with running() as h:
        h.recorder.fail_ticks = 1
        await turns_until(lambda: bool(h.recorder.causes()))
        assert h.recorder.causes() == ["InternalError"]
        await h.reconnected()
        [record] = tracebacks(caplog)
        assert "reader" in record.getMessage()


async def test_a_task_failure_before_the_link_answered_gives_the_breaker_permit_back() -> None:
    settings = settings_for(WEBSOCKET_CB_FAILURE_THRESHOLD="1")
    async with running(settings, link_type=failing("setup")) as h:
        await h.reconnected()
        assert h.manager.snapshot().state == LinkState.CONNECTED  # the breaker (threshold 1) never opened


# --------------------------------------------------------------------------- bounded


async def test_error_codes_from_outside_are_counted_in_a_bounded_map() -> None:
    async with running() as h:
        await streaming(h)
        for n in range(80):
            h.server.live.push({"msg_type": "tick", "error": {"code": f"Code{n}", "message": "x"}})
        await turns_until(lambda: sum(h.manager.stats()["errors_by_code"].values()) >= 80)
        counts = h.manager.stats()["errors_by_code"]
        assert len(counts) == 50 and counts["other"] == 80 - 49
        assert len(h.server.connections) == 1


async def test_a_retry_on_a_live_link_asks_again_for_a_waiting_symbol() -> None:
    async with running() as h:
        closed = {"msg_type": "tick", "error": {"code": "MarketIsClosed", "message": "closed"}}
        h.server.overrides["ticks"] = lambda r: (
            [{**closed, "req_id": r["req_id"]}] if r["ticks"] == "R_50" else [h.server.tick(r["ticks"], r["req_id"])]
        )
        await turns_until(lambda: h.connected() and h.manager.stats()["errors_by_code"].get("MarketIsClosed") == 1)
        del h.server.overrides["ticks"]
        outcome = h.manager.retry_now()
        assert outcome.status == "already_connected" and "R_50" in outcome.message
        await turns_until(h.streaming)
        assert h.manager.retry_now().message == "The market feed is already connected."


async def test_stop_leaves_no_task_behind() -> None:
    before = set(asyncio.all_tasks())
    async with running() as h:
        await streaming(h)
        await h.advance(PING_S)
    await asyncio.sleep(0)
    leftover = {t for t in asyncio.all_tasks() - before if not t.done()}
    assert not leftover, [t.get_name() for t in leftover]
    assert h.manager.snapshot().state == LinkState.STOPPED
