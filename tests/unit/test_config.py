"""Settings: every variable's default, a bad value of each kind stops start-up with one line,
and a secret's value never appears in that line."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import SecretStr

from backend_core.config import SECRET_VARIABLES, SHOWN_VALUE_MAX_CHARS, Settings, load_settings
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
    "DERIV_SIMULATOR_ALLOW_REMOTE": False,
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
    "ALLOWED_ORIGINS": (),
    "TRUSTED_PROXIES": (),
    "API_RATE_LIMIT_PER_S": 10.0,
    "API_RATE_LIMIT_BURST": 50,
    "REDIS_URL": None,
    "CLUSTER_NAME": "deriv-status",
    "CLUSTER_LEASE_TTL": 5.0,
}
# Generated per process (hostname-pid-random): checked by its own test.
GENERATED = {"INSTANCE_ID"}


def test_every_variable_has_its_documented_default() -> None:
    settings = load_settings({})
    added_or_removed = "a variable was added or removed without updating this test"
    assert set(Settings.model_fields) == set(DEFAULTS) | GENERATED, added_or_removed
    for name, default in DEFAULTS.items():
        assert getattr(settings, name) == default, name
    assert settings.uses_simulator


def test_cluster_settings_default_to_one_process_and_a_lease_safe_instance_id() -> None:
    settings = load_settings({})
    assert not settings.clustered
    assert ":" not in settings.INSTANCE_ID and settings.INSTANCE_ID != load_settings({}).INSTANCE_ID
    clustered = load_settings({"REDIS_URL": "redis://127.0.0.1:6379/0", "INSTANCE_ID": "web-1"})
    assert clustered.clustered and clustered.INSTANCE_ID == "web-1"
    for variable, value in (("INSTANCE_ID", "host:1"), ("REDIS_URL", "http://x"), ("CLUSTER_LEASE_TTL", "1")):
        with pytest.raises(ConfigError, match=variable):
            load_settings({variable: value})


def test_settings_are_immutable() -> None:
    settings = load_settings({})
    with pytest.raises(Exception, match="frozen"):
        settings.WEBSOCKET_ENABLED = False  # type: ignore[misc]


@pytest.mark.parametrize("document", [".env.example", "README.md"])
def test_every_variable_is_documented(document: str) -> None:
    text = (ROOT / document).read_text()
    for name in DEFAULTS:
        spelled = f"{name}=" if document == ".env.example" else f"`{name}`"
        assert spelled in text, f"{name} is missing from {document}"


def test_every_field_has_a_description_for_its_error_line() -> None:
    for name, field in Settings.model_fields.items():
        assert field.description, name


def test_the_process_environment_is_read_by_the_settings_themselves(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEBSOCKET_MAX_CONNECTIONS", "7")
    monkeypatch.setenv("DERIV_SYMBOLS", "R_10, R_25")
    monkeypatch.setenv("TRUSTED_PROXIES", "10.0.0.0/8")
    settings = load_settings()
    assert settings.WEBSOCKET_MAX_CONNECTIONS == 7
    assert settings.DERIV_SYMBOLS == ("R_10", "R_25")
    assert (ipaddress.ip_network("10.0.0.0/8"),) == settings.TRUSTED_PROXIES
    # A mapping given instead is the whole environment: the process one is not mixed in.
    assert load_settings({}).WEBSOCKET_MAX_CONNECTIONS == 100


@pytest.mark.parametrize(
    ("variable", "value", "rule"),
    [
        ("WEBSOCKET_MAX_CONNECTIONS", "-1", "greater than or equal to 1"),
        ("WEBSOCKET_MAX_CONNECTIONS", "100001", "less than or equal to 100000"),
        ("WEBSOCKET_MAX_CONNECTIONS", "ten", "valid integer"),
        ("CIRCUIT_BREAKER_ENABLED", "maybe", "valid boolean"),
        ("WEBSOCKET_ENABLED", "2", "valid boolean"),
        ("WEBSOCKET_CB_RECOVERY_TIMEOUT", "abc", "valid number"),
        ("WEBSOCKET_CB_RECOVERY_TIMEOUT", "0", "greater than 0"),
        ("WEBSOCKET_HEARTBEAT_INTERVAL", "-5", "greater than 0"),
        ("WEBSOCKET_CONNECTION_TIMEOUT", "nan", "finite number"),
        ("WEBSOCKET_MAX_RETRY_ATTEMPTS", "0", "greater than or equal to 1"),
        ("WEBSOCKET_CB_FAILURE_THRESHOLD", "1.5", "valid integer"),
        ("API_CB_FAILURE_THRESHOLD", "0", "greater than or equal to 1"),
        ("API_CB_RECOVERY_TIMEOUT", "-1", "greater than 0"),
        ("VITE_WS_URL", "http://example.com/ws", "'ws' or 'wss'"),
        ("VITE_WS_RECONNECT_ATTEMPTS", "-3", "greater than or equal to 0"),
        ("VITE_WS_RECONNECT_INTERVAL", "5", "greater than or equal to 100"),
        ("VITE_ENABLE_REAL_TIME_UPDATES", "sometimes", "valid boolean"),
        ("VITE_WEBSOCKET_FALLBACK_ENABLED", "yesno", "valid boolean"),
        ("DERIV_WS_URL", "ftp://x", "'ws' or 'wss'"),
        ("DERIV_WS_URL", "wss://ws.derivws.com", "should have a path"),
        ("DERIV_WS_URL", "wss://ws.derivws.com/", "should have a path"),
        ("DERIV_WS_URL", "wss://exa mple.com/websockets/v3", "valid URL"),
        ("DERIV_APP_ID", "0123", "should match pattern"),
        ("DERIV_APP_ID", "abc", "should match pattern"),
        ("DERIV_SYMBOLS", "R_50,x", "item 2: String should match pattern"),
        ("DERIV_SYMBOLS", " , ", "at least 1 item"),
        ("DERIV_SYMBOLS", ",".join(f"R_{n}" for n in range(51)), "at most 50 items"),
        ("DERIV_PING_INTERVAL", "120", "less than 120"),
        ("DERIV_SIMULATOR_HOST", "0.0.0.0", "loopback only"),
        ("DERIV_SIMULATOR_HOST", "192.168.1.10", "DERIV_SIMULATOR_ALLOW_REMOTE=true"),
        ("DERIV_SIMULATOR_HOST", "status.example.com", "loopback only"),
        ("DERIV_SIMULATOR_ALLOW_REMOTE", "perhaps", "valid boolean"),
        ("DERIV_SIMULATOR_PORT", "70000", "less than or equal to 65535"),
        ("DERIV_SIMULATOR_CONTROL_PORT", "-1", "greater than or equal to 0"),
        ("DERIV_SIMULATOR_TIME_SCALE", "0", "greater than or equal to 0.01"),
        ("LOG_FORMAT", "xml", "'text' or 'json'"),
        ("LOG_LEVEL", "LOUD", "'DEBUG', 'INFO'"),
        ("HISTORY_RETENTION_DAYS", "0", "greater than or equal to 1"),
        ("HISTORY_RETENTION_DAYS", "3651", "less than or equal to 3650"),
        ("HISTORY_RETENTION_DAYS", "30.5", "valid integer"),
        ("ALERT_AFTER_SECONDS", "-1", "greater than or equal to 0"),
        ("ALERT_AFTER_SECONDS", "nan", "finite number"),
        ("ALERT_AFTER_SECONDS", "86401", "less than or equal to 86400"),
        ("ALLOWED_ORIGINS", "https://status.example.com/page", "no path"),
        (
            "ALLOWED_ORIGINS",
            "https://a.example.com,ftp://b.example.com",
            "item 2: URL scheme should be 'http' or 'https'",
        ),
        ("ALLOWED_ORIGINS", "status.example.com", "valid URL"),
        ("TRUSTED_PROXIES", "10.0.0.1/8", "valid IPv4 or IPv6 network"),
        ("TRUSTED_PROXIES", "10.0.0.1,proxy.local", "item 2"),
        ("API_RATE_LIMIT_PER_S", "0", "greater than 0"),
        ("API_RATE_LIMIT_PER_S", "inf", "finite number"),
        ("API_RATE_LIMIT_BURST", "0", "greater than or equal to 1"),
        ("API_RATE_LIMIT_BURST", "2.5", "valid integer"),
    ],
)
def test_bad_value_names_variable_value_rule_and_meaning(variable: str, value: str, rule: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({variable: value})
    message = info.value.message
    assert "\n" not in message
    shown = repr(value) if len(value) <= SHOWN_VALUE_MAX_CHARS else f"{value[:SHOWN_VALUE_MAX_CHARS]!r}…"
    assert message.startswith(f"Invalid configuration: {variable}={shown} is not accepted: ")
    assert rule in message
    description = Settings.model_fields[variable].description
    assert description is not None and description in message


def test_a_long_value_is_clipped_in_the_error_line() -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({"VITE_WS_URL": "http://example.com/" + "x" * 5000})
    assert len(info.value.message) < 400
    assert "'http://example.com/xxx" in info.value.message


# Each secret with values that break each of its rules; "Hunter2Secret" must never show.
SECRET = "Hunter2Secret"
BAD_SECRETS = [
    ("ADMIN_TOKEN", SECRET),  # too short
    ("ADMIN_TOKEN", f"  {SECRET}  "),  # too short once stripped
    ("DERIV_API_TOKEN", f"{SECRET} with spaces!"),  # not the token pattern
    ("DERIV_API_TOKEN", SECRET * 10),  # longer than 128
    ("ALERT_WEBHOOK_URL", f"ftp://user:{SECRET}@hooks.example.com/x"),  # scheme
    ("ALERT_WEBHOOK_URL", f"https://user:{SECRET}@/hook"),  # no host
    ("ALERT_WEBHOOK_URL", f"https://exa mple.com/{SECRET}"),  # bad host
    ("ALERT_WEBHOOK_URL", f"https://hooks.example.com/{SECRET}/" + "a" * 2100),  # too long
    ("DB_URL", f"postgresql+psycopg://user:{SECRET}@db:notaport/x"),  # bad port
    ("DB_URL", f"{SECRET} is not a url"),
]


@pytest.mark.parametrize(("variable", "value"), BAD_SECRETS)
def test_a_bad_secret_is_named_with_its_rule_and_never_shown(variable: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings({variable: value})
    error = info.value
    assert error.message.startswith(f"Invalid configuration: {variable}=(hidden, {len(value)} characters) ")
    assert "is not accepted: " in error.message
    # Nowhere: not in the line, the exception's attributes, or an exception it chains to.
    assert error.__context__ is None and error.__cause__ is None
    for text in (error.message, str(error), repr(error), repr(vars(error))):
        assert SECRET not in text
        assert SECRET.lower() not in text.lower()


@pytest.mark.parametrize(
    ("variable", "value"), BAD_SECRETS[:1] + BAD_SECRETS[2:3] + BAD_SECRETS[4:5] + BAD_SECRETS[8:9]
)
def test_the_check_command_never_prints_a_bad_secret(variable: str, value: str) -> None:
    env = {**os.environ, variable: value}
    proc = subprocess.run(
        [sys.executable, "-m", "backend_core.config"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2
    assert f"{variable}=(hidden, " in proc.stderr
    assert SECRET not in proc.stdout + proc.stderr


def test_every_secret_typed_variable_is_masked() -> None:
    settings = load_settings(
        {
            "ADMIN_TOKEN": "a" * 20,
            "DERIV_API_TOKEN": "tok-123",
            "ALERT_WEBHOOK_URL": "https://hooks.example.com/services/T0/B0/x",
            "REDIS_URL": "redis://:hunter2@redis.example.com:6379/0",
        }
    )
    secret_typed = {name for name in Settings.model_fields if isinstance(getattr(settings, name), SecretStr)}
    assert secret_typed == {"ADMIN_TOKEN", "DERIV_API_TOKEN", "ALERT_WEBHOOK_URL", "REDIS_URL"}
    assert secret_typed | {"DB_URL"} == SECRET_VARIABLES
    assert "tok-123" not in repr(settings) and "hooks.example.com" not in repr(settings)
    assert "hunter2" not in repr(settings)


def test_values_are_normalised() -> None:
    settings = load_settings(
        {
            "DERIV_SYMBOLS": " R_50 ,1HZ100V,R_50",
            "LOG_LEVEL": "debug",
            "LOG_FORMAT": "JSON",
            "CIRCUIT_BREAKER_ENABLED": "false",
            "DERIV_WS_URL": " wss://ws.derivws.com/websockets/v3 ",
            "DERIV_API_TOKEN": "abc-DEF_123",
            "DERIV_APP_ID": " 1089 ",
            "ADMIN_TOKEN": "  admin-token-of-20-chars ",
        }
    )
    assert settings.DERIV_SYMBOLS == ("R_50", "1HZ100V")
    assert settings.LOG_LEVEL == "DEBUG"
    assert settings.LOG_FORMAT == "json"
    assert settings.CIRCUIT_BREAKER_ENABLED is False
    assert settings.DERIV_WS_URL == "wss://ws.derivws.com/websockets/v3"
    assert not settings.uses_simulator
    assert settings.DERIV_API_TOKEN is not None and settings.DERIV_API_TOKEN.get_secret_value() == "abc-DEF_123"
    assert settings.DERIV_APP_ID == "1089"
    assert settings.ADMIN_TOKEN is not None and settings.ADMIN_TOKEN.get_secret_value() == "admin-token-of-20-chars"


@pytest.mark.parametrize(
    "variable", ["VITE_WS_URL", "DERIV_WS_URL", "DERIV_API_TOKEN", "ADMIN_TOKEN", "ALERT_WEBHOOK_URL"]
)
def test_an_empty_optional_variable_is_unset(variable: str) -> None:
    assert getattr(load_settings({variable: ""}), variable) is None
    assert getattr(load_settings({variable: "  "}), variable) is None


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_the_simulator_host_may_be_any_loopback_address(host: str) -> None:
    assert host == load_settings({"DERIV_SIMULATOR_HOST": host}).DERIV_SIMULATOR_HOST


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "sim.example.com"])
def test_a_remote_simulator_host_needs_the_explicit_switch(host: str) -> None:
    with pytest.raises(ConfigError):
        load_settings({"DERIV_SIMULATOR_HOST": host})
    settings = load_settings({"DERIV_SIMULATOR_HOST": host, "DERIV_SIMULATOR_ALLOW_REMOTE": "true"})
    assert host == settings.DERIV_SIMULATOR_HOST


def test_origins_are_kept_as_browsers_send_them() -> None:
    settings = load_settings(
        {"ALLOWED_ORIGINS": "https://Status.Example.com:443/, http://localhost:3000,https://status.example.com,"}
    )
    assert settings.ALLOWED_ORIGINS == ("https://status.example.com", "http://localhost:3000")


def test_trusted_proxies_are_networks_an_address_can_be_tested_against() -> None:
    proxies = load_settings({"TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.5 ,::1"}).TRUSTED_PROXIES
    assert proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("192.168.1.5/32"),
        ipaddress.ip_network("::1/128"),
    )
    assert any(ipaddress.ip_address("10.20.30.40") in net for net in proxies)
    assert not any(ipaddress.ip_address("192.168.1.6") in net for net in proxies)


def test_rate_limit_values_are_accepted() -> None:
    settings = load_settings({"API_RATE_LIMIT_PER_S": "0.5", "API_RATE_LIMIT_BURST": "1"})
    assert settings.API_RATE_LIMIT_PER_S == 0.5
    assert settings.API_RATE_LIMIT_BURST == 1


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
        "Invalid configuration: WEBSOCKET_MAX_CONNECTIONS='-1' is not accepted: "
        "Input should be greater than or equal to 1 (relay clients at once)."
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
