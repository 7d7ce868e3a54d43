"""The Reflex app: the status page, with backend_core's API mounted on the same server.

The process-wide set-up that a library must not do lives here, at the app's edge:
logging is configured once when the app is imported, and the heap is frozen once
after the runtime has started.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import reflex as rx

from backend_core.api import create_api
from backend_core.logs import configure_logging
from backend_core.runtime import freeze_startup_heap
from rxapp.components import page_title
from rxapp.pages.index import index
from rxapp.runtime_ref import get_page_loops, get_runtime
from rxapp.state import StatusState

runtime = get_runtime()
configure_logging(runtime.settings.LOG_FORMAT, runtime.settings.LOG_LEVEL)


@contextlib.asynccontextmanager
async def runtime_lifespan() -> AsyncIterator[None]:
    """Start the runtime with the server and stop it (gracefully) on shutdown.

    SIGTERM/SIGINT first close relay clients with 1001 (the server would otherwise drop
    them before the lifespan's exit runs), then reach the server's own handler. The pages'
    live loops of this process stop before the runtime they read.
    """
    async with runtime.lifespan():
        runtime.install_signal_handlers()
        freeze_startup_heap()  # once: a process runs one Runtime
        try:
            yield
        finally:
            await get_page_loops().stop()


app = rx.App(api_transformer=create_api(runtime))
# The page explains a lost link itself (banner, browser link card, polled status), so
# Reflex's default connection toast and pulsing icon would only say it twice, louder.
app.app_wraps.pop((5, "Overlay"), None)
app.register_lifespan_task(runtime_lifespan)
app.add_page(
    index,
    route="/",
    title=page_title(),
    description="Live status of the Deriv market data feed: connections, prices, circuit breakers and health.",
    on_load=StatusState.on_load,
)
