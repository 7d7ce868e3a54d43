"""The circuit breakers panel and the health summary."""

from __future__ import annotations

from typing import Any

import reflex as rx

from rxapp import styles
from rxapp.components.common import muted_line, plain_link, rows_panel, state_badge, state_row
from rxapp.state import StatusState


def _breaker(row: Any) -> rx.Component:
    return state_row(
        rx.text(row["name"], weight="medium", size="2", flex="1", min_width="0", style={"word_break": "break-all"}),
        row,
        rx.hstack(
            rx.text(row["failures"], **styles.small_muted),
            rx.text("·", **styles.small_muted, aria_hidden="true"),
            rx.text(row["countdown"], **styles.small_muted, class_name="breaker-countdown"),
            spacing="1",
            wrap="wrap",
        ),
        muted_line(row["last_failure"], "Last failure: "),
        data={"data-breaker": row["key"], "data-state": row["state"]},
    )


def breakers_panel() -> rx.Component:
    return rows_panel(
        "breakers",
        "Circuit breakers",
        "shield",
        ("They pause calls to a failing service so it can recover.",),
        StatusState.breakers,
        _breaker,
    )


def _health_row(row: Any) -> rx.Component:
    return state_row(
        rx.text(row["name"], size="2", flex="1"),
        row,
        muted_line(row["note"]),
        data={"data-component": row["key"], "data-status": row["status"]},
    )


def health_summary() -> rx.Component:
    return rows_panel(
        "health",
        "Health",
        "heart-pulse",
        ("The same checks as ", plain_link("/health", "/health/detailed"), "."),
        StatusState.health_rows,
        _health_row,
        aside=state_badge(StatusState.health_word, StatusState.health_icon, StatusState.health_tone, id="health-badge"),
    )
