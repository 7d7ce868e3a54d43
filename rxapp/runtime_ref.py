"""The one Runtime of this process (DESIGN.md rule 3: the only module-level reference).

Built from the environment when first imported; the Reflex lifespan task starts and
stops it. State classes read it through :func:`get_runtime`. The status pages' shared
history reader belongs with it (it reads the runtime's store; the lifespan stops it).
"""

from __future__ import annotations

from backend_core.config import load_settings
from backend_core.runtime import Runtime
from rxapp.history_reader import HistoryReader

_runtime = Runtime(load_settings())
_history = HistoryReader(_runtime)


def get_runtime() -> Runtime:
    return _runtime


def get_history_reader() -> HistoryReader:
    return _history
