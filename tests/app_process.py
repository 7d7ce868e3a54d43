"""Start the real app the way the README does (``make run``) on free ports, and stop it.

Used by the integration test of the app process and by the end-to-end tests. The app
runs in its own process group so that stopping it (SIGTERM to the group, as a process
manager would) can be checked to leave no process behind.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parents[1]
# The first start on a fresh clone installs the frontend's npm packages and builds it.
START_TIMEOUT_S = 600.0
# Graceful shutdown closes relay clients, the upstream and the simulator: seconds.
STOP_TIMEOUT_S = 30.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class RunningApp:
    base_url: str
    port: int
    simulator_port: int
    control_port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    log_file: IO[bytes]
    env: dict[str, str] = field(default_factory=dict)

    @property
    def control_url(self) -> str:
        return f"http://127.0.0.1:{self.control_port}/control"

    def control(self, action: str, **body: object) -> dict[str, object]:
        response = httpx.post(f"{self.control_url}/{action}", json=body, timeout=10)
        response.raise_for_status()
        return dict(response.json())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def group_processes(pgid: int) -> list[str]:
    """Processes still alive in the process group (from /proc), as 'pid cmd' lines."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            state, pgrp = fields[0], int(fields[2])
            if pgrp == pgid and state != "Z":
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                alive.append(f"{entry.name} {cmd.strip()}")
        except (OSError, ValueError):
            continue
    return alive


def start_app(
    command: list[str], log_path: Path, port: int, env: dict[str, str] | None = None, unset: tuple[str, ...] = ()
) -> RunningApp:
    """Start ``command``; ``env`` adds to this process's environment, ``unset`` takes names out."""
    simulator_port, control_port = free_port(), free_port()
    full_env = {
        **{name: value for name, value in os.environ.items() if name not in unset},
        "DERIV_SIMULATOR_PORT": str(simulator_port),
        "DERIV_SIMULATOR_CONTROL_PORT": str(control_port),
        **(env or {}),
    }
    log_file = log_path.open("wb")
    process = subprocess.Popen(
        command, cwd=ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
    )
    app = RunningApp(
        f"http://127.0.0.1:{port}", port, simulator_port, control_port, process, log_path, log_file, full_env
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            log_file.close()
            raise RuntimeError(f"the app exited with {process.returncode} before it answered:\n{app.log()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{app.base_url}/health", timeout=2).status_code in (200, 503):
                return app
        time.sleep(0.5)
    stop_app(app)
    raise TimeoutError(f"the app did not answer /health within {START_TIMEOUT_S}s:\n{app.log()[-3000:]}")


def stop_app(app: RunningApp) -> list[str]:
    """SIGTERM the app's process group; returns what was still alive after the grace period."""
    pgid = app.process.pid
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline and group_processes(pgid):
        time.sleep(0.2)
    leftovers = group_processes(pgid)
    if leftovers:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        app.process.wait(timeout=5)
    app.log_file.close()
    return leftovers


def restart_app(app: RunningApp) -> list[str]:
    """Stop ``app`` and start ``make run`` again on the same port and settings (same DB_URL).

    ``app`` is updated in place (new process, log, simulator and control ports), so a fixture that
    yielded it still stops the running one. Returns what the stop left alive.
    """
    leftovers = stop_app(app)
    fresh = ("DERIV_SIMULATOR_PORT", "DERIV_SIMULATOR_CONTROL_PORT")
    env = {name: value for name, value in app.env.items() if name not in fresh}
    log_path = app.log_path.with_name(f"{app.log_path.stem}.restarted{app.log_path.suffix}")
    again = start_app(["make", "run", f"PORT={app.port}"], log_path, app.port, env)
    for name in ("base_url", "simulator_port", "control_port", "process", "log_path", "log_file", "env"):
        setattr(app, name, getattr(again, name))
    return leftovers


@contextlib.contextmanager
def running_app(tmp_dir: Path, env: dict[str, str] | None = None) -> Iterator[RunningApp]:
    """``make run`` on a free port (prod build, page and API on one port)."""
    port = free_port()
    app = start_app(["make", "run", f"PORT={port}"], tmp_dir / "app.log", port, env)
    try:
        yield app
    finally:
        stop_app(app)
