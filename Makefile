# Two commands do everything on a fresh machine (Python 3.11 + pip):
#   make run   - install into .venv and serve on http://$(HOST):$(PORT) (in-process mode, email to console)
#   make test  - install dev tools into .venv (and chromium, as root with apt-get), run ruff, mypy and all tests
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: run run-example worker test lint browser fmt clean bench drills audit

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

# The README's example app (examples/reports): Herald plus a job and an endpoint of its own.
run-example: $(VENV)/.run-deps
	LOG_FORMAT=$${LOG_FORMAT:-console} $(BIN)/python -m examples.reports

# Durable mode's worker process (TASK_BACKEND=arq, REDIS_URL=...): same as `arq tasks.worker.WorkerSettings`.
worker: $(VENV)/.run-deps
	LOG_FORMAT=$${LOG_FORMAT:-console} $(BIN)/python -m tasks.worker

lint: $(VENV)/.dev-deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# The dashboard's browser test drives Debian's chromium through Playwright (never `playwright install`).
# Installed here when missing and we can (root + apt-get); otherwise that test fails saying what is missing.
CHROMIUM := /usr/bin/chromium
browser:
	@if [ ! -x $(CHROMIUM) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium for the browser test (apt-get)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
			|| echo "could not install chromium: the browser test will fail" >&2; \
	fi

test: lint browser
	$(BIN)/python -m pytest

# Issue 6's drills at full size (docs/guarantees.md: 1,000 deliveries killed mid-batch, schemathesis at length, ...).
# `make test` runs the same drills in a short form that CI can afford.
drills: $(VENV)/.dev-deps
	HERALD_DRILLS=full $(BIN)/python -m pytest -m drill -p no:cacheprovider

# Known vulnerabilities in the pinned requirements (pip-audit). Needs an advisory service (PyPI's JSON API or
# OSV) on the network; --strict fails when a package could not be checked, rather than passing it unchecked.
audit: $(VENV)/.dev-deps
	$(BIN)/pip-audit --strict --progress-spinner off -r requirements.txt

# Issue 7's benchmarks (bench/run_all.py): docs/bench-results.md and docs/benchmarks.png, under ten minutes.
# HTTP load comes from Debian's wrk, installed here when missing and we can (root + apt-get); without it the
# benchmark falls back to a Python load generator and says so in the results.
bench: | $(BIN)/python
	$(PIP) -r requirements-bench.txt
	@if ! command -v wrk >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing wrk for the HTTP benchmark (apt-get)"; \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; } \
			|| echo "could not install wrk: using the Python load generator" >&2; \
	fi
	$(BIN)/python -m bench.run_all

fmt: $(VENV)/.dev-deps
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
