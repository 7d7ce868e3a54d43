"""Health aggregation and verdicts: pure functions, a fake clock, no sockets."""

from __future__ import annotations

import asyncio

from backend_core.clock import FakeClock
from backend_core.health import (
    CheckResult,
    HealthService,
    aggregate,
    breaker_verdict,
    loop_lag_verdict,
    relay_verdict,
    status_rank,
    upstream_verdict,
    worst,
)


def test_worst_status_wins_and_nothing_is_pass() -> None:
    assert worst([]) == "pass"
    assert worst(["pass", "warn"]) == "warn"
    assert worst(["warn", "fail", "pass"]) == "fail"


def test_an_unknown_status_ranks_as_failing() -> None:
    assert status_rank("pass") < status_rank("warn") < status_rank("fail") == status_rank("exploded")


def test_an_upstream_outage_degrades_but_never_fails_the_service() -> None:
    for state in ("connecting", "reconnecting", "circuit_open", "stopped"):
        status, output = upstream_verdict(state, None, 90)
        assert status == "warn" and output
    assert upstream_verdict("connected", 1.0, 90) == ("pass", "connected")
    assert upstream_verdict("connected", 200.0, 90)[0] == "warn"


def test_breaker_relay_and_loop_verdicts() -> None:
    assert breaker_verdict("closed")[0] == "pass"
    assert breaker_verdict("disabled")[0] == "pass"
    assert breaker_verdict("open")[0] == "warn"
    assert breaker_verdict("half_open")[0] == "warn"
    assert relay_verdict(True, 10, 100)[0] == "pass"
    assert relay_verdict(True, 95, 100)[0] == "warn"
    assert relay_verdict(False, 0, 100) == ("pass", "relay disabled by WEBSOCKET_ENABLED=false")
    assert loop_lag_verdict(0.01)[0] == "pass"
    assert loop_lag_verdict(0.5)[0] == "warn"
    assert loop_lag_verdict(3.0)[0] == "fail"


def result(component: str, status: str) -> CheckResult:
    return CheckResult(component, "component", "state", status, 1, None, f"{component} is {status}")  # type: ignore[arg-type]


async def test_checks_run_concurrently_each_under_its_own_timeout() -> None:
    clock = FakeClock()
    hanging = asyncio.Event()

    async def hangs() -> list[CheckResult]:
        hanging.set()
        await asyncio.Event().wait()
        return []

    def raises() -> list[CheckResult]:
        raise RuntimeError("secret detail that must not leak")

    observed: list[tuple[str, float]] = []
    service = HealthService(
        {"ok": lambda: [result("ok", "pass")], "slow": hangs, "broken": raises},  # type: ignore[dict-item]
        clock,
        timeout_s=1.0,
        observe=lambda name, seconds: observed.append((name, seconds)),
    )
    run = asyncio.ensure_future(service.run())
    await hanging.wait()
    clock.advance(0.99)
    await asyncio.sleep(0)
    assert not run.done()  # the deadline is the fake clock's, not the loop's
    clock.advance(0.01)
    report = await run
    by_key = {r.component_id: r for r in report.results}
    assert by_key["ok"].status == "pass"
    assert by_key["slow"].status == "fail" and "timed out after 1.0s" in by_key["slow"].output
    assert by_key["broken"].status == "fail" and "secret" not in by_key["broken"].output
    assert report.status == "fail"
    # Durations are measured on the injected clock too: only the hung check took time.
    assert sorted(observed) == [("broken", 0.0), ("ok", 0.0), ("slow", 1.0)]


async def test_detailed_report_follows_the_health_json_draft() -> None:
    clock = FakeClock()
    service = HealthService({"a": lambda: [result("upstream", "warn"), result("relay", "pass")]}, clock)
    report = await service.run()
    body = report.detailed(version="0", release_id="0.1.0", service_id="svc", description="d")
    assert body["status"] == "warn" == aggregate(report.results)
    assert set(body) >= {"status", "version", "releaseId", "serviceId", "checks", "output"}
    entry = body["checks"]["upstream:state"][0]
    assert set(entry) >= {"componentType", "observedValue", "status", "time", "output"}
    assert entry["time"].endswith("Z")
    assert report.summary()["components"] == {"upstream": "warn", "relay": "pass"}


async def test_the_runtime_checks_read_component_snapshots() -> None:
    from backend_core.events import LinkState, UpstreamSnapshot
    from backend_core.health import breakers_check, hub_check, loop_lag_check, relay_check, upstream_check

    clock = FakeClock()
    snap: UpstreamSnapshot | None = None
    check = upstream_check(lambda: snap, clock, silent_after_s=90)
    assert [(r.measurement, r.status, r.output) for r in check()] == [("state", "warn", "not started")]
    snap = UpstreamSnapshot(LinkState.CONNECTED, clock.wall(), "ws://x", True, last_message_at=clock.wall() - 100)
    assert {r.key: r.status for r in check()} == {"upstream:state": "warn", "upstream:lastMessageAge": "warn"}

    class Counts:
        def __init__(self, **values: object) -> None:
            self.values = values

        def snapshot(self) -> dict[str, object]:
            return self.values

    full = relay_check(Counts(active=100), enabled=True, max_connections=100)()
    assert full[0].status == "warn" and full[0].observed_value == 100
    assert [r.observed_value for r in hub_check(Counts(subscribers=3, dropped_total=7))()] == [3, 7]

    class Breaker:
        name, state = "websocket", "open"

    class Registry:
        def snapshots(self) -> list[Breaker]:
            return [Breaker()]

    assert breakers_check(Registry())()[0].key == "circuitBreaker.websocket:state"

    class Probe:
        lag_s = 3.0

    assert loop_lag_check(Probe())()[0].status == "fail"
