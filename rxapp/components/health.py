"""The circuit breakers panel and the health summary."""

from __future__ import annotations

from typing import Any

import reflex as rx

from rxapp import styles
from rxapp.components.common import panel, plain_link, row_head, state_badge
from rxapp.state import StatusState


def _breaker(row: Any) -> rx.Component:
    return rx.box(
        row_head(
            rx.text(row["name"], weight="medium", size="2", flex="1", min_width="0", style={"word_break": "break-all"}),
            row,
        ),
        rx.hstack(
            rx.text(row["failures"], **styles.small_muted),
            rx.text("·", **styles.small_muted, aria_hidden="true"),
            rx.text(row["countdown"], **styles.small_muted, class_name="breaker-countdown"),
            spacing="1",
            wrap="wrap",
        ),
        rx.cond(row["last_failure"] != "", rx.text("Last failure: ", row["last_failure"], **styles.small_muted)),
        **styles.panel_row,
        custom_attrs={"data-breaker": row["key"], "data-state": row["state"]},
    )


def breakers_panel() -> rx.Component:
    return panel(
        "breakers",
        "Circuit breakers",
        "shield",
        rx.text(
            "They pause calls to a failing service so it can recover.", **styles.small_muted, margin_bottom="0.25rem"
        ),
        rx.foreach(StatusState.breakers, _breaker),
        live=True,
    )


def _health_row(row: Any) -> rx.Component:
    return rx.box(
        row_head(rx.text(row["name"], size="2", flex="1"), row),
        rx.cond(row["note"] != "", rx.text(row["note"], **styles.small_muted)),
        **styles.panel_row,
        custom_attrs={"data-component": row["key"], "data-status": row["status"]},
    )


def health_summary() -> rx.Component:
    return panel(
        "health",
        "Health",
        "heart-pulse",
        rx.text("The same checks as ", plain_link("/health", "/health/detailed"), ".", **styles.small_muted),
        rx.foreach(StatusState.health_rows, _health_row),
        aside=state_badge(StatusState.health_word, StatusState.health_icon, StatusState.health_tone, id="health-badge"),
        live=True,
    )
