"""The simulator's control interface: a small Starlette app on its own loopback port.

Served by uvicorn next to the WebSocket server (never on the WebSocket port), it answers
loopback peers only (others get 403). ``POST /control/<action>`` with an optional JSON
object body is answered with JSON ``{"ok": true, "action": ..., "result": ...}`` or
``{"ok": false, "error": ...}`` and status 400 (bad body), 404 (unknown action), 405
(wrong method) or 413 (body too large). ``GET /control/stats`` returns the counters.
Actions and body fields::

    drop_all               {"code": int | null, "reason": str}
    refuse_connections     {"seconds": number}
    blackhole_handshakes   {"enabled": bool}
    pause_feed             {"enabled": bool}
    advance                {"ticks": int}  the market jumps ahead (1 to 86400 ticks; see below)
    ignore_pings           {"enabled": bool}
    delay_replies          {"seconds": number}
    drop_replies           {"enabled": bool} or {"count": int}
    inject_error           {"code": "RateLimit" | "WrongResponse" | "CallError" | "Timeout", "count": int,
                            "pages_only": bool}  pages_only: ticks_history without subscribe only
    send_malformed_frame   {}
    deploy                 {"close_after_s": number, "code": int | null}
    restart                {"disconnect": bool}
    set_site_status        {"site_status": "up" | "down" | "updating", "message": str | null}
    reset                  {}

Example: ``curl -X POST 127.0.0.1:8766/control/drop_all -d '{"code": 1011}'``.

``advance`` moves simulated time and the market ahead at once by ``ticks`` ticks of the
fastest symbol (slower symbols get their share of the same span). Every tick of the jump
is in history, where ``ticks_history`` serves it, and none is streamed: while clients are
away (``refuse_connections``, then ``drop_all``) it makes an outage of any length up to a
day, e.g. ``{"ticks": 12000}`` for one longer than a 5000-tick reply. Its result is
``{"from_epoch", "to_epoch", "ticks": {symbol: ticks made}}``.

:func:`parse_control` (pure) validates a request into a :class:`ControlCommand`;
:func:`run_control` carries it out on anything shaped like :class:`Controllable` (the
simulator); :class:`ControlServer` serves :func:`control_app` with uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import math
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Protocol
from urllib.parse import urlsplit

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from backend_core.deriv.protocol import DerivCode
from backend_core.deriv.sim.faults import INJECTABLE_ERRORS, SITE_STATUSES, valid_close_code
from backend_core.deriv.sim.market import DAY_S

logger = logging.getLogger(__name__)

#: Control request body size.
CONTROL_MAX_BODY_BYTES: Final = 64 * 1024
#: How long (seconds) stopping waits for control requests in progress.
_STOP_GRACE_S: Final = 2.0
#: Event-loop turns the start may take before uvicorn reports it is serving.
_START_TURNS: Final = 1000

# --- pure: parsing ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ControlCommand:
    action: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ControlRejection:
    status: int
    error: str


_CONTROL_FIELDS: Final[dict[str, dict[str, str]]] = {
    "drop_all": {"code": "close_code?", "reason": "reason"},
    "refuse_connections": {"seconds": "seconds"},
    "blackhole_handshakes": {"enabled": "bool"},
    "pause_feed": {"enabled": "bool"},
    "advance": {"ticks": "ticks"},
    "ignore_pings": {"enabled": "bool"},
    "delay_replies": {"seconds": "seconds"},
    "drop_replies": {"enabled": "bool", "count": "count"},
    "inject_error": {"code": "error_code", "count": "count", "pages_only": "bool"},
    "send_malformed_frame": {},
    "deploy": {"close_after_s": "seconds", "code": "close_code?"},
    "restart": {"disconnect": "bool"},
    "set_site_status": {"site_status": "site_status", "message": "message?"},
    "reset": {},
    "stats": {},
}


def _control_value(kind: str, value: Any) -> tuple[Any, str | None]:
    optional = kind.endswith("?")
    kind = kind.rstrip("?")
    if value is None and optional:
        return None, None
    if kind == "bool":
        return value, None if type(value) is bool else "must be true or false"
    if kind == "seconds":
        ok = type(value) in (int, float) and math.isfinite(value) and 0 <= value <= DAY_S
        return float(value) if ok else value, None if ok else f"must be a number of seconds from 0 to {DAY_S}"
    if kind == "count":
        ok = type(value) is int and 0 <= value <= 1_000_000
        return value, None if ok else "must be a whole number from 0 to 1000000"
    if kind == "ticks":
        ok = type(value) is int and 1 <= value <= DAY_S
        return value, None if ok else f"must be a whole number from 1 to {DAY_S}"
    if kind == "close_code":
        ok = type(value) is int and valid_close_code(value)
        return value, None if ok else "must be a valid close code (1000-1003, 1007-1014, 3000-4999) or null"
    if kind == "reason":
        ok = type(value) is str and len(value.encode()) <= 123
        return value, None if ok else "must be a string of at most 123 bytes"
    if kind == "error_code":
        ok = value in INJECTABLE_ERRORS
        return value, None if ok else f"must be one of {', '.join(INJECTABLE_ERRORS)}"
    if kind == "site_status":
        ok = value in SITE_STATUSES
        return value, None if ok else "must be up, down or updating"
    if kind == "message":
        ok = type(value) is str and len(value) <= 300
        return value, None if ok else "must be a string of at most 300 characters or null"
    raise AssertionError(kind)  # pragma: no cover


def parse_control(method: str, path: str, body: bytes) -> ControlCommand | ControlRejection:
    """Validate one control request (hostile input: every field is checked)."""
    parts = urlsplit(path).path.split("/")
    if len(parts) != 3 or parts[1] != "control":
        return ControlRejection(404, "expected /control/<action>")
    action = parts[2]
    fields = _CONTROL_FIELDS.get(action)
    if fields is None:
        return ControlRejection(404, f"unknown action {action!r}; known: {', '.join(sorted(_CONTROL_FIELDS))}")
    expected_method = "GET" if action == "stats" else "POST"
    if method != expected_method:
        return ControlRejection(405, f"{action} expects {expected_method}")
    data: Any = {}
    if body.strip():
        try:
            data = json.loads(body.decode("utf-8"), parse_constant=_reject_json_constant)
        except (UnicodeDecodeError, ValueError, RecursionError):
            return ControlRejection(400, "body is not valid JSON")
    if type(data) is not dict:
        return ControlRejection(400, "body must be a JSON object")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        return ControlRejection(400, f"unknown field(s) {', '.join(unknown)} for {action}")
    params: dict[str, Any] = {}
    for name, kind in fields.items():
        if name not in data:
            continue
        value, error = _control_value(kind, data[name])
        if error:
            return ControlRejection(400, f"{name} {error}")
        params[name] = value
    required = {
        "refuse_connections": ("seconds",),
        "blackhole_handshakes": ("enabled",),
        "pause_feed": ("enabled",),
        "advance": ("ticks",),
        "ignore_pings": ("enabled",),
        "delay_replies": ("seconds",),
        "set_site_status": ("site_status",),
    }.get(action, ())
    missing = [name for name in required if name not in params]
    if missing:
        return ControlRejection(400, f"missing field(s) {', '.join(missing)} for {action}")
    if action == "drop_replies" and "enabled" in params and "count" in params:
        return ControlRejection(400, "give either enabled or count")
    return ControlCommand(action, params)


def _reject_json_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def is_loopback_peer(peername: Any) -> bool:
    """Whether a peer address (``(host, port, ...)``) is a loopback address."""
    if not isinstance(peername, tuple) or not peername:
        return False
    try:
        return ipaddress.ip_address(str(peername[0]).split("%", 1)[0]).is_loopback
    except ValueError:
        return False


# --- carrying a command out --------------------------------------------------------------


class _Stats(Protocol):
    def to_dict(self) -> dict[str, Any]: ...


class Controllable(Protocol):
    """The fault controls :func:`run_control` calls (the simulator's methods)."""

    async def drop_all(self, code: int | None = None, reason: str = "") -> int: ...
    def refuse_connections(self, seconds: float) -> None: ...
    def blackhole_handshakes(self, enabled: bool) -> None: ...
    def pause_feed(self, enabled: bool) -> None: ...
    def advance(self, ticks: int) -> dict[str, Any]: ...
    def ignore_pings(self, enabled: bool) -> None: ...
    def delay_replies(self, seconds: float) -> None: ...
    def drop_replies(self, enabled_or_count: bool | int) -> None: ...
    def inject_error(self, code: str = DerivCode.RATE_LIMIT, count: int = 1, pages_only: bool = False) -> None: ...
    async def send_malformed_frame(self) -> int: ...
    async def deploy(self, close_after_s: float = 1.0, code: int | None = 1001) -> None: ...
    async def restart(self, disconnect: bool = True, code: int | None = 1012) -> None: ...
    async def set_site_status(self, site_status: str, message: str | None = None) -> None: ...
    def reset_faults(self) -> None: ...
    def stats(self) -> _Stats: ...


async def run_control(target: Controllable, command: ControlCommand) -> Any:
    """Carry out a validated command; the result is the action's own or the counters."""
    p = command.params
    action = command.action
    if action == "drop_all":
        return {"dropped": await target.drop_all(p.get("code"), p.get("reason", ""))}
    if action == "refuse_connections":
        target.refuse_connections(p["seconds"])
    elif action == "blackhole_handshakes":
        target.blackhole_handshakes(p["enabled"])
    elif action == "pause_feed":
        target.pause_feed(p["enabled"])
    elif action == "advance":
        return target.advance(p["ticks"])
    elif action == "ignore_pings":
        target.ignore_pings(p["enabled"])
    elif action == "delay_replies":
        target.delay_replies(p["seconds"])
    elif action == "drop_replies":
        target.drop_replies(p["count"] if "count" in p else p.get("enabled", True))
    elif action == "inject_error":
        target.inject_error(p.get("code", DerivCode.RATE_LIMIT), p.get("count", 1), p.get("pages_only", False))
    elif action == "send_malformed_frame":
        return {"clients": await target.send_malformed_frame()}
    elif action == "deploy":
        await target.deploy(p.get("close_after_s", 1.0), p.get("code", 1001))
    elif action == "restart":
        await target.restart(p.get("disconnect", True))
    elif action == "set_site_status":
        await target.set_site_status(p["site_status"], p.get("message"))
    elif action == "reset":
        target.reset_faults()
    return target.stats().to_dict()


# --- the app ------------------------------------------------------------------------------

_ALL_METHODS: Final = ["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"]


class _BodyTooLarge(Exception):
    pass


async def _read_body(request: Request, limit: int) -> bytes:
    """The request body, refused beyond ``limit`` bytes (declared or streamed)."""
    declared = request.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > limit:
        raise _BodyTooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _BodyTooLarge
    return bytes(body)


def _refusal(status: int, error: str) -> JSONResponse:
    return JSONResponse({"ok": False, "error": error}, status_code=status)


def control_app(target: Controllable) -> Starlette:
    """The control interface for ``target`` as an ASGI app (every path answers JSON)."""

    async def handle(request: Request) -> JSONResponse:
        peer = request.client
        if peer is None or not is_loopback_peer((peer.host, peer.port)):
            return _refusal(403, "the control interface answers loopback peers only")
        try:
            body = await _read_body(request, CONTROL_MAX_BODY_BYTES)
        except _BodyTooLarge:
            return _refusal(413, f"body larger than {CONTROL_MAX_BODY_BYTES} bytes")
        command = parse_control(request.method, request.url.path, body)
        if isinstance(command, ControlRejection):
            return _refusal(command.status, command.error)
        try:
            result = await run_control(target, command)
        except ValueError as exc:  # a value the target refuses (a jump too long for its symbols)
            return _refusal(400, f"{command.action}: {exc}")
        except Exception as exc:  # a bug must not leak a traceback to the client
            logger.exception("control action %s failed", command.action)
            return _refusal(500, f"{command.action} failed: {type(exc).__name__}")
        return JSONResponse({"ok": True, "action": command.action, "result": result})

    return Starlette(routes=[Route("/{path:path}", handle, methods=_ALL_METHODS)])


# --- serving it ---------------------------------------------------------------------------


class _EmbeddedConfig(uvicorn.Config):
    """uvicorn settings for a server inside another program: it leaves logging alone."""

    def configure_logging(self) -> None:
        # The host program owns the logging setup (and may run uvicorn itself).
        return


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves signals to the host program (it is stopped by :meth:`ControlServer.stop`)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Listening:
    """A server on ``host`` whose :attr:`port` is known once it is started (the simulator, its control)."""

    host: str
    _port: int | None
    _what: ClassVar[str]

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError(f"the {self._what} is not started")
        return self._port

    def _url(self, scheme: str, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}{path}"


class ControlServer(Listening):
    """Serves :func:`control_app` for ``target`` with uvicorn on ``host:port`` (0: any free port).

    The socket is bound in :meth:`start`, so :attr:`port` is known at once and a bind
    error is an :class:`OSError` there. ``host`` must be a loopback address: the
    simulator passes its own host when that is loopback, 127.0.0.1 otherwise.
    """

    _what = "control interface"

    def __init__(self, target: Controllable, host: str = "127.0.0.1", port: int = 0) -> None:
        self.host = host
        self._requested_port = port
        self._app = control_app(target)
        self._server: _EmbeddedServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._sock: socket.socket | None = None
        self._port: int | None = None

    @property
    def url(self) -> str:
        """``http://host:port/control`` (add ``/<action>``)."""
        return self._url("http", "/control")

    async def start(self) -> None:
        if self._task is not None:
            return
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = self._sock = socket.create_server((self.host, self._requested_port), family=family)
        config = _EmbeddedConfig(
            self._app,
            lifespan="off",
            http="h11",
            ws="none",
            access_log=False,
            log_config=None,
            proxy_headers=False,  # the peer check must see the real peer
            server_header=False,
            timeout_graceful_shutdown=int(_STOP_GRACE_S),
        )
        server = _EmbeddedServer(config)
        self._port = sock.getsockname()[1]
        self._server = server
        self._task = asyncio.create_task(server.serve(sockets=[sock]), name="deriv-simulator-control")
        for _ in range(_START_TURNS):
            if server.started:
                return
            if self._task.done():
                break
            await asyncio.sleep(0)
        await self.stop()
        raise RuntimeError("the control interface did not start")

    async def stop(self) -> None:
        """Stop serving (requests in progress get a short grace); idempotent."""
        task, self._task = self._task, None
        if task is None:
            return
        if self._server is not None:
            self._server.should_exit = True
        try:
            await task
        except (Exception, SystemExit):  # uvicorn exits with SystemExit on a failed start
            logger.exception("the simulator's control interface failed")
        self._server = None
        if self._sock is not None:
            self._sock.close()  # uvicorn closes it after serving; not if it never started
            self._sock = None
