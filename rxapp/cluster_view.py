"""The page's cluster section, from the health report's ``cluster:*`` checks. Pure.

With ``REDIS_URL`` set every instance behind the balancer shows the same upstream state;
this section says which instance the reader is looking at and how the cluster holds
together: this member's role, the leader (with its term and how long ago it was last
seen), the members, the Redis link and how fresh the shared tick log is here. The same
checks feed ``/health/detailed`` (CLUSTER.md 2.6), so the page and the JSON never differ.
A single instance (``cluster:mode`` = ``single``) has no section: :func:`cluster_rows`
gives no rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from backend_core.health import CheckResult
from rxapp.ui_logic import TONE_DEGRADED, TONE_LIVE, TONE_NEUTRAL, format_age, health_look

CLUSTER = "cluster"
# Members listed by name at most (the count is always given).
MAX_MEMBERS_LISTED = 8

# role -> (word, icon, tone)
ROLE_LOOK: Mapping[str, tuple[str, str, str]] = {
    "leader": ("Leader", "circle-check", TONE_LIVE),
    "follower": ("Follower", "circle-check", TONE_LIVE),
    "degraded": ("Degraded", "triangle-alert", TONE_DEGRADED),
    "stopping": ("Stopping", "circle-stop", TONE_NEUTRAL),
}


def _row(key: str, name: str, look: tuple[str, str, str], status: str, value: str, note: str = "") -> dict[str, str]:
    word, icon, tone = look
    return {
        "key": key,
        "name": name,
        "status": status,
        "word": word,
        "icon": icon,
        "tone": tone,
        "value": value,
        "note": note,
    }


def _status_row(key: str, name: str, check: CheckResult, value: str) -> dict[str, str]:
    note = check.output if check.status != "pass" else ""
    return _row(key, name, health_look(check.status), check.status, value, note)


def _members_text(count: Any, roles: Any) -> str:
    if not isinstance(roles, Mapping) or not roles:
        return f"{count} live" if count is not None else "unknown"
    names = sorted(roles.items())
    listed = ", ".join(f"{name} ({role})" for name, role in names[:MAX_MEMBERS_LISTED])
    more = f", and {len(names) - MAX_MEMBERS_LISTED} more" if len(names) > MAX_MEMBERS_LISTED else ""
    return f"{len(names)} live: {listed}{more}"


def _leader_text(check: CheckResult) -> str:
    holder = check.observed_value
    if not holder:
        return "none known"
    term = check.extra.get("term")
    age = check.extra.get("lastSeenS")
    parts = [str(holder)]
    if term is not None:
        parts.append(f"term {term}")
    if isinstance(age, int | float):
        parts.append(f"seen {format_age(age)}")
    return " · ".join(parts)


def cluster_rows(results: Iterable[CheckResult]) -> list[dict[str, str]]:
    """The section's rows (``key``, ``name``, ``status``, ``word``, ``icon``, ``tone``,
    ``value``, ``note``): none for a single instance or a report without cluster checks."""
    checks = {r.measurement: r for r in results if r.component_id == CLUSTER}
    mode = checks.get("mode")
    if mode is None or mode.observed_value in (None, "single"):
        return []
    role = str(mode.observed_value)
    instance = str(mode.extra.get("instance", ""))
    rows = [
        _row(
            "role",
            "This instance",
            ROLE_LOOK.get(role, (role.capitalize(), "circle-help", TONE_NEUTRAL)),
            mode.status,
            instance,
            mode.output,
        )
    ]
    if (leader := checks.get("leader")) is not None:
        rows.append(_status_row("leader", "Leader", leader, _leader_text(leader)))
    if (members := checks.get("members")) is not None:
        rows.append(
            _status_row(
                "members", "Members", members, _members_text(members.observed_value, members.extra.get("roles"))
            )
        )
    if (redis := checks.get("redis")) is not None:
        rtt = redis.observed_value
        value = f"round trip {rtt} ms" if isinstance(rtt, int | float) else "not answering"
        rows.append(_status_row("redis", "Redis", redis, value))
    if (lag := checks.get("followerLag")) is not None:
        ms = lag.observed_value
        value = f"newest entry read {format_age(ms / 1000)}" if isinstance(ms, int | float) else "nothing read yet"
        rows.append(_status_row("log", "Tick log", lag, value))
    return rows
