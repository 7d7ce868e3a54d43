"""Health checks and their aggregation.

Output follows the IETF draft "Health Check Response Format for HTTP APIs"
(draft-inadarei-api-health-check): ``status`` is ``pass``, ``warn`` or ``fail``;
``checks`` is keyed ``"component:measurement"``, each an array of objects with
``componentType``, ``observedValue``, ``observedUnit``, ``status``, ``time`` and ``output``.

Every check reads snapshots only (DESIGN.md rule 4: no handler awaits the upstream), runs
concurrently with the others under its own timeout, and a check that raises or overruns
reports ``fail`` for itself without hiding the rest. The pure part (:func:`aggregate`,
:func:`worst`, the per-check verdict functions) takes its inputs as arguments, so it is
unit-tested without a running system.

An upstream outage is ``warn``, not ``fail``: the service degrades gracefully (the relay
and REST keep serving the last known ticks and the status) and stays ready.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

from backend_core.breakers.registry import BreakerRegistry
from backend_core.clock import Clock, iso_utc
from backend_core.events import UpstreamSnapshot

Status = Literal["pass", "warn", "fail"]
# Worse is higher. The status page groups check results with it too (rxapp.ui_logic).
STATUS_RANK: Final[Mapping[str, int]] = {"pass": 0, "warn": 1, "fail": 2}

# Each check reads in-memory snapshots; 1 s is far above what that takes and still
# short enough that a wedged check cannot make /health slow for an orchestrator.
CHECK_TIMEOUT_S = 1.0
# Event-loop lag: how late a timer fires. Past these, requests are visibly slow.
LOOP_LAG_WARN_S = 0.25
LOOP_LAG_FAIL_S = 2.0
# How often the lag probe samples the loop.
LOOP_LAG_SAMPLE_S = 0.5


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One entry of a check's array in health+json."""

    component_id: str
    component_type: str
    measurement: str
    status: Status
    observed_value: Any = None
    observed_unit: str | None = None
    output: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return f"{self.component_id}:{self.measurement}"

    def to_json(self, now_wall: float) -> dict[str, Any]:
        data: dict[str, Any] = {
            "componentType": self.component_type,
            "observedValue": self.observed_value,
            "status": self.status,
            "time": iso_utc(now_wall),
        }
        if self.observed_unit is not None:
            data["observedUnit"] = self.observed_unit
        if self.output:
            data["output"] = self.output
        data.update(self.extra)
        return data


def status_rank(status: str) -> int:
    """How bad ``status`` is; anything unknown counts as ``fail``."""
    return STATUS_RANK.get(status, STATUS_RANK["fail"])


def worst(statuses: Sequence[str]) -> Status:
    """The worst of several statuses; ``pass`` when there are none."""
    best: Status = "pass"
    for status in statuses:
        if status_rank(status) > status_rank(best):
            best = status  # type: ignore[assignment]
    return best


def aggregate(results: Sequence[CheckResult]) -> Status:
    return worst([r.status for r in results])


def upstream_verdict(state: str, last_message_age_s: float | None, stale_after_s: float) -> tuple[Status, str]:
    """The upstream link: degraded (warn) whenever it is not live; never fail (the service still serves)."""
    if state == "connected":
        if last_message_age_s is not None and last_message_age_s > stale_after_s:
            return "warn", f"connected but silent for {last_message_age_s:.0f}s"
        return "pass", "connected"
    if state == "stopped":
        return "warn", "upstream manager is stopped"
    words = {"connecting": "connecting", "reconnecting": "reconnecting", "circuit_open": "circuit breaker open"}
    return "warn", words.get(state, state)


def breaker_verdict(state: str) -> tuple[Status, str]:
    if state in {"closed", "disabled"}:
        return "pass", state
    if state == "half_open":
        return "warn", "half-open: probing recovery"
    return "warn", "open: calls are rejected until the recovery timeout"


def loop_lag_verdict(lag_s: float) -> tuple[Status, str]:
    if lag_s >= LOOP_LAG_FAIL_S:
        return "fail", f"event loop is {lag_s * 1000:.0f} ms late"
    if lag_s >= LOOP_LAG_WARN_S:
        return "warn", f"event loop is {lag_s * 1000:.0f} ms late"
    return "pass", "responsive"


def relay_verdict(enabled: bool, active: int, maximum: int) -> tuple[Status, str]:
    if not enabled:
        return "pass", "relay disabled by WEBSOCKET_ENABLED=false"
    if active >= maximum:
        return "warn", f"relay full: {active}/{maximum} connections"
    if active >= 0.9 * maximum:
        return "warn", f"relay nearly full: {active}/{maximum} connections"
    return "pass", f"{active}/{maximum} connections"


Check = Callable[[], Sequence[CheckResult]]


# ---------------------------------------------------------------------------- the Runtime's checks
# Each reads one component's snapshot (the Protocol of what it reads) and applies a verdict.


class Snapshotting(Protocol):
    """A component that reports its counters as a JSON-able mapping (relay, hub, store, alerts)."""

    def snapshot(self) -> Mapping[str, Any]: ...


def upstream_check(upstream: Callable[[], UpstreamSnapshot | None], clock: Clock, silent_after_s: float) -> Check:
    """The link's state, how long since its last frame, and the last pong latency."""

    def check() -> list[CheckResult]:
        snap = upstream()
        if snap is None:
            return [CheckResult("upstream", "datastore", "state", "warn", "stopped", None, "not started")]
        age = None if snap.last_message_at is None else max(0.0, clock.wall() - snap.last_message_at)
        status, output = upstream_verdict(snap.state.value, age, silent_after_s)
        results = [
            CheckResult("upstream", "datastore", "state", status, snap.state.value, None, output),
            CheckResult(
                "upstream",
                "datastore",
                "lastMessageAge",
                status,
                None if age is None else round(age, 3),
                "s",
                output if status != "pass" else "",
            ),
        ]
        if snap.last_pong_latency_s is not None:
            results.append(
                CheckResult("upstream", "datastore", "pongLatency", "pass", round(snap.last_pong_latency_s, 4), "s")
            )
        return results

    return check


def relay_check(relay: Snapshotting, *, enabled: bool, max_connections: int) -> Check:
    def check() -> list[CheckResult]:
        active = int(relay.snapshot()["active"])
        status, output = relay_verdict(enabled, active, max_connections)
        return [CheckResult("relay", "component", "connections", status, active, None, output)]

    return check


def hub_check(hub: Snapshotting) -> Check:
    def check() -> list[CheckResult]:
        stats = hub.snapshot()
        return [
            CheckResult("hub", "component", "subscribers", "pass", stats["subscribers"]),
            CheckResult("hub", "component", "droppedEvents", "pass", stats["dropped_total"]),
        ]

    return check


def breakers_check(breakers: BreakerRegistry) -> Check:
    def check() -> list[CheckResult]:
        results = []
        for snap in breakers.snapshots():
            status, output = breaker_verdict(snap.state)
            results.append(
                CheckResult(f"circuitBreaker.{snap.name}", "component", "state", status, snap.state, None, output)
            )
        return results

    return check


def loop_lag_check(probe: LoopLagProbe) -> Check:
    def check() -> list[CheckResult]:
        status, output = loop_lag_verdict(probe.lag_s)
        return [CheckResult("eventLoop", "system", "lag", status, round(probe.lag_s, 4), "s", output)]

    return check


class LoopLagProbe:
    """Samples how late the event loop runs a timer. Started and stopped by the Runtime."""

    def __init__(self, clock: Clock, interval_s: float = LOOP_LAG_SAMPLE_S) -> None:
        self._clock = clock
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self.lag_s = 0.0
        self.max_lag_s = 0.0

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="loop-lag-probe")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            expected = self._clock.monotonic() + self._interval_s
            await self._clock.sleep(self._interval_s)
            self.lag_s = max(0.0, self._clock.monotonic() - expected)
            self.max_lag_s = max(self.max_lag_s, self.lag_s)


@dataclass(frozen=True, slots=True)
class HealthReport:
    status: Status
    results: tuple[CheckResult, ...]
    durations_s: Mapping[str, float]
    at_wall: float

    def summary(self) -> dict[str, Any]:
        """The cheap ``/health`` body."""
        by_component: dict[str, str] = {}
        for r in self.results:
            by_component[r.component_id] = worst([by_component.get(r.component_id, "pass"), r.status])
        body: dict[str, Any] = {"status": self.status, "time": iso_utc(self.at_wall), "components": by_component}
        if self.status != "pass":
            # Why, in a few words (e.g. "cluster:mode: cluster degraded: ...").
            body["output"] = "; ".join(f"{r.key}: {r.output}" for r in self.results if r.status != "pass" and r.output)[
                :300
            ]
        return body

    def detailed(self, *, version: str, release_id: str, service_id: str, description: str) -> dict[str, Any]:
        """The ``/health/detailed`` body in health+json format."""
        checks: dict[str, list[dict[str, Any]]] = {}
        for r in self.results:
            checks.setdefault(r.key, []).append(r.to_json(self.at_wall))
        notes = [f"{r.key}: {r.output}" for r in self.results if r.status != "pass" and r.output]
        body: dict[str, Any] = {
            "status": self.status,
            "version": version,
            "releaseId": release_id,
            "serviceId": service_id,
            "description": description,
            "checks": checks,
        }
        if notes:
            body["notes"] = notes
        if self.status != "pass":
            body["output"] = "; ".join(notes)[:500]
        return body


class HealthService:
    """Runs named checks concurrently, each under its own timeout."""

    def __init__(
        self,
        checks: Mapping[str, Check],
        clock: Clock,
        *,
        timeout_s: float = CHECK_TIMEOUT_S,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self._checks = dict(checks)
        self._clock = clock
        self._timeout_s = timeout_s
        self._observe = observe

    async def run(self) -> HealthReport:
        names = list(self._checks)
        outcomes = await asyncio.gather(*(self._run_one(n) for n in names))
        results: list[CheckResult] = []
        durations: dict[str, float] = {}
        for name, (found, took) in zip(names, outcomes, strict=True):
            results.extend(found)
            durations[name] = took
        return HealthReport(aggregate(results), tuple(results), durations, self._clock.wall())

    async def _run_one(self, name: str) -> tuple[Sequence[CheckResult], float]:
        started = self._clock.monotonic()
        check = self._checks[name]
        try:
            async with self._clock.timeout(self._timeout_s):
                found = await _call(check)
        except TimeoutError:
            found = [_failed(name, f"check timed out after {self._timeout_s:.1f}s")]
        except Exception as exc:
            found = [_failed(name, f"check raised {type(exc).__name__}")]
        took = self._clock.monotonic() - started
        if self._observe is not None:
            self._observe(name, took)
        return found, took


async def _call(check: Check | Callable[[], Awaitable[Sequence[CheckResult]]]) -> Sequence[CheckResult]:
    result = check()
    if asyncio.iscoroutine(result):
        return await result  # type: ignore[no-any-return]
    return result  # type: ignore[return-value]


def _failed(name: str, output: str) -> CheckResult:
    return CheckResult(name, "component", "status", "fail", None, None, output)
