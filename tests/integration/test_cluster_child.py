"""deploy/cluster.Child over real processes: stop and kill end the whole group and reap it,
and a child already reaped is never signalled again (its pid may have been reused)."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from deploy.cluster import Child
from tests.helpers import blocking_until

# Prints "ready" once its SIGTERM handler is in place, then sleeps until signalled.
SLEEPER = "import signal, time\n{handler}\nprint('ready', flush=True)\ntime.sleep(60)\n"
IGNORES_TERM = "signal.signal(signal.SIGTERM, signal.SIG_IGN)"


def child(tmp_path: Path, handler: str = "") -> Child:
    argv = [sys.executable, "-c", SLEEPER.format(handler=handler)]
    return Child("sleeper", argv, dict(os.environ), tmp_path / "sleeper.log")


def started(proc: Child) -> Child:
    """``proc`` started and ready (its log, appended to on a restart, holds one more "ready")."""
    runs = proc.log().count("ready")
    proc.start()
    blocking_until(lambda: proc.log().count("ready") > runs, what=f"{proc.name} ready")
    return proc


@pytest.fixture
def signals(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Every (pgid, signal) Child sends from now on, still sent for real."""
    sent: list[tuple[int, int]] = []
    real = os.killpg

    def record(pgid: int, sig: int) -> None:
        sent.append((pgid, sig))
        real(pgid, sig)

    monkeypatch.setattr(os, "killpg", record)
    return sent


def test_stop_ends_the_child_with_sigterm_and_reaps_it(tmp_path: Path) -> None:
    proc = started(child(tmp_path))
    assert proc.alive
    assert proc.stop() == -signal.SIGTERM
    assert not proc.alive
    assert proc.exited() == -signal.SIGTERM


def test_a_child_that_ignores_sigterm_is_killed_once_the_stop_timeout_passes(tmp_path: Path) -> None:
    proc = started(child(tmp_path, IGNORES_TERM))
    assert proc.stop(timeout_s=0.5) == -signal.SIGKILL
    assert not proc.alive


def test_a_second_stop_or_kill_sends_nothing_to_a_reaped_child(tmp_path: Path, signals: list[tuple[int, int]]) -> None:
    proc = started(child(tmp_path))
    code = proc.stop()
    sent_by_first_stop = list(signals)
    assert (proc.pid, signal.SIGTERM) in sent_by_first_stop

    assert proc.stop() == code
    assert proc.kill() == code
    assert signals == sent_by_first_stop, "signalled a pid that may now be someone else's"


def test_a_restarted_child_is_stopped_again_and_its_log_keeps_both_runs(
    tmp_path: Path, signals: list[tuple[int, int]]
) -> None:
    proc = started(child(tmp_path))
    proc.stop()
    first_pid = proc.pid

    started(proc)
    assert proc.alive and proc.pid != first_pid
    assert proc.kill() == -signal.SIGKILL
    assert (proc.pid, signal.SIGKILL) in signals
    assert proc.log().count("ready") == 2


def test_a_child_never_started_has_no_exit_code(tmp_path: Path, signals: list[tuple[int, int]]) -> None:
    proc = child(tmp_path)
    assert proc.exited() is None
    assert proc.stop() is None
    assert signals == []


def test_a_restart_that_cannot_start_leaves_the_reaped_child_alone(
    tmp_path: Path, signals: list[tuple[int, int]]
) -> None:
    proc = started(child(tmp_path))
    code = proc.stop()
    sent_by_first_stop = list(signals)

    proc.argv = [str(tmp_path / "no-such-program")]
    with pytest.raises(FileNotFoundError):
        proc.start()
    assert proc.stop() == code
    assert signals == sent_by_first_stop, "signalled the old run's pid after a failed restart"
