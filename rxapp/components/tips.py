"""Troubleshooting tips chosen by the actual error code, and general connection tips."""

from __future__ import annotations

from typing import Any

import reflex as rx

from rxapp import styles, ui_logic
from rxapp.components.browser_link import browser_link_down
from rxapp.components.common import heading_label, open_section
from rxapp.state import StatusState


def _tip_card(title: Any, tips: Any, key: Any) -> rx.Component:
    return rx.box(
        rx.hstack(
            rx.icon("lightbulb", size=16, color="var(--amber-11)", aria_hidden="true", flex_shrink="0"),
            rx.heading(title, as_="h3", weight="medium", size="2"),
            align="center",
            spacing="2",
        ),
        rx.el.ul(tips, class_name="tip-list"),
        class_name="tip-group",
        width="100%",
        custom_attrs={"data-tip": key},
    )


def _static_tip_card(group: ui_logic.TipGroup) -> rx.Component:
    return _tip_card(group.title, [rx.el.li(tip) for tip in group.tips], group.key)


def _state_tip_card(group: Any) -> rx.Component:
    return _tip_card(group.title, rx.foreach(group.tips, lambda tip: rx.el.li(tip)), group.key)


def troubleshooting_tips() -> rx.Component:
    """Shown only while something is wrong: what it means and what to do about it."""
    return rx.cond(
        browser_link_down() | (StatusState.tips.length() > 0),
        open_section(
            heading_label("What you can do", "life-buoy", "tips-heading"),
            rx.vstack(
                rx.cond(browser_link_down(), _static_tip_card(ui_logic.BROWSER_OFFLINE_TIPS)),
                rx.foreach(StatusState.tips, _state_tip_card),
                spacing="3",
                **styles.tips_card,
            ),
            heading_id="tips-heading",
            id="troubleshooting",
        ),
    )


def connection_tips() -> rx.Component:
    """General advice, folded away: a native <details>, operable with the keyboard."""
    return rx.el.details(
        rx.el.summary(rx.text("Connection tips", as_="span", weight="medium", size="2")),
        rx.el.ul(*[rx.el.li(tip) for tip in ui_logic.GENERAL_TIPS], class_name="tip-list"),
        class_name="tips",
        id="connection-tips",
        **styles.card,
    )
