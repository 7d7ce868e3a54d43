"""The Retry button: one manual upstream attempt, shared by every page and click."""

from __future__ import annotations

import reflex as rx

from rxapp import styles
from rxapp.components.browser_link import browser_link_down
from rxapp.state import StatusState


def retry_button() -> rx.Component:
    """Sends ``retry_connection``; disabled with a spinner while an attempt runs.

    The manager coalesces: many clicks, from many pages, start at most one attempt.
    The outcome (``RetryOutcome.message``) is shown beside the button.
    """
    return rx.hstack(
        rx.button(
            rx.icon("rotate-cw", size=16, aria_hidden="true"),
            rx.cond(StatusState.retry_busy, "Retrying…", "Retry now"),
            on_click=StatusState.retry_connection,
            loading=StatusState.retry_busy,
            # Without the page's live link the click could not reach the server (the
            # polled-status region offers a Retry over plain HTTP instead).
            disabled=StatusState.is_connected | browser_link_down(),
            size="2",
            variant="solid",
            # White on indigo-9 is 5.2:1 in light and dark mode (blue-9, the theme's
            # accent, is 3.26:1: under WCAG AA's 4.5:1).
            color_scheme="indigo",
            id="retry-button",
            type="button",
            aria_describedby="retry-outcome",
        ),
        rx.text(
            rx.cond(
                StatusState.retry_message != "",
                StatusState.retry_message,
                rx.cond(StatusState.is_connected, "Nothing to retry: the feed is live.", ""),
            ),
            id="retry-outcome",
            role="status",
            **styles.muted,
        ),
        align="center",
        spacing="3",
        wrap="wrap",
    )
