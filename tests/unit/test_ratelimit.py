"""The per-client HTTP rate limit: pure bucket and map on fake time, middleware in-process."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Mount, Route

from backend_core.clock import FakeClock
from backend_core.ratelimit import (
    RateLimiter,
    RateLimitMiddleware,
    TokenBucket,
    client_address,
    parse_networks,
)


def test_a_bucket_allows_the_burst_then_one_request_per_token() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.25) == pytest.approx(0.25)  # half a token saved up by now
    assert bucket.take(0.5) == 0.0
    assert bucket.take(100.0) == 0.0 and bucket.tokens == pytest.approx(2.0)  # capped at the burst


def test_a_bucket_never_refills_when_the_clock_steps_back() -> None:
    bucket = TokenBucket(1.0, 1, now=10.0)
    assert bucket.take(10.0) == 0.0
    assert bucket.take(5.0) > 0.0
    assert bucket.take(10.5) > 0.0  # the step back did not restart the interval
    assert bucket.take(11.0) == 0.0


@given(st.lists(st.floats(0.0, 5.0, allow_nan=False), max_size=200), st.floats(0.1, 50.0), st.integers(1, 20))
def test_a_bucket_never_allows_more_than_burst_plus_rate_times_elapsed(
    gaps: list[float], rate: float, burst: int
) -> None:
    bucket = TokenBucket(rate, burst, now=0.0)
    now = allowed = 0.0
    for gap in gaps:
        now += gap
        allowed += bucket.take(now) == 0.0
    assert allowed <= burst + rate * now + 1e-6


def test_clients_are_limited_separately_and_the_map_is_bounded() -> None:
    limiter = RateLimiter(rate_per_s=1.0, burst=2, max_clients=3)
    assert limiter.check("a", 0.0).allowed and limiter.check("a", 0.0).allowed
    verdict = limiter.check("a", 0.0)
    assert not verdict.allowed and verdict.retry_after_s == pytest.approx(1.0)
    assert limiter.check("b", 0.0).allowed  # another client is not affected
    for name in ("c", "d", "e"):
        limiter.check(name, 0.0)
    assert len(limiter) == 3 and "a" not in limiter and "b" not in limiter
    assert limiter.evicted_total == 2 and limiter.limited_total == 1


def test_the_least_recently_seen_client_is_forgotten_first() -> None:
    limiter = RateLimiter(1.0, 5, max_clients=2)
    limiter.check("old", 0.0)
    limiter.check("busy", 0.0)
    limiter.check("old", 1.0)  # seen again: now "busy" is the least recent
    limiter.check("new", 2.0)
    assert "old" in limiter and "new" in limiter and "busy" not in limiter


TRUSTED = parse_networks(["10.0.0.0/8", "192.168.1.1"])


@pytest.mark.parametrize(
    ("peer", "forwarded", "client"),
    [
        ("203.0.113.5", None, "203.0.113.5"),
        ("203.0.113.5", "1.2.3.4", "203.0.113.5"),  # not a trusted proxy: the header is the client's invention
        ("10.1.2.3", "198.51.100.7", "198.51.100.7"),
        ("10.1.2.3", "6.6.6.6, 198.51.100.7", "198.51.100.7"),  # the left-most entry is the client's choice
        ("10.1.2.3", "198.51.100.7, 192.168.1.1", "198.51.100.7"),  # two trusted proxies in a row
        ("10.1.2.3", "10.9.9.9, 10.8.8.8", "10.9.9.9"),  # only proxies: the first hop is the client
        ("10.1.2.3", "junk, 198.51.100.7", "198.51.100.7"),
        ("10.1.2.3", "198.51.100.7, junk", "10.1.2.3"),  # the proxy's own entry is malformed
        ("10.1.2.3", "2001:DB8::1", "2001:db8::1"),
        (None, "1.2.3.4", "unknown"),
    ],
)
def test_client_address_believes_forwarded_for_only_from_trusted_proxies(
    peer: str | None, forwarded: str | None, client: str
) -> None:
    assert client_address(peer, forwarded, TRUSTED) == client


def test_a_bad_proxy_entry_is_refused() -> None:
    with pytest.raises(ValueError):
        parse_networks(["10.0.0.0/8", "not-an-ip"])


def build(trusted: tuple[str, ...] = ()) -> tuple[httpx.AsyncClient, FakeClock]:
    clock = FakeClock()

    async def ok(request: Request) -> Response:
        return PlainTextResponse("ok")

    async def page(scope, receive, send):  # type: ignore[no-untyped-def]
        await PlainTextResponse("reflex page")(scope, receive, send)

    routes = [Route("/api/v1/status", ok), Route("/health", ok), Route("/api/v1/retry", ok, methods=["POST"])]
    app = Starlette(
        routes=[*routes, Mount("/", app=page)],
        middleware=[
            Middleware(
                RateLimitMiddleware,
                routes=routes,
                rate_per_s=1.0,
                burst=3,
                trusted_proxies=trusted,
                clock=clock,
                exempt=lambda template: template.startswith("/health"),
            )
        ],
    )
    transport = httpx.ASGITransport(app=app, client=("10.0.0.1", 1234))
    return httpx.AsyncClient(transport=transport, base_url="http://test"), clock


async def test_over_the_limit_is_429_with_retry_after_and_a_json_reason() -> None:
    client, clock = build()
    async with client:
        assert [(await client.get("/api/v1/status")).status_code for _ in range(3)] == [200, 200, 200]
        refused = await client.get("/api/v1/status")
        assert refused.status_code == 429
        assert refused.headers["retry-after"] == "1"
        assert refused.headers["content-type"] == "application/json"
        assert refused.json()["error"] == "rate_limited" and "limit" in refused.json()["message"]
        assert (await client.post("/api/v1/retry")).status_code == 429  # one budget across routes
        clock.advance(1.0)
        assert (await client.get("/api/v1/status")).status_code == 200


async def test_health_and_foreign_paths_are_never_limited() -> None:
    client, clock = build()
    async with client:
        for _ in range(20):
            assert (await client.get("/health")).status_code == 200
            assert (await client.get("/some/page")).status_code == 200
        assert (await client.get("/api/v1/status")).status_code == 200


async def test_behind_a_trusted_proxy_each_forwarded_client_has_its_own_budget() -> None:
    client, clock = build(trusted=("10.0.0.0/8",))
    async with client:
        for _ in range(3):
            await client.get("/api/v1/status", headers={"X-Forwarded-For": "198.51.100.1"})
        assert (await client.get("/api/v1/status", headers={"X-Forwarded-For": "198.51.100.1"})).status_code == 429
        assert (await client.get("/api/v1/status", headers={"X-Forwarded-For": "198.51.100.2"})).status_code == 200


async def test_an_untrusted_peer_cannot_escape_by_inventing_forwarded_for() -> None:
    client, clock = build()
    async with client:
        codes = [
            (await client.get("/api/v1/status", headers={"X-Forwarded-For": f"198.51.100.{i}"})).status_code
            for i in range(5)
        ]
        assert codes == [200, 200, 200, 429, 429]
