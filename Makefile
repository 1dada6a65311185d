# pacs_server: the two commands are `make run` and `make test`.
#
# Everything runs from the project virtualenv (.venv), created on first use. The install
# step is keyed on the contents of pyproject.toml: it re-runs pip only when the
# dependencies or entry points change (or .venv is new), so repeated targets are cheap.

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
VENV_PY := $(BIN)/python

# Stamp file named after a checksum of pyproject.toml (cksum is POSIX, so this also works
# on macOS). Editing pyproject.toml, or checking out a branch with other dependencies,
# changes the name, so the next target reinstalls.
PYPROJECT_SUM := $(firstword $(shell cksum < pyproject.toml))
STAMP := $(VENV)/.installed-$(PYPROJECT_SUM)

ARGS ?=
PYTEST_ARGS ?=
# scripts/bench/run.py runs its quick mode by default; BENCH_ARGS=--full for everything.
BENCH_ARGS ?=

.PHONY: help install run viewer test test-stock bench lint check clean distclean

help:
	@echo "make run        run pacs_server on the embedded defaults (AE PACS, port 11112,"
	@echo "                ./archive, ./pacs.db); extra options: make run ARGS='--port 4242'"
	@echo "make test       run the whole test suite (PYTEST_ARGS='-k store' to narrow it)"
	@echo "make test-stock the interop tests (dcmtk peers) again on server.transport: stock"
	@echo "make bench      quick benchmark (scripts/bench/run.py; BENCH_ARGS=--full for all)"
	@echo "make lint       ruff check, when ruff is installed"
	@echo "make check      scripts/check: generated docs in sync, configs valid, layering, ruff, mypy"
	@echo "make install    create .venv and install the package editable with test extras"
	@echo "make viewer     fetch the OHIF viewer for /viewer into ./.viewer (scripts/fetch-viewer)"
	@echo "make clean      remove caches and build artefacts (never archive/, pacs.db, logs/)"
	@echo "make distclean  clean, and remove .venv too"

$(VENV_PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): | $(VENV_PY)
	rm -f $(VENV)/.installed-*
	$(VENV_PY) -m pip install --disable-pip-version-check -e '.[test]'
	touch $@

install: $(STAMP)

# The OHIF viewer at /viewer: fetched into ./.viewer on first use (a no-op after that);
# without npm or network the server runs anyway and /viewer says how to install it.
run: $(STAMP)
	@scripts/fetch-viewer --if-npm || echo "make run: the viewer was not fetched; /viewer says how to install it" >&2
	$(BIN)/pacs_server $(ARGS)

viewer:
	scripts/fetch-viewer

# pytest exits 5 when it collected no tests; that is a failure here, not a pass.
test: $(STAMP)
	@echo "$(VENV_PY) -m pytest $(PYTEST_ARGS)"; \
	rc=0; $(VENV_PY) -m pytest $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	exit $$rc

# The interop subset again on pynetdicom's own reactors (server.transport: stock).
# The interop tests (dcmtk peers over the DICOM transport) again on pynetdicom's own
# reactors; the rest of the suite does not depend on the transport, and
# tests/integration/test_transport_reactors.py covers both in `make test`.
INTEROP_TESTS := $(wildcard tests/e2e/test_dcmtk_*.py) tests/e2e/test_move_under_load.py \
	tests/e2e/test_move_refusals.py tests/e2e/test_store_reserve.py \
	tests/e2e/test_storage_commitment_process.py tests/e2e/test_mpps_process.py

test-stock: $(STAMP)
	PACS_TRANSPORT=stock $(VENV_PY) -m pytest $(PYTEST_ARGS) $(INTEROP_TESTS)

bench: $(STAMP)
	$(VENV_PY) scripts/bench/run.py $(BENCH_ARGS)

lint:
	@if [ -x $(BIN)/ruff ]; then $(BIN)/ruff check src tests scripts; \
	elif command -v ruff >/dev/null 2>&1; then ruff check src tests scripts; \
	else echo "make lint: ruff is not installed (pip install ruff); skipped"; fi

check: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" scripts/check

clean:
	rm -rf build dist .pytest_cache .ruff_cache .mypy_cache src/*.egg-info
	rm -f $(VENV)/.installed-*
	find src tests scripts -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
