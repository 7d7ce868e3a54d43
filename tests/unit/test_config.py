"""Settings: every variable's default, and a bad value of each kind stops start-up with one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from backend_core.config import Settings, load_settings
from backend_core.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

# The names and defaults come from the system this replaces (DESIGN.md); they must not drift.
DEFAULTS = {
    "WEBSOCKET_ENABLED": True,
    "WEBSOCKET_MAX_CONNECTIONS": 100,
    "WEBSOCKET_HEARTBEAT_INTERVAL": 60.0,
    "WEBSOCKET_CONNECTION_TIMEOUT": 30.0,
    "WEBSOCKET_MAX_RETRY_ATTEMPTS": 3,
    "CIRCUIT_BREAKER_ENABLED": True,
    "WEBSOCKET_CB_FAILURE_THRESHOLD": 3,
    "WEBSOCKET_CB_RECOVERY_TIMEOUT": 30.0,
    "API_CB_FAILURE_THRESHOLD": 10,
    "API_CB_RECOVERY_TIMEOUT": 120.0,
    "VITE_WS_URL": None,
    "VITE_WS_RECONNECT_ATTEMPTS": 5,
    "VITE_WS_RECONNECT_INTERVAL": 3000,
    "VITE_ENABLE_REAL_TIME_UPDATES": True,
    "VITE_WEBSOCKET_FALLBACK_ENABLED": True,
    "DERIV_WS_URL": None,
    "DERIV_APP_ID": "1089",
    "DERIV_API_TOKEN": None,
    "DERIV_SYMBOLS": ("R_50", "R_100", "1HZ100V"),
    "DERIV_PING_INTERVAL": 30.0,
    "DERIV_SIMULATOR_HOST": "127.0.0.1",
    "DERIV_SIMULATOR_PORT": 0,
    "DERIV_SIMULATOR_CONTROL_PORT": 0,
    "DERIV_SIMULATOR_TIME_SCALE": 1.0,
    "ADMIN_TOKEN": None,
    "DB_URL": "sqlite:///data/status.db",
    "LOG_FORMAT": "text",
    "LOG_LEVEL": "INFO",
    "HISTORY_RETENTION_DAYS": 90,
    "ALERT_WEBHOOK_URL": None,
    "ALERT_AFTER_SECONDS": 60.0,
    "API_RATE_LIMIT_PER_S": 10.0,
    "API_RATE_LIMIT_BURST": 50,
    "TRUSTED_PROXIES": (),
}


def test_every_variable_has_its_documented_default() -> None:
    settings = load_settings({})
    assert set(Settings.model_fields) == set(DEFAULTS), "a variable was added or removed without updating this test"
    for name, default in DEFAULTS.items():
        assert getattr(settings, name) == default, name
    assert settings.uses_simulator


def test_settings_are_immutable() -> None:
    settings = load_settings({})
    with pytest.raises(Exception, match="frozen"):
        settings.WEBSOCKET_ENABLED = False  # type: ignore[misc]


def test_every_variable_is_documented_in_env_example() -> None:
    text = (ROOT / ".env.example").read_text()
    for name in DEFAULTS:
        assert f"{name}=" in text, f"{name} is missing from .env.example"


@pytest.mark.parametrize(
    ("variable", "value", "accepted"),
    [
        ("WEBSOCKET_MAX_CONNECTIONS", "-1", "whole number from 1"),
        ("WEBSOCKET_MAX_CONNECTIONS", "ten", "whole number from 1"),
        ("CIRCUIT_BREAKER_ENABLED", "maybe", "true or false"),
        ("WEBSOCKET_ENABLED", "2", "true or false"),
        ("WEBSOCKET_CB_RECOVERY_TIMEOUT", "abc", "number of seconds"),
        ("WEBSOCKET_CB_RECOVERY_TIMEOUT", "0", "number of seconds"),
        ("WEBSOCKET_HEARTBEAT_INTERVAL", "-5", "number of seconds"),
        ("WEBSOCKET_CONNECTION_TIMEOUT", "nan", "number of seconds"),
        ("WEBSOCKET_MAX_RETRY_ATTEMPTS", "0", "whole number from 1"),
        ("WEBSOCKET_CB_FAILURE_THRESHOLD", "1.5", "whole number"),
        ("API_CB_FAILURE_THRESHOLD", "0", "whole number"),
        ("API_CB_RECOVERY_TIMEOUT", "-1", "number of seconds"),
        ("VITE_WS_URL", "http://example.com/ws", "ws:// or wss://"),
        ("VITE_WS_RECONNECT_ATTEMPTS", "-3", "whole number"),
        ("VITE_WS_RECONNECT_INTERVAL", "5", "milliseconds"),
        ("VITE_ENABLE_REAL_TIME_UPDATES", "sometimes", "true or false"),
        ("VITE_WEBSOCKET_FALLBACK_ENABLED", "yesno", "true or false"),
        ("DERIV_WS_URL", "ftp://x", "ws:// or wss://"),
        ("DERIV_APP_ID", "0123", "digits not starting with 0"),
        ("DERIV_APP_ID", "abc", "digits not starting with 0"),
        ("DERIV_API_TOKEN", "bad token!", "1 to 128 characters"),
        ("DERIV_SYMBOLS", "R_50,x", "comma-separated list"),
        ("DERIV_SYMBOLS", " , ", "comma-separated list"),
        ("DERIV_PING_INTERVAL", "120", "below 120"),
        ("DERIV_SIMULATOR_PORT", "70000", "port"),
        ("DERIV_SIMULATOR_TIME_SCALE", "0", "from 0.01"),
        ("ADMIN_TOKEN", "short", "at least 16"),
        ("DB_URL", "not a url", "SQLAlchemy URL"),
        ("LOG_FORMAT", "xml", "text or json"),
        ("LOG_LEVEL", "LOUD", "DEBUG, INFO"),
        ("HISTORY_RETENTION_DAYS", "0", "whole number of days from 1 to 3650"),
        ("HISTORY_RETENTION_DAYS", "3651", "whole number of days from 1 to 3650"),
        ("HISTORY_RETENTION_DAYS", "30.5", "whole number of days"),
        ("ALERT_WEBHOOK_URL", "ftp://hooks.example.com/x", "http:// or https://"),
        ("ALERT_WEBHOOK_URL", "https://exa mple.com/hook", "http:// or https://"),
        ("ALERT_WEBHOOK_URL", "https://example.com/" + "a" * 2100, "at most 2048"),
        ("ALERT_AFTER_SECONDS", "-1", "number of seconds from 0 to 86400"),
        ("ALERT_AFTER_SECONDS", "nan", "number of seconds from 0 to 86400"),
        ("ALERT_AFTER_SECONDS", "86401", "number of seconds from 0 to 86400"),
        ("API_RATE_LIMIT_PER_S", "0", "requests a second greater than 0"),
        ("API_RATE_LIMIT_BURST", "0", "whole number from 1 to 100000"),
        ("TRUSTED_PROXIES", "10.0.0.1,proxy.local", "IP addresses or CIDR networks"),
    ],
)
def test_bad_value_names_variable_value_and_what_is_accepted(variable: str, value: str, accepted: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({variable: value})
    message = info.value.message
    assert "\n" not in message
    assert variable in message
    assert repr(value) in message
    assert accepted in message


def test_values_are_normalised() -> None:
    settings = load_settings(
        {
            "DERIV_SYMBOLS": " R_50 ,1HZ100V,R_50",
            "LOG_LEVEL": "debug",
            "LOG_FORMAT": "JSON",
            "CIRCUIT_BREAKER_ENABLED": "false",
            "DERIV_WS_URL": "wss://ws.derivws.com/websockets/v3",
            "DERIV_API_TOKEN": "abc-DEF_123",
        }
    )
    assert settings.DERIV_SYMBOLS == ("R_50", "1HZ100V")
    assert settings.LOG_LEVEL == "DEBUG"
    assert settings.LOG_FORMAT == "json"
    assert settings.CIRCUIT_BREAKER_ENABLED is False
    assert not settings.uses_simulator
    assert settings.DERIV_API_TOKEN is not None and settings.DERIV_API_TOKEN.get_secret_value() == "abc-DEF_123"


def test_public_view_never_shows_secrets() -> None:
    settings = load_settings(
        {
            "DERIV_API_TOKEN": "tok123secret",
            "ADMIN_TOKEN": "a" * 20,
            "DB_URL": "postgresql+psycopg://user:hunter2@db/x",
            "ALERT_WEBHOOK_URL": "https://hooks.example.com/services/T0/B0/sekrit",
        }
    )
    view = str(settings.public_view())
    assert "tok123secret" not in view and "a" * 20 not in view and "hunter2" not in view
    assert "sekrit" not in view
    assert "<set>" in view


def test_unrelated_environment_variables_are_ignored() -> None:
    assert load_settings({"PATH": "/bin", "HOME": "/root"}).WEBSOCKET_MAX_CONNECTIONS == 100


def test_check_command_prints_one_line_and_exits_2_without_traceback() -> None:
    env = {**os.environ, "WEBSOCKET_MAX_CONNECTIONS": "-1"}
    proc = subprocess.run(
        [sys.executable, "-m", "backend_core.config"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    expected = (
        "Invalid configuration: WEBSOCKET_MAX_CONNECTIONS='-1' is not accepted; "
        "expected a whole number from 1 to 100000."
    )
    assert lines == [expected]


def test_alert_and_history_values_are_accepted() -> None:
    settings = load_settings(
        {
            "HISTORY_RETENTION_DAYS": "7",
            "ALERT_WEBHOOK_URL": " http://127.0.0.1:9000/hook?team=ops ",
            "ALERT_AFTER_SECONDS": "0",
        }
    )
    assert settings.HISTORY_RETENTION_DAYS == 7
    assert settings.ALERT_WEBHOOK_URL is not None
    assert settings.ALERT_WEBHOOK_URL.get_secret_value() == "http://127.0.0.1:9000/hook?team=ops"
    assert settings.ALERT_AFTER_SECONDS == 0.0
    assert load_settings({"ALERT_WEBHOOK_URL": ""}).ALERT_WEBHOOK_URL is None
