"""Ticks in Redis Streams: one stream per symbol, each entry's id the Deriv epoch.

Redis refuses an entry id at or below a stream's newest, so writing the same tick twice
(a new leader backfilling what the old one already wrote) is refused, not duplicated:
writes are idempotent across leaders. Every write runs in one script that first checks
the writer's lease token (:mod:`.lease`), so an ex-leader's late writes are refused
(``FencedOut``). Streams are bounded with ``MAXLEN ~`` (the hub's ring size).

Entry fields: ``q`` quote, ``p`` pip size, ``b``/``a`` bid/ask (absent on backfilled
ticks), ``bf`` 1 for backfill, ``g`` gap_from (only where there is a gap), ``w`` the number
of streams the same write added to (only where more than one: see :meth:`TickLogReader.read`).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from backend_core.clock import Clock
from backend_core.cluster.keys import ClusterKeys
from backend_core.cluster.resp import CALL_TIMEOUT_S, HeldConnection, bulk, no_script_error, pack, text
from backend_core.deriv.protocol import SYMBOL_PATTERN
from backend_core.events import Tick

# KEYS: leader, then the streams written. ARGV: token, maxlen, then per stream (in KEYS
# order) its entry count and 7 values per entry: id, q, p, b, a, bf, g ('' = absent).
# Returns -1 when fenced, else the entries written. One call covers every symbol of a
# flush: one round trip, where a pipeline of per-symbol calls cost redis-py a SCRIPT EXISTS
# round trip first on every flush. An entry of a write that spans several streams carries
# their number (w), which tells a reader woken by one of them to collect the others.
PUBLISH_TICKS: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local written = 0
local i = 3
local streams = tostring(#KEYS - 1)
for k = 2, #KEYS do
  local n = tonumber(ARGV[i])
  i = i + 1
  for _ = 1, n do
    local fields = {'q', ARGV[i + 1], 'p', ARGV[i + 2], 'bf', ARGV[i + 5]}
    if #KEYS > 2 then table.insert(fields, 'w'); table.insert(fields, streams) end
    if ARGV[i + 3] ~= '' then table.insert(fields, 'b'); table.insert(fields, ARGV[i + 3]) end
    if ARGV[i + 4] ~= '' then table.insert(fields, 'a'); table.insert(fields, ARGV[i + 4]) end
    if ARGV[i + 6] ~= '' then table.insert(fields, 'g'); table.insert(fields, ARGV[i + 6]) end
    local ok = redis.pcall('XADD', KEYS[k], 'MAXLEN', '~', ARGV[2], ARGV[i], unpack(fields))
    if type(ok) ~= 'table' or not ok.err then written = written + 1 end
    i = i + 7
  end
end
return written
"""

#: Entries one script call writes at most (bounds the script's run time on the server).
MAX_BATCH: Final = 200
#: Ticks the leader holds for Redis: over 3 minutes of 50 symbols ticking every second.
WRITE_QUEUE_SIZE: Final = 10_000


class FencedOut(Exception):
    """The lease is not the writer's any more: it must stop writing and step down."""


def entry_id(tick: Tick) -> str:
    return f"{tick.epoch}-0"


def encode(tick: Tick) -> list[str]:
    """The 7 script values of one tick (see :data:`PUBLISH_TICKS`)."""
    return [
        entry_id(tick),
        repr(tick.quote),
        str(tick.pip_size),
        "" if tick.bid is None else repr(tick.bid),
        "" if tick.ask is None else repr(tick.ask),
        "1" if tick.backfill else "0",
        "" if tick.gap_from is None else str(tick.gap_from),
    ]


# Field names as the client returns them: bytes, or str with ``decode_responses``.
_BYTES_NAMES: Final = (b"q", b"p", b"b", b"a", b"bf", b"g", b"-", b"0", b"1")
_STR_NAMES: Final = ("q", "p", "b", "a", "bf", "g", "-", "0", "1")


def decode(symbol: str, raw_id: Any, fields: Mapping[Any, Any]) -> Tick | None:
    """The tick of one stream entry; None for an entry that is not one of ours.

    Works on the client's values as they come (bytes, or str with ``decode_responses``):
    ``int`` and ``float`` parse both, so nothing is decoded to text on the way (this runs
    once per tick on every member).
    """
    names = _BYTES_NAMES if isinstance(raw_id, bytes) else _STR_NAMES
    q, p, b, a, bf, g, dash, zero, one = names
    try:
        epoch_text, _, seq = raw_id.partition(dash)
        if seq != zero or not epoch_text.isascii() or not epoch_text.isdigit():
            return None
        bid, ask, gap = fields.get(b), fields.get(a), fields.get(g)
        return Tick(
            symbol=symbol,
            epoch=int(epoch_text),
            quote=float(fields[q]),
            pip_size=int(fields[p]),
            bid=None if bid is None else float(bid),
            ask=None if ask is None else float(ask),
            backfill=fields.get(bf) == one,
            gap_from=None if gap is None else int(gap),
        )
    except (KeyError, ValueError, TypeError, AttributeError):
        return None


def _streams_spanned(fields: Mapping[Any, Any]) -> int:
    """An entry's ``w``: the streams its write added to (1 when absent or not a number)."""
    value = fields.get(b"w", fields.get("w"))
    try:
        return 1 if value is None else int(value)
    except ValueError:
        return 1


@dataclass(frozen=True, slots=True)
class WriteResult:
    written: int
    refused_as_duplicates: int


class TickLogWriter:
    """The leader's writer. :meth:`offer` never waits (DESIGN rule 4); :meth:`flush` writes.

    The queue is bounded: when Redis is slower than the feed, the oldest entries go first
    and are counted in ``dropped``; the coordinator steps down when that goes on.
    """

    def __init__(
        self,
        redis: Any,
        keys: ClusterKeys,
        clock: Clock,
        *,
        maxlen: int = 1000,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._clock = clock
        self._maxlen = maxlen
        self._queue: collections.deque[Tick] = collections.deque(maxlen=WRITE_QUEUE_SIZE)
        self._script = redis.register_script(PUBLISH_TICKS)
        self._connection = HeldConnection(redis)
        self.dropped = 0
        self.fenced_writes = 0

    def offer(self, tick: Tick) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.dropped += 1
        self._queue.append(tick)

    @property
    def pending(self) -> int:
        return len(self._queue)

    def requeue(self, ticks: Iterable[Tick]) -> None:
        """Replace what is queued with ``ticks`` (a new term starts from the log's top)."""
        self._queue.clear()
        for tick in ticks:
            self.offer(tick)

    async def flush(self, token: str) -> WriteResult:
        """Write what is queued (up to :data:`MAX_BATCH` entries) in one fenced script call.

        Raises :class:`FencedOut` (after putting the entries back) when the lease is not
        ``token``'s any more.
        """
        batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
        if not batch:
            return WriteResult(0, 0)
        by_symbol: dict[str, list[Tick]] = {}
        for tick in batch:
            by_symbol.setdefault(tick.symbol, []).append(tick)
        keys = [self._keys.leader, *(self._keys.ticks(symbol) for symbol in by_symbol)]
        args: list[bytes | str | int] = [len(keys), *keys, token, self._maxlen]
        for ticks in by_symbol.values():
            args.append(len(ticks))
            for tick in ticks:
                args.extend(encode(tick))
        try:
            async with self._clock.timeout(CALL_TIMEOUT_S):
                try:
                    written = int(await self._connection.call(pack("EVALSHA", self._script.sha, *args)))
                except no_script_error():  # a restarted Redis, or another server behind the URL
                    await self._connection.call(pack("SCRIPT", "LOAD", PUBLISH_TICKS))
                    written = int(await self._connection.call(pack("EVALSHA", self._script.sha, *args)))
        except BaseException:
            self._queue.extendleft(reversed(batch))  # not lost: written on the next flush
            raise
        if written < 0:
            self.fenced_writes += 1
            self._queue.extendleft(reversed(batch))
            raise FencedOut("the lease is held by another member")
        return WriteResult(written, len(batch) - written)

    async def close(self) -> None:
        """Give the held connection back to the client's pool."""
        await self._connection.close()


@dataclass(frozen=True, slots=True)
class ReadBatch:
    ticks: list[Tick]
    #: Raw field maps of the status stream's new entries, oldest first.
    statuses: list[Mapping[Any, Any]]
    #: Raw field maps of the control stream's new entries, oldest first.
    controls: list[Mapping[Any, Any]] = dataclasses.field(default_factory=list)


class TickLogReader:
    """Every member's reader: one blocking XREAD over all symbols' streams (and the status
    and control streams, when their keys are given).

    The XREAD runs once per tick on every member: it goes through a
    :class:`HeldConnection`, encoded here (the keys once, only the ids per call), and its
    raw reply is decoded without text conversion.
    """

    def __init__(
        self,
        redis: Any,
        keys: ClusterKeys,
        symbols: Iterable[str],
        clock: Clock,
        status_key: str | None = None,
        control_key: str | None = None,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._clock = clock
        symbols = tuple(symbols)
        for symbol in symbols:
            if not SYMBOL_PATTERN.match(symbol):
                raise ValueError("not a Deriv symbol")
        self._last: dict[str, str] = {keys.ticks(s): "0-0" for s in symbols}
        self._symbol_of = {keys.ticks(s): s for s in symbols}
        self._status_key = status_key
        if status_key is not None:
            self._last[status_key] = "0-0"
        self._control_key = control_key
        if control_key is not None:
            self._last[control_key] = "0-0"
        # A reply names its streams as bytes (or str with decode_responses): both map back.
        self._key_of: dict[Any, str] = {}
        for key in self._last:
            self._key_of[key] = key
            self._key_of[key.encode()] = key
        self._streams = b"".join(bulk(key.encode()) for key in self._last)
        self._connection = HeldConnection(redis)

    def control_from(self, entry_id: str) -> None:
        """Read only control entries after ``entry_id`` (the newest one at start)."""
        if self._control_key is not None:
            self._last[self._control_key] = entry_id

    def status_from(self, entry_id: str) -> None:
        """Read only status entries after ``entry_id`` (the newest one read at start)."""
        if self._status_key is not None:
            self._last[self._status_key] = entry_id

    def position(self, symbol: str) -> int:
        """The newest epoch read for ``symbol`` (0 before any)."""
        return int(self._last[self._keys.ticks(symbol)].partition("-")[0])

    def resume_from(self, symbol: str, epoch: int) -> None:
        """Read only entries after ``epoch`` (e.g. what the local hub already holds)."""
        key = self._keys.ticks(symbol)
        self._last[key] = f"{max(epoch, self.position(symbol))}-0"

    def _command(self, block_ms: int | None, count: int) -> bytes:
        """``XREAD COUNT count [BLOCK block_ms] STREAMS <keys> <ids>`` in RESP."""
        ids = b"".join(bulk(last.encode()) for last in self._last.values())
        block = b"" if block_ms is None else b"$5\r\nBLOCK\r\n" + bulk(b"%d" % block_ms)
        head = b"*%d\r\n$5\r\nXREAD\r\n$5\r\nCOUNT\r\n%s%s$7\r\nSTREAMS\r\n" % (
            (4 if block_ms is None else 6) + 2 * len(self._last),
            bulk(b"%d" % count),
            block,
        )
        return head + self._streams + ids

    async def close(self) -> None:
        """Give the held connection back to the client's pool."""
        await self._connection.close()

    async def read(self, *, block_ms: int = 1000, count: int = 500) -> ReadBatch:
        """The next entries of every stream, oldest first per stream; empty after ``block_ms``.

        Redis before 7.2 answers a blocked XREAD with the one stream whose entry woke it,
        even when the same write (one flush, one script) added to other streams too. Such
        entries say how many streams their write spanned (``w``); when the reply holds
        fewer, one more XREAD that does not block collects the rest, so the whole write is
        published at once and the relay sends it to each client in one write, as it does
        with a standalone instance's upstream frames that arrive together.
        """
        batch = ReadBatch([], [], [])
        positions = dict(self._last)
        try:
            async with self._clock.timeout(block_ms / 1000 + CALL_TIMEOUT_S):
                served, spanned = self._take(await self._connection.call(self._command(block_ms, count)), batch)
                if spanned > served:
                    self._take(await self._connection.call(self._command(None, count)), batch)
        except BaseException:
            self._last = positions  # nothing of this read was delivered: the next one reads it again
            raise
        return batch

    def _take(self, reply: Any, batch: ReadBatch) -> tuple[int, int]:
        """Add the entries of one XREAD reply to ``batch``; returns how many tick streams it
        named, and how many the write of its newest tick entries spanned (``w``)."""
        if not reply:
            return 0, 0
        # RESP2: [[key, entries], ...]; RESP3 (protocol=3 in the URL): {key: entries}.
        streams = reply.items() if isinstance(reply, dict) else reply
        last, symbol_of, key_of = self._last, self._symbol_of, self._key_of
        ticks, served, spanned = batch.ticks, 0, 0
        for raw_key, entries in streams:
            key = key_of.get(raw_key)
            if key is None or not entries:
                continue
            symbol = symbol_of.get(key)
            served += symbol is not None
            for raw_id, flat in entries:
                # An entry is [id, [field, value, field, value, ...]].
                pairs = iter(flat or ())
                fields = dict(zip(pairs, pairs, strict=False))
                if symbol is not None:
                    tick = decode(symbol, raw_id, fields)
                    if tick is not None:
                        ticks.append(tick)
                elif key == self._status_key:
                    batch.statuses.append(fields)
                else:
                    batch.controls.append(fields)
            last[key] = text(entries[-1][0])
            if symbol is not None and fields:
                spanned = max(spanned, _streams_spanned(fields))
        return served, spanned

    async def latest(self, symbol: str, count: int) -> list[Tick]:
        """The newest ``count`` entries of ``symbol``, oldest first (to pre-fill a hub)."""
        async with self._clock.timeout(5.0):
            entries = await self._redis.xrevrange(self._keys.ticks(symbol), count=count)
        ticks = [t for raw_id, fields in reversed(entries) if (t := decode(symbol, raw_id, fields)) is not None]
        return ticks
