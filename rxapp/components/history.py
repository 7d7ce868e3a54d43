"""The history section: uptime bars, the incident list and the circuit breaker log.

Everything shown is decided by :mod:`rxapp.history_view` and stored on the state by the
page's refresh loop (from the runtime's :class:`~backend_core.history.reader.HistoryReader`); these
functions only place it. Each uptime bar carries its date, uptime % and incident count as
its tooltip (``title``) and accessible name (``role="img"`` with ``aria-label``), and a
legend names the colours, so no state is told by colour alone. The bars shrink to fit any
width; below 30em only the newest 30 days are shown (CSS on ``data-older``).
"""

from __future__ import annotations

from typing import Any, Final, NamedTuple

import reflex as rx

from rxapp import history_view, styles
from rxapp.components.common import panel, row_head, state_icon
from rxapp.state import StatusState


def _notice() -> rx.Component:
    """Said calmly: history is optional, the live status above does not depend on it."""
    return rx.cond(
        StatusState.history_notice != "",
        rx.hstack(
            rx.icon("database", size=16, aria_hidden="true", flex_shrink="0", margin_top="2px"),
            rx.text(StatusState.history_notice, size="2"),
            role="status",
            id="history-notice",
            **styles.history_notice,
        ),
    )


def _loading(text: str) -> rx.Component:
    return rx.text(text, **styles.muted, padding_y="0.5rem")


def _once_read(what: str, ready: rx.Component) -> rx.Component:
    """``ready`` once history was read; before that, or while it cannot be, a line about ``what``."""
    return rx.match(
        StatusState.history_state,
        ("loading", _loading(f"Loading {what}…")),
        ("unavailable", _loading(f"{what[0].upper()}{what[1:]} is not available right now.")),
        ready,
    )


# ---------------------------------------------------------------------------- uptime


def _window(window: Any) -> rx.Component:
    # Label and value side by side; stacked on a phone (CSS), so the four fit on one line.
    return rx.text(
        rx.el.span(window["label"], color="var(--gray-11)"),
        " ",
        rx.el.span(window["value"], font_weight="500", style={"font_variant_numeric": "tabular-nums"}),
        size="1",
        as_="span",
        class_name="uptime-window",
        custom_attrs={"data-window": window["key"]},
    )


def _bar(bar: Any) -> rx.Component:
    return rx.el.div(
        class_name="uptime-bar",
        title=bar["label"],
        role="img",
        aria_label=bar["label"],
        custom_attrs={
            "data-status": bar["status"],
            "data-date": bar["date"],
            "data-older": bar["older"],
            "data-today": bar["today"],
        },
    )


def _uptime_row(row: Any) -> rx.Component:
    return rx.box(
        rx.hstack(
            rx.text(row.name, weight="medium", size="2"),
            rx.hstack(
                rx.text("Uptime", as_="span", size="1", color="var(--gray-11)", class_name="uptime-windows-label"),
                rx.foreach(row.windows, _window),
                spacing="3",
                wrap="wrap",
                align="baseline",
                class_name="uptime-windows",
            ),
            justify="between",
            align="baseline",
            wrap="wrap",
            spacing="2",
            width="100%",
        ),
        rx.el.div(
            rx.foreach(row.bars, _bar),
            class_name="uptime-bars",
            role="group",
            aria_label=row.summary + ". One bar a day, oldest first.",
        ),
        rx.hstack(
            rx.text(
                rx.el.span(f"{history_view.HISTORY_DAYS} days ago", class_name="long-span"),
                rx.el.span(f"{history_view.PHONE_DAYS} days ago", class_name="short-span"),
                **styles.small_muted,
            ),
            rx.text("Today", **styles.small_muted),
            justify="between",
            width="100%",
            aria_hidden="true",
        ),
        class_name="uptime-row",
        width="100%",
        custom_attrs={"data-component": row.key},
    )


def _legend() -> rx.Component:
    return rx.hstack(
        *[
            rx.hstack(
                rx.el.span(class_name="uptime-swatch", custom_attrs={"data-tone": tone}, aria_hidden="true"),
                rx.text(word, **styles.small_muted),
                spacing="1",
                align="center",
            )
            for word, tone in history_view.LEGEND
        ],
        spacing="3",
        wrap="wrap",
        id="uptime-legend",
        aria_label="Colours of the bars",
    )


def uptime_panel() -> rx.Component:
    return panel(
        "uptime",
        "Uptime",
        "calendar-days",
        _once_read(
            "uptime",
            rx.vstack(
                rx.foreach(StatusState.uptime_rows, _uptime_row),
                _legend(),
                spacing="4",
                width="100%",
                margin_top="0.75rem",
            ),
        ),
        aside=f"last {history_view.HISTORY_DAYS} days, one bar a day (UTC)",
    )


# ---------------------------------------------------------------------------- incidents


def _fact(label: str, *value: Any, **props: Any) -> rx.Component:
    return rx.box(
        rx.text(label, **styles.small_muted),
        rx.text(*value, size="2", **props),
        min_width="0",
    )


def _incident(row: Any) -> rx.Component:
    return rx.el.li(
        row_head(rx.text(row["title"], weight="medium", size="2", class_name="incident-title"), row),
        rx.hstack(
            state_icon(row["cause_icon"], size=14, color="var(--gray-11)", flex_shrink="0", margin_top="3px"),
            rx.box(
                rx.text(row["cause"], size="2", class_name="incident-cause"),
                rx.cond(
                    row["detail"] != "",
                    rx.text(
                        row["detail"],
                        rx.cond(row["code"] != "", rx.fragment(" · ", rx.code(row["code"], variant="ghost")), ""),
                        **styles.small_muted,
                        class_name="incident-detail",
                    ),
                ),
                min_width="0",
            ),
            spacing="2",
            align="start",
            width="100%",
        ),
        rx.grid(
            _fact(
                "When",
                rx.el.time(row["started"], date_time=row["started_iso"]),
                rx.cond(row["ago"] != "", " · " + row["ago"], ""),
            ),
            _fact("How long", row["duration"], class_name="incident-duration"),
            _fact("Outcome", row["recovery"], class_name="incident-recovery"),
            **styles.incident_facts,
        ),
        custom_attrs={"data-state": row["state"], "data-component": row["component"], "data-kind": row["kind"]},
        class_name="incident",
        **styles.history_item,
    )


class _HistoryList(NamedTuple):
    """How a history list card is named: its anchor (``#incidents``), title and icon, what
    it holds (as in "Loading the incident list…"), what an empty one had none of (as in
    "No incidents in the last 90 days.") and how many rows it shows at the most."""

    anchor: str
    title: str
    icon: str
    what: str
    none: str
    most: int


_INCIDENTS: Final = _HistoryList(
    "incidents", "Incidents", "history", "the incident list", "incidents", history_view.MAX_INCIDENT_ROWS
)


def _list_panel(names: _HistoryList, rows: Any, item: Any) -> rx.Component:
    """A history list card: loading, unavailable, the rows newest first, or "No ... in the
    last N days" under the id ``<anchor>-empty``."""
    empty = rx.hstack(
        rx.icon("circle-check", size=16, color="var(--grass-11)", aria_hidden="true"),
        rx.text(f"No {names.none} in the last {history_view.HISTORY_DAYS} days.", size="2", id=f"{names.anchor}-empty"),
        spacing="2",
        align="center",
        padding_y="0.5rem",
    )
    listed = rx.cond(rows.length() > 0, rx.el.ol(rx.foreach(rows, item), **styles.history_list), empty)
    return panel(
        names.anchor,
        names.title,
        names.icon,
        _once_read(names.what, listed),
        aside=f"newest first, the last {names.most}",
    )


def incidents_panel() -> rx.Component:
    return _list_panel(_INCIDENTS, StatusState.incident_rows, _incident)


# ---------------------------------------------------------------------------- breaker log


def _transition(row: Any) -> rx.Component:
    return rx.el.li(
        rx.text(row["breaker"], weight="medium", size="2", class_name="transition-breaker"),
        rx.hstack(
            rx.text(row["from_word"], size="2", color="var(--gray-11)"),
            rx.icon("arrow-right", size=14, color="var(--gray-11)", aria_label="to", role="img"),
            rx.text(row["to_word"], size="2", weight="medium", color=f"var(--{row['tone']}-11)"),
            spacing="1",
            align="center",
            class_name="transition-change",
        ),
        rx.text(row["reason"], size="2", class_name="transition-reason"),
        rx.text(
            rx.el.time(row["at"], date_time=row["at_iso"]),
            rx.cond(row["ago"] != "", " · " + row["ago"], ""),
            **styles.small_muted,
            class_name="transition-at",
        ),
        custom_attrs={"data-breaker": row["key"], "data-from": row["from_state"], "data-to": row["to_state"]},
        class_name="transition",
        **styles.transition_row,
    )


_TRANSITIONS: Final = _HistoryList(
    "transitions",
    "Circuit breaker log",
    "scroll-text",
    "the circuit breaker log",
    "circuit breaker changes",
    history_view.MAX_TRANSITION_ROWS,
)


def transitions_panel() -> rx.Component:
    return _list_panel(_TRANSITIONS, StatusState.transition_rows, _transition)


def history_section() -> rx.Component:
    """Uptime, incidents and the breaker log, with one notice when history cannot be read."""
    return rx.vstack(
        _notice(),
        uptime_panel(),
        incidents_panel(),
        transitions_panel(),
        **styles.sections,
        id="history",
        custom_attrs={"data-state": StatusState.history_state},
    )
