# The two commands a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo run check test unit integration faults localstack localstack-stop lint format clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ needed"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## demo: the seed workflows end to end on an embedded moto server (no AWS account)
demo: install
	$(BIN)/broker demo

## run: the broker with the settings in the environment / .env (CONFIG=file to add one)
run: install
	$(BIN)/broker $(if $(CONFIG),--config $(CONFIG)) run

check: install
	$(BIN)/broker $(if $(CONFIG),--config $(CONFIG)) check

## test: unit tests (fakes), integration tests (embedded moto server) and the LocalStack
## suite, which is skipped with its reason (-rs) when LocalStack is not up; CI runs
## `REQUIRE_LOCALSTACK=1 make test` so that a missing LocalStack fails instead
test: install
	REQUIRE_LOCALSTACK="$(REQUIRE_LOCALSTACK)" $(BIN)/pytest -q -rs

unit: install
	$(BIN)/pytest -q tests/unit

integration: install
	$(BIN)/pytest -q tests/integration

## faults: the fault-injection suite alone, figure table printed (FAULT_TASKS=N to change its size)
faults: install
	$(BIN)/pytest -q -s -m faults tests/faults

## localstack: LocalStack on 127.0.0.1:4566 without Docker, in its own Python 3.13
## virtualenv under .localstack/ (installed on first use); returns once it is healthy
localstack:
	scripts/localstack.sh start

localstack-stop:
	scripts/localstack.sh stop

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache *.egg-info
