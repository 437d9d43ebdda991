PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 8000
TARGET_PORT ?= 8100
TARGET_URL := http://127.0.0.1:$(TARGET_PORT)
export DEMO_TARGET_URL ?= $(TARGET_URL)

.DEFAULT_GOAL := help
.PHONY: help install run test test-fast test-browser screenshots worker beat serve lint migrations-check bench

help:  ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

$(INSTALLED): requirements.lock pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else "IncidentDesk needs Python 3.12 or newer; $(PYTHON) is " + sys.version.split()[0])'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-compile \
	  -r requirements.lock
	@touch $@

install: $(INSTALLED)  ## Create .venv with the locked dependencies

run: $(INSTALLED)  ## Run the desk in embedded mode, with demo data and the demo target system
	$(BIN)/python manage.py migrate --no-input -v0
	$(BIN)/python manage.py load_demo
	@echo "IncidentDesk: http://$(HOST):$(PORT)/  (sign in with a login above)"
	@echo "Play an incident in another terminal (the demo target system runs at $(TARGET_URL)):"
	@echo "  $(BIN)/python manage.py play_incident procurement   # a runaway ordering loop"
	@echo "  $(BIN)/python manage.py play_incident discount      # a 50% sale nobody announced"
	@echo "  $(BIN)/python manage.py play_incident devops        # deleting a critical snapshot"
	@cd client && ../$(BIN)/python -m incidents.target --demo --port $(TARGET_PORT) \
	  --secret "$${DEMO_TARGET_SECRET:-incidentdesk-demo-target}" & target=$$!; \
	  trap 'kill $$target 2>/dev/null' EXIT INT TERM; \
	  $(BIN)/uvicorn incidentdesk.asgi:application --host $(HOST) --port $(PORT) --lifespan on --log-level warning --ws-per-message-deflate false

test: test-fast test-browser  ## Run the whole test suite

test-fast: $(INSTALLED)  ## Everything but the browser tests
	$(BIN)/pytest -p no:playwright -m "not browser"

test-browser: $(INSTALLED)  ## The headless Chromium tests, in their own process
	$(BIN)/pytest -m browser

screenshots: $(INSTALLED)  ## Play the three incidents in Chromium and refresh docs/screenshots
	$(BIN)/pytest -m browser tests/test_incidents.py
	cp var/screenshots/incident-*.png docs/screenshots/

worker: $(INSTALLED)  ## A Celery worker (production mode)
	$(BIN)/celery -A incidentdesk worker --loglevel INFO

beat: $(INSTALLED)  ## Celery beat (production mode)
	$(BIN)/celery -A incidentdesk beat --loglevel INFO --schedule var/celerybeat-schedule

serve: $(INSTALLED)  ## The production layout: nginx, granian (HTTP), uvicorn (websockets), worker, beat
	BIN=$(BIN) deploy/serve.sh

lint: $(INSTALLED)  ## ruff, mypy and the import contracts (pyproject.toml)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy approvals incidentdesk
	$(BIN)/lint-imports

migrations-check: $(INSTALLED)  ## Fail if a model change has no migration
	$(BIN)/python manage.py makemigrations --check --dry-run

bench: $(INSTALLED)  ## All benchmarks (need PostgreSQL, Redis, wrk, nginx, Chromium)
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/proposals.py
	$(BIN)/python bench/queue_page.py
	$(BIN)/python bench/escalation_latency.py
	$(BIN)/python bench/killswitch_fanout.py
	$(BIN)/python bench/rollback.py
