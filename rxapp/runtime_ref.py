"""The one Runtime of this process and what the app keeps beside it (DESIGN.md rule 3:
the only module-level reference).

Built from the environment when first imported; the Reflex lifespan task starts and
stops the runtime (and stops the page loops). State classes read the runtime (and its
``history_reader``) through :func:`get_runtime`, and register their live loops in the
process-local :func:`get_page_loops`.
"""

from __future__ import annotations

from dataclasses import dataclass

from backend_core.config import load_settings
from backend_core.runtime import Runtime
from rxapp.page_loops import PageLoops


@dataclass(frozen=True)
class AppRef:
    runtime: Runtime
    page_loops: PageLoops


_ref = AppRef(runtime=Runtime(load_settings()), page_loops=PageLoops())


def get_runtime() -> Runtime:
    return _ref.runtime


def get_page_loops() -> PageLoops:
    return _ref.page_loops
