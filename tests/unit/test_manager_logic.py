"""The driver's pure helpers: connect-error classification (codes, plain words naming the host) and URLs."""

from __future__ import annotations

import socket
import ssl

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import InvalidMessage, InvalidStatus, InvalidURI
from websockets.http11 import Response

from backend_core.deriv.manager import build_url, classify_connect_error, redact_url
from backend_core.errors import DerivAPIError

URL = "wss://ws.derivws.com/websockets/v3"


def refused(status: int, body: bytes, reason: str = "x") -> InvalidStatus:
    return InvalidStatus(Response(status, reason, Headers(), body))


def cert_error() -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
    exc.verify_message = "self-signed certificate"
    return exc


@pytest.mark.parametrize(
    ("exc", "url", "code", "words"),
    [
        (TimeoutError(), URL, "ConnectTimeout", "ws.derivws.com:443 did not answer within 30 s"),
        (
            socket.gaierror(-2, "Name or service not known"),
            URL,
            "DNSLookupFailed",
            "this server cannot resolve ws.derivws.com: check its dns and internet access",
        ),
        (ConnectionRefusedError(111, "Connect call failed"), "ws://127.0.0.1:9/x", "ConnectionRefused", "127.0.0.1:9"),
        # wss:// to a server that does not speak TLS: the handshake ends with an empty reset.
        (ConnectionResetError(), "wss://127.0.0.1:8080/x", "TLSHandshakeFailed", "127.0.0.1:8080"),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), URL, "TLSHandshakeFailed", "tls"),
        (cert_error(), URL, "TLSCertificateInvalid", "self-signed certificate"),
        (refused(404, b"", "Not Found"), URL, "HandshakeRefused", "http 404 not found"),
        (refused(503, b"busy", "Service Unavailable"), URL, "HandshakeRefused", "http 503"),
        (refused(401, b'{"error":"InvalidAppID"}'), URL, "InvalidAppID", "app_id"),
        (refused(403, b'{"error":"AccessRestricted"}'), URL, "AccessRestricted", "http 403"),
        (InvalidMessage("did not receive a valid HTTP response"), URL, "HandshakeFailed", "valid http response"),
        (InvalidURI("nope", "not a ws URL"), "nope", "InvalidURL", "deriv_ws_url"),
        (OSError(101, "Network is unreachable"), URL, "NetworkError", "no route to ws.derivws.com"),
        (ConnectionResetError(), "ws://h:1/x", "NetworkError", "connectionreseterror"),
        (DerivAPIError("RateLimit", "You have reached the rate limit for ticks."), URL, "RateLimit", "rate limit"),
        (ValueError("odd"), URL, "ConnectError", "odd"),
    ],
)
def test_each_connect_failure_gets_its_own_code_and_words_naming_the_host(
    exc: BaseException, url: str, code: str, words: str
) -> None:
    info = classify_connect_error(exc, url, timeout_s=30.0)
    assert info.code == code
    assert words in info.message.lower()
    assert "Traceback" not in info.message
    assert not info.message.rstrip().endswith(":"), "a message never ends on an empty detail"


def test_messages_never_carry_credentials_and_stay_one_short_line() -> None:
    info = classify_connect_error(OSError(5, "x" * 1000 + "\nsecond line"), "wss://user:secret@host:1/x")
    assert "secret" not in info.message and "user" not in info.message
    assert "\n" not in info.message and len(info.message) <= 300


def test_url_carries_app_id_language_and_brand() -> None:
    assert build_url("wss://ws.derivws.com/websockets/v3", "1089") == (
        "wss://ws.derivws.com/websockets/v3?app_id=1089&l=EN&brand=deriv"
    )
    assert build_url("ws://h:1/websockets/v3?x=1", "7").endswith("?x=1&app_id=7&l=EN&brand=deriv")


def test_redacted_url_has_no_credentials() -> None:
    assert redact_url("wss://user:secret@host:443/websockets/v3") == "wss://host:443/websockets/v3"
