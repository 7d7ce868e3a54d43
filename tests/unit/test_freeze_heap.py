"""freeze_startup_heap: what a process has built by start-up leaves the collector's scans."""

from __future__ import annotations

import gc

from backend_core.runtime import freeze_startup_heap


def test_the_startup_heap_is_frozen_and_new_objects_are_still_collected() -> None:
    gc.unfreeze()
    try:
        built_at_startup = [object() for _ in range(10)]
        freeze_startup_heap()
        assert gc.get_freeze_count() >= len(built_at_startup)
        cycle: list[object] = []
        cycle.append(cycle)  # built after start-up: still the collector's
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()  # this test process builds many runtimes
