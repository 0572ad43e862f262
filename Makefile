# Quick start: `make check` (set up, then the parity report) and `make test` (set up, then
# the test suite). Set-up makes .venv with the pinned CPU torch; it reruns when
# pyproject.toml changes. TORCH=... picks another torch (e.g. TORCH="torch==2.5.1").
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: check test lint typecheck sanitize compat bench setup clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,check]"
	touch $@

setup: $(VENV)/.installed

check: $(VENV)/.installed
	$(BIN)/reimpl check
	$(BIN)/reimpl demo

test: $(VENV)/.installed
	REIMPL_HYPOTHESIS_PROFILE=$${REIMPL_HYPOTHESIS_PROFILE:-ci} $(BIN)/python -m pytest -n auto -q

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(VENV)/.installed
	$(BIN)/mypy

# the C kernels under AddressSanitizer + UBSan, with the tests that reach them
sanitize: $(VENV)/.installed
	$(BIN)/nox -s sanitize

# the suite and `reimpl check --quick` on the lowest supported and the newest torch
compat: $(VENV)/.installed
	$(BIN)/nox -s compat

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis .mypy_cache .ruff_cache
