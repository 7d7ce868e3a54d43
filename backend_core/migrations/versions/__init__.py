"""Migration scripts, applied in order by backend_core.store.migrate()."""
