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


def heading_label(text: str, icon: str, heading_id: str | None = None) -> rx.Component:
    """A section's ``<h2>`` behind its icon."""
    return rx.hstack(
        rx.icon(icon, size=18, color="var(--gray-11)", aria_hidden="true"),
        rx.heading(text, as_="h2", id=heading_id, **styles.section_title),
        align="center",
        spacing="2",
    )


def section_heading(text: str, icon: str, *extra: Any, heading_id: str | None = None) -> rx.Component:
    """The heading label, with ``extra`` (a caption, a badge) at the end of the line."""
    return rx.hstack(
        heading_label(text, icon, heading_id),
        *extra,
        justify="between",
        align="center",
        width="100%",
        wrap="wrap",
        spacing="2",
    )


def link_card_head(title: str, subtitle: Any, badge: rx.Component, since: rx.Component) -> rx.Component:
    """A link card's first line: which link over ``subtitle`` (said small and muted), and its
    state's ``badge`` over ``since`` (how long it has held) at the end."""
    return rx.hstack(
        rx.vstack(
            rx.text(title, weight="medium", size="3"),
            rx.text(subtitle, **styles.small_muted),
            spacing="0",
        ),
        rx.vstack(badge, since, **styles.link_card_state),
        **styles.link_card_head,
    )


def plain_link(text: str, href: str, **props: Any) -> rx.Component:
    """A link that leaves the single-page app (JSON, health, metrics are not pages)."""
    return rx.el.a(text, href=href, class_name="rt-Text rt-Link rt-r-size-1 rt-underline-auto", **props)


def panel(anchor: str, title: str, icon: str, *body: Any, aside: Any = None, live: bool = False) -> rx.Component:
    """A card in its own ``<section id=anchor>``, named by its ``<h2 id="{anchor}-heading">``.

    ``aside`` ends the heading's line: a caption (a string, said small and muted) or a
    component. A ``live`` card holds live data (dimmed while the page's link is paused).
    """
    heading_id = f"{anchor}-heading"
    extra = () if aside is None else (rx.text(aside, **styles.small_muted) if isinstance(aside, str) else aside,)
    return rx.el.section(
        card(
            section_heading(title, icon, *extra, heading_id=heading_id),
            *body,
            **({"class_name": "live-data"} if live else {}),
        ),
        id=anchor,
        aria_labelledby=heading_id,
        width="100%",
    )


def rows_panel(
    anchor: str, title: str, icon: str, blurb: tuple[Any, ...], rows: Any, row: Any, **props: Any
) -> rx.Component:
    """A live :func:`panel` listing ``rows`` (each drawn by ``row``) under a small line saying what they are."""
    line = rx.text(*blurb, **styles.small_muted, margin_bottom="0.25rem")
    return panel(anchor, title, icon, line, rx.foreach(rows, row), live=True, **props)


def row_head(title: rx.Component, row: Any) -> rx.Component:
    """A list row's first line: its title, and its state's badge (``row`` has word, icon, tone) at the end."""
    return rx.hstack(
        title,
        state_badge(row["word"], row["icon"], row["tone"]),
        justify="between",
        align="center",
        spacing="2",
        width="100%",
    )


def state_row(title: rx.Component, row: Any, *body: Any, data: dict[str, Any]) -> rx.Component:
    """A panel's row for one thing with a state: :func:`row_head` over ``body``, divided
    from the next row, with ``data`` as its ``data-*`` attributes (what tests and scripts read)."""
    return rx.box(row_head(title, row), *body, **styles.panel_row, custom_attrs=data)


def muted_line(value: Any, *before: Any, **props: Any) -> rx.Component:
    """A small muted line holding ``before`` and ``value``, shown only when ``value`` is not empty."""
    return rx.cond(value != "", rx.text(*before, value, **styles.small_muted, **props))


def open_section(heading: rx.Component, *body: Any, heading_id: str, **props: Any) -> rx.Component:
    """A section without a card of its own: ``heading`` (holding ``heading_id``) over ``body``."""
    return rx.el.section(
        rx.vstack(heading, *body, spacing="2", width="100%"),
        **props,
        aria_labelledby=heading_id,
        width="100%",
    )


def icon_button(icon: rx.Component, label: str, tip: str, **props: Any) -> rx.Component:
    """A button that shows only an icon: named for screen readers (``label``), with a
    tooltip (``tip``), and never a form's submit button."""
    return rx.icon_button(icon, **props, aria_label=label, title=tip, type="button")
