"""Functions that return the status page's components."""

from rxapp.components.banner import browser_settings, fallback_region, live_announcer, page_title, status_banner
from rxapp.components.cluster import cluster_panel
from rxapp.components.health import breakers_panel, health_summary
from rxapp.components.history import history_section
from rxapp.components.retry import retry_button
from rxapp.components.ticks import live_ticks
from rxapp.components.tips import connection_tips, troubleshooting_tips
from rxapp.components.websocket_status import websocket_status

__all__ = [
    "breakers_panel",
    "browser_settings",
    "cluster_panel",
    "connection_tips",
    "fallback_region",
    "health_summary",
    "history_section",
    "live_announcer",
    "live_ticks",
    "page_title",
    "retry_button",
    "status_banner",
    "troubleshooting_tips",
    "websocket_status",
]
