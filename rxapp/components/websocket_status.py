"""``websocket_status``: the two links a reader depends on, side by side.

* the browser's live link to this server (client-side state, :mod:`.browser_link`);
* this server's market feed link to Deriv (from ``status_view.status()`` via the state).

Each shows a state word, an icon and a colour, how long it has been in that state, and
the last error in plain language.
"""

from __future__ import annotations

import reflex as rx

from rxapp import styles
from rxapp.components.browser_link import browser_link_card
from rxapp.components.common import (
    card,
    icon_button,
    link_card_head,
    open_section,
    section_heading,
    state_badge,
    state_icon,
)
from rxapp.components.retry import retry_button
from rxapp.state import StatusState


def feed_link_card() -> rx.Component:
    feed = StatusState.feed
    return card(
        rx.vstack(
            link_card_head(
                "This server → Deriv market feed",
                rx.cond(StatusState.simulated, "Simulated Deriv API (no internet needed)", "Deriv API v3"),
                state_badge(feed["word"], feed["icon"], feed["tone"], id="feed-badge"),
                rx.text(feed["since"], id="feed-since", **styles.small_muted),
            ),
            rx.text(feed["detail"], id="feed-detail", **styles.muted),
            rx.cond(
                feed["error"] != "",
                rx.hstack(
                    state_icon("circle-x", size=16, flex_shrink="0", margin_top="2px"),
                    rx.vstack(
                        rx.text(feed["error"], size="2", id="feed-error"),
                        rx.text("Error code ", rx.code(feed["error_code"], variant="ghost"), size="1"),
                        spacing="0",
                        flex="1",
                    ),
                    icon_button(
                        rx.icon("x", size=14),
                        "Dismiss this error",
                        "Dismiss",
                        on_click=StatusState.reset_error,
                        variant="ghost",
                        color_scheme="red",
                        size="1",
                    ),
                    **styles.error_box,
                ),
            ),
            retry_button(),
            spacing="3",
            width="100%",
        ),
        id="feed-link",
        class_name="live-data",
        custom_attrs={"data-state": feed["state"]},
    )


def websocket_status() -> rx.Component:
    return open_section(
        section_heading("Connections", "cable", heading_id="connections-heading"),
        rx.grid(browser_link_card(), feed_link_card(), **styles.card_pair),
        heading_id="connections-heading",
    )
