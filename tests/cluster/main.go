// Command testcluster runs a real Kubernetes control plane for pinhook's end-to-end tests, built
// from the official k8s.io/kubernetes modules: embedded etcd, kube-apiserver and
// kube-controller-manager in one process on 127.0.0.1. There is no scheduler and no kubelet, so
// Pods stay Pending, which is all admission needs.
//
//	testcluster serve --dir DIR [--static-policies PDIR]
//	    run until SIGTERM/SIGINT; DIR/ready appears once usable. With --static-policies, the
//	    ValidatingAdmissionPolicy plugin also loads the policies in PDIR from disk
//	    (manifest-based admission control, beta in 1.37): they cannot be deleted through the API.
//
// DIR receives kubeconfig (cluster-admin, client certificate), audit.log (the API server's
// audit log, JSON lines), ca.crt, the service-account keys and etcd's data. Ports are chosen
// free at start, so several clusters (one per process) run side by side. scripts/testcluster
// wraps this with `up DIR` and `down DIR`.
package main

import (
	"flag"
	"fmt"
	"os"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "serve":
		fs := flag.NewFlagSet("serve", flag.ExitOnError)
		dir := fs.String("dir", "", "directory for the kubeconfig, audit log, certificates and etcd data")
		static := fs.String("static-policies", "", "directory of static ValidatingAdmissionPolicy manifests (*.static.k8s.io)")
		_ = fs.Parse(os.Args[2:])
		if *dir == "" {
			usage()
		}
		if err := serve(*dir, *static); err != nil {
			fmt.Fprintf(os.Stderr, "testcluster: %v\n", err)
			os.Exit(1)
		}
	default:
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: testcluster serve --dir DIR [--static-policies PDIR]")
	os.Exit(2)
}
