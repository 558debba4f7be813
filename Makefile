# The README's commands: `make demo`, `make test` and `make bench`. CI (.ci/run) calls `make test`.
CARGO ?= cargo
# Python with the packaging tools (Helm renderer, kubernetes-validate, hadolint).
TOOLS_PY := .tools/venv/bin/python

.PHONY: all build cluster cluster-check oracle fuzz demo test test-deps fmt-check clippy unit bench bench-deps bench-core profile \
	packaging-deps packaging-check static image-check dockerfile-lint manifests chart-check

all: build

build:
	$(CARGO) build --locked

## A local demo on the built-in policy: certificate, webhook, sample admissions, audit lines.
demo: test-deps build
	scripts/demo.sh

## Everything CI checks: formatting, lints, packaging, the Go test harness, unit, integration
## and end-to-end tests (a real control plane: tests/cluster).
test: test-deps fmt-check clippy packaging-check cluster-check oracle
	$(CARGO) test --locked --all-targets
	scripts/fuzz.sh $(FUZZ_SECONDS)

## Seconds each fuzz target runs in `make test` (a short run; `make fuzz` runs longer).
FUZZ_SECONDS ?= 15

## Coverage-guided fuzzing, 10 minutes per target (cargo-fuzz, libFuzzer; see README "Fuzzing").
fuzz:
	scripts/fuzz.sh 600

## The reference oracle (tests/oracle): distribution/reference, the kubelet's image-reference
## parser, and its published test vectors, for tests/reference_grammar.rs.
oracle:
	scripts/build-oracle.sh
	@test -z "$$(gofmt -l tests/oracle)" || { echo "gofmt: $$(gofmt -l tests/oracle)" >&2; exit 1; }
	cd tests/oracle && go vet ./...

## The test control plane (tests/cluster): kube-apiserver, kube-controller-manager and etcd of
## the Kubernetes release in tests/cluster/go.mod, and its kubectl, into tests/cluster/bin/.
cluster:
	scripts/build-cluster.sh

## gofmt and go vet on the test control plane, then build it.
cluster-check: cluster
	@test -z "$$(gofmt -l tests/cluster)" || { echo "gofmt: $$(gofmt -l tests/cluster)" >&2; exit 1; }
	cd tests/cluster && go vet ./...

test-deps: packaging-deps
	scripts/install-test-deps.sh

fmt-check:
	cd fuzz && $(CARGO) fmt --check
	$(CARGO) fmt --check

clippy:
	$(CARGO) clippy --locked --all-targets -- -D warnings
	cd fuzz && $(CARGO) clippy --all-targets -- -D warnings

## The packaging checks CI runs: Dockerfile lint, the static binary in the image's root
## filesystem, the chart rendered in every mode and validated, manifests/ up to date.
packaging-check: dockerfile-lint image-check chart-check

packaging-deps:
	scripts/install-packaging-tools.sh

## The static binary the Dockerfile's build stage builds (same script).
static:
	scripts/build-static.sh

## The image's root filesystem (from the Dockerfile's final stage) run in a chroot.
image-check:
	python3 scripts/image_smoke.py "$$(scripts/build-static.sh)"

dockerfile-lint: packaging-deps
	.tools/venv/bin/hadolint Dockerfile

## manifests/: the chart rendered with its default values (certificates: bootstrap).
manifests: packaging-deps
	$(TOOLS_PY) scripts/chart.py manifests

chart-check: packaging-deps build
	$(TOOLS_PY) scripts/chart.py check
	@if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then \
	  git diff --exit-code --stat manifests/ || { echo "manifests/ is not the chart's render: run make manifests and commit" >&2; exit 1; }; \
	  test -z "$$(git status --porcelain --untracked-files=all manifests/)" || { echo "manifests/ has uncommitted files: commit them" >&2; git status --short manifests/ >&2; exit 1; }; \
	fi

## Benchmarks: pinhook, the baseline server and the load generator in the release profile, a real
## registry behind a delaying proxy; writes BENCHMARKS.md (under 10 minutes on 2 cores).
bench: test-deps bench-deps cluster
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
