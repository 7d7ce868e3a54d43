"""Settings: every environment variable, read once, validated, immutable.

The names and defaults of the first table in DESIGN.md come from the system this
replaces and must not change, so an existing ``.env`` keeps working. A bad value stops
start-up with one line naming the variable, the value and what is accepted
(:class:`~backend_core.errors.ConfigError`); ``python -m backend_core.config`` prints that
line and exits 2, which is how ``make run`` checks before it starts anything.
"""

from __future__ import annotations

import ipaddress
import os
import re
import sys
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from backend_core.errors import ConfigError

# Deriv's rule for app_id (deriv-protocol.md section 1).
_APP_ID = re.compile(r"^(?!0)[0-9]{1,19}$")
# Deriv's rule for a ticks symbol (section 3.3).
_SYMBOL = re.compile(r"^\w{2,30}$")
# Deriv's rule for an API token (section 3.8).
_TOKEN = re.compile(r"^[\w\-]{1,128}$")
# An alert webhook: http(s), a host (optionally with port), an optional path, no whitespace.
_HTTP_URL = re.compile(r"^https?://[^\s/?#]+([/?#]\S*)?$")

# What each kind of field accepts, in words for the one-line error.
_ACCEPTED: dict[str, str] = {
    "WEBSOCKET_ENABLED": "true or false",
    "WEBSOCKET_MAX_CONNECTIONS": "a whole number from 1 to 100000",
    "WEBSOCKET_HEARTBEAT_INTERVAL": "a number of seconds greater than 0 and at most 3600",
    "WEBSOCKET_CONNECTION_TIMEOUT": "a number of seconds greater than 0 and at most 600",
    "WEBSOCKET_MAX_RETRY_ATTEMPTS": "a whole number from 1 to 100",
    "CIRCUIT_BREAKER_ENABLED": "true or false",
    "WEBSOCKET_CB_FAILURE_THRESHOLD": "a whole number from 1 to 10000",
    "WEBSOCKET_CB_RECOVERY_TIMEOUT": "a number of seconds greater than 0 and at most 86400",
    "API_CB_FAILURE_THRESHOLD": "a whole number from 1 to 10000",
    "API_CB_RECOVERY_TIMEOUT": "a number of seconds greater than 0 and at most 86400",
    "VITE_WS_URL": "a ws:// or wss:// URL, or unset",
    "VITE_WS_RECONNECT_ATTEMPTS": "a whole number from 0 to 1000",
    "VITE_WS_RECONNECT_INTERVAL": "a whole number of milliseconds from 100 to 600000",
    "VITE_ENABLE_REAL_TIME_UPDATES": "true or false",
    "VITE_WEBSOCKET_FALLBACK_ENABLED": "true or false",
    "DERIV_WS_URL": "a ws:// or wss:// URL ending in /websockets/v3, or unset for the embedded simulator",
    "DERIV_APP_ID": "digits not starting with 0, at most 19 (Deriv's app_id rule)",
    "DERIV_API_TOKEN": "letters, digits, '_' or '-', 1 to 128 characters, or unset",
    "DERIV_SYMBOLS": "a comma-separated list of 1 to 50 symbols, each 2 to 30 letters, digits or '_'",
    "DERIV_PING_INTERVAL": "a number of seconds greater than 0 and below 120 (Deriv's idle timeout)",
    "DERIV_SIMULATOR_HOST": "a loopback host name or address",
    "DERIV_SIMULATOR_PORT": "a port from 0 (any free port) to 65535",
    "DERIV_SIMULATOR_CONTROL_PORT": "a port from 0 (any free port) to 65535",
    "DERIV_SIMULATOR_TIME_SCALE": "a number from 0.01 to 1000 (1 is real time)",
    "ADMIN_TOKEN": "at least 16 characters, or unset to refuse admin actions",
    "DB_URL": "a SQLAlchemy URL such as sqlite:///data/status.db or postgresql+psycopg://...",
    "LOG_FORMAT": "text or json",
    "LOG_LEVEL": "DEBUG, INFO, WARNING, ERROR or CRITICAL",
    "HISTORY_RETENTION_DAYS": "a whole number of days from 1 to 3650",
    "ALERT_WEBHOOK_URL": "an http:// or https:// URL of at most 2048 characters, or unset for no alerts",
    "ALERT_AFTER_SECONDS": "a number of seconds from 0 to 86400",
    "API_RATE_LIMIT_PER_S": "a number of requests a second greater than 0 and at most 100000",
    "API_RATE_LIMIT_BURST": "a whole number from 1 to 100000",
    "TRUSTED_PROXIES": "a comma-separated list of IP addresses or CIDR networks, or empty",
}


def _check_ws_url(value: str | None) -> str | None:
    if value is None or value.strip() == "":
        return None
    value = value.strip()
    if not re.match(r"^wss?://[^\s/]+(/\S*)?$", value):
        raise ValueError("not a ws:// or wss:// URL")
    return value


class Settings(BaseSettings):
    """The validated, frozen configuration of one process."""

    model_config = SettingsConfigDict(frozen=True, extra="ignore", case_sensitive=True, env_file=None)

    # --- kept from the system this replaces (names and defaults are fixed) ---
    WEBSOCKET_ENABLED: bool = True
    WEBSOCKET_MAX_CONNECTIONS: int = Field(100, ge=1, le=100_000)
    WEBSOCKET_HEARTBEAT_INTERVAL: float = Field(60.0, gt=0, le=3600)
    WEBSOCKET_CONNECTION_TIMEOUT: float = Field(30.0, gt=0, le=600)
    WEBSOCKET_MAX_RETRY_ATTEMPTS: int = Field(3, ge=1, le=100)
    CIRCUIT_BREAKER_ENABLED: bool = True
    WEBSOCKET_CB_FAILURE_THRESHOLD: int = Field(3, ge=1, le=10_000)
    WEBSOCKET_CB_RECOVERY_TIMEOUT: float = Field(30.0, gt=0, le=86_400)
    API_CB_FAILURE_THRESHOLD: int = Field(10, ge=1, le=10_000)
    API_CB_RECOVERY_TIMEOUT: float = Field(120.0, gt=0, le=86_400)
    VITE_WS_URL: str | None = None
    VITE_WS_RECONNECT_ATTEMPTS: int = Field(5, ge=0, le=1000)
    VITE_WS_RECONNECT_INTERVAL: int = Field(3000, ge=100, le=600_000)
    VITE_ENABLE_REAL_TIME_UPDATES: bool = True
    VITE_WEBSOCKET_FALLBACK_ENABLED: bool = True

    # --- new in this system ---
    DERIV_WS_URL: str | None = None
    DERIV_APP_ID: str = "1089"
    DERIV_API_TOKEN: SecretStr | None = None
    DERIV_SYMBOLS: Annotated[tuple[str, ...], NoDecode] = ("R_50", "R_100", "1HZ100V")
    DERIV_PING_INTERVAL: float = Field(30.0, gt=0, lt=120)
    DERIV_SIMULATOR_HOST: str = "127.0.0.1"
    DERIV_SIMULATOR_PORT: int = Field(0, ge=0, le=65535)
    DERIV_SIMULATOR_CONTROL_PORT: int = Field(0, ge=0, le=65535)
    DERIV_SIMULATOR_TIME_SCALE: float = Field(1.0, ge=0.01, le=1000)
    ADMIN_TOKEN: SecretStr | None = None
    DB_URL: str = "sqlite:///data/status.db"
    LOG_FORMAT: Literal["text", "json"] = "text"
    LOG_LEVEL: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    HISTORY_RETENTION_DAYS: int = Field(90, ge=1, le=3650)
    # A webhook URL often carries its own credential (a Slack or Teams hook): kept secret.
    ALERT_WEBHOOK_URL: SecretStr | None = None
    ALERT_AFTER_SECONDS: float = Field(60.0, ge=0, le=86_400)
    API_RATE_LIMIT_PER_S: float = Field(10.0, gt=0, le=100_000)
    API_RATE_LIMIT_BURST: int = Field(50, ge=1, le=100_000)
    TRUSTED_PROXIES: Annotated[tuple[str, ...], NoDecode] = ()

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: Any, init_settings: Any, *args: Any, **kwargs: Any
    ) -> tuple[Any, ...]:
        # load_settings() reads the environment exactly once and passes it in; no other
        # source (dotenv files, secrets dirs) may add values behind its back.
        return (init_settings,)

    @field_validator("VITE_WS_URL", "DERIV_WS_URL", mode="before")
    @classmethod
    def _ws_url(cls, value: Any) -> str | None:
        return _check_ws_url(value)

    @field_validator("DERIV_APP_ID", mode="before")
    @classmethod
    def _app_id(cls, value: Any) -> str:
        text = str(value).strip()
        if not _APP_ID.match(text):
            raise ValueError("bad app_id")
        return text

    @field_validator("DERIV_API_TOKEN", mode="before")
    @classmethod
    def _token(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip() == ""):
            return None
        text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        if not _TOKEN.match(text):
            raise ValueError("bad token")
        return text

    @field_validator("ADMIN_TOKEN", mode="before")
    @classmethod
    def _admin_token(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value == ""):
            return None
        text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
        if len(text) < 16 or text.strip() != text:
            raise ValueError("admin token too short")
        return text

    @field_validator("DERIV_SYMBOLS", mode="before")
    @classmethod
    def _symbols(cls, value: Any) -> tuple[str, ...]:
        items = [s.strip() for s in value.split(",")] if isinstance(value, str) else [str(s).strip() for s in value]
        items = [s for s in items if s]
        if not 1 <= len(items) <= 50 or not all(_SYMBOL.match(s) for s in items):
            raise ValueError("bad symbol list")
        return tuple(dict.fromkeys(items))  # de-duplicated, order kept

    @field_validator("TRUSTED_PROXIES", mode="before")
    @classmethod
    def _proxies(cls, value: Any) -> tuple[str, ...]:
        items = [s.strip() for s in value.split(",")] if isinstance(value, str) else [str(s).strip() for s in value]
        items = [s for s in items if s]
        if len(items) > 100:
            raise ValueError("too many proxies")
        return tuple(str(ipaddress.ip_network(s, strict=False)) for s in items)

    @field_validator("LOG_LEVEL", "LOG_FORMAT", mode="before")
    @classmethod
    def _case(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        return (
            value.strip().upper()
            if value.strip().upper() in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
            else value.strip().lower()
        )

    @field_validator("ALERT_WEBHOOK_URL", mode="before")
    @classmethod
    def _webhook_url(cls, value: Any) -> Any:
        if value is None or (isinstance(value, str) and value.strip() == ""):
            return None
        text = (value.get_secret_value() if isinstance(value, SecretStr) else str(value)).strip()
        if len(text) > 2048 or not _HTTP_URL.match(text):
            raise ValueError("bad webhook url")
        return text

    @field_validator("DB_URL", mode="before")
    @classmethod
    def _db_url(cls, value: Any) -> str:
        text = str(value).strip()
        if not re.match(r"^[a-z][a-z0-9+]*://", text):
            raise ValueError("bad db url")
        return text

    @property
    def uses_simulator(self) -> bool:
        """True when no DERIV_WS_URL is set: the app runs its embedded simulator."""
        return self.DERIV_WS_URL is None

    def public_view(self) -> dict[str, Any]:
        """The settings with secrets reduced to whether they are set (for health and the UI)."""
        out: dict[str, Any] = {}
        for name, value in self.model_dump().items():
            if name in {"DERIV_API_TOKEN", "ADMIN_TOKEN", "ALERT_WEBHOOK_URL"}:
                out[name] = "<set>" if value is not None else None
            elif name == "DB_URL":
                out[name] = re.sub(r"//[^@/]*@", "//<credentials>@", str(value))
            else:
                out[name] = list(value) if isinstance(value, tuple) else value
        return out


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read and validate the environment (``os.environ`` by default).

    Raises :class:`ConfigError` naming the first bad variable, its value and what is
    accepted.
    """
    env = dict(os.environ if environ is None else environ)
    known = {k: v for k, v in env.items() if k in Settings.model_fields}
    try:
        return Settings(**known)  # type: ignore[arg-type]
    except ValidationError as exc:
        error = exc.errors()[0]
        variable = str(error["loc"][0]) if error["loc"] else "?"
        raise ConfigError(variable, known.get(variable, ""), _ACCEPTED.get(variable, "a valid value")) from None


def main() -> int:
    """``python -m backend_core.config``: check the environment, print one line."""
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(exc.message, file=sys.stderr)
        return 2
    upstream = settings.DERIV_WS_URL or "embedded simulator"
    print(f"configuration ok: upstream={upstream} symbols={','.join(settings.DERIV_SYMBOLS)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
