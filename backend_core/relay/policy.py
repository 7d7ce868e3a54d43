"""The relay's per-connection policies, as pure decisions with the time passed in.

- :class:`MessageRateLimiter` (a :class:`~backend_core.ratelimit.TokenBucket` plus a window of rejections): may
  this client frame be served, answered with ``rate_limited``, or is the client ignoring
  the answers (close 1008)?
- :func:`origin_allowed`: may a handshake with this ``Origin`` proceed?
- :func:`heartbeat_step`: ping now, keep waiting, or give up on the client?
- :class:`SendWatch`: has one send been pending too long (the client stopped reading)?

The server (:mod:`backend_core.relay.server`) calls them; unit tests drive them alone.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from urllib.parse import urlsplit

from backend_core.ratelimit import TokenBucket

# A client needs a handful of messages a minute (subscribe, pong). 20/s sustained with a
# burst of 40 lets a UI re-subscribe everything at once and still stops a flood.
RATE_PER_S = 20.0
RATE_BURST = 40
# A client that keeps sending after 20 `rate_limited` errors within 10 s is ignoring them;
# it is closed with 1008 rather than answered forever.
RATE_MAX_REJECTIONS = 20
RATE_REJECTION_WINDOW_S = 10.0


# --- rate limiting (pure) -------------------------------------------------------------------


class RateVerdict(enum.Enum):
    ALLOW = "allow"
    REJECT = "reject"  # answer with a rate_limited error, do not act on the message
    CLOSE = "close"  # the client ignores the errors: close with 1008


class MessageRateLimiter:
    """A token bucket plus a count of rejections within a fixed window."""

    __slots__ = ("_bucket", "_rejections", "_window_start", "max_rejections", "window_s")

    def __init__(
        self,
        now: float,
        rate_per_s: float = RATE_PER_S,
        burst: int = RATE_BURST,
        max_rejections: int = RATE_MAX_REJECTIONS,
        window_s: float = RATE_REJECTION_WINDOW_S,
    ) -> None:
        self._bucket = TokenBucket(rate_per_s, burst, now)
        self.max_rejections = max_rejections
        self.window_s = window_s
        self._window_start = now
        self._rejections = 0

    def check(self, now: float) -> RateVerdict:
        if self._bucket.take(now) == 0.0:
            return RateVerdict.ALLOW
        if now - self._window_start >= self.window_s:
            self._window_start = now
            self._rejections = 0
        self._rejections += 1
        return RateVerdict.CLOSE if self._rejections > self.max_rejections else RateVerdict.REJECT


# --- admission and heartbeat (pure) --------------------------------------------------------

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _host_port(netloc: str, default_port: int | None) -> tuple[str, int | None] | None:
    try:
        parts = urlsplit("//" + netloc)
        host = parts.hostname
        port = parts.port
    except ValueError:
        return None
    if not host:
        return None
    return host.lower(), port if port is not None else default_port


def origin_allowed(origin: str | None, host: str | None, allowed: Iterable[str] = ()) -> bool:
    """May a handshake with this ``Origin`` header proceed?

    Absent Origin: yes (non-browser clients send none; browsers always do, so this does
    not open cross-site access). Otherwise the origin must be in ``allowed`` (exact
    ``scheme://host[:port]``, case-insensitive; ``*`` allows all) or name the same host
    and port as the request's ``Host`` header. Anything unparsable, including ``null``,
    is refused.
    """
    if origin is None:
        return True
    normalized = origin.strip().lower().rstrip("/")
    allowed_set = {a.strip().lower().rstrip("/") for a in allowed}
    if "*" in allowed_set or normalized in allowed_set:
        return True
    if host is None:
        return False
    try:
        parts = urlsplit(normalized)
    except ValueError:
        return False
    if parts.scheme not in _DEFAULT_PORTS or not parts.netloc:
        return False
    default_port = _DEFAULT_PORTS[parts.scheme]
    origin_hp = _host_port(parts.netloc, default_port)
    host_hp = _host_port(host.strip(), default_port)
    return origin_hp is not None and origin_hp == host_hp


class Heartbeat(enum.Enum):
    WAIT = "wait"
    PING = "ping"
    TIMEOUT = "timeout"


def heartbeat_step(
    now: float, ping_outstanding_since: float | None, last_ping_at: float, interval_s: float, timeout_s: float
) -> Heartbeat:
    """The heartbeat decision for one connection.

    Any frame from the client answers an outstanding ping (the reader clears
    ``ping_outstanding_since``). A ping unanswered for ``timeout_s`` ends the connection;
    otherwise a new ping goes out every ``interval_s``.
    """
    if ping_outstanding_since is not None:
        return Heartbeat.TIMEOUT if now - ping_outstanding_since >= timeout_s else Heartbeat.WAIT
    return Heartbeat.PING if now - last_ping_at >= interval_s else Heartbeat.WAIT


class SendWatch:
    """Finds a send that has been pending too long, from periodic observations.

    The writer only flips ``in_send`` and counts completed sends; the supervisor calls
    :meth:`observe` each sweep. A send counts as pending from the first sweep that saw
    it, so a stuck one is found within ``timeout`` plus two sweeps.
    """

    __slots__ = ("_seen_sent", "_since")

    def __init__(self) -> None:
        self._seen_sent = -1
        self._since: float | None = None

    def observe(self, now: float, in_send: bool, sends_completed: int) -> float:
        """Seconds the current send has been pending (0.0 when none is)."""
        if not in_send:
            self._since = None
            return 0.0
        if self._since is None or sends_completed != self._seen_sent:
            self._seen_sent = sends_completed
            self._since = now
            return 0.0
        return now - self._since
