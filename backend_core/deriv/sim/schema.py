"""What the simulator accepts: section 1's sanity check and the send schemas as pydantic models. Pure.

Each call the simulator implements has one model (``extra="forbid"``: the schemas'
``additionalProperties: false``) built on :mod:`backend_core.deriv.protocol`'s patterns
and limits. The models' field validators reproduce the real server's coercion (section
2: ``"subscribe": "1"`` is accepted) and its error texts, which reach the client in
``InputValidationFailed``'s ``details``, so the wire is unchanged by how they are checked.
Section numbers refer to ``shared/deriv-protocol.md``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Annotated, Any, Final, NoReturn

from pydantic import BaseModel, ConfigDict, PlainValidator, ValidationError
from pydantic_core import PydanticCustomError

from backend_core.deriv.protocol import FORGET_ALL_TYPES, SUBSCRIPTION_ID_PATTERN, SYMBOL_PATTERN, TOKEN_PATTERN

__all__ = [
    "ACTIONS",
    "REQUEST_MODELS",
    "coerce_int",
    "find_action",
    "json_type",
    "redact",
    "sanity_check",
    "validate",
]

# --- section 1's sanity check ---------------------------------------------------------

_KEY_PATTERN: Final = re.compile(r"^[A-Za-z0-9_-]{1,50}$")
# "A permissive character set" (section 1): printable text, no control characters
# other than tab and line breaks.
_INSANE_CHARS: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_MAX_SCALAR_CHARS: Final = 300
#: Nesting depth of a request; deeper JSON fails the sanity check.
_MAX_REQUEST_DEPTH: Final = 16


def sanity_check(value: Any, depth: int = 0) -> bool:
    """Section 1's sanity check: keys ``^[A-Za-z0-9_-]{1,50}$``, short printable scalars."""
    if depth > _MAX_REQUEST_DEPTH:
        return False
    if type(value) is dict:
        return all(_KEY_PATTERN.match(k) and sanity_check(v, depth + 1) for k, v in value.items())
    if type(value) is list:
        return all(sanity_check(v, depth + 1) for v in value)
    if type(value) is str:
        return len(value) <= _MAX_SCALAR_CHARS and not _INSANE_CHARS.search(value)
    if type(value) is float:
        return math.isfinite(value)
    if type(value) is int:
        return len(str(value)) <= _MAX_SCALAR_CHARS if abs(value) > 10**18 else True
    return True  # bool, null


def find_action(request: Mapping[str, Any]) -> str | None:
    """The method key of a request (section 2: exactly one is expected)."""
    for action in ACTIONS:
        if action in request:
            return action
    return None


def redact(request: Mapping[str, Any]) -> dict[str, Any]:
    """``echo_req`` with sensitive fields replaced (section 2: the authorize token)."""
    echo = dict(request)
    if "authorize" in echo:
        echo["authorize"] = "<not shown>"
    if "tokens" in echo:
        echo["tokens"] = "<not shown>"
    return echo


# --- field validators (the server's coercion and error texts) ---------------------------

_INT_TEXT: Final = re.compile(r"^-?[0-9]{1,18}$")
_END_PATTERN: Final = re.compile(r"^(latest|[0-9]{1,10})$")
_LANDING_COMPANY_PATTERN: Final = re.compile(r"^\w{1,30}$")
#: ``ticks`` takes up to this many symbols, ``authorize`` up to this many ``tokens``.
_MAX_TICKS_SYMBOLS: Final = 100
_MAX_TOKENS: Final = 25


def coerce_int(value: Any) -> int | None:
    """Section 2's string-to-number coercion: an integer, or a string of one; else None."""
    if type(value) is int:
        return value
    if type(value) is str and _INT_TEXT.match(value):
        return int(value)
    return None


def json_type(value: Any) -> str:
    """The JSON Schema type name of a decoded value, as the server's messages word it."""
    if value is None:
        return "null"
    if type(value) is bool:
        return "boolean"
    if type(value) is int:
        return "integer"
    if type(value) is float:
        return "number"
    if type(value) is str:
        return "string"
    if type(value) is list:
        return "array"
    return "object"


def _fail(reason: str) -> NoReturn:
    # The text goes through the context: pattern texts hold braces ("{2,30}").
    raise PydanticCustomError("deriv_schema", "{reason}", {"reason": reason})


_Check = Callable[[Any], Any]


def _enum_int(*allowed: int) -> _Check:
    text = ", ".join(str(a) for a in allowed)

    def check(value: Any) -> int:
        coerced = coerce_int(value)
        if coerced is None or coerced not in allowed:
            _fail(f"Not in enum list: {text}.")
        return coerced

    return check


def _integer(minimum: int | None = None) -> _Check:
    def check(value: Any) -> int:
        coerced = coerce_int(value)
        if coerced is None:
            _fail(f"Expected integer - got {json_type(value)}.")
        if minimum is not None and coerced < minimum:
            _fail(f"{coerced} < minimum({minimum})")
        return coerced

    return check


def _pattern(regex: re.Pattern[str]) -> _Check:
    def check(value: Any) -> str:
        if type(value) is not str:
            _fail(f"Expected string - got {json_type(value)}.")
        if not regex.match(value):
            _fail(f"String does not match {regex.pattern}.")
        return value

    return check


def _enum_str(*allowed: str) -> _Check:
    text = ", ".join(allowed)

    def check(value: Any) -> str:
        if type(value) is not str or value not in allowed:
            _fail(f"Not in enum list: {text}.")
        return value

    return check


def _string(value: Any) -> str:
    if type(value) is not str:
        _fail(f"Expected string - got {json_type(value)}.")
    return value


def _object(value: Any) -> dict[str, Any]:
    if type(value) is not dict:
        _fail(f"Expected object - got {json_type(value)}.")
    return value


def _end(value: Any) -> str:
    if type(value) is int and value >= 0:
        value = str(value)
    if type(value) is not str or not _END_PATTERN.match(value):
        _fail(f"String does not match {_END_PATTERN.pattern}.")
    return value


def _one_or_list(item: _Check, max_items: int) -> _Check:
    def check(value: Any) -> Any:
        if type(value) is not list:
            return item(value)
        if not 1 <= len(value) <= max_items:
            _fail(f"Expected 1 to {max_items} items - got {len(value)}.")
        return [item(element) for element in value]

    return check


Flag = Annotated[int, PlainValidator(_enum_int(1))]
OptionalFlag = Annotated[int | None, PlainValidator(_enum_int(1))]
Symbol = Annotated[str, PlainValidator(_pattern(SYMBOL_PATTERN))]
Symbols = Annotated[str | list[str], PlainValidator(_one_or_list(_pattern(SYMBOL_PATTERN), _MAX_TICKS_SYMBOLS))]
Token = Annotated[str, PlainValidator(_pattern(TOKEN_PATTERN))]
Tokens = Annotated[str | list[str] | None, PlainValidator(_one_or_list(_pattern(TOKEN_PATTERN), _MAX_TOKENS))]
OptionalInt = Annotated[int | None, PlainValidator(_integer())]
LandingCompany = Annotated[str | None, PlainValidator(_pattern(_LANDING_COMPANY_PATTERN))]
StreamTypes = Annotated[
    str | list[str], PlainValidator(_one_or_list(_enum_str(*sorted(FORGET_ALL_TYPES)), len(FORGET_ALL_TYPES)))
]


# --- send schemas (section 3, S1) ---------------------------------------------------------


class _Request(BaseModel):
    """The envelope every call shares (section 2); ``additionalProperties: false``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    req_id: OptionalInt = None
    passthrough: Annotated[dict[str, Any] | None, PlainValidator(_object)] = None


class PingRequest(_Request):
    ping: Flag


class TimeRequest(_Request):
    time: Flag


class TicksRequest(_Request):
    ticks: Symbols
    subscribe: OptionalFlag = None


class TicksHistoryRequest(_Request):
    ticks_history: Symbol
    end: Annotated[str, PlainValidator(_end)]
    start: Annotated[int | None, PlainValidator(_integer(0))] = None
    count: OptionalInt = None
    style: Annotated[str | None, PlainValidator(_string)] = None
    granularity: OptionalInt = None
    adjust_start_time: OptionalFlag = None
    subscribe: OptionalFlag = None


class ForgetRequest(_Request):
    forget: Annotated[str, PlainValidator(_pattern(SUBSCRIPTION_ID_PATTERN))]


class ForgetAllRequest(_Request):
    forget_all: StreamTypes


class ActiveSymbolsRequest(_Request):
    active_symbols: Annotated[str, PlainValidator(_enum_str("brief", "full"))]
    product_type: Annotated[str | None, PlainValidator(_enum_str("basic"))] = None
    landing_company: LandingCompany = None
    landing_company_short: LandingCompany = None


class AuthorizeRequest(_Request):
    authorize: Token
    add_to_login_history: Annotated[int | None, PlainValidator(_enum_int(0, 1))] = None
    tokens: Tokens = None


class WebsiteStatusRequest(_Request):
    website_status: Flag
    subscribe: OptionalFlag = None


#: One model a call, keyed by its method key: the calls this simulator implements, in the
#: order a method key is looked for.
REQUEST_MODELS: Final[Mapping[str, type[_Request]]] = {
    "ping": PingRequest,
    "time": TimeRequest,
    "ticks": TicksRequest,
    "ticks_history": TicksHistoryRequest,
    "forget": ForgetRequest,
    "forget_all": ForgetAllRequest,
    "active_symbols": ActiveSymbolsRequest,
    "authorize": AuthorizeRequest,
    "website_status": WebsiteStatusRequest,
}
ACTIONS: Final = tuple(REQUEST_MODELS)

_ENVELOPE_FIELDS: Final = tuple(_Request.model_fields)


def _field_order(model: type[_Request]) -> tuple[str, ...]:
    # The server reports the call's own fields first, then the envelope's.
    return (*(name for name in model.model_fields if name not in _ENVELOPE_FIELDS), *_ENVELOPE_FIELDS)


_FIELD_ORDER: Final = {action: _field_order(model) for action, model in REQUEST_MODELS.items()}


def validate(action: str, request: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, str], list[str]]:
    """Check a request against its send schema.

    Returns the coerced parameters that were given, per-field errors, and general errors
    (unknown properties). Both error collections empty means valid; otherwise the
    parameters are empty.
    """
    model = REQUEST_MODELS[action]
    try:
        parsed = model.model_validate(request)
    except ValidationError as exc:
        by_field: dict[str, str] = {}
        unknown: list[str] = []
        for error in exc.errors():
            name = str(error["loc"][0]) if error["loc"] else ""
            if error["type"] == "extra_forbidden":
                unknown.append(name)
            elif error["type"] == "missing":
                by_field.setdefault(name, "Missing property.")
            else:
                by_field.setdefault(name, error["msg"])
        details = {name: by_field[name] for name in _FIELD_ORDER[action] if name in by_field}
        general = [f"Properties not allowed: {', '.join(unknown)}."] if unknown else []
        return {}, details, general
    return parsed.model_dump(exclude_unset=True), {}, []
