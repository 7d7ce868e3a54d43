"""Frame texts built once and shared by every connection: ticks, and the status frame.

The same tick goes to every subscribed client; encoding it once (and its ASGI message
with it) keeps JSON encoding out of the per-client cost. The status frame also asks the
status provider, which is cached briefly for the same reason.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Mapping
from typing import Any

from backend_core.clock import Clock
from backend_core.events import Tick, UpstreamSnapshot
from backend_core.logs import LogThrottle
from backend_core.relay.protocol import dumps_frame, status_frame, tick_frame

logger = logging.getLogger("backend_core.relay")

# One status frame text is shared by every connection for this long (status_provider()
# is called once per change, not once per client).
STATUS_CACHE_S = 0.25

# Encoded tick frames kept for re-use across connections (the same tick goes to every
# client); cleared whenever it reaches this size.
TICK_TEXT_CACHE_SIZE = 256


class FrameCache:
    """Encoded frames for re-use across connections."""

    def __init__(self, clock: Clock, status_provider: Callable[[], dict[str, Any]]) -> None:
        self._clock = clock
        self._status_provider = status_provider
        self._tick_text: dict[int, tuple[Tick, str, dict[str, Any], bytes, bytes]] = {}
        self._status_cache: tuple[UpstreamSnapshot | None, float, str] | None = None
        self._provider_error_log = LogThrottle(logger, max_keys=1)

    def tick(self, tick: Tick) -> tuple[str, dict[str, Any], bytes, bytes]:
        """The frame of ``tick`` as text, as an ASGI message, as UTF-8 and as an unmasked
        WebSocket frame (:func:`text_frame`), built once for every client."""
        # Keyed by identity (hashing a Tick costs more than the lookup); the entry holds the
        # tick itself, so its id cannot be reused while the entry exists.
        entry = self._tick_text.get(id(tick))
        if entry is not None and entry[0] is tick:
            return entry[1], entry[2], entry[3], entry[4]
        if len(self._tick_text) >= TICK_TEXT_CACHE_SIZE:
            self._tick_text.clear()
        text = dumps_frame(tick_frame(tick))
        message = {"type": "websocket.send", "text": text}  # servers only read it
        data = text.encode()
        framed = text_frame(data)
        self._tick_text[id(tick)] = (tick, text, message, data, framed)
        return text, message, data, framed

    def status(self, snapshot: UpstreamSnapshot | None) -> str:
        """The ``status`` frame text for ``snapshot``, merged with ``status_provider()``'s view."""
        now = self._clock.monotonic()
        cached = self._status_cache
        if cached is not None and cached[0] is snapshot and now - cached[1] < STATUS_CACHE_S:
            return cached[2]
        provided: dict[str, Any] | None
        try:
            provided = self._status_provider()
            if not isinstance(provided, Mapping):
                raise TypeError(f"status_provider returned {type(provided).__name__}, not a dict")
        except Exception:
            provided = None
            if self._provider_error_log.due(now, "status_provider") is not None:
                logger.exception("relay status_provider failed; status frames carry the hub's view only")
        try:
            text = dumps_frame(status_frame(snapshot, provided, self._clock.wall()))
        except (TypeError, ValueError):
            logger.exception("relay status_provider returned something that is not JSON-able")
            text = dumps_frame(status_frame(snapshot, None, self._clock.wall()))
        self._status_cache = (snapshot, now, text)
        return text


def text_frame(data: bytes) -> bytes:
    """One final, unmasked WebSocket text frame (RFC 6455 section 5.2) holding UTF-8 ``data``:
    what a server sends when no extension is negotiated.

    Built by hand rather than with websockets' ``Frame(Opcode.TEXT, data).serialize()``,
    which gives the same bytes (a unit test holds them equal) but takes about five times as
    long (some 770 ns against 150 ns for a tick-sized frame, websockets 17.4): it runs for
    every tick, and for every batch and control frame of every client.
    """
    size = len(data)
    if size < 126:
        return bytes((0x81, size)) + data
    if size < 65536:
        return struct.pack("!BBH", 0x81, 126, size) + data
    return struct.pack("!BBQ", 0x81, 127, size) + data
