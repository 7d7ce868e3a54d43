"""The cluster section: which instance this page is served by and how the cluster holds.

Shown only with ``REDIS_URL`` set (a single instance has no rows). The rows come from the
same ``cluster:*`` health checks as ``/health/detailed`` (:mod:`rxapp.cluster_view`).
"""

from __future__ import annotations

from typing import Any

import reflex as rx

from rxapp import styles
from rxapp.components.common import panel, row_head
from rxapp.state import StatusState


def _cluster_row(row: Any) -> rx.Component:
    return rx.box(
        row_head(rx.text(row["name"], size="2", flex="1"), row),
        rx.cond(row["value"] != "", rx.text(row["value"], **styles.small_muted, style={"word_break": "break-all"})),
        rx.cond(row["note"] != "", rx.text(row["note"], **styles.small_muted)),
        **styles.panel_row,
        custom_attrs={"data-cluster": row["key"], "data-status": row["status"]},
    )


def cluster_panel() -> rx.Component:
    return rx.cond(
        StatusState.cluster_rows.length() > 0,  # type: ignore[attr-defined]
        panel(
            "cluster",
            "Cluster",
            "network",
            rx.text(
                "Every instance behind the balancer shares one upstream link, led by one of them.",
                **styles.small_muted,
            ),
            rx.foreach(StatusState.cluster_rows, _cluster_row),
            live=True,
        ),
    )
