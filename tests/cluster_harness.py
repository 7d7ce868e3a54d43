"""Real processes on 127.0.0.1 for cluster tests and benches (issue 11; CLUSTER.md §3).

``with cluster(work_dir, members=3) as c:`` starts, on free loopback ports:

- Debian's ``redis-server`` (``--save "" --appendonly no``), unless ``redis=False``;
- one standalone simulator, ``python -m backend_core.deriv.sim`` with its control port,
  which every member uses through ``DERIV_WS_URL``;
- ``members`` API members (``python -m tests.cluster_member``: the Runtime's API and relay
  under uvicorn, no frontend build), each with ``REDIS_URL``, ``CLUSTER_NAME``,
  ``CLUSTER_LEASE_TTL``, ``INSTANCE_ID`` and one shared SQLite ``DB_URL``;
- haproxy with ``deploy/haproxy/haproxy.cfg`` in front of them.

Until the members read ``REDIS_URL`` (the cluster wiring), they simply run standalone,
each with its own upstream connection: the harness works the same either way, and
:meth:`Cluster.roles` says which it is.

Every child runs in its own process group; :meth:`Member.kill` (SIGKILL),
:meth:`Member.pause` (SIGSTOP), :meth:`Member.resume` (SIGCONT) and :meth:`Member.stop`
(SIGTERM, bounded wait) act on one of them (``deploy/cluster.py``'s ``Child``, which
``make cluster`` starts its processes with), and leaving the ``with`` block stops them all,
bounded in time. Without ``redis-server`` or ``haproxy`` the caller is skipped with the
reason (failed in CI, where ``.ci/run`` installs both).
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from deploy.cluster import (
    HAPROXY_CFG,
    Child,
    binary,
    haproxy_env,
    port_open,
    redis_command,
    simulator_command,
)
from tests.app_process import free_port
from tests.helpers import blocking_until

ROOT = Path(__file__).resolve().parents[1]
MAX_MEMBERS = 5  # servers in the haproxy template (SERVER_1..SERVER_5)
START_TIMEOUT_S = 60.0
CONTROL_TIMEOUT_S = 5.0
# How often a wait looks again (each look asks a process: a port, haproxy's socket).
POLL_S = 0.05
DEFAULT_SYMBOLS = "R_100,R_50"


class Proc(Child):
    """A :class:`deploy.cluster.Child` that a test can also pause (SIGSTOP) and resume."""

    def pause(self) -> None:
        self.signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal(signal.SIGCONT)

    def failure(self, what: str) -> RuntimeError:
        return RuntimeError(f"{self.name} {what} (exit code {self.exited()}):\n{self.log()[-3000:]}")


class Member(Proc):
    """One app instance: ``server`` is its name in haproxy (s1, s2, ...)."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        log_path: Path,
        *,
        port: int,
        instance_id: str,
        server: str,
    ) -> None:
        super().__init__(name, argv, env, log_path)
        self.port = port
        self.instance_id = instance_id
        self.server = server

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def ready(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200
        return False

    def wait_ready(self, timeout_s: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if not self.alive:
                raise self.failure("exited before it was ready")
            if time.monotonic() > deadline:
                raise self.failure(f"was not ready within {timeout_s}s")
            time.sleep(0.1)

    def role(self) -> str:
        """``leader``/``follower``/``degraded`` from /health/detailed's ``cluster:mode``
        check once the cluster wiring reports it; ``single`` before; ``down`` if it does
        not answer."""
        try:
            body = httpx.get(f"{self.url}/health/detailed", timeout=2.0).json()
        except (httpx.HTTPError, ValueError):
            return "down"
        for entry in body.get("checks", {}).get("cluster:mode", []):
            value = entry.get("observedValue")
            if isinstance(value, str):
                return value
        return "single"


@dataclass
class Cluster:
    work_dir: Path
    simulator: Proc
    simulator_port: int
    control_port: int
    members: list[Member]
    haproxy: Proc
    haproxy_port: int
    stats_socket: Path
    redis: Proc | None = None
    redis_port: int | None = None
    member_env: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ addresses

    @property
    def url(self) -> str:
        """The cluster's address, through haproxy."""
        return f"http://127.0.0.1:{self.haproxy_port}"

    @property
    def ws_url(self) -> str:
        """The relay through haproxy."""
        return f"ws://127.0.0.1:{self.haproxy_port}/api/v1/ws"

    @property
    def upstream_url(self) -> str:
        return f"ws://127.0.0.1:{self.simulator_port}/websockets/v3"

    @property
    def redis_url(self) -> str | None:
        return None if self.redis_port is None else f"redis://127.0.0.1:{self.redis_port}/0"

    # ------------------------------------------------------------------ simulator

    def control(self, action: str, **body: object) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.control_port}/control/{action}"
        if action == "stats":
            response = httpx.get(url, timeout=CONTROL_TIMEOUT_S)
        else:
            response = httpx.post(url, json=body, timeout=CONTROL_TIMEOUT_S)
        response.raise_for_status()
        return dict(response.json())

    def stats(self) -> dict[str, Any]:
        """The simulator's counters: ``connection_count``, ``handshake_attempts``..."""
        return dict(self.control("stats")["result"])

    def upstream_epochs(self, symbol: str, count: int = 5000) -> list[int]:
        """The upstream's own epochs of ``symbol`` (its newest ``count``), via ``ticks_history``.

        Opens one more connection to the simulator: call it after sampling its stats."""
        from websockets.sync.client import connect

        request = {"ticks_history": symbol, "end": "latest", "count": count, "style": "ticks", "req_id": 1}
        with connect(f"{self.upstream_url}?app_id=1089", open_timeout=5, close_timeout=1) as ws:
            ws.send(json.dumps(request))
            for _ in range(100):
                frame = json.loads(ws.recv(timeout=CONTROL_TIMEOUT_S))
                if frame.get("msg_type") == "history":
                    return [int(t) for t in frame["history"]["times"]]
                if frame.get("error"):
                    raise RuntimeError(f"ticks_history {symbol}: {frame['error']}")
        raise RuntimeError(f"ticks_history {symbol}: no answer")

    # ------------------------------------------------------------------ haproxy

    def haproxy_command(self, command: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(CONTROL_TIMEOUT_S)
            sock.connect(str(self.stats_socket))
            sock.sendall(command.encode() + b"\n")
            chunks = []
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def server_states(self, backend: str = "app") -> dict[str, str]:
        """haproxy's view of each server of ``backend``: ``UP``, ``DOWN``, ``UP 1/2``..."""
        text = self.haproxy_command("show stat").lstrip("# ")
        rows = csv.DictReader(io.StringIO(text))
        return {
            row["svname"]: row["status"]
            for row in rows
            if row["pxname"] == backend and row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def wait_server_state(self, member: Member, state: str, timeout_s: float = 10.0) -> None:
        """Until haproxy reports exactly ``state`` (``UP``: passed ``rise`` checks in a row;
        ``DOWN``: failed ``fall``) for ``member``."""
        blocking_until(
            lambda: self.server_states().get(member.server) == state,
            timeout_s,
            what=f"haproxy marking {member.server} {state}",
            poll_s=POLL_S,
        )

    # ------------------------------------------------------------------ members

    def member(self, server: str) -> Member:
        """The member haproxy calls ``server`` (the X-Served-By header's value)."""
        return next(m for m in self.members if m.server == server)

    def roles(self) -> dict[str, str]:
        return {m.server: (m.role() if m.alive else "down") for m in self.members}

    def leader(self) -> Member | None:
        """The member that reports itself leader, or None (none, or no cluster wiring)."""
        return next((m for m in self.members if m.alive and m.role() == "leader"), None)

    def restart(self, member: Member, wait: bool = True) -> None:
        """Start a stopped or killed member again (same port and settings, new INSTANCE_ID)."""
        if member.alive:
            member.stop()
        member.instance_id = f"{member.server}-{os.urandom(3).hex()}"
        member.env["INSTANCE_ID"] = member.instance_id
        member.start()
        if wait:
            member.wait_ready()

    def redis_stop(self) -> None:
        assert self.redis is not None, "started without redis"
        self.redis.stop()

    def redis_start(self) -> None:
        assert self.redis is not None and self.redis_port is not None, "started without redis"
        self.redis.start()
        blocking_until(
            lambda: port_open(self.redis_port or 0), START_TIMEOUT_S, what="redis-server listening", poll_s=POLL_S
        )

    def close(self) -> None:
        """Stop everything: members first (their graceful stop), then haproxy, simulator, redis."""
        for proc in (*self.members, self.haproxy, self.simulator, *([self.redis] if self.redis else [])):
            with contextlib.suppress(Exception):
                proc.stop()


def _python() -> str:
    venv = ROOT / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def member_settings(
    cluster_env: Mapping[str, str], simulator_port: int, redis_url: str | None, db_url: str
) -> dict[str, str]:
    env = {
        "DERIV_WS_URL": f"ws://127.0.0.1:{simulator_port}/websockets/v3",
        "DERIV_SYMBOLS": DEFAULT_SYMBOLS,
        "DB_URL": db_url,
        "CLUSTER_NAME": "harness",
        "CLUSTER_LEASE_TTL": "2",
        "TRUSTED_PROXIES": "127.0.0.1",  # haproxy
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    env.update(cluster_env)
    return env


@contextlib.contextmanager
def cluster(
    work_dir: Path,
    members: int = 3,
    *,
    redis: bool = True,
    time_scale: float = 1.0,
    seed: int = 1,
    env: Mapping[str, str] | None = None,
    member_env: Mapping[int, Mapping[str, str | None]] | None = None,
) -> Iterator[Cluster]:
    """Start the whole cluster and yield it once haproxy sees every member UP; stop it after.

    ``env`` is added to every member's settings; ``member_env[i]`` to member ``i``'s only
    (a value of None removes the setting: ``{2: {"REDIS_URL": None}}`` makes the third
    member a standalone instance beside the cluster).
    """
    if not 1 <= members <= MAX_MEMBERS:
        raise ValueError(f"1 to {MAX_MEMBERS} members (the haproxy template's servers)")
    haproxy_bin = binary("haproxy")
    redis_bin = binary("redis-server") if redis else None
    work_dir.mkdir(parents=True, exist_ok=True)
    base_env = {k: v for k, v in os.environ.items() if not k.startswith(("DERIV_", "REDIS_", "CLUSTER_"))}
    started: list[Proc] = []
    made: Cluster | None = None
    try:
        redis_proc = redis_port = None
        if redis_bin is not None:
            redis_port = free_port()
            redis_proc = Proc(
                "redis",
                redis_command(redis_bin, redis_port, work_dir),
                base_env,
                work_dir / "redis.log",
            )
            redis_proc.start()
            started.append(redis_proc)
        simulator_port, control_port = free_port(), free_port()
        simulator_argv = simulator_command(_python(), simulator_port, control_port, time_scale)
        simulator_argv += ["--seed", str(seed), "--log-level", "WARNING"]
        simulator = Proc(
            "simulator",
            simulator_argv,
            {**base_env, "PYTHONUNBUFFERED": "1"},
            work_dir / "simulator.log",
        )
        simulator.start()
        started.append(simulator)
        redis_url = None if redis_port is None else f"redis://127.0.0.1:{redis_port}/0"
        db_url = f"sqlite:///{work_dir / 'status.db'}"
        shared = member_settings(env or {}, simulator_port, redis_url, db_url)
        member_list: list[Member] = []
        for i in range(members):
            port = free_port()
            server = f"s{i + 1}"
            instance_id = f"{server}-{os.urandom(3).hex()}"
            settings: dict[str, str] = {**base_env, **shared, "INSTANCE_ID": instance_id}
            for name, value in (member_env or {}).get(i, {}).items():
                if value is None:
                    settings.pop(name, None)
                else:
                    settings[name] = value
            member_list.append(
                Member(
                    f"member {server}",
                    [_python(), "-m", "tests.cluster_member", "--port", str(port)],
                    settings,
                    work_dir / f"member-{server}.log",
                    port=port,
                    instance_id=instance_id,
                    server=server,
                )
            )
        stats_socket = work_dir / "haproxy.sock"
        haproxy_port = free_port()
        balancer_env = haproxy_env(base_env, haproxy_port, stats_socket, [m.port for m in member_list])
        haproxy = Proc("haproxy", [haproxy_bin, "-db", "-f", str(HAPROXY_CFG)], balancer_env, work_dir / "haproxy.log")
        if redis_proc is not None:
            blocking_until(
                lambda: port_open(redis_port or 0), START_TIMEOUT_S, what="redis-server listening", poll_s=POLL_S
            )
        blocking_until(
            lambda: port_open(control_port), START_TIMEOUT_S, what="the simulator's control port", poll_s=POLL_S
        )
        # The first member creates the shared database's tables; the others start once it has.
        member_list[0].start()
        started.append(member_list[0])
        member_list[0].wait_ready()
        for member in member_list[1:]:
            member.start()
            started.append(member)
        for member in member_list[1:]:
            member.wait_ready()
        haproxy.start()
        started.append(haproxy)
        made = Cluster(
            work_dir,
            simulator,
            simulator_port,
            control_port,
            member_list,
            haproxy,
            haproxy_port,
            stats_socket,
            redis_proc,
            redis_port,
            shared,
        )
        blocking_until(lambda: stats_socket.exists(), START_TIMEOUT_S, what="haproxy's stats socket", poll_s=POLL_S)
        for member in member_list:
            made.wait_server_state(member, "UP", START_TIMEOUT_S)
        yield made
    finally:
        if made is not None:
            made.close()
        else:
            for proc in reversed(started):
                with contextlib.suppress(Exception):
                    proc.stop()


# ---------------------------------------------------------------------------- relay client


@dataclass
class RelayClient:
    """A relay client through haproxy that reconnects with ``resume`` (docs/websocket-api.md).

    Records every tick frame it receives per symbol (epoch, replayed?, monotonic receipt
    time, the member that served the connection) so a bench can count lost and duplicated
    ticks and measure gaps. ``run`` is bounded by ``stop`` (an asyncio.Event).
    """

    url: str
    symbols: list[str]
    ticks: dict[str, list[tuple[int, bool, float, str]]] = field(default_factory=dict)
    connections: list[tuple[float, str]] = field(default_factory=list)
    disconnects: list[float] = field(default_factory=list)
    truncated: int = 0
    last: dict[str, int] = field(default_factory=dict)
    on_tick: Callable[[dict[str, Any], float], None] | None = None

    async def run(self, stop: asyncio.Event, max_connections: int = 1000) -> None:
        from websockets.asyncio.client import connect

        for _ in range(max_connections):
            if stop.is_set():
                return
            try:
                async with connect(self.url, open_timeout=5, close_timeout=1, compression=None) as ws:
                    served = ws.response.headers.get("X-Served-By", "?") if ws.response else "?"
                    self.connections.append((time.monotonic(), served))
                    request: dict[str, Any] = {"action": "subscribe", "symbols": self.symbols, "id": "s"}
                    if self.last:
                        request["resume"] = dict(self.last)
                    await ws.send(json.dumps(request))
                    await self._receive(ws, stop, served)
            except (OSError, TimeoutError) as exc:
                del exc
            except Exception as exc:  # websockets' ConnectionClosed, InvalidStatus...
                if not type(exc).__module__.startswith("websockets"):
                    raise
            self.disconnects.append(time.monotonic())
            if not stop.is_set():
                await asyncio.sleep(0.05)

    async def _receive(self, ws: Any, stop: asyncio.Event, served: str) -> None:
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while True:
                getter = asyncio.ensure_future(ws.recv())
                done, _ = await asyncio.wait({getter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    await asyncio.gather(getter, return_exceptions=True)
                    return
                now = time.monotonic()
                frame = json.loads(getter.result())
                kind = frame.get("type")
                if kind == "tick":
                    symbol, epoch = frame["symbol"], int(frame["epoch"])
                    self.ticks.setdefault(symbol, []).append((epoch, bool(frame.get("replay")), now, served))
                    self.last[symbol] = max(epoch, self.last.get(symbol, 0))
                    if self.on_tick is not None:
                        self.on_tick(frame, now)
                elif kind == "subscribed":
                    self.truncated += sum(1 for r in frame.get("resume", {}).values() if r.get("truncated"))
                elif kind == "ping":
                    await ws.send('{"type": "pong"}')
        finally:
            stopper.cancel()

    def lost_and_duplicated(self, symbol: str, first: int, last: int, expected: list[int]) -> tuple[int, int]:
        """Against the upstream's own epochs ``expected`` in [first, last]: how many the client
        never got, and how many it got more than once."""
        got = [e for e, _, _, _ in self.ticks.get(symbol, []) if first <= e <= last]
        wanted = {e for e in expected if first <= e <= last}
        return len(wanted - set(got)), len(got) - len(set(got))
