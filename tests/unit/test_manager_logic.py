"""The manager's pure decisions: backoff schedule, tick sequencing, error classification, URLs."""

from __future__ import annotations

import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from websockets.datastructures import Headers
from websockets.exceptions import InvalidStatus
from websockets.http11 import Response

from backend_core.deriv.manager import (
    TickSequencer,
    backfill_gap,
    backoff_delay,
    build_url,
    classify_connect_error,
    redact_url,
)
from backend_core.errors import DerivAPIError
from backend_core.events import Tick


@given(attempt=st.integers(min_value=1, max_value=10_000), seed=st.integers(0, 2**32))
def test_backoff_is_full_jitter_under_an_exponential_ceiling_and_the_cap(attempt: int, seed: int) -> None:
    delay = backoff_delay(attempt, 1.0, 30.0, random.Random(seed))
    assert 0.0 <= delay <= min(30.0, 2 ** (attempt - 1))


def test_backoff_ceiling_doubles_until_the_cap() -> None:
    class Top(random.Random):
        def uniform(self, a: float, b: float) -> float:
            return b

    rng = Top()
    assert [backoff_delay(n, 1.0, 30.0, rng) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def tick(symbol: str, epoch: int, backfill: bool = False) -> Tick:
    return Tick(symbol=symbol, epoch=epoch, quote=1.0, pip_size=2, backfill=backfill)


def test_sequencer_lets_each_epoch_through_once_in_order() -> None:
    seq = TickSequencer()
    accepted = [seq.accept(t) for t in [tick("A", 1), tick("A", 2), tick("A", 2), tick("A", 1), tick("B", 1)]]
    assert accepted == [True, True, False, False, True]
    assert seq.duplicates == 2
    assert seq.last_epoch("A") == 2 and seq.last_epoch("B") == 1 and seq.last_epoch("C") is None


@given(st.lists(st.tuples(st.sampled_from("ABC"), st.integers(0, 50)), max_size=200))
def test_sequencer_output_is_strictly_increasing_per_symbol(events: list[tuple[str, int]]) -> None:
    seq = TickSequencer()
    out: dict[str, list[int]] = {}
    for symbol, epoch in events:
        if seq.accept(tick(symbol, epoch)):
            out.setdefault(symbol, []).append(epoch)
    for epochs in out.values():
        assert all(a < b for a, b in itertools.pairwise(epochs))


def refused(status: int, body: bytes) -> InvalidStatus:
    return InvalidStatus(Response(status, "x", Headers(), body))


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (TimeoutError(), "ConnectTimeout"),
        (refused(401, b'{"error":"InvalidAppID"}'), "InvalidAppID"),
        (refused(403, b'{"error":"AccessRestricted"}'), "AccessRestricted"),
        (refused(503, b"busy"), "HandshakeRefused"),
        (ConnectionRefusedError(111, "Connection refused"), "ConnectionRefused"),
        (OSError(101, "Network is unreachable"), "NetworkError"),
        (DerivAPIError("RateLimit", "You have reached the rate limit for ticks."), "RateLimit"),
        (ValueError("odd"), "ConnectError"),
    ],
)
def test_connect_errors_get_the_codes_the_status_page_chooses_tips_by(exc: BaseException, code: str) -> None:
    info = classify_connect_error(exc)
    assert info.code == code
    assert info.message and "Traceback" not in info.message


def test_url_carries_app_id_language_and_brand() -> None:
    assert build_url("wss://ws.derivws.com/websockets/v3", "1089") == (
        "wss://ws.derivws.com/websockets/v3?app_id=1089&l=EN&brand=deriv"
    )
    assert build_url("ws://h:1/websockets/v3?x=1", "7").endswith("?x=1&app_id=7&l=EN&brand=deriv")


def test_redacted_url_has_no_credentials() -> None:
    assert redact_url("wss://user:secret@host:443/websockets/v3") == "wss://host:443/websockets/v3"


def test_a_backfill_gap_is_found_only_when_a_full_reply_starts_after_the_last_tick() -> None:
    # Deriv answers the latest `count` ticks of [start, end], start inclusive (3.4).
    assert backfill_gap(100, [100, 101, 102], requested=3) is None  # full, reaches back: no gap
    assert backfill_gap(100, [101, 102], requested=3) is None  # short: the whole range
    assert backfill_gap(100, [], requested=3) is None  # nothing missed
    assert backfill_gap(None, [5, 6, 7], requested=3) is None  # nothing published before
    assert backfill_gap(100, [150, 151, 152], requested=3) == 100  # full and later: 101..149 lost
