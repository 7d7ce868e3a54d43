"""Logging set-up: one line per event, as text or as JSON (``LOG_FORMAT``).

Configured once by the Runtime. Secrets never reach a log line: nothing in backend_core
formats a token into a message, :class:`JsonFormatter` only emits the message, the logger
name, the level, the time and explicitly passed ``extra`` context fields, and while a
Runtime runs, :class:`SecretRedaction` masks the configured secrets in every record of
every logger, the libraries' included (httpx logs request URLs at INFO, websockets logs
frames at DEBUG: an authorize frame carries the API token).
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterable, Iterator
from typing import Any, Final

from backend_core.clock import Clock, iso_utc

# The house's log rate: a line that would repeat (a swallowed internal error, a failing
# dependency, dropped events) is let through at most this often, with a count of the rest.
LOG_INTERVAL_S: Final = 60.0
# Distinct keys one LogThrottle tells apart (keys may come from outside, e.g. upstream
# error codes); later keys share one "other" slot, so the map stays bounded.
MAX_THROTTLE_KEYS: Final = 64

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
            error = getattr(record, "_error_text", None)
            data["error"] = error or f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
            data["traceback"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(data, separators=(",", ":"))


# A secret shorter than this is not masked: it would mask ordinary words and numbers.
MIN_SECRET_CHARS: Final = 4
MASK: Final = "***"


class SecretRedaction:
    """Masks known secret values in every log record made while it is installed.

    Installed as the process's log record factory, so it sees the records of every logger
    (a filter on one logger misses its children and the libraries'). The message, and an
    exception's text and traceback, are rendered once and masked; the record then carries
    the masked text only.
    """

    def __init__(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted({s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True)
        self._formatter = logging.Formatter()

    def redact(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        previous = logging.getLogRecordFactory()
        if not self._secrets:
            yield
            return

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = previous(*args, **kwargs)
            self._mask(record)
            return record

        logging.setLogRecordFactory(factory)
        try:
            yield
        finally:
            logging.setLogRecordFactory(previous)

    def _mask(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: the handler reports it later
            return
        masked = self.redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and record.exc_info[0] is not None:
            record.exc_text = self.redact(self._formatter.formatException(record.exc_info))
            record._error_text = self.redact(f"{record.exc_info[0].__name__}: {record.exc_info[1]}")  # type: ignore[attr-defined]


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


class LogThrottle:
    """Lets a repeated log line through at most once per ``interval_s`` per key, with a count.

    The one log-rate limit of the house (DESIGN.md rule 5). Time is passed in (monotonic
    seconds), so pure code can use it. The first line of a key is logged at once; later
    ones within the interval are only counted, and the next line that is let through says
    how many were held back. At most ``max_keys`` keys are told apart.
    """

    __slots__ = ("_interval_s", "_logger", "_max_keys", "_seen")

    def __init__(
        self, logger: logging.Logger, interval_s: float = LOG_INTERVAL_S, max_keys: int = MAX_THROTTLE_KEYS
    ) -> None:
        self._logger = logger
        self._interval_s = interval_s
        self._max_keys = max_keys
        # key -> [monotonic time last logged, lines held back since]
        self._seen: dict[str, list[float]] = {}

    def due(self, now: float, key: str) -> int | None:
        """``None`` when a line for ``key`` is held back now; else how many were held back before it."""
        entry = self._seen.get(key)
        if entry is None and len(self._seen) >= self._max_keys:
            key = "other"  # the map is full: every further key shares one slot
            entry = self._seen.get(key)
        if entry is None:
            self._seen[key] = [now, 0]
            return 0
        if now - entry[0] < self._interval_s:
            entry[1] += 1
            return None
        held = int(entry[1])
        entry[0], entry[1] = now, 0
        return held

    def reset(self, key: str) -> None:
        """Forget ``key``: its next line is logged at once (the trouble it reported is over)."""
        self._seen.pop(key, None)

    def log(self, now: float, level: int, key: str, msg: str, *args: object) -> bool:
        """Log ``msg % args`` unless held back; True when it was logged."""
        held = self.due(now, key)
        if held is None:
            return False
        if held:
            self._logger.log(level, msg + " (%d more like it held back)", *args, held)
        else:
            self._logger.log(level, msg, *args)
        return True


class FaultLog:
    """Counts the internal errors that an entry point which must never raise swallows.

    Call it from the ``except`` block: the count goes up every time, and the traceback is
    logged at most once per ``interval_s`` (the same bug would repeat for every event),
    as "<label>: <step> failed; the event is lost (<count> so far)".
    """

    def __init__(self, logger: logging.Logger, label: str, clock: Clock, interval_s: float = LOG_INTERVAL_S):
        self._logger = logger
        self._label = label
        self._clock = clock
        self._throttle = LogThrottle(logger, interval_s, max_keys=1)
        self.count = 0

    def __call__(self, step: str) -> None:
        self.count += 1
        if self._throttle.due(self._clock.monotonic(), self._label) is not None:
            self._logger.exception("%s: %s failed; the event is lost (%d so far)", self._label, step, self.count)
