"""``make cluster``: redis-server, one simulator, three instances and haproxy on 127.0.0.1.

    python deploy/cluster.py [--port 3000] [--instances 3] [--time-scale 1] [--rebuild]

What it starts, each child in its own process group, logs in a temporary folder:

- Debian's ``redis-server`` on ``--redis-port`` (default PORT+10), no persistence;
- the Deriv simulator, standalone (``python -m backend_core.deriv.sim``), which every
  instance uses through ``DERIV_WS_URL`` (its control port is printed);
- ``--instances`` app instances on PORT+1, PORT+2, ...: the page and the API on one port,
  served as the Dockerfile's CMD serves them (gunicorn, one uvicorn worker, the frontend
  built once by ``reflex export`` and mounted by every instance), each with ``REDIS_URL``,
  ``CLUSTER_NAME``, ``INSTANCE_ID`` and one shared SQLite ``DB_URL`` (fine on one
  machine; several machines need PostgreSQL, see docs/operations.md);
- haproxy on PORT with deploy/haproxy/haproxy.cfg, health-checking ``/readyz``.

It prints the URL once every instance is ready, and stops everything on Ctrl-C or
SIGTERM: the instances first (their graceful shutdown), then haproxy, the simulator and
Redis, each bounded in time (SIGKILL after it). An instance that dies is reported and
left out (haproxy routes around it); Redis, the simulator or haproxy dying stops it all.

The page's Reflex state stays in each instance's memory (``REFLEX_STATE_MANAGER_MODE=
memory``) unless ``--reflex-redis`` puts it in Redis database 1 (CLUSTER.md §2.7).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parents[1]
HAPROXY_CFG = ROOT / "deploy" / "haproxy" / "haproxy.cfg"
STATIC = ROOT / ".web" / "build" / "client"
BUILD_STAMP = STATIC / ".cluster-build"
# What the frontend build depends on: a change in these rebuilds it.
BUILD_INPUTS = ("rxapp", "assets", "rxconfig.py", "reflex.lock")
MAX_INSTANCES = 5  # servers in the haproxy template
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
POLL_S = 0.5


class MissingBinary(RuntimeError):
    """redis-server or haproxy is not installed."""


class Child:
    """One process in its own process group, its output appended to ``log_path``.

    ``start`` may be called again once it has stopped (a restart, on the same log). Every
    signal goes to the whole group; ``stop`` and ``kill`` also end whatever the group left
    behind, and reap it, each bounded in time. The test harness (tests/cluster_harness.py)
    starts its cluster with this class too.
    """

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        # Open exactly while a started process is not yet reaped. Once reaped, its pid (and
        # process group id) may belong to someone else: nothing more is sent to it.
        self._log: IO[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        try:
            process = subprocess.Popen(
                self.argv,
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except BaseException:
            log.close()  # nothing started: the previous run, if any, stays reaped
            raise
        self._log, self.process = log, process

    @property
    def pid(self) -> int:
        assert self.process is not None, f"{self.name} was never started"
        return self.process.pid

    def exited(self) -> int | None:
        """Its exit code once it has ended; None while it runs or before it started."""
        return None if self.process is None else self.process.poll()

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def signal(self, sig: int) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """SIGCONT (a paused child could not act) and SIGTERM, wait up to ``timeout_s``,
        then SIGKILL; returns the exit code (None if it never started)."""
        self.signal(signal.SIGCONT)
        self.signal(signal.SIGTERM)
        return self._reap(timeout_s)

    def kill(self) -> int | None:
        """SIGKILL (kill -9) the group and reap it."""
        self.signal(signal.SIGKILL)
        return self._reap(STOP_TIMEOUT_S)

    def _reap(self, timeout_s: float) -> int | None:
        if self.process is None:
            return None
        if self._log is None:  # reaped already
            return self.process.returncode
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            print(f"  {self.name} did not stop within {timeout_s:g}s: killed", file=sys.stderr, flush=True)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever the group left behind
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        self._log.close()
        self._log = None
        return self.process.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def tail(self, lines: int = 20) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


def binary(name: str) -> str:
    """The path of ``name`` (also looked up in /usr/sbin, where Debian puts haproxy)."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin")
    if found is None:
        raise MissingBinary(f"{name} is not installed (on Debian: apt-get install {name}; .ci/run installs it)")
    return found


def redis_command(redis_bin: str, port: int, work_dir: Path) -> list[str]:
    """``redis-server`` on 127.0.0.1:``port`` that persists nothing (a restart comes back
    empty: no streams, no lease, no term), its files in ``work_dir``."""
    command = [redis_bin, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    return [*command, "--dir", str(work_dir)]


def simulator_command(python: str, port: int, control_port: int, time_scale: float) -> list[str]:
    """The standalone Deriv simulator on ``port``, its control interface on ``control_port``."""
    command = [python, "-m", "backend_core.deriv.sim", "--port", str(port), "--control-port", str(control_port)]
    return [*command, "--time-scale", str(time_scale)]


def haproxy_env(base: dict[str, str], port: int, stats_socket: Path, servers: Sequence[int]) -> dict[str, str]:
    """What deploy/haproxy/haproxy.cfg reads: its port, its stats socket, and the instances'
    ports as SERVER_1, SERVER_2, ... (a server the template has but is not given stays unused)."""
    return {
        **base,
        "HAPROXY_BIND": f"127.0.0.1:{port}",
        "HAPROXY_STATS": str(stats_socket),
        **{f"SERVER_{i}": f"127.0.0.1:{server}" for i, server in enumerate(servers, 1)},
    }


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


def ready(port: int) -> bool:
    with (
        contextlib.suppress(OSError),
        urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as response,
    ):
        return bool(response.status == 200)
    return False


def needs_build(api_url: str) -> bool:
    if not (STATIC / "index.html").exists() or not BUILD_STAMP.exists():
        return True
    if BUILD_STAMP.read_text().strip() != api_url:
        return True
    built = BUILD_STAMP.stat().st_mtime
    if (STATIC / "index.html").stat().st_mtime > built:
        return True  # built again since, by `make run` (for its own port) or `reflex export`
    for name in BUILD_INPUTS:
        path = ROOT / name
        files = path.rglob("*") if path.is_dir() else [path]
        if any(f.is_file() and f.stat().st_mtime > built for f in files):
            return True
    return False


def build_frontend(api_url: str, env: dict[str, str]) -> None:
    """The page, built once for every instance (the Dockerfile's build step, in place)."""
    print(f"building the page once for {api_url} (reflex export; a minute or two)...", flush=True)
    command = ["reflex", "export", "--frontend-only", "--no-zip", "--env", "prod"]
    done = subprocess.run(command, cwd=ROOT, env={**env, "REFLEX_API_URL": api_url}, check=False)
    if done.returncode != 0 or not (STATIC / "index.html").exists():
        raise SystemExit(f"make cluster: the frontend build failed ({' '.join(command)})")
    BUILD_STAMP.write_text(api_url + "\n")


def instance_env(base: dict[str, str], args: argparse.Namespace, work: Path, number: int) -> dict[str, str]:
    env = {
        **base,
        # What `reflex run --env prod` sets, as in the Dockerfile: serve the prebuilt page.
        "REFLEX_ENV_MODE": "prod",
        "__REFLEX_SKIP_COMPILE": "true",
        "__REFLEX_MOUNT_FRONTEND_COMPILED_APP": "true",
        "REFLEX_CHECK_LATEST_VERSION": "false",
        "PYTHONUNBUFFERED": "1",
        "DERIV_WS_URL": f"ws://127.0.0.1:{args.simulator_port}/websockets/v3",
        "REDIS_URL": f"redis://127.0.0.1:{args.redis_port}/0",
        "CLUSTER_NAME": args.cluster_name,
        "INSTANCE_ID": f"instance-{number}-{os.urandom(3).hex()}",
        "DB_URL": base.get("DB_URL") or f"sqlite:///{work / 'status.db'}",
        # Every request arrives from haproxy on loopback: its X-Forwarded-For names the
        # client for the API's per-client rate limit.
        "TRUSTED_PROXIES": base.get("TRUSTED_PROXIES") or "127.0.0.1",
    }
    if args.reflex_redis:
        env["REFLEX_REDIS_URL"] = f"redis://127.0.0.1:{args.redis_port}/1?socket_connect_timeout=2&socket_timeout=10"
    else:
        env["REFLEX_STATE_MANAGER_MODE"] = "memory"
    return env


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python deploy/cluster.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "3000")), help="haproxy's port")
    parser.add_argument("--instances", type=int, default=3, help=f"app instances (1 to {MAX_INSTANCES})")
    parser.add_argument("--redis-port", type=int, default=None, help="default: PORT+10")
    parser.add_argument("--simulator-port", type=int, default=None, help="default: PORT+11 (control: PORT+12)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="the simulator's time scale")
    parser.add_argument("--cluster-name", default="deriv-status")
    parser.add_argument("--reflex-redis", action="store_true", help="keep the page's Reflex state in Redis db 1")
    parser.add_argument("--rebuild", action="store_true", help="build the page even if a build is up to date")
    args = parser.parse_args(argv)
    if not 1 <= args.instances <= MAX_INSTANCES:
        parser.error(f"--instances must be 1 to {MAX_INSTANCES}")
    args.redis_port = args.redis_port or args.port + 10
    args.simulator_port = args.simulator_port or args.port + 11
    args.control_port = args.simulator_port + 1
    args.instance_ports = [args.port + 1 + i for i in range(args.instances)]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        redis_bin, haproxy_bin = binary("redis-server"), binary("haproxy")
    except MissingBinary as exc:
        raise SystemExit(f"make cluster: {exc}") from None
    ports = [args.port, args.redis_port, args.simulator_port, args.control_port, *args.instance_ports]
    taken = [p for p in ports if not port_free(p)]
    if taken:
        raise SystemExit(f"make cluster: port(s) {', '.join(map(str, taken))} already in use (try PORT=...)")
    base = {k: v for k, v in os.environ.items() if k not in ("DERIV_WS_URL", "REDIS_URL", "INSTANCE_ID")}
    python = sys.executable
    api_url = f"http://localhost:{args.port}"
    if args.rebuild or needs_build(api_url):
        build_frontend(api_url, base)
    work = Path(tempfile.mkdtemp(prefix="deriv-cluster-"))
    children: list[Child] = []
    stopping = False

    def on_signal(sig: int, frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def wait_for(what: str, check: Callable[[], bool], essential: list[Child]) -> bool:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not stopping:
            if check():
                return True
            for child in essential:
                if child.exited() is not None:
                    print(f"make cluster: {child.name} exited:\n{child.tail()}", file=sys.stderr)
                    return False
            if time.monotonic() > deadline:
                print(f"make cluster: {what} not within {START_TIMEOUT_S:.0f}s", file=sys.stderr)
                return False
            time.sleep(POLL_S)
        return False

    code = 1
    try:
        redis = Child("redis-server", redis_command(redis_bin, args.redis_port, work), base, work / "redis.log")
        simulator_argv = simulator_command(python, args.simulator_port, args.control_port, args.time_scale)
        simulator = Child("simulator", simulator_argv, {**base, "PYTHONUNBUFFERED": "1"}, work / "simulator.log")
        for child in (redis, simulator):
            children.append(child)
            child.start()
        if not wait_for("redis-server", lambda: port_open(args.redis_port), [redis]):
            return 1
        if not wait_for("the simulator", lambda: port_open(args.simulator_port), [simulator]):
            return 1
        instances: list[tuple[Child, int]] = []
        for number, port in enumerate(args.instance_ports, 1):
            env = instance_env(base, args, work, number)
            check = subprocess.run([python, "-m", "backend_core.config"], cwd=ROOT, env=env, check=False)
            if check.returncode != 0:
                return 2  # the settings' own one-line message is above
            gunicorn = [python, "-m", "gunicorn", "--preload", "--workers", "1"]
            gunicorn += ["--worker-class", "uvicorn.workers.UvicornH11Worker", "--graceful-timeout", "25"]
            gunicorn += ["--bind", f"127.0.0.1:{port}", "rxapp.rxapp:app()"]
            child = Child(f"instance {number} (:{port})", gunicorn, env, work / f"instance-{number}.log")
            children.append(child)
            child.start()
            instances.append((child, port))
            # The first creates the shared database's tables; the others start once it has.
            if number == 1 and not wait_for(child.name, functools.partial(ready, port), [child, redis, simulator]):
                return 1
        for child, port in instances[1:]:
            if not wait_for(child.name, functools.partial(ready, port), [child, redis, simulator]):
                return 1
        balancer_env = haproxy_env(base, args.port, work / "haproxy.sock", [port for _, port in instances])
        haproxy = Child("haproxy", [haproxy_bin, "-db", "-f", str(HAPROXY_CFG)], balancer_env, work / "haproxy.log")
        children.append(haproxy)
        haproxy.start()
        if not wait_for("haproxy", lambda: ready(args.port), [haproxy]):
            return 1
        print(f"\ndeployed: {api_url}  ({args.instances} instances behind haproxy; Ctrl-C stops everything)")
        print(f"  instances: {', '.join(f'http://127.0.0.1:{p}' for _, p in instances)}")
        print(f"  redis: redis://127.0.0.1:{args.redis_port}/0   simulator control: "
              f"http://127.0.0.1:{args.control_port}/control/<action>")  # fmt: skip
        print(f"  logs: {work}", flush=True)
        reported: set[str] = set()
        while not stopping:
            for child in (redis, simulator, haproxy):
                if child.exited() is not None:
                    print(f"make cluster: {child.name} exited ({child.exited()}):\n{child.tail()}", file=sys.stderr)
                    return 1
            for child, _ in instances:
                if child.exited() is not None and child.name not in reported:
                    reported.add(child.name)
                    print(f"make cluster: {child.name} exited ({child.exited()}); haproxy routes around it")
            time.sleep(POLL_S)
        code = 0
        return code
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("stopping...", flush=True)
        # Instances first (graceful: relay clients get 1001, history flushed), in parallel.
        instance_children = [c for c in children if c.name.startswith("instance")]
        for child in instance_children:
            child.signal(signal.SIGTERM)
        for child in instance_children:
            child.stop()
        for child in reversed([c for c in children if c not in instance_children]):
            child.stop()
        if code == 0:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"logs kept in {work}", file=sys.stderr)
        print("stopped", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
