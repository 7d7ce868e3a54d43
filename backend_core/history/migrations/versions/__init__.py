"""Migration scripts, applied in order by backend_core.history.db.migrate()."""
