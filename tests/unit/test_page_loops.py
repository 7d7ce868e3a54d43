"""The status page's live loops behind a balancer (CLUSTER.md 2.7): each process keeps its
own ``{token: task}`` registry, the newest loop of a page is its loop, and a loop ends when
its page's socket is no longer on *this* process, when a newer loop took over, or when it
has been cancelled (even if the cancellation was absorbed below it).

Reflex's own token manager (the in-memory one; the Redis one keeps the same records and
also caches other instances' records) stands for "where the sockets are"; the loop runs
on a Runtime with a fake clock. Nothing is started, no sockets, no real sleeps.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from reflex.utils.token_manager import LocalTokenManager, SocketRecord

from backend_core.clock import FakeClock
from backend_core.config import load_settings
from backend_core.runtime import Runtime
from rxapp import state as state_module
from rxapp.page_loops import Claim, PageLoops, Verdict, Watch, next_verdict, socket_watch
from rxapp.state import REFRESH_S, UNWATCHED_LIMIT_S, StatusState
from tests.helpers import turns_until

TOKEN = "tab-1"


# ---------------------------------------------------------------------------- where is the socket


async def test_a_socket_linked_here_is_here_and_gone_once_it_disconnects() -> None:
    sockets = LocalTokenManager()
    await sockets.link_token_to_sid(TOKEN, "sid-1")
    assert socket_watch(sockets, TOKEN) is Watch.HERE
    await sockets.disconnect_token(TOKEN, "sid-1")
    assert socket_watch(sockets, TOKEN) is Watch.GONE


def test_a_socket_another_instance_holds_is_not_here() -> None:
    """On Redis, the token manager also caches the records of other instances' sockets:
    "the token is in the map" is not "the socket is here"."""
    here, elsewhere = LocalTokenManager(), LocalTokenManager()
    here.token_to_socket[TOKEN] = SocketRecord(instance_id=elsewhere.instance_id, sid="sid-on-b")
    assert TOKEN in here.token_to_sid
    assert socket_watch(here, TOKEN) is Watch.GONE


def test_a_registry_that_cannot_be_read_is_unknown_never_an_error() -> None:
    assert socket_watch(None, TOKEN) is Watch.UNKNOWN
    assert socket_watch(object(), TOKEN) is Watch.UNKNOWN
    moved = SimpleNamespace(token_to_socket={TOKEN: object()}, instance_id="a")
    assert socket_watch(moved, TOKEN) is Watch.UNKNOWN


def test_reading_the_socket_registry_every_round_leaves_the_import_path_alone() -> None:
    """Each page reads the registry once a second: a read must not grow anything (Reflex's
    ``get_and_validate_app`` inserts the working directory into ``sys.path`` per call)."""
    before = list(sys.path)
    for _ in range(50):
        state_module._token_manager()
    assert sys.path == before


def test_an_unreadable_registry_is_tolerated_for_a_bounded_time_only() -> None:
    verdict, since = next_verdict(Watch.UNKNOWN, 100.0, None, 600.0)
    assert (verdict, since) == (Verdict.GO_ON, 100.0)
    assert next_verdict(Watch.UNKNOWN, 699.0, since, 600.0) == (Verdict.GO_ON, 100.0)
    assert next_verdict(Watch.UNKNOWN, 700.0, since, 600.0)[0] is Verdict.UNWATCHED_TOO_LONG
    # Readable again: the count starts over.
    assert next_verdict(Watch.HERE, 650.0, since, 600.0) == (Verdict.GO_ON, None)
    assert next_verdict(Watch.GONE, 650.0, since, 600.0)[0] is Verdict.SOCKET_GONE


def test_a_socket_gone_from_here_ends_the_loop_at_the_first_round_that_sees_it() -> None:
    # Reflex's token manager keeps this process's own records exact: nothing to wait for.
    assert next_verdict(Watch.GONE, 100.0, None, 600.0)[0] is Verdict.SOCKET_GONE
    assert next_verdict(Watch.HERE, 100.0, None, 600.0) == (Verdict.GO_ON, None)


def test_a_loop_that_is_no_longer_its_pages_loop_or_was_cancelled_ends_even_with_its_socket_here() -> None:
    assert next_verdict(Watch.HERE, 100.0, None, 600.0, current=False)[0] is Verdict.SUPERSEDED
    assert next_verdict(Watch.HERE, 100.0, None, 600.0, cancel_requested=True)[0] is Verdict.CANCELLED


# ---------------------------------------------------------------------------- the registry


async def idle() -> None:
    await asyncio.Event().wait()


@pytest.fixture
def tasks() -> Iterator[Callable[[], asyncio.Task[None]]]:
    made: list[asyncio.Task[None]] = []

    def make() -> asyncio.Task[None]:
        made.append(asyncio.get_running_loop().create_task(idle()))
        return made[-1]

    yield make
    for task in made:
        task.cancel()


async def test_one_loop_per_page_and_a_moved_page_gets_one_on_the_other_instance(
    tasks: Callable[[], asyncio.Task[None]],
) -> None:
    instance_a, instance_b = PageLoops(), PageLoops()
    first = tasks()
    assert instance_a.claim(TOKEN, first) is Claim.STARTED
    # The page reconnects to the same process while its loop runs: the newer loop is the
    # page's loop, the older one no longer owns it (and ends at its next round).
    second = tasks()
    assert instance_a.claim(TOKEN, second) is Claim.STARTED
    assert instance_a.owns(TOKEN, second) and not instance_a.owns(TOKEN, first) and len(instance_a) == 1
    # Its socket lands on another instance: that process has its own registry.
    assert instance_b.claim(TOKEN, tasks()) is Claim.STARTED
    instance_a.release(TOKEN, second)
    assert not instance_a.running(TOKEN) and instance_b.running(TOKEN)


async def test_a_reconnect_gets_a_loop_while_the_old_one_is_still_being_cancelled(
    tasks: Callable[[], asyncio.Task[None]],
) -> None:
    """Reflex cancels the old loop's event chain when the page reconnects; the new loop's
    claim can come before the old task has unwound, or after its cancellation was
    absorbed (the task goes on with ``cancelling()`` set): the page must get its loop."""
    loops = PageLoops()
    old = tasks()
    loops.claim(TOKEN, old)
    old.cancel()  # requested, not yet delivered: the task is not done
    assert not old.done()
    new = tasks()
    assert loops.claim(TOKEN, new) is Claim.STARTED
    await asyncio.sleep(0)
    loops.release(TOKEN, old)  # the old loop's finally, late
    assert loops.owns(TOKEN, new) and loops.running(TOKEN)


async def test_an_old_loop_ending_late_does_not_drop_the_new_ones_claim(
    tasks: Callable[[], asyncio.Task[None]],
) -> None:
    loops = PageLoops()
    old = tasks()
    loops.claim(TOKEN, old)
    old.cancel()
    await asyncio.sleep(0)
    new = tasks()
    assert loops.claim(TOKEN, new) is Claim.STARTED, "a finished loop must not block its page"
    loops.release(TOKEN, old)
    assert loops.running(TOKEN)


async def test_the_registry_is_bounded(tasks: Callable[[], asyncio.Task[None]]) -> None:
    loops = PageLoops(limit=2)
    assert loops.claim("a", tasks()) is Claim.STARTED
    assert loops.claim("b", tasks()) is Claim.STARTED
    assert loops.claim("c", tasks()) is Claim.FULL
    assert len(loops) == 2


async def test_stop_leaves_no_loop_behind(tasks: Callable[[], asyncio.Task[None]]) -> None:
    loops = PageLoops()
    running = [tasks() for _ in range(3)]
    for index, task in enumerate(running):
        loops.claim(f"tab-{index}", task)
    await loops.stop()
    assert len(loops) == 0 and all(task.done() for task in running)


def test_the_process_key_names_this_process_only() -> None:
    assert PageLoops().process_key != PageLoops().process_key


# ---------------------------------------------------------------------------- the page's loop


class FakePage:
    """Stands for Reflex's state proxy: ``async with self`` and what the loop applies."""

    def __init__(self) -> None:
        self.router = SimpleNamespace(session=SimpleNamespace(client_token=TOKEN))
        self.applied = 0

    async def __aenter__(self) -> FakePage:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    def _set_health(self, report: Any) -> None:
        pass

    def _apply(self, *snapshot: Any) -> None:
        self.applied += 1

    async def _stream(self, token: str, loops: PageLoops, task: asyncio.Task[Any]) -> None:
        await StatusState._stream(self, token, loops, task)  # type: ignore[arg-type]


class Instance:
    """One app process as the loop sees it: its runtime, its sockets, its loops."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.clock = FakeClock()
        self.runtime = Runtime(load_settings({"DB_URL": f"sqlite:///{tmp_path}/s.db"}), clock=self.clock)
        self.sockets: Any = LocalTokenManager()
        self.loops = PageLoops()
        monkeypatch.setattr(state_module, "get_runtime", lambda: self.runtime)
        monkeypatch.setattr(state_module, "get_page_loops", lambda: self.loops)
        monkeypatch.setattr(state_module, "_token_manager", lambda: self.sockets)
        monkeypatch.setattr(state_module, "_read_snapshot", lambda: ({}, {}, 0.0))

        async def no_health(runtime: Runtime, *, changed: bool, health_at: float) -> None:
            return None

        monkeypatch.setattr(state_module, "health_for_round", no_health)
        # Where each loop is: how many times it has begun to wait for its next round, and
        # whether it waits now (the real wait, only watched).
        self.opened: list[asyncio.Task[None]] = []
        self.waits: dict[asyncio.Task[Any], int] = {}
        self.waiting: set[asyncio.Task[Any]] = set()
        next_round = state_module._next_round

        async def watched_next_round(*args: Any, **kwargs: Any) -> tuple[bool, int]:
            task = asyncio.current_task()
            assert task is not None
            self.waits[task] = self.waits.get(task, 0) + 1
            self.waiting.add(task)
            try:
                return await next_round(*args, **kwargs)
            finally:
                self.waiting.discard(task)

        monkeypatch.setattr(state_module, "_next_round", watched_next_round)

    def open_loop(self, page: FakePage) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(StatusState.stream.fn(page))  # type: ignore[attr-defined]
        self.opened.append(task)
        return task

    def waiting_since(self, waits: dict[asyncio.Task[Any], int]) -> bool:
        """Every loop opened here has ended, or waits for a round after its ``waits[task]``-th."""
        return all(
            task.done() or (task in self.waiting and self.waits[task] > waits.get(task, 0)) for task in self.opened
        )

    async def rounds(self, count: int) -> None:
        """Once every loop has ended or waits for its next round, ``count`` times: a refresh
        period passes and every loop runs its round (and ends, or waits again)."""
        await turns_until(lambda: self.waiting_since({}), "every loop ended or waiting for its next round")
        for _ in range(count):
            waits = dict(self.waits)
            self.clock.advance(REFRESH_S)
            await turns_until(functools.partial(self.waiting_since, waits), "every loop ran its round")


async def test_the_loop_ends_when_the_pages_socket_moves_to_another_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = Instance(tmp_path, monkeypatch)
    other = LocalTokenManager()
    await here.sockets.link_token_to_sid(TOKEN, "sid-1")
    page = FakePage()
    loop = here.open_loop(page)
    await here.rounds(3)
    assert here.loops.running(TOKEN) and page.applied >= 3

    # The socket reconnected through the balancer to another instance, which now holds
    # the record (Redis's token manager caches it here too).
    here.sockets.token_to_socket[TOKEN] = SocketRecord(instance_id=other.instance_id, sid="sid-on-b")
    await here.rounds(1)
    assert loop.done() and loop.exception() is None
    assert not here.loops.running(TOKEN) and len(here.loops) == 0
    applied = page.applied
    await here.rounds(2)
    assert page.applied == applied, "a loop for a page served elsewhere kept writing its state"


async def test_a_page_that_reconnects_here_gets_a_loop_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    here = Instance(tmp_path, monkeypatch)
    await here.sockets.link_token_to_sid(TOKEN, "sid-1")
    first = here.open_loop(FakePage())
    await here.rounds(1)
    await here.sockets.disconnect_token(TOKEN, "sid-1")
    await here.rounds(1)
    assert first.done() and not here.loops.running(TOKEN)

    # Back (as a tab that moved from another instance would arrive): on_load starts one.
    await here.sockets.link_token_to_sid(TOKEN, "sid-2")
    older = here.open_loop(FakePage())
    await here.rounds(1)
    page = FakePage()
    newer = here.open_loop(page)  # on_load again while it runs: the newer one takes over
    await here.rounds(2)
    assert older.done() and not newer.done()
    assert here.loops.owns(TOKEN, newer) and len(here.loops) == 1 and page.applied >= 2
    newer.cancel()


async def test_a_loop_whose_cancellation_is_absorbed_below_it_still_ends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reflex cancels a page's loop when its socket disconnects; code below the loop can
    absorb the cancellation. The loop must not live on (it would hold the page's claim
    and write its state for a socket that is gone)."""
    here = Instance(tmp_path, monkeypatch)
    await here.sockets.link_token_to_sid(TOKEN, "sid-1")
    entered = asyncio.Event()

    async def absorbing_health(runtime: Runtime, *, changed: bool, health_at: float) -> None:
        entered.set()
        try:
            await asyncio.sleep(0)
        except asyncio.CancelledError:
            pass  # a library below the loop that swallows it

    monkeypatch.setattr(state_module, "health_for_round", absorbing_health)
    page = FakePage()
    loop = here.open_loop(page)
    await entered.wait()
    loop.cancel()  # absorbed; the socket is still here
    await here.rounds(2)
    assert loop.done() and len(here.loops) == 0
    applied = page.applied
    await here.rounds(2)
    assert page.applied == applied


async def test_a_loop_cancelled_during_its_state_write_still_finishes_the_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write holds the tab's state lock (in Redis, shared by every instance). Reflex
    cancels the loop when the socket disconnects, typically right after a push, inside
    the write: broken off there, the lock stays held until it expires and the tab's next
    socket, on any instance, waits for it."""
    here = Instance(tmp_path, monkeypatch)
    await here.sockets.link_token_to_sid(TOKEN, "sid-1")
    inside = asyncio.Event()

    class LockedWrite(FakePage):
        held = False

        async def __aenter__(self) -> FakePage:
            self.held = True  # the lock is taken
            inside.set()
            await asyncio.sleep(0)  # a Redis round trip
            return self

        async def __aexit__(self, *exc: object) -> None:
            await asyncio.sleep(0)  # save the state
            self.held = False  # release the lock

    page = LockedWrite()
    loop = here.open_loop(page)
    await inside.wait()
    loop.cancel()  # the socket disconnected
    await here.rounds(1)
    assert loop.done() and len(here.loops) == 0
    # Broken off by the cancellation, the write would never release the lock.
    await turns_until(lambda: not page.held, "the tab's state lock released")


async def test_without_a_socket_registry_the_loop_ends_after_its_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    here = Instance(tmp_path, monkeypatch)
    here.sockets = None  # Reflex's internals moved
    loop = here.open_loop(FakePage())
    await here.rounds(3)
    assert not loop.done()
    here.clock.advance(UNWATCHED_LIMIT_S)
    await here.rounds(2)
    assert loop.done() and len(here.loops) == 0


async def test_a_failing_state_write_does_not_end_the_loop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hung or down Redis fails ``async with self`` (after its socket timeout): the page
    keeps its loop, which tries again next round, and still ends when the socket goes."""
    here = Instance(tmp_path, monkeypatch)
    await here.sockets.link_token_to_sid(TOKEN, "sid-1")

    class RedisDown(FakePage):
        async def __aenter__(self) -> FakePage:
            raise ConnectionError("Redis is down")

    loop = here.open_loop(RedisDown())
    await here.rounds(3)
    assert not loop.done() and here.loops.running(TOKEN)
    await here.sockets.disconnect_token(TOKEN, "sid-1")
    await here.rounds(1)
    assert loop.done() and len(here.loops) == 0
