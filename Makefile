# Parley: the public make targets. `make run` and `make test` install what
# they need first; everything lives in .venv and node_modules at the repo root.
PYTHON_BOOT ?= python3
VENV := .venv
PY := $(VENV)/bin/python
BUF := node_modules/.bin/buf
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: help install run test gen check-gen lint bench clean

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

install: $(STAMP) ## Create .venv with Parley, its test tools, buf and grpcurl; node_modules; Debian's chromium if absent

$(STAMP): pyproject.toml package.json package-lock.json
	test -x $(PY) || $(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,otlp,web]"
	npm ci --no-audit --no-fund --loglevel=error
	scripts/install-chromium.sh
	touch $(STAMP)

PORT ?= 50051
DATA_DIR ?= ./data
run: install ## Start Parley all-in-one on localhost:50051, SQLite under ./data (make run PORT=… DATA_DIR=…)
	$(VENV)/bin/parley serve --host localhost --port $(PORT) --data-dir $(DATA_DIR)

test: install ## Lint, type-check, check generated stubs, run every test (vitest, then pytest)
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory check-gen
	npm test --workspace @parley/client
	$(VENV)/bin/pytest -n 2 --dist loadgroup $(PYTEST_ARGS)

gen: install ## Regenerate the Python stubs and the TypeScript messages from protos/
	scripts/gen.sh

check-gen: install ## Fail when committed stubs (Python and TypeScript) differ from a fresh generation
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && scripts/gen.sh $$tmp && \
	  for d in api identity room history file gateway; do \
	    diff -r -x __pycache__ clients/python/parley/$$d $$tmp/python/parley/$$d >/dev/null || \
	      { echo "stale stubs in clients/python/parley/$$d: run make gen"; exit 1; }; \
	  done && \
	  { diff -r clients/typescript/src/gen $$tmp/typescript >/dev/null || \
	      { echo "stale TypeScript in clients/typescript/src/gen: run make gen"; exit 1; }; } && \
	  echo "generated stubs are fresh"

lint: install ## ruff, mypy --strict, buf lint and buf format, tsc --strict
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(BUF) lint
	$(BUF) format --diff --exit-code
	npm run --silent --workspace @parley/client typecheck

bench: install ## Run the benchmarks (JSON on stdout)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) -m bench.identity_bench
	$(PY) -m bench.history_bench
	$(PY) -m bench.fanout_bench
	$(PY) -m bench.idle_memory_bench
	$(PY) -m bench.outbox_bench
	$(PY) -m bench.hardening_bench
	$(PY) -m bench.bus_bench
	$(PY) -m bench.scale_out_bench
	$(PY) -m bench.connection_life_bench
	$(PY) -m bench.file_bench
	npm run build --workspace @parley/client
	$(PY) -m bench.ts_fanout_bench

clean: ## Remove .venv, node_modules and caches (keeps ./data)
	rm -rf $(VENV) node_modules .mypy_cache .ruff_cache .pytest_cache
