#!/usr/bin/env bash
# Builds the test control plane (tests/cluster): `testcluster` (embedded etcd, kube-apiserver and
# kube-controller-manager of Kubernetes v1.37.2 in one process) and the kubectl of the same
# release, into tests/cluster/bin/, and the standalone kustomize that kubectl embeds (kubectl's
# `kustomize` has no --enable-exec, so exec KRM functions need the standalone one). Go's build
# cache makes a second build take seconds.
set -euo pipefail
cd "$(dirname "$0")/../tests/cluster"
command -v go >/dev/null 2>&1 || { echo "build-cluster: Go is not installed (needs Go >= 1.26)" >&2; exit 1; }
mkdir -p bin
start=$(date +%s)
# The release the binaries report (kubectl version, the API server's /version), from go.mod.
v=$(awk '$1 == "k8s.io/kubernetes" { print $2 }' go.mod)
[[ $v =~ ^v1\.([0-9]+)\. ]] || { echo "build-cluster: cannot read the Kubernetes version from go.mod" >&2; exit 1; }
ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ldflags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=${BASH_REMATCH[1]} -X $pkg.gitTreeState=clean"
done
# No -mod flag: go.sum is committed
# and the module graph is read-only, so a build never edits go.mod.
go build -ldflags "$ldflags" -o bin/testcluster .
go build -ldflags "$ldflags" -o bin/kubectl k8s.io/kubernetes/cmd/kubectl
go build -o bin/kustomize sigs.k8s.io/kustomize/kustomize/v5
echo "build-cluster: tests/cluster/bin/{testcluster,kubectl,kustomize} at Kubernetes $v ($(( $(date +%s) - start )) s)"
