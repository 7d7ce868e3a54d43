"""``python -m backend_core.history.migrations``: operator commands on the ``DB_URL`` database.

The app migrates by itself at start (:func:`backend_core.history.db.migrate`); these are
for doing it by hand (before a rolling update, say), checking where a database is, pruning
now, and, for developers, writing the next migration. There is no alembic.ini by design:
the configuration is built in code (:func:`backend_core.history.db.alembic_config`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from sqlalchemy import exc as sa_exc

from backend_core.config import load_settings
from backend_core.errors import ConfigError
from backend_core.history.db import (
    alembic_config,
    create_db_engine,
    describe_db_error,
    head_revision,
    migrate,
    normalize_db_url,
    redact_db_url,
    schema_revision,
    sqlite_file,
)
from backend_core.history.writer import prune_blocking

_USAGE = """usage: python -m backend_core.history.migrations COMMAND

  upgrade                  migrate the DB_URL database to the newest schema (also done at start)
  current                  print the database's schema revision and the newest one
  prune                    delete rows older than HISTORY_RETENTION_DAYS now (also done hourly)
  revision MESSAGE         (developers) write a new migration from the model changes
"""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status (2: usage or configuration, 1: database)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if (
        not args
        or args[0] not in {"upgrade", "current", "prune", "revision"}
        or (args[0] == "revision") != (len(args) == 2)
    ):
        print(_USAGE, file=sys.stderr, end="")
        return 2
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    url = normalize_db_url(settings.DB_URL)
    path = sqlite_file(url)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_db_engine(url)
    try:
        if args[0] == "upgrade":
            migrate(engine)
            print(f"{redact_db_url(url)}: schema at {schema_revision(engine)} (head {head_revision()})")
        elif args[0] == "current":
            print(f"{redact_db_url(url)}: schema at {schema_revision(engine)} (head {head_revision()})")
        elif args[0] == "prune":
            deleted = prune_blocking(engine, time.time() - settings.HISTORY_RETENTION_DAYS * 86_400.0)
            print(f"pruned {deleted} rows older than {settings.HISTORY_RETENTION_DAYS} days")
        else:
            from alembic import command

            with engine.begin() as connection:
                command.revision(alembic_config(connection), message=args[1], autogenerate=True)
    except sa_exc.SQLAlchemyError as exc:
        print(f"history database error: {describe_db_error(exc)}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
