"""Circuit breaker overhead, side by side with a bare await and with peer libraries.

Run: ``.venv/bin/python bench/breaker_bench.py`` (``--quick`` for a short run).

What is measured, in one process run, for each contender:

- ns per successful call in CLOSED state (a trivial ``async def`` returning a constant),
  and the overhead above a bare ``await f()`` of the same function;
- ns per rejected call while OPEN: over the first 1k rejections of a freshly opened
  breaker, and over 1k rejections after 200k more (flat means no growth per rejection),
  the two kinds of window taken in turns;
- peak memory growth (tracemalloc) over 200k rejections.

Each figure is the median of several repetitions timed with ``time.perf_counter_ns``;
the garbage collector stays on (it is part of what a call costs in production).

Ours is driven exactly as the app drives it (the middleware and the upstream manager):
``permit = breaker.acquire()``, the await, then ``record_success(permit)`` (with the
``record_failure`` / ``release`` branches in place). The goals compare with the peers
measured in the same run: below every peer per successful call and per rejection, and a
flat rejection cost.

Peers and how each is driven (each in its cheapest documented async use):

- pybreaker: has no asyncio support (``call_async`` needs tornado, not installed); the
  await is wrapped in its sync context manager ``with cb.calling(): await f()``.
- aiobreaker: ``await cb.call_async(f)``.
- purgatory: ``async with brk: await f()`` with ``brk`` fetched once; its decorator, which
  re-resolves the breaker through its unit of work on every call, is shown as well.

The last line of output is one JSON object (DESIGN.md "Testing and measuring").
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
import tracemalloc
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend_core.breakers.breaker import CircuitBreaker
from backend_core.breakers.core import BreakerConfig
from backend_core.clock import SystemClock
from backend_core.errors import CircuitOpenError

warnings.simplefilter("ignore", DeprecationWarning)  # aiobreaker's datetime.utcnow on newer Pythons

Loop = Callable[[int], Awaitable[None]]

OURS = "ours (permit)"


async def trivial() -> int:
    return 1


async def failing() -> int:
    raise ConnectionError("down")


@dataclass
class Contender:
    """How to run n successful calls, and n rejected calls on a freshly opened breaker."""

    name: str
    how: str
    success: Callable[[], Awaitable[Loop]]
    rejecting: Callable[[], Awaitable[Loop]] | None


# --------------------------------------------------------------------------- contenders


async def bare_success() -> Loop:
    async def run(n: int) -> None:
        f = trivial
        for _ in range(n):
            await f()

    return run


def _ours() -> tuple[Callable[[], Awaitable[Loop]], Callable[[], Awaitable[Loop]]]:
    """The permit API exactly as the app uses it (middleware, manager): acquire, await,
    then record_success / record_failure / release."""

    def make() -> CircuitBreaker:
        return CircuitBreaker("bench", BreakerConfig(failure_threshold=5, recovery_timeout_s=1e9), clock=SystemClock())

    async def success() -> Loop:
        breaker = make()

        async def run(n: int) -> None:
            acquire, succeeded, failed, release, f = (
                breaker.acquire,
                breaker.record_success,
                breaker.record_failure,
                breaker.release,
                trivial,
            )
            for _ in range(n):
                permit = acquire()
                try:
                    await f()
                except Exception as exc:
                    failed(permit, exc)
                    raise
                except BaseException:
                    release(permit)
                    raise
                succeeded(permit)

        return run

    async def rejecting() -> Loop:
        breaker = make()
        for _ in range(5):
            breaker.record_failure(breaker.acquire(), ConnectionError("down"))

        async def run(n: int) -> None:
            acquire, succeeded, f = breaker.acquire, breaker.record_success, trivial
            for _ in range(n):
                try:
                    permit = acquire()
                except CircuitOpenError:
                    continue
                await f()
                succeeded(permit)

        return run

    return success, rejecting


def _pybreaker() -> tuple[Callable[[], Awaitable[Loop]], Callable[[], Awaitable[Loop]]]:
    import pybreaker

    async def success() -> Loop:
        cb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=1e9)

        async def run(n: int) -> None:
            f = trivial
            for _ in range(n):
                with cb.calling():
                    await f()

        return run

    async def rejecting() -> Loop:
        cb = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=1e9)
        cb.open()

        async def run(n: int) -> None:
            f = trivial
            error = pybreaker.CircuitBreakerError
            for _ in range(n):
                try:
                    with cb.calling():
                        await f()
                except error:
                    pass

        return run

    return success, rejecting


def _aiobreaker() -> tuple[Callable[[], Awaitable[Loop]], Callable[[], Awaitable[Loop]]]:
    import aiobreaker

    async def success() -> Loop:
        cb = aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=timedelta(days=365))

        async def run(n: int) -> None:
            call, f = cb.call_async, trivial
            for _ in range(n):
                await call(f)

        return run

    async def rejecting() -> Loop:
        cb = aiobreaker.CircuitBreaker(fail_max=5, timeout_duration=timedelta(days=365))
        cb.open()

        async def run(n: int) -> None:
            call, f = cb.call_async, trivial
            error = aiobreaker.CircuitBreakerError
            for _ in range(n):
                try:
                    await call(f)
                except error:
                    pass

        return run

    return success, rejecting


def _purgatory(kind: str) -> tuple[Callable[[], Awaitable[Loop]], Callable[[], Awaitable[Loop]]]:
    import purgatory
    from purgatory.domain.model import OpenedState

    async def factory() -> Any:
        circuits = purgatory.AsyncCircuitBreakerFactory(default_threshold=5, default_ttl=1e9)
        await circuits.initialize()
        return circuits

    async def success() -> Loop:
        circuits = await factory()
        if kind == "context":
            brk = await circuits.get_breaker("bench")

            async def run(n: int) -> None:
                f = trivial
                for _ in range(n):
                    async with brk:
                        await f()

        else:
            g = circuits("bench")(trivial)

            async def run(n: int) -> None:
                for _ in range(n):
                    await g()

        return run

    async def rejecting() -> Loop:
        circuits = await factory()
        brk = await circuits.get_breaker("bench")
        for _ in range(5):
            try:
                async with brk:
                    await failing()
            except ConnectionError:
                pass
        if kind == "context":

            async def run(n: int) -> None:
                f = trivial
                for _ in range(n):
                    try:
                        async with brk:
                            await f()
                    except OpenedState:
                        pass

        else:
            g = circuits("bench")(trivial)

            async def run(n: int) -> None:
                for _ in range(n):
                    try:
                        await g()
                    except OpenedState:
                        pass

        return run

    return success, rejecting


def contenders() -> list[Contender]:
    out = [Contender("bare await", "await f()", bare_success, None)]
    success, rejecting = _ours()
    out.append(Contender(OURS, "p = acquire(); await f(); record_success(p)", success, rejecting))
    success, rejecting = _pybreaker()
    out.append(Contender("pybreaker", "with cb.calling(): await f()  [no asyncio API]", success, rejecting))
    success, rejecting = _aiobreaker()
    out.append(Contender("aiobreaker", "await cb.call_async(f)", success, rejecting))
    success, rejecting = _purgatory("context")
    out.append(Contender("purgatory", "async with brk: await f()", success, rejecting))
    success, rejecting = _purgatory("decorator")
    out.append(Contender("purgatory (decorator)", "@circuits(name); await g()", success, rejecting))
    return out


# --------------------------------------------------------------------------- measuring


async def per_call_ns(loop: Loop, n: int) -> float:
    # Collect the garbage of whoever ran before (purgatory's decorator leaves a lot), so a
    # contender pays for its own collections only; the collector stays on while timing.
    gc.collect()
    start = time.perf_counter_ns()
    await loop(n)
    return (time.perf_counter_ns() - start) / n


async def measure_success(contenders: list[Contender], n: int, repetitions: int) -> dict[str, float]:
    """Median ns per successful call; the contenders take turns in every repetition, so a
    burst of noise from the machine hits all of them alike."""
    loops = {contender.name: await contender.success() for contender in contenders}
    for loop in loops.values():
        await loop(min(n, 10_000))  # warm up
    samples: dict[str, list[float]] = {name: [] for name in loops}
    for _ in range(repetitions):
        for name, loop in loops.items():
            samples[name].append(await per_call_ns(loop, n))
    return {name: statistics.median(values) for name, values in samples.items()}


# A rejection window is 1k calls, about a millisecond: one window alone is at the mercy of
# whatever else the machine does in that millisecond. So each repetition takes several
# "first" windows (each on a freshly opened breaker) and "after" windows (on one breaker
# already flooded) in turns, and a slow moment of the machine hits both figures alike.
REJECTION_WINDOW = 1_000
REJECTION_WINDOWS = 9


async def measure_rejections(
    contenders: list[Contender], flood: int, repetitions: int
) -> dict[str, tuple[float, float]]:
    """Median ns per rejection over the first 1k of a freshly opened breaker, and over 1k
    more after ``flood`` rejections; in turns, like measure_success."""
    first: dict[str, list[float]] = {contender.name: [] for contender in contenders}
    after: dict[str, list[float]] = {contender.name: [] for contender in contenders}
    for _ in range(repetitions):
        for contender in contenders:
            assert contender.rejecting is not None
            flooded = await contender.rejecting()
            await flooded(flood)
            for _ in range(REJECTION_WINDOWS):
                fresh = await contender.rejecting()
                first[contender.name].append(await per_call_ns(fresh, REJECTION_WINDOW))
                after[contender.name].append(await per_call_ns(flooded, REJECTION_WINDOW))
                del fresh
            del flooded
            gc.collect()
    return {name: (statistics.median(first[name]), statistics.median(after[name])) for name in first}


async def measure_memory(contender: Contender, flood: int) -> float:
    assert contender.rejecting is not None
    loop = await contender.rejecting()
    await loop(100)
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        await loop(flood)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del loop
    gc.collect()
    return max(0, peak - base) / 1024


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "?"


async def main(quick: bool) -> dict[str, Any]:
    n = 50_000 if quick else 200_000
    repetitions = 3 if quick else 7
    flood = 20_000 if quick else 200_000
    rejection_repetitions = 3 if quick else 5

    all_contenders = contenders()
    guarded = [contender for contender in all_contenders if contender.rejecting is not None]
    success_ns = await measure_success(all_contenders, n, repetitions)
    rejection_ns = await measure_rejections(guarded, flood, rejection_repetitions)
    bare = success_ns["bare await"]
    rows: dict[str, dict[str, float | None]] = {
        "bare await": {"ns": bare, "overhead": 0.0, "first": None, "after": None, "mem_kib": None}
    }
    for contender in guarded:
        ns = success_ns[contender.name]
        first, after = rejection_ns[contender.name]
        mem_kib = await measure_memory(contender, flood)
        rows[contender.name] = {"ns": ns, "overhead": ns - bare, "first": first, "after": after, "mem_kib": mem_kib}

    def cell(value: float | None, digits: int = 0) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    flood_label = f"{flood // 1000}k"
    print(
        f"Python {sys.version.split()[0]}; pybreaker {version('pybreaker')}, aiobreaker {version('aiobreaker')}, ",
        end="",
    )
    print(f"purgatory {version('purgatory')}; {n:,} calls x {repetitions} repetitions, medians")
    header = (
        f"{'contender':<22} {'ns/call':>8} {'overhead':>9} {'reject 1st 1k':>14} "
        f"{'reject after ' + flood_label:>18} {'mem/' + flood_label + ' rejects':>17}  how"
    )
    print(header)
    print("-" * len(header) + "-" * 30)
    for contender in all_contenders:
        row = rows[contender.name]
        memory = row["mem_kib"]
        print(
            f"{contender.name:<22} {cell(row['ns']):>8} {cell(row['overhead']):>9} {cell(row['first']):>14} "
            f"{cell(row['after']):>18} {('-' if memory is None else f'{memory:,.1f} KiB'):>17}  {contender.how}"
        )

    def overhead(name: str) -> float:
        return rows[name]["overhead"] or 0.0

    peers = [name for name in rows if not name.startswith(("ours", "bare"))]
    best_peer_name = min(peers, key=overhead)
    best_peer_overhead = overhead(best_peer_name)
    ours_overhead = overhead(OURS)
    # Goals, against the peers measured in this same run (absolute nanoseconds depend on
    # the machine and its load): a successful call costs less above a bare await than in
    # every peer's cheapest shape, and a rejection costs less than every peer's cheapest
    # rejection and does not grow with the number of rejections before it.
    goal_overhead = ours_overhead < best_peer_overhead
    ours_first, ours_after = rows[OURS]["first"] or 0.0, rows[OURS]["after"] or 0.0
    worst_ours_reject = max(ours_first, ours_after)
    best_peer_reject_name = min(peers, key=lambda name: min(rows[name]["first"] or 0.0, rows[name]["after"] or 0.0))
    best_peer_reject = min(rows[best_peer_reject_name]["first"] or 0.0, rows[best_peer_reject_name]["after"] or 0.0)
    flat = ours_after <= 1.5 * ours_first
    goal_reject = worst_ours_reject < best_peer_reject and flat
    print()
    print(
        f"a successful call above a bare await: {ours_overhead:.0f} ns; best peer {best_peer_name}: "
        f"{best_peer_overhead:.0f} ns (ratio {ours_overhead / best_peer_overhead:.3f}); "
        f"goal below every peer: {'met' if goal_overhead else 'MISSED'}"
    )
    print(
        f"a rejection, worst of first/after: {worst_ours_reject:.0f} ns; best peer {best_peer_reject_name}: "
        f"{best_peer_reject:.0f} ns; goal below every peer and flat: {'met' if goal_reject else 'MISSED'}"
    )

    def r(value: float | None, digits: int = 1) -> float | None:
        return None if value is None else round(value, digits)

    result: dict[str, Any] = {"bench": "breaker", "quick": quick, "bare_await_ns": r(bare)}
    keys = {
        OURS: "ours_permit",
        "pybreaker": "pybreaker",
        "aiobreaker": "aiobreaker",
        "purgatory": "purgatory",
        "purgatory (decorator)": "purgatory_decorator",
    }
    for name, key in keys.items():
        row = rows[name]
        result[f"{key}_success_ns"] = r(row["ns"])
        result[f"{key}_overhead_ns"] = r(row["overhead"])
        result[f"{key}_reject_first_1k_ns"] = r(row["first"])
        result[f"{key}_reject_after_{flood_label}_ns"] = r(row["after"])
        result[f"{key}_reject_mem_growth_{flood_label}_kib"] = r(row["mem_kib"])
    result["best_peer"] = best_peer_name
    result["goal_overhead_met"] = goal_overhead
    result["goal_rejection_met"] = goal_reject
    # Overhead above a bare await, ours over that of the cheapest peer (<1: cheaper).
    result["ratio_to_best_peer"] = round(ours_overhead / best_peer_overhead, 3)
    result["best_peer_rejection"] = best_peer_reject_name
    result["rejection_ratio_to_best_peer"] = round(worst_ours_reject / best_peer_reject, 3)
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and repetitions (a smoke run)")
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.quick))))
