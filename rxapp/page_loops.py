"""The status page's live loops in this process: ``{client token: task}`` (CLUSTER.md 2.7).

Each open page runs one loop (``StatusState.stream``) in the process its socket is
connected to. Which loops run is a fact about this process, so it is kept here and not
in the page's state: with Reflex's state on Redis, a state var would be shared by every
instance behind the balancer, and a tab whose socket moved to another instance would
find "already streaming" (written by the instance it left) and never get a loop there.

The registry is owned by the app's one runtime reference (:mod:`rxapp.runtime_ref`),
never a module global of its own (DESIGN.md rule 3), and bounded (rule 5). The newest
loop of a page is its loop: a page that loads again in this process (a reconnect, which
makes Reflex cancel the old loop's event chain) gets a new loop at once, and the older
one, no longer the registered one, ends at its next round (:func:`next_verdict`). An old
loop is never trusted to be "still running": Reflex cancels a page's loop when its socket
disconnects or reconnects, but a cancellation can be absorbed by code below the loop
(seen in Reflex's state write, which is now shielded: :meth:`PageLoops.unbroken`; the
task then goes on with ``cancelling()`` set), so a loop also ends by itself once it has
been asked to.

Whether a page's socket is still *here* is read from Reflex's token manager, which
records each token's socket with the id of the process that holds it
(``token_to_socket[token].instance_id``). On Redis that map also caches records of
sockets held by other instances, so "the token is in the map" would keep a loop running
for a tab that has moved; the loop ends when the record is gone or names another
instance. If the map cannot be read (Reflex's internals moved), a loop cannot see its
page go away and ends after a bounded time instead (:func:`next_verdict`).
"""

from __future__ import annotations

import asyncio
import enum
import os
import uuid
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# Live loops one process runs at most (one per open page whose socket is here). A page
# beyond it gets no loop: its fallback.js sees the page's time stop and polls the REST
# status instead, so the limit costs freshness, never memory.
MAX_PAGE_LOOPS = 10_000
# How long stop() waits for cancelled loops to finish (each ends at its next await).
STOP_WAIT_S = 5.0


class Watch(enum.Enum):
    """Where a page's socket is, seen from this process."""

    HERE = "here"  # connected to this process
    GONE = "gone"  # disconnected, or connected to another instance
    UNKNOWN = "unknown"  # the socket registry cannot be read


class Verdict(enum.Enum):
    """What a page's loop does after a round."""

    GO_ON = "go_on"
    SOCKET_GONE = "socket_gone"
    UNWATCHED_TOO_LONG = "unwatched_too_long"
    SUPERSEDED = "superseded"  # a newer loop of the same page runs in this process
    CANCELLED = "cancelled"  # asked to stop (by Reflex or on shutdown), the request absorbed


class Claim(enum.Enum):
    """The answer to a page's loop asking to run."""

    STARTED = "started"  # this loop is the page's loop here (an older one ends at its next round)
    FULL = "full"  # MAX_PAGE_LOOPS reached


def socket_watch(token_manager: Any, token: str) -> Watch:
    """Where ``token``'s socket is, from Reflex's token manager (None: there is none).

    Reads ``token_to_socket`` (token -> record with ``instance_id`` and ``sid``) and the
    manager's own ``instance_id``: a socket is here only if its record names this
    process. Anything else Reflex might change is UNKNOWN, never an exception.
    """
    if token_manager is None:
        return Watch.UNKNOWN
    try:
        record = token_manager.token_to_socket.get(token)
        instance_id = token_manager.instance_id
        if record is None:
            return Watch.GONE
        owner = record.instance_id
    except Exception:  # a moved internal: the bounded fallback takes over
        return Watch.UNKNOWN
    return Watch.HERE if owner == instance_id else Watch.GONE


def next_verdict(
    watch: Watch,
    now: float,
    unwatched_since: float | None,
    limit_s: float,
    *,
    current: bool = True,
    cancel_requested: bool = False,
) -> tuple[Verdict, float | None]:
    """A loop's verdict after a round, and since when the socket registry has been unreadable.

    ``current``: this loop is still the page's registered loop here; ``cancel_requested``:
    its task has been asked to stop. Either ending ends the loop, and so does a socket gone
    or held by another instance, at the first round that sees it. No grace is needed, as
    Reflex 0.10's token manager keeps the record of a socket here exact in this process:
    ``link_token_to_sid`` writes it before the connection's first event (the hydrate
    whose ``on_load`` starts the loop) is processed, and a Redis notification never drops
    a live record of this process's own: a deletion is answered by storing it again, and
    it is replaced only by a newer record in Redis, i.e. by the tab's socket on another
    instance. An unreadable registry is tolerated for ``limit_s`` (a page still open then
    gets a new loop when it reconnects).
    """
    if cancel_requested:
        return Verdict.CANCELLED, unwatched_since
    if not current:
        return Verdict.SUPERSEDED, unwatched_since
    if watch is Watch.HERE:
        return Verdict.GO_ON, None
    if watch is Watch.GONE:
        return Verdict.SOCKET_GONE, None
    if unwatched_since is None:
        return Verdict.GO_ON, now
    if now - unwatched_since >= limit_s:
        return Verdict.UNWATCHED_TOO_LONG, unwatched_since
    return Verdict.GO_ON, unwatched_since


class PageLoops:
    """The live loops of this process, one per page token.

    The newest claim of a token wins: a page that loads again while an older loop of
    its token is still registered here (a reconnect to this process) gets a loop at
    once, whatever state the older one is in (waiting, cancelled but not yet unwound,
    or cancelled with the cancellation absorbed); the older one sees that it is no longer
    :meth:`owns` and ends at its next round. Claiming and releasing are synchronous, and
    a release drops only the releasing loop's own claim.
    """

    def __init__(self, limit: int = MAX_PAGE_LOOPS) -> None:
        self._limit = limit
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        # State writes finishing after their loop was cancelled (at most one per loop:
        # a loop awaits its write, and a cancelled loop starts no other).
        self._writes: set[asyncio.Task[Any]] = set()
        self._nonce = uuid.uuid4().hex

    @property
    def process_key(self) -> str:
        """Names this process among every instance's: process-local facts kept in a page's
        (shared) state carry it, so another instance does not mistake them for its own.
        The pid part differs between workers forked from one imported app."""
        return f"{self._nonce}:{os.getpid()}"

    def claim(self, token: str, task: asyncio.Task[Any]) -> Claim:
        """Make ``task`` the loop of ``token`` here (an older one stops owning it)."""
        if token not in self._tasks and len(self._tasks) >= self._limit:
            return Claim.FULL
        self._tasks[token] = task
        return Claim.STARTED

    def owns(self, token: str, task: asyncio.Task[Any]) -> bool:
        """Whether ``task`` is still the registered loop of ``token``."""
        return self._tasks.get(token) is task

    def release(self, token: str, task: asyncio.Task[Any]) -> None:
        """Forget ``task``'s claim (a newer loop's claim for the same token stays)."""
        if self._tasks.get(token) is task:
            del self._tasks[token]

    async def unbroken(self, write: Coroutine[Any, Any, T]) -> T:
        """Run a loop's state write to its end even if the loop is cancelled meanwhile.

        The write takes the tab's state lock in Redis. Reflex cancels a page's loop when
        its socket disconnects, which happens right after a push, i.e. while the loop is
        still inside the write that sent it (Reflex emits the delta, then saves the state
        and releases the lock). Cancelled there, the write can leave the lock held until
        it expires (Reflex's ``redis_lock_expiration``, 10 s), and every event of that tab
        waits for it, on any instance: the tab that just reconnected gets nothing for
        10 s. So the write runs in its own task, which the loop's cancellation does not
        reach; the loop itself still ends at once. Bounded by the Redis socket timeouts.
        """
        task = asyncio.ensure_future(write)
        self._writes.add(task)
        task.add_done_callback(self._write_done)
        return await asyncio.shield(task)

    def _write_done(self, task: asyncio.Task[Any]) -> None:
        self._writes.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the loop logged it, or it ended before it could

    def running(self, token: str) -> bool:
        task = self._tasks.get(token)
        return task is not None and not task.done()

    def __len__(self) -> int:
        return len(self._tasks)

    async def stop(self) -> None:
        """Cancel every loop and wait (bounded) for them and their last writes to finish: on shutdown."""
        tasks = [task for task in self._tasks.values() if task is not asyncio.current_task()]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_WAIT_S)
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=STOP_WAIT_S)
