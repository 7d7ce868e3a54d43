"""Gunicorn settings, read from the working directory by every gunicorn start.

``make run`` (``reflex run --env prod``) starts ``gunicorn --preload --worker-class
uvicorn.workers.UvicornH11Worker ...`` from the project root, and the Docker image runs the
same command in /app: both pick this file up (gunicorn's default ``--config`` is
``./gunicorn.conf.py``). Reflex names the worker class on the command line, so what the
uvicorn worker needs goes in through a hook, after the worker has built its
``uvicorn.Config`` and before it serves.

- The relay's frame size limit is enforced by uvicorn's WebSocket parser, before a frame
  is buffered (``backend_core/relay/serving.py``): an oversize frame on ``/api/v1/ws`` is
  refused with close 1009 as soon as its header arrives.
"""

from __future__ import annotations

from typing import Any

from backend_core.relay.serving import RelayWebSocketProtocol


def post_fork(server: Any, worker: Any) -> None:
    config = getattr(worker, "config", None)  # uvicorn workers only
    if config is not None and config.ws == "auto":
        config.ws = RelayWebSocketProtocol
