"""The upstream status as a stream entry: the leader writes it, every member reads it.

``UpstreamSnapshot`` travels as its ``to_dict()`` JSON plus the writer's lease term. A
reader rebuilds the snapshot leniently: fields it does not know (written by a newer
member during a rolling upgrade) are ignored, and a frame that is not a snapshot at all
gives None instead of an error.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Final

from backend_core.events import ErrorInfo, LinkState, SymbolStatus, UpstreamSnapshot

# KEYS: leader, status stream. ARGV: token, maxlen, term, snapshot JSON.
PUBLISH_STATUS: Final = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return -1 end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'term', ARGV[3], 's', ARGV[4])
return 1
"""

#: The longest snapshot JSON a reader accepts (a few hundred symbols fit easily).
MAX_STATUS_BYTES: Final = 256 * 1024

_SNAPSHOT_FIELDS = {f.name for f in dataclasses.fields(UpstreamSnapshot)}
_SYMBOL_FIELDS = {f.name for f in dataclasses.fields(SymbolStatus)}
_ERROR_FIELDS = {f.name for f in dataclasses.fields(ErrorInfo)}


def encode_status(snapshot: UpstreamSnapshot) -> str:
    return json.dumps(snapshot.to_dict(), separators=(",", ":"), allow_nan=False)


def decode_status(text: str | bytes) -> UpstreamSnapshot | None:
    if len(text) > MAX_STATUS_BYTES:
        return None
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            return None
        known: dict[str, Any] = {k: v for k, v in data.items() if k in _SNAPSHOT_FIELDS}
        known["state"] = LinkState(known["state"])
        error = known.get("last_error")
        if isinstance(error, dict):
            known["last_error"] = ErrorInfo(**{k: v for k, v in error.items() if k in _ERROR_FIELDS})
        known["symbols"] = tuple(
            SymbolStatus(**{k: v for k, v in s.items() if k in _SYMBOL_FIELDS})
            for s in known.get("symbols", ())
            if isinstance(s, dict)
        )
        return UpstreamSnapshot(**known)
    except (KeyError, TypeError, ValueError):
        return None
