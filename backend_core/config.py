"""Settings: every environment variable, read once, validated, immutable.

:class:`Settings` is a pydantic-settings ``BaseSettings``: it reads the process
environment itself, and pydantic types state what each variable accepts (URL types,
string patterns from :mod:`backend_core.deriv.protocol`, secret strings, IP networks).
The names and defaults of the first table in DESIGN.md come from the system this
replaces and must not change, so an existing ``.env`` keeps working.

A bad value stops start-up with one line (:class:`~backend_core.errors.ConfigError`) built
from the first validation error: the variable, its value, the rule it broke and the
field's description. The values of :data:`SECRET_VARIABLES` are never shown, only their
length. ``python -m backend_core.config`` prints that line and exits 2, which is how
``make run`` checks before it starts anything.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import sys
import urllib.parse
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final, Literal

from pydantic import (
    AfterValidator,
    AnyUrl,
    BeforeValidator,
    Field,
    IPvAnyNetwork,
    SecretStr,
    StringConstraints,
    TypeAdapter,
    UrlConstraints,
    ValidationError,
    ValidationInfo,
    WebsocketUrl,
)
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from backend_core.cluster.keys import CLUSTER_NAME_PATTERN
from backend_core.deriv.protocol import APP_ID_PATTERN, STREAM_TIMEOUT_S, SYMBOL_PATTERN, TOKEN_PATTERN
from backend_core.deriv.sim.server import is_loopback_host
from backend_core.errors import ConfigError

# Variables whose value is never shown in an error (a webhook URL usually carries its own
# credential; DB_URL may hold a password anywhere, in the user part or the query).
SECRET_VARIABLES: Final = frozenset({"ADMIN_TOKEN", "DERIV_API_TOKEN", "ALERT_WEBHOOK_URL", "DB_URL", "REDIS_URL"})
# A shown (non-secret) value is clipped to this many characters: the error stays one line.
SHOWN_VALUE_MAX_CHARS: Final = 80
# An alert webhook URL longer than this is refused (no receiver needs more).
WEBHOOK_URL_MAX_CHARS: Final = 2048


def _blank_is_unset(value: Any) -> Any:
    """An empty (or blank) optional variable means unset, as in ``.env.example``."""
    return None if isinstance(value, str) and value.strip() == "" else value


def _comma_separated(value: Any) -> Any:
    """``"a, b,,c"`` → ``("a", "b", "c")``; empty items are dropped."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


def _lower(value: Any) -> Any:
    return value.strip().lower() if isinstance(value, str) else value


def _upper(value: Any) -> Any:
    return value.strip().upper() if isinstance(value, str) else value


def _unique(items: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(items))  # order kept


def _rule_only(exc: ValidationError) -> PydanticCustomError:
    """The first error of a nested validation, with its own rule and without its input
    (which may be a secret)."""
    first = exc.errors(include_url=False, include_input=False)[0]
    return PydanticCustomError(first["type"], first["msg"], first.get("ctx"))


def _url_text(url_type: Any, *, path_required: bool = False) -> Callable[[str], str]:
    """Check a string with one of pydantic's URL types and keep the text as written."""
    adapter: TypeAdapter[AnyUrl] = TypeAdapter(url_type)

    def check(text: str) -> str:
        try:
            url = adapter.validate_python(text)
        except ValidationError as exc:
            raise _rule_only(exc) from None
        if path_required and url.path in (None, "", "/"):
            raise PydanticCustomError("url_path", "URL should have a path, such as /websockets/v3")
        return text

    return check


def _secret_text(text_type: Any) -> BeforeValidator:
    """Validate a secret's text with ``text_type`` before it becomes a ``SecretStr`` (whose
    own schema takes no pattern or URL type)."""
    adapter: TypeAdapter[str] = TypeAdapter(text_type)

    def check(value: Any) -> Any:
        if not isinstance(value, str):
            return value
        try:
            return adapter.validate_python(value)
        except ValidationError as exc:
            raise _rule_only(exc) from None

    return BeforeValidator(check)


def _origin(url: AnyUrl) -> str:
    """An origin as browsers send it (``https://status.example.com``, no default port)."""
    if url.path not in (None, "", "/") or url.query or url.fragment or url.username or url.password:
        raise PydanticCustomError("origin", "an origin is scheme://host[:port], with no path, query or user")
    return str(url).rstrip("/")


def _loopback_unless_allowed(host: str, info: ValidationInfo) -> str:
    # The simulator's own rule, checked here too so that a bad host is one start-up line.
    if not info.data.get("DERIV_SIMULATOR_ALLOW_REMOTE", False) and not is_loopback_host(host):
        raise PydanticCustomError(
            "loopback",
            "the embedded simulator listens on loopback only (127.0.0.1, ::1 or localhost); "
            "set DERIV_SIMULATOR_ALLOW_REMOTE=true to allow another address",
        )
    return host


def _sqlalchemy_url(text: str) -> str:
    try:
        make_url(text)
    except (ArgumentError, ValueError):
        raise PydanticCustomError(
            "db_url", "not a SQLAlchemy URL such as sqlite:///data/status.db or postgresql+psycopg://..."
        ) from None
    return text


_Stripped = Annotated[str, StringConstraints(strip_whitespace=True)]
_WsUrlText = Annotated[_Stripped, AfterValidator(_url_text(WebsocketUrl))]
_DerivWsUrlText = Annotated[_Stripped, AfterValidator(_url_text(WebsocketUrl, path_required=True))]
_WebhookUrlText = Annotated[
    _Stripped,
    AfterValidator(
        _url_text(
            Annotated[
                AnyUrl,
                UrlConstraints(max_length=WEBHOOK_URL_MAX_CHARS, allowed_schemes=["http", "https"], host_required=True),
            ]
        )
    ),
]
_Symbol = Annotated[str, StringConstraints(pattern=SYMBOL_PATTERN)]
_RedisUrlText = Annotated[
    _Stripped,
    AfterValidator(_url_text(Annotated[AnyUrl, UrlConstraints(allowed_schemes=["redis", "rediss", "unix"])])),
]
# A cluster member's id is part of the lease token '<instance_id>:<term>': no ':'.
INSTANCE_ID_PATTERN: Final = r"^[A-Za-z0-9_.-]{1,128}$"


def _generated_instance_id() -> str:
    """``hostname-pid-random``: unique per process (each worker process loads its settings)."""
    host = "".join(c if c.isascii() and (c.isalnum() or c in "_.-") else "-" for c in socket.gethostname())[:64]
    return f"{host or 'host'}-{os.getpid()}-{secrets.token_hex(3)}"


def _blank_is_generated(value: Any) -> Any:
    return _generated_instance_id() if isinstance(value, str) and value.strip() == "" else value


_Origin = Annotated[
    AnyUrl, UrlConstraints(allowed_schemes=["http", "https"], host_required=True), AfterValidator(_origin)
]
_BlankIsUnset = BeforeValidator(_blank_is_unset)
_CommaSeparated = BeforeValidator(_comma_separated)


class Settings(BaseSettings):
    """The validated, frozen configuration of one process."""

    model_config = SettingsConfigDict(
        frozen=True, extra="ignore", case_sensitive=True, env_file=None, allow_inf_nan=False
    )

    # --- kept from the system this replaces (names and defaults are fixed) ---
    WEBSOCKET_ENABLED: bool = Field(True, description="true or false: serve the /api/v1/ws relay")
    WEBSOCKET_MAX_CONNECTIONS: int = Field(100, ge=1, le=100_000, description="relay clients at once")
    WEBSOCKET_HEARTBEAT_INTERVAL: float = Field(
        60.0, gt=0, le=3600, description="seconds between server pings to relay clients"
    )
    WEBSOCKET_CONNECTION_TIMEOUT: float = Field(
        30.0, gt=0, le=600, description="seconds to connect upstream and to wait for a pong"
    )
    WEBSOCKET_MAX_RETRY_ATTEMPTS: int = Field(3, ge=1, le=100, description="upstream attempts per retry cycle")
    CIRCUIT_BREAKER_ENABLED: bool = Field(True, description="true or false; false: every breaker passes calls through")
    WEBSOCKET_CB_FAILURE_THRESHOLD: int = Field(
        3, ge=1, le=10_000, description="failures that open the 'websocket' breaker"
    )
    WEBSOCKET_CB_RECOVERY_TIMEOUT: float = Field(
        30.0, gt=0, le=86_400, description="seconds the 'websocket' breaker stays open"
    )
    API_CB_FAILURE_THRESHOLD: int = Field(10, ge=1, le=10_000, description="failures that open an 'api:' breaker")
    API_CB_RECOVERY_TIMEOUT: float = Field(120.0, gt=0, le=86_400, description="seconds an 'api:' breaker stays open")
    VITE_WS_URL: Annotated[_WsUrlText | None, _BlankIsUnset] = Field(
        None, description="a ws:// or wss:// URL where browsers reach the relay, or unset"
    )
    VITE_WS_RECONNECT_ATTEMPTS: int = Field(5, ge=0, le=1000, description="browser-side reconnect attempts")
    VITE_WS_RECONNECT_INTERVAL: int = Field(
        3000, ge=100, le=600_000, description="milliseconds, base of the browser-side backoff"
    )
    VITE_ENABLE_REAL_TIME_UPDATES: bool = Field(
        True, description="true or false; false: the page polls instead of streaming"
    )
    VITE_WEBSOCKET_FALLBACK_ENABLED: bool = Field(
        True, description="true or false: poll the REST fallback while the link is down"
    )

    # --- new in this system ---
    DERIV_WS_URL: Annotated[_DerivWsUrlText | None, _BlankIsUnset] = Field(
        None, description="the Deriv API, e.g. wss://ws.derivws.com/websockets/v3; unset: the embedded simulator"
    )
    DERIV_APP_ID: Annotated[_Stripped, StringConstraints(pattern=APP_ID_PATTERN)] = Field(
        "1089", description="your Deriv app_id: digits, not starting with 0"
    )
    DERIV_API_TOKEN: Annotated[
        Annotated[SecretStr, _secret_text(Annotated[str, StringConstraints(pattern=TOKEN_PATTERN)])] | None,
        _BlankIsUnset,
    ] = Field(None, description="a Deriv API token: letters, digits, '_' or '-'; or unset")
    DERIV_SYMBOLS: Annotated[tuple[_Symbol, ...], NoDecode, _CommaSeparated, AfterValidator(_unique)] = Field(
        ("R_50", "R_100", "1HZ100V"), min_length=1, max_length=50, description="comma-separated symbols to stream"
    )
    DERIV_PING_INTERVAL: float = Field(
        30.0,
        gt=0,
        lt=STREAM_TIMEOUT_S,
        description=f"seconds between pings upstream; Deriv drops a link idle for {STREAM_TIMEOUT_S:g} s",
    )
    # Declared before the host: the host's check reads it.
    DERIV_SIMULATOR_ALLOW_REMOTE: bool = Field(
        False, description="true or false; true: the embedded simulator may listen on a non-loopback address"
    )
    DERIV_SIMULATOR_HOST: Annotated[_Stripped, AfterValidator(_loopback_unless_allowed)] = Field(
        "127.0.0.1", description="the embedded simulator's address"
    )
    DERIV_SIMULATOR_PORT: int = Field(0, ge=0, le=65535, description="the embedded simulator's port (0: any free)")
    DERIV_SIMULATOR_CONTROL_PORT: int = Field(
        0, ge=0, le=65535, description="the embedded simulator's control port, on loopback (0: any free)"
    )
    DERIV_SIMULATOR_TIME_SCALE: float = Field(1.0, ge=0.01, le=1000, description="simulator speed (1 is real time)")
    ADMIN_TOKEN: Annotated[
        Annotated[SecretStr, _secret_text(Annotated[str, StringConstraints(strip_whitespace=True, min_length=16)])]
        | None,
        _BlankIsUnset,
    ] = Field(None, description="the Bearer token for admin actions; unset: admin actions are refused")
    DB_URL: Annotated[_Stripped, AfterValidator(_sqlalchemy_url)] = Field(
        "sqlite:///data/status.db", description="the history database"
    )
    LOG_FORMAT: Annotated[Literal["text", "json"], BeforeValidator(_lower)] = Field(
        "text", description="the log line format"
    )
    LOG_LEVEL: Annotated[
        Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"],
        BeforeValidator(_upper),
    ] = Field("INFO", description="the lowest level logged")
    HISTORY_RETENTION_DAYS: int = Field(90, ge=1, le=3650, description="days of history kept")
    ALERT_WEBHOOK_URL: Annotated[Annotated[SecretStr, _secret_text(_WebhookUrlText)] | None, _BlankIsUnset] = Field(
        None, description="an http(s) URL that receives alerts; unset: no alerts"
    )
    ALERT_AFTER_SECONDS: float = Field(
        60.0, ge=0, le=86_400, description="seconds the upstream must be down before an alert"
    )

    # --- the public API ---
    ALLOWED_ORIGINS: Annotated[tuple[_Origin, ...], NoDecode, _CommaSeparated, AfterValidator(_unique)] = Field(
        (),
        max_length=100,
        description="comma-separated origins such as https://status.example.com for /api/v1/ws; empty: same host",
    )
    TRUSTED_PROXIES: Annotated[tuple[IPvAnyNetwork, ...], NoDecode, _CommaSeparated, AfterValidator(_unique)] = Field(
        (),
        max_length=100,
        description="comma-separated IP addresses or CIDRs whose X-Forwarded-For is believed; empty: none",
    )
    API_RATE_LIMIT_PER_S: float = Field(10.0, gt=0, description="requests per second per client on the HTTP API")
    API_RATE_LIMIT_BURST: int = Field(50, ge=1, description="requests a client may send at once before the limit")

    # --- a cluster of instances on one Redis (shared/CLUSTER.md 2.9) ---
    REDIS_URL: Annotated[Annotated[SecretStr, _secret_text(_RedisUrlText)] | None, _BlankIsUnset] = Field(
        None, description="a redis://, rediss:// or unix:// URL; unset: one process, no cluster"
    )
    CLUSTER_NAME: Annotated[_Stripped, StringConstraints(pattern=CLUSTER_NAME_PATTERN)] = Field(
        "deriv-status", description="the cluster's key prefix: 1 to 64 letters, digits, '_', '.' or '-'"
    )
    CLUSTER_LEASE_TTL: float = Field(5.0, ge=2, le=60, description="seconds the leader lease lives unrenewed")
    INSTANCE_ID: Annotated[
        _Stripped, StringConstraints(pattern=INSTANCE_ID_PATTERN), BeforeValidator(_blank_is_generated)
    ] = Field(
        default_factory=_generated_instance_id,
        description="this member's id: 1 to 128 letters, digits, '_', '.' or '-' (no ':'); unset: generated",
    )

    @property
    def clustered(self) -> bool:
        """True when REDIS_URL is set: this process is a member of a cluster."""
        return self.REDIS_URL is not None

    @property
    def uses_simulator(self) -> bool:
        """True when no DERIV_WS_URL is set: the app runs its embedded simulator."""
        return self.DERIV_WS_URL is None


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of ``os.environ``
    (the way its cloud secret sources feed their own mappings)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._environ = environ
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


def secret_values(settings: Settings) -> list[str]:
    """Every secret string the settings hold, and the secret parts of the URLs: what no
    output may show (the log redaction masks these)."""
    values: list[str] = []
    for secret in (settings.ADMIN_TOKEN, settings.DERIV_API_TOKEN, settings.ALERT_WEBHOOK_URL, settings.REDIS_URL):
        if secret is not None:
            values.append(secret.get_secret_value())
    if settings.ALERT_WEBHOOK_URL is not None:
        webhook = urllib.parse.urlsplit(settings.ALERT_WEBHOOK_URL.get_secret_value())
        values += [webhook.password or "", webhook.query]
        values += [value for _, value in urllib.parse.parse_qsl(webhook.query)]
    with contextlib.suppress(ValueError, ArgumentError):
        values.append(make_url(settings.DB_URL).password or "")
    if settings.REDIS_URL is not None:
        values.append(urllib.parse.urlsplit(settings.REDIS_URL.get_secret_value()).password or "")
    return [value for value in values if value]


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Validate the process environment, or ``environ`` in its place when given (tests).

    Raises :class:`ConfigError` naming the first bad variable, its value (masked for a
    secret) and the rule it broke.
    """
    try:
        if environ is None:
            return Settings()
        return Settings(_build_sources=((_MappingEnvSource(Settings, environ),), {}))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
    # Raised outside the except block, so no exception context carries the raw input.
    raise _config_error(first, os.environ if environ is None else environ)


def _config_error(error: ErrorDetails, environ: Mapping[str, str]) -> ConfigError:
    """The one-line error for a validation error of :class:`Settings`."""
    loc = error["loc"]
    variable = str(loc[0]) if loc else "?"
    raw = environ.get(variable)
    value = raw if raw is not None else str(error.get("input", ""))
    rule = error["msg"]
    if variable in SECRET_VARIABLES:
        shown = f"(hidden, {len(value)} characters)"
        if len(value) >= 4:
            rule = rule.replace(value, "(hidden)")
    else:
        shown = repr(value) if len(value) <= SHOWN_VALUE_MAX_CHARS else f"{value[:SHOWN_VALUE_MAX_CHARS]!r}…"
    item = f"item {loc[1] + 1}: " if len(loc) > 1 and isinstance(loc[1], int) else ""
    field = Settings.model_fields.get(variable)
    description = f" ({field.description})" if field is not None and field.description else ""
    return ConfigError(variable, shown, f"{item}{rule}{description}")


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
