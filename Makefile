# Flowstate build entry points. Every target installs what it needs through `setup`, so
# `make test` and `make serve` work on a fresh machine (Python 3.11, Node 20, Go and the package
# registries are all it expects). `setup` is stamp-based: repeated runs are quick.
#
#   make setup            .venv (server + client, dev tools), TS node_modules, Go plugins, Go modules,
#                         Debian's postgresql-15 and chromium (apt-get, as root, when missing),
#                         the web console (console/dist)
#   make generate         regenerate every client from protos/ (scripts/generate.sh)
#   make lint             buf lint/format/breaking, ruff, mypy, import-linter, tsc (client, console), go vet,
#                         promtool check/test rules (deploy/prometheus)
#   make check-generated  regenerate and fail if clients/ changed (generated code is committed)
#   make test             pytest (tests/, clients/python/tests/), npm test, go test, examples/
#   make serve            run the server (flowstate serve)
#   make bench            benchmarks against the raw limits of the parts (~8 min; bench/README.md)
#   make mutate           mutation testing of flowstate.core and flowstate.service (docs/testing.md; long)
#   make mutate-sample    a fixed, seeded sample of those mutants (CI; a few minutes)
#   make record-error-fixtures  record the SDK fakes' errors again from real servers
#                         (tests/fixtures/errors; docs/testing.md)

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

# The interpreter that creates .venv (the project targets Python 3.11).
PYTHON_BOOTSTRAP ?= $(or $(shell command -v python3.11),python3)
VENV := .venv
PY := $(VENV)/bin/python
BUF := $(VENV)/bin/buf
TOOLS := .tools
STAMPS := $(TOOLS)/stamps
export GOBIN := $(CURDIR)/$(TOOLS)/bin
# gRPC's C core logs routine INFO lines to stderr by itself (docs/operations.md, "Logs"): errors
# only, in the test output too, unless the caller sets a level.
export GRPC_VERBOSITY ?= ERROR

# Go protoc plugins, installed into .tools/bin (gitignored) by `make setup`.
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.2
# promtool (Prometheus 3.x's Go module version) checks and unit-tests deploy/prometheus/.
PROMTOOL_VERSION := v0.316.0
PROMTOOL := $(TOOLS)/bin/promtool

# buf breaking baseline: .ci/breaking-baseline holds the commit (sha, tag or other git revision) of
# the last released API. `make lint` checks protos/ against it for breaking changes (FILE rules).
# It is empty until the API is first released: the check is then skipped with a message. A
# revision that does not exist is an error, so a typo cannot silently disable the check.
BREAKING_BASELINE_FILE := .ci/breaking-baseline

# Python test directories that exist (an empty tests/ is not tracked by git).
PYTEST_PATHS := $(wildcard tests clients/python/tests)

.PHONY: help setup generate lint check-generated test serve bench mutate mutate-sample \
	record-error-fixtures clean-tools

help:
	@sed -n 's/^#   make /  make /p' $(firstword $(MAKEFILE_LIST))

# --- setup -------------------------------------------------------------------------------------

setup: $(STAMPS)/venv $(STAMPS)/npm $(STAMPS)/protoc-gen-go@$(PROTOC_GEN_GO_VERSION) \
	$(STAMPS)/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION) $(STAMPS)/go-mod $(STAMPS)/pg15 \
	$(STAMPS)/console $(STAMPS)/chromium $(STAMPS)/promtool@$(PROMTOOL_VERSION)

$(STAMPS):
	@mkdir -p $@

$(VENV)/bin/python:
	$(PYTHON_BOOTSTRAP) -m venv $(VENV)

# pip's own output is ~300 lines; show one line per package it fetches and a summary instead of
# nothing for a minute or two (scripts/pip_progress.awk; errors go to stderr, unfiltered).
$(STAMPS)/venv: pyproject.toml clients/python/pyproject.toml | $(VENV)/bin/python $(STAMPS)
	@echo "== pip: installing the server, the Python client and the dev tools into $(VENV)" \
	  "(1-3 minutes on a fresh machine)"
	@PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 $(PY) -m pip install --progress-bar off --disable-pip-version-check \
	  -e clients/python -e '.[dev]' \
	  | awk -f scripts/pip_progress.awk
	@touch $@

# Debian's PostgreSQL 15 server binaries, for the tests that need a cluster run as a DBA would
# (flowstate.testing_postgres). Installed with apt-get when missing and run as root (CI); the
# package's default cluster is not created. Elsewhere those tests are skipped with a message.
PG_BINDIR := /usr/lib/postgresql/15/bin
$(STAMPS)/pg15: | $(STAMPS)
	@if [[ ! -x $(PG_BINDIR)/initdb && $$(id -u) == 0 ]] && command -v apt-get >/dev/null; then \
	  echo "== apt-get: installing postgresql-15 (tests run a cluster from $(PG_BINDIR))"; \
	  mkdir -p /etc/postgresql-common/createcluster.d; \
	  echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/flowstate.conf; \
	  apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    postgresql-15 >/dev/null; \
	fi
	@if [[ -x $(PG_BINDIR)/initdb ]]; then touch $@; else \
	  echo "note: no PostgreSQL 15 in $(PG_BINDIR): the external-cluster tests will be skipped" \
	    "(install postgresql-15 or set FLOWSTATE_PG_BINDIR)"; fi

$(STAMPS)/npm: clients/typescript/package.json clients/typescript/package-lock.json | $(STAMPS)
	cd clients/typescript && npm ci --no-audit --no-fund
	@touch $@

# The web console (console/, served by `flowstate serve` on its HTTP port): pinned npm packages
# (lock file) and an esbuild bundle in console/dist, rebuilt when its sources or the generated
# TypeScript client change. Nothing is fetched at run time.
CONSOLE_SOURCES := $(wildcard console/src/* console/build.mjs) \
	$(shell find clients/typescript/src/gen -name '*.ts' 2>/dev/null) clients/typescript/src/errors.ts
$(STAMPS)/console: console/package.json console/package-lock.json $(CONSOLE_SOURCES) | $(STAMPS)
	cd console && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build
	@touch $@

# Debian's chromium for the browser tests (tests/web/test_console_browser.py, Playwright with
# the system browser: Playwright downloads none). Installed with apt-get when missing, as root.
$(STAMPS)/chromium: | $(STAMPS)
	@if ! command -v chromium >/dev/null && [[ $$(id -u) == 0 ]] && command -v apt-get >/dev/null; then \
	  echo "== apt-get: installing chromium (browser tests of the console)"; \
	  apt-get update -qq; \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	    chromium fonts-dejavu-core >/dev/null; \
	fi
	@if command -v chromium >/dev/null; then touch $@; else \
	  echo "note: no chromium: the console's browser tests will be skipped (apt-get install chromium)"; fi

# promtool builds from source (the Go module proxy; 2-5 minutes once).
$(STAMPS)/promtool@$(PROMTOOL_VERSION): | $(STAMPS)
	@echo "== go install promtool@$(PROMTOOL_VERSION) (the alerting rules' checker; a few minutes once)"
	go install github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)
	@rm -f $(STAMPS)/promtool@*
	@touch $@

$(STAMPS)/protoc-gen-go@$(PROTOC_GEN_GO_VERSION): | $(STAMPS)
	go install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	@rm -f $(STAMPS)/protoc-gen-go@*
	@touch $@

$(STAMPS)/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION): | $(STAMPS)
	go install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	@rm -f $(STAMPS)/protoc-gen-go-grpc@*
	@touch $@

$(STAMPS)/go-mod: clients/go/go.mod clients/go/go.sum | $(STAMPS)
	cd clients/go && go mod download
	@touch $@

clean-tools:
	rm -rf $(TOOLS)

# --- generate ----------------------------------------------------------------------------------

generate: setup
	scripts/generate.sh

# The generated paths (hand-written SDK code beside them is not checked here), the Python SDK's
# blocking client included (generated from the asyncio one).
GENERATED_PATHS := clients/python/src/flowstate/v1 clients/typescript/src/gen clients/go/gen \
	clients/go/go.mod clients/go/go.sum clients/python/src/flowstate/client/_sync_client.py

check-generated: generate
	@changes="$$(git status --porcelain --untracked-files=all -- $(GENERATED_PATHS))"; \
	if [[ -n "$$changes" ]]; then \
	  echo "check-generated: the generated clients are out of date with protos/ (or clients/ has"; \
	  echo "uncommitted changes). Run 'make generate' and commit the result. Changes:"; \
	  echo "$$changes"; \
	  git --no-pager diff --stat -- $(GENERATED_PATHS); \
	  git --no-pager diff -- $(GENERATED_PATHS); \
	  exit 1; \
	fi; \
	echo "check-generated: clients/ is up to date with protos/"

# --- lint --------------------------------------------------------------------------------------

# Runs every check even if one fails (so one report shows every problem), then fails if any did.
lint: setup
	@failed=(); \
	check() { echo "+ $$*"; "$$@" || failed+=("$$*"); }; \
	check $(BUF) lint; \
	check $(BUF) format --exit-code -d; \
	check $(MAKE) breaking; \
	check $(VENV)/bin/ruff check .; \
	check $(VENV)/bin/ruff format --check .; \
	check $(VENV)/bin/mypy; \
	check $(VENV)/bin/lint-imports; \
	check bash -c 'cd clients/typescript && node_modules/.bin/tsc --noEmit'; \
	check bash -c 'cd console && node_modules/.bin/tsc --noEmit'; \
	check bash -c 'cd clients/go && go vet ./...'; \
	check bash -c 'cd bench/loadgen && test -z "$$(gofmt -l .)" && go vet ./...'; \
	check bash -c 'test -z "$$(gofmt -l examples/go)"'; \
	check $(PROMTOOL) check rules deploy/prometheus/alerts.yaml; \
	check $(PROMTOOL) test rules deploy/prometheus/alerts_test.yaml; \
	if (($${#failed[@]})); then printf 'lint failed: %s\n' "$${failed[@]}" >&2; exit 1; fi; \
	echo "lint: all checks passed"

.PHONY: breaking
breaking:
	@baseline="$$(sed -e 's/#.*//' $(BREAKING_BASELINE_FILE) 2>/dev/null | tr -d '[:space:]' || true)"; \
	if [[ -z "$$baseline" ]]; then \
	  echo "buf breaking: skipped ($(BREAKING_BASELINE_FILE) is empty or absent: no released API yet)"; \
	  exit 0; \
	fi; \
	if ! sha="$$(git rev-parse --verify --quiet "$$baseline^{commit}")"; then \
	  echo "buf breaking: $(BREAKING_BASELINE_FILE) names '$$baseline', which is not a commit of this" \
	    "clone (shallow clone? run 'git fetch --unshallow')" >&2; \
	  exit 1; \
	fi; \
	echo "buf breaking: protos/ against $$baseline ($$sha)"; \
	$(BUF) breaking protos --against ".git#ref=$$sha,subdir=protos"

# --- test --------------------------------------------------------------------------------------

# Runs every suite even if one fails, then fails if any did. pytest's exit code 5 (no tests
# collected) is a failure like any other non-zero code.
test: setup
	@status=0; \
	echo "== pytest $(PYTEST_PATHS)"; \
	$(VENV)/bin/pytest $(PYTEST_PATHS) || { echo "pytest failed (exit $$?)"; status=1; }; \
	echo "== npm test (clients/typescript, against scripts/with_test_server.py)"; \
	$(PY) scripts/with_test_server.py --tls -- bash -c 'cd clients/typescript && npm test' \
	  || { echo "npm test failed"; status=1; }; \
	echo "== go test (clients/go, against scripts/with_test_server.py)"; \
	$(PY) scripts/with_test_server.py --tls -- bash -c 'cd clients/go && go test ./...' \
	  || { echo "go test failed"; status=1; }; \
	echo "== examples (each SDK installed from its built artifact outside the repo; scripts/test_examples.py)"; \
	$(PY) scripts/test_examples.py || { echo "examples failed"; status=1; }; \
	exit $$status

# --- run ---------------------------------------------------------------------------------------

# Prints the gRPC address, the console URL and (local dev mode) a one-time sign-in link.
serve: setup
	$(VENV)/bin/flowstate serve

bench: setup
	$(VENV)/bin/python -m bench.run

# The errors the TypeScript and Go SDK tests' fake servers replay, recorded from real servers;
# tests/server/test_error_fixtures.py (part of `make test`) fails when they drift.
record-error-fixtures: setup
	FLOWSTATE_RECORD_ERROR_FIXTURES=1 $(VENV)/bin/pytest -p no:randomly \
	  tests/server/test_error_fixtures.py::test_the_fixtures_are_what_the_server_sends

# --- mutation testing (docs/testing.md) ----------------------------------------------------------

# The sample: MUTATE_SAMPLE mutants drawn with MUTATE_SEED; fails below MUTATE_SAMPLE_MIN percent
# of non-equivalent mutants killed. The full run fails below 90%.
MUTATE_SAMPLE ?= 60
MUTATE_SEED ?= 23
MUTATE_SAMPLE_MIN ?= 90

mutate: setup
	$(PY) scripts/mutate.py --paths core,service --min-score 90

# The sample is of the core only: a use-case mutant needs the database, and before its first
# mutant mutmut runs the whole storage suite once to learn which tests call what (minutes).
mutate-sample: setup
	$(PY) scripts/mutate.py --paths core --sample $(MUTATE_SAMPLE) --seed $(MUTATE_SEED) \
	  --min-score $(MUTATE_SAMPLE_MIN)
