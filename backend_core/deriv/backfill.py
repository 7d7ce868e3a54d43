"""Backfill after a reconnect: every epoch once, in order, and long outages paged in. Pure.

A symbol that has published before is subscribed again with ``ticks_history`` from its
last published epoch ``L`` (``shared/deriv-protocol.md`` 3.4). The reply holds the
*latest* ``count`` ticks of ``[L, now]``: a full reply that starts after ``L`` left
ticks out (:func:`backfill_gap`). :class:`Backfill` then pages backwards, one
``ticks_history`` at a time with ``start = L`` and ``end`` just before the oldest tick
received (no subscribe), until a reply reaches back to ``L`` or is short (the whole rest
of the range). Meanwhile the pages received and the live ticks that keep arriving are
held, and released in epoch order when paging ends, so the sink still gets each epoch
once, in order.

Paging is bounded per symbol: at most ``max_pages`` page requests, a deadline, and at
most :data:`MAX_HELD_LIVE_TICKS` live ticks held; and for all symbols together by
:data:`MAX_HELD_TICKS` ticks held. A page that fails for a transient reason (the driver
says which: RateLimit, a backend error, no reply in time) is asked again after the house
backoff (:class:`~backend_core.backoff.FullJitter`), up to :data:`PAGE_TRIES` tries per
page and only while the retry falls before the deadline; live ticks stay held meanwhile.
When a bound is hit, or a page fails for good, what was received is released and only
the part that truly could not be filled is announced: ``gap_from = L`` on the first tick
released. A subscribe's reply whose ticks after ``L`` cannot be published (it came
without ``pip_size``) fails for good the same way; with no tick after ``L`` received yet
to carry ``gap_from``, the symbol's live ticks stay held until the first one does. The
driver (:class:`~backend_core.deriv.link.LinkProtocol`) sends the pages, matches their
replies by ``req_id``, arms a timer at :meth:`Backfill.next_deadline` and runs every
released tick through :class:`TickSequencer`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from operator import attrgetter
from typing import Final, NamedTuple

from backend_core.backoff import FullJitter
from backend_core.events import Tick

#: The link's counters of backfill: ticks recovered (by any reply, and by pages), gaps
#: announced, pages asked for, and pages asked for again after a transient failure.
COUNTERS: Final = ("ticks_backfilled", "ticks_paged", "backfill_gaps", "backfill_pages", "backfill_page_retries")
#: Page requests per symbol and outage, after the subscribe's own reply (10 x 5000 ticks:
#: about 14 hours of a 1 s symbol on top of the reply's 5000).
DEFAULT_MAX_PAGES: Final = 10
#: Live ticks held for one symbol while its pages arrive; more ends the paging early.
MAX_HELD_LIVE_TICKS: Final = 5000
#: Ticks held for all symbols at once (about 30 MB): a page that would pass it is not
#: asked for, and that symbol's paging ends with what it has.
MAX_HELD_TICKS: Final = 250_000
#: Tries per page (the first and its retries) when it fails for a transient reason.
PAGE_TRIES: Final = 3


def backfill_gap(last_epoch: int | None, times: Sequence[int], requested: int) -> int | None:
    """The epoch a backfill could not reach back to, or ``None`` when it left no gap. Pure.

    ``ticks_history`` from ``last_epoch`` (inclusive) answers the *latest* ``requested``
    ticks of the range (section 3.4). A reply shorter than that holds the whole range; a
    full one that starts after ``last_epoch`` left out the ticks in between.
    """
    if last_epoch is None or not times or len(times) < requested or times[0] <= last_epoch:
        return None
    return last_epoch


class TickSequencer:
    """Lets each (symbol, epoch) through once, in ascending epoch order. Pure."""

    __slots__ = ("_last", "duplicates")

    def __init__(self) -> None:
        self._last: dict[str, int] = {}
        self.duplicates = 0

    def accept(self, tick: Tick) -> bool:
        last = self._last.get(tick.symbol)
        if last is not None and tick.epoch <= last:
            self.duplicates += 1
            return False
        self._last[tick.symbol] = tick.epoch
        return True

    def accept_all(self, ticks: Iterable[Tick]) -> tuple[Tick, ...]:
        """The ticks :meth:`accept` lets through, in their order."""
        return tuple(filter(self.accept, ticks))

    def last_epoch(self, symbol: str) -> int | None:
        return self._last.get(symbol)

    def seed(self, symbol: str, epoch: int) -> None:
        """Treat ``epoch`` as published (a cluster's newest): later ticks only, backfilled from it."""
        if epoch > self._last.get(symbol, 0):
            self._last[symbol] = epoch


class Page(NamedTuple):
    """The next page to ask for: ``ticks_history`` from ``start`` to ``end``, ``count`` ticks
    (``retry``: the same page again, after a transient failure)."""

    start: int
    end: int
    retry: bool = False


@dataclass(frozen=True, slots=True)
class Release:
    """A symbol's backfill is over: publish ``ticks`` (ascending epochs) through the sequencer.

    ``gap`` is ``(gap_from, first epoch after it)`` when part of the outage could not be
    filled (``reason`` says why); the first tick then carries ``gap_from``. ``paged``:
    how many of the ticks came from pages.
    """

    ticks: Sequence[Tick]
    gap: tuple[int, int] | None = None
    reason: str = ""
    paged: int = 0


@dataclass(slots=True)
class _Paging:
    last: int  # the last published epoch: the page requests' start, the gap's from
    deadline: float  # monotonic
    oldest: int  # the oldest epoch received so far: the next page ends just before it
    held: list[Tick]  # pages and the subscribe's reply, oldest first
    live: list[Tick] = field(default_factory=list)
    pages: int = 0  # pages asked for
    paged: int = 0  # ticks received from pages
    req_id: int | None = None  # the page in flight
    failures: int = 0  # transient failures of the current page
    retry_at: float | None = None  # monotonic: the current page is asked again then
    failed: str = ""  # why the current page last failed
    ended: str = ""  # why it ended with a gap while no tick after ``last`` had come to carry it


class Backfill:
    """Each symbol's backfill: direct when one reply reaches back, paged otherwise (see the module)."""

    def __init__(
        self,
        count: int,
        max_pages: int,
        deadline_s: float,
        backoff: FullJitter,
        max_held: int = MAX_HELD_TICKS,
        tries: int = PAGE_TRIES,
    ) -> None:
        self.count = count
        self.max_pages = max(0, max_pages)
        self.deadline_s = deadline_s
        self.backoff = backoff
        self.max_held = max_held
        self.tries = max(1, tries)
        self.sequencer = TickSequencer()
        #: Symbols being paged, or whose gap waits for a tick to carry it: their live ticks
        #: go to :meth:`hold`, not to the sink.
        self.paging: dict[str, _Paging] = {}

    def replied(
        self, symbol: str, since: int | None, ticks: Sequence[Tick], now: float, unpublished: Sequence[int] = ()
    ) -> Page | Release:
        """The subscribe's ``ticks_history`` reply, asked from ``since`` (the last published epoch).

        ``unpublished``: the epochs of a reply whose quotes cannot be published (``ticks`` is
        then empty); if any comes after ``since``, the reply failed for good, as a page can.
        """
        self.paging.pop(symbol, None)
        last = since
        if last is not None and (lost := sum(1 for epoch in unpublished if epoch > last)):
            state = _Paging(last, now + self.deadline_s, last + 1, list(ticks))
            return self._release(symbol, state, f"{lost} ticks of the reply could not be published")
        if last is None or backfill_gap(last, [t.epoch for t in ticks], self.count) is None:
            return Release(ticks)
        state = _Paging(last, now + self.deadline_s, ticks[0].epoch, list(ticks))
        if self.max_pages == 0:
            return self._release(symbol, state, "paging is off")
        self.paging[symbol] = state
        return self._next_page(symbol, state)

    def sent(self, symbol: str, req_id: int) -> None:
        """The page :meth:`replied` or :meth:`page` asked for went out as ``req_id``."""
        state = self.paging.get(symbol)
        if state is not None:
            state.req_id = req_id

    def page(self, symbol: str, req_id: int, ticks: Sequence[Tick], now: float) -> Page | Release | None:
        """A page's reply (``None``: not the page in flight, ignore it)."""
        state = self.paging.get(symbol)
        if state is None or state.req_id != req_id:
            return None
        state.req_id, state.failures = None, 0
        # Only what lies in the range asked for (an upstream cannot make the loop go forward).
        fresh = [t for t in ticks if state.last < t.epoch < state.oldest]
        state.paged += len(fresh)
        if fresh:
            state.held[:0] = fresh
            state.oldest = fresh[0].epoch
        # Whether the range is complete is the reply's to say, not the part of it kept: a
        # full reply of ticks outside the range (an upstream ignoring ``end``) left the
        # range unfilled, and only paging on, up to its bounds, says so honestly.
        if backfill_gap(state.last, [t.epoch for t in ticks], self.count) is None:
            return self._release(symbol, state, None)
        if state.pages >= self.max_pages:
            return self._release(symbol, state, f"the outage outlasted {state.pages} pages of {self.count} ticks")
        if now >= state.deadline:
            return self._release(symbol, state, f"paging took longer than {self.deadline_s:g} s")
        return self._next_page(symbol, state)

    def page_failed(self, symbol: str, req_id: int, reason: str, now: float, transient: bool) -> Release | None:
        """A page got an error reply or none in time: asked again after the backoff when
        ``transient`` and tries and time are left (``None``: nothing to do now, as for a
        reply that is not the page in flight), else what was received is released."""
        state = self.paging.get(symbol)
        if state is None or state.req_id != req_id:
            return None
        state.req_id = None
        state.failures += 1
        if not transient:
            return self._release(symbol, state, f"a page failed: {reason}")
        if state.failures >= self.tries:
            return self._release(symbol, state, f"a page failed {state.failures} times: {reason}")
        at = now + self.backoff.delay(state.failures)
        if at >= state.deadline:
            return self._release(symbol, state, f"a page failed ({reason}) with no time left to retry it")
        state.retry_at, state.failed = at, reason
        return None

    def hold(self, tick: Tick) -> Release | None:
        """A live tick of a symbol being paged (``tick.symbol in paging``): held, or the
        release when the live buffer is full or the tick is the one a gap waited for."""
        state = self.paging[tick.symbol]
        state.live.append(tick)
        if state.ended:  # the tick the gap waited for, unless it was published before
            return self._release(tick.symbol, state, state.ended)
        if len(state.live) >= MAX_HELD_LIVE_TICKS:
            return self._release(tick.symbol, state, f"{len(state.live)} live ticks arrived while paging")
        return None

    def due(self, now: float) -> list[tuple[str, Page | Release]]:
        """Symbols with something to do at ``now``: the retry of a failed page, or the
        release of a paging whose deadline passed (even while it waited for a retry)."""
        out: list[tuple[str, Page | Release]] = []
        for symbol, state in list(self.paging.items()):
            if state.ended:
                continue  # only a live tick ends it
            if state.deadline <= now:
                why = f" (a page failed: {state.failed})" if state.retry_at is not None else ""
                reason = f"paging took longer than {self.deadline_s:g} s{why}"
                out.append((symbol, self._release(symbol, state, reason)))
            elif state.retry_at is not None and state.retry_at <= now:
                state.retry_at = None
                out.append((symbol, self._next_page(symbol, state, retry=True)))
        return out

    def next_deadline(self) -> float | None:
        """When :meth:`due` has something to do next."""
        return min(
            (
                min(s.deadline, s.retry_at) if s.retry_at is not None else s.deadline
                for s in self.paging.values()
                if not s.ended
            ),
            default=None,
        )

    def cancel(self, symbol: str | None = None) -> None:
        """Forget the paging of ``symbol`` (``None``: all): held ticks are dropped, unpublished;
        the next subscribe starts over from the last published epoch."""
        if symbol is None:
            self.paging.clear()
        else:
            self.paging.pop(symbol, None)

    def _next_page(self, symbol: str, state: _Paging, retry: bool = False) -> Page | Release:
        held = sum(len(s.held) + len(s.live) for s in self.paging.values())
        if held + self.count > self.max_held:
            return self._release(symbol, state, f"{held} ticks are held for the backfills in progress")
        if not retry:
            state.pages += 1
        return Page(state.last, state.oldest - 1, retry)

    def _release(self, symbol: str, state: _Paging, reason: str | None) -> Release:
        self.paging.pop(symbol, None)
        ticks = state.held + state.live
        ticks.sort(key=_epoch)  # runs already in order: linear; the sequencer drops repeats
        if reason is None:
            return Release(ticks, paged=state.paged)
        first = next((i for i, t in enumerate(ticks) if t.epoch > state.last), None)
        if first is None:
            # No tick yet to carry gap_from: held on, the next live one does (see hold).
            # What it holds was published before; the sequencer drops it.
            state.ended, state.req_id, state.retry_at, state.held, state.live = reason, None, None, [], []
            self.paging[symbol] = state
            return Release(ticks)
        if ticks[first].epoch == state.last + 1:  # epochs are whole seconds
            return Release(ticks, paged=state.paged)
        ticks[first] = replace(ticks[first], gap_from=state.last)
        return Release(ticks, (state.last, ticks[first].epoch), reason, state.paged)


_epoch: Final = attrgetter("epoch")
