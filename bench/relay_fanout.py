"""Relay fan-out: N clients streaming ticks through the real stack, beside a bare broadcast floor.

Run: ``.venv/bin/python bench/relay_fanout.py`` (100 and 1,000 clients; ``--quick``: 50 and 200).

Two contenders, in the same run, one after the other, with the same clients:

- **relay**: uvicorn (its default ``websockets-sansio`` protocol) + Starlette +
  :class:`backend_core.relay.server.Relay` + :class:`backend_core.hub.InMemoryHub`. Every client
  subscribes to one symbol; the bench calls ``hub.publish_tick`` at a fixed rate, exactly
  as the Deriv manager does.
- **floor**: a bare ``websockets.asyncio.server`` that sends the same frame text to every
  connection with ``websockets.asyncio.server.broadcast`` (one synchronous write per
  connection, no queues, no per-client task, no backpressure): the physical floor of
  fanning frames out of one Python process.

Servers and the publisher live in this process; the clients live in one child process
(``--client``, plain ``websockets`` asyncio clients), so with two cores the server side
and the client side each get one. Compression is off on both sides (``--deflate`` turns
it on), so the figures measure fan-out rather than zlib.

Latency: the publisher stamps each tick's ``quote`` with ``time.monotonic()`` at the moment
of publishing (the bench's only use of that field; ``epoch`` is the sequence number). The
client subtracts it from its own ``time.monotonic()`` on receipt — CLOCK_MONOTONIC is one
clock for every process of the machine. Latency covers hub, relay writer, ASGI server,
the loopback socket and the client's frame parsing; the client's cost is the same for
both contenders.

Figures per contender: frames delivered per second (all clients' tick frames received /
time from first publish to last receipt), latency p50/p99 over every frame, frames lost,
server-process CPU milliseconds per 1,000 frames, and the longest garbage-collector pause
in the server process during the window. The window measures steady state: once every
client is connected, ``gc.collect()`` runs (for both contenders) so that the full
collection owed to the burst of handshakes (about 100 ms with 1,000 relay connections,
whose stack keeps about twice the floor's objects per connection) happens before the
window rather than at a random point inside it. The rate is fixed per client count so
that the offered load is about 20,000 frames/s (``--rate`` overrides it). Each contender
runs several rounds (alternating which goes first) and the round with the lowest p99 is
reported, with every round's p99 alongside: other processes on a shared machine can only
make a round slower.

Goal at 1,000 clients: relay throughput at least 80% of the floor's and relay p99 at most
1.5x the floor's. The relay costs about twice the floor's server CPU per frame (a task
wake-up, a hub queue and the Starlette/uvicorn send path per frame, against one
synchronous write); its latency stays close while the clients' own frame handling, the
same for both, is the larger cost.

Everything is bounded: connection set-up, the publishing window (``--seconds``), and the
drain after it each have a deadline; the child is killed if it overruns.
The last line of output is one JSON object (DESIGN.md "Testing and measuring").
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import socket
import sys
import time
from array import array
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import uvicorn
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.exceptions import ConnectionClosed

from backend_core.config import load_settings
from backend_core.events import Tick
from backend_core.hub import InMemoryHub
from backend_core.relay.protocol import tick_frame
from backend_core.relay.server import Relay

SYMBOL = "R_50"
OFFERED_FRAMES_PER_S = 20_000  # total across clients; about what one client process can take in
MAX_RATE_PER_S = 200  # ticks per second, whatever the client count
CONNECT_DEADLINE_S = 120.0  # opening every client connection
DRAIN_DEADLINE_S = 15.0  # after the last publish, for the last frames to arrive
CONNECT_BATCH = 50  # handshakes in flight at once (stays well inside the listen backlog)
GOAL_CLIENTS_FULL = 1000
GOAL_THROUGHPUT_RATIO = 0.8
GOAL_P99_RATIO = 1.5


# --- the client process ---------------------------------------------------------------------


async def run_clients(url: str, count: int, mode: str, expect: int, deadline_s: float, deflate: bool) -> None:
    compression = "deflate" if deflate else None
    conns: list[ClientConnection] = []

    async def open_one() -> ClientConnection:
        ws = await connect(url, compression=compression, ping_interval=None, open_timeout=60, max_queue=None)
        if mode == "relay":
            json.loads(await ws.recv())  # the status frame
            await ws.send(json.dumps({"action": "subscribe", "symbols": [SYMBOL]}))
            while json.loads(await ws.recv())["type"] != "subscribed":
                pass
        return ws

    async with asyncio.timeout(CONNECT_DEADLINE_S):
        for start in range(0, count, CONNECT_BATCH):
            conns += await asyncio.gather(*(open_one() for _ in range(min(CONNECT_BATCH, count - start))))

    latencies = array("d")
    received = [0] * count
    first_rx: list[float] = []
    last_rx = [0.0]
    done = asyncio.Event()
    remaining = [count]

    async def read(index: int, ws: ClientConnection) -> None:
        monotonic = time.monotonic
        loads = json.loads
        try:
            async for raw in ws:
                now = monotonic()
                frame = loads(raw)
                if frame.get("type") != "tick":
                    continue
                latencies.append(now - frame["quote"])
                received[index] += 1
                last_rx[0] = now
                if not first_rx:
                    first_rx.append(now)
                if received[index] == expect:
                    remaining[0] -= 1
                    if remaining[0] == 0:
                        done.set()
                    return
        except ConnectionClosed:
            return

    readers = [asyncio.create_task(read(i, ws)) for i, ws in enumerate(conns)]
    print(json.dumps({"ready": len(conns)}), flush=True)
    try:
        async with asyncio.timeout(deadline_s):
            await done.wait()
    except TimeoutError:
        pass
    for task in readers:
        task.cancel()
    await asyncio.gather(*readers, return_exceptions=True)
    result = {
        "received": sum(received),
        "last_rx": last_rx[0],
        "first_rx": first_rx[0] if first_rx else 0.0,
        "p50_s": _percentile(latencies, 50),
        "p99_s": _percentile(latencies, 99),
        "max_s": max(latencies) if latencies else 0.0,
    }
    print(json.dumps(result), flush=True)
    for ws in conns:
        ws.transport.abort()  # no closing handshake: the servers are torn down anyway


def _percentile(values: array[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


# --- the server side ------------------------------------------------------------------------


def _loopback_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


Publish = Callable[[Tick], None]


async def start_relay(clients: int) -> tuple[str, Publish, Callable[[], Awaitable[None]], Callable[[], dict[str, Any]]]:
    settings = load_settings(
        {
            "DERIV_SYMBOLS": SYMBOL,
            "WEBSOCKET_MAX_CONNECTIONS": str(clients + 10),
            "WEBSOCKET_HEARTBEAT_INTERVAL": "3600",  # no app pings during the run (the floor has none)
        }
    )
    hub = InMemoryHub()
    relay = Relay(settings, hub, dict)
    app = Starlette(routes=[WebSocketRoute("/api/v1/ws", relay.endpoint)])
    sock = _loopback_socket()
    config = uvicorn.Config(
        app, lifespan="off", log_level="warning", access_log=False, ws_ping_interval=None, backlog=4096
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    async with asyncio.timeout(10):
        while not server.started:  # noqa: ASYNC110 - uvicorn has no started event
            await asyncio.sleep(0.01)

    async def stop() -> None:
        async with asyncio.timeout(30):
            await relay.close_all()
        hub.close()
        server.should_exit = True
        async with asyncio.timeout(30):
            await task
        sock.close()

    url = f"ws://127.0.0.1:{sock.getsockname()[1]}/api/v1/ws"
    return url, hub.publish_tick, stop, hub.snapshot


async def start_floor() -> tuple[str, Publish, Callable[[], Awaitable[None]], Callable[[], dict[str, Any]]]:
    conns: set[ServerConnection] = set()

    async def handler(ws: ServerConnection) -> None:
        conns.add(ws)
        try:
            await ws.wait_closed()
        finally:
            conns.discard(ws)

    sock = _loopback_socket()
    server = await serve(handler, sock=sock, ping_interval=None, compression="deflate", backlog=4096)

    def publish(tick: Tick) -> None:
        # The very text the relay sends for this tick.
        broadcast(conns, json.dumps(tick_frame(tick), separators=(",", ":")))

    async def stop() -> None:
        server.close()
        async with asyncio.timeout(30):
            await server.wait_closed()
        sock.close()

    return f"ws://127.0.0.1:{sock.getsockname()[1]}/", publish, stop, lambda: {"connections": len(conns)}


async def run_contender(name: str, clients: int, rate_per_s: float, seconds: float, deflate: bool) -> dict[str, Any]:
    starter = start_relay(clients) if name == "relay" else start_floor()
    url, publish, stop, _stats = await starter
    ticks = max(1, int(rate_per_s * seconds))
    args = [
        sys.executable,
        __file__,
        "--client",
        "--url",
        url,
        "--clients",
        str(clients),
        "--mode",
        name,
        "--expect",
        str(ticks),
        "--deadline",
        str(seconds + DRAIN_DEADLINE_S),
    ]
    if deflate:
        args.append("--deflate")
    child = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE)
    assert child.stdout is not None
    try:
        async with asyncio.timeout(CONNECT_DEADLINE_S + 10):
            ready = json.loads(await child.stdout.readline())
        assert ready["ready"] == clients, ready
        await asyncio.sleep(0.2)  # let every subscription settle
        # Steady state: the one full collection that follows 1,000 handshakes (it scans every
        # object they created) runs now, not at a random point of the measured window.
        gc.collect()
        pauses = GcPauses()
        gc.callbacks.append(pauses.callback)
        cpu_before = _cpu_s()
        loop = asyncio.get_running_loop()
        start = loop.time()
        first_publish = time.monotonic()
        for seq in range(1, ticks + 1):
            publish(Tick(symbol=SYMBOL, epoch=seq, quote=time.monotonic(), pip_size=2))
            delay = start + seq / rate_per_s - loop.time()
            await asyncio.sleep(max(0.0, delay))
        async with asyncio.timeout(seconds + DRAIN_DEADLINE_S + 10):
            result = json.loads(await child.stdout.readline())
        cpu_s = _cpu_s() - cpu_before
        gc.callbacks.remove(pauses.callback)
        async with asyncio.timeout(30):
            await child.wait()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        await stop()
    expected = ticks * clients
    elapsed = max(1e-9, result["last_rx"] - first_publish)
    return {
        "frames_per_s": result["received"] / elapsed,
        "p50_ms": result["p50_s"] * 1000,
        "p99_ms": result["p99_s"] * 1000,
        "max_ms": result["max_s"] * 1000,
        "delivered": result["received"],
        "expected": expected,
        "lost": expected - result["received"],
        "server_cpu_s_per_1k_frames": 1000 * cpu_s / max(1, result["received"]),
        "gc_full_collections": pauses.full_count,
        "gc_max_pause_ms": pauses.max_s * 1000,
    }


class GcPauses:
    """Garbage-collector pauses of the server process during the measured window."""

    def __init__(self) -> None:
        self.full_count = 0
        self.max_s = 0.0
        self._started = 0.0

    def callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
            return
        self.max_s = max(self.max_s, time.perf_counter() - self._started)
        if info["generation"] == 2:
            self.full_count += 1


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_open_files_limit(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def best_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the lowest p99: on a shared two-core machine other processes only ever
    make a round slower, so the best round is the closest to what the code itself costs."""
    best = dict(min(runs, key=lambda r: r["p99_ms"]))
    best["rounds_p99_ms"] = [round(r["p99_ms"], 2) for r in runs]
    return best


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    counts = [50, 200] if args.quick else [100, 1000]
    seconds = args.seconds if args.seconds else (2.0 if args.quick else 5.0)
    rounds = args.rounds if args.rounds else (2 if args.quick else 3)
    rows = []
    for clients in counts:
        rate = args.rate or min(MAX_RATE_PER_S, OFFERED_FRAMES_PER_S / clients)
        row: dict[str, Any] = {"clients": clients, "rate_per_s": rate, "seconds": seconds}
        runs: dict[str, list[dict[str, Any]]] = {"relay": [], "floor": []}
        for round_index in range(rounds):
            # Alternate who goes first, so neither always runs on a warmer or quieter machine.
            order = ("relay", "floor") if round_index % 2 == 0 else ("floor", "relay")
            for name in order:
                runs[name].append(await run_contender(name, clients, rate, seconds, args.deflate))
        for name in ("relay", "floor"):
            row[name] = best_of(runs[name])
        row["throughput_ratio"] = row["relay"]["frames_per_s"] / max(1e-9, row["floor"]["frames_per_s"])
        row["p99_ratio"] = row["relay"]["p99_ms"] / max(1e-9, row["floor"]["p99_ms"])
        rows.append(row)
    return {"rows": rows, "seconds": seconds, "rounds": rounds}


def print_table(rows: list[dict[str, Any]]) -> None:
    header = (
        f"{'clients':>7} {'rate/s':>7} {'contender':>9} {'frames/s':>10} {'p50 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'lost':>6} {'cpu ms/1k':>9} {'gc max ms':>9}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        for name in ("relay", "floor"):
            r = row[name]
            print(
                f"{row['clients']:>7} {row['rate_per_s']:>7.0f} {name:>9} {r['frames_per_s']:>10.0f} "
                f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['max_ms']:>8.2f} {r['lost']:>6} "
                f"{r['server_cpu_s_per_1k_frames'] * 1000:>9.1f} {r['gc_max_pause_ms']:>9.1f}"
            )
        print(f"{'':>15} relay/floor  throughput x{row['throughput_ratio']:.2f}  p99 x{row['p99_ratio']:.2f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="50 and 200 clients, 2 s each, 2 rounds")
    parser.add_argument("--rounds", type=int, default=0, help="rounds per contender; the best is reported")
    parser.add_argument("--seconds", type=float, default=0.0, help="publishing window per contender")
    parser.add_argument("--rate", type=float, default=0.0, help="ticks per second (default: ~20k frames/s offered)")
    parser.add_argument("--deflate", action="store_true", help="negotiate permessage-deflate on both")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["relay", "floor"], help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--deadline", type=float, default=30.0, help=argparse.SUPPRESS)
    args = parser.parse_args()

    raise_open_files_limit(4096 + 2 * (args.clients or 1000))
    if args.client:
        asyncio.run(run_clients(args.url, args.clients, args.mode, args.expect, args.deadline, args.deflate))
        return 0

    outcome = asyncio.run(main_async(args))
    rows = outcome["rows"]
    print(
        f"relay fan-out on {os.cpu_count()} cores; compression {'deflate' if args.deflate else 'off'}; "
        f"best of {outcome['rounds']} rounds by p99"
    )
    print_table(rows)
    goal_row = rows[-1]
    met = goal_row["throughput_ratio"] >= GOAL_THROUGHPUT_RATIO and goal_row["p99_ratio"] <= GOAL_P99_RATIO
    summary: dict[str, Any] = {
        "bench": "relay_fanout",
        "quick": args.quick,
        "compression": "deflate" if args.deflate else "off",
        "seconds": outcome["seconds"],
        "rounds": outcome["rounds"],
        "goal": {
            "clients": goal_row["clients"],
            "throughput_ratio_min": GOAL_THROUGHPUT_RATIO,
            "p99_ratio_max": GOAL_P99_RATIO,
            "met": met,
        },
    }
    for row in rows:
        n = row["clients"]
        summary[f"c{n}"] = {
            "rate_per_s": round(row["rate_per_s"], 1),
            "relay_fps": round(row["relay"]["frames_per_s"]),
            "floor_fps": round(row["floor"]["frames_per_s"]),
            "relay_p50_ms": round(row["relay"]["p50_ms"], 3),
            "relay_p99_ms": round(row["relay"]["p99_ms"], 3),
            "floor_p50_ms": round(row["floor"]["p50_ms"], 3),
            "floor_p99_ms": round(row["floor"]["p99_ms"], 3),
            "relay_p99_ms_rounds": row["relay"]["rounds_p99_ms"],
            "floor_p99_ms_rounds": row["floor"]["rounds_p99_ms"],
            "relay_cpu_ms_per_1k_frames": round(row["relay"]["server_cpu_s_per_1k_frames"] * 1000, 2),
            "floor_cpu_ms_per_1k_frames": round(row["floor"]["server_cpu_s_per_1k_frames"] * 1000, 2),
            "relay_gc_max_pause_ms": round(row["relay"]["gc_max_pause_ms"], 1),
            "floor_gc_max_pause_ms": round(row["floor"]["gc_max_pause_ms"], 1),
            "relay_lost": row["relay"]["lost"],
            "floor_lost": row["floor"]["lost"],
            "throughput_ratio": round(row["throughput_ratio"], 3),
            "p99_ratio": round(row["p99_ratio"], 3),
        }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
