# The README's two commands: `make demo` and `make test`. CI (.ci/run) calls `make test`.
CARGO ?= cargo
# Python with the packaging tools (Helm renderer, kubernetes-validate, hadolint).
TOOLS_PY := .tools/venv/bin/python

.PHONY: all build demo test test-deps fmt-check clippy unit \
	packaging-deps packaging-check static image-check dockerfile-lint

all: build

build:
	$(CARGO) build --locked

## A local demo on the built-in policy: certificate, webhook, sample admissions, audit lines.
demo: test-deps build
	scripts/demo.sh

## Everything CI checks: formatting, lints, packaging, unit and integration tests.
test: test-deps fmt-check clippy packaging-check
	$(CARGO) test --locked --all-targets

test-deps: packaging-deps
	scripts/install-test-deps.sh

fmt-check:
	$(CARGO) fmt --check

clippy:
	$(CARGO) clippy --locked --all-targets -- -D warnings

## The packaging checks CI runs: Dockerfile lint, the static binary in the image's root filesystem.
packaging-check: dockerfile-lint image-check

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
