"""Cluster failover: kill -9 the leader of three instances behind haproxy, again and again.

Run: ``.venv/bin/python bench/cluster_failover.py`` (``--kills N``, at least 5; ``--quick``:
shorter settling). Real processes on 127.0.0.1 (tests/cluster_harness.py): redis-server,
the simulator (its own process, ``--time-scale``, default 10, so the 1-second symbols
tick ten times a second), three members (``CLUSTER_LEASE_TTL=2``) and haproxy. One relay
client connects through haproxy and, whenever its connection ends, reconnects through
haproxy with ``resume`` (its last epoch per symbol).

Each round: find the leader (the member whose ``/health/detailed`` says
``cluster:mode = leader``; without the cluster wiring there is none, and the member
serving the client is killed instead, which is the failure a client sees), kill -9 it,
measure, start it again, wait until haproxy has it UP. Then Redis is stopped and started
once. Figures, one JSON line at the end:

- ``failover_s``: per kill, the longest silence at the client (time between two tick
  frames received) in the window around the kill: the feed's outage as a client lives it
  (lease handover + new upstream connection + backfill, or reconnect + resume); median and
  max. ``lease_handover_s``: until another member reports itself leader (wired only);
- ``ticks_lost`` / ``ticks_duplicated``: against the simulator's own ``ticks_history`` over
  the whole run, per symbol, summed (goal 0 and 0);
- ``upstream_connections_max``: the simulator's ``connection_count`` sampled every 100 ms
  while Redis is up (steady and kill windows; goal 1), with ``..._steady_max`` (outside
  the kill windows), ``..._kills_max`` (inside them) and ``..._redis_down_max`` (Redis
  stopped: every member degrades to its own link by design, so 3 is expected there);
- ``redis_degrade_s`` / ``redis_rejoin_s``: from stopping Redis until every member reports
  ``degraded``, and from starting it until one leader and the others followers again, with
  one upstream connection (null without the wiring).

Until the members read ``REDIS_URL`` (the cluster wiring on main), each member is a
standalone instance with its own upstream: the bench runs and reports what it measures
(``cluster_wired: false``, 3 upstream connections, failover = reconnect + resume on
another instance); the goals are for the wired cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.cluster_harness import Cluster, Member, RelayClient, cluster  # noqa: E402

SYMBOLS = ["1HZ100V", "R_100"]
LEASE_TTL_S = 2.0
RUN_TIMEOUT_S = 240.0
# How long after a kill the client may stay silent before the round is called failed.
RECOVERY_TIMEOUT_S = 20.0
SAMPLE_PERIOD_S = 0.1


class Sampler:
    """The simulator's connection_count every SAMPLE_PERIOD_S, tagged with the phase."""

    def __init__(self, c: Cluster) -> None:
        self.cluster = c
        self.samples: list[tuple[float, int, str]] = []
        self.phase = "steady"  # or "kill", "redis_down"

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            try:
                count = int((await asyncio.to_thread(self.cluster.stats))["connection_count"])
                self.samples.append((time.monotonic(), count, self.phase))
            except Exception:  # the simulator answering late is no reason to stop the bench
                pass
            try:
                await asyncio.wait_for(stop.wait(), SAMPLE_PERIOD_S)
            except TimeoutError:
                pass


def longest_silence(client: RelayClient, start: float, end: float) -> float:
    """The longest time between two tick frames received in [start, end] (any symbol)."""
    times = sorted(t for ticks in client.ticks.values() for _, _, t, _ in ticks if start <= t <= end)
    edges = [start, *times]
    return max((b - a for a, b in itertools.pairwise(edges)), default=end - start)


async def wait_for_ticks_after(client: RelayClient, moment: float, ticks: int, timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while sum(1 for t in client.ticks.values() for _, _, at, _ in t if at > moment) < ticks:  # noqa: ASYNC110
            await asyncio.sleep(0.02)


async def role_of_all(c: Cluster) -> dict[str, str]:
    return await asyncio.to_thread(c.roles)


async def until_roles(c: Cluster, predicate: Any, timeout_s: float) -> float | None:
    """Seconds until ``predicate(roles)`` holds, or None when it does not within ``timeout_s``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if predicate(await role_of_all(c)):
            return time.monotonic() - started
        await asyncio.sleep(0.1)
    return None


async def kill_round(c: Cluster, client: RelayClient, sampler: Sampler, settle_s: float) -> dict[str, Any]:
    leader = await asyncio.to_thread(c.leader)
    wired = leader is not None
    victim: Member = leader if leader is not None else c.member(client.connections[-1][1])
    sampler.phase = "kill"
    connections_before = len(client.connections)
    killed_at = time.monotonic()
    await asyncio.to_thread(victim.kill)
    handover = None
    # Ticks already on their way when the kill landed say nothing: first wait for the
    # recovery itself (a new leader, or the client's reconnection), then for ticks after it.
    if wired:
        handover = await until_roles(
            c, lambda roles: any(r == "leader" for s, r in roles.items() if s != victim.server), RECOVERY_TIMEOUT_S
        )
    else:
        async with asyncio.timeout(RECOVERY_TIMEOUT_S):
            while len(client.connections) <= connections_before:  # noqa: ASYNC110 - polling a counter
                await asyncio.sleep(0.02)
    recovering_at = time.monotonic()
    await wait_for_ticks_after(client, recovering_at, 3, RECOVERY_TIMEOUT_S)
    recovered_at = time.monotonic()
    await asyncio.to_thread(c.restart, victim)
    await asyncio.to_thread(c.wait_server_state, victim, "UP", RECOVERY_TIMEOUT_S)
    await asyncio.sleep(settle_s)
    sampler.phase = "steady"
    return {
        "victim": victim.server,
        "was_leader": wired,
        "failover_s": longest_silence(client, killed_at - 0.5, recovered_at),
        "lease_handover_s": handover,
    }


async def redis_round(c: Cluster, sampler: Sampler, wired: bool, settle_s: float) -> dict[str, Any]:
    sampler.phase = "redis_down"
    await asyncio.to_thread(c.redis_stop)
    degrade = None
    if wired:
        degrade = await until_roles(c, lambda roles: all(r == "degraded" for r in roles.values()), 30.0)
    else:
        await asyncio.sleep(settle_s)
    await asyncio.to_thread(c.redis_start)
    rejoin = None
    if wired:

        def joined(roles: dict[str, str]) -> bool:
            values = list(roles.values())
            return values.count("leader") == 1 and values.count("follower") == len(values) - 1

        rejoin = await until_roles(c, joined, 30.0)
    await asyncio.sleep(settle_s)
    sampler.phase = "steady"
    return {"redis_degrade_s": degrade, "redis_rejoin_s": rejoin}


def count_loss(c: Cluster, client: RelayClient) -> tuple[int, int, int]:
    lost = duplicated = received = 0
    for symbol in SYMBOLS:
        got = client.ticks.get(symbol, [])
        if not got:
            continue
        epochs = [e for e, *_ in got]
        first, last = min(epochs), max(epochs)
        missing, dup = client.lost_and_duplicated(symbol, first, last, c.upstream_epochs(symbol))
        lost, duplicated, received = lost + missing, duplicated + dup, received + len(epochs)
    return lost, duplicated, received


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    settle_s = 1.0 if args.quick else 3.0
    env = {"CLUSTER_LEASE_TTL": str(LEASE_TTL_S), "DERIV_SYMBOLS": ",".join(SYMBOLS)}
    with cluster(Path(tempfile.mkdtemp(prefix="cluster-failover-")), 3, time_scale=args.time_scale, env=env) as c:
        async with asyncio.timeout(RUN_TIMEOUT_S):
            client = RelayClient(c.ws_url, SYMBOLS)
            sampler = Sampler(c)
            stop = asyncio.Event()
            tasks = [asyncio.create_task(client.run(stop)), asyncio.create_task(sampler.run(stop))]
            try:
                await wait_for_ticks_after(client, 0.0, 5, RECOVERY_TIMEOUT_S)
                await asyncio.sleep(settle_s)
                roles_at_start = await role_of_all(c)
                wired = any(r in ("leader", "follower") for r in roles_at_start.values())
                rounds = [await kill_round(c, client, sampler, settle_s) for _ in range(args.kills)]
                redis = await redis_round(c, sampler, wired, settle_s)
                await asyncio.sleep(settle_s)
            finally:
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
        lost, duplicated, received = count_loss(c, client)
    failovers = [r["failover_s"] for r in rounds]
    handovers = [r["lease_handover_s"] for r in rounds if r["lease_handover_s"] is not None]

    def most(*phases: str) -> int | None:
        return max((n for _, n, p in sampler.samples if p in phases), default=None)

    return {
        "bench": "cluster_failover",
        "cluster_wired": wired,
        "roles_at_start": roles_at_start,
        "instances": 3,
        "time_scale": args.time_scale,
        "lease_ttl_s": LEASE_TTL_S,
        "kills": len(rounds),
        "kills_of_a_leader": sum(1 for r in rounds if r["was_leader"]),
        "failover_s_median": round(statistics.median(failovers), 3),
        "failover_s_max": round(max(failovers), 3),
        "failover_s": [round(f, 3) for f in failovers],
        "lease_handover_s_median": round(statistics.median(handovers), 3) if handovers else None,
        "lease_handover_s_max": round(max(handovers), 3) if handovers else None,
        "ticks_received": received,
        "ticks_lost": lost,
        "ticks_duplicated": duplicated,
        "client_connections": len(client.connections),
        "resume_truncated": client.truncated,
        "upstream_connections_max": most("steady", "kill"),
        "upstream_connections_steady_max": most("steady"),
        "upstream_connections_kills_max": most("kill"),
        "upstream_connections_redis_down_max": most("redis_down"),
        "upstream_samples": len(sampler.samples),
        **{k: (round(v, 3) if v is not None else None) for k, v in redis.items()},
        "goals": {"ticks_lost": 0, "ticks_duplicated": 0, "upstream_connections_max": 1},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=5)
    parser.add_argument("--time-scale", type=float, default=10.0)
    parser.add_argument("--quick", action="store_true", help="shorter settling between rounds")
    args = parser.parse_args()
    if args.kills < 5:
        parser.error("--kills: at least 5")
    print(json.dumps(asyncio.run(bench(args))), flush=True)


if __name__ == "__main__":
    main()
