"""``/api/v1/ws``: the relay that streams ticks and upstream status to API clients.

- :mod:`~backend_core.relay.protocol`: client messages, their validation and the server's
  frames (pure; mirrors ``docs/websocket-api.md``);
- :mod:`~backend_core.relay.policy`: rate limit, origin check, heartbeat, send watch (pure);
- :mod:`~backend_core.relay.resume`: replay planning after a reconnect (pure);
- :mod:`~backend_core.relay.server`: :class:`~backend_core.relay.server.Relay`, the I/O shell.
"""
