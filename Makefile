# One command each for a fresh machine: `make demo`, `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup demo test lint bench bench-smoke clean

setup: $(VENV)/.installed node_modules/.installed

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
