"""The /api/v1/ws relay over real sockets: uvicorn on 127.0.0.1, clients from `websockets`.

Every wait is bounded with asyncio.timeout; nothing asserts on how long anything took.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.protocol import State
from websockets.typing import Origin
from websockets.uri import parse_uri

from backend_core.config import load_settings
from backend_core.events import ErrorInfo, LinkState, Tick, UpstreamSnapshot
from backend_core.hub import InMemoryHub
from backend_core.relay.protocol import MAX_FRAME_BYTES, RELAY_PATH
from backend_core.relay.server import Relay
from backend_core.relay.serving import RelayWebSocketProtocol
from tests.app_process import ROOT, free_port
from tests.helpers import until
from tests.integration.conftest import ServedApp
from tests.integration.relay_app import routes

WAIT_S = 10.0  # upper bound of any single wait; a healthy run needs milliseconds


@dataclass
class Harness:
    served: ServedApp
    relay: Relay
    hub: InMemoryHub
    provided: dict[str, Any]
    epochs: dict[str, int] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.served.ws_url + "/api/v1/ws"

    def publish(self, symbol: str = "R_50", count: int = 1, backfill: bool = False) -> list[int]:
        out = []
        for _ in range(count):
            epoch = self.epochs.get(symbol, 1000) + 1
            self.epochs[symbol] = epoch
            self.hub.publish_tick(Tick(symbol=symbol, epoch=epoch, quote=epoch / 10, pip_size=2, backfill=backfill))
            out.append(epoch)
        return out

    def connect(self, **kwargs: Any) -> Any:
        kwargs.setdefault("open_timeout", WAIT_S)
        kwargs.setdefault("close_timeout", 2)
        return connect(self.url, **kwargs)


StartRelay = Callable[..., Awaitable[Harness]]


async def _health(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


@pytest.fixture(params=["asgi_send", "send_now"])
async def start_relay(
    asgi_server: Callable[..., Awaitable[ServedApp]], request: pytest.FixtureRequest
) -> AsyncIterator[StartRelay]:
    """Every test runs twice: under plain uvicorn, where the relay writes through the ASGI
    ``send``, and under the protocol production serves, which offers a synchronous write."""
    harnesses: list[Harness] = []
    default_server = {"ws": RelayWebSocketProtocol} if request.param == "send_now" else {}

    async def start(
        env: dict[str, str] | None = None,
        hub: InMemoryHub | None = None,
        server: dict[str, Any] | None = None,
        **relay_kwargs: Any,
    ) -> Harness:
        settings = load_settings({"DERIV_SYMBOLS": "R_50,R_100", **(env or {})})
        hub = hub or InMemoryHub()
        provided: dict[str, Any] = {"breaker_state": "closed", "retry_after_s": None}
        relay = Relay(settings, hub, lambda: dict(provided), **relay_kwargs)
        app = Starlette(routes=[Route("/health", _health), *routes(relay)])
        served = await asgi_server(app, **(default_server if server is None else server))
        harness = Harness(served, relay, hub, provided)
        harnesses.append(harness)
        return harness

    yield start
    for harness in harnesses:
        async with asyncio.timeout(WAIT_S):
            await harness.relay.close_all()
        harness.hub.close()
        assert harness.relay.snapshot()["active"] == 0
    left = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("relay-") and not t.done()]
    assert left == [], f"relay tasks left behind: {left}"


async def recv(ws: ClientConnection) -> dict[str, Any]:
    async with asyncio.timeout(WAIT_S):
        frame: dict[str, Any] = json.loads(await ws.recv())
        return frame


async def recv_type(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """The next frame of ``kind``, skipping heartbeat pings and status frames unless asked for."""
    async with asyncio.timeout(WAIT_S):
        while True:
            frame = await recv(ws)
            if frame["type"] == kind:
                return frame
            assert frame["type"] in {"ping", "status"}, frame


async def expect_close(ws: ClientConnection) -> tuple[int, str, list[dict[str, Any]]]:
    """Read until the server closes; returns (code, reason, frames read on the way)."""
    frames = []
    async with asyncio.timeout(WAIT_S):
        try:
            while True:
                frames.append(json.loads(await ws.recv()))
        except ConnectionClosed as exc:
            if exc.rcvd is None:
                return 1006, "", frames
            return exc.rcvd.code, exc.rcvd.reason, frames


async def subscribe(ws: ClientConnection, *symbols: str, **extra: Any) -> dict[str, Any]:
    await ws.send(json.dumps({"action": "subscribe", "symbols": list(symbols), **extra}))
    return await recv_type(ws, "subscribed")


async def witness_alive(h: Harness, ws: ClientConnection, symbol: str = "R_100") -> None:
    """``ws`` (subscribed to ``symbol``) still receives live ticks."""
    (epoch,) = h.publish(symbol)
    frame = await recv_type(ws, "tick")
    assert (frame["symbol"], frame["epoch"]) == (symbol, epoch)


# --- connect, subscribe, resume -------------------------------------------------------------


async def test_status_frame_on_connect(start_relay: StartRelay) -> None:
    h = await start_relay()
    async with h.connect() as ws:
        first = await recv(ws)
        assert first["type"] == "status"
        assert first["state"] == "unknown"  # nothing published yet
        assert first["breaker_state"] == "closed"
    h.hub.publish_status(UpstreamSnapshot(state=LinkState.CONNECTED, since=1_700_000_000.0, url="sim", simulated=True))
    async with h.connect() as ws:
        first = await recv(ws)
        assert (first["type"], first["state"], first["since"]) == ("status", "connected", "2023-11-14T22:13:20.000Z")


async def test_subscribe_then_live_ticks_in_order(start_relay: StartRelay) -> None:
    h = await start_relay()
    async with h.connect() as ws:
        await recv(ws)
        ack = await subscribe(ws, "R_50", id="s1")
        assert ack == {"type": "subscribed", "symbols": ["R_50"], "id": "s1"}
        published = h.publish("R_50", 50)
        h.publish("R_100", 5)  # not subscribed
        got = [await recv_type(ws, "tick") for _ in published]
        assert [f["epoch"] for f in got] == published
        assert all(f["symbol"] == "R_50" and "replay" not in f and f["backfill"] is False for f in got)
        assert set(got[0]) == {"type", "symbol", "epoch", "quote", "bid", "ask", "pip_size", "backfill"}


async def test_batch_sends_waiting_frames_as_one_newline_delimited_message(start_relay: StartRelay) -> None:
    h = await start_relay()
    async with h.connect() as plain, h.connect() as batched:
        await recv(plain)
        await recv(batched)
        assert await subscribe(plain, "R_50", "R_100") == {"type": "subscribed", "symbols": ["R_100", "R_50"]}
        ack = await subscribe(batched, "R_50", "R_100", batch=True)
        assert ack == {"type": "subscribed", "symbols": ["R_100", "R_50"], "batch": True}
        published = h.publish("R_50", 3) + h.publish("R_100", 2)  # at once: all wait for one flush
        async with asyncio.timeout(WAIT_S):
            message = await batched.recv()
        assert isinstance(message, str)
        lines = [json.loads(line) for line in message.split("\n")]
        assert [(f["type"], f["epoch"]) for f in lines] == [("tick", e) for e in published]
        singles = [await recv_type(plain, "tick") for _ in published]
        assert singles == lines  # the same frames, one message each
        (epoch,) = h.publish("R_50")  # a lone frame is a plain one-line message
        assert await recv_type(batched, "tick") == await recv_type(plain, "tick")
        await batched.send(json.dumps({"action": "subscribe", "symbols": ["R_50"], "batch": False}))
        assert "batch" not in await recv_type(batched, "subscribed")
        h.publish("R_50", 2)
        assert [(await recv_type(batched, "tick"))["epoch"] for _ in range(2)] == [epoch + 1, epoch + 2]


async def test_resume_replays_then_goes_live_without_gap_or_duplicate(start_relay: StartRelay) -> None:
    h = await start_relay()
    before = h.publish("R_50", 30)
    resume_from = before[9]
    stop = asyncio.Event()

    async def keep_publishing() -> None:  # live ticks race the resume
        while not stop.is_set():
            h.publish("R_50")
            await asyncio.sleep(0.001)

    async with h.connect() as ws:
        await recv(ws)
        publisher = asyncio.create_task(keep_publishing())
        try:
            ack = await subscribe(ws, "R_50", resume={"R_50": resume_from})
            assert ack["resume"]["R_50"]["from_epoch"] == resume_from
            assert ack["resume"]["R_50"]["truncated"] is False
            replayed = ack["resume"]["R_50"]["replayed"]
            assert replayed >= 20
            await asyncio.sleep(0.05)
        finally:
            stop.set()
            await publisher
        last = h.epochs["R_50"]
        frames: list[dict[str, Any]] = []
        while not frames or frames[-1]["epoch"] < last:
            frames.append(await recv_type(ws, "tick"))
    epochs = [f["epoch"] for f in frames]
    assert epochs == list(range(resume_from + 1, last + 1))  # no gap, no duplicate
    assert all(f.get("replay") is True for f in frames[:replayed])
    assert not any(f.get("replay") for f in frames[replayed:])


async def test_resume_reports_truncation_when_the_ring_lost_ticks(start_relay: StartRelay) -> None:
    h = await start_relay(hub=InMemoryHub(ring_size=5))
    published = h.publish("R_50", 20)
    async with h.connect() as ws:
        await recv(ws)
        ack = await subscribe(ws, "R_50", resume={"R_50": published[0]})
        assert ack["resume"]["R_50"] == {"from_epoch": published[0], "replayed": 5, "truncated": True}
        frames = [await recv_type(ws, "tick") for _ in range(5)]
        assert [f["epoch"] for f in frames] == published[-5:]


async def test_unsubscribe(start_relay: StartRelay) -> None:
    h = await start_relay()
    async with h.connect() as ws:
        await recv(ws)
        await subscribe(ws, "R_50", "R_100")
        await ws.send(json.dumps({"action": "unsubscribe", "symbols": ["R_50"], "id": 9}))
        ack = await recv_type(ws, "unsubscribed")
        assert ack == {"type": "unsubscribed", "symbols": ["R_50"], "subscribed": ["R_100"], "id": 9}
        h.publish("R_50")
        await witness_alive(h, ws, "R_100")  # the next tick is R_100's: R_50's was not sent
        await ws.send(json.dumps({"action": "unsubscribe"}))
        ack = await recv_type(ws, "unsubscribed")
        assert ack["symbols"] == ["R_100"] and ack["subscribed"] == []


async def test_ping_pong(start_relay: StartRelay) -> None:
    h = await start_relay()
    async with h.connect() as ws:
        await recv(ws)
        await ws.send(json.dumps({"action": "ping", "id": "p-1"}))
        assert await recv_type(ws, "pong") == {"type": "pong", "id": "p-1"}
        await ws.send(json.dumps({"type": "ping"}))
        assert await recv_type(ws, "pong") == {"type": "pong"}


# --- hostile input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "code"),
    [
        ("{not json", "invalid_json"),
        (json.dumps({"action": "fly"}), "unknown_action"),
        (json.dumps({"action": "subscribe", "symbols": ["EURUSD"]}), "unknown_symbol"),
        (json.dumps({"action": "subscribe", "symbols": "R_50"}), "invalid_message"),
        (json.dumps({"action": "subscribe", "symbols": ["R_50"], "resume": {"R_50": "x"}}), "invalid_message"),
        (json.dumps([1, 2, 3]), "invalid_message"),
        (b"\x00\x01binary", "invalid_message"),
    ],
)
async def test_bad_input_gets_a_specific_error_and_others_are_untouched(
    start_relay: StartRelay, payload: str | bytes, code: str
) -> None:
    h = await start_relay()
    async with h.connect() as witness, h.connect() as ws:
        await recv(witness)
        await subscribe(witness, "R_100")
        await recv(ws)
        await ws.send(payload)
        error = await recv_type(ws, "error")
        assert error["code"] == code and error["message"]
        # the offender stays connected and usable
        await ws.send(json.dumps({"action": "ping", "id": 1}))
        assert await recv_type(ws, "pong") == {"type": "pong", "id": 1}
        await witness_alive(h, witness)


async def test_oversized_frame_closes_1009_where_the_server_sets_no_limit(start_relay: StartRelay) -> None:
    # Plain uvicorn (16 MiB) or granian (make dev): the relay's own check is the fallback.
    h = await start_relay(server={})
    async with h.connect() as witness, h.connect() as ws:
        await recv(witness)
        await subscribe(witness, "R_100")
        await recv(ws)
        await ws.send(json.dumps({"action": "ping", "pad": "x" * 5000}))
        code, reason, _ = await expect_close(ws)
        assert code == 1009 and "too big" in reason
        await witness_alive(h, witness)
    assert h.relay.snapshot()["totals"]["closed"]["message_too_big"] == 1


# A frame header announcing far more than the limit, followed by only the start of it.
ANNOUNCED_BYTES = 1 << 20
SENT_BYTES = 1024


def _masked_text_frame_head(length: int) -> bytes:
    # FIN + text; MASK + 64-bit length (RFC 6455 section 5.2); an all-zero mask.
    return bytes([0x81, 0x80 | 127]) + length.to_bytes(8, "big") + bytes(4)


async def announce_oversize_frame(host: str, port: int, path: str) -> int | None:
    """Open a WebSocket on ``path``, announce a 1 MiB frame and send only its first KiB.

    Returns the close code the server sends. A server that buffers the frame before
    checking its size would wait for the other 1,047,552 bytes, which never come, and
    this would time out: a close code proves the frame was refused from its header.
    """
    protocol = ClientProtocol(parse_uri(f"ws://{host}:{port}{path}"))
    protocol.send_request(protocol.connect())
    reader, writer = await asyncio.open_connection(host, port)
    try:
        async with asyncio.timeout(WAIT_S):
            writer.write(b"".join(protocol.data_to_send()))
            while protocol.state is State.CONNECTING:
                data = await reader.read(65536)
                assert data, "the server closed during the handshake"
                protocol.receive_data(data)
            assert protocol.handshake_exc is None
            writer.write(_masked_text_frame_head(ANNOUNCED_BYTES) + b" " * SENT_BYTES)
            await writer.drain()
            while protocol.close_rcvd is None:
                data = await reader.read(65536)
                if not data:
                    break
                protocol.receive_data(data)
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return None if protocol.close_rcvd is None else protocol.close_rcvd.code


async def big_message_echoes(ws_url: str) -> bool:
    """The server's other WebSocket (Reflex's event socket in the app) keeps its own limit."""
    message = "y" * (16 * MAX_FRAME_BYTES)
    async with connect(ws_url + "/echo", open_timeout=WAIT_S, close_timeout=2) as ws:
        await ws.send(message)
        async with asyncio.timeout(WAIT_S):
            return await ws.recv() == message


async def test_the_server_refuses_an_oversize_frame_before_buffering_it(start_relay: StartRelay) -> None:
    h = await start_relay(server={"ws": RelayWebSocketProtocol})
    async with h.connect() as witness:
        await recv(witness)
        await subscribe(witness, "R_100")
        assert await announce_oversize_frame(h.served.host, h.served.port, RELAY_PATH) == 1009
        await witness_alive(h, witness)
        # The relay learns of it from the disconnect event.
        await until(lambda: h.relay.snapshot()["totals"]["closed"].get("message_too_big", 0) > 0, WAIT_S)
        # A legitimate frame at the limit still passes.
        await witness.send(json.dumps({"action": "ping", "pad": "x" * (MAX_FRAME_BYTES - 40)}))
        assert (await recv_type(witness, "pong"))["type"] == "pong"
    assert await big_message_echoes(h.served.ws_url)


class _FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 50000), "sockname": ("127.0.0.1", 8000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += data

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def test_an_oversize_frame_before_the_app_accepted_drops_the_socket_quietly(
    start_relay: StartRelay, caplog: pytest.LogCaptureFixture
) -> None:
    """A frame that races the handshake (sent before the 101 arrived) meets the parser while
    the connection is still CONNECTING: there is no close frame to send, only the socket to
    drop. Driven by hand, so that no event-loop turn lets the app accept in between."""
    import uvicorn
    from uvicorn.server import ServerState

    h = await start_relay()
    config = uvicorn.Config(h.served.server.config.app, ws=RelayWebSocketProtocol, lifespan="off")
    config.load()
    protocol = RelayWebSocketProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    transport = _FakeTransport()
    protocol.connection_made(transport)
    client = ClientProtocol(parse_uri(h.url))
    client.send_request(client.connect())
    protocol.data_received(b"".join(client.data_to_send()))  # the handshake: the app starts
    protocol.data_received(_masked_text_frame_head(ANNOUNCED_BYTES))  # before it could accept
    assert transport.closed
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    protocol.connection_lost(None)
    await until(lambda: not protocol.tasks, WAIT_S, what="the app task's end on the disconnect event")


async def test_production_serving_sets_the_frame_limit_in_uvicorn(tmp_path: Any) -> None:
    """gunicorn + uvicorn worker, started with the command ``reflex run --env prod`` builds,
    from the project root (where gunicorn.conf.py is)."""
    from unittest import mock

    from reflex.utils import exec as reflex_exec
    from reflex.utils import processes
    from reflex_base.constants import LogLevel

    port = free_port()
    built: list[list[str]] = []
    with mock.patch.object(processes, "new_process", lambda command, **_: built.append(command)):
        reflex_exec.run_uvicorn_backend_prod(
            "127.0.0.1", port, LogLevel.WARNING, app_target="tests.integration.relay_app:app"
        )
    (command,) = built
    assert "gunicorn" in command and "--config" not in command  # gunicorn finds the file itself
    log = (tmp_path / "gunicorn.log").open("wb")
    server = await asyncio.create_subprocess_exec(*command, cwd=ROOT, stdout=log, stderr=log, start_new_session=True)
    try:
        async with asyncio.timeout(60):
            while True:
                try:
                    _, probe = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    assert server.returncode is None, (tmp_path / "gunicorn.log").read_text()
                    await asyncio.sleep(0.1)
                    continue
                probe.close()
                break
        assert await announce_oversize_frame("127.0.0.1", port, RELAY_PATH) == 1009
        assert await big_message_echoes(f"ws://127.0.0.1:{port}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)
        async with asyncio.timeout(30):
            await server.wait()
        log.close()


async def test_flooding_gets_rate_limited_then_closed_1008(start_relay: StartRelay) -> None:
    h = await start_relay()
    async with h.connect() as witness, h.connect() as ws:
        await recv(witness)
        await subscribe(witness, "R_100")
        await recv(ws)
        # The client's own receive queue fills with pongs, so it may not notice the close
        # while still sending; read everything afterwards.
        with contextlib.suppress(ConnectionClosed):
            async with asyncio.timeout(WAIT_S):
                for _ in range(500):
                    await ws.send('{"action":"ping"}')
        code, reason, frames = await expect_close(ws)
        assert code == 1008 and reason == "rate limit exceeded"
        assert any(f["type"] == "error" and f["code"] == "rate_limited" for f in frames)
        await witness_alive(h, witness)


async def test_disallowed_origin_is_refused_before_accept(start_relay: StartRelay) -> None:
    h = await start_relay()
    with pytest.raises(InvalidStatus) as refused:
        async with h.connect(origin=Origin("http://evil.example")):
            pass
    assert refused.value.response.status_code == 403
    assert b"origin not allowed" in refused.value.response.body
    same_host = Origin(f"http://127.0.0.1:{h.served.port}")
    async with h.connect(origin=same_host) as ws:
        assert (await recv(ws))["type"] == "status"
    assert h.relay.snapshot()["totals"]["refused_origin"] == 1


async def test_allow_listed_origin_is_accepted(start_relay: StartRelay) -> None:
    h = await start_relay(allowed_origins=["http://localhost:3000"])
    async with h.connect(origin=Origin("http://localhost:3000")) as ws:
        assert (await recv(ws))["type"] == "status"


async def test_a_crash_in_one_handler_is_isolated(
    start_relay: StartRelay, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    h = await start_relay()

    def explode(*args: Any) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(h.relay, "_unsubscribe", explode)
    caplog.set_level(logging.INFO, logger="backend_core.relay")
    async with h.connect() as witness, h.connect() as ws:
        await recv(witness)
        await subscribe(witness, "R_100")
        await recv(ws)
        await ws.send(json.dumps({"action": "unsubscribe"}))
        code, reason, _ = await expect_close(ws)
        assert (code, reason) == (1011, "internal error")
        await witness_alive(h, witness)
    crash = [r for r in caplog.records if "crashed" in r.getMessage()]
    assert len(crash) == 1
    assert "id=c2" in crash[0].getMessage() and "peer=127.0.0.1:" in crash[0].getMessage()
    assert crash[0].exc_info is not None


# --- limits, liveness, slow clients ---------------------------------------------------------------


async def test_max_connections_refuses_the_next_with_1013(start_relay: StartRelay) -> None:
    h = await start_relay({"WEBSOCKET_MAX_CONNECTIONS": "2"})
    async with h.connect() as a, h.connect() as b:
        for ws in (a, b):
            await recv(ws)
            await subscribe(ws, "R_100")
        async with h.connect() as c:
            code, reason, _ = await expect_close(c)
            assert (code, reason) == (1013, "server full: 2 connections")
        (epoch,) = h.publish("R_100")
        for ws in (a, b):
            assert (await recv_type(ws, "tick"))["epoch"] == epoch
    totals = h.relay.snapshot()["totals"]
    assert totals["refused_full"] == 1 and totals["accepted"] == 2


async def test_heartbeat_timeout_closes_a_silent_client(start_relay: StartRelay) -> None:
    h = await start_relay({"WEBSOCKET_HEARTBEAT_INTERVAL": "0.1", "WEBSOCKET_CONNECTION_TIMEOUT": "0.8"})
    async with h.connect() as answering, h.connect() as silent:
        await recv(answering)
        await subscribe(answering, "R_100")

        async def answer_pings() -> None:
            async for raw in answering:
                if json.loads(raw)["type"] == "ping":
                    await answering.send('{"type":"pong"}')

        responder = asyncio.create_task(answer_pings())
        try:
            code, reason, frames = await expect_close(silent)
            assert (code, reason) == (1011, "heartbeat timeout")
            assert any(f["type"] == "ping" for f in frames)
        finally:
            responder.cancel()
            await asyncio.gather(responder, return_exceptions=True)
        # the client that answers is still served
        await witness_alive(h, answering)
    assert h.relay.snapshot()["totals"]["closed"]["heartbeat_timeout"] == 1


def _small_buffer_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


@pytest.mark.parametrize(
    ("watch", "limits"),
    [
        ("slow_consumer", {"backlog_max_age_s": 0.3, "send_timeout_s": 3600}),  # the backlog watch
        ("send_timeout", {"backlog_max_age_s": 3600, "send_timeout_s": 0.3}),  # the send watch
    ],
)
async def test_a_client_that_stops_reading_is_found_and_disconnected(
    start_relay: StartRelay, watch: str, limits: dict[str, float]
) -> None:
    # The hub's own limits are out of reach here, so only the relay's watch under test can act.
    hub = InMemoryHub(queue_size=100_000, max_drops_in_window=10**9, max_full_s=3600)
    h = await start_relay(hub=hub, close_timeout_s=0.5, **limits)
    async with (
        h.connect() as witness,
        # No compression: deflate shrinks these similar frames so much that filling the
        # socket buffers would take a million ticks.
        h.connect(
            sock=_small_buffer_socket(h.served.port), max_queue=4, ping_interval=None, compression=None
        ) as stalled,
    ):
        await recv(witness)
        await subscribe(witness, "R_50")
        await recv(stalled)
        await subscribe(stalled, "R_50")  # ... and never reads again
        received: list[int] = []

        async def read_witness() -> None:
            async for raw in witness:
                frame = json.loads(raw)
                if frame["type"] == "tick":
                    received.append(frame["epoch"])

        reader = asyncio.create_task(read_witness())
        published: list[int] = []
        try:
            async with asyncio.timeout(30):
                while h.relay.snapshot()["totals"]["closed"].get(watch, 0) == 0:
                    published += h.publish("R_50", 50)
                    await asyncio.sleep(0.001)
            await until(
                lambda: len(received) >= len(published) and h.relay.snapshot()["active"] <= 1,
                what="the witness to have every tick and the stalled client to be gone",
            )
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        assert received == published  # the reading client lost nothing
        snapshot = h.relay.snapshot()
        assert snapshot["active"] == 1
        assert snapshot["totals"]["closed"] == {watch: 1}


async def test_hub_slow_close_becomes_close_1008(start_relay: StartRelay) -> None:
    h = await start_relay(hub=InMemoryHub(queue_size=2, max_drops_in_window=3))
    async with h.connect() as ws:
        await recv(ws)
        await subscribe(ws, "R_50")
        h.publish("R_50", 10)  # synchronously: the writer cannot run in between
        code, reason, _ = await expect_close(ws)
        assert code == 1008 and reason.startswith("slow consumer")


async def test_dropped_events_are_reported_then_status_is_resent(start_relay: StartRelay) -> None:
    h = await start_relay(hub=InMemoryHub(queue_size=2, max_drops_in_window=1000))
    async with h.connect() as ws:
        await recv(ws)
        await subscribe(ws, "R_50")
        published = h.publish("R_50", 10)
        assert await recv(ws) == {"type": "dropped", "count": 8}
        assert (await recv(ws))["type"] == "status"
        assert [(await recv(ws))["epoch"] for _ in range(2)] == published[-2:]
    assert h.relay.snapshot()["totals"]["accepted"] == 1


# --- upstream status -------------------------------------------------------------------------------


async def test_upstream_down_keeps_clients_and_backfills_when_data_returns(start_relay: StartRelay) -> None:
    h = await start_relay()
    async with h.connect() as ws:
        await recv(ws)
        await subscribe(ws, "R_50")
        h.provided.update(breaker_state="open", retry_after_s=12.5)
        h.hub.publish_status(
            UpstreamSnapshot(
                state=LinkState.CIRCUIT_OPEN,
                since=1_700_000_000.0,
                url="sim",
                simulated=True,
                last_error=ErrorInfo("ConnectionLost", "the upstream closed the connection", 1_700_000_000.0),
            )
        )
        down = await recv_type(ws, "status")
        assert down["state"] == "circuit_open"
        assert down["breaker_state"] == "open" and down["retry_after_s"] == 12.5
        assert down["last_error"]["code"] == "ConnectionLost"
        h.provided.update(breaker_state="closed", retry_after_s=None)
        h.hub.publish_status(
            UpstreamSnapshot(state=LinkState.CONNECTED, since=1_700_000_100.0, url="sim", simulated=True)
        )
        up = await recv_type(ws, "status")
        assert up["state"] == "connected" and up["breaker_state"] == "closed"
        backfilled = h.publish("R_50", 3, backfill=True)
        frames = [await recv_type(ws, "tick") for _ in backfilled]
        assert [f["epoch"] for f in frames] == backfilled
        assert all(f["backfill"] is True for f in frames)


async def test_websocket_disabled_refuses_and_everything_else_works(start_relay: StartRelay) -> None:
    h = await start_relay({"WEBSOCKET_ENABLED": "false"})
    with pytest.raises(InvalidStatus) as refused:
        async with h.connect():
            pass
    assert refused.value.response.status_code == 403
    assert b"disabled" in refused.value.response.body
    async with httpx.AsyncClient(base_url=h.served.http_url, timeout=WAIT_S) as client:
        assert (await client.get("/health")).text == "ok"
    snapshot = h.relay.snapshot()
    assert snapshot["enabled"] is False and snapshot["totals"]["refused_disabled"] == 1


async def test_close_all_sends_1001_and_stops_accepting(start_relay: StartRelay) -> None:
    h = await start_relay()
    async with h.connect() as a, h.connect() as b:
        await recv(a)
        await recv(b)
        async with asyncio.timeout(WAIT_S):
            await h.relay.close_all()
        for ws in (a, b):
            code, reason, _ = await expect_close(ws)
            assert (code, reason) == (1001, "server shutting down")
    async with h.connect() as late:
        code, _, _ = await expect_close(late)
        assert code == 1001
    totals = h.relay.snapshot()["totals"]
    assert totals["closed"]["server_shutdown"] == 2 and totals["refused_shutting_down"] == 1


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_with_and_without_permessage_deflate(start_relay: StartRelay, compression: str | None) -> None:
    h = await start_relay()
    async with h.connect(compression=compression) as ws:
        negotiated = [type(e).__name__ for e in ws.protocol.extensions]
        assert negotiated == (["PerMessageDeflate"] if compression else [])
        await recv(ws)
        await subscribe(ws, "R_50")
        await witness_alive(h, ws, "R_50")


async def test_snapshot_counts_subscribers_per_symbol(start_relay: StartRelay) -> None:
    h = await start_relay()
    async with h.connect() as a, h.connect() as b:
        for ws in (a, b):
            await recv(ws)
        await subscribe(a, "R_50", "R_100")
        await subscribe(b, "R_50")
        await subscribe(b, "R_50")  # again: still one subscriber
        assert h.relay.snapshot()["subscribers"] == {"R_100": 1, "R_50": 2}
        await a.send(json.dumps({"action": "unsubscribe", "symbols": ["R_100"]}))
        await recv_type(a, "unsubscribed")
        assert h.relay.snapshot()["subscribers"] == {"R_50": 2}
    await until(lambda: not h.relay.snapshot()["active"], WAIT_S, what="no active connection")
    snapshot = h.relay.snapshot()
    assert (snapshot["subscribers"], snapshot["subscribed"]) == ({}, 0)
    assert h.relay.connections() == []


async def test_snapshot_and_logs(start_relay: StartRelay, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="backend_core.relay")
    h = await start_relay()
    async with h.connect() as ws:
        await recv(ws)
        await subscribe(ws, "R_50")
        await witness_alive(h, ws, "R_50")
        snapshot = h.relay.snapshot()
        assert snapshot["active"] == 1 and snapshot["subscribed"] == 1
        assert snapshot["subscribers"] == {"R_50": 1}
        assert "127.0.0.1" not in json.dumps(snapshot)  # public output: counts, no address
        (conn,) = h.relay.connections()
        assert conn["id"] == "c1" and conn["symbols"] == ["R_50"] and conn["peer"].startswith("127.0.0.1:")
        assert conn["connected_at"].endswith("Z") and conn["last_seen_at"].endswith("Z")
        assert conn["messages_in"] == 1 and conn["messages_out"] == 3  # status, ack, tick
        assert conn["drops"] == 0
    await until(lambda: not h.relay.snapshot()["active"], WAIT_S, what="no active connection")
    totals = h.relay.snapshot()["totals"]
    assert totals["closed"] == {"client_closed": 1}
    assert totals["ticks_sent"] == 1
    lines = [r.getMessage() for r in caplog.records if r.name == "backend_core.relay"]
    assert any(line.startswith("relay open id=c1 peer=127.0.0.1:") for line in lines)
    assert any(line.startswith("relay close id=c1 ") and "code=1000" in line for line in lines)
