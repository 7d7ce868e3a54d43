"""What :class:`~backend_core.deriv.link.LinkProtocol` asks its driver to do.

The link's decisions are returned as these small immutable values, in the order the
driver must carry them out (python-websockets' sans-I/O protocol returns its work the
same way: bytes to send, events to hand on). Only :class:`Send` needs I/O; the driver
must end the session when it meets :class:`CloseLink`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, TypeAlias

from backend_core.deriv import messages
from backend_core.errors import UpstreamError
from backend_core.events import ErrorInfo, Tick


class Timer(StrEnum):
    """The two deadlines the driver keeps armed for a session."""

    HEARTBEAT = "heartbeat"  # pings, pong and request deadlines, symbol retries
    WATCHDOG = "watchdog"  # the earliest moment a subscribed stream may have gone silent


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``payload`` (encode it with :func:`protocol.encode`)."""

    req_id: int
    method: str
    payload: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class PublishTick:
    """Hand one live tick to the sink (the hot path: one action per tick frame)."""

    tick: Tick


@dataclass(frozen=True, slots=True)
class PublishTicks:
    """Hand these ticks to the sink, one after another (a backfill's release, in epoch order)."""

    ticks: tuple[Tick, ...]


@dataclass(frozen=True, slots=True)
class PublishStatus:
    """Something users see changed; ``error`` is a new last error to show and count."""

    error: ErrorInfo | None = None


@dataclass(frozen=True, slots=True)
class LinkUp:
    """The link answered a request end to end: the connection attempt succeeded."""


@dataclass(frozen=True, slots=True)
class CloseLink:
    """End the session. ``planned``: the upstream announced it (the cause is already shown)."""

    cause: ErrorInfo
    planned: bool = False


@dataclass(frozen=True, slots=True)
class ArmDeadline:
    """Call :meth:`LinkProtocol.deadline_reached` with ``timer`` at ``at`` (``None``: disarm)."""

    timer: Timer
    at: float | None


@dataclass(frozen=True, slots=True)
class Resolve:
    """The reply to a request made through :meth:`LinkProtocol.request`."""

    req_id: int
    message: messages.Message


@dataclass(frozen=True, slots=True)
class Fail:
    """A request made through :meth:`LinkProtocol.request` failed."""

    req_id: int
    error: UpstreamError


Action: TypeAlias = (
    Send | PublishTick | PublishTicks | PublishStatus | LinkUp | CloseLink | ArmDeadline | Resolve | Fail
)
