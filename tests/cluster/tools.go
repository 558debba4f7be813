//go:build tools

// The kubectl of the same Kubernetes release is built from this module
// (`go build k8s.io/kubernetes/cmd/kubectl`); this import keeps it in go.mod.
package main

import _ "k8s.io/kubernetes/cmd/kubectl"
