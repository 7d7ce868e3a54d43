"""The simulator's market: price paths, bounded tick history, candles, simulated time. Pure.

One random-walk price path per symbol, shared by all connections, on a grid of integer
epochs (1 s for ``1HZ*``, 2 s for ``R_*``); quotes rounded to ``pip_size`` decimals.
``ticks_history`` reads the same bounded history the stream publishes, so history and
live ticks agree exactly (``shared/deriv-protocol.md`` section 7.4). Nothing here does
I/O or reads a clock other than the one passed in.
"""

from __future__ import annotations

import bisect
import math
import random
import secrets
from array import array
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from backend_core.clock import Clock
from backend_core.deriv.protocol import (
    DEFAULT_HISTORY_COUNT,
    GRANULARITIES,
    MAX_HISTORY_COUNT,
    SYMBOL_PATTERN,
    DerivCode,
)
from backend_core.events import Tick

DAY_S: Final = 86_400
YEAR_S: Final = 365 * DAY_S
#: Ticks generated in one feed step after a stall; a longer stall leaves a gap rather
#: than a burst of catch-up work.
MAX_CATCH_UP_S: Final = 600
#: The longest jump ahead :meth:`Market.jump` makes at once (one day: the default
#: retention of a 1 s symbol, so every tick of the jump stays in history).
MAX_JUMP_S: Final = DAY_S

# --- symbols (section 6) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SymbolSpec:
    """One synthetic index: section 6's facts plus the simulator's price model.

    ``pip`` is the pip value (active_symbols), ``pip_size`` the decimals of a quote
    (tick). ``start_price`` and ``volatility`` (annualised, e.g. 1.0 for Volatility 100)
    drive the random walk; they are illustrative.
    """

    symbol: str
    display_name: str
    pip: float
    pip_size: int
    interval_s: int
    start_price: float
    volatility: float


DEFAULT_SYMBOLS: Final[tuple[SymbolSpec, ...]] = (
    SymbolSpec("R_10", "Volatility 10 Index", 0.001, 3, 2, 6250.0, 0.10),
    SymbolSpec("R_25", "Volatility 25 Index", 0.001, 3, 2, 2480.0, 0.25),
    SymbolSpec("R_50", "Volatility 50 Index", 0.0001, 4, 2, 218.0926, 0.50),
    SymbolSpec("R_75", "Volatility 75 Index", 0.0001, 4, 2, 52000.0, 0.75),
    SymbolSpec("R_100", "Volatility 100 Index", 0.01, 2, 2, 1234.56, 1.00),
    SymbolSpec("1HZ10V", "Volatility 10 (1s) Index", 0.01, 2, 1, 8400.0, 0.10),
    SymbolSpec("1HZ25V", "Volatility 25 (1s) Index", 0.01, 2, 1, 640000.0, 0.25),
    SymbolSpec("1HZ50V", "Volatility 50 (1s) Index", 0.01, 2, 1, 190.0, 0.50),
    SymbolSpec("1HZ75V", "Volatility 75 (1s) Index", 0.01, 2, 1, 4100.0, 0.75),
    SymbolSpec("1HZ100V", "Volatility 100 (1s) Index", 0.01, 2, 1, 910.0, 1.00),
)

# --- time ---------------------------------------------------------------------------


class SimulatedTime:
    """The simulator's "now": the clock's wall time at start, running ``time_scale`` x faster.

    Derived from the monotonic clock so it never jumps with the system clock.
    """

    __slots__ = ("_clock", "_mono_origin", "_origin", "time_scale")

    def __init__(self, clock: Clock, time_scale: float = 1.0) -> None:
        if not (math.isfinite(time_scale) and 0 < time_scale <= 10_000):
            raise ValueError("time_scale must be greater than 0 and at most 10000")
        self._clock = clock
        self.time_scale = time_scale
        self._origin = clock.wall()
        self._mono_origin = clock.monotonic()

    def now(self) -> float:
        """Simulated Unix seconds."""
        return self._origin + (self._clock.monotonic() - self._mono_origin) * self.time_scale

    def jump(self, simulated_s: float) -> None:
        """Move "now" ``simulated_s`` ahead at once (the market's jump ahead)."""
        self._origin += simulated_s

    def to_clock_seconds(self, simulated_s: float) -> float:
        """How long ``simulated_s`` lasts on the injected clock."""
        return simulated_s / self.time_scale


# --- prices -------------------------------------------------------------------------


class TickHistory:
    """The ticks of one symbol, oldest first, keeping at most ``capacity`` of them.

    Two flat arrays (8 bytes per epoch and per quote) instead of tuples: 24 h of 1 s
    ticks is 86 400 entries, 1.4 MB here against ~10 MB as Python objects. Old entries
    are dropped in batches (amortised O(1)), so up to ``capacity * 5/4`` may be held.
    """

    __slots__ = ("_epochs", "_quotes", "capacity")

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("capacity must be positive")
        self.capacity = capacity
        self._epochs: array[int] = array("q")
        self._quotes: array[float] = array("d")

    def __len__(self) -> int:
        return len(self._epochs)

    def append(self, epoch: int, quote: float) -> None:
        if self._epochs and epoch <= self._epochs[-1]:
            raise ValueError("epochs must increase")
        self._epochs.append(epoch)
        self._quotes.append(quote)
        excess = len(self._epochs) - self.capacity
        if excess > self.capacity // 4:
            del self._epochs[:excess]
            del self._quotes[:excess]

    def latest(self) -> tuple[int, float] | None:
        if not self._epochs:
            return None
        return self._epochs[-1], self._quotes[-1]

    def first_at_or_after(self, epoch: int) -> tuple[int, float] | None:
        skip = max(0, len(self._epochs) - self.capacity)
        index = bisect.bisect_left(self._epochs, epoch, lo=skip)
        if index >= len(self._epochs):
            return None
        return self._epochs[index], self._quotes[index]

    def window(self, start: int, end: int, count: int) -> tuple[list[int], list[float]]:
        """The latest ``count`` ticks with ``start <= epoch <= end``, ascending (section 3.4)."""
        skip = max(0, len(self._epochs) - self.capacity)
        lo = bisect.bisect_left(self._epochs, start, lo=skip)
        hi = bisect.bisect_right(self._epochs, end, lo=lo)
        lo = max(lo, hi - count)
        return self._epochs[lo:hi].tolist(), self._quotes[lo:hi].tolist()


def round_quote(value: float, pip_size: int) -> float:
    return round(value, pip_size)


def half_spread(quote: float, spec: SymbolSpec) -> float:
    """Half the bid/ask spread: 0.5 basis point of the price, at least one pip."""
    return max(spec.pip, round(abs(quote) * 5e-5, spec.pip_size))


class _PricePath:
    """A geometric random walk for one symbol, one step per grid epoch."""

    __slots__ = ("_price", "_rng", "_step_sigma", "spec")

    def __init__(self, spec: SymbolSpec, rng: random.Random) -> None:
        self.spec = spec
        self._rng = rng
        self._price = spec.start_price
        self._step_sigma = spec.volatility * math.sqrt(spec.interval_s / YEAR_S)

    def step(self) -> float:
        self._price *= math.exp(self._step_sigma * self._rng.gauss(0.0, 1.0))
        return round_quote(self._price, self.spec.pip_size)


class Market:
    """Every symbol's price path and history, shared by all connections (section 7.4).

    Ticks exist only on the grid: epochs divisible by the symbol's interval. The market
    is advanced explicitly (:meth:`advance_to`), so it is a pure function of the seed
    and the epochs it is asked for.
    """

    def __init__(
        self,
        specs: Iterable[SymbolSpec] = DEFAULT_SYMBOLS,
        *,
        start_epoch: int,
        seed: int | str | None = None,
        prefill_s: int = 3600,
        retention_s: int = DAY_S,
    ) -> None:
        self.specs: dict[str, SymbolSpec] = {}
        for spec in specs:
            if not SYMBOL_PATTERN.match(spec.symbol) or spec.interval_s < 1 or spec.pip_size < 0:
                raise ValueError(f"invalid symbol spec {spec!r}")
            self.specs[spec.symbol] = spec
        if not self.specs:
            raise ValueError("at least one symbol is needed")
        if seed is None:
            seed = secrets.randbits(64)
        self._paths = {s: _PricePath(spec, random.Random(f"{seed}:{s}")) for s, spec in self.specs.items()}
        self._histories = {s: TickHistory(max(1, retention_s // spec.interval_s)) for s, spec in self.specs.items()}
        self._latest: dict[str, Tick] = {}
        self._last_epoch = start_epoch - max(0, prefill_s)
        self.advance_to(start_epoch, catch_up_limit_s=max(0, prefill_s))

    @property
    def last_epoch(self) -> int:
        """The latest epoch the market has been advanced (or skipped) to."""
        return self._last_epoch

    def history(self, symbol: str) -> TickHistory:
        return self._histories[symbol]

    def latest(self, symbol: str) -> Tick | None:
        return self._latest.get(symbol)

    def next_due_epoch(self) -> int:
        """The first grid epoch after :attr:`last_epoch` for any symbol."""
        after = self._last_epoch
        return min(after + spec.interval_s - (after % spec.interval_s) for spec in self.specs.values())

    def skip_to(self, epoch: int) -> None:
        """Move on without generating ticks (a feed outage leaves a gap in history)."""
        self._last_epoch = max(self._last_epoch, epoch)

    def advance_to(self, epoch: int, *, catch_up_limit_s: int = MAX_CATCH_UP_S) -> list[Tick]:
        """Generate every grid tick in ``(last_epoch, epoch]``, oldest first.

        After a stall longer than ``catch_up_limit_s`` only the most recent part is
        generated, leaving a gap, so one step's work stays bounded.
        """
        if epoch <= self._last_epoch:
            return []
        first = max(self._last_epoch + 1, epoch - catch_up_limit_s + 1)
        out = [self._tick(spec, e, quote) for spec, e, quote in self._generate(first, epoch)]
        self._last_epoch = epoch
        return out

    def jump(self, seconds: int) -> dict[str, int]:
        """Generate ``seconds`` (1 to :data:`MAX_JUMP_S`) of history at once, all of it.

        For an outage longer than any catch-up: the ticks go to history only (nothing to
        stream), and the latest tick of each symbol is the jump's last. Returns the ticks
        made per symbol.
        """
        if not 1 <= seconds <= MAX_JUMP_S:
            raise ValueError(f"a jump is 1 to {MAX_JUMP_S} seconds")
        made = dict.fromkeys(self.specs, 0)
        newest: dict[str, tuple[SymbolSpec, int, float]] = {}
        for spec, e, quote in self._generate(self._last_epoch + 1, self._last_epoch + seconds):
            made[spec.symbol] += 1
            newest[spec.symbol] = (spec, e, quote)
        self._last_epoch += seconds
        for spec, e, quote in newest.values():
            self._tick(spec, e, quote)
        return made

    def _generate(self, first: int, last: int) -> Iterator[tuple[SymbolSpec, int, float]]:
        """Step every path over the grid epochs of ``[first, last]`` into history, oldest first."""
        for e in range(first, last + 1):
            for symbol, path in self._paths.items():
                if e % path.spec.interval_s:
                    continue
                quote = path.step()
                self._histories[symbol].append(e, quote)
                yield path.spec, e, quote

    def _tick(self, spec: SymbolSpec, epoch: int, quote: float) -> Tick:
        spread = half_spread(quote, spec)
        tick = Tick(
            spec.symbol,
            epoch,
            quote,
            spec.pip_size,
            round_quote(quote - spread, spec.pip_size),
            round_quote(quote + spread, spec.pip_size),
        )
        self._latest[spec.symbol] = tick
        return tick


@dataclass(slots=True)
class CandleState:
    """One candle being built; ``open_time = epoch - epoch % granularity`` (section 3.4)."""

    open_time: int
    open: float
    high: float
    low: float
    close: float
    epoch: int


def update_candle(candle: CandleState | None, epoch: int, quote: float, granularity: int) -> CandleState:
    """Fold one tick into the running candle, starting a new one at a bucket boundary."""
    open_time = epoch - epoch % granularity
    if candle is None or candle.open_time != open_time:
        return CandleState(open_time, quote, quote, quote, quote, epoch)
    candle.high = max(candle.high, quote)
    candle.low = min(candle.low, quote)
    candle.close = quote
    candle.epoch = epoch
    return candle


def build_candles(epochs: Sequence[int], quotes: Sequence[float], granularity: int) -> list[CandleState]:
    """Bucket ticks into candles, oldest first."""
    candles: list[CandleState] = []
    current: CandleState | None = None
    for epoch, quote in zip(epochs, quotes, strict=True):
        updated = update_candle(current, epoch, quote, granularity)
        if updated is not current:
            candles.append(updated)
        current = updated
    return candles


@dataclass(frozen=True, slots=True)
class HistoryWindow:
    """A resolved ``ticks_history`` request (section 3.4's server rules applied)."""

    start: int
    end: int
    count: int
    style: Literal["ticks", "candles"]
    granularity: int


@dataclass(frozen=True, slots=True)
class HistoryRefusal:
    code: str
    message: str


def history_window(params: Mapping[str, Any], now: float) -> HistoryWindow | HistoryRefusal:
    """Apply section 3.4's rules to validated ``ticks_history`` parameters.

    ``params`` holds the coerced values (``end`` a string, ``start``/``count``/
    ``granularity`` integers or absent, ``style`` a string or absent).
    """
    now_epoch = int(now)
    granularity = params.get("granularity")
    style = params.get("style")
    if style is None:
        style = "candles" if isinstance(granularity, int) and granularity > 0 else "ticks"
    if style not in ("ticks", "candles"):
        return HistoryRefusal(DerivCode.INVALID_STYLE, f"Style {style} invalid.")
    if style == "candles":
        if granularity is None:
            granularity = 60
        if granularity not in GRANULARITIES:
            return HistoryRefusal(DerivCode.INVALID_GRANULARITY, "Granularity is not valid")
    else:
        granularity = 0
    end_text = params["end"]
    end_given = end_text.isdigit()
    end = int(end_text) if end_given else now_epoch
    start_given = "start" in params
    if start_given and end_given and params["start"] > end:
        return HistoryRefusal(
            DerivCode.INVALID_START_END, f"Start time {params['start']} must be before end time {end}"
        )
    if end > now_epoch:
        end = now_epoch
    count = params.get("count", DEFAULT_HISTORY_COUNT)
    if count <= 0 or count > MAX_HISTORY_COUNT:
        count = MAX_HISTORY_COUNT
    if start_given:
        start = params["start"]
    elif style == "candles" and "count" in params:
        start = end - count * granularity
    else:
        start = end - DAY_S
    start = max(start, now_epoch - YEAR_S)
    return HistoryWindow(start, end, count, "candles" if style == "candles" else "ticks", granularity)
