# Agent Platform. `make help` lists the targets.
.DEFAULT_GOAL := help
SHELL := /bin/bash

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SDK_SRC := sdk/python/src
PROTO_FILES := $(shell find protos -name '*.proto')
# buf breaking compares protos/ with this commit. CI runs on a clean clone of main, where
# HEAD~1 is main before the change under test.
BREAKING_AGAINST ?= HEAD~1
# The venv's bin/ must be on PATH so protoc finds protoc-gen-mypy_grpc.
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help venv protos sdk migrate run test lint breaking fmt bench clean

help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-10s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BIN)/.installed: pyproject.toml sdk/python/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e sdk/python --config-settings editable_mode=compat
	$(BIN)/pip install -q -e '.[dev]' --config-settings editable_mode=compat
	touch $@

venv: $(BIN)/.installed ## Create the virtualenv with every dependency

$(SDK_SRC)/.generated: $(BIN)/.installed $(PROTO_FILES)
	rm -rf $(SDK_SRC)/agentplatform/{v1,dispatch,vault,gateway}
	$(BIN)/python -m grpc_tools.protoc -I protos \
		--python_out=$(SDK_SRC) --mypy_out=$(SDK_SRC) \
		--grpc_python_out=$(SDK_SRC) --mypy_grpc_out=$(SDK_SRC) $(PROTO_FILES)
	touch $@

protos: $(SDK_SRC)/.generated ## Generate the Python SDK stubs (and type stubs) from protos/

sdk: protos ## Build the SDK wheel (generated stubs + client) into dist/
	rm -rf sdk/python/build
	$(BIN)/pip wheel -q --no-deps --no-build-isolation -w dist sdk/python
	@ls dist/agentplatform_sdk-*.whl

migrate: protos ## Apply the database migrations (embedded Postgres unless AP_DATABASE_URL is set)
	$(BIN)/python -m devtools.stack migrate

run: protos ## Run the whole platform locally: Postgres, migrations, four services, dev model
	$(BIN)/python -m devtools.stack run

test: protos ## Run the test suite against real Postgres and real gRPC
	$(BIN)/python -m pytest -q

lint: protos breaking ## ruff format check, ruff check, mypy (strict), buf lint, buf breaking
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy services ap_cli devtools tests bench sdk/python/src/agentplatform
	cd protos && $(CURDIR)/$(BIN)/buf lint

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

clean: ## Remove the virtualenv, generated code and local data (refused while `make run` runs)
	$(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) -m devtools.stack clean
	rm -rf $(VENV) $(SDK_SRC)/agentplatform/{v1,dispatch,vault,gateway} $(SDK_SRC)/.generated var \
		sdk/python/build dist
