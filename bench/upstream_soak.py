"""Upstream soak: the simulator drops or stalls the link at random; is every tick delivered once?

The manager runs against the embedded simulator over real sockets on 127.0.0.1, with
simulated time accelerated so many outages fit in a bounded run. At random intervals one
fault is injected:

* ``drop``:       abrupt close without a close frame (1006);
* ``close``:      close with code 1011;
* ``outage``:     refuse new connections (HTTP 503) for a while, then drop the link;
* ``long_outage``: the same, and the market jumps 6,000 to 15,000 ticks ahead meanwhile
  (more than one ``ticks_history`` reply: the backfill pages it in);
* ``blackhole``:  accept TCP but never finish handshakes for a while, then drop;
* ``stall``:      stop answering pings (a half-open link): the manager must find it dead.

Reported:
* ticks expected (the simulator's own history between each symbol's first and last
  delivered tick) vs delivered, gaps and duplicates;
* recovery: time from the upstream being reachable again to the first live tick, median
  and p99, and whether each is within the backoff step then pending plus 1 s;
* dead-link detection time of a stall vs the bound ``DERIV_PING_INTERVAL`` + deadline.

Run: ``python bench/upstream_soak.py [--seconds 60] [--seed 1] [--quick]``. Ends with one
JSON line. Bounded: the run stops after ``--seconds`` of faults plus a settle period.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend_core.breakers.registry import BreakerRegistry
from backend_core.config import load_settings
from backend_core.deriv.manager import DerivManager
from backend_core.deriv.sim.server import DerivSimulator
from backend_core.events import LinkState, Tick, UpstreamSnapshot
from tests.measure import percentile

SYMBOLS = ("1HZ100V", "1HZ50V", "R_50", "R_100")
TIME_SCALE = 10.0
PING_INTERVAL_S = 1.0
PONG_DEADLINE_S = 1.0
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 2.0
FAULTS = ["drop", "close", "outage", "long_outage", "blackhole", "stall"]


TickRecord = tuple[str, int, bool]  # symbol, epoch, backfill


@dataclass
class Sink:
    ticks: list[TickRecord] = field(default_factory=list)
    live_after: float = 0.0
    first_live_at: float | None = None
    states: list[tuple[float, UpstreamSnapshot]] = field(default_factory=list)

    def publish_tick(self, tick: Tick) -> None:
        now = time.monotonic()
        self.ticks.append((tick.symbol, tick.epoch, tick.backfill))
        if not tick.backfill and self.first_live_at is None and now >= self.live_after:
            self.first_live_at = now

    def publish_status(self, snapshot: UpstreamSnapshot) -> None:
        self.states.append((time.monotonic(), snapshot))


async def wait_until(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.005)
    return False


async def run(seconds: float, seed: int) -> dict[str, object]:
    rng = random.Random(seed)
    settings = load_settings(
        {
            "DERIV_SYMBOLS": ",".join(SYMBOLS),
            "DERIV_PING_INTERVAL": str(PING_INTERVAL_S),
            "WEBSOCKET_CONNECTION_TIMEOUT": str(PONG_DEADLINE_S),
            "WEBSOCKET_MAX_RETRY_ATTEMPTS": "3",
            "WEBSOCKET_CB_FAILURE_THRESHOLD": "5",
            "WEBSOCKET_CB_RECOVERY_TIMEOUT": "1",
        }
    )
    sim = DerivSimulator(time_scale=TIME_SCALE, seed=seed, history_prefill_s=600)
    await sim.start()
    sink = Sink()
    breakers = BreakerRegistry.from_settings(settings)
    manager = DerivManager(
        settings,
        sink,
        breakers.websocket,
        url=sim.url,
        rng=random.Random(seed),
        backoff_base_s=BACKOFF_BASE_S,
        backoff_cap_s=BACKOFF_CAP_S,
        stable_session_s=1.0,
    )
    await manager.start()
    recoveries: list[float] = []
    recovery_margins: list[float] = []
    detections: list[float] = []
    faults: dict[str, int] = {}
    try:
        assert await wait_until(lambda: manager.snapshot().state == LinkState.CONNECTED, 10)
        await asyncio.sleep(1.0)
        end = time.monotonic() + seconds
        plan: list[str] = []
        while time.monotonic() < end:
            await asyncio.sleep(rng.uniform(1.0, 3.0))
            if not plan:  # every kind once per round, in a random order
                plan = rng.sample(FAULTS, len(FAULTS))
            kind = plan.pop()
            faults[kind] = faults.get(kind, 0) + 1
            reconnects = manager.snapshot().reconnect_count
            if kind == "drop":
                await sim.drop_all()
            elif kind == "close":
                await sim.drop_all(1011, "soak")
            elif kind in ("outage", "long_outage"):
                sim.refuse_connections(60)
                await sim.drop_all()
                if kind == "long_outage":
                    sim.advance(rng.randint(6_000, 15_000))
                await asyncio.sleep(rng.uniform(0.5, 3.0))
            elif kind == "blackhole":
                sim.blackhole_handshakes(True)
                await sim.drop_all()
                await asyncio.sleep(rng.uniform(0.5, 2.5))
            elif kind == "stall":
                started = time.monotonic()
                sim.ignore_pings(True)
                found = await wait_until(
                    lambda reconnects=reconnects: (
                        manager.snapshot().reconnect_count > reconnects
                        or (manager.snapshot().state != LinkState.CONNECTED)
                    ),
                    PING_INTERVAL_S + PONG_DEADLINE_S + 5,
                )
                detections.append(time.monotonic() - started if found else float("inf"))
            # The upstream is reachable again from here on.
            reachable_at = time.monotonic()
            snap = manager.snapshot()
            pending_wait = 0.0
            if snap.next_attempt_at is not None:
                pending_wait = max(0.0, snap.next_attempt_at - time.time())
            sink.first_live_at = None
            sink.live_after = reachable_at
            sim.refuse_connections(0)
            sim.blackhole_handshakes(False)
            sim.ignore_pings(False)
            ok = await wait_until(
                lambda reconnects=reconnects: (
                    manager.snapshot().reconnect_count > reconnects and sink.first_live_at is not None
                ),
                30,
            )
            if ok and sink.first_live_at is not None:
                took = sink.first_live_at - reachable_at
                recoveries.append(took)
                # Goal: within the backoff step pending when it became reachable, plus 1 s.
                recovery_margins.append(pending_wait + 1.0 - took)
        await asyncio.sleep(1.0)
    finally:
        stats = manager.stats()
        await manager.stop()
        await sim.stop()

    expected_total = delivered_total = gaps = duplicates = 0
    for symbol in SYMBOLS:
        epochs = [e for s, e, _ in sink.ticks if s == symbol]
        delivered_total += len(epochs)
        duplicates += len(epochs) - len(set(epochs))
        if not epochs:
            continue
        expected, _ = sim.market.history(symbol).window(min(epochs), max(epochs), 10_000_000)
        expected_total += len(expected)
        gaps += len(set(expected) - set(epochs))
    backfilled = sum(1 for _, _, b in sink.ticks if b)
    bound = PING_INTERVAL_S + PONG_DEADLINE_S
    return {
        "bench": "upstream_soak",
        "seconds": seconds,
        "faults": faults,
        "symbols": len(SYMBOLS),
        "time_scale": TIME_SCALE,
        "ticks_expected": expected_total,
        "ticks_delivered": delivered_total - duplicates,
        "ticks_backfilled": backfilled,
        "gaps": gaps,
        # Gaps the manager announced (gap_from): outages longer than the backfill can page
        # in. None of this soak's outages is; any announced gap here would be a false alarm.
        "announced_gaps": stats["backfill_gaps"],
        "backfill_pages": stats["backfill_pages"],
        "backfill_page_retries": stats["backfill_page_retries"],
        "ticks_paged": stats["ticks_paged"],
        "duplicates": duplicates,
        "recoveries": len(recoveries),
        "recovery_median_s": round(statistics.median(recoveries), 3) if recoveries else None,
        "recovery_p99_s": round(percentile(recoveries, 0.99), 3) if recoveries else None,
        "recovery_max_s": round(max(recoveries), 3) if recoveries else None,
        "recoveries_within_goal": sum(1 for m in recovery_margins if m >= 0),
        "dead_link_detection_median_s": round(statistics.median(detections), 3) if detections else None,
        "dead_link_detection_max_s": round(max(detections), 3) if detections else None,
        "dead_link_bound_s": bound,
        "dead_links_within_bound": sum(1 for d in detections if d <= bound),
        "dead_links": len(detections),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="a 15 s run")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    seconds = 15.0 if args.quick else args.seconds
    result = asyncio.run(run(seconds, args.seed))
    width = max(len(k) for k in result)
    for key, value in result.items():
        if key != "bench":
            print(f"{key:<{width}}  {value}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
