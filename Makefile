# The front door: `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PROTO_STAMP := src/inferstack/proto/.generated
PROTOS := $(shell find proto -name '*.proto')
SERVICES := $(BIN)/python scripts/services.py

.PHONY: install demo test lint check unit services-up services-down bench bench-inferflow bench-interactions clean

install: $(INSTALLED) $(PROTO_STAMP)

$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check pip==26.3
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $@

$(PROTO_STAMP): $(INSTALLED) $(PROTOS) scripts/gen_proto.py
	$(BIN)/python scripts/gen_proto.py
	touch $@

## Generate the sample data, apply, ingest, serve, fetch and print features, stop.
demo: install
	$(BIN)/python scripts/demo.py

## Lint, type-check, start the real services once, run every test, stop the services.
test: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(SERVICES) up
	set -o pipefail; eval "$$($(SERVICES) env)"; \
	  $(BIN)/pytest $(PYTEST_ARGS); status=$$?; \
	  [ -n "$$KEEP_SERVICES" ] || $(SERVICES) down; exit $$status

## Unit tests only: no services needed.
unit: install
	$(BIN)/pytest tests/unit

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

services-up: install
	$(SERVICES) up

services-down:
	$(SERVICES) down

## The feature store benchmark on the full sample data (see bench/README.md).
bench: install
	$(BIN)/python bench/featurestore.py $(BENCH_ARGS)

## The inferflow benchmark on the full sample data (see bench/README.md).
bench-inferflow: install
	$(BIN)/python bench/inferflow.py $(BENCH_ARGS)

## The interaction store benchmark, embedded and Redis + Cassandra (needs `make services-up`).
bench-interactions: install
	$(BIN)/python bench/interactions.py --distributed $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .inferstack .demo .services src/inferstack/proto/featurestore $(PROTO_STAMP)
