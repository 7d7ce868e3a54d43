"""The one Runtime of this process (DESIGN.md rule 3: the only module-level reference).

Built from the environment when first imported; the Reflex lifespan task starts and
stops it. State classes read it (and its ``history_reader``) through :func:`get_runtime`.
"""

from __future__ import annotations

from backend_core.config import load_settings
from backend_core.runtime import Runtime

_runtime = Runtime(load_settings())


def get_runtime() -> Runtime:
    return _runtime
