"""Writing to a client without an ``await`` per frame, where the server allows it.

Where the server offers :data:`SEND_NOW_EXTENSION`, the relay writes through it. Elsewhere:

An ASGI server's ``send`` is a coroutine function, but servers such as uvicorn only
suspend in it when the socket's write buffer is full (backpressure); otherwise the frame
is written and the coroutine returns without ever yielding. Awaiting it from a task per
client costs a task wake-up per frame. :func:`send_eagerly` runs the coroutine's first
step in the caller instead, as Python 3.12's ``asyncio.eager_task_factory`` does for
tasks: done at once is the common case; when it does suspend, the caller gets back a
:class:`Suspended` send, which :func:`finish` completes in a task exactly as a Task
would have (same futures, same exceptions, cancellation closes the coroutine).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any

AsgiSend = Callable[[dict[str, Any]], Awaitable[None]]

# The ASGI extension (in ``scope["extensions"]``) of servers that can write text messages
# synchronously: ``{"ready": callable() -> int, "write": callable(texts, framed) -> None}``.
# ``ready()`` is 0 when the messages must go through the ASGI ``send`` instead (the socket
# is full, the connection is not open), WRITE_FRAMED when ``write`` takes pre-built
# unmasked frames (``framed``, one per UTF-8 text in ``texts``), WRITE_TEXT when it takes
# the texts only (``framed`` None: an extension such as permessage-deflate frames them).
# ``write`` may only be called right after ``ready()`` said yes, with no await between.
# backend_core.relay.serving provides it under uvicorn.
SEND_NOW_EXTENSION = "backend_core.relay.send_now"
WRITE_TEXT = 1
WRITE_FRAMED = 2
WriteReady = Callable[[], int]
WriteTexts = Callable[[list[bytes], list[bytes] | None], None]


@dataclass(slots=True)
class Suspended:
    """A send that yielded ``waiting_on`` (a future, or None for a bare yield) mid-way."""

    coroutine: Generator[Any, None, None] | Coroutine[Any, None, None]
    waiting_on: Any


def send_eagerly(send: AsgiSend, message: dict[str, Any]) -> Suspended | None:
    """Run ``send(message)`` up to its first suspension: None if it completed.

    Exceptions the send raises before suspending propagate to the caller.
    """
    coroutine = send(message)
    if not isinstance(coroutine, Coroutine | Generator):  # an awaitable that is not a coroutine
        return Suspended(_as_coroutine(coroutine), None)
    try:
        waiting_on = coroutine.send(None)
    except StopIteration:
        return None
    return Suspended(coroutine, waiting_on)


async def finish(suspended: Suspended) -> None:
    """Drive a :class:`Suspended` send to its end, as the event loop would drive a Task."""
    coroutine, waiting_on = suspended.coroutine, suspended.waiting_on
    try:
        while True:
            if waiting_on is None:
                await asyncio.sleep(0)
            else:
                # What a Task does with a yielded future: clear its "a task is waiting on me"
                # flag (the first step ran outside any task, so nothing cleared it) and wait.
                waiting_on._asyncio_future_blocking = False
                try:
                    await waiting_on
                except BaseException:
                    if not waiting_on.done():  # this task was cancelled, not the send's future
                        coroutine.close()
                        raise
                    # The send's future failed: the coroutine sees that below, when resumed.
            waiting_on = coroutine.send(None)
    except StopIteration:
        return


async def _as_coroutine(awaitable: Awaitable[None]) -> None:
    await awaitable
