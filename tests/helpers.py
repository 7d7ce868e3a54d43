"""Helpers shared by the test suites (one copy of each).

- ``until``: integration tests (real sockets, real time). Poll a condition every 20 ms,
  bounded in real time; the bound only stops a broken test from hanging the run.
  ``blocking_until`` is the same for code with no event loop (process harnesses), and
  may poll less often where each look costs (reading a log, asking haproxy).
- ``turns_until``: unit tests (FakeClock, no real time). Let the event loop run until a
  condition holds, bounded in loop turns. Wait on the condition the test is about (a
  listener was told, a task is parked on the FakeClock: ``clock.sleepers``,
  ``clock.deadlines``), never on a count of ``sleep(0)`` turns. ``loop_idle``: let the
  loop run until every task waits (after moving a FakeClock, say).
- ``callbacks_ran``: wait until what is already scheduled with ``call_soon`` has run
  (breaker listener deliveries), also before asserting that nothing was delivered.
- ``closed_code``: a WebSocket client's view of how the server closed it.
- ``assert_contiguous``: a tick stream has no gap and no repeat.
- ``run_to_end``: one subprocess run, bounded, killed and reaped on the way out.
- ``iso``: a wall time as the API writes it.
- ``upstream_snapshot``, ``counting_keys``: the inputs of the incident and history logic.
- ``statuspage_observation``: the Statuspage mapping's input, healthy unless changed.
- ``runtime_counting_health_runs``: a Runtime on a FakeClock that counts its health runs;
  ``open_feed_breaker`` opens its market feed's breaker.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from backend_core import statuspage
from backend_core.clock import FakeClock, iso_utc
from backend_core.events import ErrorInfo, LinkState, UpstreamSnapshot

if TYPE_CHECKING:
    from backend_core.health import HealthReport
    from backend_core.runtime import Runtime

WAIT_S = 15.0
POLL_S = 0.02
MAX_TURNS = 10_000


def iso(wall: float) -> str:
    """``wall`` as the API writes times (``iso_utc``), never None."""
    text = iso_utc(wall)
    assert text is not None
    return text


async def until(predicate: Callable[[], object], timeout_s: float = WAIT_S, *, what: str = "the condition") -> None:
    """Wait (real time) until ``predicate()`` holds; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(POLL_S)


def blocking_until(
    predicate: Callable[[], object], timeout_s: float = WAIT_S, *, what: str = "the condition", poll_s: float = POLL_S
) -> None:
    """:func:`until` for a thread with no event loop: it blocks while it waits."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll_s)


async def turns_until(predicate: Callable[[], object], what: str = "the condition", turns: int = MAX_TURNS) -> None:
    """Let the loop run (no time passes) until ``predicate()`` holds; fail after ``turns`` turns."""
    for _ in range(turns):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"{what} never came true")


async def loop_idle(turns: int = MAX_TURNS) -> None:
    """Let the loop run until nothing but the caller is ready to run: every other task waits
    on a future (the FakeClock, a queue, an event). For tests with no real I/O; it reads
    CPython's ready queue (``_ready``), which asyncio has no public way to ask about."""
    loop = asyncio.get_running_loop()
    for _ in range(turns):
        await asyncio.sleep(0)
        if not loop._ready:  # type: ignore[attr-defined]
            return
    raise AssertionError(f"the event loop was still busy after {turns} turns")


async def closed_code(ws: ClientConnection, timeout_s: float = WAIT_S) -> int | None:
    """Read until the WebSocket closes; the close code the client saw (1006: no close frame)."""
    async with asyncio.timeout(timeout_s):
        try:
            while True:
                await ws.recv()
        except ConnectionClosed:
            pass
        await ws.wait_closed()
    return ws.close_code


def assert_contiguous(epochs: Sequence[int]) -> None:
    """``epochs`` (a stream's ticks, in order) run one by one: no gap, no repeat."""
    assert epochs, "no ticks"
    assert list(epochs) == list(range(epochs[0], epochs[-1] + 1)), "a gap or a duplicate"


async def callbacks_ran() -> None:
    """Wait until every callback already scheduled with ``call_soon`` has run (listener
    deliveries, say): the loop runs them in order, so a marker scheduled now runs after them."""
    loop = asyncio.get_running_loop()
    marker: asyncio.Future[None] = loop.create_future()
    loop.call_soon(marker.set_result, None)
    await marker


async def run_to_end(
    command: Sequence[str], timeout_s: float, *, merge_stderr: bool = False, **options: Any
) -> tuple[int, bytes, bytes]:
    """Run ``command`` to its end within ``timeout_s``: (exit code, stdout, stderr).

    With ``merge_stderr`` stderr goes into stdout (and b"" is returned for it). A command
    that runs over, or a test that is cancelled, kills the process and reaps it.
    """
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
        **options,
    )
    try:
        async with asyncio.timeout(timeout_s):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, stdout, stderr or b""


def upstream_snapshot(
    state: LinkState,
    *,
    since: float,
    error: str | None = None,
    attempt: int = 0,
    in_progress: bool = False,
    next_at: float | None = None,
    planned: bool = False,
    site_status: str | None = None,
) -> UpstreamSnapshot:
    """An upstream status as the manager publishes it, for tests of what consumes it."""
    return UpstreamSnapshot(
        state=state,
        since=since,
        url="wss://example/websockets/v3",
        simulated=True,
        attempt=attempt,
        max_attempts=3,
        retry_in_progress=in_progress,
        next_attempt_at=next_at,
        planned_reconnect=planned,
        site_status=site_status,
        last_error=ErrorInfo(error, f"{error} happened", since) if error else None,
    )


def counting_keys() -> Callable[[], str]:
    """Incident keys k1, k2, ... in order."""
    counter = itertools.count(1)
    return lambda: f"k{next(counter)}"


HEALTHY_OBSERVATION = statuspage.Observation(
    upstream_state="connected",
    upstream_check="pass",
    upstream_error=False,
    site_updating=False,
    planned_drop=False,
    relay_enabled=True,
    relay_active=3,
    relay_max=100,
    api_breaker_states=("closed", "closed"),
    loop_lag_check="pass",
    database_check="pass",
    database_reachable=True,
    database_unusable=False,
)


def statuspage_observation(**changes: Any) -> statuspage.Observation:
    """What the Statuspage mapping observes: all healthy but for ``changes``."""
    return dataclasses.replace(HEALTHY_OBSERVATION, **changes)


def runtime_counting_health_runs(tmp_path: Path) -> tuple[Runtime, FakeClock, list[int]]:
    """A Runtime on a FakeClock (nothing started, its history in SQLite under ``tmp_path``)
    whose health runs are counted: one entry in the list per run."""
    # The whole app: imported only by the tests that use it.
    from backend_core.config import load_settings
    from backend_core.runtime import Runtime

    clock = FakeClock()
    runtime = Runtime(load_settings({"DB_URL": f"sqlite:///{tmp_path}/status.db"}), clock=clock)
    runs: list[int] = []
    real_run = runtime.health.run

    async def counting_run() -> HealthReport:
        runs.append(1)  # concurrent callers arrive while this run is in flight: none runs its own
        return await real_run()

    runtime.health.run = counting_run  # type: ignore[method-assign]
    return runtime, clock, runs


async def open_feed_breaker(runtime: Runtime) -> None:
    """Open ``runtime``'s market feed breaker; its listeners are told on the loop's next
    turns: wait (bounded) until the transition has moved the status version."""
    version = runtime.status_version
    breaker = runtime.breakers.websocket
    for _ in range(breaker.config.failure_threshold):
        breaker.record_failure(breaker.acquire())
    await turns_until(lambda: runtime.status_version != version, "the breaker transition's status change")
