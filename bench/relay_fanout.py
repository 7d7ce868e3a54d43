"""Relay fan-out at saturation: 50 symbols, one tick a second each, to 1,000 and 5,000 clients.

Run: ``.venv/bin/python bench/relay_fanout.py`` (``--quick``: 200 and 1,000 clients, shorter).

Every second the publisher publishes one tick of each of 50 symbols at once (Deriv's
one-second symbols tick together on the second); every client subscribes to all 50, so
1,000 clients take 50,000 frames a second. Contenders, one after the other in the same
run, each server in a fresh process of its own (so memory figures do not inherit the
previous contender's heap):

- **floor**: a bare ``websockets.asyncio.server`` that sends each tick's frame text to
  every connection with ``websockets.asyncio.server.broadcast`` (one synchronous write per
  connection, no queue, no task, no backpressure): the physical floor of fanning frames
  out of one Python process.
- **relay**: what production serves: uvicorn (h11, its ``websockets-sansio`` WebSocket
  implementation with the relay's frame limit) + :class:`backend_core.relay.server.Relay`
  + :class:`backend_core.hub.InMemoryHub`; the bench calls ``hub.publish_tick`` as the
  Deriv manager does.
- **relay_batch**: the same, the clients subscribing with ``"batch": true``.

Each runs with compression off and with permessage-deflate. The load generator is two
child processes of minimal asyncio clients (hand-written frame parsing, zlib for
deflate), cheap enough that they are not the bottleneck at 1,000 clients.

Figures per run: ticks delivered per second (frames, counting each line of a batch),
latency p50/p99 (the publisher stamps ``quote`` with ``time.monotonic()``, the clients
subtract it on receipt: CLOCK_MONOTONIC is one clock for every process of the machine),
ticks lost (expected minus delivered), server CPU milliseconds per 1,000 delivered
ticks (user + system of the server process over the window), server RSS per connection
when idle (connected, not subscribed), subscribed, and after the window (buffers
included), and the compression ratio (payload bytes / bytes on the wire).

Goals (ratios within this run, compression off): relay CPU per tick at most 1.3x the
floor's; relay_batch at most 0.5x the floor's; relay p99 at most 1.5x the floor's;
zero ticks lost by the relay; at most 64 KiB RSS per subscribed connection.

Bounded: every phase has a deadline, the children are killed if they overrun, and the
whole run takes a few minutes. The last line of output is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import cProfile
import gc
import json
import logging
import os
import resource
import socket
import sys
import time
import zlib
from array import array
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.measure import percentile

SYMBOLS = [f"SYM{i:02d}" for i in range(50)]
CONTENDERS = ("floor", "relay", "relay_batch")
CLIENT_PROCESSES = 2
CONNECT_BATCH = 100  # handshakes in flight at once per client process
PHASE_DEADLINE_S = 90.0  # connecting, subscribing
DRAIN_DEADLINE_S = 6.0  # after the last publish, for the last frames to arrive
GOAL_CPU_RATIO = 1.3
GOAL_CPU_RATIO_BATCHED = 0.5
GOAL_P99_RATIO = 1.5
GOAL_RSS_PER_SUBSCRIBED_KIB = 64.0


def raise_open_files_limit(needed: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < needed:
        soft = needed if hard == resource.RLIM_INFINITY else min(hard, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# --- the server process ---------------------------------------------------------------------


async def serve(contender: str, clients: int, deflate: bool) -> None:
    from backend_core.events import Tick

    # A client that is gone before the floor's next broadcast makes asyncio warn per write.
    logging.getLogger("asyncio").setLevel(logging.ERROR)

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if contender == "floor":
        from websockets.asyncio.server import ServerConnection, broadcast
        from websockets.asyncio.server import serve as ws_serve

        from backend_core.relay.protocol import dumps_frame, tick_frame

        conns: set[ServerConnection] = set()

        async def handler(ws: ServerConnection) -> None:
            conns.add(ws)
            try:
                await ws.wait_closed()
            finally:
                conns.discard(ws)

        server = await ws_serve(
            handler, sock=sock, ping_interval=None, compression="deflate" if deflate else None, backlog=4096
        )

        def publish(tick: Tick) -> None:
            broadcast(conns, dumps_frame(tick_frame(tick)))  # the very text the relay sends

        def server_stats() -> dict[str, Any]:
            return {}

        async def stop() -> None:
            server.close()
            await server.wait_closed()
    else:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.routing import WebSocketRoute

        from backend_core.config import load_settings
        from backend_core.hub import InMemoryHub
        from backend_core.relay.protocol import RELAY_PATH
        from backend_core.relay.server import Relay
        from backend_core.relay.serving import RelayWebSocketProtocol

        settings = load_settings(
            {
                "DERIV_SYMBOLS": ",".join(SYMBOLS),
                "WEBSOCKET_MAX_CONNECTIONS": str(clients + 10),
                "WEBSOCKET_HEARTBEAT_INTERVAL": "3600",  # no app pings in the window (the floor has none)
            }
        )
        hub = InMemoryHub()
        relay = Relay(settings, hub, dict)
        config = uvicorn.Config(
            Starlette(routes=[WebSocketRoute(RELAY_PATH, relay.endpoint)]),
            lifespan="off",
            log_level="warning",
            access_log=False,
            http="h11",
            loop="asyncio",
            ws=RelayWebSocketProtocol,
            ws_ping_interval=None,
            ws_per_message_deflate=deflate,
            backlog=4096,
        )
        server_ = uvicorn.Server(config)
        task = asyncio.create_task(server_.serve(sockets=[sock]))
        while not server_.started:  # noqa: ASYNC110 - uvicorn has no started event
            await asyncio.sleep(0.01)
        publish = hub.publish_tick

        def server_stats() -> dict[str, Any]:
            pump = relay._pump
            return {
                "ticks_sent": relay.snapshot()["totals"]["ticks_sent"],
                "backlog": hub.snapshot()["backlog_total"],
                "hub_dropped": hub.snapshot()["dropped_total"],
                "pump_running": pump is not None and not pump.done(),
            }

        async def stop() -> None:
            await relay.close_all()
            hub.close()
            server_.should_exit = True
            await task

    # RELAY_BENCH_PROFILE=/tmp/prof: cProfile the server over the window (slower; for finding
    # where the time goes, not for the figures).
    profile_to = os.environ.get("RELAY_BENCH_PROFILE")
    profiler = cProfile.Profile()
    path = "/" if contender == "floor" else "/api/v1/ws"
    print(json.dumps({"url": f"ws://127.0.0.1:{port}{path}", "rss": rss_bytes()}), flush=True)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while True:
        command = (await reader.readline()).decode().split()
        if not command or command[0] == "quit":
            break
        if command[0] == "measure":
            print(json.dumps({"rss": rss_bytes()}), flush=True)
        elif command[0] == "publish":
            seconds = int(command[1])
            gc.collect()  # the collection owed to the handshakes runs now, not in the window
            if profile_to:
                profiler.enable()
            cpu_before = cpu_s()
            start = loop.time()
            for second in range(seconds):
                stamp = time.monotonic()
                for symbol in SYMBOLS:
                    publish(Tick(symbol=symbol, epoch=1000 + second, quote=stamp, pip_size=2))
                await asyncio.sleep(max(0.0, start + second + 1 - loop.time()))
            print(json.dumps({"published": seconds * len(SYMBOLS)}), flush=True)
        elif command[0] == "cpu":
            print(json.dumps({"cpu_s": cpu_s() - cpu_before, "rss": rss_bytes(), **server_stats()}), flush=True)
            if profile_to:
                profiler.disable()
                profiler.dump_stats(f"{profile_to}.{contender}{'.deflate' if deflate else ''}.{clients}")
    await stop()


# --- the client processes -------------------------------------------------------------------


class Client(asyncio.Protocol):
    """One minimal WebSocket client: handshake, unmasked server frames, optional deflate."""

    def __init__(self, stats: Stats, expect: int) -> None:
        self.stats = stats
        self.expect = expect
        self.ticks = 0
        self.buffer = bytearray()
        self.handshaken = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None
        self.inflater: Any = None
        self.acked = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.stats.wire_bytes += len(data)
        buffer = self.buffer
        buffer += data
        if not self.handshaken.done():
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(buffer[:end]).decode("latin-1").lower()
            del buffer[: end + 4]
            if " 101 " not in head.split("\r\n", 1)[0]:
                self.handshaken.set_exception(ConnectionError(head.split("\r\n", 1)[0]))
                return
            if "permessage-deflate" in head:
                self.inflater = zlib.decompressobj(-15)
            self.handshaken.set_result(None)
        # Parse every complete frame, then drop them from the buffer once: deleting each frame
        # as it is parsed would move the rest of a large read every time (quadratic).
        view = memoryview(buffer)
        start, size = 0, len(buffer)
        try:
            while size - start >= 2:
                first, length = view[start], view[start + 1] & 0x7F
                offset = start + 2
                if length == 126:
                    if size - start < 4:
                        break
                    length, offset = int.from_bytes(view[start + 2 : start + 4], "big"), start + 4
                elif length == 127:
                    if size - start < 10:
                        break
                    length, offset = int.from_bytes(view[start + 2 : start + 10], "big"), start + 10
                if size < offset + length:
                    break
                payload = bytes(view[offset : offset + length])
                start = offset + length
                opcode = first & 0x0F
                if first & 0x40 and self.inflater is not None:
                    payload = self.inflater.decompress(payload + b"\x00\x00\xff\xff")
                if opcode == 0x1:
                    self.on_text(payload)
                elif opcode == 0x9:
                    self.send_frame(0xA, payload)
        finally:
            view.release()
        del buffer[:start]

    def on_text(self, payload: bytes) -> None:
        now = time.monotonic()
        stats = self.stats
        stats.payload_bytes += len(payload)
        stats.messages += 1
        count = payload.count(b'"type":"tick"')
        if not count:
            if b'"subscribed"' in payload and not self.acked.done():
                self.acked.set_result(None)
            elif b'"dropped"' in payload:
                stats.dropped_markers += 1
            return
        position = 0
        latencies = stats.latencies
        for _ in range(count):
            position = payload.index(b'"quote":', position) + 8
            stop = payload.index(b",", position)
            latencies.append(now - float(payload[position:stop]))
        self.ticks += count
        stats.ticks += count
        stats.last_rx = now
        if self.ticks >= self.expect and self.ticks - count < self.expect:
            stats.complete += 1
            if stats.complete == stats.clients:
                stats.done.set()

    def send_frame(self, opcode: int, payload: bytes) -> None:
        assert self.transport is not None
        head = bytes([0x80 | opcode])
        length = len(payload)
        head += bytes([0x80 | length]) if length < 126 else bytes([0x80 | 126]) + length.to_bytes(2, "big")
        self.transport.write(head + bytes(4) + payload)  # an all-zero mask leaves the payload as is


class Stats:
    def __init__(self, clients: int) -> None:
        self.clients = clients
        self.wire_bytes = self.payload_bytes = self.messages = self.ticks = 0
        self.complete = self.dropped_markers = 0
        self.last_rx = 0.0
        self.latencies = array("d")
        self.done = asyncio.Event()


async def open_client(url: str, stats: Stats, expect: int, deflate: bool) -> Client:
    host_port, _, path = url.removeprefix("ws://").partition("/")
    host, _, port = host_port.partition(":")
    loop = asyncio.get_running_loop()
    _, client = await loop.create_connection(lambda: Client(stats, expect), host, int(port))
    key = base64.b64encode(os.urandom(16)).decode()
    extension = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n" if deflate else ""
    request = (
        f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extension}\r\n"
    )
    assert client.transport is not None
    client.transport.write(request.encode())
    await client.handshaken
    return client


async def run_clients(url: str, count: int, contender: str, expect: int, deflate: bool) -> None:
    stats = Stats(count)
    clients: list[Client] = []
    for start in range(0, count, CONNECT_BATCH):
        size = min(CONNECT_BATCH, count - start)
        clients += await asyncio.gather(*(open_client(url, stats, expect, deflate) for _ in range(size)))
    print(json.dumps({"connected": len(clients)}), flush=True)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.readline()  # "subscribe"
    if contender != "floor":
        subscribe: dict[str, Any] = {"action": "subscribe", "symbols": SYMBOLS}
        if contender == "relay_batch":
            subscribe["batch"] = True
        frame = json.dumps(subscribe, separators=(",", ":")).encode()
        for client in clients:
            client.send_frame(0x1, frame)
        await asyncio.gather(*(client.acked for client in clients))
    stats.wire_bytes = stats.payload_bytes = stats.messages = 0  # the window's traffic only
    print(json.dumps({"ready": len(clients)}), flush=True)
    deadline = float((await reader.readline()).decode())
    try:
        async with asyncio.timeout(deadline):
            await stats.done.wait()
    except TimeoutError:
        pass
    ordered = sorted(stats.latencies)
    result = {
        "ticks": stats.ticks,
        "last_rx": stats.last_rx,
        "messages": stats.messages,
        "wire_bytes": stats.wire_bytes,
        "payload_bytes": stats.payload_bytes,
        "dropped_markers": stats.dropped_markers,
        "latencies_sample": [ordered[int(i * (len(ordered) - 1) / 999)] for i in range(1000)] if ordered else [],
    }
    print(json.dumps(result), flush=True)
    for client in clients:
        if client.transport is not None:
            client.transport.abort()


# --- the orchestrator -----------------------------------------------------------------------


async def spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, __file__, *args, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
    )


async def ask(process: asyncio.subprocess.Process, command: str | None, timeout_s: float) -> dict[str, Any]:
    assert process.stdin is not None and process.stdout is not None
    if command is not None:
        process.stdin.write(command.encode() + b"\n")
        await process.stdin.drain()
    async with asyncio.timeout(timeout_s):
        line = await process.stdout.readline()
    if not line:
        raise RuntimeError(f"child {process.pid} exited")
    answer: dict[str, Any] = json.loads(line)
    return answer


async def run_one(contender: str, clients: int, seconds: int, deflate: bool) -> dict[str, Any]:
    flag = ["--deflate"] if deflate else []
    server = await spawn("--serve", contender, "--clients", str(clients), *flag)
    children: list[asyncio.subprocess.Process] = [server]
    try:
        started = await ask(server, None, 30)
        base_rss = started["rss"]
        shares = [clients // CLIENT_PROCESSES + (i < clients % CLIENT_PROCESSES) for i in range(CLIENT_PROCESSES)]
        expect = seconds * len(SYMBOLS)
        loaders = [
            await spawn("--client", "--url", started["url"], "--clients", str(n), "--mode", contender,
                        "--expect", str(expect), *flag)
            for n in shares
        ]  # fmt: skip
        children += loaders
        for loader in loaders:
            await ask(loader, None, PHASE_DEADLINE_S)
        await asyncio.sleep(0.5)  # the last handshakes settle
        idle_rss = (await ask(server, "measure", 30))["rss"]
        for loader in loaders:
            await ask(loader, "subscribe", PHASE_DEADLINE_S)
        await asyncio.sleep(0.5)
        subscribed_rss = (await ask(server, "measure", 30))["rss"]
        first_publish = time.monotonic()
        for loader in loaders:
            assert loader.stdin is not None
            loader.stdin.write(f"{seconds + DRAIN_DEADLINE_S}\n".encode())
        await ask(server, f"publish {seconds}", seconds + 30)
        results = [await ask(loader, None, DRAIN_DEADLINE_S + 30) for loader in loaders]
        used = await ask(server, "cpu", 30)
    finally:
        for child in children:
            if child.returncode is None and child.stdin is not None:
                with contextlib.suppress(Exception):
                    child.stdin.write(b"quit\n")
        for child in children:
            try:
                async with asyncio.timeout(20):
                    await child.wait()
            except TimeoutError:
                child.kill()
                await child.wait()
    delivered = sum(r["ticks"] for r in results)
    last_rx = max(r["last_rx"] for r in results)
    latencies = [x for r in results for x in r["latencies_sample"]]
    wire = sum(r["wire_bytes"] for r in results)
    payload = sum(r["payload_bytes"] for r in results)
    return {
        "ticks_per_s": delivered / max(1e-9, last_rx - first_publish),
        "p50_ms": percentile(latencies, 0.5) * 1000 if latencies else 0.0,
        "p99_ms": percentile(latencies, 0.99) * 1000 if latencies else 0.0,
        "delivered": delivered,
        "lost": expect * clients - delivered,
        "dropped_markers": sum(r["dropped_markers"] for r in results),
        "messages": sum(r["messages"] for r in results),
        "cpu_ms_per_1k_ticks": 1000 * 1000 * used["cpu_s"] / max(1, delivered),
        "rss_kib_per_idle_conn": (idle_rss - base_rss) / clients / 1024,
        "rss_kib_per_subscribed_conn": (subscribed_rss - base_rss) / clients / 1024,
        "rss_kib_per_conn_after_window": (used["rss"] - base_rss) / clients / 1024,
        "compression_ratio": payload / max(1, wire),
        "server": {k: v for k, v in used.items() if k not in ("cpu_s", "rss")},
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    counts = args.counts or ([200, 1000] if args.quick else [1000, 5000])
    seconds = args.seconds or 3
    table: dict[str, Any] = {}
    for clients in counts:
        for deflate in [m == "deflate" for m in ([args.only] if args.only else ["plain", "deflate"])]:
            for contender in CONTENDERS:
                key = f"c{clients}_{'deflate' if deflate else 'plain'}_{contender}"
                table[key] = await run_one(contender, clients, seconds, deflate)
                row = table[key]
                print(
                    f"{clients:>5} {'deflate' if deflate else 'plain':>7} {contender:>11} "
                    f"{row['ticks_per_s']:>9.0f}/s p50 {row['p50_ms']:>8.1f} p99 {row['p99_ms']:>8.1f} ms "
                    f"lost {row['lost']:>7} cpu {row['cpu_ms_per_1k_ticks']:>6.1f} ms/1k "
                    f"rss idle {row['rss_kib_per_idle_conn']:>5.1f} sub {row['rss_kib_per_subscribed_conn']:>5.1f} "
                    f"after {row['rss_kib_per_conn_after_window']:>6.1f} KiB ratio {row['compression_ratio']:.2f}",
                    flush=True,
                )
    return {"counts": counts, "seconds": seconds, "table": table}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="200 and 1,000 clients")
    parser.add_argument("--seconds", type=int, default=0, help="publishing window per run")
    parser.add_argument("--counts", type=int, nargs="*", default=[], help="client counts (default: 1000 5000)")
    parser.add_argument("--only", choices=["plain", "deflate"], help="one compression mode")
    parser.add_argument("--serve", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--clients", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--expect", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--deflate", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    raise_open_files_limit(1024 + 2 * max(args.clients, 5000))
    if args.serve:
        asyncio.run(serve(args.serve, args.clients, args.deflate))
        return 0
    if args.client:
        asyncio.run(run_clients(args.url, args.clients, args.mode, args.expect, args.deflate))
        return 0

    started = time.monotonic()
    outcome = asyncio.run(main_async(args))
    table = outcome["table"]
    summary: dict[str, Any] = {"bench": "relay_fanout", "quick": args.quick, "seconds": outcome["seconds"]}
    goals: dict[str, Any] = {}
    for clients in outcome["counts"]:
        for mode in [args.only] if args.only else ["plain", "deflate"]:
            floor, relay, batch = (table[f"c{clients}_{mode}_{c}"] for c in CONTENDERS)
            goals[f"c{clients}_{mode}"] = {
                "cpu_ratio": round(relay["cpu_ms_per_1k_ticks"] / max(1e-9, floor["cpu_ms_per_1k_ticks"]), 3),
                "cpu_ratio_batched": round(batch["cpu_ms_per_1k_ticks"] / max(1e-9, floor["cpu_ms_per_1k_ticks"]), 3),
                "p99_ratio": round(relay["p99_ms"] / max(1e-9, floor["p99_ms"]), 3),
                "p99_ratio_batched": round(batch["p99_ms"] / max(1e-9, floor["p99_ms"]), 3),
                "relay_lost": relay["lost"],
                "relay_batch_lost": batch["lost"],
            }
    plain = [goals[f"c{n}_{args.only or 'plain'}"] for n in outcome["counts"]]
    subscribed_kib = max(table[k]["rss_kib_per_subscribed_conn"] for k in table if "_relay" in k)
    summary["goal"] = {
        "cpu_ratio_max": GOAL_CPU_RATIO,
        "cpu_ratio_batched_max": GOAL_CPU_RATIO_BATCHED,
        "p99_ratio_max": GOAL_P99_RATIO,
        "rss_kib_per_subscribed_conn_max": GOAL_RSS_PER_SUBSCRIBED_KIB,
        "met": {
            "cpu": all(g["cpu_ratio"] <= GOAL_CPU_RATIO for g in plain),
            "cpu_batched": all(g["cpu_ratio_batched"] <= GOAL_CPU_RATIO_BATCHED for g in plain),
            "p99": all(g["p99_ratio"] <= GOAL_P99_RATIO for g in plain),
            "lost": all(g["relay_lost"] == 0 and g["relay_batch_lost"] == 0 for g in plain),
            "rss": subscribed_kib <= GOAL_RSS_PER_SUBSCRIBED_KIB,
        },
    }
    summary["ratios"] = goals
    summary["runs"] = {
        key: {name: round(value, 3) if isinstance(value, float) else value for name, value in row.items()}
        for key, row in table.items()
    }
    summary["runtime_s"] = round(time.monotonic() - started, 1)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
