"""A process that reaches Reflex's state the way the app does, driven over stdin/stdout.

``python -m tests.integration.reflex_state_probe`` (from the repository root, so Reflex
loads this project's ``rxconfig.py``) builds Reflex's state manager and token manager
from the environment exactly as a server worker does, prints one JSON line saying what
it built, then answers each ``access`` line with one JSON line: a state access (lock,
read, write of one counter, as an event does) and its outcome. ``quit`` ends it.

Used by tests/integration/test_reflex_on_redis.py; a process of its own because Reflex's
config is loaded once per process.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import reflex as rx
from reflex.istate.manager import StateManager
from reflex.istate.manager.token import BaseStateToken
from reflex.utils.token_manager import TokenManager
from reflex_base.config import get_config

# Only stops a broken client from hanging the test: the access must fail long before.
GUARD_S = 60.0
TAB = "probe-tab"


class Probe(rx.State):
    count: int = 0


def say(**line: Any) -> None:
    print(json.dumps(line), flush=True)


async def access(manager: StateManager) -> dict[str, Any]:
    started = time.monotonic()
    outcome = await _access(manager)
    return {**outcome, "elapsed_s": round(time.monotonic() - started, 2)}  # reported, not asserted


async def _access(manager: StateManager) -> dict[str, Any]:
    try:
        async with asyncio.timeout(GUARD_S):
            async with manager.modify_state(BaseStateToken(ident=TAB, cls=Probe)) as root:
                probe = await root.get_state(Probe)
                probe.count += 1
                return {"ok": True, "count": probe.count}
    except TimeoutError as exc:
        if type(exc) is TimeoutError:  # the guard, not the client's own timeout
            return {"ok": False, "error": "hung"}
        return {"ok": False, "error": f"{type(exc).__module__}.{type(exc).__name__}"}
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__module__}.{type(exc).__name__}"}


async def main() -> None:
    get_config()
    manager = StateManager.create()
    tokens = TokenManager.create()
    redis = getattr(manager, "redis", None)
    kwargs = redis.get_connection_kwargs() if redis is not None else {}
    say(
        state_manager=type(manager).__name__,
        token_manager=type(tokens).__name__,
        db=kwargs.get("db"),
        socket_timeout=kwargs.get("socket_timeout"),
        socket_connect_timeout=kwargs.get("socket_connect_timeout"),
    )
    try:
        while True:
            line = (await asyncio.to_thread(sys.stdin.readline)).strip()
            if line == "access":
                say(**await access(manager))
            elif line in ("quit", ""):
                return
    finally:
        await tokens.close()
        await manager.close()


if __name__ == "__main__":
    asyncio.run(main())
