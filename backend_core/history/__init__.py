"""Persistence of the history: incidents, breaker transitions and per-minute uptime.

- :mod:`~backend_core.history.db`: the SQLModel tables, engine and URL helpers, Alembic
  (scripts in ``migrations/``, operator commands in ``python -m backend_core.history.migrations``);
- :mod:`~backend_core.history.minutes`: the pure minute sampler behind the uptime bars;
- :mod:`~backend_core.history.writer`: bounded queues and the one writer (own thread, own connection);
- :mod:`~backend_core.history.queries`: the reads (own thread pool, own connections);
- :mod:`~backend_core.history.store`: :class:`~backend_core.history.store.HistoryStore`, what the Runtime owns;
- :mod:`~backend_core.history.reader`: the status pages' one paced reader (owned by the Runtime).
"""
