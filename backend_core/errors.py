"""The exception hierarchy of backend_core, drawn once::

    BackendCoreError
    ├── ConfigError                  a bad environment variable (one line, no traceback)
    ├── CircuitOpenError             a call rejected by an open breaker (name, retry_after_s)
    └── UpstreamError                anything about the Deriv link
        ├── UpstreamUnavailable      no link right now (connecting, reconnecting, circuit open)
        ├── ConnectionLost           the link dropped while a request was in flight
        ├── RequestTimeout           no reply to a request within its deadline
        ├── TooManyPendingRequests   the bounded pending-request map is full
        ├── ProtocolError            a frame that is not JSON, not an object, or has no msg_type
        └── DerivAPIError            a Deriv error reply (code, message, details)

Every error carries a stable machine-readable ``code`` and a plain-language message
suitable for an end user; none carries a secret. :class:`ErrorCode` lists every code
backend_core itself produces.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Final

#: How much of a bad frame a :class:`ProtocolError` keeps for logs.
RAW_EXCERPT_CHARS: Final = 200


class ErrorCode(StrEnum):
    """The stable codes backend_core produces: an error's ``code``, an ``ErrorInfo.code``.

    A member is its string (it compares, hashes, formats and serializes as the value), so
    the wire shows the same plain codes; the status page chooses its tips by them. Codes
    Deriv sends (``RateLimit``, ``InvalidSymbol``, ...) are passed on as sent; they are
    :class:`backend_core.deriv.protocol.DerivCode`.
    """

    # The exception tree (module docstring).
    ERROR = "Error"
    CONFIG_ERROR = "ConfigError"
    CIRCUIT_OPEN = "CircuitOpen"
    UPSTREAM_ERROR = "UpstreamError"
    UPSTREAM_UNAVAILABLE = "UpstreamUnavailable"
    CONNECTION_LOST = "ConnectionLost"
    REQUEST_TIMEOUT = "RequestTimeout"
    TOO_MANY_PENDING_REQUESTS = "TooManyPendingRequests"
    PROTOCOL_ERROR = "ProtocolError"
    # Why a connected link was closed (also CONNECTION_LOST, REQUEST_TIMEOUT, PROTOCOL_ERROR
    # and TOO_MANY_PENDING_REQUESTS): deriv/link.py and deriv/manager.py.
    HEARTBEAT_TIMEOUT = "HeartbeatTimeout"
    HEARTBEAT_REJECTED = "HeartbeatRejected"
    SITE_UPDATING = "SiteUpdating"
    INTERNAL_ERROR = "InternalError"
    # Why a connection attempt failed: deriv/manager.py's classify_connect_error (Deriv's
    # own two HTTP refusals keep its names: protocol.DerivCode).
    CONNECT_TIMEOUT = "ConnectTimeout"
    DNS_LOOKUP_FAILED = "DNSLookupFailed"
    TLS_CERTIFICATE_INVALID = "TLSCertificateInvalid"
    TLS_HANDSHAKE_FAILED = "TLSHandshakeFailed"
    HANDSHAKE_REFUSED = "HandshakeRefused"
    INVALID_URL = "InvalidURL"
    HANDSHAKE_FAILED = "HandshakeFailed"
    CONNECTION_REFUSED = "ConnectionRefused"
    NETWORK_ERROR = "NetworkError"
    CONNECT_ERROR = "ConnectError"


class BackendCoreError(Exception):
    """Base of every error raised by backend_core."""

    code: str = ErrorCode.ERROR

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ConfigError(BackendCoreError):
    """An environment variable has a value that cannot be accepted."""

    code = ErrorCode.CONFIG_ERROR

    def __init__(self, variable: str, shown: str, rule: str) -> None:
        # ``shown`` is the value as it may be printed: quoted and clipped, or masked for a
        # secret. The raw value is never kept here.
        self.variable = variable
        self.shown = shown
        self.rule = rule
        super().__init__(f"Invalid configuration: {variable}={shown} is not accepted: {rule}.")


class CircuitOpenError(BackendCoreError):
    """A call was rejected because its circuit breaker is open (or half-open and full)."""

    code = ErrorCode.CIRCUIT_OPEN

    def __init__(self, name: str, retry_after_s: float) -> None:
        self.name = name
        self.retry_after_s = retry_after_s
        super().__init__(f"circuit '{name}' is open; retry after {retry_after_s:.1f}s")


class UpstreamError(BackendCoreError):
    """Base of errors about the upstream (Deriv) link."""

    code: str = ErrorCode.UPSTREAM_ERROR  # a DerivAPIError carries Deriv's own code


class UpstreamUnavailable(UpstreamError):
    code = ErrorCode.UPSTREAM_UNAVAILABLE


class ConnectionLost(UpstreamError):
    code = ErrorCode.CONNECTION_LOST


class RequestTimeout(UpstreamError):
    code = ErrorCode.REQUEST_TIMEOUT


class TooManyPendingRequests(UpstreamError):
    code = ErrorCode.TOO_MANY_PENDING_REQUESTS


class ProtocolError(UpstreamError):
    """An upstream frame that cannot be understood. ``raw`` is truncated for logs."""

    code = ErrorCode.PROTOCOL_ERROR

    def __init__(self, message: str, raw: str | bytes | None = None) -> None:
        super().__init__(message)
        # Cut before decoding: a bad frame may be up to MAX_FRAME_BYTES long.
        excerpt = (raw or "")[:RAW_EXCERPT_CHARS]
        self.raw = excerpt.decode("utf-8", "replace") if isinstance(excerpt, bytes) else excerpt


class DerivAPIError(UpstreamError):
    """An error reply from the Deriv API (``{"error": {"code", "message", "details"}}``)."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None, msg_type: str = "error") -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.details = details or {}
        self.msg_type = msg_type
