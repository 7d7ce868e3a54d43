"""The browser's live link to this server, from Reflex's own client-side connection state.

Reflex keeps the socket's failed connection attempts in ``connectErrors`` on the client
(the same vars ``rx.connection_banner`` and ``has_connection_errors`` are built from), and
``rx.State.is_hydrated`` turns true once the first state arrived over the socket. These
are client-side vars: they change with no server round trip, so the card below stays
truthful while the server is unreachable.

States: ``connecting`` (not hydrated yet), ``connected``, ``reconnecting`` (attempt n of
``VITE_WS_RECONNECT_ATTEMPTS``), ``lost`` (that many attempts failed; Reflex keeps trying).
The element carries ``data-state`` and ``data-attempts`` so ``assets/fallback.js`` can
follow it: it times the state ("for 12 s") and polls ``/api/v1/status`` while it is down.

The ``VITE_*`` settings come from :class:`~rxapp.state.StatusState` vars that the server
fills in when the page loads, never from the build: the Docker image compiles the page
once, and a setting changed at run time still reaches it.
"""

from __future__ import annotations

from typing import Any

import reflex as rx
from reflex_components_core.core.banner import connection_error, connection_errors_count, has_connection_errors

from rxapp import styles
from rxapp.components.common import card, link_card_head, state_badge
from rxapp.state import StatusState


def attempts_var() -> Any:
    return connection_errors_count.to(int)


def browser_link_state() -> Any:
    """``connecting`` | ``connected`` | ``reconnecting`` | ``lost``, evaluated in the browser."""
    return rx.cond(
        has_connection_errors,
        rx.cond(attempts_var() < StatusState.lost_after_attempts, "reconnecting", "lost"),
        rx.cond(rx.State.is_hydrated, "connected", "connecting"),
    )


def browser_link_down() -> Any:
    return has_connection_errors


def _detail() -> rx.Component:
    attempts = StatusState.reconnect_attempts
    return rx.match(
        browser_link_state(),
        ("connected", rx.text(StatusState.live_text, **styles.muted)),
        ("connecting", rx.text("Opening the live link…", **styles.muted)),
        (
            "reconnecting",
            rx.text("Reconnecting · attempt ", attempts_var(), " of ", attempts, **styles.muted),
        ),
        rx.text("Lost after ", attempts, " attempts · still trying in the background", **styles.muted),
    )


def _badge() -> rx.Component:
    return rx.match(
        browser_link_state(),
        ("connected", state_badge("Connected", "circle-check", "grass")),
        ("connecting", state_badge("Connecting", "loader", "gray")),
        ("reconnecting", state_badge("Reconnecting", "refresh-cw", "amber")),
        state_badge("Lost", "wifi-off", "red"),
    )


def browser_link_card() -> rx.Component:
    return card(
        rx.vstack(
            link_card_head(
                "Your browser → this server",
                "Live link for this page",
                _badge(),
                # Filled in by assets/fallback.js (the server cannot time a link it cannot see).
                rx.el.span(id="browser-link-since", class_name="rt-Text rt-r-size-1", color="var(--gray-11)"),
            ),
            _detail(),
            rx.cond(
                browser_link_down(),
                rx.hstack(
                    rx.icon("wifi-off", size=16, aria_hidden="true", flex_shrink="0", margin_top="2px"),
                    rx.text(
                        "The live connection to this server was interrupted (",
                        connection_error,
                        "). Check your network; the page keeps trying.",
                        size="2",
                    ),
                    **styles.error_box,
                ),
            ),
            spacing="2",
            width="100%",
        ),
        id="browser-link",
        custom_attrs={"data-state": browser_link_state(), "data-attempts": attempts_var()},
    )
