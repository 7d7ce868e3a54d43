"""``python -m backend_core.deriv.sim``: run the simulator standalone until Ctrl-C or SIGTERM.

``--host 127.0.0.1 --port 8765 --control-port 8766 [--time-scale N] [--token T ...]
[--seed N]``; it refuses a non-loopback ``--host`` unless ``--allow-remote`` is given
(the control interface stays on loopback either way). It prints the WebSocket URL and
the control URL on one line, then stops cleanly on a signal.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import sys
from collections.abc import Sequence

from backend_core.deriv.sim.server import DerivSimulator, is_loopback_host


def build_arg_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m backend_core.deriv.sim",
        description="Run the local Deriv v3 WebSocket simulator until Ctrl-C or SIGTERM.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (loopback unless --allow-remote)")
    parser.add_argument("--port", type=int, default=8765, help="WebSocket port (0: any free port)")
    parser.add_argument(
        "--control-port", type=int, default=8766, help="control interface port, on loopback (0: any free port)"
    )
    parser.add_argument("--time-scale", type=float, default=1.0, help="simulated seconds per real second")
    parser.add_argument("--token", action="append", default=[], help="a token authorize accepts (repeatable)")
    parser.add_argument("--seed", default=None, help="seed for reproducible price paths")
    parser.add_argument("--allow-remote", action="store_true", help="allow binding a non-loopback address")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


async def _run(args: argparse.Namespace) -> None:
    simulator = DerivSimulator(
        args.host,
        args.port,
        time_scale=args.time_scale,
        accepted_tokens=args.token or None,
        seed=args.seed,
        allow_remote=args.allow_remote,
        control_port=args.control_port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    async with simulator:
        print(f"Deriv simulator on {simulator.url}?app_id=1089  control: {simulator.control_url}/<action>", flush=True)
        await stop.wait()
    print("Deriv simulator stopped", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_arg_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.allow_remote and not is_loopback_host(args.host):
        print(f"refusing to bind non-loopback host {args.host!r}; pass --allow-remote to do it", file=sys.stderr)
        return 2
    for name, port in (("--port", args.port), ("--control-port", args.control_port)):
        if not 0 <= port <= 65535:
            print(f"invalid {name} {port}", file=sys.stderr)
            return 2
    if not (math.isfinite(args.time_scale) and 0 < args.time_scale <= 10_000):
        print("--time-scale must be greater than 0 and at most 10000", file=sys.stderr)
        return 2
    try:
        asyncio.run(_run(args))
    except OSError as exc:
        print(f"cannot start the simulator: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
