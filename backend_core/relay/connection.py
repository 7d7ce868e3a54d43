"""What the relay knows about one client connection: plain state, touched only on the event loop."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass

from starlette.websockets import WebSocket

from backend_core.events import Tick
from backend_core.hub import Subscription
from backend_core.relay.eager import AsgiSend, Suspended, WriteReady, WriteTexts
from backend_core.relay.policy import MessageRateLimiter, SendWatch
from backend_core.relay.protocol import CLOSE_NORMAL, close_reason


@dataclass(slots=True)
class Replay:
    ticks: deque[Tick]


Outgoing = str | Replay


class Connection:
    """Everything the relay knows about one client. Touched only on the event loop."""

    __slots__ = (
        "batch",
        "cancelled_for_close",
        "close_code",
        "close_key",
        "close_reason",
        "closing",
        "connected_mono",
        "connected_wall",
        "drops",
        "flusher",
        "id",
        "last_ping_mono",
        "last_seen_mono",
        "limiter",
        "live_after",
        "messages_in",
        "messages_out",
        "origin",
        "outbox",
        "peer",
        "peer_closed",
        "ping_outstanding_since",
        "replay_pending",
        "send",
        "send_watch",
        "stalled",
        "sub",
        "symbols",
        "task",
        "websocket",
        "write_ready",
        "write_texts",
    )

    def __init__(
        self,
        conn_id: str,
        websocket: WebSocket,
        send: AsgiSend,
        writer: tuple[WriteReady, WriteTexts] | None,
        peer: str,
        origin: str | None,
        now: float,
        wall: float,
        limiter: MessageRateLimiter,
    ) -> None:
        self.id = conn_id
        self.websocket = websocket
        self.send = send
        # The server's synchronous writes, where it offers them (eager.SEND_NOW_EXTENSION).
        self.write_ready: WriteReady | None = writer[0] if writer is not None else None
        self.write_texts: WriteTexts | None = writer[1] if writer is not None else None
        self.peer = peer
        self.origin = origin
        self.sub: Subscription | None = None
        # Replaced, never mutated: connections with the same set share one (Relay._intern).
        self.symbols: frozenset[str] = frozenset()
        self.live_after: dict[str, int] = {}
        self.connected_mono = now
        self.connected_wall = wall
        self.last_seen_mono = now
        self.last_ping_mono = now
        self.ping_outstanding_since: float | None = None
        self.messages_in = 0
        self.messages_out = 0
        self.batch = False
        # A send that had to wait for the socket, and the task finishing it (then the rest).
        self.stalled: tuple[Suspended, int] | None = None
        self.flusher: asyncio.Task[None] | None = None
        self.send_watch = SendWatch()
        self.drops = 0
        self.outbox: deque[Outgoing] = deque()
        self.replay_pending = 0
        self.limiter = limiter
        self.closing = False
        # The endpoint's task while it reads; request_close() cancels it out of its receive.
        self.task: asyncio.Task[None] | None = None
        self.cancelled_for_close = False
        self.close_code = CLOSE_NORMAL
        self.close_reason = ""
        self.close_key = ""
        self.peer_closed = False

    def request_close(self, code: int, reason: str, key: str) -> None:
        """Ask the endpoint to end this connection; the first request wins."""
        if self.closing:
            return
        self.close_code = code
        self.close_reason = close_reason(reason)
        self.close_key = key
        self.closing = True
        task = self.task
        if task is not None and task is not asyncio.current_task():
            self.cancelled_for_close = True
            task.cancel()
