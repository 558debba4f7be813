# The README's commands: `make demo`, `make test` and `make bench`. CI (.ci/run) calls `make test`.
CARGO ?= cargo

.PHONY: all build demo test test-deps fmt-check clippy unit bench bench-deps bench-core profile

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

## Benchmarks: pinhook, the baseline server and the load generator in the release profile, a real
## registry behind a delaying proxy; writes BENCHMARKS.md (under 10 minutes on 2 cores).
bench: test-deps bench-deps
	$(CARGO) build --locked --profile bench --bin pinhook --example baseline --example loadgen
	$(CARGO) bench --locked --bench e2e

bench-deps:
	scripts/install-bench-deps.sh

## Criterion micro-benchmarks of the pure core (reference parsing, policy, patch building).
bench-core:
	$(CARGO) bench --locked --bench core

## Where the warm path spends its instructions: callgrind on builds that keep their symbols
## (profile `profiling`); read the result with callgrind_annotate.
profile: test-deps bench-deps
	$(CARGO) build --locked --profile bench --bin pinhook --example loadgen --example baseline
	$(CARGO) build --locked --profile profiling --bin pinhook --example baseline
	BENCH_ONLY=callgrind BENCH_PINHOOK=target/profiling/pinhook \
	  BENCH_BASELINE=target/profiling/examples/baseline $(CARGO) bench --locked --bench e2e
	callgrind_annotate --inclusive=yes $$(ls -t target/bench/callgrind/mutate.out* | head -1) | head -60
