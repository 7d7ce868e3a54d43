"""The relay's write path: everything waiting for one connection, sent in order without awaiting.

:meth:`Sender.flush` drains a connection's outbox first (acks, errors, pongs, replays),
then its hub subscription (live ticks, status, drop markers). Where the server offers
synchronous writes (:data:`~backend_core.relay.eager.SEND_NOW_EXTENSION`, uvicorn via
:mod:`backend_core.relay.serving`) and the socket can take them, what is waiting goes out
in one write per :data:`MAX_WRITE_BYTES`: one system call per flush, not one per frame,
with tick frames built once for every client. Otherwise each frame runs the ASGI ``send``
eagerly (:mod:`backend_core.relay.eager`). Only when a send would block (the client's
socket is full) does the connection get a task, which finishes that send and then
flushes the rest; until then nothing else writes to it, so frames keep their order.
Connections that asked for ``batch`` get every frame waiting at a flush in one
newline-delimited message.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from backend_core.events import Tick, UpstreamSnapshot
from backend_core.hub import Closed, Dropped, Hub
from backend_core.relay.connection import Connection, Replay
from backend_core.relay.eager import WRITE_FRAMED, finish, send_eagerly
from backend_core.relay.frames import FrameCache, text_frame
from backend_core.relay.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    dumps_frame,
    tick_frame,
)

logger = logging.getLogger("backend_core.relay")

# A batched message goes out once it holds this much (the frame that reached it included):
# 64 KiB is 500 ticks, yet far below every client library's default message limit (1 MiB
# in python-websockets).
MAX_BATCH_BYTES = 65536

# A flush through the server's synchronous write writes at most this much at once, then asks
# again whether the socket takes more: asyncio's default high-water mark, so a client that
# does not read leaves at most about two of these in the server's write buffer.
MAX_WRITE_BYTES = 65536


class Sender:
    """Writes to the relay's connections; counts the ticks sent."""

    def __init__(self, hub: Hub, frames: FrameCache) -> None:
        self._hub = hub
        self._frames = frames
        self.ticks_sent = 0

    def flush(self, conn: Connection) -> None:
        """Send everything waiting for ``conn``, in order, until its socket would block.

        Where the server offers synchronous writes (:data:`SEND_NOW_EXTENSION`) and the
        socket can take them, what is waiting goes out in one write per
        :data:`MAX_WRITE_BYTES`; otherwise frame by frame through the ASGI ``send``, until
        one has to wait (the flusher task finishes that one and flushes again).
        """
        while conn.stalled is None and conn.sub is not None and not conn.closing:
            ready = conn.write_ready
            if not self._drain(conn, ready() if ready is not None else 0):
                return

    def _drain(self, conn: Connection, mode: int) -> bool:
        """One pass of :meth:`flush`: True when it stopped at the write budget or a full
        batch (more may wait), False when nothing is left or the connection cannot take
        more now.

        ``mode`` is what the server's ``ready()`` said (0: use the ASGI ``send``). The hot
        path of the relay: one pass per frame per client, so lookups are hoisted.
        """
        sub = conn.sub
        assert sub is not None
        outbox = conn.outbox
        symbols = conn.symbols  # replaced by the reader, which cannot run during a flush
        live_after = conn.live_after
        get_nowait = sub.get_nowait
        encoded_tick = self._frames.tick
        send = self._send
        direct = mode != 0
        texts: list[bytes] = []
        framed: list[bytes] | None = [] if mode == WRITE_FRAMED else None
        written = written_ticks = 0
        # With batching, a pass gathers one message: until nothing waits or it is full.
        batch: list[str] | None = [] if conn.batch else None
        batch_bytes = batch_ticks = 0
        more = closed = False
        while True:
            message: dict[str, Any] | None = None
            data: bytes | None = None
            wire: bytes | None = None
            ticks = 0
            if outbox:
                item = outbox[0]
                if isinstance(item, Replay):
                    if not item.ticks:
                        outbox.popleft()
                        conn.replay_pending = 0
                        continue
                    tick = item.ticks.popleft()
                    conn.replay_pending = len(item.ticks)
                    if tick.symbol not in symbols:
                        continue
                    text = dumps_frame(tick_frame(tick, replay=True))
                    ticks = 1
                else:
                    outbox.popleft()
                    text = item
            else:
                event = get_nowait()
                if event is None:
                    break
                if type(event) is Tick:
                    symbol = event.symbol
                    if symbol not in symbols:
                        continue
                    if live_after:
                        last = live_after.get(symbol)
                        if last is not None and event.epoch <= last:
                            continue  # already replayed or sent
                        live_after[symbol] = event.epoch
                    text, message, data, wire = encoded_tick(event)
                    ticks = 1
                elif isinstance(event, UpstreamSnapshot):
                    text = self._frames.status(event)
                elif isinstance(event, Dropped):
                    conn.drops += event.count
                    text = dumps_frame({"type": "dropped", "count": event.count})
                    # A dropped event may have been a status change: resynchronise next.
                    outbox.appendleft(self._frames.status(self._hub.status()))
                else:
                    assert isinstance(event, Closed)
                    self._closed_by_hub(conn, event)
                    closed = True
                    break
            if batch is not None:
                batch.append(text)
                batch_bytes += len(text) + 1
                batch_ticks += ticks
                if batch_bytes >= MAX_BATCH_BYTES:
                    more = True  # it goes out below, and the next pass goes on
                    break
            elif direct:
                if data is None:
                    data = text.encode()
                texts.append(data)
                if framed is not None:
                    framed.append(text_frame(data) if wire is None else wire)
                written += len(data)
                written_ticks += ticks
                if written >= MAX_WRITE_BYTES:
                    more = True
                    break
            elif not send(conn, text, message, ticks):
                return False
        if batch and not closed:
            joined = "\n".join(batch)
            if not direct:
                if not send(conn, joined, None, batch_ticks):
                    return False
            else:
                data = joined.encode()
                texts.append(data)
                if framed is not None:
                    framed.append(text_frame(data))
                written_ticks += batch_ticks
        if texts:
            assert conn.write_texts is not None
            conn.write_texts(texts, framed)  # after ready() said yes, with no await since
            conn.messages_out += len(texts)
            self.ticks_sent += written_ticks
        return more and not closed

    def _send(self, conn: Connection, text: str, message: dict[str, Any] | None, ticks: int) -> bool:
        """Send one text message through the ASGI ``send`` without awaiting; False when the
        connection cannot take more now.

        ``message`` is ``text`` as an ASGI message, when already built (shared by every
        client). A send that must wait is finished by the connection's flusher task (bounded
        by the supervisor's send watch), which then flushes the rest.
        """
        try:
            suspended = send_eagerly(
                conn.send, {"type": "websocket.send", "text": text} if message is None else message
            )
        except (OSError, RuntimeError):  # the client is gone (uvicorn: ClientDisconnected)
            conn.peer_closed = True
            conn.request_close(1006, "connection lost", "connection_lost")
            return False
        if suspended is None:
            conn.messages_out += 1
            self.ticks_sent += ticks
            return True
        conn.stalled = (suspended, ticks)
        if conn.flusher is None or conn.flusher.done():
            conn.flusher = asyncio.create_task(self._write_stalled(conn), name=f"relay-write-{conn.id}")
        return False

    async def _write_stalled(self, conn: Connection) -> None:
        try:
            await self._finish_stalled(conn)
        except asyncio.CancelledError:
            raise
        except Exception:
            logger.exception("relay connection crashed id=%s peer=%s in=writer", conn.id, conn.peer)
            conn.request_close(CLOSE_INTERNAL_ERROR, "internal error", "internal_error")

    async def _finish_stalled(self, conn: Connection) -> None:
        while conn.stalled is not None:
            suspended, ticks = conn.stalled
            try:
                await finish(suspended)
            except (OSError, RuntimeError):
                conn.peer_closed = True
                conn.request_close(1006, "connection lost", "connection_lost")
                return
            conn.stalled = None
            conn.messages_out += 1
            self.ticks_sent += ticks
            self.flush(conn)  # may stall again: this loop then finishes that one too

    def _closed_by_hub(self, conn: Connection, event: Closed) -> None:
        if event.slow:
            conn.request_close(CLOSE_POLICY_VIOLATION, event.reason, "slow_consumer")
        else:
            conn.request_close(CLOSE_GOING_AWAY, "server shutting down", "server_shutdown")
