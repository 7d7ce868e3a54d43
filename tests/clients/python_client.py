"""A scripted exchange with Deriv's Python client (``python-deriv-api``), run by tests/integration.

Usage: ``python python_client.py <ws origin> <control url>``, e.g.
``ws://127.0.0.1:8765 http://127.0.0.1:8766/control``. It runs in a process of its own
with ``tests/clients/python-deps`` first on ``PYTHONPATH``: the client pins a websockets
release of its own, older than the app's. Each step prints one JSON line
(``{"step": ..., ...}``); the test asserts on them. Any failure raises (exit status 1).
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
from typing import Any

from deriv_api import DerivAPI  # type: ignore[import-not-found]
from deriv_api.errors import ResponseError  # type: ignore[import-not-found]

APP_ID = 1089
SYMBOL = "1HZ100V"
STEP_S = 10.0  # upper bound for any one step


def report(step: str, **fields: Any) -> None:
    print(json.dumps({"step": step, **fields}), flush=True)


def control(control_url: str, action: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"{control_url}/{action}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=STEP_S) as response:
        assert json.loads(response.read())["ok"] is True


async def exchange(endpoint: str, control_url: str) -> None:
    api = DerivAPI(endpoint=endpoint, app_id=APP_ID)
    pong = await asyncio.wait_for(api.ping({"ping": 1}), STEP_S)
    report("ping", ping=pong["ping"])

    # Stay subscribed while forgetting: the client forgets by itself when nobody listens.
    source = await api.subscribe({"ticks": SYMBOL})
    ticks: list[dict[str, Any]] = []
    two = asyncio.get_running_loop().create_future()

    def on_tick(message: dict[str, Any]) -> None:
        ticks.append(message)
        if len(ticks) == 2 and not two.done():
            two.set_result(None)

    source.subscribe(on_tick)
    await asyncio.wait_for(two, STEP_S)
    sub_id = ticks[0]["subscription"]["id"]
    report("ticks", epochs=[t["tick"]["epoch"] for t in ticks], symbol=ticks[0]["tick"]["symbol"], id=sub_id)
    forgot = await asyncio.wait_for(api.forget(sub_id), STEP_S)
    report("forget", forget=forgot["forget"])

    history = await asyncio.wait_for(api.ticks_history({"ticks_history": SYMBOL, "end": "latest", "count": 5}), STEP_S)
    report("ticks_history", times=history["history"]["times"], prices=history["history"]["prices"])

    try:
        await asyncio.wait_for(api.ticks_history({"ticks_history": "R_12312312", "end": "latest"}), STEP_S)
    except ResponseError as exc:
        report("invalid_symbol", code=exc.code, message=str(exc))
    else:
        raise AssertionError("an unknown symbol was accepted")

    # The server drops every link; the client sees it close and a new client connects.
    await asyncio.to_thread(control, control_url, "drop_all", {"code": 1012, "reason": "restart"})
    await asyncio.wait_for(api.wsconnection.wait_closed(), STEP_S)
    report("dropped", close_code=api.wsconnection.close_code)
    await api.clear()
    again = DerivAPI(endpoint=endpoint, app_id=APP_ID)
    pong = await asyncio.wait_for(again.ping({"ping": 1}), STEP_S)
    report("reconnected", ping=pong["ping"])
    await again.clear()


if __name__ == "__main__":
    asyncio.run(exchange(sys.argv[1], sys.argv[2]))
