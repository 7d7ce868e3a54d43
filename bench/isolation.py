"""Isolation: does a failing upstream slow or break the HTTP routes? (It must not.)

The app's API (Runtime + create_api) is served by uvicorn in a child process on
127.0.0.1, against the simulator in a process of its own; this process drives a bounded,
open-loop load on ``/api/v1/ticks/latest`` and ``/health`` through four phases, using
the simulator's control interface for faults:

* ``healthy``:  the upstream is live;
* ``flapping``: the link is dropped every 0.3 s (by a small process of its own, so that
                sending the drops costs the load generator nothing); the manager backs
                off after short sessions, so a round sees a reconnect or none;
* ``stalled``:  the feed is paused and pings go unanswered (a dead link being detected);
* ``down``:     new connections are refused and the link dropped, so the "websocket"
                breaker opens; its rounds start once it is open.

``<phase>_upstream_handshakes`` counts the API's connection attempts the simulator saw
during a phase's rounds.

The load is open-loop at half the healthy server's capacity, measured first with a
closed loop on the same routes (``capacity_per_s``, ``rate_per_s`` in the result).

On a shared 2-core machine one round's p99 can swing 2x between rounds of the same phase
(other work's bursts, drift over minutes): more than the effect looked for. So:

* Healthy and failing rounds are interleaved, each a few seconds (``round_s``): ``cycles``
  cycles, each of the three failing phases in a shuffled order (seeded: ``seed``), each
  preceded by a healthy round, and a healthy round at the end (``schedule``). Every
  failing round lies between two healthy rounds measured seconds before and after it.
  After a failing round the faults are cleared and the link brought back (a manual Retry
  while it is not, as a user would press; the breaker ``down`` opened would otherwise wait
  out its 60 s), then left alone for a second; the next healthy round measures a link
  that is up, not its reconnect.
* Every round starts with a lead-in of the same load whose latencies are not kept (its
  5xx are): the first half second after an idle gap is slower in every phase alike.
* The load generator and the API server run at raised priority (nice -10) where that is
  allowed (``priority_raised``), so other work on the machine comes second; the simulator
  and the flapper keep ordinary priority, as a remote upstream would not share their CPU.
  The CPU that other work still took, and what the hypervisor stole, are reported per
  phase (``<phase>_other_cpu_cores``, ``<phase>_steal_cpu_cores``) to tell noise from
  effect.

Statistic: each failing round's p99 over the p99 of the pooled samples of the two healthy
rounds either side of it (``<phase>_p99_ratio_rounds``); a phase's ratio is the median of
its rounds' ratios (``<phase>_p99_ratio``). A round's p99 rests on its ten or so slowest
requests, which come in clusters (a millisecond's hiccup delays several requests in a
row): the healthy rounds' p99s vary by 7 to 14% within a run, and now and then one round,
of any phase, is 30-40% up. That one round moves one ratio, not the median; pooling all of
a phase's samples instead let it through (two misses in three runs). Slow drift cancels
within a pair; a route that a failing upstream really slows is slower in every round of
that phase, so the median moves with it. Per phase the result also holds requests, 5xx,
p50 and p99 of all its rounds pooled, and each round's p99 (``<phase>_p99_ms_rounds``).
Goal: every failing phase's ratio within 1.1 (``p99_ratio_failing_to_healthy`` is the
worst one, ``worst_failing_phase`` says which), and zero 5xx on these non-WebSocket
routes in every phase.

Run: ``python bench/isolation.py [--cycles 6] [--round-seconds 3] [--concurrency 32]
[--seed 1] [--quick]``. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.app_process import free_port  # noqa: E402
from tests.measure import CLK_TCK, cpu_seconds, percentile  # noqa: E402

ROUTES = ("/api/v1/ticks/latest", "/health")
FAILING = ("flapping", "stalled", "down")
PHASES = ("healthy", *FAILING)
ROUND_TIMEOUT_S = 120.0
GOAL_RATIO = 1.1
# Each round begins with this much load whose latencies are not kept (see the docstring).
LEAD_IN_S = 0.5
# Requests are started at this share of the healthy server's measured capacity (closed
# loop, same routes, same connections): a steady load well below saturation on whatever
# machine runs the bench, so a slowdown caused by the failing upstream shows instead of
# the load's own queueing (a fixed 400/s saturated this 2-core machine: p50 120 ms).
CAPACITY_SHARE = 0.5
# ... and never above this rate.
MAX_RATE_PER_S = 400.0
# After a failing round the link is reconnected, then left alone this long before the next
# (healthy) round, which is to measure a link that is up, not its resubscribe and backfill.
SETTLE_S = 1.0
# While the link is not yet in the state a round wants, a manual Retry is asked this often.
RETRY_EVERY_S = 1.5
# ``flapping`` drops the link this often.
FLAP_EVERY_S = 0.3
# The load generator and the API server run at this niceness where allowed (root): on a
# machine shared with other work, the scheduler then gives them the CPU first, and the
# other work's bursts stop showing up as this bench's latency. The simulator and the
# flapper keep ordinary priority: like a remote upstream they must not take the CPU from
# the two processes being measured (a drop's work in them showed up as the routes' p99).
NICENESS = -10


def set_priority(niceness: int, pid: int = 0) -> bool:
    """Run process ``pid`` (0: this one, and so the children it starts) at ``niceness``;
    False if not allowed."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, niceness)
    except (OSError, AttributeError):
        return False
    return True


class CpuMeter:
    """CPU time the machine spent outside this bench's processes (Linux /proc; zeros
    elsewhere): other work competing for the cores, and steal by the hypervisor."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    def sample(self) -> tuple[float, float, float, float]:
        """(wall s, machine busy s, steal s, this bench's processes' s)."""
        busy = steal = ours = 0.0
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
            # user nice system idle iowait irq softirq steal ...
            busy = sum(fields[i] for i in (0, 1, 2, 5, 6)) / CLK_TCK
            steal = fields[7] / CLK_TCK
            ours = sum(map(cpu_seconds, self.pids))
        return time.perf_counter(), busy, steal, ours


def serve(port: int) -> None:
    """Child process: the API with its Runtime, under uvicorn, until SIGTERM."""
    import uvicorn

    from backend_core.api import create_api
    from backend_core.config import load_settings
    from backend_core.runtime import Runtime, freeze_startup_heap

    runtime = Runtime(load_settings())
    api = create_api(runtime)

    @contextlib.asynccontextmanager
    async def lifespan(app: object):  # type: ignore[no-untyped-def]
        async with runtime.lifespan():
            freeze_startup_heap()  # as the app's own lifespan does
            yield

    api.router.lifespan_context = lifespan
    uvicorn.run(api, host="127.0.0.1", port=port, log_level="error", access_log=False)


def flap(sim: str) -> None:
    """Child process: while switched on (a line "1" on stdin; "0" switches off), drop the
    simulator's links every FLAP_EVERY_S; ends when stdin closes. Its own process, so
    that sending the drops costs the load generator's event loop nothing."""
    import threading
    import urllib.request

    on = threading.Event()

    def switch() -> None:
        for line in sys.stdin:
            if line.strip() == "1":
                on.set()
            else:
                on.clear()
        os._exit(0)

    threading.Thread(target=switch, daemon=True).start()
    drop = urllib.request.Request(
        f"{sim}/control/drop_all", data=b'{"code": null}', headers={"content-type": "application/json"}
    )
    while True:
        on.wait()
        try:
            with urllib.request.urlopen(drop, timeout=5) as response:
                response.read()
        except OSError as exc:  # a missed drop is a shorter flap, not the end of flapping
            print(f"flapper: drop_all failed: {exc}", file=sys.stderr)
        time.sleep(FLAP_EVERY_S)


def schedule(cycles: int, seed: int) -> list[str]:
    """healthy, failing, healthy, failing, ..., healthy: each cycle holds every failing
    phase once, in a shuffled order, so no phase always follows the same one."""
    rng = random.Random(seed)
    order: list[str] = []
    for _ in range(cycles):
        for name in rng.sample(FAILING, len(FAILING)):
            order += ["healthy", name]
    return [*order, "healthy"]


@dataclass
class Round:
    phase: str
    latencies_s: list[float] = field(default_factory=list)
    requests: int = 0  # answered, lead-in included
    errors_5xx: int = 0
    failures: int = 0
    # Cores' worth of CPU used outside the bench's processes during the round, and stolen.
    other_cpu: float = 0.0
    steal_cpu: float = 0.0
    handshakes: int = 0  # the API's connection attempts during the round

    @property
    def p99_ms(self) -> float:
        return percentile(self.latencies_s, 0.99) * 1000


async def capacity(client: httpx.AsyncClient, requests: int, concurrency: int) -> float:
    """Requests per second the healthy server answers with ``concurrency`` clients
    sending back to back (closed loop): what the open-loop rate is a share of."""
    sent = 0

    async def worker() -> None:
        nonlocal sent
        while sent < requests:
            sent += 1
            await client.get(ROUTES[sent % len(ROUTES)])

    started = time.perf_counter()
    async with asyncio.timeout(ROUND_TIMEOUT_S):
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return sent / (time.perf_counter() - started)


async def load(
    client: httpx.AsyncClient, result: Round, requests: int, concurrency: int, rate: float, lead_in: int = 0
) -> None:
    """Open-loop load: requests start at a fixed ``rate`` per second, each on one of
    ``concurrency`` connections, whatever the server's speed. Latency is then what a
    client sees at that load, not the queue a saturating closed loop would build.

    The first ``lead_in`` requests count (5xx, failures) but their latencies are not kept.
    This process's own garbage collector is off for the round (collected between rounds):
    its pauses would be billed to whichever round they fell in."""
    slots = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with slots:
            started = time.perf_counter()
            try:
                response = await client.get(ROUTES[i % len(ROUTES)])
            except httpx.HTTPError:
                result.failures += 1
                return
            if i >= lead_in:
                result.latencies_s.append(time.perf_counter() - started)
            result.requests += 1
            if response.status_code >= 500:
                result.errors_5xx += 1

    gc.disable()
    try:
        async with asyncio.timeout(ROUND_TIMEOUT_S):
            tasks = []
            start = time.perf_counter()
            for i in range(requests):
                delay = start + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(i)))
            await asyncio.gather(*tasks)
    finally:
        gc.enable()
        gc.collect()


@dataclass
class Upstream:
    """Fault commands to the simulator and the state of the link as the API reports it,
    through a client made once: building an httpx client (its TLS context) costs
    milliseconds of this process's event loop, which would show up as latency of the load
    it is measuring. No command is sent while a round's load runs: ``flapping``'s drops
    come from the ``flapper`` process (``flap``), switched on and off through its stdin."""

    base: str
    sim: str
    flapper: subprocess.Popen[bytes]
    client: httpx.AsyncClient = field(default_factory=lambda: httpx.AsyncClient(timeout=5))

    def flapping(self, on: bool) -> None:
        assert self.flapper.stdin is not None
        self.flapper.stdin.write(b"1\n" if on else b"0\n")
        self.flapper.stdin.flush()

    async def control(self, action: str, **body: object) -> None:
        (await self.client.post(f"{self.sim}/control/{action}", json=body)).raise_for_status()

    async def handshakes(self) -> int:
        """WebSocket handshakes the simulator has seen: how often the API tried to connect."""
        stats = (await self.client.get(f"{self.sim}/control/stats")).json()["result"]
        return int(stats["handshake_attempts"])

    async def state(self) -> str:
        return str((await self.client.get(f"{self.base}/api/v1/status")).json()["upstream"]["state"])

    async def wait_state(self, wanted: str, timeout: float = 60) -> None:
        """Until the link is in state ``wanted``, pressing Retry (as a user would) while
        it is not: the manager would otherwise sit out its backoff (up to 30 s after the
        short sessions of ``flapping``) or the open breaker's 60 s recovery timeout."""
        asked = 0.0
        async with asyncio.timeout(timeout):
            while await self.state() != wanted:
                if time.perf_counter() - asked > RETRY_EVERY_S:
                    await self.client.post(f"{self.base}/api/v1/retry")
                    asked = time.perf_counter()
                await asyncio.sleep(0.1)

    @contextlib.asynccontextmanager
    async def fault(self, phase: str) -> AsyncIterator[None]:
        """The upstream as ``phase`` wants it for the duration of the block."""
        if phase == "healthy":
            yield
            return
        if phase == "flapping":
            self.flapping(True)
        elif phase == "stalled":
            await self.control("pause_feed", enabled=True)
            await self.control("ignore_pings", enabled=True)
        elif phase == "down":
            await self.control("refuse_connections", seconds=600)
            await self.control("drop_all", code=None)
            await self.wait_state("circuit_open")
        try:
            yield
        finally:
            if phase == "flapping":
                self.flapping(False)
                await asyncio.sleep(FLAP_EVERY_S)  # its last drop, if one was under way, is done
            await self.control("reset")
            await self.wait_state("connected")
            await asyncio.sleep(SETTLE_S)


def pooled_p99_ms(rounds: list[Round], phase: str) -> float:
    return percentile([latency for r in rounds if r.phase == phase for latency in r.latencies_s], 0.99) * 1000


def summary(rounds: list[Round], phase: str) -> dict[str, object]:
    mine = [r for r in rounds if r.phase == phase]
    pooled = [latency for r in mine for latency in r.latencies_s]
    return {
        "requests": sum(r.requests + r.failures for r in mine),
        "errors_5xx": sum(r.errors_5xx for r in mine),
        "failures": sum(r.failures for r in mine),
        "p50_ms": round(statistics.median(pooled) * 1000, 3),
        "p99_ms": round(pooled_p99_ms(rounds, phase), 3),
        "p99_ms_rounds": [round(r.p99_ms, 2) for r in mine],
        "upstream_handshakes": sum(r.handshakes for r in mine),
        "other_cpu_cores": round(statistics.mean(r.other_cpu for r in mine), 2),
        "steal_cpu_cores": round(statistics.mean(r.steal_cpu for r in mine), 2),
    }


def paired_ratios(rounds: list[Round], phase: str) -> list[float]:
    """Each ``phase`` round's p99 over the p99 of the two healthy rounds either side, pooled."""
    ratios = []
    for i, r in enumerate(rounds):
        if r.phase == phase:
            before, after = rounds[i - 1], rounds[i + 1]
            assert before.phase == after.phase == "healthy", "every failing round lies between healthy rounds"
            ratios.append(r.p99_ms / (percentile(before.latencies_s + after.latencies_s, 0.99) * 1000))
    return ratios


async def run(cycles: int, round_s: float, concurrency: int, seed: int) -> dict[str, object]:
    prioritized = set_priority(NICENESS)
    port, sim_port, control_port = free_port(), free_port(), free_port()
    # The simulator runs in its own process, as the real upstream would be elsewhere: its
    # handshakes and drops must not be billed to the API process under test.
    simulator = subprocess.Popen(  # noqa: ASYNC220 - waited for (bounded) in the finally block
        [
            sys.executable,
            "-m",
            "backend_core.deriv.sim",
            "--port",
            str(sim_port),
            "--control-port",
            str(control_port),
            "--time-scale",
            "10",
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    env = {
        **os.environ,
        "DERIV_WS_URL": f"ws://127.0.0.1:{sim_port}/websockets/v3",
        "DERIV_PING_INTERVAL": "1",
        "WEBSOCKET_CONNECTION_TIMEOUT": "1",
        "WEBSOCKET_CB_RECOVERY_TIMEOUT": "60",
        "LOG_LEVEL": "ERROR",
        # The load comes from one client: without this the per-client limit would answer
        # nearly all of it with 429, and the bench would measure the limiter.
        "API_RATE_LIMIT_PER_S": "100000",
        "API_RATE_LIMIT_BURST": "100000",
        "DB_URL": f"sqlite:///{tempfile.mkdtemp(prefix='isolation-bench-')}/status.db",
    }
    # Popen returns at once; the child is waited for (bounded) in the finally block.
    child = subprocess.Popen([sys.executable, __file__, "--serve", str(port)], env=env, cwd=ROOT)  # noqa: ASYNC220
    sim = f"http://127.0.0.1:{control_port}"
    flapper = subprocess.Popen([sys.executable, __file__, "--flap", sim], stdin=subprocess.PIPE, cwd=ROOT)  # noqa: ASYNC220
    for process in (simulator, flapper):
        set_priority(0, process.pid)
    meter = CpuMeter([os.getpid(), child.pid, simulator.pid, flapper.pid])
    base = f"http://127.0.0.1:{port}"
    upstream = Upstream(base, sim, flapper)
    order = schedule(cycles, seed)
    rounds: list[Round] = []
    started = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    try:
        async with asyncio.timeout(60):
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if await upstream.state() == "connected":
                        break
                await asyncio.sleep(0.2)
        # One load client for the whole run, its connections opened by the warm-up: a round
        # never pays for connecting.
        async with httpx.AsyncClient(base_url=base, timeout=10.0, limits=limits) as client:
            await load(client, Round("warm-up"), 300, concurrency, MAX_RATE_PER_S / 4)
            capacity_per_s = await capacity(client, 1000, concurrency)
            rate = min(MAX_RATE_PER_S, CAPACITY_SHARE * capacity_per_s)
            lead_in = round(rate * LEAD_IN_S)
            round_requests = lead_in + max(100, round(rate * round_s))
            gc.collect()
            gc.freeze()  # the setup's objects: never scanned again by the collections between rounds
            for phase in order:
                rounds.append(Round(phase))
                async with upstream.fault(phase):
                    handshakes = await upstream.handshakes()
                    before = meter.sample()
                    await load(client, rounds[-1], round_requests, concurrency, rate, lead_in)
                    after = meter.sample()
                    rounds[-1].handshakes = await upstream.handshakes() - handshakes
                wall = after[0] - before[0]
                rounds[-1].other_cpu = max(0.0, (after[1] - before[1]) - (after[3] - before[3])) / wall
                rounds[-1].steal_cpu = (after[2] - before[2]) / wall
    finally:
        await upstream.client.aclose()
        for process in (child, simulator, flapper):
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()

    results = {phase: summary(rounds, phase) for phase in PHASES}
    ratios = {phase: paired_ratios(rounds, phase) for phase in FAILING}
    phase_ratio = {phase: statistics.median(ratios[phase]) for phase in FAILING}
    worst = max(FAILING, key=lambda phase: phase_ratio[phase])
    return {
        "bench": "isolation",
        "requests_per_round": round_requests,
        "lead_in_requests": lead_in,
        "round_s": round_s,
        "cycles": cycles,
        "seed": seed,
        "schedule": [phase[0] for phase in order],
        "concurrency": concurrency,
        "priority_raised": prioritized,
        "capacity_per_s": round(capacity_per_s, 1),
        "rate_per_s": round(rate, 1),
        "duration_s": round(time.perf_counter() - started, 1),
        **{f"{phase}_{key}": value for phase, r in results.items() for key, value in r.items()},
        **{f"{phase}_p99_ratio_rounds": [round(x, 3) for x in ratios[phase]] for phase in FAILING},
        **{f"{phase}_p99_ratio": round(phase_ratio[phase], 3) for phase in FAILING},
        "worst_failing_phase": worst,
        "p99_ratio_failing_to_healthy": round(phase_ratio[worst], 3),
        "errors_5xx_total": sum(int(r["errors_5xx"]) for r in results.values()),  # type: ignore[call-overload]
        "goal_p99_within_1_1x": phase_ratio[worst] <= GOAL_RATIO,
        "goal_zero_5xx": all(r["errors_5xx"] == 0 for r in results.values()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--flap", help=argparse.SUPPRESS)
    parser.add_argument("--cycles", type=int, default=6, help="rounds of each failing phase")
    parser.add_argument("--round-seconds", type=float, default=3.0, help="measured seconds of load a round")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seed", type=int, default=1, help="for the order of the failing phases in each cycle")
    parser.add_argument("--quick", action="store_true", help="2 cycles of 1.5 s rounds")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve)
        return
    if args.flap:
        flap(args.flap)
        return
    cycles, round_s = (2, 1.5) if args.quick else (args.cycles, args.round_seconds)
    result = asyncio.run(run(cycles, round_s, args.concurrency, args.seed))
    print(f"{'phase':<10} {'requests':>9} {'5xx':>5} {'p50 ms':>8} {'p99 ms':>8} {'ratio':>6}  round p99s ms")
    for phase in PHASES:
        ratio = result.get(f"{phase}_p99_ratio", "")
        print(
            f"{phase:<10} {result[f'{phase}_requests']:>9} {result[f'{phase}_errors_5xx']:>5} "
            f"{result[f'{phase}_p50_ms']:>8} {result[f'{phase}_p99_ms']:>8} {ratio:>6}  "
            f"{result[f'{phase}_p99_ms_rounds']}"
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
