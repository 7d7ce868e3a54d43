"""Tick frames decoded per second: ``messages.parse`` against bare ``json.loads`` (the floor).

``parse`` must do at least one ``json.loads`` per frame, so the floor is the physical
baseline: the ratio says how much of the budget the typing, validation and message
construction cost. Frames are realistic ``tick`` stream frames (deriv-protocol.md 3.3)
for the simulator's symbols, with ``echo_req``, ``req_id`` and ``subscription``.

    python bench/codec_bench.py            # 200 000 frames, median of 7 runs
    python bench/codec_bench.py --quick    # 20 000 frames, median of 3 runs

Ends with one JSON line: {"bench": "codec", "parse_per_s", "json_loads_per_s", "ratio_to_floor"}.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend_core.deriv import messages
from backend_core.deriv.sim.market import DEFAULT_SYMBOLS, half_spread
from backend_core.deriv.sim.session import new_subscription_id


def make_frames(count: int, seed: int = 7) -> list[str]:
    """Tick frames as the API sends them, one subscription per symbol."""
    rng = random.Random(seed)
    subs = []
    for req_id, spec in enumerate(DEFAULT_SYMBOLS, start=1):
        subs.append((spec, new_subscription_id(rng.getrandbits(128)), req_id, spec.start_price))
    frames = []
    epoch = 1_700_000_000
    for i in range(count):
        index = i % len(subs)
        spec, sub_id, req_id, price = subs[index]
        price *= 1 + rng.gauss(0, 2e-4)
        subs[index] = (spec, sub_id, req_id, price)
        quote = round(price, spec.pip_size)
        spread = half_spread(quote, spec)
        if index == 0:
            epoch += 1
        frame = {
            "echo_req": {"ticks": spec.symbol, "subscribe": 1, "req_id": req_id},
            "msg_type": "tick",
            "req_id": req_id,
            "subscription": {"id": sub_id},
            "tick": {
                "ask": round(quote + spread, spec.pip_size),
                "bid": round(quote - spread, spec.pip_size),
                "epoch": epoch,
                "id": sub_id,
                "pip_size": spec.pip_size,
                "quote": quote,
                "symbol": spec.symbol,
            },
        }
        frames.append(json.dumps(frame, separators=(",", ":")))
    return frames


def rate(decode: Callable[[str], object], frames: list[str]) -> float:
    gc.collect()
    started = time.perf_counter()
    for frame in frames:
        decode(frame)
    elapsed = time.perf_counter() - started
    return len(frames) / elapsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (20 000 frames, 3 runs)")
    parser.add_argument("--frames", type=int, default=None, help="number of frames (default 200 000)")
    parser.add_argument("--runs", type=int, default=None, help="runs per decoder; the median is reported")
    args = parser.parse_args(argv)
    count = args.frames or (20_000 if args.quick else 200_000)
    runs = args.runs or (3 if args.quick else 7)
    if count < 1 or runs < 1:
        parser.error("--frames and --runs must be positive")

    frames = make_frames(count)
    # Correctness first: every frame must decode to a tick.
    assert all(isinstance(messages.parse(f), messages.TickMessage) for f in frames[:1000])

    loads = json.loads
    parse = messages.parse
    rate(loads, frames[:1000])  # warm-up
    rate(parse, frames[:1000])
    floor_rates, parse_rates = [], []
    for _ in range(runs):  # interleaved, so drift in machine load hits both alike
        floor_rates.append(rate(loads, frames))
        parse_rates.append(rate(parse, frames))
    floor = statistics.median(floor_rates)
    parsed = statistics.median(parse_rates)
    ratio = parsed / floor

    size = statistics.mean(len(f) for f in frames[:1000])
    print(f"tick frames: {count} (mean {size:.0f} bytes), runs: {runs}, python {sys.version.split()[0]}")
    print(f"{'decoder':<28}{'frames/s':>14}{'us/frame':>11}{'vs floor':>10}")
    print(f"{'json.loads (floor)':<28}{floor:>14,.0f}{1e6 / floor:>11.2f}{1.0:>10.2f}")
    print(f"{'messages.parse':<28}{parsed:>14,.0f}{1e6 / parsed:>11.2f}{ratio:>10.2f}")
    print(
        json.dumps(
            {
                "bench": "codec",
                "parse_per_s": round(parsed),
                "json_loads_per_s": round(floor),
                "ratio_to_floor": round(ratio, 3),
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
