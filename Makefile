# The front door: `make demo` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
PROTO_STAMP := src/inferstack/proto/.generated
PROTOS := $(shell find proto -name '*.proto')
SERVICES := $(BIN)/python scripts/services.py
# The console's browser tests drive Debian's chromium through Playwright (its own browser
# download is not available); installed once, with apt-get, where it is missing.
BROWSER_STAMP := $(VENV)/.chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# The compiled hot path (Rust, PyO3, module inferstack_native) is part of the package:
# setuptools-rust builds it with every install of the project, in place as
# src/inferstack_native.*.so for the editable one; rebuilt when one of these changes (its
# stub, src/inferstack_native.pyi, is read where it is).
NATIVE_STAMP := $(VENV)/.native-installed
NATIVE_SOURCES := native/Cargo.toml native/Cargo.lock $(shell find native/src -name '*.rs')
# cargo (needs rustc) for the crate's own checks, against the interpreter it is built for.
CARGO := cd native && PYO3_PYTHON=$(abspath $(BIN)/python) cargo

.PHONY: install demo test lint rust-check check unit services-up services-down bench bench-inferflow bench-interactions clean

install: $(INSTALLED) $(PROTO_STAMP) $(NATIVE_STAMP)

# The extension was once a distribution of its own (inferstack-native): removed, as it would
# hide the one now built in place.
$(INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check pip==26.3
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,all]'
	$(BIN)/pip uninstall --quiet --quiet --yes inferstack-native
	touch $@

# Only the extension again: the build requirements are in the venv (dev), so no isolated
# build environment; cargo keeps its cache in native/target, so a change to one .rs file
# recompiles only the crate.
$(NATIVE_STAMP): $(NATIVE_SOURCES) | $(INSTALLED)
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $@

$(PROTO_STAMP): $(INSTALLED) $(PROTOS) scripts/gen_proto.py
	$(BIN)/python scripts/gen_proto.py
	touch $@

$(BROWSER_STAMP): $(INSTALLED)
	command -v chromium >/dev/null || { $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q chromium; }
	touch $@

## Generate the sample data, apply, ingest, serve, fetch and print features, stop.
demo: install
	$(BIN)/python scripts/demo.py

## Lint, type-check, start the real services once, run every test, stop the services.
test: install $(BROWSER_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(MAKE) --no-print-directory rust-check
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
	$(BIN)/lint-imports

## The Rust crate's unit tests, clippy and rustfmt (versions from Cargo.lock).
rust-check: $(INSTALLED)
	$(CARGO) fmt --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(CARGO) test --locked

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
	rm -rf $(VENV) .inferstack .demo .services src/inferstack/proto \
	  src/inferstack_native.*.so
