"""``python -m tests.cluster_member --port P``: one member for the cluster harness.

The API and the relay of one :class:`~backend_core.runtime.Runtime` under uvicorn on
127.0.0.1, settings from the environment (the harness sets ``DERIV_WS_URL``,
``REDIS_URL``, ``INSTANCE_ID``, ``DB_URL``...): what ``make run`` serves minus the page, so
no frontend build is needed. The runtime starts before the port is opened and stops after
it is closed; SIGTERM and SIGINT stop uvicorn, which then runs that shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import uvicorn

from backend_core.api import create_api
from backend_core.config import load_settings
from backend_core.logs import configure_logging
from backend_core.relay.serving import RelayWebSocketProtocol
from backend_core.runtime import Runtime, freeze_startup_heap


def build_app() -> Any:
    settings = load_settings()
    configure_logging(settings.LOG_FORMAT, settings.LOG_LEVEL)
    runtime = Runtime(settings)
    api = create_api(runtime)

    @contextlib.asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        async with runtime.lifespan():
            freeze_startup_heap()  # as the app's own lifespan does
            yield

    api.router.lifespan_context = lifespan
    return api


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.cluster_member")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    config = uvicorn.Config(
        build_app(),
        host="127.0.0.1",
        port=args.port,
        lifespan="on",
        # What gunicorn.conf.py installs in production: the relay's frame limit and eager writes.
        ws=RelayWebSocketProtocol,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    asyncio.run(uvicorn.Server(config).serve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
