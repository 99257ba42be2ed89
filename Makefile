# One command each for a fresh machine: `make demo`, `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup system-deps demo test lint bench bench-smoke clean

setup: system-deps $(VENV)/.installed node_modules/.installed

# What the tests start as real processes besides ours: redis-server (the shared budget store), from Debian.
system-deps:
	@command -v redis-server >/dev/null || (apt-get update -qq && apt-get install -y -qq redis-server)

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: setup
	$(BIN)/cryo-ingest demo --root ./archive

test: setup
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/run.py --scaling
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/storage.py

# The benchmark harness on a tiny chain, ethereum-etl included, nothing saved: so that it cannot rot.
bench-smoke: setup
	$(BIN)/python bench/run.py --blocks 20 --txs-per-block 10 --chunk-size 10 --iterations 1 --no-save

clean:
	rm -rf $(VENV) node_modules archive
