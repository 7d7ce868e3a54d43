"""Logging set-up: one line per event, as text or as JSON (``LOG_FORMAT``).

Configured once by the Runtime. Secrets never reach a log line: nothing in backend_core
formats a token into a message, and :class:`JsonFormatter` only emits the message, the
logger name, the level, the time and explicitly passed ``extra`` context fields.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Final

from backend_core.clock import Clock, iso_utc

# A swallowed internal error is logged at most this often: it would repeat for every event.
FAULT_LOG_INTERVAL_S: Final = 60.0

# Attributes every LogRecord has; anything else on a record came in through ``extra=``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC ISO 8601), level, logger, message, context."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": iso_utc(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                data[key] = value if isinstance(value, str | int | float | bool | type(None)) else str(value)
        if record.exc_info and record.exc_info[0] is not None:
            data["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, separators=(",", ":"))


def configure_logging(log_format: str, level: str) -> None:
    """Attach one handler to the ``backend_core`` logger (idempotent)."""
    logger = logging.getLogger("backend_core")
    logger.setLevel(level)
    for handler in list(logger.handlers):
        if getattr(handler, "_backend_core", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler()
    handler._backend_core = True  # type: ignore[attr-defined]
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger.addHandler(handler)
    logger.propagate = False


class FaultLog:
    """Counts the internal errors that an entry point which must never raise swallows.

    Call it from the ``except`` block: the count goes up every time, and the traceback is
    logged at most once per ``interval_s`` (the same bug would repeat for every event),
    as "<label>: <step> failed; the event is lost (<count> so far)".
    """

    def __init__(self, logger: logging.Logger, label: str, clock: Clock, interval_s: float = FAULT_LOG_INTERVAL_S):
        self._logger = logger
        self._label = label
        self._clock = clock
        self._interval_s = interval_s
        self._logged_at: float | None = None
        self.count = 0

    def __call__(self, step: str) -> None:
        self.count += 1
        now = self._clock.monotonic()
        if self._logged_at is None or now - self._logged_at >= self._interval_s:
            self._logged_at = now
            self._logger.exception("%s: %s failed; the event is lost (%d so far)", self._label, step, self.count)
