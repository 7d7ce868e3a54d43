"""Redis on the wire, for the cluster's hot paths and its replies.

Commands encoded here in RESP (:func:`pack`, :func:`bulk`) go through a
:class:`HeldConnection`; :func:`text` reads a reply value that is bytes, or str with
``decode_responses``. redis-py itself is imported only inside the functions that need it:
a process without ``REDIS_URL`` never loads it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

# One Redis round trip (a command, a script, a pipeline) gets this long on the injected
# clock, besides the client's socket timeouts: a hung Redis costs a caller at most this.
CALL_TIMEOUT_S: Final = 2.0

# Errors a Redis call raises besides redis-py's own RedisError (a reset socket, a deadline).
REDIS_ERRORS: tuple[type[BaseException], ...] = (OSError, TimeoutError, ConnectionError)


def redis_errors() -> tuple[type[BaseException], ...]:
    """What a failed Redis call raises: catch these, not Exception."""
    from redis.exceptions import RedisError

    return (RedisError, *REDIS_ERRORS)


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def no_script_error() -> type[Exception]:
    from redis.exceptions import NoScriptError  # redis is imported only by clustered processes

    return NoScriptError


def pack(*args: bytes | str | int) -> bytes:
    """One command in RESP (an array of bulk strings), as redis-py's ``pack_command`` makes it."""
    return b"*%d\r\n" % len(args) + b"".join(bulk(arg if isinstance(arg, bytes) else str(arg).encode()) for arg in args)


class HeldConnection:
    """One connection of a redis-py client's pool, held for one hot path (a command per tick).

    ``client.execute_command`` costs about 300 us of CPU per call here (pool checkout with
    a health probe, the retry wrapper, and on Python 3.11 a task per write for the socket
    timeout's ``asyncio.wait_for``); a held connection costs a fifth of that. So the tick
    log's reader and writer send their commands through one, already encoded
    (:func:`pack`), and read the reply raw (hiredis parses it when installed).

    The caller's deadline bounds every call (``clock.timeout`` around :meth:`call`), so the
    held connection runs without the client's socket timeout. A call that fails or is
    cancelled leaves the connection closed (redis-py closes it on any error mid-command)
    and the next call reconnects it; a Redis error reply is raised (``ResponseError``) and
    leaves it usable. Calls are serialised (a lock: a reply is read by whoever sent its
    command). The client's ``aclose`` closes the connection too; :meth:`close` gives it back
    to the pool first.
    """

    def __init__(self, redis: Any) -> None:
        self._pool = redis.connection_pool
        self._conn: Any = None
        self._socket_timeout: float | None = None
        self._lock = asyncio.Lock()

    async def call(self, command: bytes) -> Any:
        async with self._lock:
            conn = self._conn
            if conn is None:
                conn = await self._pool.get_connection()
                self._conn, self._socket_timeout = conn, conn.socket_timeout
                conn.socket_timeout = None  # the caller's deadline bounds every call
            await conn.send_packed_command(command, check_health=False)
            return await conn.read_response()

    async def close(self) -> None:
        """Give the connection back to the pool (with its socket timeout restored)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.socket_timeout = self._socket_timeout
            await self._pool.release(conn)
