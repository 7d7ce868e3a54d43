"""Every style of the status page, in one place.

Colours are Radix Themes tokens (``var(--gray-a5)``, ``var(--grass-9)``, ...), so the page
follows light and dark mode without any colour of its own. Layout is a single column on
a phone and two columns from the ``sm`` breakpoint (768 px) up. Radix props (``columns``,
``size``) take ``{"initial": ..., "sm": ...}``; CSS props take :func:`rx.breakpoints`
(``xs`` 30em, ``sm`` 48em). ``THEME`` is used by ``rxconfig.py`` (RadixThemesPlugin).
"""

from __future__ import annotations

from typing import Any

import reflex as rx

PAGE_MAX_WIDTH = "60rem"
# Radix breakpoints: initial (phones), xs 520 px, sm 768 px, md 1024 px.
TWO_COLUMNS = {"initial": "1fr", "sm": "1fr 1fr"}

ACCENT = "blue"
THEME: dict[str, Any] = {
    # "inherit" lets Reflex's colour mode (system preference, or the toggle) decide.
    "appearance": "inherit",
    "accent_color": ACCENT,
    "gray_color": "slate",
    "radius": "large",
    "scaling": "100%",
    "has_background": True,
}

# The page's sections, one above another; the history section's panels stand at the same gap.
sections: dict[str, Any] = {"spacing": {"initial": "4", "sm": "5"}, "width": "100%"}
# Two cards side by side from ``sm`` up, one above the other on a phone.
card_pair: dict[str, Any] = {"columns": TWO_COLUMNS, "spacing": "3", "width": "100%"}

page: dict[str, Any] = {
    "max_width": PAGE_MAX_WIDTH,
    "margin_x": "auto",
    "padding_x": rx.breakpoints(initial="0.875rem", sm="1.5rem"),
    "padding_y": rx.breakpoints(initial="1rem", sm="2rem"),
    "width": "100%",
}

header: dict[str, Any] = {
    "width": "100%",
    "justify": "between",
    "align": "start",
    "spacing": "3",
}

card: dict[str, Any] = {
    "width": "100%",
    "height": "100%",
    "padding": rx.breakpoints(initial="0.875rem", sm="1.125rem"),
    "border": "1px solid var(--gray-a5)",
    "border_radius": "var(--radius-4)",
    "background": "var(--color-panel-solid)",
    "box_shadow": "0 1px 2px var(--black-a2)",
    "min_width": "0",
}

section_title: dict[str, Any] = {
    "size": "3",
    "weight": "medium",
    "color": "var(--gray-12)",
}

muted: dict[str, Any] = {"color": "var(--gray-11)", "size": "2"}
small_muted: dict[str, Any] = {"color": "var(--gray-11)", "size": "1"}


def banner(tone_var: Any) -> dict[str, Any]:
    """The overall banner: a soft tint of the level's colour, a strong left edge."""
    return {
        "width": "100%",
        "padding": rx.breakpoints(initial="0.875rem 1rem", sm="1.125rem 1.25rem"),
        "border_radius": "var(--radius-4)",
        "border": f"1px solid var(--{tone_var}-a6)",
        "border_left": f"6px solid var(--{tone_var}-9)",
        "background": f"var(--{tone_var}-a3)",
        "spacing": "3",
        "align": "start",
    }


def tone_text(tone_var: Any) -> dict[str, Any]:
    return {"color": f"var(--{tone_var}-11)"}


link_card_head: dict[str, Any] = {"justify": "between", "align": "start", "width": "100%", "spacing": "2"}
link_card_state: dict[str, Any] = {"align": "end", "spacing": "1", "flex_shrink": "0"}

error_box: dict[str, Any] = {
    "width": "100%",
    "padding": "0.5rem 0.75rem",
    "border_radius": "var(--radius-3)",
    "background": "var(--red-a3)",
    "color": "var(--red-11)",
    "spacing": "2",
    "align": "start",
}


# Rows of a list are parted by a thin line above each.
row_divider: dict[str, Any] = {"border_top": "1px solid var(--gray-a4)", "width": "100%"}
# A row of the breakers and health panels.
panel_row: dict[str, Any] = {"padding_y": "0.5rem", **row_divider}


def list_row(
    columns: tuple[str, str], areas: tuple[str, str], *, align: str, row_gap: str, padding_y: str
) -> dict[str, Any]:
    """A list row laid out as a grid: ``columns``/``areas`` are (phone, from ``sm`` up)."""
    return {
        "display": "grid",
        "grid_template_columns": rx.breakpoints(initial=columns[0], sm=columns[1]),
        "grid_template_areas": rx.breakpoints(initial=areas[0], sm=areas[1]),
        "align_items": align,
        "column_gap": "0.75rem",
        "row_gap": row_gap,
        "padding_y": padding_y,
        **row_divider,
    }


tick_row = list_row(
    ("minmax(4.5rem, 1fr) auto", "6.5rem 9rem 6.5rem minmax(6rem, 1fr) 9rem"),
    ('"symbol price" "change age" "spark spark"', '"symbol price change spark age"'),
    align="center",
    row_gap="0.25rem",
    padding_y="0.625rem",
)

sparkline: dict[str, Any] = {
    "width": "100%",
    "height": "2rem",
    "overflow": "visible",
}

tips_card: dict[str, Any] = {
    **card,
    "border": "1px solid var(--amber-a6)",
    "background": "var(--amber-a2)",
}

history_notice: dict[str, Any] = {
    "width": "100%",
    "padding": "0.625rem 0.875rem",
    "border_radius": "var(--radius-3)",
    "border": "1px solid var(--gray-a5)",
    "background": "var(--gray-a2)",
    "color": "var(--gray-12)",
    "spacing": "2",
    "align": "start",
}

history_list: dict[str, Any] = {
    "list_style": "none",
    "margin": "0.5rem 0 0 0",
    "padding": "0",
    "width": "100%",
}

history_item: dict[str, Any] = {
    "display": "flex",
    "flex_direction": "column",
    "gap": "0.375rem",
    "padding_y": "0.75rem",
    **row_divider,
}

incident_facts: dict[str, Any] = {
    "columns": {"initial": "1", "sm": "3"},
    "spacing": "2",
    "width": "100%",
    "padding_left": "1.375rem",
}

transition_row = list_row(
    ("minmax(0, 1fr) auto", "minmax(8rem, 1fr) 11rem minmax(10rem, 1.6fr) 13rem"),
    ('"breaker change" "reason reason" "at at"', '"breaker change reason at"'),
    align="baseline",
    row_gap="0.125rem",
    padding_y="0.5rem",
)

footer: dict[str, Any] = {
    "width": "100%",
    "justify": "between",
    "spacing": "2",
    "wrap": "wrap",
    "padding_top": "0.5rem",
}

# Selectors a style prop cannot express: rendered once as a <style> element by the page.
GLOBAL_CSS = """
:where(a, button, summary, [tabindex]):focus-visible {
  outline: 2px solid var(--accent-8);
  outline-offset: 2px;
  border-radius: var(--radius-2);
}
.visually-hidden {
  position: absolute; width: 1px; height: 1px; margin: -1px; padding: 0; overflow: hidden;
  clip: rect(0 0 0 0); clip-path: inset(50%); white-space: nowrap; border: 0;
}
#fallback-region:empty { display: none; }
#fallback-region {
  width: 100%; padding: 0.75rem 1rem; border-radius: var(--radius-4);
  border: 1px solid var(--amber-a6); background: var(--amber-a3); color: var(--gray-12);
  font-size: var(--font-size-2); line-height: var(--line-height-2);
}
#fallback-region strong { color: var(--amber-11); }
#fallback-region p { margin: 0.125rem 0; }
#fallback-region .fb-muted { color: var(--gray-11); }
html[data-live="paused"] .live-data { opacity: 0.55; transition: opacity 0.3s; }
.tick-symbol { grid-area: symbol; } .tick-price { grid-area: price; }
.tick-change { grid-area: change; } .tick-spark { grid-area: spark; } .tick-age { grid-area: age; }
@media (max-width: 47.99em) { .tick-price, .tick-age { text-align: right; justify-self: end; } }
@media (prefers-reduced-motion: no-preference) {
  .spin { animation: status-spin 1.2s linear infinite; }
}
@keyframes status-spin { to { transform: rotate(360deg); } }
details.tips > summary { cursor: pointer; list-style-position: inside; }
details.tips[open] > summary { margin-bottom: 0.5rem; }
.tip-list {
  list-style: disc; padding-left: 1.5rem; margin: 0.25rem 0 0 0;
  font-size: var(--font-size-2); line-height: var(--line-height-2); color: var(--gray-12);
}
.tip-list li { margin: 0.15rem 0; }
.tip-group + .tip-group { padding-top: 0.75rem; border-top: 1px solid var(--amber-a5); }
.tick-age { white-space: nowrap; }
.uptime-row + .uptime-row { padding-top: 0.25rem; }
.uptime-bars { display: flex; gap: 2px; height: 2.25rem; width: 100%; margin: 0.5rem 0 0.25rem; }
.uptime-bar { flex: 1 1 0; min-width: 0; border-radius: 1px; background: var(--gray-a4); }
.uptime-bar:hover { opacity: 0.75; }
.uptime-bar[data-status="up"], .uptime-swatch[data-tone="grass"] { background: var(--grass-9); }
.uptime-bar[data-status="maintenance"], .uptime-swatch[data-tone="blue"] { background: var(--blue-9); }
.uptime-bar[data-status="degraded"], .uptime-swatch[data-tone="amber"] { background: var(--amber-9); }
.uptime-bar[data-status="down"], .uptime-swatch[data-tone="red"] { background: var(--red-9); }
.uptime-swatch { display: inline-block; width: 0.625rem; height: 0.625rem; border-radius: 2px;
  background: var(--gray-a4); }
.short-span { display: none; }
.uptime-window { white-space: nowrap; }
@media (max-width: 29.99em) {
  .uptime-bars { gap: 1px; }
  .uptime-bar[data-older="true"], .long-span, .uptime-windows-label { display: none; }
  .short-span { display: inline; }
  .uptime-windows { width: 100%; justify-content: space-between; }
  .uptime-window { display: flex; flex-direction: column; }
}
.transition-breaker { grid-area: breaker; min-width: 0; overflow-wrap: anywhere; }
.transition-change { grid-area: change; } .transition-reason { grid-area: reason; }
.transition-at { grid-area: at; white-space: nowrap; }
@media (max-width: 47.99em) { .transition-change { justify-self: end; } }
.incident-detail, .incident-cause { overflow-wrap: anywhere; }
.incident[data-kind="maintenance"] { border-left: 3px solid var(--blue-9); padding-left: 0.625rem; }
"""
