"""The cluster section: which instance this page is served by and how the cluster holds.

Shown only with ``REDIS_URL`` set (a single instance has no rows). The rows come from the
same ``cluster:*`` health checks as ``/health/detailed`` (:mod:`rxapp.cluster_view`).
"""

from __future__ import annotations

from typing import Any

import reflex as rx

from rxapp.components.common import muted_line, rows_panel, state_row
from rxapp.state import StatusState


def _cluster_row(row: Any) -> rx.Component:
    return state_row(
        rx.text(row["name"], size="2", flex="1"),
        row,
        muted_line(row["value"], style={"word_break": "break-all"}),
        muted_line(row["note"]),
        data={"data-cluster": row["key"], "data-status": row["status"]},
    )


def cluster_panel() -> rx.Component:
    return rx.cond(
        StatusState.cluster_rows.length() > 0,  # type: ignore[attr-defined]
        rows_panel(
            "cluster",
            "Cluster",
            "network",
            ("Every instance behind the balancer shares one upstream link, led by one of them.",),
            StatusState.cluster_rows,
            _cluster_row,
        ),
    )
