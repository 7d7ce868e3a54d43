"""The status page's live loops in this process: ``{client token: task}`` (CLUSTER.md 2.7).

Each open page runs one loop (``StatusState.stream``) in the process its socket is
connected to. Which loops run is a fact about this process, so it is kept here and not
in the page's state: with Reflex's state on Redis, a state var would be shared by every
instance behind the balancer, and a tab whose socket moved to another instance would
find "already streaming" (written by the instance it left) and never get a loop there.

The registry is owned by the app's one runtime reference (:mod:`rxapp.runtime_ref`),
never a module global of its own (DESIGN.md rule 3), and bounded (rule 5).

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
from typing import Any

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


class Claim(enum.Enum):
    """The answer to a page's loop asking to run."""

    STARTED = "started"
    RUNNING = "running"  # this page already has a loop here (a reconnect to the same process)
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


# While a tab moves between instances the registries churn (the old instance's
# disconnect can land after the new one's connect); a socket must stay gone this long
# before its loop ends, so a loop does not end in the middle of its own tab's move.
GONE_GRACE_S = 3.0


def next_verdict(
    watch: Watch, now: float, unwatched_since: float | None, limit_s: float
) -> tuple[Verdict, float | None]:
    """A loop's verdict after a round, and since when its socket has not been seen here.

    A socket gone or seen elsewhere for :data:`GONE_GRACE_S` ends the loop; an unreadable
    registry is tolerated for ``limit_s`` (a page still open then gets a new loop when it
    reconnects).
    """
    if watch is Watch.HERE:
        return Verdict.GO_ON, None
    if unwatched_since is None:
        return Verdict.GO_ON, now
    if watch is Watch.GONE:
        if now - unwatched_since >= GONE_GRACE_S:
            return Verdict.SOCKET_GONE, None
        return Verdict.GO_ON, unwatched_since
    if now - unwatched_since >= limit_s:
        return Verdict.UNWATCHED_TOO_LONG, unwatched_since
    return Verdict.GO_ON, unwatched_since


class PageLoops:
    """The live loops of this process, one per page token.

    Claiming and releasing are synchronous, so a loop that sees its socket gone and
    releases its claim cannot interleave with a reconnected page claiming a new one:
    either the new claim finds the old loop (which then sees the socket back) or a free
    slot.
    """

    def __init__(self, limit: int = MAX_PAGE_LOOPS) -> None:
        self._limit = limit
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._nonce = uuid.uuid4().hex

    @property
    def process_key(self) -> str:
        """Names this process among every instance's: process-local facts kept in a page's
        (shared) state carry it, so another instance does not mistake them for its own.
        The pid part differs between workers forked from one imported app."""
        return f"{self._nonce}:{os.getpid()}"

    def claim(self, token: str, task: asyncio.Task[Any]) -> Claim:
        current = self._tasks.get(token)
        if current is not None and current is not task and not current.done():
            return Claim.RUNNING
        if current is None and len(self._tasks) >= self._limit:
            return Claim.FULL
        self._tasks[token] = task
        return Claim.STARTED

    def release(self, token: str, task: asyncio.Task[Any]) -> None:
        """Forget ``task``'s claim (a newer loop's claim for the same token stays)."""
        if self._tasks.get(token) is task:
            del self._tasks[token]

    def running(self, token: str) -> bool:
        task = self._tasks.get(token)
        return task is not None and not task.done()

    def __len__(self) -> int:
        return len(self._tasks)

    async def stop(self) -> None:
        """Cancel every loop and wait (bounded) for them to finish: on shutdown."""
        tasks = [task for task in self._tasks.values() if task is not asyncio.current_task()]
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_WAIT_S)
