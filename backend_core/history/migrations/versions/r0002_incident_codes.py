"""Incidents as data: cause and recovery become codes, the attempts a number.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01

Until 0001 the store wrote English into ``incident.cause`` ("connection lost"),
``incident.recovery`` ("reconnected after 3 attempts", "not recovered: the service
stopped") and, for breakers, ``incident.message`` ("Circuit 'websocket' opened: too many
consecutive failures."), and the page parsed it back. From here ``cause`` holds a
``backend_core.incidents.Cause`` value, ``recovery`` a ``Recovery`` value, ``attempts`` the
number the prose carried, and the message only the upstream's own error text; the words
are the page's. The mappings below are frozen copies (a migration must not change when
the code does).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Rows converted per round trip (incidents are rare; this only bounds memory).
_CHUNK = 1000

_CAUSES = {
    "connection lost": "connection_lost",
    "could not connect": "could_not_connect",
    "circuit breaker open": "circuit_open",
    "planned maintenance": "planned_maintenance",
    "circuit breaker opened": "breaker_opened",
}
_RECOVERIES = {
    "reconnected": "reconnected",
    "manual retry": "manual_retry",
    "breaker probe": "breaker_probe",
    "reset by an admin": "reset",
    "breakers re-enabled": "breakers_enabled",
    "breakers disabled": "breakers_disabled",
    "not recovered: the service stopped": "service_stopped",
    "not recovered: the service restarted": "service_restarted",
}
_RECONNECTED_AFTER = re.compile(r"^reconnected after (\d{1,9}) attempts?$")
# What 0001's store wrote for an upstream incident without an error, and the words it
# put in a breaker incident's message (for the way back).
_NO_ERROR_MESSAGE = "The market data link is down."
_OLD_BREAKER_REASON_WORDS = {
    "failure_threshold": "too many consecutive failures",
    "failure_rate": "failure rate over the threshold",
    "probe_failed": "the recovery probe failed",
    "probe_timeout": "the recovery probe hung",
    "forced_open": "forced open by an operator",
}

_incident = sa.table(
    "incident",
    sa.column("id", sa.Integer()),
    sa.column("kind", sa.String()),
    sa.column("component", sa.String()),
    sa.column("cause", sa.String()),
    sa.column("error_code", sa.String()),
    sa.column("message", sa.String()),
    sa.column("recovery", sa.String()),
    sa.column("attempts", sa.Integer()),
)


def new_values(row: Any) -> dict[str, Any]:
    """One 0001 row's cause, recovery, attempts and message as 0002 stores them."""
    breaker = row.kind == "breaker"
    cause = _CAUSES.get(row.cause, row.cause)
    if cause not in _CAUSES.values():
        cause = "breaker_opened" if breaker else "connection_lost"
    attempts = row.attempts
    recovery = row.recovery
    if recovery is not None:
        after = _RECONNECTED_AFTER.match(recovery)
        if after is not None:
            recovery, attempts = "reconnected", attempts if attempts is not None else int(after.group(1))
        elif recovery in _RECOVERIES:
            recovery = _RECOVERIES[recovery]
        elif recovery.startswith("not recovered"):
            recovery = "service_stopped"
        elif recovery not in _RECOVERIES.values():
            recovery = "breaker_closed" if breaker else "reconnected"
    message = row.message or ""
    if (breaker and message.startswith("Circuit '")) or (not breaker and message == _NO_ERROR_MESSAGE):
        message = ""
    return {"cause": cause, "recovery": recovery, "attempts": attempts, "message": message}


def old_values(row: Any) -> dict[str, Any]:
    """The way back: one 0002 row as 0001's store wrote it."""
    breaker = row.kind == "breaker"
    causes = {code: words for words, code in _CAUSES.items()}
    recoveries = {code: words for words, code in _RECOVERIES.items()}
    recovery = row.recovery
    if recovery == "reconnected" and row.attempts:
        recovery = f"reconnected after {row.attempts} attempt" + ("" if row.attempts == 1 else "s")
    elif recovery is not None:
        recovery = recoveries.get(recovery, recovery.replace("_", " "))
    message = row.message or ""
    if breaker and not message:
        name = str(row.component).removeprefix("breaker:")
        reason = row.error_code or ""
        message = f"Circuit '{name}' opened: {_OLD_BREAKER_REASON_WORDS.get(reason, reason)}."
    elif not breaker and not message:
        message = _NO_ERROR_MESSAGE
    return {
        "cause": causes.get(row.cause, row.cause),
        "recovery": recovery,
        "attempts": row.attempts,
        "message": message,
    }


def _convert(convert: Callable[[Any], dict[str, Any]]) -> None:
    connection = op.get_bind()
    last_id = 0
    while True:
        rows = connection.execute(
            sa.select(_incident).where(_incident.c.id > last_id).order_by(_incident.c.id).limit(_CHUNK)
        ).all()
        if not rows:
            return
        for row in rows:
            values = convert(row)
            if any(getattr(row, name) != value for name, value in values.items()):
                connection.execute(sa.update(_incident).where(_incident.c.id == row.id).values(**values))
        last_id = rows[-1].id


def upgrade() -> None:
    _convert(new_values)
    with op.batch_alter_table("incident") as batch:
        batch.alter_column(
            "cause", existing_type=sa.String(length=100), type_=sa.String(length=32), existing_nullable=False
        )
        batch.alter_column(
            "recovery", existing_type=sa.String(length=200), type_=sa.String(length=32), existing_nullable=True
        )


def downgrade() -> None:
    with op.batch_alter_table("incident") as batch:
        batch.alter_column(
            "cause", existing_type=sa.String(length=32), type_=sa.String(length=100), existing_nullable=False
        )
        batch.alter_column(
            "recovery", existing_type=sa.String(length=32), type_=sa.String(length=200), existing_nullable=True
        )
    _convert(old_values)
