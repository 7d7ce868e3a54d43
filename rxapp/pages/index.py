"""``/``: the live status page.

An overall banner, both links with Retry, troubleshooting tips for what is wrong now,
live prices, circuit breakers and health, the cluster (with REDIS_URL set), history (uptime bars, incidents, the circuit
breaker log), general tips. It follows the system's light or dark preference (with a
toggle), works at phone width, and every control is a real button or link.
"""

from __future__ import annotations

import reflex as rx
from reflex_base.style import set_color_mode

from rxapp import styles, ui_logic
from rxapp.components import (
    breakers_panel,
    browser_settings,
    cluster_panel,
    connection_tips,
    fallback_region,
    health_summary,
    history_section,
    live_announcer,
    live_ticks,
    status_banner,
    troubleshooting_tips,
    websocket_status,
)
from rxapp.components.common import icon_button, plain_link
from rxapp.state import StatusState


def _color_mode_menu() -> rx.Component:
    """Light, dark, or the system's preference (the default)."""
    return rx.dropdown_menu.root(
        rx.dropdown_menu.trigger(
            icon_button(
                rx.color_mode.icon(),
                "Colour theme: light, dark or system",
                "Colour theme",
                variant="soft",
                color_scheme="gray",
                size="2",
            ),
        ),
        rx.dropdown_menu.content(
            rx.dropdown_menu.item("Light", on_click=set_color_mode("light")),
            rx.dropdown_menu.item("Dark", on_click=set_color_mode("dark")),
            rx.dropdown_menu.item("System", on_click=set_color_mode("system")),
            align="end",
        ),
    )


def _header() -> rx.Component:
    return rx.hstack(
        rx.vstack(
            rx.heading(ui_logic.PRODUCT, as_="h1", size={"initial": "6", "sm": "7"}, weight="bold"),
            rx.text("Live prices from the Deriv API, and how healthy the link is.", **styles.muted),
            spacing="1",
        ),
        _color_mode_menu(),
        **styles.header,
    )


def _footer() -> rx.Component:
    return rx.hstack(
        rx.text(
            "Status as of ",
            rx.el.span(StatusState.updated_at, id="updated-at"),
            rx.cond(StatusState.version != "", " · version " + StatusState.version, ""),
            **styles.small_muted,
        ),
        rx.hstack(
            plain_link("Status JSON", "/api/v1/status"),
            plain_link("Health", "/health/detailed"),
            plain_link("Metrics", "/metrics"),
            plain_link("Statuspage API", "/api/v2/summary.json"),
            plain_link("Incidents feed", "/history.atom", type="application/atom+xml"),
            plain_link("Badge", "/badge.svg", type="image/svg+xml"),
            spacing="3",
            wrap="wrap",
        ),
        **styles.footer,
    )


def index() -> rx.Component:
    return rx.el.main(
        rx.el.style(styles.GLOBAL_CSS),
        browser_settings(),
        rx.script(src="/fallback.js"),
        rx.vstack(
            _header(),
            status_banner(),
            fallback_region(),
            websocket_status(),
            troubleshooting_tips(),
            live_ticks(),
            rx.grid(breakers_panel(), health_summary(), **styles.card_pair),
            cluster_panel(),
            history_section(),
            connection_tips(),
            _footer(),
            live_announcer(),
            **styles.sections,
        ),
        **styles.page,
    )
