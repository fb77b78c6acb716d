# Agent Platform. `make help` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SDK_SRC := sdk/python/src
# Our protos. The vendored google/api ones (protos/google/README.md) are imported, not
# generated: their Python code ships in googleapis-common-protos.
PROTO_FILES := $(shell find protos/agentplatform -name '*.proto')
VENDORED_PROTOS := $(shell find protos/google -name '*.proto')
# buf breaking compares protos/ with this commit. CI runs on a clean clone of main, where
# HEAD~1 is main before the change under test.
BREAKING_AGAINST ?= HEAD~1
# The venv's bin/ must be on PATH so protoc finds protoc-gen-mypy_grpc.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help venv browser protos openapi sdk migrate run test lint breaking fmt bench screenshots clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/.installed: pyproject.toml sdk/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e sdk/python --config-settings editable_mode=compat
	$(BIN)/pip install -q -e '.[dev]' --config-settings editable_mode=compat
	touch $@

venv: $(BIN)/.installed ## Create the virtualenv with every dependency

# The browser tests drive Debian's chromium through Playwright (the pip package brings only
# its driver; no browser download). Installed here when missing, as root with apt.
browser: ## Install Debian's chromium for the browser tests when it is missing (root + apt)
	@command -v chromium >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
		else \
			echo "The browser tests need Chromium: run 'sudo apt-get install -y chromium'" \
				"(Debian), or put a chromium binary on PATH." >&2; \
		fi; }

$(SDK_SRC)/.generated: $(BIN)/.installed $(PROTO_FILES) $(VENDORED_PROTOS)
	rm -rf $(SDK_SRC)/agentplatform/{v1,dispatch,vault,gateway}
	$(BIN)/python -m grpc_tools.protoc -I protos \
		--python_out=$(SDK_SRC) --mypy_out=$(SDK_SRC) \
		--grpc_python_out=$(SDK_SRC) --mypy_grpc_out=$(SDK_SRC) $(PROTO_FILES)
	touch $@

protos: $(SDK_SRC)/.generated ## Generate the Python SDK stubs (and type stubs) from protos/

openapi: protos ## Regenerate services/web/openapi.json from the protos and their comments
	$(BIN)/python -m services.web.openapi

sdk: protos ## Build the SDK wheel (generated stubs + client) into dist/
	rm -rf sdk/python/build
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w dist sdk/python
	@ls dist/agentplatform_sdk-*.whl

migrate: protos ## Apply the database migrations (embedded Postgres unless AP_DATABASE_URL is set)
	$(BIN)/python -m devtools.stack migrate

run: protos ## Run the whole platform locally: Postgres, migrations, the services, dev model
	$(BIN)/python -m devtools.stack run

test: protos browser ## Run the test suite against real Postgres, real gRPC and a real browser
	$(BIN)/python -m pytest -q

lint: protos breaking ## ruff format check, ruff check, import contracts, mypy (strict), buf lint, buf breaking, OpenAPI current
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy services ap_cli devtools tests bench sdk/python/src/agentplatform
	cd protos && $(CURDIR)/$(BIN)/buf lint
	$(BIN)/python -m services.web.openapi --check

breaking: venv ## buf breaking: protos/ must stay wire-compatible with $(BREAKING_AGAINST)
	@if git cat-file -e '$(BREAKING_AGAINST):protos/buf.yaml' 2>/dev/null; then \
		$(BIN)/buf breaking protos --against '.git#ref=$(BREAKING_AGAINST),subdir=protos' \
		&& echo "buf breaking: protos/ is wire-compatible with $(BREAKING_AGAINST)"; \
	else \
		echo "buf breaking: $(BREAKING_AGAINST) has no protos/ (first commit?); nothing to compare"; \
	fi

fmt: venv ## Format the code with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: protos ## Run the round-trip benchmark against a running stack (make run)
	$(BIN)/python bench/run_roundtrip.py

screenshots: protos browser ## Refresh docs/screenshots/ (the dashboard, light and dark) from the browser tests
	AP_SCREENSHOT_DIR=$(CURDIR)/docs/screenshots $(BIN)/python -m pytest -q tests/web/test_dashboard.py

clean: ## Remove the virtualenv, generated code and local data (refused while `make run` runs)
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) -m devtools.stack clean
	rm -rf $(VENV) $(SDK_SRC)/agentplatform/{v1,dispatch,vault,gateway} $(SDK_SRC)/.generated var \
		sdk/python/build dist
