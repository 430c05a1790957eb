# OFP developer entry points. Everything installs into ./.venv; nothing global.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-dev

.PHONY: install run test lint typecheck unit integration protos clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

## make run: embedded Postgres + sample stream + projector + server; Ctrl-C stops it.
run: install
	$(VENV)/bin/ofp dev

## make test: lint, type check, then the whole test suite.
test: lint typecheck
	$(PY) -m pytest -q -p no:cacheprovider tests

lint: install
	$(VENV)/bin/ruff check .
	$(PY) tools/gen_contracts.py --check
	$(VENV)/bin/buf lint

typecheck: install
	$(VENV)/bin/mypy libs services tools

unit: install
	$(PY) -m pytest -q -p no:cacheprovider tests/unit

## The integration and end-to-end tests alone (used by .ci/run against a second server).
integration: install
	$(PY) -m pytest -q -p no:cacheprovider tests/integration tests/e2e

## Regenerate the .proto, the schema module and the Python stubs from protos/rtdl.
protos: install
	$(PY) tools/gen_contracts.py

clean:
	rm -rf $(VENV) .ofp .pytest_cache .mypy_cache .ruff_cache
