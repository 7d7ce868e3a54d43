"""Alembic environment of the history schema (backend_core.history.db).

There is no alembic.ini: :func:`backend_core.history.db.migrate` builds the configuration
in code and hands over an open connection in ``config.attributes["connection"]`` (inside a
transaction it owns). ``python -m backend_core.history.migrations upgrade|current|revision``
uses the same path with the engine built from ``DB_URL``.
"""

from __future__ import annotations

from typing import Any

from alembic import context
from sqlalchemy.engine import Connection

from backend_core.history import db

config = context.config
target_metadata = db.INCIDENTS.metadata


def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    """Only our tables: the database may hold others (Reflex's, an operator's)."""
    if type_ == "table":
        return name in db.HISTORY_TABLES
    return True


def run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        version_table=config.get_main_option("version_table") or db.VERSION_TABLE,
        include_name=include_name,
        compare_type=True,
        # SQLite cannot ALTER most things: future migrations copy-and-move tables there.
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection and no sqlalchemy.url: use backend_core.history.db.migrate()")
    engine = db.create_db_engine(db.normalize_db_url(url))
    try:
        with engine.begin() as connection:
            run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        version_table=config.get_main_option("version_table") or db.VERSION_TABLE,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    run_online()
