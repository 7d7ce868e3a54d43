"""Alembic migrations of the history schema (see backend_core.store.migrate)."""
