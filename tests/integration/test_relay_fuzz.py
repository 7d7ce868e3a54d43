"""Generated client frames over a real relay connection (/api/v1/ws served by the app).

Hypothesis builds each frame together with what docs/websocket-api.md promises for it:
an error frame with a specific code, a reply (pong, subscribed), nothing (a pong), or a
close code (1009 for a frame over the size limit). Each frame goes over a fresh
connection; after it a sentinel ping shows that exactly the promised frames came back
and the connection still serves. Meanwhile another client, subscribed to every symbol,
keeps receiving ticks.

The app (whole Runtime on the embedded simulator, under uvicorn on 127.0.0.1) runs in a
thread of its own, so the test itself can be a plain hypothesis test with a synchronous
WebSocket client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.helpers import until
from tests.integration.conftest import ServedApp, start_asgi_server
from tests.integration.test_api import live, serve_runtime

SYMBOLS = ("1HZ100V", "R_50")
# docs/websocket-api.md: "a frame may be at most 4096 bytes" (close 1009 past it).
MAX_FRAME_BYTES = 4096
MAX_ID_CHARS = 64
ACTIONS = ("subscribe", "unsubscribe", "ping", "pong")
# Frames the server sends on its own, whatever the client does.
UNSOLICITED = {"status", "tick", "ping", "dropped"}
RECV_TIMEOUT_S = 10.0
START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Expect:
    """What the server must answer: ``replies`` (type, code, id) in order, or a close code."""

    replies: tuple[tuple[str, str | None, Any], ...] = ()
    close_code: int | None = None


def error(code: str, message_id: Any = None) -> Expect:
    return Expect(replies=(("error", code, message_id),))


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def size(text: str) -> int:
    return len(text.encode("utf-8"))


good_ids = st.one_of(
    st.none(),
    st.integers(-(2**53) + 1, 2**53 - 1),
    st.text(max_size=MAX_ID_CHARS),  # unicode included
)
bad_ids = st.one_of(
    st.integers(min_value=2**53),
    st.integers(max_value=-(2**53)),
    st.text(min_size=MAX_ID_CHARS + 1, max_size=300),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def with_id(body: dict[str, Any], message_id: Any) -> dict[str, Any]:
    return body if message_id is None else {**body, "id": message_id}


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except (ValueError, RecursionError):
        return False
    return True


not_json = st.one_of(
    st.text(max_size=200).filter(lambda t: not _is_json(t)),
    st.sampled_from(['{"action": "ping"', "{'action': 'ping'}", "[1,]", "NaN-ish", '{"a":1}}']),
).map(lambda t: (t, error("invalid_json")))
# Deeper than CPython's default recursion limit (1000), within the frame size limit. The
# decoder refuses it (invalid_json) or, when the server thread's recursion budget allows
# it (hypothesis raises the limit while a test runs), reads a list (invalid_message).
# Either is a specific error; DEEP stands for "one of the two".
DEEP = Expect(replies=(("error", "deep", None),))
DEEP_REPLIES = ((("error", "invalid_json", None),), (("error", "invalid_message", None),))
too_deep = st.integers(1100, 2000).map(lambda depth: ("[" * depth + "]" * depth, DEEP))
not_an_object = st.one_of(
    st.integers(), st.floats(allow_nan=False), st.text(max_size=50), st.lists(st.integers(), max_size=5), st.none()
).map(lambda value: (dumps(value), error("invalid_message")))
nested_not_an_object = st.integers(1, 400).map(lambda d: ("[" * d + "]" * d, error("invalid_message")))
bad_id = st.tuples(st.sampled_from(ACTIONS), bad_ids).map(
    lambda pair: (dumps({"action": pair[0], "id": pair[1]}), error("invalid_message"))
)
unknown_action = st.tuples(st.text(max_size=40).filter(lambda a: a not in ACTIONS), good_ids).map(
    lambda pair: (dumps(with_id({"action": pair[0]}, pair[1])), error("unknown_action", pair[1]))
)
not_a_string_action = st.tuples(st.one_of(st.integers(), st.lists(st.text(max_size=3), max_size=2)), good_ids).map(
    lambda pair: (dumps(with_id({"action": pair[0]}, pair[1])), error("invalid_message", pair[1]))
)
missing_action = good_ids.map(lambda i: (dumps(with_id({"symbols": ["R_50"]}, i)), error("invalid_message", i)))


def ping_frame(message_id: Any, depth: int) -> str:
    # Unknown fields are ignored, however deep they nest (within the decoder's limit).
    text = dumps(with_id({"action": "ping", "extra": "NEST"}, message_id))
    return text.replace('"NEST"', "[" * depth + "]" * depth, 1)


ping = st.tuples(good_ids, st.integers(1, 300)).map(
    lambda pair: (ping_frame(pair[0], pair[1]), Expect(replies=(("pong", None, pair[0]),)))
)
pong = good_ids.map(lambda i: (dumps(with_id({"type": "pong"}, i)), Expect()))
subscribe = st.tuples(st.lists(st.sampled_from(SYMBOLS), min_size=1, max_size=2), good_ids).map(
    lambda pair: (
        dumps(with_id({"action": "subscribe", "symbols": pair[0]}, pair[1])),
        Expect(replies=(("subscribed", None, pair[1]),)),
    )
)
unknown_symbol = st.tuples(st.text(min_size=1, max_size=30).filter(lambda s: s not in SYMBOLS), good_ids).map(
    lambda pair: (
        dumps(with_id({"action": "subscribe", "symbols": [pair[0]]}, pair[1])),
        error("unknown_symbol", pair[1]),
    )
)
bad_symbols = st.tuples(
    st.one_of(st.just([]), st.text(max_size=5), st.lists(st.integers(), min_size=1, max_size=2)), good_ids
).map(
    lambda pair: (
        dumps(with_id({"action": "subscribe", "symbols": pair[0]}, pair[1])),
        error("invalid_message", pair[1]),
    )
)
oversize = st.integers(MAX_FRAME_BYTES + 1, 4 * MAX_FRAME_BYTES).map(
    lambda n: (dumps({"action": "ping", "pad": "x" * n}), Expect(close_code=1009))
)
oversize_unicode = st.integers(MAX_FRAME_BYTES // 3 + 10, MAX_FRAME_BYTES).map(
    # Fewer characters than the limit, more bytes: the limit is in bytes.
    lambda n: (dumps({"action": "ping", "pad": "€" * n}), Expect(close_code=1009))
)
binary = st.binary(max_size=MAX_FRAME_BYTES).map(lambda b: (b, error("invalid_message")))
binary_oversize = st.integers(MAX_FRAME_BYTES + 1, 2 * MAX_FRAME_BYTES).map(
    lambda n: (b"\x00" * n, Expect(close_code=1009))
)

frames = st.one_of(
    not_json,
    too_deep,
    not_an_object,
    nested_not_an_object,
    bad_id,
    unknown_action,
    not_a_string_action,
    missing_action,
    ping,
    pong,
    subscribe,
    unknown_symbol,
    bad_symbols,
    oversize,
    oversize_unicode,
    binary,
    binary_oversize,
)


class AppInThread:
    """The app served from a thread with its own event loop, for synchronous clients."""

    def __init__(self) -> None:
        self.ws_url = ""
        self.http_url = ""
        self._ready = threading.Event()
        self._failed: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="relay-fuzz-app", daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:
            self._failed = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        stoppers = []

        async def start(app: Any, **config: Any) -> ServedApp:
            served, stop = await start_asgi_server(app, **config)
            stoppers.append(stop)
            return served

        try:
            async with serve_runtime(start, DERIV_SYMBOLS=",".join(SYMBOLS)) as (runtime, client):
                await until(live(runtime))
                self.http_url = str(client.base_url).rstrip("/")
                self.ws_url = self.http_url.replace("http://", "ws://") + "/api/v1/ws"
                self._ready.set()
                await self._stop.wait()
        finally:
            for stop in reversed(stoppers):
                await stop()

    def __enter__(self) -> AppInThread:
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S) or self._failed is not None:
            raise RuntimeError("the app did not start") from self._failed
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(START_TIMEOUT_S)


class Watcher:
    """Another client, subscribed to every symbol, counting the ticks it receives."""

    def __init__(self, url: str) -> None:
        self.ticks = 0
        self.closed: ConnectionClosed | None = None
        self._stack = contextlib.ExitStack()
        self._ws = self._stack.enter_context(connect(url, open_timeout=RECV_TIMEOUT_S))
        self._ws.send(json.dumps({"action": "subscribe", "symbols": list(SYMBOLS)}))
        self._thread = threading.Thread(target=self._read, name="relay-fuzz-watcher", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        try:
            for message in self._ws:
                frame = json.loads(message)
                if frame["type"] == "tick":
                    self.ticks += 1
                elif frame["type"] == "ping":
                    self._ws.send('{"type": "pong"}')
        except ConnectionClosed as exc:
            self.closed = exc

    def close(self) -> None:
        self._stack.close()
        self._thread.join(RECV_TIMEOUT_S)


@pytest.fixture(scope="module")
def app() -> Iterator[AppInThread]:
    with AppInThread() as served:
        yield served


@pytest.fixture(scope="module")
def watcher(app: AppInThread) -> Iterator[Watcher]:
    watching = Watcher(app.ws_url)
    yield watching
    watching.close()


def answers(ws: ClientConnection) -> Iterator[dict[str, Any]]:
    """The frames the server sends in reply, without the ones it sends on its own."""
    while True:
        frame = json.loads(ws.recv(timeout=RECV_TIMEOUT_S))
        if frame["type"] not in UNSOLICITED:
            yield frame


def check(url: str, frame: str | bytes, expect: Expect) -> None:
    replies = exchange(url, frame, expect)
    if expect is DEEP:
        assert replies in DEEP_REPLIES
    else:
        assert replies == expect.replies


def exchange(url: str, frame: str | bytes, expect: Expect) -> tuple[tuple[str, str | None, Any], ...]:
    """Send ``frame``; the replies before a sentinel pong (or none, after the promised close)."""
    with connect(url, open_timeout=RECV_TIMEOUT_S, max_size=2**20) as ws:
        ws.send(frame)
        if expect.close_code is not None:
            with pytest.raises(ConnectionClosed) as closed:
                for _ in answers(ws):
                    pass
            assert closed.value.rcvd is not None and closed.value.rcvd.code == expect.close_code
            return ()
        ws.send(json.dumps({"action": "ping", "id": "sentinel"}))
        got = []
        for reply in answers(ws):
            if reply == {"type": "pong", "id": "sentinel"}:
                break
            got.append((reply["type"], reply.get("code"), reply.get("id")))
            if reply["type"] == "error":
                assert isinstance(reply["message"], str) and 0 < len(reply["message"]) < 1000
        return tuple(got)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(case=frames)
def test_every_client_frame_gets_its_promised_answer(
    app: AppInThread, watcher: Watcher, case: tuple[str | bytes, Expect]
) -> None:
    frame, expect = case
    if isinstance(frame, str) and expect.close_code is None:
        assert size(frame) <= MAX_FRAME_BYTES, "a strategy built an oversize frame it did not mean to"
    check(app.ws_url, frame, expect)


def test_the_other_client_kept_receiving_ticks_and_nothing_crashed(app: AppInThread, watcher: Watcher) -> None:
    # Runs after the generated frames (same module, same watcher).
    seen = watcher.ticks
    assert seen > 0
    with httpx.Client(base_url=app.http_url, timeout=RECV_TIMEOUT_S) as client:
        for _ in range(int(RECV_TIMEOUT_S / 0.05)):
            if watcher.ticks > seen:
                break
            threading.Event().wait(0.05)
        assert watcher.ticks > seen and watcher.closed is None
        relay = client.get("/health/websocket").json()["relay"]
        assert "internal_error" not in relay["totals"]["closed"]
        assert relay["active"] >= 1
