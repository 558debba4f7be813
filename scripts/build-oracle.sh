#!/usr/bin/env bash
# Builds the reference oracle (tests/oracle): distribution/reference — the image-reference parser
# the kubelet and containerd use — at the version in tests/oracle/go.mod, behind a small command
# that tests/reference_grammar.rs talks to. Also extracts every string literal of that version's
# own test files (its published test vectors) into tests/oracle/bin/distribution-vectors.jsonl.
# Nothing fetched is committed: the vectors come from the module cache at build time. Seconds
# with Go's caches warm.
set -euo pipefail
cd "$(dirname "$0")/../tests/oracle"
command -v go >/dev/null 2>&1 || { echo "build-oracle: Go is not installed (needs Go >= 1.26)" >&2; exit 1; }
mkdir -p bin
go build -o bin/reference-oracle .
dir=$(go list -m -f '{{.Dir}}' github.com/distribution/reference)
version=$(go list -m -f '{{.Version}}' github.com/distribution/reference)
shopt -s nullglob
tests=("$dir"/*_test.go)
(( ${#tests[@]} > 0 )) || { echo "build-oracle: no test files in $dir" >&2; exit 1; }
bin/reference-oracle extract "${tests[@]}" > bin/distribution-vectors.jsonl.tmp
mv bin/distribution-vectors.jsonl.tmp bin/distribution-vectors.jsonl
echo "build-oracle: tests/oracle/bin/reference-oracle (distribution/reference $version), $(wc -l < bin/distribution-vectors.jsonl) vectors from ${#tests[@]} test files"
