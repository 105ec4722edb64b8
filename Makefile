# `make run` and `make test` work on a fresh machine: each makes the virtualenv it needs.
PYTHON ?= $(shell scripts/find-python)
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test test-fast lint typecheck bench check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.run-installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@ $(VENV)/.run-installed

run: $(VENV)/.run-installed
	$(BIN)/python manage.py runstack

# Uses DATABASE_URL / REDIS_URL / AWS_* when set; otherwise SQLite and a private Redis.
test: $(VENV)/.dev-installed
	$(BIN)/python -m stack.embedded $(BIN)/python -m pytest $(PYTEST_ARGS)

# Everything but the slow kinds: `e2e` (real uvicorn, Celery, nginx processes) and `browser`.
test-fast: $(VENV)/.dev-installed
	$(BIN)/python -m stack.embedded $(BIN)/python -m pytest -m "not e2e and not browser" $(PYTEST_ARGS)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev-installed
	$(BIN)/mypy .

check: lint typecheck
	$(BIN)/python manage.py makemigrations --check --dry-run

bench: $(VENV)/.dev-installed
	$(BIN)/pip install --quiet -r bench/requirements.txt
	$(BIN)/python -m stack.embedded $(BIN)/python -m bench.staging
	$(BIN)/python -m stack.embedded $(BIN)/python -m bench.sockets
	$(BIN)/python -m stack.embedded $(BIN)/python -m bench.load
	$(BIN)/python -m stack.embedded $(BIN)/python -m bench.load --profile production --users 100
	$(BIN)/python -m stack.embedded $(BIN)/python -m bench.capacity
	$(BIN)/python -m stack.embedded $(BIN)/python -m bench.status
	$(BIN)/python -m stack.embedded $(BIN)/python -m bench.webhooks

clean:
	rm -rf $(VENV) var
