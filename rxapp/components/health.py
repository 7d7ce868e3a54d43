"""The circuit breakers panel and the health summary."""

from __future__ import annotations

from typing import Any

import reflex as rx

from rxapp import styles
from rxapp.components.common import card, plain_link, section_heading, state_badge
from rxapp.state import StatusState


def _breaker(row: Any) -> rx.Component:
    return rx.box(
        rx.hstack(
            rx.text(row["name"], weight="medium", size="2", flex="1", min_width="0", style={"word_break": "break-all"}),
            state_badge(row["word"], row["icon"], row["tone"]),
            justify="between",
            align="center",
            spacing="2",
            width="100%",
        ),
        rx.hstack(
            rx.text(row["failures"], **styles.small_muted),
            rx.text("·", **styles.small_muted, aria_hidden="true"),
            rx.text(row["countdown"], **styles.small_muted, class_name="breaker-countdown"),
            spacing="1",
            wrap="wrap",
        ),
        rx.cond(row["last_failure"] != "", rx.text("Last failure: ", row["last_failure"], **styles.small_muted)),
        padding_y="0.5rem",
        border_top="1px solid var(--gray-a4)",
        width="100%",
        custom_attrs={"data-breaker": row["key"], "data-state": row["state"]},
    )


def breakers_panel() -> rx.Component:
    return rx.el.section(
        card(
            section_heading("Circuit breakers", "shield", heading_id="breakers-heading"),
            rx.text(
                "They pause calls to a failing service so it can recover.",
                **styles.small_muted,
                margin_bottom="0.25rem",
            ),
            rx.foreach(StatusState.breakers, _breaker),
            class_name="live-data",
        ),
        id="breakers",
        aria_labelledby="breakers-heading",
        width="100%",
    )


def _health_row(row: Any) -> rx.Component:
    return rx.box(
        rx.hstack(
            rx.text(row["name"], size="2", flex="1"),
            state_badge(row["word"], row["icon"], row["tone"]),
            justify="between",
            align="center",
            spacing="2",
            width="100%",
        ),
        rx.cond(row["note"] != "", rx.text(row["note"], **styles.small_muted)),
        padding_y="0.5rem",
        border_top="1px solid var(--gray-a4)",
        width="100%",
        custom_attrs={"data-component": row["key"], "data-status": row["status"]},
    )


def health_summary() -> rx.Component:
    return rx.el.section(
        card(
            section_heading(
                "Health",
                "heart-pulse",
                state_badge(
                    StatusState.health_word, StatusState.health_icon, StatusState.health_tone, id="health-badge"
                ),
                heading_id="health-heading",
            ),
            rx.text("The same checks as ", plain_link("/health", "/health/detailed"), ".", **styles.small_muted),
            rx.foreach(StatusState.health_rows, _health_row),
            class_name="live-data",
        ),
        id="health",
        aria_labelledby="health-heading",
        width="100%",
    )
