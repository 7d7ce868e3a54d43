"""Reflex's state behind a balancer, against a real redis-server on 127.0.0.1 (CLUSTER.md 2.7).

With ``REDIS_URL`` set, this project's ``rxconfig.py`` puts Reflex's state manager and
its socket registry on that Redis, on the next database index, with socket timeouts; and
a Redis that hangs (SIGSTOP) fails a state access with the client's own timeout instead
of hanging it. Reflex is driven in a process of its own
(:mod:`tests.integration.reflex_state_probe`), exactly as a server worker builds it.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import redis

from tests.app_process import ROOT
from tests.integration.redis_server import RedisServer, redis_server

# Reflex's import and set-up take seconds on a loaded machine; this only stops a broken
# probe from hanging the run (the probe bounds each access itself).
PROBE_ANSWER_TIMEOUT_S = 120.0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    with redis_server(tmp_path) as running:
        yield running


class Probe:
    def __init__(self, env: dict[str, str], tmp_path: Path) -> None:
        base = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "REFLEX_REDIS_URL")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.reflex_state_probe"],
            cwd=ROOT,
            # Without Redis, Reflex's dev default keeps states on disk: in this test's
            # folder, not the checkout's .states/ (a second run would count on from the first).
            env={
                **base,
                "DB_URL": f"sqlite:///{tmp_path / 'status.db'}",
                "REFLEX_STATES_WORKDIR": str(tmp_path / "states"),
                **env,
            },
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self._lines: queue.Queue[str] = queue.Queue(maxsize=100)
        assert self.process.stdout is not None
        self._reader = threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True)
        self._reader.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self._lines.put(line)

    def answer(self) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=PROBE_ANSWER_TIMEOUT_S)
        except queue.Empty:
            raise AssertionError("the probe did not answer") from None
        return dict(json.loads(line))

    def access(self) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write("access\n")
        self.process.stdin.flush()
        return self.answer()

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self._reader.join(timeout=10)  # ends with the process's output
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def probe_factory(tmp_path: Path) -> Iterator[Any]:
    probes: list[Probe] = []

    def start(env: dict[str, str]) -> Probe:
        probes.append(Probe(env, tmp_path))
        return probes[-1]

    yield start
    for probe in probes:
        probe.close()


def test_redis_url_puts_reflex_state_on_the_next_database(server: RedisServer, probe_factory: Any) -> None:
    probe = probe_factory({"REDIS_URL": server.url})  # redis://127.0.0.1:<port>/0
    built = probe.answer()
    assert built == {
        "state_manager": "StateManagerRedis",
        "token_manager": "RedisTokenManager",  # the socket registry is shared too: no sticky sessions
        "db": 1,
        "socket_timeout": 10.0,
        "socket_connect_timeout": 2.0,
    }
    assert probe.access()["count"] == 1
    assert probe.access()["count"] == 2
    ours = redis.Redis(port=server.port, db=0, socket_timeout=5)
    reflexs = redis.Redis(port=server.port, db=1, socket_timeout=5)
    try:
        assert ours.dbsize() == 0, "Reflex's keys must never meet ours"
        assert any(b"probe-tab" in key for key in reflexs.keys("*"))
    finally:
        ours.close()
        reflexs.close()


def test_without_redis_url_nothing_changes(probe_factory: Any) -> None:
    probe = probe_factory({})
    built = probe.answer()
    # Reflex's own default for the environment (memory in prod, disk in dev).
    assert built["state_manager"] in ("StateManagerMemory", "StateManagerDisk")
    assert built["token_manager"] == "LocalTokenManager"
    assert probe.access()["count"] == 1


def test_a_hung_redis_fails_a_state_access_with_the_clients_timeout_and_it_recovers(
    server: RedisServer, probe_factory: Any
) -> None:
    # Timeouts the URL names are kept (short here, so the test takes seconds, not 20 s).
    probe = probe_factory({"REDIS_URL": f"{server.url}?socket_timeout=1&socket_connect_timeout=1"})
    assert probe.answer()["socket_timeout"] == 1.0
    assert probe.access()["ok"] is True
    server.pause()
    try:
        hung = probe.access()
    finally:
        server.resume()
    assert hung["ok"] is False
    # The redis client's own timeout, not the probe's guard ("hung") firing.
    assert hung["error"] == "redis.exceptions.TimeoutError", hung
    again = probe.access()
    assert again["ok"] is True and again["count"] == 2
