"""A small ASGI app for serving tests: the relay at its real path, beside another WebSocket.

``/echo`` stands in for Reflex's own event socket, which shares the server with the relay
and must keep the server's (large) frame limit. ``app`` is a factory, as ``rxapp.rxapp:app``
is, so gunicorn runs it with the very command ``reflex run --env prod`` builds.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from backend_core.config import load_settings
from backend_core.hub import InMemoryHub
from backend_core.relay.protocol import RELAY_PATH
from backend_core.relay.server import Relay


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    try:
        while True:
            await websocket.send_text(await websocket.receive_text())
    except WebSocketDisconnect:
        return


def routes(relay: Relay) -> list[WebSocketRoute]:
    return [WebSocketRoute(RELAY_PATH, relay.endpoint), WebSocketRoute("/echo", echo)]


def app() -> Starlette:
    relay = Relay(load_settings({"DERIV_SYMBOLS": "R_50,R_100"}), InMemoryHub(), dict)
    return Starlette(routes=routes(relay))
