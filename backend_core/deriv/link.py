"""LinkProtocol: every decision about the one upstream link, with no I/O.

Modelled on python-websockets' ``protocol.py`` (the whole protocol, no I/O) under
``asyncio/connection.py`` (only moves bytes). :class:`LinkProtocol` never awaits, never
touches a socket and never reads a clock. The driver
(:class:`~backend_core.deriv.manager.DerivManager`) feeds it **events**, each with the
monotonic time, and carries out the **actions** it returns, in order.

Events: :meth:`~LinkProtocol.connected`, :meth:`~LinkProtocol.frame` (a parsed
message), :meth:`~LinkProtocol.send_failed`, :meth:`~LinkProtocol.deadline_reached`,
:meth:`~LinkProtocol.retry_requested`, :meth:`~LinkProtocol.closed`, and
:meth:`~LinkProtocol.request` (someone else's request). Actions: :class:`Send`,
:class:`PublishTick` (a live tick), :class:`PublishTicks` (a backfill's ticks, in order),
:class:`PublishStatus`, :class:`LinkUp`, :class:`CloseLink` (with its cause),
:class:`ArmDeadline` (one of two :class:`Timer`), :class:`Resolve`/:class:`Fail` (all in
:mod:`backend_core.deriv.actions`).

What it decides (sections of ``shared/deriv-protocol.md``):

* **Requests** are matched by ``req_id`` in a bounded pending map, each with a deadline.
* **Setup**: a ``website_status`` round trip proves the link (:class:`LinkUp`), then
  ``authorize`` when a token is set, then every symbol is subscribed.
* **Subscriptions** are desired state with a policy per error code (:func:`retry_policy`):
  InvalidSymbol is final, MarketIsClosed is asked again on a slow timer, RateLimit,
  Deriv's transient backend errors and a timeout back off with full jitter. One symbol's
  failure never touches the others.
* **No gaps, no duplicates**: a symbol that has published before is subscribed again with
  ``ticks_history`` from its last published epoch (3.4); an outage longer than one reply
  is paged in backwards, bounded (:mod:`backend_core.deriv.backfill`, which also holds
  the :class:`~backend_core.deriv.backfill.TickSequencer` that lets each epoch out once,
  in order); a page failing with a code a subscribe backs off on is asked again with the
  same backoff, a few times, within the deadline; ``gap_from`` announces only the rest.
* **Heartbeat**: a JSON ``ping`` an interval after each pong (5.1). A **dead or sick
  link** is found within ping interval + pong deadline: no pong in time (even while ticks
  flow), an error reply to a ping, a reply that cannot be parsed, or a full pending map.
* **Silent streams**: a symbol without a tick for ``stale_stream_s`` while the link
  answers pings is forgotten and subscribed again (streams can end without a drop, 5.3).
* **Planned drops**: ``website_status`` ``updating`` (3.9) marks the next close planned.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import Enum, StrEnum
from typing import Any, Final

from pydantic import SecretStr

from backend_core.backoff import FullJitter
from backend_core.deriv import messages, protocol
from backend_core.deriv.actions import (
    Action,
    ArmDeadline,
    CloseLink,
    Fail,
    LinkUp,
    PublishStatus,
    PublishTick,
    PublishTicks,
    Resolve,
    Send,
    Timer,
)
from backend_core.deriv.backfill import COUNTERS, DEFAULT_MAX_PAGES, Backfill, Page, Release
from backend_core.deriv.protocol import DerivCode
from backend_core.errors import DerivAPIError, ErrorCode, RequestTimeout, TooManyPendingRequests, UpstreamUnavailable
from backend_core.events import ErrorInfo, SymbolStatus
from backend_core.logs import LogThrottle

log = logging.getLogger("backend_core.deriv.link")

# Requests in flight at once. The link needs at most two per symbol (forget, subscribe or
# a backfill page; DERIV_SYMBOLS holds at most 50) plus a ping, website_status and authorize.
MAX_PENDING_REQUESTS: Final = 256
# Slots requests made through LinkProtocol.request leave free, so callers can never crowd
# out the link's own requests: a full map then always means the upstream stopped answering.
OWN_REQUEST_RESERVE: Final = 128
# Deriv answers any request within 15 s or sends a Timeout error (deriv-protocol.md 1).
REQUEST_TIMEOUT_S: Final = protocol.PROCESSING_TIMEOUT_S
# MarketIsClosed: look again this often (synthetic indices are open 24/7; others are not).
MARKET_CLOSED_RECHECK_S: Final = 300.0
# A subscribed symbol silent for this many ping intervals while the link answers pings is
# subscribed again (with backfill).
STALE_STREAM_PINGS: Final = 3
# A rate limit, and Deriv's backend errors that say nothing about the request
# (deriv-protocol.md 1 and 4).
TRANSIENT_SUBSCRIBE_ERRORS: Final = frozenset({DerivCode.RATE_LIMIT, *protocol.BACKEND_ERRORS})
# Deriv's req_id is a plain integer; wrap well inside 2**31 to stay portable.
_REQ_ID_WRAP: Final = 2_000_000_000


# --------------------------------------------------------------------------- pure helpers


class RetryPolicy(Enum):
    """What a failed subscribe means for its symbol."""

    SUBSCRIBED = "subscribed"  # AlreadySubscribed: the stream exists
    NEVER = "never"  # the symbol does not exist: asking again cannot help
    MARKET_CLOSED = "market_closed"  # ask again on a slow timer
    BACKOFF = "backoff"  # transient: ask again after a growing, jittered delay
    LATER = "later"  # anything else: ask again after a quiet period


def retry_policy(code: str) -> RetryPolicy:
    """The policy for a subscribe that failed with ``code`` (deriv-protocol.md 3.3 and 4). Pure."""
    if code == DerivCode.ALREADY_SUBSCRIBED:
        return RetryPolicy.SUBSCRIBED
    if code == DerivCode.INVALID_SYMBOL:
        return RetryPolicy.NEVER
    if code == DerivCode.MARKET_IS_CLOSED:
        return RetryPolicy.MARKET_CLOSED
    if code in TRANSIENT_SUBSCRIBE_ERRORS or code == ErrorCode.REQUEST_TIMEOUT:
        return RetryPolicy.BACKOFF
    return RetryPolicy.LATER


# --------------------------------------------------------------------------- state


@dataclass(frozen=True, slots=True)
class LinkConfig:
    """What the link is asked to do (from Settings); times in seconds."""

    symbols: tuple[str, ...]
    ping_interval_s: float
    pong_deadline_s: float
    request_timeout_s: float = REQUEST_TIMEOUT_S
    stale_stream_s: float | None = None  # None: STALE_STREAM_PINGS ping intervals
    backfill_count: int = protocol.MAX_HISTORY_COUNT
    backfill_max_pages: int = DEFAULT_MAX_PAGES  # pages after the subscribe's reply; 0: announce at once
    backfill_deadline_s: float | None = None  # None: one request timeout per page
    token: SecretStr | None = None
    max_pending: int = MAX_PENDING_REQUESTS
    market_closed_recheck_s: float = MARKET_CLOSED_RECHECK_S


class SubscriptionState(StrEnum):
    IDLE = "idle"  # not subscribed; asked for at ``retry_at`` (or at setup)
    FORGETTING = "forgetting"  # a silent stream's forget is in flight; subscribe follows
    REQUESTED = "requested"  # a subscribe is in flight
    SUBSCRIBED = "subscribed"
    REJECTED = "rejected"  # InvalidSymbol: never asked again


@dataclass(slots=True)
class _Symbol:
    name: str
    state: SubscriptionState = SubscriptionState.IDLE
    retry_at: float | None = None
    attempts: int = 0  # failed subscribes in a row, for the backoff
    req_id: int | None = None  # the latest subscribe request (late replies still count)
    backfill_from: int | None = None  # the epoch that request asked history from
    subscription_id: str | None = None  # only ids forget accepts are kept
    last_activity: float = 0.0  # monotonic: last tick or subscription, for the watchdog
    last_tick_at: float | None = None  # monotonic
    failed_code: str | None = None
    failed_reason: str | None = None
    gap: tuple[int, int] | None = None  # the latest unfilled backfill gap (from, to)


class _Kind(Enum):
    PROBE = "website_status"
    AUTHORIZE = "authorize"
    SUBSCRIBE = "subscribe"
    PAGE = "page"  # an earlier page of a backfill (no subscribe)
    FORGET = "forget"
    PING = "ping"
    EXTERNAL = "external"


@dataclass(slots=True)
class _Pending:
    kind: _Kind
    method: str
    sent_at: float
    deadline: float
    symbol: str | None = None


class _Phase(Enum):
    CLOSED = "closed"
    PROBING = "probing"
    AUTHORIZING = "authorizing"
    READY = "ready"


# --------------------------------------------------------------------------- the protocol


class LinkProtocol:
    """The upstream link's state machine: events in, actions out (see the module docstring)."""

    def __init__(self, config: LinkConfig, backoff: FullJitter) -> None:
        self.config = config
        self._backoff = backoff
        self._stale_s = (
            config.stale_stream_s if config.stale_stream_s is not None else STALE_STREAM_PINGS * config.ping_interval_s
        )
        self._backfill_count = max(1, min(config.backfill_count, protocol.MAX_HISTORY_COUNT))
        self._symbols = {s: _Symbol(s) for s in config.symbols}
        deadline_s = config.backfill_deadline_s
        if deadline_s is None:
            deadline_s = max(1, config.backfill_max_pages) * config.request_timeout_s
        self._backfill = Backfill(self._backfill_count, config.backfill_max_pages, deadline_s, backoff)
        self._sequencer = self._backfill.sequencer
        self._pending: dict[int, _Pending] = {}
        self._req_ids = itertools.count(1)
        self._phase = _Phase.CLOSED
        self._ping_req: int | None = None
        self._next_ping_at = 0.0
        self._last_pong_at: float | None = None
        self._armed: dict[Timer, float | None] = {Timer.HEARTBEAT: None, Timer.WATCHDOG: None}
        self._dirty = False
        # Counters for metrics (the manager adds its own).
        self.stats = dict.fromkeys(("ticks_received", "ticks_published", "protocol_errors", *COUNTERS), 0)
        self.planned = False
        self.site_status: str | None = None
        self.last_pong_latency_s: float | None = None
        self._log = LogThrottle(log)

    # ------------------------------------------------------------------ queries

    @property
    def is_open(self) -> bool:
        return self._phase is not _Phase.CLOSED

    @property
    def pending_count(self) -> int:
        return len(self._pending)

    @property
    def duplicates(self) -> int:
        return self._sequencer.duplicates

    def last_epoch(self, symbol: str) -> int | None:
        return self._sequencer.last_epoch(symbol)

    def seed_epochs(self, epochs: Mapping[str, int]) -> None:
        """The newest epoch known per symbol elsewhere (a cluster's tick log): the next
        subscribe backfills from it with ``ticks_history``, so a takeover loses no tick."""
        for symbol, epoch in epochs.items():
            if symbol in self._symbols and epoch > 0:
                self._sequencer.seed(symbol, epoch)

    def waiting_symbols(self) -> list[str]:
        """Symbols that failed and wait for their next attempt (a retry would ask now)."""
        return [s.name for s in self._symbols.values() if s.state is SubscriptionState.IDLE and s.retry_at is not None]

    def symbol_statuses(self, wall_offset_s: float) -> tuple[SymbolStatus, ...]:
        """Per-symbol health; ``wall_offset_s`` turns this protocol's monotonic times into wall time."""
        return tuple(
            SymbolStatus(
                symbol=s.name,
                subscribed=s.state is SubscriptionState.SUBSCRIBED,
                last_epoch=self._sequencer.last_epoch(s.name),
                last_tick_at=None if s.last_tick_at is None else s.last_tick_at + wall_offset_s,
                failed_code=s.failed_code,
                failed_reason=s.failed_reason,
                gap_from=s.gap[0] if s.gap else None,
                gap_to=s.gap[1] if s.gap else None,
            )
            for s in self._symbols.values()
        )

    # ------------------------------------------------------------------ events

    def connected(self, now: float) -> list[Action]:
        """A new WebSocket is open: start the setup and the heartbeat."""
        self._pending.clear()
        self._backfill.cancel()
        self._phase = _Phase.PROBING
        self._ping_req = None
        self._next_ping_at = now + self.config.ping_interval_s
        self._last_pong_at = None
        self._armed = {Timer.HEARTBEAT: None, Timer.WATCHDOG: None}
        self.planned = False
        for sym in self._symbols.values():
            if sym.state is not SubscriptionState.REJECTED:
                sym.state, sym.retry_at, sym.attempts, sym.req_id = SubscriptionState.IDLE, None, 0, None
                sym.subscription_id = None
        actions = self._register(_Kind.PROBE, protocol.website_status(self._next_req_id(), subscribe=True), now)
        return self._with_deadlines(actions)

    def frame(self, message: messages.Message, now: float) -> list[Action]:
        """A frame arrived. The tick path is the hot one: it allocates one action."""
        if not self.is_open:
            return []
        if type(message) is messages.TickMessage:
            actions = self._on_tick(message, now)
        elif type(message) is messages.History:
            actions = self._on_history(message, now)
        elif type(message) is messages.ProtocolFrameError:
            actions = self._on_unreadable(message, now)
        elif type(message) is messages.ApiError:
            actions = self._on_error(message, now)
        else:
            actions = []
            req_id = message.req_id
            entry = self._pending.pop(req_id, None) if req_id is not None else None
            if entry is not None:
                assert req_id is not None
                self._dirty = True
                actions = self._on_reply(req_id, entry, message, now)
            if type(message) is messages.WebsiteStatus and self.is_open:
                actions += self._on_site_status(message)
        return self._with_deadlines(actions) if self._dirty else actions

    def send_failed(self, req_id: int, reason: str, now: float) -> list[Action]:
        """Sending request ``req_id`` failed: the WebSocket is gone."""
        entry = self._pending.pop(req_id, None)
        method = entry.method if entry is not None else "a request"
        return self._close(
            ErrorInfo(ErrorCode.CONNECTION_LOST, f"The market data link dropped while sending {method}: {reason}.", 0)
        )

    def deadline_reached(self, timer: Timer, now: float) -> list[Action]:
        """The deadline armed for ``timer`` passed (or any earlier moment: nothing is due early)."""
        if not self.is_open:
            return []
        self._armed[timer] = None
        self._dirty = True
        actions = self._heartbeat(now) if timer is Timer.HEARTBEAT else self._watchdog(now)
        return self._with_deadlines(actions)

    def retry_requested(self, now: float) -> list[Action]:
        """A person asked to retry: every waiting symbol is asked for at once.

        Only moves their retry time to ``now``; the sends follow from the heartbeat timer.
        """
        for sym in self._symbols.values():
            if sym.state is SubscriptionState.IDLE and sym.retry_at is not None:
                sym.retry_at = now
                self._dirty = True
        return self._with_deadlines([])

    def closed(self, reason: str, now: float) -> list[Action]:
        """The WebSocket closed (``reason`` in words, e.g. "closed with code 1011")."""
        if not self.is_open:
            return []
        if self.planned:
            message = "Deriv is updating its servers; reconnecting."
            return self._close(ErrorInfo(ErrorCode.SITE_UPDATING, message, 0), planned=True)
        return self._close(ErrorInfo(ErrorCode.CONNECTION_LOST, f"The market data link dropped: {reason}.", 0))

    def request(self, payload: Mapping[str, Any], now: float, timeout_s: float | None = None) -> list[Action]:
        """Someone else's request, answered by :class:`Resolve` or :class:`Fail` (its ``req_id``).

        Raises UpstreamUnavailable, TooManyPendingRequests (the callers' share of the map is
        full) or ValueError (no integer ``req_id``, or one already in flight).
        """
        if not self.is_open:
            raise UpstreamUnavailable("the market data link is not connected")
        req_id = payload.get("req_id")
        if type(req_id) is not int:
            raise ValueError("a request needs an integer req_id")
        if req_id in self._pending:
            raise ValueError(f"req_id {req_id} is already in flight")
        if len(self._pending) >= self.config.max_pending - OWN_REQUEST_RESERVE:
            raise TooManyPendingRequests(f"{len(self._pending)} upstream requests are already in flight")
        method = next(iter(payload))
        deadline = now + (timeout_s if timeout_s is not None else self.config.request_timeout_s)
        self._pending[req_id] = _Pending(_Kind.EXTERNAL, method, now, deadline)
        self._dirty = True
        return self._with_deadlines([Send(req_id, method, payload)])

    # ------------------------------------------------------------------ frames

    def _on_tick(self, message: messages.TickMessage, now: float) -> list[Action]:
        stats = self.stats
        stats["ticks_received"] += 1
        tick = message.tick
        actions: list[Action] = []
        sym = self._symbols.get(tick.symbol)
        if sym is not None:
            sym.last_activity = now
            if message.subscription_id is not None:
                sym.subscription_id = _forgettable(message.subscription_id)
            if tick.symbol in self._backfill.paging:  # held until its earlier pages are in
                release = self._backfill.hold(tick)
                if release is not None:
                    actions += self._release(sym, release, now)
            elif self._sequencer.accept(tick):
                sym.last_tick_at = now
                stats["ticks_published"] += 1
                actions.append(PublishTick(tick))
        req_id = message.req_id
        if req_id is not None and req_id in self._pending:
            # The first tick answers a ``ticks`` subscribe (3.3: there is no other reply).
            entry = self._pending.pop(req_id)
            self._dirty = True
            actions += self._on_reply(req_id, entry, message, now)
        elif sym is not None and sym.state is SubscriptionState.IDLE and req_id is not None and req_id == sym.req_id:
            actions += self._subscribed(sym, now)  # a late answer to a subscribe that timed out
        return actions

    def _on_history(self, message: messages.History, now: float) -> list[Action]:
        req_id = message.req_id
        entry = self._pending.pop(req_id, None) if req_id is not None else None
        if entry is not None:
            self._dirty = True
            if entry.kind is _Kind.EXTERNAL:
                assert req_id is not None
                return [Resolve(req_id, message)]
            if entry.kind is not _Kind.SUBSCRIBE and entry.kind is not _Kind.PAGE:
                return self._unexpected(entry, message)
        name = message.symbol or (entry.symbol if entry is not None else None)
        sym = self._symbols.get(name) if name is not None else None
        if sym is None:
            return []
        if message.symbol is None:
            message = replace(message, symbol=sym.name)
        sym.last_activity = now
        ticks = message.to_ticks()
        unpublished = message.times if len(ticks) != len(message.times) else ()
        if unpublished:  # no pip_size: its quotes cannot be published (3.4)
            self._log.log(
                now,
                logging.WARNING,
                f"{sym.name}:pip_size",
                "%s: a ticks_history reply without pip_size: its %d ticks cannot be published",
                sym.name,
                len(unpublished),
            )
        if entry is not None and entry.kind is _Kind.PAGE:
            assert req_id is not None
            if unpublished:
                release = self._backfill.page_failed(sym.name, req_id, "a page without pip_size", now, transient=False)
                return [] if release is None else self._release(sym, release, now)
            outcome = self._backfill.page(sym.name, req_id, ticks, now)
            return [] if outcome is None else self._follow(sym, outcome, now)
        answers_subscribe = req_id is not None and req_id == sym.req_id
        if message.subscription_id is not None:
            sym.subscription_id = _forgettable(message.subscription_id)
        if answers_subscribe:
            outcome = self._backfill.replied(sym.name, sym.backfill_from, ticks, now, unpublished)
            actions = self._follow(sym, outcome, now)
        elif sym.name in self._backfill.paging:
            return []  # a stray reply: the pages cover its range, and their order must hold
        else:
            actions = self._release(sym, Release(ticks), now)
        if answers_subscribe and sym.state in (SubscriptionState.REQUESTED, SubscriptionState.IDLE):
            actions += self._subscribed(sym, now)
        return actions

    def _follow(self, sym: _Symbol, outcome: Page | Release, now: float) -> list[Action]:
        """Ask for the next page of ``sym``'s backfill, or publish what it released."""
        if isinstance(outcome, Release):
            return self._release(sym, outcome, now)
        req_id = self._next_req_id()
        payload = protocol.ticks_history(
            sym.name, req_id, end=outcome.end, start=outcome.start, count=self._backfill_count
        )
        self._backfill.sent(sym.name, req_id)
        self.stats["backfill_page_retries" if outcome.retry else "backfill_pages"] += 1
        return self._register(_Kind.PAGE, payload, now, sym.name)

    def _release(self, sym: _Symbol, release: Release, now: float) -> list[Action]:
        """Publish a backfill's ticks in order, and announce the part it could not fill."""
        stats = self.stats
        actions: list[Action] = []
        if release.gap is not None:
            sym.gap = release.gap  # published with the status below
            stats["backfill_gaps"] += 1
            lost = f"ticks after epoch {release.gap[0]} and before {release.gap[1]} are lost"
            log.warning("%s: the outage could not be backfilled (%s): %s", sym.name, release.reason, lost)
        stats["ticks_paged"] += release.paged
        ticks = self._sequencer.accept_all(release.ticks)  # one action for all: thousands after an outage
        if ticks:
            sym.last_tick_at = now
            stats["ticks_published"] += len(ticks)
            stats["ticks_backfilled"] += sum(1 for tick in ticks if tick.backfill)
            actions.append(PublishTicks(ticks))
        if release.gap is not None:
            actions.append(PublishStatus())
        return actions

    def _on_unreadable(self, message: messages.ProtocolFrameError, now: float) -> list[Action]:
        self.stats["protocol_errors"] += 1
        req_id = message.req_id
        entry = self._pending.pop(req_id, None) if req_id is not None else None
        if entry is not None:
            # A reply we cannot read: whatever the link says next cannot be trusted.
            reason = f"The market data server sent an unreadable reply to {entry.method}: {message.reason}."
            return self._close(ErrorInfo(ErrorCode.PROTOCOL_ERROR, reason, 0))
        self._log.log(
            now, logging.WARNING, ErrorCode.PROTOCOL_ERROR, "unreadable frame from upstream: %s", message.reason
        )
        return [
            PublishStatus(ErrorInfo(ErrorCode.PROTOCOL_ERROR, f"Unreadable frame from upstream: {message.reason}", 0))
        ]

    def _on_error(self, message: messages.ApiError, now: float) -> list[Action]:
        req_id = message.req_id
        entry = self._pending.pop(req_id, None) if req_id is not None else None
        if entry is None:
            text = f"upstream error for {message.msg_type}: {message.code} {message.message}"
            self._log.log(now, logging.WARNING, message.code, "%s", text)
            return [PublishStatus(ErrorInfo(message.code, message.message, 0))]
        assert req_id is not None
        self._dirty = True
        return self._failed(req_id, entry, message.to_exception(), now)

    def _on_reply(self, req_id: int, entry: _Pending, message: messages.Message, now: float) -> list[Action]:
        kind = entry.kind
        if kind is _Kind.EXTERNAL:
            return [Resolve(req_id, message)]
        if kind is _Kind.PING:
            if type(message) is not messages.Pong:
                return self._unexpected(entry, message)
            return self._pong(entry, now)
        if kind is _Kind.PROBE:
            return self._link_proven(now)
        if kind is _Kind.AUTHORIZE:
            if type(message) is not messages.Authorize:
                return self._unexpected(entry, message)
            return self._authorized(now, None)
        if kind is _Kind.FORGET:
            return self._forgotten(entry, now)
        sym = self._symbols.get(entry.symbol) if entry.symbol is not None else None
        if type(message) is not messages.TickMessage or sym is None:
            return self._unexpected(entry, message)
        return self._subscribed(sym, now) if sym.req_id == req_id else []

    def _unexpected(self, entry: _Pending, message: messages.Message) -> list[Action]:
        reason = f"The market data server answered {entry.method} with a {message.msg_type} frame."
        return self._close(ErrorInfo(ErrorCode.PROTOCOL_ERROR, reason, 0))

    def _on_site_status(self, message: messages.WebsiteStatus) -> list[Action]:
        changed = message.site_status != self.site_status
        self.site_status = message.site_status
        if message.site_status == "updating":
            self.planned = True
            log.info("upstream announced an update: %s", message.message)
            text = message.message or "Deriv is updating its servers; reconnecting."
            return [PublishStatus(ErrorInfo(ErrorCode.SITE_UPDATING, text, 0))]
        return [PublishStatus()] if changed else []

    # ------------------------------------------------------------------ setup

    def _link_proven(self, now: float) -> list[Action]:
        actions: list[Action] = [LinkUp()]
        if self.config.token is not None:
            self._phase = _Phase.AUTHORIZING
            payload = protocol.authorize(self.config.token.get_secret_value(), self._next_req_id())
            return actions + self._register(_Kind.AUTHORIZE, payload, now)
        return actions + self._start_subscriptions(now)

    def _authorized(self, now: float, error: ErrorInfo | None) -> list[Action]:
        actions: list[Action] = []
        if error is not None:
            # Ticks need no authorization: keep streaming, but say why auth failed.
            log.error("authorize failed: %s", error.code)
            actions.append(PublishStatus(error))
        return actions + self._start_subscriptions(now)

    def _start_subscriptions(self, now: float) -> list[Action]:
        self._phase = _Phase.READY
        actions: list[Action] = []
        for sym in self._symbols.values():
            if sym.state is SubscriptionState.IDLE:
                actions += self._subscribe(sym, now)
        return actions

    # ------------------------------------------------------------------ subscriptions

    def _subscribe(self, sym: _Symbol, now: float) -> list[Action]:
        self._backfill.cancel(sym.name)  # a paging in progress starts over from the new reply
        last = self._sequencer.last_epoch(sym.name)
        req_id = self._next_req_id()
        if last is None:
            payload = protocol.ticks(sym.name, req_id)
        else:
            payload = protocol.ticks_history(
                sym.name, req_id, end="latest", start=last, count=self._backfill_count, subscribe=True
            )
        sym.state, sym.req_id, sym.backfill_from, sym.retry_at = SubscriptionState.REQUESTED, req_id, last, None
        return self._register(_Kind.SUBSCRIBE, payload, now, sym.name)

    def _subscribed(self, sym: _Symbol, now: float) -> list[Action]:
        sym.state, sym.retry_at, sym.attempts = SubscriptionState.SUBSCRIBED, None, 0
        sym.last_activity = now
        sym.failed_code = sym.failed_reason = None
        self._dirty = True
        return [PublishStatus()]

    def _subscribe_failed(self, sym: _Symbol, code: str, message: str, now: float) -> list[Action]:
        policy = retry_policy(code)
        if policy is RetryPolicy.SUBSCRIBED:
            return self._subscribed(sym, now)
        sym.state = SubscriptionState.IDLE
        sym.last_activity = now
        if policy is RetryPolicy.NEVER:
            sym.state, sym.retry_at = SubscriptionState.REJECTED, None
            reason = f"Deriv does not offer {sym.name}: {message}"
        elif policy is RetryPolicy.MARKET_CLOSED:
            sym.retry_at = now + self.config.market_closed_recheck_s
            reason = f"The market for {sym.name} is closed."
        elif policy is RetryPolicy.BACKOFF:
            sym.attempts += 1
            sym.retry_at = now + self._backoff.delay(sym.attempts)
            if code == DerivCode.RATE_LIMIT:
                reason = f"Rate limited while subscribing to {sym.name}; retrying."
            else:
                reason = f"Deriv could not subscribe {sym.name} ({message}); retrying."
        else:
            sym.retry_at = now + self._stale_s
            reason = message
        sym.failed_code, sym.failed_reason = code, reason
        self._dirty = True
        self._log.log(now, logging.WARNING, f"{sym.name}:{code}", "symbol %s: %s (%s)", sym.name, reason, code)
        return [PublishStatus(ErrorInfo(code, reason, 0))]

    def _forgotten(self, entry: _Pending, now: float) -> list[Action]:
        sym = self._symbols.get(entry.symbol) if entry.symbol is not None else None
        if sym is None or sym.state is not SubscriptionState.FORGETTING:
            return []
        return self._subscribe(sym, now)

    # ------------------------------------------------------------------ timers

    def _heartbeat(self, now: float) -> list[Action]:
        actions: list[Action] = []
        expired = [(req_id, entry) for req_id, entry in self._pending.items() if entry.deadline <= now]
        for req_id, entry in expired:
            del self._pending[req_id]
            actions += self._failed(req_id, entry, None, now)
            if not self.is_open:
                return actions
        if self._ping_req is None and now >= self._next_ping_at:
            self._ping_req = self._next_req_id()
            actions += self._register(_Kind.PING, protocol.ping(self._ping_req), now)
            if not self.is_open:
                return actions
        for symbol, outcome in self._backfill.due(now):  # page retries and paging deadlines
            actions += self._follow(self._symbols[symbol], outcome, now)
            if not self.is_open:
                return actions
        if self._phase is _Phase.READY:
            for sym in self._symbols.values():
                if sym.state is SubscriptionState.IDLE and sym.retry_at is not None and sym.retry_at <= now:
                    log.info("asking again for %s (last attempt: %s)", sym.name, sym.failed_code)
                    actions += self._subscribe(sym, now)
                    if not self.is_open:
                        return actions
        return actions

    def _failed(self, req_id: int, entry: _Pending, error: DerivAPIError | None, now: float) -> list[Action]:
        """One of the link's requests got an error reply (``error``) or none in time (``None``)."""
        kind = entry.kind
        code, text = (
            (error.code, error.message) if error is not None else (ErrorCode.REQUEST_TIMEOUT, "no reply in time")
        )
        if kind is _Kind.EXTERNAL:
            return [Fail(req_id, error or RequestTimeout(f"no reply to {entry.method} within the deadline"))]
        if kind is _Kind.PING:
            if error is not None:
                reason = f"The market data server answered a ping with {code}: {text}"
                return self._close(ErrorInfo(ErrorCode.HEARTBEAT_REJECTED, reason, 0))
            log.warning("no pong within %.1fs: the link is dead, reconnecting", self.config.pong_deadline_s)
            return self._close(
                ErrorInfo(ErrorCode.HEARTBEAT_TIMEOUT, "The market data server stopped answering pings.", 0)
            )
        if kind is _Kind.PROBE:
            if error is None:
                reason = (
                    f"The market data server did not answer website_status within {self.config.request_timeout_s:g} s."
                )
                return self._close(ErrorInfo(ErrorCode.REQUEST_TIMEOUT, reason, 0))
            # An error reply is still a reply: the link works end to end. The subscribes
            # handle their own errors; the planned-update notice is what is lost.
            self._log.log(now, logging.WARNING, "probe", "website_status answered %s: %s", code, text)
            return [PublishStatus(ErrorInfo(code, f"website_status failed: {text}", 0)), *self._link_proven(now)]
        if kind is _Kind.AUTHORIZE:
            return self._authorized(now, ErrorInfo(code, f"Authorization failed: {text}", 0))
        if kind is _Kind.FORGET:
            return self._forgotten(entry, now)
        sym = self._symbols.get(entry.symbol) if entry.symbol is not None else None
        if sym is not None and kind is _Kind.PAGE:
            transient = retry_policy(code) is RetryPolicy.BACKOFF
            release = self._backfill.page_failed(sym.name, req_id, f"{code}: {text}", now, transient)
            return [] if release is None else self._release(sym, release, now)
        if sym is None or sym.req_id != req_id:
            return []
        return self._subscribe_failed(sym, code, text, now)

    def _pong(self, entry: _Pending, now: float) -> list[Action]:
        self._ping_req = None
        self._last_pong_at = now
        self._next_ping_at = now + self.config.ping_interval_s
        self.last_pong_latency_s = now - entry.sent_at
        return self._revive_silent_streams(now)

    def _watchdog(self, now: float) -> list[Action]:
        # Only on a link that answers pings: with a ping in flight, its pong (or its
        # deadline) decides first.
        if self._ping_req is not None or self._last_pong_at is None:
            return []
        return self._revive_silent_streams(now)

    def _revive_silent_streams(self, now: float) -> list[Action]:
        if self._phase is not _Phase.READY:
            return []
        actions: list[Action] = []
        for sym in self._symbols.values():
            # Stale from the moment the watchdog was armed for (>=, as every deadline): at that
            # very instant it acts, rather than arming itself for the same instant again.
            if sym.state is not SubscriptionState.SUBSCRIBED or now < sym.last_activity + self._stale_s:
                continue
            text = f"no tick for {sym.name} in {self._stale_s:.0f}s on a live link: re-subscribing"
            self._log.log(now, logging.WARNING, f"silent:{sym.name}", "%s", text)
            self._dirty = True
            if sym.subscription_id is None:
                actions += self._subscribe(sym, now)
            else:
                sym.state = SubscriptionState.FORGETTING
                payload = protocol.forget(sym.subscription_id, self._next_req_id())
                sym.subscription_id = None
                actions += self._register(_Kind.FORGET, payload, now, sym.name)
            if not self.is_open:
                break
        return actions

    # ------------------------------------------------------------------ plumbing

    def _next_req_id(self) -> int:
        while True:
            req_id = next(self._req_ids) % _REQ_ID_WRAP + 1
            if req_id not in self._pending:
                return req_id

    def _register(self, kind: _Kind, payload: dict[str, Any], now: float, symbol: str | None = None) -> list[Action]:
        """Track one of the link's own requests; a full map means the upstream stopped answering."""
        if len(self._pending) >= self.config.max_pending:
            reason = f"{len(self._pending)} requests to the market data server are unanswered."
            return self._close(ErrorInfo(ErrorCode.TOO_MANY_PENDING_REQUESTS, reason, 0))
        req_id = int(payload["req_id"])
        method = next(iter(payload))
        timeout = self.config.pong_deadline_s if kind is _Kind.PING else self.config.request_timeout_s
        self._pending[req_id] = _Pending(kind, method, now, now + timeout, symbol)
        self._dirty = True
        return [Send(req_id, method, payload)]

    def _close(self, cause: ErrorInfo, planned: bool = False) -> list[Action]:
        self._phase = _Phase.CLOSED
        self._pending.clear()
        self._backfill.cancel()  # held ticks were never published: the next link starts over
        self._ping_req = None
        for sym in self._symbols.values():
            if sym.state is not SubscriptionState.REJECTED:
                sym.state = SubscriptionState.IDLE
        self._dirty = False
        self._armed = {Timer.HEARTBEAT: None, Timer.WATCHDOG: None}
        return [CloseLink(cause, planned)]

    def _with_deadlines(self, actions: list[Action]) -> list[Action]:
        """Append the ArmDeadline actions for whatever the event changed."""
        if not self._dirty or not self.is_open:
            return actions
        self._dirty = False
        heartbeat: float | None = min((e.deadline for e in self._pending.values()), default=None)
        for at in (self._next_ping_at if self._ping_req is None else None, self._backfill.next_deadline()):
            if at is not None:
                heartbeat = at if heartbeat is None else min(heartbeat, at)
        watchdog: float | None = None
        # The watchdog acts only on a link that has answered its last ping (see _watchdog):
        # armed otherwise, it would fire again and again until the pong.
        watching = self._ping_req is None and self._last_pong_at is not None
        if self._phase is _Phase.READY:
            for sym in self._symbols.values():
                if sym.state is SubscriptionState.IDLE and sym.retry_at is not None:
                    heartbeat = sym.retry_at if heartbeat is None else min(heartbeat, sym.retry_at)
                elif watching and sym.state is SubscriptionState.SUBSCRIBED:
                    stale_at = sym.last_activity + self._stale_s
                    watchdog = stale_at if watchdog is None else min(watchdog, stale_at)
        for timer, at in ((Timer.HEARTBEAT, heartbeat), (Timer.WATCHDOG, watchdog)):
            if self._armed[timer] != at:
                self._armed[timer] = at
                actions.append(ArmDeadline(timer, at))
        return actions


def _forgettable(subscription_id: str) -> str | None:
    # An id forget would refuse (3.5) is useless to keep: the stream is then renewed by
    # subscribing again, never by a forget that raises.
    return subscription_id if protocol.SUBSCRIPTION_ID_PATTERN.match(subscription_id) else None
