"""The overall banner, the polled-status region, the live announcer and the browser settings."""

from __future__ import annotations

from typing import Any

import reflex as rx
from reflex.config import get_config

from rxapp import styles, ui_logic
from rxapp.components.browser_link import browser_link_down
from rxapp.components.common import state_icon
from rxapp.state import StatusState

PAGE_TITLE_OFFLINE = f"◌ Reconnecting… — {ui_logic.PRODUCT}"


def page_title() -> rx.Var:
    """The document title: the server's verdict, or the browser's own link trouble."""
    return rx.cond(browser_link_down(), PAGE_TITLE_OFFLINE, StatusState.page_title)


def _banner(icon: rx.Component, title: Any, detail: Any, tone: Any, level: Any) -> rx.Component:
    """The banner in either state (the server's verdict, or the browser's lost link): same ids, same layout."""
    return rx.hstack(
        icon,
        rx.vstack(
            rx.heading(title, as_="h2", size={"initial": "4", "sm": "5"}, id="banner-title"),
            rx.text(detail, size="2", color="var(--gray-12)", id="banner-detail"),
            spacing="1",
        ),
        **styles.banner(tone),
        id="status-banner",
        custom_attrs={"data-level": level},
    )


def _server_banner() -> rx.Component:
    return _banner(
        state_icon(StatusState.banner_icon, size=28, color=f"var(--{StatusState.banner_tone}-11)", flex_shrink="0"),
        StatusState.banner_title,
        StatusState.banner_detail,
        StatusState.banner_tone,
        StatusState.banner_level,
    )


def _offline_banner() -> rx.Component:
    return _banner(
        rx.icon("wifi-off", size=28, color="var(--amber-11)", flex_shrink="0", aria_hidden="true"),
        "Lost the live link to this server",
        "Dimmed sections may be out of date. The page keeps reconnecting by itself.",
        "amber",
        "offline",
    )


def status_banner() -> rx.Component:
    return rx.cond(browser_link_down(), _offline_banner(), _server_banner())


def fallback_region() -> rx.Component:
    """Written only by assets/fallback.js (React renders it empty and never touches it)."""
    return rx.el.div(id="fallback-region")


def live_announcer() -> rx.Component:
    """Screen readers hear state changes here, not every countdown second."""
    return rx.el.div(
        rx.cond(browser_link_down(), "Live updates paused: the connection to this server was lost. ", ""),
        StatusState.announcement,
        id="live-announcer",
        role="status",
        custom_attrs={"aria-live": "polite", "aria-atomic": "true"},
        class_name="visually-hidden",
    )


def _flag(value: rx.Var) -> rx.Var:
    return rx.cond(value, "true", "false")


def browser_settings() -> rx.Component:
    """The frontend settings for assets/fallback.js: the running server's VITE_* values (state
    vars filled in on load; until then the documented defaults), and the build's API URL."""
    return rx.el.div(
        id="status-settings",
        hidden=True,
        custom_attrs={
            "data-api-url": get_config().api_url,
            "data-status-path": "/api/v1/status",
            "data-fallback-enabled": _flag(StatusState.fallback_enabled),
            "data-real-time": _flag(StatusState.real_time_updates),
            "data-poll-interval-ms": StatusState.reconnect_interval_ms.to_string(),
            "data-reconnect-attempts": StatusState.reconnect_attempts.to_string(),
        },
    )
