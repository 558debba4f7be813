# The README's two commands: `make demo` and `make test`. CI (.ci/run) calls `make test`.
CARGO ?= cargo

.PHONY: all build demo test test-deps fmt-check clippy unit

all: build

build:
	$(CARGO) build --locked

## A local demo on the built-in policy: certificate, webhook, sample admissions, audit lines.
demo: test-deps build
	scripts/demo.sh

## Everything CI checks: formatting, lints, unit and integration tests.
test: test-deps fmt-check clippy
	$(CARGO) test --locked --all-targets

test-deps:
	scripts/install-test-deps.sh

fmt-check:
	$(CARGO) fmt --check

clippy:
	$(CARGO) clippy --locked --all-targets -- -D warnings
