"""The relay's frame size limit, enforced by uvicorn before it buffers a frame.

A limit checked in the application comes too late: the ASGI server has already read the
whole message into memory (uvicorn's default ``ws_max_size`` is 16 MiB), so 100 clients
could pin 1.6 GB. The WebSocket parser itself must refuse the frame when its header
announces more than :data:`~backend_core.relay.protocol.MAX_FRAME_BYTES`: it then closes
with 1009 without reading the payload.

uvicorn's ``ws_max_size`` is one value for the whole server, and the same server carries
Reflex's own event socket, whose messages Reflex allows up to
``REFLEX_SOCKET_MAX_HTTP_BUFFER_SIZE`` (1 MB). So :class:`RelayFrameLimitProtocol`
(uvicorn's default WebSocket implementation, ``websockets-sansio``) starts every
connection at the relay's limit and raises it to the server's ``ws_max_size`` at the
handshake when the path is not the relay's. Starting low also covers a client that sends
frames in the same packet as its handshake, which the parser reads before the path is
known. ``gunicorn.conf.py`` installs it in production serving; pass it as
``uvicorn.Config(ws=RelayFrameLimitProtocol)`` when serving with uvicorn directly.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.http11 import Request

from backend_core.relay.protocol import MAX_FRAME_BYTES, RELAY_PATH


class RelayFrameLimitProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol, with the relay's frame limit on its path."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn.max_message_size = min(MAX_FRAME_BYTES, self.config.ws_max_size)

    def handle_connect(self, event: Request) -> None:
        if event.path.partition("?")[0] != RELAY_PATH:
            self.conn.max_message_size = self.config.ws_max_size
        super().handle_connect(event)

    def handle_parser_exception(self) -> None:
        if self.conn.close_sent is None:
            # The frame came with the handshake, before the connection was open: there is no
            # close frame to send (uvicorn's handler asserts one), only the socket to drop.
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
            self.transport.close()
            return
        super().handle_parser_exception()
