"""Reflex state: a thin mirror of Runtime snapshots, pushed to every open page.

It mirrors the frontend hook of the system this replaces (``is_connected``,
``is_connecting``, ``connection_status``, ``error``, ``retry_count``, ``max_retries``,
``retry_connection``, ``reset_error``) and adds the display strings the page places. Every
word is decided by the pure functions of :mod:`rxapp.ui_logic`; this module only reads
snapshots and stores what they return.

One producer, many pages: each open page runs one background loop (:meth:`stream`) that
waits on the runtime's change signal (nothing polls the upstream) and, at most once a
second, refreshes ages and countdowns; it sleeps and waits on the runtime's clock, and
it awaits (the shared health run) only outside the state lock, so ``on_load`` itself never
awaits. Which pages have a loop is kept per process (:mod:`rxapp.page_loops`, not in the
state, which Redis shares between instances behind a balancer). The loop stops when the
page's socket is gone or now connected to another instance, when a newer loop of the same
page took over in this process, or when it has been cancelled (or, if Reflex's socket
registry cannot be read, after ``UNWATCHED_LIMIT_S``: never forever); a reconnecting page
runs ``on_load`` again, on whichever instance it reached, which starts a new one there. With
``VITE_ENABLE_REAL_TIME_UPDATES=false`` the loop refreshes on a timer of
``VITE_WS_RECONNECT_INTERVAL`` instead of waking on changes. Health is refreshed on every
status change (:func:`health_for_round`), so every panel tells the same state in the
same push; the runtime shares those runs between pages.

The ``VITE_*`` settings reach the page as vars set in ``on_load`` from the running
server's settings (the compiled page holds only the documented defaults), so a value set
at run time applies to a page built elsewhere (the Docker image builds once).

History (uptime bars, incidents, the breaker log) changes rarely and lives in the
database, so pages do not query it themselves: each asks the shared
:class:`~backend_core.history.reader.HistoryReader` when it loads, after a status change (at most
every 10 s) and otherwise once a minute (:func:`backend_core.history.reader.history_schedule`), and
applies what the reader last read. Asking never waits; a database that cannot answer only
changes what the history section says.

It holds no secrets: it reads only the public status the REST API also serves.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import asdict, dataclass, field
from typing import Any

import reflex as rx

from backend_core import status_view
from backend_core.config import Settings, load_settings
from backend_core.health import HealthReport
from backend_core.history.reader import HISTORY_LOAD_MAX_AGE_S, HistorySchedule, history_schedule
from backend_core.runtime import Runtime
from rxapp import history_view, ui_logic
from rxapp.cluster_view import cluster_rows
from rxapp.page_loops import Claim, PageLoops, Verdict, next_verdict, socket_watch
from rxapp.runtime_ref import get_page_loops, get_runtime

log = logging.getLogger("rxapp.state")

# Ages and countdowns on the page tick once a second even when nothing changes.
REFRESH_S = 1.0
# A burst of status changes (one failed attempt sets several fields) becomes one update.
COALESCE_S = 0.05
# With no status change, health (the database, the event loop) is refreshed this often.
HEALTH_REFRESH_S = 5.0
# Pages share one health run: a report at most this old, of the current status, is reused
# (one run per change or second however many pages are open, instead of one per page).
HEALTH_SHARED_S = 1.0
# A Retry outcome stays on the page this long (then the badge and detail say it all).
RETRY_MESSAGE_S = 12.0
# A refresh that keeps failing is logged on the first failure and then every this many.
ERROR_LOG_EVERY = 60
# A page loop that cannot read Reflex's socket registry cannot see its page go away; it
# ends after this long (a page still open then gets a new loop when it reconnects).
UNWATCHED_LIMIT_S = 600.0
# The sparkline shows the last minute (at most this many ticks).
SPARK_WINDOW_S = 60
SPARK_MAX_POINTS = 120


def browser_settings_of(settings: Settings) -> ui_logic.BrowserSettings:
    """The ``VITE_*`` settings the page uses, from the running server's settings."""
    return ui_logic.browser_settings(
        reconnect_attempts=settings.VITE_WS_RECONNECT_ATTEMPTS,
        interval_ms=settings.VITE_WS_RECONNECT_INTERVAL,
        real_time=settings.VITE_ENABLE_REAL_TIME_UPDATES,
        fallback=settings.VITE_WEBSOCKET_FALLBACK_ENABLED,
    )


# What the compiled page holds until the server's own values arrive: the documented
# defaults, never the environment of the build (the Docker image builds elsewhere).
BROWSER_DEFAULTS = browser_settings_of(load_settings({}))


@dataclass
class TipCard:
    """One group of troubleshooting tips, as the page renders it."""

    key: str = ""
    title: str = ""
    tips: list[str] = field(default_factory=list)


@dataclass
class UptimeRow:
    """One component's uptime bars and percentages, as the page renders them."""

    key: str = ""
    name: str = ""
    summary: str = ""
    windows: list[dict[str, str]] = field(default_factory=list)
    bars: list[dict[str, str]] = field(default_factory=list)


class StatusState(rx.State):
    # The hook of the replaced frontend.
    is_connected: bool = False
    is_connecting: bool = True
    connection_status: str = "connecting"
    error: str = ""
    retry_count: int = 0
    max_retries: int = 0

    # What the page shows (strings decided by rxapp.ui_logic).
    error_code: str = ""
    banner_level: str = "degraded"
    banner_title: str = "Checking the market feed…"
    banner_detail: str = "Loading the latest status."
    banner_icon: str = "loader"
    banner_tone: str = "gray"
    page_title: str = ui_logic.PRODUCT
    feed: dict[str, str] = {
        "state": "connecting",
        "word": "Checking",
        "icon": "loader",
        "tone": "gray",
        "since": "",
        "detail": "",
        "error": "",
        "error_code": "",
    }
    retry_busy: bool = False
    retry_message: str = ""
    tips: list[TipCard] = []
    ticks: list[dict[str, str]] = []
    breakers: list[dict[str, str]] = []
    health_word: str = "Checking"
    health_icon: str = "loader"
    health_tone: str = "gray"
    health_rows: list[dict[str, str]] = []
    # The cluster section (none for a single instance): rxapp.cluster_view.
    cluster_rows: list[dict[str, str]] = []
    announcement: str = ""
    updated_at: str = ""
    feed_url: str = ""
    simulated: bool = False
    version: str = ""
    # History: "loading" (nothing read yet), "ready", "unavailable" (no read has worked).
    history_state: str = "loading"
    history_notice: str = ""
    uptime_rows: list[UptimeRow] = []
    incident_rows: list[dict[str, str]] = []
    transition_rows: list[dict[str, str]] = []
    # The VITE_* settings of the running server (set on load; the build's are not used).
    reconnect_attempts: int = BROWSER_DEFAULTS.reconnect_attempts
    lost_after_attempts: int = BROWSER_DEFAULTS.lost_after_attempts
    reconnect_interval_ms: int = BROWSER_DEFAULTS.reconnect_interval_ms
    real_time_updates: bool = BROWSER_DEFAULTS.real_time_updates
    fallback_enabled: bool = BROWSER_DEFAULTS.fallback_enabled
    live_text: str = BROWSER_DEFAULTS.live_text

    # Backend vars live in Reflex's state manager, shared by every instance when that is
    # Redis: nothing process-local is kept here (which pages stream is rxapp.page_loops'),
    # and what must be compared across instances is made comparable (a wall-clock
    # deadline, a history version named with the process that read it).
    _history_seen: str = ""
    _dismissed_error_at: str = ""
    _retry_message_until: float = 0.0  # wall clock (s)

    # ------------------------------------------------------------------ applying a snapshot

    def _set(self, **values: Any) -> None:
        """Assign only what changed, so an unchanged var is not sent to the browser again."""
        for name, value in values.items():
            if getattr(self, name) != value:
                setattr(self, name, value)

    def _apply(self, status: dict[str, Any], history: dict[str, list[float]], now: float) -> None:
        runtime = get_runtime()
        upstream = status["upstream"]
        state = str(upstream.get("state", "stopped"))
        feed = ui_logic.feed_link_view(upstream, now)
        last_error = upstream.get("last_error") or {}
        dismissed = bool(self._dismissed_error_at) and last_error.get("at") == self._dismissed_error_at
        error = "" if dismissed else feed.error
        error_code = "" if dismissed else feed.error_code
        banner = ui_logic.banner_for(status, now)
        breaker_open = state == "circuit_open"
        failed_codes = [s.get("failed_code") for s in upstream.get("symbols") or []]
        tips = ui_logic.tips_for([error_code, *failed_codes], breaker_open=breaker_open)
        if self.retry_message and runtime.clock.wall() >= self._retry_message_until:
            self._set(retry_message="")
        self._set(
            is_connected=state == "connected",
            is_connecting=state in ("connecting", "reconnecting"),
            connection_status=state,
            error=error,
            error_code=error_code,
            retry_count=int(upstream.get("attempt") or 0),
            max_retries=int(upstream.get("max_attempts") or 0),
            banner_level=banner.level,
            banner_title=banner.title,
            banner_detail=banner.detail,
            banner_icon=banner.icon,
            banner_tone=banner.tone,
            page_title=banner.page_title,
            feed={**feed.to_dict(), "error": error, "error_code": error_code},
            retry_busy=bool(upstream.get("retry_in_progress")),
            tips=[TipCard(g.key, g.title, list(g.tips)) for g in tips],
            ticks=ui_logic.tick_rows(
                status["ticks"], history, runtime.settings.DERIV_SYMBOLS, upstream.get("symbols") or ()
            ),
            breakers=ui_logic.breaker_rows(status["circuit_breakers"]),
            announcement=ui_logic.announcement(banner, feed),
            updated_at=ui_logic.clock_time_utc(now),
            feed_url=str(upstream.get("url") or ""),
            simulated=bool(upstream.get("simulated")),
            version=str(status["service"]["version"]),
        )
        self._apply_history(now)

    def _apply_history(self, now: float) -> None:
        """The shared reader's last read; bars only when it changed, the lists every time
        (an ongoing incident's duration and the "5 min ago" words move on)."""
        snapshot = get_runtime().history_reader.snapshot
        # Each process's reader counts its own versions: "7" read by another instance is
        # not this one's 7.
        seen = f"{get_page_loops().process_key}:{snapshot.version}"
        if seen != self._history_seen:
            self._history_seen = seen
            views = [history_view.uptime_view(history) for history in snapshot.components]
            self._set(
                history_state=history_view.history_state(snapshot.version, has_data=snapshot.has_data),
                history_notice=history_view.history_notice(
                    snapshot.error, has_data=snapshot.has_data, updated_at=snapshot.read_at
                ),
                uptime_rows=[UptimeRow(v.key, v.name, v.summary, v.windows, v.bars) for v in views],
            )
        self._set(
            incident_rows=history_view.incident_rows(snapshot.incidents, now),
            transition_rows=history_view.transition_rows(snapshot.transitions, now),
        )

    def _apply_settings(self, settings: Settings) -> None:
        # BrowserSettings' fields are named as the vars above.
        self._set(**asdict(browser_settings_of(settings)))

    def _set_health(self, report: HealthReport) -> None:
        results = [(r.component_id, r.status, r.output) for r in report.results]
        health = ui_logic.health_view(report.status, results)
        self._set(
            health_word=health.word,
            health_icon=health.icon,
            health_tone=health.tone,
            health_rows=health.rows,
            cluster_rows=cluster_rows(report.results),
        )

    # ------------------------------------------------------------------ events

    @rx.event
    def on_load(self) -> Any:
        """Show the status at once; the page's loop adds health (it awaits outside the state lock)."""
        self._apply_settings(get_runtime().settings)
        self._apply(*_read_snapshot())
        return StatusState.stream

    @rx.event(background=True)
    async def stream(self) -> None:
        """Push fresh status to this page while its socket is on this process (bounded waits only)."""
        token = self.router.session.client_token
        task = asyncio.current_task()
        loops = get_page_loops()
        if task is None:  # pragma: no cover - Reflex runs every background event in a task
            return
        if loops.claim(token, task) is Claim.FULL:
            log.warning("status page loop not started: %d pages already stream from this process", len(loops))
            return
        try:
            await self._stream(token, loops, task)
        finally:
            loops.release(token, task)

    async def _stream(self, token: str, loops: PageLoops, task: asyncio.Task[Any]) -> None:
        runtime = get_runtime()
        settings = runtime.settings
        real_time = settings.VITE_ENABLE_REAL_TIME_UPDATES
        period_s = REFRESH_S if real_time else settings.VITE_WS_RECONNECT_INTERVAL / 1000.0
        clock = runtime.clock
        seen = runtime.status_version
        health_at = clock.monotonic()
        history = runtime.history_reader
        history.request(clock.monotonic() - HISTORY_LOAD_MAX_AGE_S, runtime.status_version)
        schedule = HistorySchedule(clock.monotonic(), seen)
        unwatched_since: float | None = None  # since when the socket registry could not be read
        failures = 0
        first = True  # the first round runs at once: it brings the health section
        while True:
            if first:
                first, changed = False, True
            else:
                changed, seen = await _next_round(runtime, seen, period_s, real_time=real_time)
            # Decided and released with no await in between. A reconnect here meanwhile
            # has claimed the page for its own loop (this one is no longer current), and
            # Reflex's cancellation of this loop's event chain may have been absorbed
            # below it (cancelling() stays set): both end this loop.
            verdict, unwatched_since = next_verdict(
                socket_watch(_token_manager(), token),
                clock.monotonic(),
                unwatched_since,
                UNWATCHED_LIMIT_S,
                current=loops.owns(token, task),
                cancel_requested=task.cancelling() > 0,
            )
            if verdict is Verdict.UNWATCHED_TOO_LONG:
                # Without the registry a gone page is never noticed: end rather than run forever.
                log.warning("status page loop ends: no Reflex socket registry for %.0f s", UNWATCHED_LIMIT_S)
            if runtime.shutting_down or verdict is not Verdict.GO_ON:
                return  # stream()'s finally releases the claim
            try:
                report = await health_for_round(runtime, changed=changed, health_at=health_at)
                if report is not None:
                    health_at = clock.monotonic()
                status_version = runtime.status_version
                schedule, fresh_after = history_schedule(
                    schedule, status_version, clock.monotonic(), failing=bool(history.snapshot.error)
                )
                if fresh_after is not None:
                    history.request(fresh_after, status_version)
                snapshot = _read_snapshot()
            except Exception:
                failures = _log_failure(failures)
                continue
            try:
                # With Reflex's state on Redis this is a Redis round trip, bounded by the
                # socket timeouts of REFLEX_REDIS_URL (rxapp/reflex_redis.py): a hung
                # Redis fails this round after that bound, and the next round tries again.
                # A cancellation of this loop does not break into it (PageLoops.unbroken):
                # it would leave the tab's state lock held.
                await loops.unbroken(_write_round(self, report, snapshot))
            except Exception:
                failures = _log_failure(failures)

    @rx.event
    def retry_connection(self) -> None:
        """A manual retry: the manager coalesces it with every other page's and its own."""
        runtime = get_runtime()
        outcome = runtime.retry_now()
        self.retry_message = outcome.message
        self._retry_message_until = runtime.clock.wall() + RETRY_MESSAGE_S
        self._apply(*_read_snapshot())

    @rx.event
    def reset_error(self) -> None:
        """Hide the current error until a new one happens."""
        last_error = status_view.status(get_runtime())["upstream"].get("last_error") or {}
        self._dismissed_error_at = str(last_error.get("at") or "")
        self.retry_message = ""
        self._apply(*_read_snapshot())


async def _write_round(page: Any, report: HealthReport | None, snapshot: tuple[Any, ...]) -> None:
    """Apply one round to the page's state (under the tab's state lock) and push it."""
    async with page:
        if report is not None:
            page._set_health(report)
        page._apply(*snapshot)


async def health_for_round(runtime: Runtime, *, changed: bool, health_at: float) -> HealthReport | None:
    """The health report a page's round applies, or None when it is not due.

    Due on every status change, so the health panel agrees with the banner, the feed card
    and the breakers within the same push, and otherwise every ``HEALTH_REFRESH_S``. The
    runtime shares runs between pages and reuses a report only while the status it ran on
    is current: a change seen by 20 pages is still one run.
    """
    if changed or runtime.clock.monotonic() - health_at >= HEALTH_REFRESH_S:
        return await runtime.health_report(max_age_s=HEALTH_SHARED_S)
    return None


async def _next_round(runtime: Runtime, seen: int, period_s: float, *, real_time: bool) -> tuple[bool, int]:
    """Wait for a page's next refresh on the runtime's clock: ``(status changed, version seen)``."""
    if not real_time:
        await runtime.clock.sleep(period_s)
        return True, seen
    version = await runtime.wait_for_change(seen, period_s)
    if version != seen:
        await runtime.clock.sleep(COALESCE_S)  # a burst of changes becomes one update
        version = runtime.status_version
    return version != seen, version


def _read_snapshot() -> tuple[dict[str, Any], dict[str, list[float]], float]:
    """The status JSON, the last minute of quotes per symbol, and the wall time."""
    runtime = get_runtime()
    status = status_view.status(runtime)
    history: dict[str, list[float]] = {}
    for tick in status["ticks"]:
        since = int(tick["epoch"]) - SPARK_WINDOW_S
        history[tick["symbol"]] = [t.quote for t in runtime.hub.ticks_since(tick["symbol"], since, SPARK_MAX_POINTS)]
    return status, history, runtime.clock.wall()


def _log_failure(failures: int) -> int:
    """One bad round must not end a page's live updates; the next round tries again.
    Logged on the first failure and then once a minute (bounded)."""
    if failures % ERROR_LOG_EVERY == 0:
        log.exception("status page refresh failed (%d so far); retrying", failures + 1)
    return failures + 1


def _token_manager() -> Any:
    """Reflex's token manager of this process (None outside a running app, or when
    Reflex's internals move: the page loop then ends after UNWATCHED_LIMIT_S).

    Read from the app Reflex registered for the running event (what its own handlers
    use), not through ``prerequisites.get_and_validate_app()``: that inserts the working
    directory into ``sys.path`` on every call, and every page asks once a second.
    """
    from reflex_base.registry import RegistrationContext

    try:
        namespace = RegistrationContext.get().app.event_namespace
    except Exception:  # outside a running app (LookupError, ReflexRuntimeError)
        return None
    return getattr(namespace, "_token_manager", None)
