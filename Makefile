# Two commands on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install serve test test-distributed lint typecheck demo bench bench-distributed mutate screenshots clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(BIN)/python -m csvcompress serve

demo: $(STAMP)
	$(BIN)/python -m csvcompress demo

# Minutes, not seconds: kept out of `make test`. Options: make bench BENCH_ARGS="--quick".
bench: $(STAMP)
	$(BIN)/python -m csvcompress.bench $(BENCH_ARGS)
	$(BIN)/python -m csvcompress.bench.distributed $(BENCH_DISTRIBUTED_ARGS)

# Distributed mode alone: 1 worker against 2 on a throw-away PostgreSQL and SeaweedFS.
bench-distributed: $(STAMP)
	$(BIN)/python -m csvcompress.bench.distributed $(BENCH_DISTRIBUTED_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check csvcompress tests
	$(BIN)/ruff format --check csvcompress tests
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy

# -rs: every skip is reported with its reason, so a lost case cannot hide.
test: lint typecheck
	$(BIN)/pytest -q -rs

# Mutation testing, minutes not seconds: kept out of `make test`. One module at a time, each
# against its own tests (pyproject.toml [tool.csvcompress.mutate.*]); writes
# tests/mutation/results.md and fails below 95% in any module. Options: MODULES="netguard retry".
mutate: $(STAMP)
	$(BIN)/python tests/mutation/run.py $(MODULES)

# Only the distributed mode's tests (real PostgreSQL and SeaweedFS); `make test` runs them too.
test-distributed: $(STAMP)
	$(BIN)/pytest -q tests/distributed

# Refresh the README's screenshots (docs/*.png) from the browser test; needs /usr/bin/chromium.
screenshots: $(STAMP)
	CSVCOMPRESS_SCREENSHOTS=1 $(BIN)/pytest -q tests/http/test_browser.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache mutants
