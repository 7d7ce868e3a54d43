"""The page's cluster section, from the same cluster checks as /health/detailed."""

from __future__ import annotations

from backend_core.health import CheckResult
from rxapp.cluster_view import MAX_MEMBERS_LISTED, cluster_rows


def check(measurement: str, status: str, value: object, output: str = "", **extra: object) -> CheckResult:
    return CheckResult("cluster", "component", measurement, status, value, None, output, extra)  # type: ignore[arg-type]


def follower_report(**changes: CheckResult) -> list[CheckResult]:
    checks = {
        "mode": check("mode", "pass", "follower", instance="web-2"),
        "redis": check("redis", "pass", 0.42),
        "leader": check("leader", "pass", "web-1", term=7, lastSeenS=1.6),
        "members": check("members", "pass", 3, roles={"web-1": "leader", "web-2": "follower", "web-3": "follower"}),
        "followerLag": check("followerLag", "pass", 250.0),
    }
    checks.update(changes)
    return [CheckResult("database", "datastore", "responseTime", "pass", 1.0), *checks.values()]


def by_key(rows: list[dict[str, str]]) -> dict[str, dict[str, str]]:
    return {row["key"]: row for row in rows}


def test_a_single_instance_has_no_cluster_section() -> None:
    assert cluster_rows([check("mode", "pass", "single")]) == []
    assert cluster_rows([CheckResult("database", "datastore", "responseTime", "pass", 1.0)]) == []


def test_a_follower_names_itself_the_leader_the_members_redis_and_the_log() -> None:
    rows = by_key(cluster_rows(follower_report()))
    assert list(rows) == ["role", "leader", "members", "redis", "log"]
    assert (rows["role"]["word"], rows["role"]["value"]) == ("Follower", "web-2")
    assert rows["leader"]["value"] == "web-1 · term 7 · seen 1 s ago"
    assert rows["members"]["value"] == "3 live: web-1 (leader), web-2 (follower), web-3 (follower)"
    assert rows["redis"]["value"] == "round trip 0.42 ms"
    assert rows["log"]["value"] == "newest entry read just now"
    assert {row["tone"] for row in rows.values()} == {"grass"} and all(row["note"] == "" for row in rows.values())


def test_a_degraded_member_says_why_and_that_redis_is_not_answering() -> None:
    reason = "cluster degraded: TimeoutError while reading the tick log; serving from this member's own link"
    rows = by_key(
        cluster_rows(
            [
                check("mode", "warn", "degraded", reason, instance="web-2"),
                check("redis", "warn", None, "Redis unreachable"),
            ]
        )
    )
    assert (rows["role"]["word"], rows["role"]["tone"], rows["role"]["note"]) == ("Degraded", "amber", reason)
    assert (rows["redis"]["value"], rows["redis"]["word"], rows["redis"]["note"]) == (
        "not answering",
        "Warning",
        "Redis unreachable",
    )


def test_no_leader_is_a_warning_with_the_time_since() -> None:
    since = "no leader since 2026-12-02T01:00:00Z"
    rows = by_key(cluster_rows(follower_report(leader=check("leader", "warn", None, since, term=None))))
    assert (rows["leader"]["value"], rows["leader"]["word"], rows["leader"]["note"]) == ("none known", "Warning", since)


def test_a_large_cluster_lists_some_members_and_counts_the_rest() -> None:
    roles = {f"web-{i:02}": "follower" for i in range(MAX_MEMBERS_LISTED + 3)}
    rows = by_key(cluster_rows(follower_report(members=check("members", "pass", len(roles), roles=roles))))
    assert rows["members"]["value"].startswith(f"{len(roles)} live: web-00 (follower), ")
    assert rows["members"]["value"].endswith(", and 3 more")
