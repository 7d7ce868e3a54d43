"""Small building blocks shared by the status page's components."""

from __future__ import annotations

from typing import Any

import reflex as rx

from rxapp import styles

# Every icon a state var may name (rxapp.ui_logic), matched statically so no icon is
# fetched lazily at run time.
STATE_ICONS = (
    "circle-check",
    "loader",
    "refresh-cw",
    "circle-pause",
    "circle-stop",
    "triangle-alert",
    "circle-x",
    "flask-conical",
    "circle-minus",
    "wifi-off",
    "wrench",
)
# Icons that mean "working on it" turn slowly (unless the reader prefers reduced motion).
SPINNING = ("loader", "refresh-cw")


def state_icon(name: Any, size: int = 16, **props: Any) -> rx.Component:
    """The lucide icon called ``name`` (a state var), from the fixed set above."""
    cases = [
        (icon, rx.icon(icon, size=size, aria_hidden="true", class_name="spin" if icon in SPINNING else "", **props))
        for icon in STATE_ICONS
    ]
    return rx.match(name, *cases, rx.icon("circle-help", size=size, aria_hidden="true", **props))


def state_badge(word: Any, icon: Any, tone: Any, **props: Any) -> rx.Component:
    """A state as a word, an icon and a colour together (never colour alone)."""
    return rx.badge(
        state_icon(icon, size=14),
        word,
        color_scheme=tone,
        variant="soft",
        size="2",
        radius="full",
        # Step-12 text: amber's step 11 on step 3 is 4.24:1, under WCAG AA's 4.5:1.
        high_contrast=True,
        **props,
    )


def card(*children: Any, **props: Any) -> rx.Component:
    style = {**styles.card, **props.pop("style", {})}
    return rx.box(*children, **style, **props)


def section_heading(text: str, icon: str, *extra: Any, heading_id: str | None = None) -> rx.Component:
    return rx.hstack(
        rx.hstack(
            rx.icon(icon, size=18, color="var(--gray-11)", aria_hidden="true"),
            rx.heading(text, as_="h2", id=heading_id, **styles.section_title),
            align="center",
            spacing="2",
        ),
        *extra,
        justify="between",
        align="center",
        width="100%",
        wrap="wrap",
        spacing="2",
    )


def plain_link(text: str, href: str, **props: Any) -> rx.Component:
    """A link that leaves the single-page app (JSON, health, metrics are not pages)."""
    return rx.el.a(text, href=href, class_name="rt-Text rt-Link rt-r-size-1 rt-underline-auto", **props)
