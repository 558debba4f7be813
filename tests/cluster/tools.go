//go:build tools

// The kubectl of the same Kubernetes release is built from this module
// (`go build k8s.io/kubernetes/cmd/kubectl`), and the standalone kustomize it embeds
// (`go build sigs.k8s.io/kustomize/kustomize/v5`, for exec KRM functions); these imports keep
// both in go.mod.
package main

import (
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "sigs.k8s.io/kustomize/kustomize/v5/commands"
)
