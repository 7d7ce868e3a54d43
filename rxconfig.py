"""Reflex configuration. Secrets come only from the environment (backend_core.config).

The environment is validated here first, so a bad variable stops `reflex run` with one
line naming it (and no traceback) before anything is built or started.
"""

import sys

import reflex as rx

from backend_core.config import load_settings
from backend_core.errors import ConfigError
from rxapp.styles import THEME

try:
    load_settings()
except ConfigError as exc:
    print(exc.message, file=sys.stderr)
    raise SystemExit(2) from None

config = rx.Config(
    app_name="rxapp",
    telemetry_enabled=False,
    show_built_with_reflex=False,
    # Radix Themes styles the status page (theme in rxapp/styles.py); a status page has no
    # use for a sitemap.
    plugins=[rx.plugins.RadixThemesPlugin(theme=rx.theme(**THEME))],
    disable_plugins=[rx.plugins.SitemapPlugin],
)
