"""HTTP input and error answers shared by every route of the mounted API (DESIGN.md rule 6).

One JSON error shape, ``{"error": <code>, "message": <sentence>}`` (plus route-specific
fields such as ``retry_after_s``), and one strict reader for each kind of parameter.
A bad parameter raises :class:`BadParameter`, which a handler turns into a 400 with
:meth:`BadParameter.response`; no request input reaches ``int()`` unchecked, so none can
become a 500.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, Final

from starlette.responses import JSONResponse

from backend_core.breakers.registry import NAME_CHARACTERS
from backend_core.deriv.protocol import SYMBOL_PATTERN
from backend_core.incidents import COMPONENT_CHARS

# ASCII digits only: str.isdigit() accepts '²' and '١', which int() then refuses or reads.
_DIGITS: Final = re.compile(r"[0-9]+")
# A bad value is echoed back (as a repr, so control characters show escaped) at most this long.
ECHO_CHARS: Final = 40
# Breaker and component names: what breakers.py can produce ("websocket", "api:<route
# template>", "api:*"), optionally with the "breaker:" prefix; at most as long as the
# store keeps a component name.
NAME_CHARS: Final = COMPONENT_CHARS
NAME_PATTERN: Final = re.compile(rf"{NAME_CHARACTERS}{{1,{NAME_CHARS}}}")
# At most this many symbols in one ?symbols= list (config allows 50 streamed symbols).
MAX_SYMBOLS_PER_REQUEST: Final = 50


def error_response(
    status: int, code: str, message: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """The one JSON error answer: ``{"error": code, "message": message, **extra}``."""
    body: dict[str, Any] = {"error": code, "message": message, **extra}
    merged = {"cache-control": "no-store", **(headers or {})}
    return JSONResponse(body, status_code=status, headers=merged)


def echo(value: str) -> str:
    """A client-supplied value as it may appear in a message: quoted, escaped and cut."""
    return repr(value if len(value) <= ECHO_CHARS else value[:ECHO_CHARS] + "…")


class BadParameter(Exception):
    """A request parameter that cannot be served: becomes a 400 (or 404 for a path)."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status

    def response(self) -> JSONResponse:
        return error_response(self.status, self.code, self.message)


def parse_int(raw: str | None, name: str, *, default: int, low: int, high: int, code: str = "") -> int:
    """``raw`` as a whole number from ``low`` to ``high``; absent or empty: ``default``.

    Only ASCII digits, and no more of them than ``high`` has, so ``int()`` is cheap and
    cannot fail.
    """
    if raw is None or raw == "":
        return default
    if len(raw) <= len(str(high)) and _DIGITS.fullmatch(raw) and low <= int(raw) <= high:
        return int(raw)
    raise BadParameter(
        code or "invalid_parameter", f"{name} must be a whole number from {low} to {high}, not {echo(raw)}."
    )


def parse_name(raw: str | None, name: str, *, default: str | None) -> str | None:
    """A component or breaker name (letters, digits and ``_:./{}*-``); absent or empty: ``default``."""
    if raw is None or raw == "":
        return default
    if not NAME_PATTERN.fullmatch(raw):
        raise BadParameter(
            "invalid_parameter",
            f"{name} must be a component name such as 'upstream' or 'breaker:websocket' "
            f"(letters, digits and _:./{{}}*-, at most {NAME_CHARS}), not {echo(raw)}.",
        )
    return raw


def is_breaker_name(raw: str) -> bool:
    return NAME_PATTERN.fullmatch(raw) is not None


def parse_symbols(raw: str, known: tuple[str, ...]) -> tuple[str, ...]:
    """A comma-separated ``?symbols=`` list: each a Deriv symbol that this server streams.

    400 ``invalid_symbols`` for an empty list, too many entries or a malformed symbol;
    400 ``unknown_symbol`` for a well-formed one that is not streamed here (the resource
    exists, the parameter is wrong).
    """
    parts = raw.split(",", MAX_SYMBOLS_PER_REQUEST + 1)
    names = tuple(dict.fromkeys(s.strip() for s in parts if s.strip()))
    if not names or len(parts) > MAX_SYMBOLS_PER_REQUEST:
        raise BadParameter(
            "invalid_symbols",
            f"Pass 1 to {MAX_SYMBOLS_PER_REQUEST} symbols as a comma-separated list, e.g. ?symbols=R_50,R_100.",
        )
    malformed = [s for s in names if not SYMBOL_PATTERN.match(s) or s.endswith("\n")]
    if malformed:
        raise BadParameter("invalid_symbols", f"A symbol is 2 to 30 letters, digits or '_', not {echo(malformed[0])}.")
    unknown = [s for s in names if s not in known]
    if unknown:
        shown = ", ".join(unknown[:5])
        raise BadParameter("unknown_symbol", f"Not streamed here: {shown}. Known: {', '.join(known)}.")
    return names


def parse_symbol_path(raw: str, known: tuple[str, ...]) -> str:
    """A ``{symbol}`` path segment: 404 when it names nothing this server streams."""
    if not SYMBOL_PATTERN.match(raw) or raw.endswith("\n") or raw not in known:
        raise BadParameter("unknown_symbol", f"Not streamed here: {echo(raw)}.", status=404)
    return raw


__all__ = [
    "BadParameter",
    "error_response",
    "is_breaker_name",
    "parse_int",
    "parse_name",
    "parse_symbol_path",
    "parse_symbols",
]
