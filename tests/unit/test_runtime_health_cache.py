"""Status pages share health runs and wait for changes on the runtime's clock (a fake one here)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from backend_core.health import HealthReport
from tests.helpers import open_feed_breaker, runtime_counting_health_runs, turns_until


async def test_pages_share_one_run_and_reuse_a_recent_report(tmp_path: Path) -> None:
    runtime, clock, runs = runtime_counting_health_runs(tmp_path)
    reports = await asyncio.gather(*(runtime.health_report(max_age_s=1.0) for _ in range(20)))
    assert len(runs) == 1
    assert all(r is reports[0] for r in reports)
    clock.advance(0.5)
    assert await runtime.health_report(max_age_s=1.0) is reports[0]
    clock.advance(0.6)
    await runtime.health_report(max_age_s=1.0)
    assert len(runs) == 2


async def test_http_health_routes_always_get_a_fresh_report(tmp_path: Path) -> None:
    runtime, clock, runs = runtime_counting_health_runs(tmp_path)
    await runtime.health_report()
    await runtime.health_report()
    assert len(runs) == 2


async def test_pages_wait_for_a_status_change_or_their_period_on_the_runtime_clock(tmp_path: Path) -> None:
    runtime, clock, _ = runtime_counting_health_runs(tmp_path)
    seen = runtime.status_version
    waiting = asyncio.ensure_future(runtime.wait_for_change(seen, 1.0))
    await turns_until(lambda: clock.deadlines == 1, "the page's wait on the clock")
    assert not waiting.done()
    clock.advance(1.0)
    assert await waiting == seen  # the period passed on fake time, nothing changed

    waiting = asyncio.ensure_future(runtime.wait_for_change(seen, 60.0))
    await turns_until(lambda: clock.deadlines == 1, "the page's wait on the clock")
    runtime._signal_change()  # what a status event or a breaker transition does
    assert await waiting == seen + 1
    assert clock.deadlines == 0  # the wait's deadline went with it


async def test_a_status_change_makes_the_next_page_run_afresh_and_the_rest_share_it(tmp_path: Path) -> None:
    runtime, clock, runs = runtime_counting_health_runs(tmp_path)
    before = await runtime.health_report(max_age_s=1.0)
    clock.advance(0.1)  # still well inside max_age_s
    await open_feed_breaker(runtime)
    reports = await asyncio.gather(*(runtime.health_report(max_age_s=1.0) for _ in range(20)))
    assert len(runs) == 2  # one run for the change, however many pages saw it
    assert all(r is reports[0] for r in reports) and reports[0] is not before
    assert breaker_state(reports[0]) == "open"
    assert await runtime.health_report(max_age_s=1.0) is reports[0]  # no change since: reused


def breaker_state(report: HealthReport) -> object:
    return {r.component_id: r.observed_value for r in report.results}["circuitBreaker.websocket"]


async def test_a_run_in_flight_from_before_a_change_is_not_handed_to_later_pages(tmp_path: Path) -> None:
    runtime, clock, runs = runtime_counting_health_runs(tmp_path)
    counting_run, gate, read = runtime.health.run, asyncio.Event(), []

    async def first_run_is_slow() -> HealthReport:
        report = await counting_run()  # the breakers are read now
        read.append(1)
        if len(runs) == 1:
            await gate.wait()
        return report

    runtime.health.run = first_run_is_slow  # type: ignore[method-assign]
    early = asyncio.ensure_future(runtime.health_report(max_age_s=1.0))
    await turns_until(lambda: read, "the first run reading the breakers")
    await open_feed_breaker(runtime)
    late = asyncio.ensure_future(runtime.health_report(max_age_s=1.0))
    await asyncio.sleep(0)
    assert not late.done()  # it does not take the run from before the change
    gate.set()
    assert breaker_state(await early) == "closed"
    assert breaker_state(await late) == "open"
    assert len(runs) == 2
