"""The operations artefacts in deploy/ are valid and true to what /metrics exports.

- ``promtool check rules`` and ``promtool test rules`` (Debian's ``prometheus`` package,
  installed by ``.ci/run``) on deploy/prometheus/;
- every metric named by a rule or by a Grafana panel query is exported by the real
  app's /metrics (a recording rule's name counts once the rules define it).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import yaml

from tests.helpers import until
from tests.integration.conftest import ServedApp
from tests.integration.test_api import live, serve_runtime

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "deriv-status.rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "deriv-status.rules.test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "deriv-status.json"

# PromQL words that look like metric names but are not.
_PROMQL_WORDS = frozenset(
    [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "vector",
        "scalar",
        "time",
        "rate",
        "irate",
        "increase",
        "delta",
        "idelta",
        "sum",
        "avg",
        "min",
        "max",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "histogram_quantile",
        "label_replace",
        "label_join",
        "abs",
        "ceil",
        "floor",
        "round",
        "clamp",
        "clamp_min",
        "clamp_max",
        "absent",
        "absent_over_time",
        "avg_over_time",
        "max_over_time",
        "min_over_time",
        "sum_over_time",
        "count_over_time",
        "changes",
        "resets",
        "deriv",
        "predict_linear",
        "sort",
        "sort_desc",
        "timestamp",
        "le",
        "inf",
        "nan",
        "humanizePercentage",
    ]
)
_SELECTOR = re.compile(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing: .ci/run installs Debian's prometheus package")
        pytest.skip("promtool not installed (apt-get install prometheus)")
    return path


def metric_names(expr: str) -> set[str]:
    """Metric and recording-rule names in a PromQL expression (labels and strings removed)."""
    expr = re.sub(r'"[^"]*"', "", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for name in _SELECTOR.findall(expr):
        if name in _PROMQL_WORDS or re.fullmatch(r"[0-9.e]+", name):
            continue
        names.add(name)
    return names


def rule_groups() -> list[dict[str, object]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    assert isinstance(groups, list)
    return groups


def test_promtool_accepts_the_rules_and_their_unit_tests_pass() -> None:
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run(
        [tool, "test", "rules", RULE_TESTS.name], capture_output=True, text=True, timeout=60, cwd=RULE_TESTS.parent
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_promtool_test_case() -> None:
    alerts = {r["alert"] for g in rule_groups() for r in g["rules"] if "alert" in r}  # type: ignore[attr-defined]
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }
    assert alerts, "no alerts defined"
    assert alerts <= tested, f"alerts without a promtool test: {sorted(alerts - tested)}"


def test_the_names_in_a_query_are_found() -> None:
    assert metric_names('max without (state) (deriv_status_upstream_state{state="connected"})') == {
        "deriv_status_upstream_state"
    }
    assert metric_names(
        "histogram_quantile(0.99, sum by (le, check) (rate(deriv_status_health_check_duration_seconds_bucket[5m])))"
    ) == {"deriv_status_health_check_duration_seconds_bucket"}
    assert metric_names("deriv_status:a / deriv_status_b > 0.9") == {"deriv_status:a", "deriv_status_b"}


async def scrape_live_runtime(asgi_server: Callable[..., Awaitable[ServedApp]], *accepts: str) -> list[httpx.Response]:
    """``/metrics`` of a live runtime, once per Accept header given ("" sends none)."""
    async with serve_runtime(asgi_server) as (runtime, client):
        await until(live(runtime))
        return [await client.get("/metrics", headers={"accept": accept} if accept else {}) for accept in accepts]


async def test_every_metric_in_rules_and_dashboard_is_exported(
    asgi_server: Callable[..., Awaitable[ServedApp]],
) -> None:
    [response] = await scrape_live_runtime(asgi_server, "")
    assert response.status_code == 200
    exported: set[str] = set()
    for line in response.text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            exported.add(name)
            if kind == "counter":
                exported.add(name + "_total")
            if kind == "histogram":
                exported.update({name + "_bucket", name + "_sum", name + "_count"})
        elif line and not line.startswith("#"):
            exported.add(re.split(r"[{ ]", line, maxsplit=1)[0])

    recorded = {r["record"] for g in rule_groups() for r in g["rules"] if "record" in r}  # type: ignore[attr-defined]
    known = exported | recorded | {"ALERTS"}
    queries = [r["expr"] for g in rule_groups() for r in g["rules"]]  # type: ignore[attr-defined]
    dashboard = json.loads(DASHBOARD.read_text())
    queries += [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    queries += [a["expr"] for a in dashboard["annotations"]["list"] if "expr" in a]
    missing = {name for q in queries for name in metric_names(str(q))} - known
    assert not missing, f"queries name metrics /metrics does not export: {sorted(missing)}"
    assert {n for q in queries for n in metric_names(str(q))} & exported, "no query names an exported metric"


async def test_metrics_speak_openmetrics_when_asked_and_prometheus_text_otherwise(
    asgi_server: Callable[..., Awaitable[ServedApp]],
) -> None:
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    plain, open_metrics = await scrape_live_runtime(
        asgi_server, "", "application/openmetrics-text; version=1.0.0; charset=utf-8"
    )
    assert plain.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert open_metrics.headers["content-type"].startswith("application/openmetrics-text")
    assert open_metrics.text.endswith("# EOF\n")
    # The strict parser refuses a family name used twice (the old gauge/counter collision).
    families = {f.name: f.type for f in text_string_to_metric_families(open_metrics.text)}
    assert families["deriv_status_relay_connections"] == "counter"
    assert families["deriv_status_relay_connections_active"] == "gauge"
    assert families["deriv_status_relay_connections_max"] == "gauge"
