"""A real ``redis-server`` on a free loopback port for one test, stopped after it.

Debian's ``redis-server`` (``.ci/run`` installs it). Without the binary the tests that
need it fail in CI (``CI`` set) and are skipped with the reason elsewhere.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.cluster import MissingBinary, binary, port_open, redis_command
from tests.app_process import free_port
from tests.cluster_harness import Proc
from tests.helpers import blocking_until

START_TIMEOUT_S = 10.0


class RedisServer(Proc):
    """The server, in its own process group (``kill``, ``pause`` and ``resume`` act on it)."""

    def __init__(self, redis_bin: str, port: int, work_dir: Path) -> None:
        super().__init__(
            "redis-server", redis_command(redis_bin, port, work_dir), dict(os.environ), work_dir / "redis.log"
        )
        self.port = port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """Start it, and return once it listens. It persists nothing, so after :meth:`kill`
        it comes back on the same port with empty memory (no streams, no lease, no term)."""
        super().start()
        try:
            blocking_until(
                lambda: port_open(self.port) or not self.alive, START_TIMEOUT_S, what="redis-server listening"
            )
            if not self.alive:
                raise self.failure("exited at start")
        except BaseException:
            self.kill()
            raise


@contextlib.contextmanager
def redis_server(work_dir: Path) -> Iterator[RedisServer]:
    try:
        redis_bin = binary("redis-server")
    except MissingBinary as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}")
        pytest.skip(f"{exc}")
    server = RedisServer(redis_bin, free_port(), work_dir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
