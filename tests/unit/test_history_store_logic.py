"""The history store's pure parts and its shell without a database: minute sampling,
verdicts, URL helpers, queue bounds, the history API's parameters."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import exc as sa_exc
from starlette.applications import Starlette

from backend_core.breakers.breaker import Transition
from backend_core.breakers.core import BreakerState
from backend_core.clock import FakeClock
from backend_core.config import load_settings
from backend_core.events import LinkState, UpstreamSnapshot
from backend_core.history.db import is_transient, normalize_db_url, redact_db_url, sqlite_file
from backend_core.history.minutes import MinuteSample, MinuteSampler, breaker_sample_status, upstream_sample_status
from backend_core.history.queries import StoreUnavailable, uptime_pct
from backend_core.history.store import HistoryStore, store_verdict
from backend_core.history.writer import WriterLimits
from backend_core.history_api import history_routes
from backend_core.incidents import IncidentFeed
from tests.helpers import counting_keys, upstream_snapshot

T0 = 1_700_000_040.0  # a whole minute (28,333,334 * 60)


def snap(state: LinkState, *, site_status: str | None = "up", **fields: Any) -> UpstreamSnapshot:
    return upstream_snapshot(state, since=T0, site_status=site_status, **fields)


keys = counting_keys


# ---------------------------------------------------------------------------- minute samples


def test_status_mapping() -> None:
    assert upstream_sample_status(snap(LinkState.CONNECTED)) == ("connected", "up")
    assert upstream_sample_status(snap(LinkState.STOPPED)) is None
    # A start that has not failed yet is not sampled: no amber bar after every restart.
    assert upstream_sample_status(snap(LinkState.CONNECTING)) is None
    assert upstream_sample_status(snap(LinkState.CONNECTING, error="X")) == ("connecting", "down")
    assert upstream_sample_status(snap(LinkState.RECONNECTING, error="X")) == ("reconnecting", "down")
    assert upstream_sample_status(snap(LinkState.CIRCUIT_OPEN, error="X")) == ("circuit_open", "down")
    assert upstream_sample_status(snap(LinkState.RECONNECTING, planned=True)) == ("reconnecting", "maintenance")


def test_a_planned_maintenance_samples_as_maintenance_not_down() -> None:
    # Deriv's website_status "updating" (a deploy announced): maintenance, even while connected.
    updating = snap(LinkState.CONNECTED, planned=True, site_status="updating")
    assert upstream_sample_status(updating) == ("connected", "maintenance")
    # The announced drop and every retry after it, until the link is proven again.
    for state in (LinkState.RECONNECTING, LinkState.CONNECTING, LinkState.CIRCUIT_OPEN):
        dropped = snap(state, error="SiteUpdating", planned=True, site_status="updating")
        assert upstream_sample_status(dropped) == (state.value, "maintenance")
    # Announced only while connected and the site is back "up": the link serves, so up.
    assert upstream_sample_status(snap(LinkState.CONNECTED, planned=True)) == ("connected", "up")
    assert upstream_sample_status(snap(LinkState.STOPPED, site_status="updating")) is None
    # A maintenance minute is blue, and its seconds are not down seconds (uptime stays 100 %).
    s = MinuteSampler()
    m0 = int(T0 // 60)
    s.observe("upstream", "connected", "up", T0)
    s.observe("upstream", "reconnecting", "maintenance", T0 + 20)
    [minute] = s.roll(T0 + 60)
    assert (minute.minute, minute.status, minute.state, minute.down_s, minute.observed_s) == (
        m0,
        "maintenance",
        "reconnecting",
        0.0,
        60.0,
    )
    # A real outage in the same minute wins: down is worse than maintenance.
    s.observe("upstream", "reconnecting", "down", T0 + 70)
    [worse] = s.roll(T0 + 120)
    assert (worse.status, worse.down_s) == ("down", 50.0)
    assert breaker_sample_status("closed") == ("closed", "up")
    assert breaker_sample_status("disabled") == ("disabled", "up")
    assert breaker_sample_status("half_open") == ("half_open", "degraded")
    assert breaker_sample_status("open") == ("open", "down")


def test_a_minute_records_worst_status_observed_and_down_seconds() -> None:
    s = MinuteSampler()
    m0 = int(T0 // 60)
    assert s.observe("upstream", "connected", "up", T0 + 30) == []
    assert s.observe("upstream", "reconnecting", "down", T0 + 40) == []
    assert s.observe("upstream", "connected", "up", T0 + 50) == []
    [first] = s.roll(T0 + 60)
    assert first == MinuteSample("upstream", m0, "reconnecting", "down", 30.0, 10.0)
    assert first.day == m0 // 1440 and first.severity == 3
    assert s.roll(T0 + 61) == []
    [second] = s.roll(T0 + 120)
    assert second == MinuteSample("upstream", m0 + 1, "connected", "up", 60.0, 0.0)


def test_a_zero_length_blip_still_marks_the_minute() -> None:
    s = MinuteSampler()
    s.observe("upstream", "connected", "up", T0)
    s.observe("upstream", "reconnecting", "down", T0 + 5)
    s.observe("upstream", "connected", "up", T0 + 5)
    [sample] = s.roll(T0 + 60)
    assert (sample.status, sample.state, sample.down_s, sample.observed_s) == ("down", "reconnecting", 0.0, 60.0)


def test_minutes_between_rolls_are_filled_with_the_current_state() -> None:
    s = MinuteSampler()
    s.observe("breaker:websocket", "open", "down", T0)
    samples = s.roll(T0 + 180 + 7)
    assert [x.minute for x in samples] == [int(T0 // 60) + i for i in range(3)]
    assert all(x.down_s == 60.0 and x.status == "down" for x in samples)


def test_forget_emits_the_partial_minute_and_stops_counting() -> None:
    s = MinuteSampler()
    s.observe("upstream", "connected", "up", T0)
    [partial] = s.forget("upstream", T0 + 20)
    assert partial.observed_s == 20.0
    assert s.roll(T0 + 600) == []
    assert s.components == []


def test_peek_shows_the_unfinished_minutes_without_changing_anything() -> None:
    s = MinuteSampler()
    s.observe("upstream", "connected", "up", T0)
    s.observe("upstream", "reconnecting", "down", T0 + 50)
    assert s.peek("upstream", T0 + 70) == [
        MinuteSample("upstream", int(T0 // 60), "reconnecting", "down", 60.0, 10.0),
        MinuteSample("upstream", int(T0 // 60) + 1, "reconnecting", "down", 10.0, 10.0),
    ]
    assert s.peek("nothing", T0) == [] and s.peek("upstream", T0 - 1) == []
    [first] = s.roll(T0 + 60)  # unchanged by the peek
    assert (first.observed_s, first.down_s) == (60.0, 10.0)


def test_a_stall_longer_than_the_fill_limit_is_left_empty() -> None:
    s = MinuteSampler(max_fill_minutes=5)
    s.observe("upstream", "connected", "up", T0)
    samples = s.roll(T0 + 3600)
    assert len(samples) == 6
    [after] = s.roll(T0 + 3660)
    assert after.minute == int((T0 + 3600) // 60)


def test_a_wall_clock_step_back_restarts_the_minute() -> None:
    s = MinuteSampler()
    s.observe("upstream", "connected", "up", T0)
    assert s.roll(T0 + 30) == []
    [before] = s.roll(T0 - 3600 + 10)  # an hour back: the partial minute is kept, counting restarts
    assert (before.minute, before.observed_s) == (int(T0 // 60), 30.0)
    [after] = s.roll(T0 - 3600 + 70)
    assert (after.minute, after.observed_s) == (int((T0 - 3600) // 60), 50.0)


def test_components_are_bounded() -> None:
    s = MinuteSampler(max_components=1)
    s.observe("a", "closed", "up", T0)
    s.observe("b", "closed", "up", T0)
    assert s.components == ["a"] and s.ignored_components == 1


def test_unknown_status_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown status"):
        MinuteSampler().observe("a", "x", "sideways", T0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 400), st.sampled_from(["up", "down", "degraded", "maintenance"])), max_size=30))
def test_observed_time_adds_up_to_elapsed_time(steps: list[tuple[float, str]]) -> None:
    s = MinuteSampler()
    now = T0 + 13.5
    s.observe("c", "x", "up", now)
    start = now
    down = 0.0
    samples: list[MinuteSample] = []
    status = "up"
    for delta, new_status in steps:
        if status == "down":
            down += delta
        now += delta
        samples += s.observe("c", "x", new_status, now)
        status = new_status
    samples += s.finish(now)
    assert sum(x.observed_s for x in samples) == pytest.approx(now - start, abs=1e-3 * (len(samples) + 1))
    assert sum(x.down_s for x in samples) == pytest.approx(down, abs=1e-3 * (len(samples) + 1))
    assert all(0.0 <= x.down_s <= x.observed_s <= 60.0 + 1e-6 for x in samples)
    assert [x.minute for x in samples] == sorted({x.minute for x in samples})


# ---------------------------------------------------------------------------- verdicts and helpers


def test_store_verdict_never_fails() -> None:
    ok = {"usable_error": None, "reachable": True, "pending": 0, "capacity": 100, "last_error": None}
    assert store_verdict(**ok) == ("pass", "reachable")
    assert store_verdict(**{**ok, "reachable": None})[0] == "warn"
    down = store_verdict(**{**ok, "reachable": False, "pending": 7, "last_error": "OperationalError: refused"})
    assert down == ("warn", "history database unreachable: OperationalError: refused; 7 events waiting")
    assert store_verdict(**{**ok, "pending": 80})[0] == "warn"
    assert "unusable" in store_verdict(**{**ok, "usable_error": "no driver"})[1]


def test_uptime_pct() -> None:
    assert uptime_pct(0.0, 0.0) is None
    assert uptime_pct(3600.0, 60.0) == 98.333
    assert uptime_pct(10.0, 20.0) == 0.0


def test_database_urls() -> None:
    assert normalize_db_url("postgresql://u:p@h/db").drivername == "postgresql+psycopg"
    assert normalize_db_url("postgres://u:p@h/db").drivername == "postgresql+psycopg"
    assert normalize_db_url("postgresql+psycopg://u:p@h/db").drivername == "postgresql+psycopg"
    assert normalize_db_url("sqlite:///data/status.db").drivername == "sqlite"
    assert "hunter2" not in redact_db_url("postgresql+psycopg://u:hunter2@h/db")
    assert str(sqlite_file(normalize_db_url("sqlite:///data/status.db"))) == "data/status.db"
    assert str(sqlite_file(normalize_db_url("sqlite:////abs/h.db"))) == "/abs/h.db"
    assert sqlite_file(normalize_db_url("sqlite://")) is None
    assert sqlite_file(normalize_db_url("sqlite:///:memory:")) is None
    assert sqlite_file(normalize_db_url("postgresql://h/db")) is None


def test_transient_errors_are_told_apart_from_refused_rows() -> None:
    assert is_transient(sa_exc.OperationalError("x", {}, Exception("connection refused")))
    assert is_transient(sa_exc.InterfaceError("x", {}, Exception("closed")))
    assert is_transient(sa_exc.TimeoutError("pool"))
    assert is_transient(ConnectionRefusedError())
    assert not is_transient(sa_exc.IntegrityError("x", {}, Exception("duplicate")))
    assert not is_transient(sa_exc.DataError("x", {}, Exception("too long")))
    assert not is_transient(ValueError("bug"))


# ---------------------------------------------------------------------------- the shell without a database


def make_store(**kwargs: Any) -> HistoryStore:
    return HistoryStore(load_settings({}), FakeClock(start_wall=T0), db_url="sqlite:///unused.db", **kwargs)


def fed(store: HistoryStore) -> IncidentFeed:
    """The Runtime's wiring: one incident feed whose events reach the store."""
    feed = IncidentFeed(FakeClock(start_wall=T0), new_key=keys())
    feed.subscribe(store.record_incidents)
    return feed


def test_producers_never_wait_and_overflow_is_counted() -> None:
    store = make_store(limits=WriterLimits(max_pending_records=3, max_pending_samples=2))
    feed = fed(store)
    for i in range(5):
        feed.status(snap(LinkState.CONNECTED))
        feed.status(snap(LinkState.RECONNECTING, error="ConnectionLost", attempt=i))
    snapshot = store.snapshot()
    # 5 opened + 4 closed incidents; 3 fit, 6 are counted as dropped.
    assert snapshot["pending_records"] == 3
    assert snapshot["dropped_by_kind"]["record"] == 6
    assert store.snapshot()["dropped_events_total"] == 6
    assert snapshot["schema_ready"] is False and snapshot["reachable"] is None
    [reachable, pending, dropped] = store.health_check()
    assert reachable.status == "warn" and reachable.component_id == "database"
    assert pending.observed_value == 3 and dropped.observed_value == 6


def test_a_bad_db_url_makes_the_store_unusable_not_the_app() -> None:
    store = HistoryStore(load_settings({}), FakeClock(start_wall=T0), db_url="::not a url::")
    assert store.unusable is not None
    fed(store).status(snap(LinkState.RECONNECTING, error="X"))
    assert store.snapshot()["dropped_events_total"] == 1
    assert store.health_check()[0].status == "warn"


async def test_queries_before_start_are_unavailable() -> None:
    store = make_store()
    with pytest.raises(StoreUnavailable):
        await store.incidents()


# ---------------------------------------------------------------------------- history API parameters


class FakeStore:
    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.fail = fail

    async def history(self, component: str, days: int) -> dict[str, Any]:
        self.calls.append(("history", component, days))
        if self.fail:
            raise StoreUnavailable("the history database is unreachable")
        return {"component": component, "days": days}

    async def incidents(self, limit: int, component: str | None) -> list[dict[str, Any]]:
        self.calls.append(("incidents", limit, component))
        return [{"id": "k1"}]

    async def transitions(self, limit: int, name: str | None) -> list[dict[str, Any]]:
        self.calls.append(("transitions", limit, name))
        return []


def client(store: FakeStore) -> httpx.AsyncClient:
    app = Starlette(routes=history_routes(store))  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_history_api_defaults_and_values() -> None:
    fake = FakeStore()
    async with client(fake) as http:
        assert (await http.get("/api/v1/history")).json() == {"component": "upstream", "days": 90}
        response = await http.get("/api/v1/history?component=breaker:api:/api/v1/ticks/{symbol}&days=7")
        assert response.status_code == 200
        body = (await http.get("/api/v1/incidents?limit=5&component=upstream")).json()
        assert body == {"incidents": [{"id": "k1"}], "count": 1, "limit": 5, "component": "upstream"}
        assert (await http.get("/api/v1/transitions?name=websocket")).json()["limit"] == 100
    assert fake.calls == [
        ("history", "upstream", 90),
        ("history", "breaker:api:/api/v1/ticks/{symbol}", 7),
        ("incidents", 5, "upstream"),
        ("transitions", 100, "websocket"),
    ]


@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/api/v1/history?days=0", "days must be a whole number from 1 to 366, not '0'"),
        ("/api/v1/history?days=367", "from 1 to 366"),
        ("/api/v1/history?days=abc", "not 'abc'"),
        ("/api/v1/history?days=%C2%B2", "days must be a whole number"),
        ("/api/v1/history?days=-5", "days must"),
        ("/api/v1/history?component=%3Cscript%3E", "component must be a component name"),
        ("/api/v1/history?component=" + "a" * 300, "at most 255"),
        ("/api/v1/incidents?limit=501", "limit must be a whole number from 1 to 500"),
        ("/api/v1/incidents?limit=1e3", "limit must"),
        ("/api/v1/incidents?component=a%20b", "component must"),
        ("/api/v1/transitions?limit=0", "limit must be a whole number from 1 to 1000"),
        ("/api/v1/transitions?name=%00", "name must"),
    ],
)
async def test_history_api_rejects_bad_parameters_with_a_clear_400(path: str, words: str) -> None:
    fake = FakeStore()
    async with client(fake) as http:
        response = await http.get(path)
    assert response.status_code == 400
    body = response.json()
    assert body["error"] == "invalid_parameter" and words in body["message"]
    assert len(body["message"]) < 300
    assert fake.calls == []


async def test_history_api_says_503_with_retry_after_when_the_database_is_down() -> None:
    async with client(FakeStore(fail=True)) as http:
        response = await http.get("/api/v1/history")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "10"
    assert response.json() == {"error": "history_unavailable", "message": "the history database is unreachable"}


def test_a_bug_in_recording_never_reaches_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    store = make_store()

    def broken(*args: Any) -> Any:
        raise RuntimeError("bug")

    store._sampler.observe = broken  # type: ignore[method-assign]
    store.record_status(snap(LinkState.CONNECTED))
    store.record_transition(Transition("websocket", BreakerState.CLOSED, BreakerState.OPEN, "x", 0.0, T0))
    store.record_breaker_state("websocket", "closed")
    assert store.snapshot()["faults_total"] == 3
    assert sum("history: record_status failed" in r.getMessage() for r in caplog.records) == 1
