# Two commands do everything on a fresh machine (Python 3.11 + pip):
#   make run   - install into .venv and serve on http://$(HOST):$(PORT) (in-process mode, email to console)
#   make test  - install dev tools into .venv, run ruff, mypy and the whole test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: run worker test lint fmt clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.run-deps: requirements.txt | $(BIN)/python
	$(PIP) -r requirements.txt
	touch $@

$(VENV)/.dev-deps: requirements.txt requirements-dev.txt | $(BIN)/python
	$(PIP) -r requirements-dev.txt
	touch $@ $(VENV)/.run-deps

run: $(VENV)/.run-deps
	LOG_FORMAT=$${LOG_FORMAT:-console} $(BIN)/python -m api

# Durable mode's worker process (TASK_BACKEND=arq, REDIS_URL=...): same as `arq tasks.worker.WorkerSettings`.
worker: $(VENV)/.run-deps
	LOG_FORMAT=$${LOG_FORMAT:-console} $(BIN)/python -m tasks.worker

lint: $(VENV)/.dev-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

fmt: $(VENV)/.dev-deps
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
