"""The history's database: SQLModel tables, engine and URL helpers, Alembic migrations.

Every statement elsewhere in :mod:`backend_core.history` is plain SQLAlchemy Core on the
tables below. The schema is created and upgraded by Alembic (scripts in
``backend_core/history/migrations``), configured in code (there is no alembic.ini) with
a version table of its own, so it never collides with a Reflex (``reflex db``) or other
Alembic setup pointed at the same database.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import event as sa_event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import StaticPool
from sqlmodel import Field, SQLModel

from backend_core.incidents import CODE_CHARS, COMPONENT_CHARS, MESSAGE_CHARS, clip

# Driver-level bound on every database call (connect timeout, SQLite busy timeout): a
# dead server costs a thread this long at most.
DB_TIMEOUT_S: Final = 5.0
# PostgreSQL abandons a statement that runs longer than this (the server side of the
# read timeout: a query the API gave up on does not run on forever).
STATEMENT_TIMEOUT_S: Final = 10.0

# Column sizes of what is not clipped in backend_core.incidents.
KEY_CHARS: Final = 64
STATE_CHARS: Final = 32
ENUM_CHARS: Final = 32


# ---------------------------------------------------------------------------- tables


class Incident(SQLModel, table=True):
    """One outage of one component, from when it started to how it ended."""

    __tablename__ = "incident"
    __table_args__ = (
        sa.UniqueConstraint("key", name="uq_incident_key"),
        sa.Index("ix_incident_component_started_at", "component", "started_at"),
        sa.Index("ix_incident_started_at", "started_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=KEY_CHARS)
    instance: str = Field(max_length=CODE_CHARS)
    component: str = Field(max_length=COMPONENT_CHARS)
    kind: str = Field(max_length=16)
    started_at: datetime = Field(sa_type=sa.DateTime(timezone=True))
    ended_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    cause: str = Field(max_length=ENUM_CHARS)  # a backend_core.incidents.Cause
    error_code: str | None = Field(default=None, max_length=CODE_CHARS)
    message: str = Field(default="", max_length=MESSAGE_CHARS)  # the upstream's own error message
    recovery: str | None = Field(default=None, max_length=ENUM_CHARS)  # a backend_core.incidents.Recovery
    attempts: int | None = Field(default=None)
    planned: bool = Field(default=False)


class BreakerTransition(SQLModel, table=True):
    """One circuit-breaker state change."""

    __tablename__ = "breaker_transition"
    __table_args__ = (
        sa.UniqueConstraint("key", name="uq_breaker_transition_key"),
        sa.Index("ix_breaker_transition_at", "at"),
        sa.Index("ix_breaker_transition_name_at", "name", "at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=KEY_CHARS)
    name: str = Field(max_length=COMPONENT_CHARS)
    from_state: str = Field(max_length=STATE_CHARS)
    to_state: str = Field(max_length=STATE_CHARS)
    reason: str = Field(max_length=CODE_CHARS)
    at: datetime = Field(sa_type=sa.DateTime(timezone=True))


class StatusSample(SQLModel, table=True):
    """One component's worst status in one UTC minute, with the seconds observed and down.

    ``minute`` is Unix minutes (``floor(epoch / 60)``), ``day`` Unix days
    (``minute // 1440``). Uptime of any span is ``1 - sum(down_s) / sum(observed_s)``.
    """

    __tablename__ = "status_sample"
    __table_args__ = (
        sa.Index("ix_status_sample_component_minute", "component", "minute"),
        sa.Index("ix_status_sample_minute", "minute"),
    )

    id: int | None = Field(default=None, primary_key=True)
    component: str = Field(max_length=COMPONENT_CHARS)
    minute: int
    day: int
    state: str = Field(max_length=STATE_CHARS)
    status: str = Field(max_length=16)
    severity: int
    observed_s: float
    down_s: float


# The Core tables behind the models: every statement below is plain SQLAlchemy Core.
INCIDENTS: Final[sa.Table] = Incident.__table__  # type: ignore[attr-defined]
TRANSITIONS: Final[sa.Table] = BreakerTransition.__table__  # type: ignore[attr-defined]
SAMPLES: Final[sa.Table] = StatusSample.__table__  # type: ignore[attr-defined]
HISTORY_TABLES: Final = ("incident", "breaker_transition", "status_sample")
# Our own Alembic version table, so the history schema never collides with a Reflex
# (``reflex db``) or other Alembic setup pointed at the same database.
VERSION_TABLE: Final = "history_schema_version"
MIGRATIONS_DIR: Final = Path(__file__).resolve().parent / "migrations"


# ---------------------------------------------------------------------------- times


def to_datetime(wall: float) -> datetime:
    return datetime.fromtimestamp(wall, tz=UTC)


def to_wall(value: datetime) -> float:
    # SQLite hands back naive datetimes; everything we store is UTC.
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


# ---------------------------------------------------------------------------- database URL helpers


def normalize_db_url(url: str) -> URL:
    """A SQLAlchemy URL with our driver choices: ``postgres://`` and ``postgresql://`` use psycopg 3."""
    parsed = make_url(url)
    if parsed.drivername in ("postgres", "postgresql"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def redact_db_url(url: URL | str) -> str:
    parsed = make_url(url) if isinstance(url, str) else url
    return parsed.render_as_string(hide_password=True)


def sqlite_file(url: URL) -> Path | None:
    """The file of a file-backed SQLite URL (``None`` for memory databases and other dialects)."""
    if url.get_backend_name() != "sqlite":
        return None
    database = url.database
    if not database or database == ":memory:" or database.startswith("file:") or url.query.get("mode") == "memory":
        return None
    return Path(database)


def create_db_engine(
    url: URL, *, timeout_s: float = DB_TIMEOUT_S, pool_size: int = 1, statement_timeout_s: float = STATEMENT_TIMEOUT_S
) -> Engine:
    """An engine whose every call is bounded by ``timeout_s`` at the driver level."""
    backend = url.get_backend_name()
    if backend == "sqlite" and sqlite_file(url) is None:
        # A memory database lives in one connection: share it (tests and demos only).
        return sa.create_engine(url, connect_args={"check_same_thread": False}, poolclass=StaticPool)
    if backend == "sqlite":
        engine = sa.create_engine(
            url,
            connect_args={"timeout": timeout_s, "check_same_thread": False},
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=timeout_s,
        )
        if sqlite_file(url) is not None:
            sa_event.listen(engine, "connect", _sqlite_on_connect)
        return engine
    if backend == "postgresql":
        return sa.create_engine(
            url,
            pool_pre_ping=True,
            pool_size=pool_size,
            max_overflow=0,
            pool_timeout=timeout_s,
            pool_recycle=1800,
            connect_args={
                "connect_timeout": max(1, math.ceil(timeout_s)),
                # A query that runs past the read timeout is abandoned by the server too.
                "options": f"-c statement_timeout={int(statement_timeout_s * 1000)}",
                # Find a dead server on an idle pooled connection within about a minute.
                "keepalives": 1,
                "keepalives_idle": 30,
                "keepalives_interval": 10,
                "keepalives_count": 3,
            },
        )
    return sa.create_engine(url, pool_pre_ping=True, pool_size=pool_size, max_overflow=0, pool_timeout=timeout_s)


def _sqlite_on_connect(dbapi_connection: Any, connection_record: Any) -> None:
    # WAL: readers (the history API) never wait for the writer, and the writer never
    # waits for readers.
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        cursor.close()


def is_transient(exc: BaseException) -> bool:
    """True for errors that mean "the database is not reachable right now" (retry)."""
    if isinstance(exc, sa_exc.DBAPIError):
        return bool(exc.connection_invalidated) or isinstance(exc, sa_exc.OperationalError | sa_exc.InterfaceError)
    return isinstance(exc, sa_exc.DisconnectionError | sa_exc.TimeoutError | OSError | TimeoutError)


def describe_db_error(exc: BaseException) -> str:
    """A one-line description of a database error, without SQL, parameters or secrets."""
    original = getattr(exc, "orig", None)
    text = str(original if original is not None else exc).strip().splitlines()
    first = text[0] if text else ""
    first = re.sub(r"postgres(ql)?(\+\w+)?://\S+", "<db url>", first)
    return clip(f"{type(original or exc).__name__}: {first}", 200)


# ---------------------------------------------------------------------------- migrations


def alembic_config(connection: Connection | None = None) -> Any:
    """An Alembic config built in code (no alembic.ini): our scripts, our version table."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("version_table", VERSION_TABLE)
    # r<rev>_<slug>.py: a valid module name, so mypy and ruff check migrations too.
    config.set_main_option("file_template", "r%%(rev)s_%%(slug)s")
    # A new revision comes out lint-clean and formatted (the project's ruff settings).
    hooks = "post_write_hooks"
    config.set_section_option(hooks, "hooks", "ruff_fix, ruff_format")
    for name, options in (
        ("ruff_fix", "check --fix REVISION_SCRIPT_FILENAME"),
        ("ruff_format", "format REVISION_SCRIPT_FILENAME"),
    ):
        config.set_section_option(hooks, f"{name}.type", "module")
        config.set_section_option(hooks, f"{name}.module", "ruff")
        config.set_section_option(hooks, f"{name}.options", options)
    if connection is not None:
        config.attributes["connection"] = connection
    return config


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest revision (blocking; call it in a thread).

    Idempotent. On PostgreSQL a transaction-scoped advisory lock serialises instances that
    start at the same time, and the statement timeout is lifted for the DDL.
    """
    from alembic import command

    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(sa.text("SET LOCAL statement_timeout = 0"))
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY})
        command.upgrade(alembic_config(connection), "head")


# Any fixed 64-bit number; it names "the history schema migration" among advisory locks.
_MIGRATION_LOCK_KEY: Final = 0x6465726976  # "deriv"


def schema_revision(engine: Engine) -> str | None:
    """The revision the database is at (``None`` for a fresh database)."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE})
        return context.get_current_revision()


def head_revision() -> str:
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None
    return head


def shares_one_connection(url: URL) -> bool:
    """True for an in-memory SQLite database: it lives in one connection, which everyone shares."""
    return url.get_backend_name() == "sqlite" and sqlite_file(url) is None


__all__ = [
    "HISTORY_TABLES",
    "INCIDENTS",
    "SAMPLES",
    "TRANSITIONS",
    "VERSION_TABLE",
    "BreakerTransition",
    "Incident",
    "StatusSample",
    "alembic_config",
    "create_db_engine",
    "describe_db_error",
    "head_revision",
    "is_transient",
    "migrate",
    "normalize_db_url",
    "redact_db_url",
    "schema_revision",
    "shares_one_connection",
    "sqlite_file",
    "to_datetime",
    "to_wall",
]
