"""Where Reflex keeps the pages' state when the app runs as a cluster (CLUSTER.md 2.7).

With ``REDIS_URL`` set, every instance behind the balancer must see every tab's state, so
Reflex's state manager runs on the same Redis, on its own database index (ours is the
one ``REDIS_URL`` names, ``/0`` by default; Reflex's is the next one), so that its
``SCAN`` and keyspace patterns never meet our keys. ``REFLEX_REDIS_URL``, when set, is
used instead (Reflex's own variable). Either way the URL carries socket timeouts, so a
hung Redis fails a page's state access after a bounded time instead of hanging it: Reflex
builds its client with ``redis.asyncio.Redis.from_url``, which reads
``socket_connect_timeout`` and ``socket_timeout`` from the query string (and retries a
failed command once, so one state access waits at most about twice ``socket_timeout``).
Values the URL already names are kept.

With neither variable set, nothing changes: Reflex keeps its state in memory. Nor with
``REFLEX_STATE_MANAGER_MODE=memory`` (or ``disk``) and no ``REFLEX_REDIS_URL``: each
instance then keeps its pages' state to itself, and nothing of the page touches Redis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from urllib.parse import SplitResult, parse_qsl, urlencode, urlsplit, urlunsplit

from backend_core.errors import ConfigError

SCHEMES = ("redis", "rediss", "unix")
# REFLEX_STATE_MANAGER_MODE values that keep the page's state in each process.
LOCAL_MODES = ("memory", "disk")
# Connecting to a live Redis on the same network takes milliseconds; 2 s means "down".
SOCKET_CONNECT_TIMEOUT_S = 2.0
# A reply slower than this means "hung". Not lower: Reflex's pub/sub listeners (lock
# releases, socket records) idle on this timeout, and each expiry reconnects them.
SOCKET_TIMEOUT_S = 10.0
ACCEPTED = "a Redis URL: redis://host:6379/0, rediss://… or unix:///path?db=0"
TIMEOUTS = {"socket_connect_timeout": SOCKET_CONNECT_TIMEOUT_S, "socket_timeout": SOCKET_TIMEOUT_S}


def reflex_redis_url(environ: Mapping[str, str]) -> str | None:
    """Reflex's ``REFLEX_REDIS_URL`` for this environment, or None (state stays in memory).

    ``REFLEX_REDIS_URL`` wins as given (with the timeouts added when it names none);
    otherwise it is derived from ``REDIS_URL``. Raises :class:`ConfigError` naming the
    variable on a URL Redis's client would refuse.
    """
    explicit = environ.get("REFLEX_REDIS_URL", "").strip()
    if explicit:
        return _with_timeouts("REFLEX_REDIS_URL", explicit, db=None)
    shared = environ.get("REDIS_URL", "").strip()
    if not shared or environ.get("REFLEX_STATE_MANAGER_MODE", "").strip().lower() in LOCAL_MODES:
        # The operator chose availability over shared page state: nothing of the page's
        # (not even Reflex's socket registry, which follows redis_url) waits on Redis.
        return None
    return _with_timeouts("REDIS_URL", shared, db=database_index("REDIS_URL", shared) + 1)


def database_index(name: str, url: str) -> int:
    """The database a Redis URL selects: ``?db=``, else the path of a ``redis://`` URL, else 0."""
    parts = _split(name, url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    raw = query.get("db")
    if raw is None and parts.scheme != "unix":
        raw = parts.path.strip("/") or None
    if raw is None:
        return 0
    if not raw.isdigit():
        raise ConfigError(name, masked(url), "a database number (redis://host:6379/0)")
    return int(raw)


def masked(url: str) -> str:
    """The URL with its password replaced by ``***`` (DESIGN.md rule 9)."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return "<unparsable URL>"
    if not password:
        return url
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


def _split(name: str, url: str) -> SplitResult:
    try:
        parts = urlsplit(url)
        _ = parts.port  # a port that is not a number raises here
    except ValueError:
        raise ConfigError(name, masked(url), ACCEPTED) from None
    if parts.scheme not in SCHEMES:
        raise ConfigError(name, masked(url), ACCEPTED)
    return parts


def _with_timeouts(name: str, url: str, *, db: int | None) -> str:
    """``url`` with the socket timeouts it does not name, on database ``db`` (None: as it is)."""
    parts = _split(name, url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    for key, value in pairs:
        if key in TIMEOUTS and not _positive_seconds(value):
            raise ConfigError(name, masked(url), f"{key} in seconds, above 0")
    path = parts.path
    if db is not None:
        pairs = [(key, value) for key, value in pairs if key != "db"]
        if parts.scheme == "unix":
            pairs.append(("db", str(db)))
        else:
            path = f"/{db}"
    named = {key for key, _ in pairs}
    pairs += [(key, f"{seconds:g}") for key, seconds in TIMEOUTS.items() if key not in named]
    if parts.scheme == "unix":  # urlunsplit would drop the empty authority ("unix:/path")
        return f"unix://{parts.netloc}{path}?{urlencode(pairs)}"
    return urlunsplit(parts._replace(path=path, query=urlencode(pairs)))


def _positive_seconds(value: str) -> bool:
    try:
        seconds = float(value)
    except ValueError:
        return False
    return math.isfinite(seconds) and seconds > 0
