# Two entry points for a fresh machine: `make up` (run Kontor) and `make test` (run the tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The MCP conformance suite (npm, version pinned in its package-lock.json), installed once per lockfile.
CONFORMANCE := tests/conformance
CONFORMANCE_STAMP := $(CONFORMANCE)/node_modules/.installed
# The browser test's driver (playwright-core, pinned in its package-lock.json; it drives Debian's chromium).
BROWSER := tests/browser
BROWSER_STAMP := $(BROWSER)/node_modules/.installed

.PHONY: up test lint bench install

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip setuptools wheel
	# torch first and pinned: the CPU build, never the CUDA wheels.
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $(STAMP)

$(CONFORMANCE_STAMP): $(CONFORMANCE)/package.json $(CONFORMANCE)/package-lock.json
	cd $(CONFORMANCE) && npm ci --no-audit --no-fund
	touch $(CONFORMANCE_STAMP)

$(BROWSER_STAMP): $(BROWSER)/package.json $(BROWSER)/package-lock.json
	cd $(BROWSER) && npm ci --no-audit --no-fund
	touch $(BROWSER_STAMP)

install: $(STAMP)

up: $(STAMP)
	$(BIN)/kontor up

test: $(STAMP) $(CONFORMANCE_STAMP) $(BROWSER_STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/search.py
