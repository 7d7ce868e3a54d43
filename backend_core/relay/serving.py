"""uvicorn's WebSocket protocol as the relay needs it: the frame limit, and writes without awaits.

**The frame size limit, enforced before a frame is buffered.**

A limit checked in the application comes too late: the ASGI server has already read the
whole message into memory (uvicorn's default ``ws_max_size`` is 16 MiB), so 100 clients
could pin 1.6 GB. The WebSocket parser itself must refuse the frame when its header
announces more than :data:`~backend_core.relay.protocol.MAX_FRAME_BYTES`: it then closes
with 1009 without reading the payload.

uvicorn's ``ws_max_size`` is one value for the whole server, and the same server carries
Reflex's own event socket, whose messages Reflex allows up to
``REFLEX_SOCKET_MAX_HTTP_BUFFER_SIZE`` (1 MB). So :class:`RelayWebSocketProtocol`
(uvicorn's default WebSocket implementation, ``websockets-sansio``) starts every
connection at the relay's limit and raises it to the server's ``ws_max_size`` at the
handshake when the path is not the relay's. Starting low also covers a client that sends
frames in the same packet as its handshake, which the parser reads before the path is
known.

**Writing without an await.** On the relay's path the protocol offers the ASGI extension
:data:`~backend_core.relay.eager.SEND_NOW_EXTENSION`: ``ready()`` says whether a write
can go out now (the connection is open and the socket is not full) and in which form,
and ``write(texts, framed)`` writes several text messages at once, in ONE
``transport.write`` (one system call per flush, not one per frame). Without extensions
negotiated it writes the relay's pre-built frames (``framed``: a tick's frame is built
once for every client, server frames being unmasked); with permessage-deflate it
compresses each text through the connection's state. When ``ready()`` says no, the
relay falls back to the ASGI ``send``. That is what uvicorn's own ``send`` does when it
does not have to wait, minus a coroutine per frame, the middleware wrappers, a UTF-8
encoding and a frame serialisation per frame per client.

``gunicorn.conf.py`` installs :class:`RelayWebSocketProtocol` in production serving; pass
it as ``uvicorn.Config(ws=RelayWebSocketProtocol)`` when serving with uvicorn directly.
"""

from __future__ import annotations

import contextlib
from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.exceptions import InvalidState
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.http11 import Request
from websockets.protocol import State

from backend_core.relay.eager import SEND_NOW_EXTENSION, WRITE_FRAMED, WRITE_TEXT
from backend_core.relay.protocol import MAX_FRAME_BYTES, RELAY_PATH

# permessage-deflate on the relay's path: the compressor's state is most of a connection's
# memory (uvicorn's default, a 4 KiB window at memLevel 5, holds 32 KiB per connection).
# A 1 KiB window still spans several of the ~130-byte tick frames, which is where the
# repetition is. memLevel only sizes the hash table and the block buffer: for these small
# frames the ratio is the same at 1 as at 3 (9.09 on the bench's ticks) and the whole
# compressor is 11 KiB instead of 14. Clients compress without context
# takeover (client_no_context_takeover, which RFC 7692 obliges every client to honour):
# their few small messages (subscribe, pong) gain nothing from a shared window, and the
# server then holds no decompressor between them (about 7 KiB per connection otherwise).
RELAY_DEFLATE_WINDOW_BITS = 10
RELAY_DEFLATE_MEM_LEVEL = 1


class RelayWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol, with the relay's frame limit and
    synchronous writes on its path."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.conn.max_message_size = min(MAX_FRAME_BYTES, self.config.ws_max_size)

    def handle_connect(self, event: Request) -> None:
        relay = event.path.partition("?")[0] == RELAY_PATH
        if not relay:
            self.conn.max_message_size = self.config.ws_max_size
        elif self.config.ws_per_message_deflate:
            self.conn.available_extensions = [
                ServerPerMessageDeflateFactory(
                    client_no_context_takeover=True,
                    server_max_window_bits=RELAY_DEFLATE_WINDOW_BITS,
                    client_max_window_bits=RELAY_DEFLATE_WINDOW_BITS,
                    compress_settings={"memLevel": RELAY_DEFLATE_MEM_LEVEL},
                )
            ]
        super().handle_connect(event)
        # uvicorn keeps the handshake request for the connection's lifetime but never reads
        # it again (the scope holds its headers): 1-2 KiB per connection.
        with contextlib.suppress(AttributeError):
            del self.request
        scope = getattr(self, "scope", None)  # None: the handshake was refused
        if relay and scope is not None:
            scope["extensions"][SEND_NOW_EXTENSION] = {"ready": self.write_ready, "write": self.write_texts}

    def write_ready(self) -> int:
        """0 when nothing can be written now, else how :meth:`write_texts` writes:
        :data:`WRITE_FRAMED` (the relay's pre-built frames) or :data:`WRITE_TEXT`."""
        if self.handshake_complete and "response" in self.__dict__:
            # The handshake response is only needed until it is sent (the accept): uvicorn
            # keeps it, and its headers, for the connection's lifetime otherwise.
            del self.response
        conn = self.conn
        if (
            not self.handshake_complete
            or self.close_sent
            or self.disconnected
            or self.initial_response is not None
            or not self.writable.is_set()
            or conn.state is not State.OPEN
            or conn.expect_continuation_frame
        ):
            return 0
        return WRITE_TEXT if conn.extensions else WRITE_FRAMED

    def write_texts(self, texts: list[bytes], framed: list[bytes] | None) -> None:
        """Write text messages (UTF-8 ``texts``, or their unmasked frames ``framed``, which
        only a connection without extensions may take) in one write. Call it only right
        after :meth:`write_ready` said yes, with no await in between."""
        conn = self.conn
        if framed is not None and not conn.extensions:
            pending = conn.data_to_send()  # nothing, normally: uvicorn writes as it goes
            self.transport.write(b"".join([*pending, *framed]) if pending else b"".join(framed))
            return
        send_text = conn.send_text
        try:
            for data in texts:
                send_text(data)
        except InvalidState:  # not after write_ready(); kept safe anyway
            pass
        self.transport.write(b"".join(conn.data_to_send()))

    def handle_parser_exception(self) -> None:
        if self.conn.close_sent is None:
            # The frame came with the handshake, before the connection was open: there is no
            # close frame to send (uvicorn's handler asserts one), only the socket to drop.
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
            self.transport.close()
            return
        super().handle_parser_exception()
