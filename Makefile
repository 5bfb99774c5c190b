# The two commands a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install browser demo run check test test-load unit integration faults fleet localstack localstack-stop lint format clean bench bench-stub bench-deps

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "Python 3.11+ needed"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## browser: headless Chromium from Debian's packages for tests/browser (as root, once; a
## machine that has `chromium` already is left alone). Playwright (in the dev extra)
## drives it through executable_path: `playwright install` is never needed.
BROWSER_PACKAGES := chromium fonts-liberation

browser:
	@command -v chromium >/dev/null && chromium --version 2>/dev/null || { \
	  apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $(BROWSER_PACKAGES) && \
	  chromium --version; }

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

## test-load: `make test` beside two busy CPU processes, as on a developer's machine with
## other work on it: a test that passes only on an idle machine fails here. The two
## processes end with the suite (trap), and after LOAD_S seconds whatever happens;
## TESTS=<paths or -k ...> runs part of the suite that way.
LOAD_S ?= 3600
BUSY   := import time; end = time.monotonic() + $(LOAD_S); any(iter(lambda: time.monotonic() >= end, True))

test-load: install
	@pids=""; trap 'kill $$pids 2>/dev/null' EXIT INT TERM; \
	for i in 1 2; do $(BIN)/python -c '$(BUSY)' & pids="$$pids $$!"; done; \
	echo "test-load: busy processes$$pids beside the suite"; \
	REQUIRE_LOCALSTACK="$(REQUIRE_LOCALSTACK)" $(BIN)/pytest -q -rs $(TESTS)

unit: install
	$(BIN)/pytest -q tests/unit

integration: install
	$(BIN)/pytest -q tests/integration

## faults: the fault-injection suite alone, figure table printed (FAULT_TASKS=N to change its size)
faults: install
	$(BIN)/pytest -q -s -m faults tests/faults

## fleet: three brokers on one queue and one Step Functions quota (the stub enforces it),
## one SIGKILLed and one added; the figure table printed (part of `make faults` and `make test`)
fleet: install
	$(BIN)/pytest -q -s -m faults tests/faults/test_fleet.py

## bench: the broker side by side with the seed loop, a thread pool and bbc/sqs-consumer on the
## loopback stub; table, JSON and chart in bench/results/ (FULL=1: 3 rounds, longer, 100k growth)
BENCH_STAMP := $(VENV)/.bench-installed
NODE_STAMP  := bench/node/node_modules/.package-lock.json

bench: bench-deps
	$(BIN)/python bench/run.py $(if $(FULL),--full)

## bench-stub: the stub's own capacity (calls/s with a raw-socket load generator)
bench-stub: bench-deps
	$(BIN)/python bench/stub_capacity.py

bench-deps: install $(BENCH_STAMP) $(NODE_STAMP)

$(BENCH_STAMP): pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

$(NODE_STAMP): bench/node/package.json bench/node/package-lock.json
	cd bench/node && npm ci --no-audit --no-fund

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
