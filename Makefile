# One command each for a fresh machine: `make demo`, `make test`; `make image` for the container image.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup system-deps demo test lint bench bench-smoke wheel image-deps base-image image image-test clean

setup: system-deps $(VENV)/.installed node_modules/.installed
	@# Bytecode for the editable install, as pip writes it for an installed one: where PYTHONDONTWRITEBYTECODE
	@# is set, every process (each spawned worker too) would otherwise compile the package again (0.05 s).
	@$(BIN)/python -m compileall -q src

# Servers and tools the tests start (Debian's packages): redis for the shared budget, Chromium for the coverage page,
# iproute2 (`ip netns`) for the hosts of tests/test_netns.py, PostgreSQL for the Iceberg catalog (tests/test_catalog.py).
system-deps:
	@command -v redis-server >/dev/null && command -v chromium >/dev/null && command -v ip >/dev/null && \
		ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server chromium iproute2 postgresql >/dev/null; }

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	touch $@

node_modules/.installed: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: setup
	$(BIN)/cryo-ingest demo --root ./archive

# Everything but the image's tests (pyproject's addopts leave out the `image` marker): on 3 processes
# first, since most tests wait (on a devnet, a server, a lease) more than they compute, so 3 fill 2
# cores, and worksteal evens out the files of 30-second tests; then, alone, the tests that measure a
# rate against the clock (marker `timing`), which other tests' load would make flaky.
test: setup
	$(BIN)/pytest -q -n 3 --dist worksteal -m 'not image and not timing'
	$(BIN)/pytest -q -m 'timing and not image'

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: setup
	$(BIN)/python bench/run.py --scaling
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/storage.py
	$(BIN)/python bench/provider.py

# The benchmark harness on a tiny chain, ethereum-etl included, nothing saved: so that it cannot rot.
bench-smoke: setup
	$(BIN)/python bench/run.py --blocks 20 --txs-per-block 10 --chunk-size 10 --iterations 1 --no-save
	$(BIN)/python bench/provider.py --smoke

# The sdist and the wheel in dist/, built against the pinned setuptools.
wheel: setup
	$(BIN)/python -m build --dependency-constraints-txt constraints.txt --outdir dist .

# What building the image needs where no docker daemon runs (Debian's packages).
image-deps:
	@command -v buildah >/dev/null && command -v debootstrap >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq buildah debootstrap >/dev/null; }

# The local stand-in for python:3.11-slim-bookworm where no registry answers (scripts/build-image.sh makes it on first use).
base-image: image-deps
	scripts/make-base-image.sh

# cryo_ingest:latest; a no-op when the image already carries the hash of its inputs.
image: image-deps
	scripts/build-image.sh

# A forced build with canary secrets, then the image's tests (tests/test_image.py).
image-test: setup image-deps
	$(BIN)/pytest -q -m image tests/test_image.py

clean:
	rm -rf $(VENV) node_modules archive dist
