"""No secret in any output (DESIGN.md rule 9), with the app driven through faults and bad input.

Distinctive values for every secret: ADMIN_TOKEN, DERIV_API_TOKEN (the embedded simulator
accepts it, so authorize runs), ALERT_WEBHOOK_URL (a local receiver, with a password and a
token in it; the receiver fails at first, so the alerts have error messages to show) and
DB_URL with a password (a PostgreSQL URL whose server is down: the store's error paths
run). The simulator refuses and drops the link, clients send hostile requests and wrong
tokens; then every output is searched: logs of every logger at DEBUG in text and in JSON,
every health route, /metrics, the status JSON, the REST fallback, the history routes,
/openapi.json and the alerts' own error messages.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager

import pytest

from backend_core import status_view
from backend_core.config import load_settings
from backend_core.errors import ConfigError
from backend_core.logs import JsonFormatter
from tests.helpers import until
from tests.integration.conftest import ServedApp
from tests.integration.test_alerts import Receiver
from tests.integration.test_api import HOSTILE, cut_the_upstream, live, serve_runtime

ADMIN_SECRET = "adminSECRET-7f3a9c1e77d2"
DERIV_SECRET = "derivSECRET-9z8y7x6w"
HOOK_PASSWORD = "hookPASSWORD-6c1d0e"
HOOK_TOKEN = "hookTOKEN-55aa31"
DB_PASSWORD = "dbPASSWORD-91ab4c"
SECRETS = (ADMIN_SECRET, DERIV_SECRET, HOOK_PASSWORD, HOOK_TOKEN, DB_PASSWORD)


def closed_port() -> int:
    """A loopback port with nothing listening (bound and released: refused at once)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Capture(logging.Handler):
    """Every record of every logger at DEBUG, formatted as text and as JSON (LOG_FORMAT's two)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.text = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.json = JsonFormatter()
        self.lines: list[tuple[str, str, str]] = []  # (logger, text line, JSON line)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.name, self.text.format(record), self.json.format(record)))


@contextmanager
def captured_logs() -> Iterator[Capture]:
    capture = Capture()
    root = logging.getLogger()
    names = ("backend_core", "httpx", "httpcore", "websockets", "uvicorn", "sqlalchemy")
    saved = root.level, {name: logging.getLogger(name).level for name in names}
    root.setLevel(logging.DEBUG)
    for name in names:
        logging.getLogger(name).setLevel(logging.DEBUG)
    root.addHandler(capture)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(saved[0])
        for name, level in saved[1].items():
            logging.getLogger(name).setLevel(level)


def leaks(where: str, text: str) -> list[str]:
    return [f"{where}: {secret}" for secret in SECRETS if secret in text]


def log_leaks(capture: Capture, own: bool) -> list[str]:
    """Leaks in the log lines of this app's loggers (``own``) or of the libraries it uses."""
    found = []
    for name, text, json_line in capture.lines:
        if name.startswith("backend_core") == own:
            found += leaks(f"log {name} (text)", text) + leaks(f"log {name} (JSON)", json_line)
    return found


async def drive(asgi_server: Callable[..., Awaitable[ServedApp]]) -> tuple[list[str], Capture]:
    """Run the app through faults and bad input; return what its outputs leaked, and its logs."""
    receiver = Receiver(fail_first=2, fail_status=500)
    hook = await asgi_server(receiver.app())
    host_port = hook.http_url.removeprefix("http://")
    env = {
        "ADMIN_TOKEN": ADMIN_SECRET,
        "DERIV_API_TOKEN": DERIV_SECRET,
        "ALERT_WEBHOOK_URL": f"http://hookuser:{HOOK_PASSWORD}@{host_port}/hook?token={HOOK_TOKEN}",
        "ALERT_AFTER_SECONDS": "0",
        "DB_URL": f"postgresql+psycopg://status:{DB_PASSWORD}@127.0.0.1:{closed_port()}/status",
        "LOG_LEVEL": "DEBUG",
        "API_RATE_LIMIT_BURST": "1000",
    }
    found: list[str] = []
    with captured_logs() as capture:
        async with serve_runtime(asgi_server, **env) as (runtime, client):
            # Faults: the upstream refuses and drops; the database is down throughout.
            sim = await cut_the_upstream(runtime)
            await until(lambda: status_view.upstream_status(runtime)["state"] == "circuit_open")
            await until(lambda: len(receiver.attempts) >= 2)  # the first alerts fail: error messages
            # Bad input and wrong credentials.
            for path, _, _ in HOSTILE:
                await client.get(path)
            wrong = {"Authorization": f"Bearer {ADMIN_SECRET[:-1]}x"}
            await client.post("/health/circuit-breakers/websocket/reset", headers=wrong)
            await client.get("/health/websocket/connections", headers=wrong)
            await client.post("/health/circuit-breakers/web%0Asocket/reset", headers=wrong)
            sim.refuse_connections(0)
            runtime.retry_now()
            await until(live(runtime))

            admin = {"Authorization": f"Bearer {ADMIN_SECRET}"}
            for path in (
                "/health",
                "/health/detailed",
                "/health/websocket",
                "/health/circuit-breakers",
                "/livez",
                "/readyz",
                "/metrics",
                "/openapi.json",
                "/api/v1/status",
                "/api/v1/ticks/latest",
                "/api/v1/ticks/R_50",
                "/api/v1/history",
                "/api/v1/incidents",
                "/api/v1/transitions",
            ):
                response = await client.get(path)
                assert "Traceback" not in response.text, path
                found += leaks(path, response.text + str(response.headers))
            # Admin answers are for the operator, but not even they show a secret.
            response = await client.get("/health/websocket/connections", headers=admin)
            found += leaks("/health/websocket/connections", response.text)
            response = await client.post("/health/circuit-breakers/websocket/reset", headers=admin)
            found += leaks("reset", response.text)
            alerts = runtime.alerts.snapshot()
            assert alerts["last_error"] or receiver.accepted
            found += leaks("alerts snapshot", repr(alerts))
            found += leaks("alerts health", repr(runtime.alerts.health_check()))
            found += leaks("store snapshot", repr(runtime.store.snapshot()))
            found += leaks("status", repr(status_view.status(runtime)))
    # The webhook's own credential reaches the receiver (that is how it checks its caller);
    # the alert bodies carry none of it.
    found += leaks("alert bodies", repr([body for _, body in receiver.attempts]))
    assert any(" DEBUG " in text for _, text, _ in capture.lines)  # the capture saw DEBUG lines
    assert any("circuit 'websocket'" in text for _, text, _ in capture.lines)
    return found, capture


async def test_no_output_and_no_log_line_of_the_app_shows_a_secret(
    asgi_server: Callable[..., Awaitable[ServedApp]],
) -> None:
    found, capture = await drive(asgi_server)
    assert found + log_leaks(capture, own=True) == []


async def test_no_library_log_line_shows_a_secret(asgi_server: Callable[..., Awaitable[ServedApp]]) -> None:
    _, capture = await drive(asgi_server)
    assert log_leaks(capture, own=False) == []


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ADMIN_TOKEN", "short-" + ADMIN_SECRET[:5]),
        ("DERIV_API_TOKEN", DERIV_SECRET + " with spaces"),
        ("ALERT_WEBHOOK_URL", f"ftp://user:{HOOK_PASSWORD}@example"),
        ("DB_URL", f"nonsense:{DB_PASSWORD}"),
    ],
)
def test_a_configuration_error_names_the_variable_and_hides_the_value(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as error:
        load_settings({variable: value})
    message = str(error.value)
    assert variable in message
    assert value not in message
