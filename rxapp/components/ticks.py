"""Live ticks for the configured symbols: price to pip size, change, age, a sparkline."""

from __future__ import annotations

from typing import Any

import reflex as rx

from rxapp import styles, ui_logic
from rxapp.components.common import panel
from rxapp.state import StatusState


def _change(row: Any) -> rx.Component:
    # An arrow as well as a colour: the direction never depends on colour alone.
    return rx.hstack(
        rx.match(
            row["direction"],
            ("up", rx.icon("trending-up", size=14, aria_hidden="true")),
            ("down", rx.icon("trending-down", size=14, aria_hidden="true")),
            rx.icon("minus", size=14, aria_hidden="true"),
        ),
        rx.text(row["change"], size="2", style={"font_variant_numeric": "tabular-nums"}),
        rx.el.span(
            rx.match(row["direction"], ("up", "up"), ("down", "down"), ("flat", "unchanged"), "no change yet"),
            class_name="visually-hidden",
        ),
        color=rx.match(row["direction"], ("up", "var(--grass-11)"), ("down", "var(--red-11)"), "var(--gray-11)"),
        align="center",
        spacing="1",
        class_name="tick-change",
    )


def _sparkline(row: Any) -> rx.Component:
    return rx.el.svg(
        rx.el.svg.polyline(
            points=row["points"],
            fill="none",
            stroke=rx.cond(row["stale"] == "true", "var(--gray-8)", "var(--accent-9)"),
            stroke_width="1.5",
            stroke_linejoin="round",
            stroke_linecap="round",
            vector_effect="non-scaling-stroke",
        ),
        view_box=f"0 0 {ui_logic.SPARK_WIDTH} {ui_logic.SPARK_HEIGHT}",
        preserve_aspect_ratio="none",
        role="img",
        aria_label=f"{row['symbol']} over the last minute",
        class_name="tick-spark",
        **styles.sparkline,
    )


def _row(row: Any) -> rx.Component:
    stale = row["stale"] == "true"
    # A plain div: Radix's Box sets its own display, which would fight the grid.
    return rx.el.div(
        rx.text(
            row["symbol"], weight="medium", size="2", class_name="tick-symbol", font_family="var(--code-font-family)"
        ),
        rx.text(
            row["price"],
            size="5",
            weight="bold",
            class_name="tick-price",
            style={"font_variant_numeric": "tabular-nums"},
            color=rx.cond(stale, "var(--gray-10)", "var(--gray-12)"),
        ),
        _change(row),
        _sparkline(row),
        rx.hstack(
            rx.cond(
                stale,
                rx.badge(
                    rx.icon("clock", size=12, aria_hidden="true"),
                    "Stale",
                    color_scheme="amber",
                    variant="soft",
                    high_contrast=True,
                ),
            ),
            rx.cond(
                row["gap"] != "",
                rx.badge(
                    rx.icon("scissors", size=12, aria_hidden="true"),
                    "Gap",
                    color_scheme="gray",
                    variant="soft",
                    title=row["gap"],
                    aria_label=row["gap"],
                    class_name="tick-gap",
                ),
            ),
            rx.text(row["age"], **styles.small_muted),
            spacing="2",
            align="center",
            justify="end",
            class_name="tick-age",
        ),
        custom_attrs={"data-symbol": row["symbol"], "data-stale": row["stale"]},
        class_name="tick-row",
        **styles.tick_row,
    )


def live_ticks() -> rx.Component:
    return panel(
        "ticks",
        "Live prices",
        "activity",
        rx.box(rx.foreach(StatusState.ticks, _row), width="100%", margin_top="0.5rem"),
        aside="last minute",
        live=True,
    )
