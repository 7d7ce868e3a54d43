"""The ``/api/v1/ws`` client protocol: messages, their validation, and the frames the server sends.

This module mirrors ``docs/websocket-api.md`` (keep the two in step): what a client may
send (:func:`parse_client_message` turns one text frame into a request or a
:class:`ClientError`), the limits on it, and the builders of every server frame. Pure: no
I/O, no clock (times are passed in).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from backend_core.clock import iso_utc
from backend_core.events import Tick, UpstreamSnapshot

# --- limits (DESIGN.md rule 5) ------------------------------------------------------------

# Where the relay is mounted (backend_core.api); the serving config limits frames on it.
RELAY_PATH = "/api/v1/ws"

# The largest legitimate client message, a subscribe naming 50 symbols with a resume
# epoch each, is under 2 KiB; twice that leaves room for ids and whitespace.
MAX_FRAME_BYTES = 4096

# Client-chosen ids are echoed back; long ones would let a client inflate every reply.
MAX_ID_LENGTH = 64

# WebSocket close codes used (RFC 6455 section 7.4.1).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_TRY_AGAIN_LATER = 1013

ACTIONS = ("subscribe", "unsubscribe", "ping", "pong")

PING_FRAME = '{"type":"ping"}'


# --- client messages (pure) ------------------------------------------------------------------

MessageId = str | int | None


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    symbols: tuple[str, ...]
    resume: Mapping[str, int] = field(default_factory=dict)
    id: MessageId = None
    batch: bool | None = None  # None: leave the connection's batching as it is


@dataclass(frozen=True, slots=True)
class UnsubscribeRequest:
    symbols: tuple[str, ...] | None  # None: every symbol
    id: MessageId = None


@dataclass(frozen=True, slots=True)
class PingRequest:
    id: MessageId = None


@dataclass(frozen=True, slots=True)
class PongReply:
    id: MessageId = None


@dataclass(frozen=True, slots=True)
class ClientError:
    """A client frame that cannot be served: becomes an ``error`` frame."""

    code: str
    message: str
    id: MessageId = None


ClientMessage = SubscribeRequest | UnsubscribeRequest | PingRequest | PongReply


def _check_id(data: Mapping[str, Any]) -> tuple[MessageId, ClientError | None]:
    raw = data.get("id")
    if raw is None:
        return None, None
    if isinstance(raw, bool) or not isinstance(raw, str | int):
        return None, ClientError("invalid_message", "'id' must be a string or an integer")
    if isinstance(raw, str) and len(raw) > MAX_ID_LENGTH:
        return None, ClientError("invalid_message", f"'id' must be at most {MAX_ID_LENGTH} characters")
    if isinstance(raw, int) and not -(2**53) < raw < 2**53:
        return None, ClientError("invalid_message", "'id' must be an integer within +/-2**53")
    return raw, None


def _check_symbols(
    raw: Any, known: frozenset[str], message_id: MessageId
) -> tuple[tuple[str, ...], ClientError | None]:
    if not isinstance(raw, list) or not raw:
        return (), ClientError("invalid_message", "'symbols' must be a non-empty list of strings", message_id)
    if len(raw) > len(known):
        return (), ClientError(
            "invalid_message", f"'symbols' lists {len(raw)} entries; at most {len(known)} exist", message_id
        )
    if not all(isinstance(s, str) for s in raw):
        return (), ClientError("invalid_message", "'symbols' must be a non-empty list of strings", message_id)
    unknown = [s for s in raw if s not in known]
    if unknown:
        named = ", ".join(repr(s[:32]) for s in unknown[:5])
        return (), ClientError(
            "unknown_symbol", f"unknown symbol {named}; available: {', '.join(sorted(known))}", message_id
        )
    return tuple(dict.fromkeys(raw)), None


def parse_client_message(text: str, known_symbols: frozenset[str]) -> ClientMessage | ClientError:
    """Validate one text frame from a client (size and rate are checked before this).

    The action is named by ``action`` (``type`` is accepted as an alias, so a client may
    answer ``{"type": "ping"}`` with ``{"type": "pong"}``). Unknown extra fields are
    ignored, so clients may send fields from newer protocol versions.
    """
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return ClientError("invalid_json", "the message is not valid JSON")
    if not isinstance(data, dict):
        return ClientError("invalid_message", "a message must be a JSON object")
    message_id, error = _check_id(data)
    if error is not None:
        return error
    action = data["action"] if "action" in data else data.get("type")
    if action is None:
        return ClientError("invalid_message", "missing 'action'", message_id)
    if not isinstance(action, str):
        return ClientError("invalid_message", "'action' must be a string", message_id)
    if action not in ACTIONS:
        return ClientError(
            "unknown_action", f"unknown action {action[:32]!r}; expected one of {', '.join(ACTIONS)}", message_id
        )
    if action == "ping":
        return PingRequest(message_id)
    if action == "pong":
        return PongReply(message_id)
    if action == "unsubscribe":
        if data.get("symbols") is None:
            return UnsubscribeRequest(None, message_id)
        symbols, error = _check_symbols(data["symbols"], known_symbols, message_id)
        return error if error is not None else UnsubscribeRequest(symbols, message_id)

    symbols, error = _check_symbols(data.get("symbols"), known_symbols, message_id)
    if error is not None:
        return error
    raw_resume = data.get("resume")
    resume: dict[str, int] = {}
    if raw_resume is not None:
        if not isinstance(raw_resume, dict):
            return ClientError("invalid_message", "'resume' must be an object of symbol to epoch", message_id)
        for symbol, epoch in raw_resume.items():
            if symbol not in symbols:
                return ClientError(
                    "invalid_message", f"'resume' names {symbol[:32]!r}, which is not in 'symbols'", message_id
                )
            if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch < 2**63:
                return ClientError(
                    "invalid_message", f"'resume' epoch of {symbol} must be a non-negative integer", message_id
                )
            resume[symbol] = epoch
    batch = data.get("batch")
    if batch is not None and not isinstance(batch, bool):
        return ClientError("invalid_message", "'batch' must be true or false", message_id)
    return SubscribeRequest(symbols, resume, message_id, batch)


# --- frames (pure) --------------------------------------------------------------------------


def dumps_frame(frame: Mapping[str, Any]) -> str:
    """A frame as the compact JSON text the server sends."""
    return json.dumps(frame, separators=(",", ":"), default=str)


def tick_frame(tick: Tick, replay: bool = False) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": "tick",
        "symbol": tick.symbol,
        "epoch": tick.epoch,
        "quote": tick.quote,
        "bid": tick.bid,
        "ask": tick.ask,
        "pip_size": tick.pip_size,
        "backfill": tick.backfill,
    }
    if tick.gap_from is not None:
        frame["gap_from"] = tick.gap_from
    if replay:
        frame["replay"] = True
    return frame


def error_frame(code: str, message: str, message_id: MessageId = None) -> dict[str, Any]:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if message_id is not None:
        frame["id"] = message_id
    return frame


def status_frame(
    snapshot: UpstreamSnapshot | None, provided: Mapping[str, Any] | None, now_wall: float
) -> dict[str, Any]:
    """A ``status`` frame: ``status_provider()``'s view, filled in from the hub's last status.

    The provider (the runtime, which also knows the breaker) wins where both say something.
    """
    frame: dict[str, Any] = {"type": "status"}
    if snapshot is not None:
        error = snapshot.last_error
        frame.update(
            state=snapshot.state.value,
            since=iso_utc(snapshot.since),
            last_error=None
            if error is None
            else {"code": error.code, "message": error.message, "at": iso_utc(error.at)},
            last_message_at=iso_utc(snapshot.last_message_at),
            reconnect_count=snapshot.reconnect_count,
            next_attempt_at=iso_utc(snapshot.next_attempt_at),
            simulated=snapshot.simulated,
        )
    else:
        frame.update(state="unknown", since=None, last_error=None)
    if provided:
        frame.update({k: v for k, v in provided.items() if k != "type"})
    frame.setdefault("retry_after_s", None)
    frame.setdefault("breaker_state", None)
    frame["at"] = iso_utc(now_wall)
    return frame


def close_reason(text: str) -> str:
    """A close reason fits in 123 bytes of UTF-8 (RFC 6455 section 5.5)."""
    encoded = text.encode("utf-8")
    if len(encoded) <= 123:
        return text
    return encoded[:120].decode("utf-8", "ignore") + "..."


def frame_size(text: str | None, data: bytes | None) -> int:
    """Bytes of one received message: the UTF-8 length of a text frame, the length of a binary one."""
    if data is not None:
        return len(data)
    if text is None:
        return 0
    return len(text) if text.isascii() else len(text.encode("utf-8"))
