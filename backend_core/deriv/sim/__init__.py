"""A local Deriv WebSocket API v3 server, wire-compatible for the subset the app uses.

``market`` (prices, history, candles, simulated time), ``schema`` (what requests are
accepted), ``session`` (one connection's protocol state), ``faults`` (the fault plan)
are pure; ``server`` (websockets) and ``control`` (the control interface, Starlette on
uvicorn, on a loopback port of its own) are the I/O shells; ``__main__`` is the
standalone command, ``python -m backend_core.deriv.sim``.
"""
