"""Alembic migrations of the history schema (see backend_core.history.db.migrate)."""
