"""A per-client rate limit on the public HTTP API, as plain ASGI (DESIGN.md rule 8).

The decision is pure and takes the time as an argument: :class:`TokenBucket` (one
client), :class:`RateLimiter` (a bounded map of clients, least recently seen evicted
first) and :func:`client_address` (who the client is, behind trusted proxies).
:class:`RateLimitMiddleware` only reads the clock and answers.

Each client gets ``API_RATE_LIMIT_PER_S`` requests a second with bursts of
``API_RATE_LIMIT_BURST``; past that it gets ``429`` with ``Retry-After`` (whole seconds,
rounded up) and ``{"error": "rate_limited", "message": ..., "retry_after_s": ...}``.
Only the API's own HTTP routes are limited, minus those ``exempt`` names (health,
liveness, readiness, metrics); Reflex's pages, static files and every WebSocket scope
pass untouched.

The client is the TCP peer. ``X-Forwarded-For`` is believed only when the peer is one of
``TRUSTED_PROXIES``; then the client is the right-most address in it that is not itself
a trusted proxy (the left-most entries are whatever the client chose to send).
"""

from __future__ import annotations

import ipaddress
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final

from starlette.routing import BaseRoute, Match, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from backend_core.clock import Clock
from backend_core.http_input import error_response

# Clients remembered at once. A bucket unseen for burst/rate seconds is full again, so
# forgetting it loses nothing; 10,000 buckets are about 2 MB. Past it, the client seen
# least recently is forgotten first.
MAX_CLIENTS: Final = 10_000
# X-Forwarded-For entries looked at (right to left); a longer header is a client's invention.
MAX_FORWARDED_HOPS: Final = 16
# The key of a request whose peer is unknown (a test transport, a Unix socket).
UNKNOWN_CLIENT: Final = "unknown"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TokenBucket:
    """``rate_per_s`` tokens a second, at most ``burst`` saved up; time is passed in."""

    __slots__ = ("_tokens", "_updated", "burst", "rate_per_s")

    def __init__(self, rate_per_s: float, burst: int, now: float) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be positive and burst at least 1")
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = float(burst)
        self._updated = now

    def take(self, now: float) -> float:
        """Take one token: 0.0 when there was one, else the seconds until there is."""
        elapsed = max(0.0, now - self._updated)
        self._updated = max(self._updated, now)
        self._tokens = min(float(self.burst), self._tokens + elapsed * self.rate_per_s)
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return 0.0
        return (1.0 - self._tokens) / self.rate_per_s

    @property
    def tokens(self) -> float:
        return self._tokens


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    retry_after_s: float = 0.0


class RateLimiter:
    """One :class:`TokenBucket` per client key, at most ``max_clients`` of them."""

    def __init__(self, rate_per_s: float, burst: int, max_clients: int = MAX_CLIENTS) -> None:
        if max_clients < 1:
            raise ValueError("max_clients must be at least 1")
        TokenBucket(rate_per_s, burst, 0.0)  # validates the numbers once, up front
        self.rate_per_s = rate_per_s
        self.burst = burst
        self.max_clients = max_clients
        self._buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        self.limited_total = 0
        self.evicted_total = 0

    def check(self, client: str, now: float) -> Verdict:
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self.max_clients:
                self._buckets.popitem(last=False)
                self.evicted_total += 1
            bucket = self._buckets[client] = TokenBucket(self.rate_per_s, self.burst, now)
        else:
            self._buckets.move_to_end(client)
        wait_s = bucket.take(now)
        if wait_s == 0.0:
            return Verdict(True)
        self.limited_total += 1
        return Verdict(False, wait_s)

    def __len__(self) -> int:
        return len(self._buckets)

    def __contains__(self, client: object) -> bool:
        return client in self._buckets


def parse_networks(entries: Iterable[str | Network]) -> tuple[Network, ...]:
    """``TRUSTED_PROXIES`` entries (networks, or addresses and CIDRs as text) as networks;
    ValueError for a bad one."""
    return tuple(ipaddress.ip_network(str(entry).strip(), strict=False) for entry in entries if str(entry).strip())


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def _trusted(address: ipaddress.IPv4Address | ipaddress.IPv6Address, networks: tuple[Network, ...]) -> bool:
    return any(address in network for network in networks)


def client_address(peer: str | None, forwarded_for: str | None, trusted: tuple[Network, ...]) -> str:
    """The client a request counts against.

    ``peer`` is the TCP peer's address; ``forwarded_for`` the ``X-Forwarded-For`` header
    (all of them joined with commas), believed only when ``peer`` is trusted.
    """
    if peer is None:
        return UNKNOWN_CLIENT
    peer_address = _address(peer)
    if peer_address is None:
        return peer[:64]
    client = peer_address
    if forwarded_for and _trusted(peer_address, trusted):
        hops = forwarded_for.rsplit(",", MAX_FORWARDED_HOPS)[-MAX_FORWARDED_HOPS:]
        for hop in reversed(hops):
            address = _address(hop)
            if address is None:
                break  # a malformed entry: nothing left of it can be believed
            client = address
            if not _trusted(address, trusted):
                break
    return client.compressed


class RateLimitMiddleware:
    """Wraps ``app``; ``routes`` are the API's own routes, ``exempt(template)`` the unlimited ones."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Iterable[BaseRoute],
        rate_per_s: float,
        burst: int,
        trusted_proxies: Iterable[str | Network],
        clock: Clock,
        exempt: Callable[[str], bool],
        max_clients: int = MAX_CLIENTS,
    ) -> None:
        self.app = app
        self.limiter = RateLimiter(rate_per_s, burst, max_clients)
        self._trusted = parse_networks(trusted_proxies)
        self._clock = clock
        self._limited = [r for r in routes if isinstance(r, Route) and not exempt(r.path)]

    def _is_limited(self, scope: Scope) -> bool:
        for route in self._limited:
            match, _ = route.matches(scope)
            if match is not Match.NONE:  # PARTIAL: the path matches, the method does not
                return True
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self._is_limited(scope):
            await self.app(scope, receive, send)
            return
        client = scope.get("client")
        forwarded = [value.decode("latin-1") for name, value in scope["headers"] if name == b"x-forwarded-for"]
        key = client_address(client[0] if client else None, ",".join(forwarded) or None, self._trusted)
        verdict = self.limiter.check(key, self._clock.monotonic())
        if verdict.allowed:
            await self.app(scope, receive, send)
            return
        retry_after = max(1, math.ceil(verdict.retry_after_s))
        response = error_response(
            429,
            "rate_limited",
            f"Too many requests: the limit is {self.limiter.rate_per_s:g} a second, bursts of "
            f"{self.limiter.burst}; retry in {retry_after} s.",
            {"Retry-After": str(retry_after)},
            retry_after_s=round(verdict.retry_after_s, 3),
        )
        await response(scope, receive, send)


__all__ = [
    "MAX_CLIENTS",
    "RateLimitMiddleware",
    "RateLimiter",
    "TokenBucket",
    "Verdict",
    "client_address",
    "parse_networks",
]
