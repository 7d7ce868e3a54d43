"""The simulator's fault plan: one record of every fault switch, consulted by the server. Pure.

:class:`FaultPlan` holds what the fault controls set (refused or blackholed handshakes,
a paused feed, ignored pings, delayed, dropped or failed replies) and decides, for each
request, what becomes of it (:meth:`FaultPlan.fate`). The server asks it and carries
out the answer; it never keeps fault state of its own. Durations are clock seconds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, Literal

from backend_core.deriv.protocol import BACKEND_ERRORS, DerivCode

#: Section 3.9 / 5.3: the banner pushed before a deploy.
DEPLOY_MESSAGE: Final = "We're updating our site in a short while. Some services may be temporarily unavailable."
#: Section 3.9: the values of ``website_status.site_status``.
SITE_STATUSES: Final = ("up", "down", "updating")
#: Section 1 / 4: what ``inject_error`` can produce, and their messages.
INJECTABLE_ERRORS: Final[Mapping[str, str]] = {
    DerivCode.RATE_LIMIT: "You have reached the rate limit for {action}.",
    **BACKEND_ERRORS,
}


def valid_close_code(code: int) -> bool:
    """Codes an endpoint may send in a close frame (RFC 6455 7.4)."""
    return code in (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014) or 3000 <= code <= 4999


@dataclass(frozen=True, slots=True)
class Fate:
    """What becomes of one request: run it, drop it, answer ``error_code``, or run it ``delay_s`` late."""

    kind: Literal["run", "drop", "error", "delay"]
    error_code: str = ""
    delay_s: float = 0.0


_RUN: Final = Fate("run")
_DROP: Final = Fate("drop")


@dataclass(slots=True)
class FaultPlan:
    """Every fault switch of the simulator; :meth:`reset` clears them all."""

    #: Handshakes are answered 503 until this monotonic clock time.
    refuse_until: float = -math.inf
    #: TCP is accepted but the HTTP upgrade is never answered while set.
    blackholed: bool = False
    #: No ticks (and a gap in history), connections stay open.
    feed_paused: bool = False
    #: ``ping`` requests go unanswered.
    ignore_pings: bool = False
    #: Every reply comes this late; at the processing timeout or more it is ``Timeout``.
    delay_s: float = 0.0
    #: Every request goes unanswered.
    drop_all_replies: bool = False
    #: The next this many requests go unanswered.
    drop_count: int = 0
    #: The next ``inject_count`` requests get ``inject_code`` (only history pages: ``ticks_history``
    #: without ``subscribe``, while ``inject_pages_only``).
    inject_code: str = DerivCode.RATE_LIMIT
    inject_count: int = 0
    inject_pages_only: bool = False

    def reset(self) -> None:
        """Clear every fault switch."""
        self.refuse_until = -math.inf
        self.blackholed = False
        self.feed_paused = False
        self.ignore_pings = False
        self.delay_s = 0.0
        self.drop_all_replies = False
        self.drop_count = 0
        self.inject_count = 0
        self.inject_pages_only = False

    # -- setting (validated: the values come from the control interface too) ------------

    def refuse_for(self, seconds: float, now: float) -> None:
        """Refuse handshakes for ``seconds`` from ``now``; 0 ends it."""
        self.refuse_until = now + seconds if seconds > 0 else -math.inf

    def refusing(self, now: float) -> bool:
        return now < self.refuse_until

    def set_delay(self, seconds: float) -> None:
        if not (math.isfinite(seconds) and seconds >= 0):
            raise ValueError("seconds must be a non-negative number")
        self.delay_s = seconds

    def set_drop_replies(self, enabled_or_count: bool | int) -> None:
        """All while True, none when False, or the next ``count``."""
        if isinstance(enabled_or_count, bool):
            self.drop_all_replies = enabled_or_count
            self.drop_count = 0
        elif enabled_or_count >= 0:
            self.drop_all_replies = False
            self.drop_count = enabled_or_count
        else:
            raise ValueError("count must not be negative")

    def set_inject(self, code: str, count: int, pages_only: bool = False) -> None:
        if code not in INJECTABLE_ERRORS:
            raise ValueError(f"code must be one of {', '.join(INJECTABLE_ERRORS)}")
        if count < 0:
            raise ValueError("count must not be negative")
        self.inject_code = code
        self.inject_count = count
        self.inject_pages_only = pages_only

    # -- consulting -------------------------------------------------------------------------

    def fate(self, action: str, page: bool = False) -> Fate:
        """What becomes of the next request (a call to ``action``; ``page``: a ``ticks_history``
        that does not subscribe); counts are used up."""
        if action == "ping" and self.ignore_pings:
            return _DROP
        if self.drop_all_replies:
            return _DROP
        if self.drop_count > 0:
            self.drop_count -= 1
            return _DROP
        if self.inject_count > 0 and (page or not self.inject_pages_only):
            self.inject_count -= 1
            return Fate("error", error_code=self.inject_code)
        if self.delay_s > 0:
            return Fate("delay", delay_s=self.delay_s)
        return _RUN
