"""A real ``redis-server`` on a free loopback port for one test, stopped after it.

Debian's ``redis-server`` (``.ci/run`` installs it). Without the binary the tests that
need it fail in CI (``CI`` set) and are skipped with the reason elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.app_process import free_port
from tests.cluster_harness import port_open, redis_command

START_TIMEOUT_S = 10.0


@dataclass
class RedisServer:
    port: int
    process: subprocess.Popen[bytes]
    command: list[str]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def pause(self) -> None:
        self.process.send_signal(19)  # SIGSTOP

    def resume(self) -> None:
        self.process.send_signal(18)  # SIGCONT

    def kill(self) -> None:
        _stop(self.process, kill=True)

    def start(self) -> None:
        """A new server on the same port: no persistence, so after :meth:`kill` it comes
        back with empty memory (no streams, no lease, no term)."""
        self.process = _start(self.command, self.port)


def _start(command: list[str], port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if port_open(port):
            return process
        if time.monotonic() > deadline or process.poll() is not None:
            _stop(process, kill=True)
            raise RuntimeError("redis-server did not start")
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes], *, kill: bool = False) -> None:
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(18)
    if kill:
        process.kill()
    else:
        process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@contextlib.contextmanager
def redis_server(work_dir: Path) -> Iterator[RedisServer]:
    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is missing: .ci/run installs Debian's redis-server")
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    port = free_port()
    command = redis_command(binary, port, work_dir)
    server = RedisServer(port, _start(command, port), command)
    try:
        yield server
    finally:
        _stop(server.process)
