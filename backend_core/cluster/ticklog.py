"""Ticks in Redis Streams: one stream per symbol, each entry's id the Deriv epoch.

Redis refuses an entry id at or below a stream's newest, so writing the same tick twice
(a new leader backfilling what the old one already wrote) is refused, not duplicated:
writes are idempotent across leaders. Every write runs in one script that first checks
the writer's lease token (:mod:`.lease`), so an ex-leader's late writes are refused
(``FencedOut``). Streams are bounded with ``MAXLEN ~`` (the hub's ring size).

Entry fields: ``q`` quote, ``p`` pip size, ``b``/``a`` bid/ask (absent on backfilled
ticks), ``bf`` 1 for backfill, ``g`` gap_from (only where there is a gap).
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from backend_core.clock import Clock
from backend_core.cluster.keys import ClusterKeys
from backend_core.deriv.protocol import SYMBOL_PATTERN
from backend_core.events import Tick

# KEYS: leader, stream. ARGV: token, maxlen, then 7 values per entry:
# id, q, p, b, a, bf, g ('' = absent). Returns -1 when fenced, else entries written.
PUBLISH_TICKS: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
local written = 0
for i = 3, #ARGV, 7 do
  local fields = {'q', ARGV[i + 1], 'p', ARGV[i + 2], 'bf', ARGV[i + 5]}
  if ARGV[i + 3] ~= '' then table.insert(fields, 'b'); table.insert(fields, ARGV[i + 3]) end
  if ARGV[i + 4] ~= '' then table.insert(fields, 'a'); table.insert(fields, ARGV[i + 4]) end
  if ARGV[i + 6] ~= '' then table.insert(fields, 'g'); table.insert(fields, ARGV[i + 6]) end
  local ok = redis.pcall('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], ARGV[i], unpack(fields))
  if type(ok) ~= 'table' or not ok.err then written = written + 1 end
end
return written
"""

#: Entries one script call writes at most (bounds the script's run time on the server).
MAX_BATCH: Final = 200


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


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def decode(symbol: str, raw_id: Any, fields: Mapping[Any, Any]) -> Tick | None:
    """The tick of one stream entry; None for an entry that is not one of ours."""
    try:
        epoch_text, _, seq = _text(raw_id).partition("-")
        values = {_text(k): _text(v) for k, v in fields.items()}
        if seq != "0" or not epoch_text.isascii() or not epoch_text.isdigit():
            return None
        bid, ask, gap = values.get("b"), values.get("a"), values.get("g")
        return Tick(
            symbol=symbol,
            epoch=int(epoch_text),
            quote=float(values["q"]),
            pip_size=int(values["p"]),
            bid=None if bid is None else float(bid),
            ask=None if ask is None else float(ask),
            backfill=values.get("bf") == "1",
            gap_from=None if gap is None else int(gap),
        )
    except (KeyError, ValueError):
        return None


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
        queue_size: int = 10_000,
        call_timeout_s: float = 2.0,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._clock = clock
        self._maxlen = maxlen
        self._timeout_s = call_timeout_s
        self._queue: collections.deque[Tick] = collections.deque(maxlen=queue_size)
        self._script = redis.register_script(PUBLISH_TICKS)
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
        """Write what is queued, one fenced script call per symbol (pipelined).

        Raises :class:`FencedOut` (after putting the entries back) when the lease is not
        ``token``'s any more.
        """
        batch = [self._queue.popleft() for _ in range(min(len(self._queue), MAX_BATCH))]
        if not batch:
            return WriteResult(0, 0)
        by_symbol: dict[str, list[Tick]] = {}
        for tick in batch:
            by_symbol.setdefault(tick.symbol, []).append(tick)
        try:
            async with self._clock.timeout(self._timeout_s), self._redis.pipeline(transaction=False) as pipe:
                for symbol, ticks in by_symbol.items():
                    args: list[Any] = [token, self._maxlen]
                    for tick in ticks:
                        args.extend(encode(tick))
                    await self._script(keys=[self._keys.leader, self._keys.ticks(symbol)], args=args, client=pipe)
                results = await pipe.execute()
        except BaseException:
            self._queue.extendleft(reversed(batch))  # not lost: written on the next flush
            raise
        if any(int(r) < 0 for r in results):
            self.fenced_writes += 1
            self._queue.extendleft(reversed(batch))
            raise FencedOut("the lease is held by another member")
        written = sum(int(r) for r in results)
        return WriteResult(written, len(batch) - written)


@dataclass(frozen=True, slots=True)
class ReadBatch:
    ticks: list[Tick]
    #: Raw field maps of the status stream's new entries, oldest first.
    statuses: list[Mapping[Any, Any]]
    #: Raw field maps of the control stream's new entries, oldest first.
    controls: list[Mapping[Any, Any]] = dataclasses.field(default_factory=list)


class TickLogReader:
    """Every member's reader: one blocking XREAD over all symbols' streams (and the status
    stream, when ``status_key`` is given)."""

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

    async def read(self, *, block_ms: int = 1000, count: int = 500) -> ReadBatch:
        """The next entries of every stream, oldest first per stream; empty after ``block_ms``."""
        async with self._clock.timeout(block_ms / 1000 + 2.0):
            reply = await self._redis.xread(self._last, count=count, block=block_ms)
        ticks: list[Tick] = []
        statuses: list[Mapping[Any, Any]] = []
        controls: list[Mapping[Any, Any]] = []
        for raw_key, entries in reply or []:
            key = _text(raw_key)
            symbol = self._symbol_of.get(key)
            for raw_id, fields in entries:
                self._last[key] = _text(raw_id)
                if symbol is None:
                    if key == self._status_key:
                        statuses.append(fields)
                    elif key == self._control_key:
                        controls.append(fields)
                    continue
                tick = decode(symbol, raw_id, fields)
                if tick is not None:
                    ticks.append(tick)
        return ReadBatch(ticks, statuses, controls)

    async def latest(self, symbol: str, count: int) -> list[Tick]:
        """The newest ``count`` entries of ``symbol``, oldest first (to pre-fill a hub)."""
        async with self._clock.timeout(5.0):
            entries = await self._redis.xrevrange(self._keys.ticks(symbol), count=count)
        ticks = [t for raw_id, fields in reversed(entries) if (t := decode(symbol, raw_id, fields)) is not None]
        return ticks
