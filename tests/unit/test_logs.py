"""LOG_FORMAT=json: one JSON object per line, with context fields and no secrets added; swallowed faults."""

from __future__ import annotations

import json
import logging

import pytest

from backend_core.clock import FakeClock
from backend_core.logs import FaultLog, JsonFormatter, LogThrottle, configure_logging


def record(message: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("backend_core.relay", logging.INFO, __file__, 1, message, args, None)
    for key, value in extra.items():
        setattr(rec, key, value)
    return rec


def test_json_lines_carry_time_level_logger_message_and_context() -> None:
    line = JsonFormatter().format(record("relay open id=%s", "c1", connection_id="c1", active=3))
    data = json.loads(line)
    assert "\n" not in line
    assert data["level"] == "INFO" and data["logger"] == "backend_core.relay"
    assert data["message"] == "relay open id=c1"
    assert data["connection_id"] == "c1" and data["active"] == 3
    assert data["time"].endswith("Z")


def test_exceptions_become_fields_not_extra_lines() -> None:
    try:
        raise ValueError("bad frame")
    except ValueError:
        import sys

        rec = record("handler crashed")
        rec.exc_info = sys.exc_info()
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    data = json.loads(line)
    assert data["error"] == "ValueError: bad frame"
    assert "Traceback" in data["traceback"]


def test_configure_logging_is_idempotent_and_switches_format() -> None:
    logger = logging.getLogger("backend_core")
    saved = logger.level, logger.propagate, list(logger.handlers)
    try:
        configure_logging("text", "INFO")
        configure_logging("json", "DEBUG")
        ours = [h for h in logger.handlers if getattr(h, "_backend_core", False)]
        assert len(ours) == 1
        assert isinstance(ours[0].formatter, JsonFormatter)
        assert logger.level == logging.DEBUG
        assert logger.propagate is False
    finally:
        # The process-wide logger goes back as it was: later tests capture its records.
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers[:] = saved[2]


def test_a_swallowed_fault_is_always_counted_and_its_traceback_logged_once_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    fault = FaultLog(logging.getLogger("backend_core.test"), "history", clock, interval_s=60.0)

    def fail(step: str) -> None:
        try:
            raise RuntimeError("bug")
        except RuntimeError:
            fault(step)

    for _ in range(3):
        fail("record_status")
    clock.advance(59.9)
    fail("record_status")
    assert fault.count == 4 and len(caplog.records) == 1
    first = caplog.records[0]
    assert first.getMessage() == "history: record_status failed; the event is lost (1 so far)"
    assert first.exc_info is not None and first.levelno == logging.ERROR
    clock.advance(0.1)
    fail("record_transition")
    assert fault.count == 5 and len(caplog.records) == 2
    assert caplog.records[1].getMessage() == "history: record_transition failed; the event is lost (5 so far)"


def test_a_repeated_line_is_let_through_once_per_interval_with_the_count_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    throttle = LogThrottle(logging.getLogger("backend_core.test"), interval_s=60.0)
    for second in range(5):
        throttle.log(1000.0 + second, logging.WARNING, "RateLimit", "upstream error %s", "RateLimit")
    throttle.log(1001.0, logging.WARNING, "Other", "upstream error %s", "Other")  # its own key
    throttle.log(1060.0, logging.WARNING, "RateLimit", "upstream error %s", "RateLimit")
    assert [r.getMessage() for r in caplog.records] == [
        "upstream error RateLimit",
        "upstream error Other",
        "upstream error RateLimit (4 more like it held back)",
    ]


def test_after_a_reset_the_next_line_of_that_key_is_logged_at_once(caplog: pytest.LogCaptureFixture) -> None:
    throttle = LogThrottle(logging.getLogger("backend_core.test"), interval_s=60.0)
    throttle.log(1000.0, logging.WARNING, "read", "read failed %d", 1)
    throttle.log(1001.0, logging.WARNING, "read", "read failed %d", 2)  # held back
    throttle.reset("read")  # the trouble is over
    throttle.log(1002.0, logging.WARNING, "read", "read failed %d", 3)  # new trouble: at once
    throttle.reset("never-seen")  # forgetting an unknown key is harmless
    assert [r.getMessage() for r in caplog.records] == ["read failed 1", "read failed 3"]


def test_throttle_keys_from_outside_are_bounded() -> None:
    throttle = LogThrottle(logging.getLogger("backend_core.test"), interval_s=60.0, max_keys=3)
    assert [throttle.due(0.0, f"code{i}") for i in range(10)] == [0, 0, 0, 0, None, None, None, None, None, None]
    assert len(throttle._seen) == 4  # three keys and the shared "other"


def test_secret_redaction_masks_every_logger_while_installed_and_nothing_after() -> None:
    import logging as std_logging

    from backend_core.logs import JsonFormatter, SecretRedaction

    seen: list[std_logging.LogRecord] = []

    class Keep(std_logging.Handler):
        def emit(self, record: std_logging.LogRecord) -> None:
            seen.append(record)

    library = std_logging.getLogger("some.library.deep.child")
    library.setLevel(std_logging.DEBUG)
    keep = Keep()
    library.addHandler(keep)
    try:
        with SecretRedaction(["hunter2-token", "abc"]).installed():
            library.debug("sending %s", {"authorize": "hunter2-token"})
            try:
                raise ValueError("bad url http://u:hunter2-token@host")
            except ValueError:
                library.exception("failed")
        library.info("after: hunter2-token")
    finally:
        library.removeHandler(keep)
    first, second, after = seen
    assert first.getMessage() == "sending {'authorize': '***'}"
    text = std_logging.Formatter().format(second)
    assert "hunter2-token" not in text and "***" in text
    assert "hunter2-token" not in JsonFormatter().format(second)
    assert after.getMessage() == "after: hunter2-token"  # uninstalled: the factory is back
    assert "abc" in SecretRedaction(["abc"]).redact("abc")  # too short to mask safely
