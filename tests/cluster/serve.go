package main

import (
	"context"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
)

// auditPolicy records every write to Pods and pod-bearing workloads with its request body
// (level Request), the webhook configurations and the secrets and service accounts pinhook
// reads at Metadata, and nothing else (keeps the log small enough to read in tests).
const auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Request
    verbs: [create, update, patch, delete, deletecollection]
    resources:
      - group: ""
        resources: [pods, pods/ephemeralcontainers, replicationcontrollers, podtemplates]
      - group: apps
        resources: [deployments, replicasets, statefulsets, daemonsets]
      - group: batch
        resources: [jobs, cronjobs]
  - level: Metadata
    resources:
      - group: ""
        resources: [secrets, serviceaccounts, serviceaccounts/token]
      - group: admissionregistration.k8s.io
        resources: [mutatingwebhookconfigurations, validatingwebhookconfigurations]
  - level: None
`

// controllers are the kube-controller-manager controllers pinhook's tests rely on.
var controllers = []string{
	"deployment-controller", "replicaset-controller", "statefulset-controller",
	"daemonset-controller", "job-controller", "cronjob-controller",
	"replicationcontroller-controller", "garbage-collector-controller",
	"namespace-controller", "serviceaccount-controller", "serviceaccount-token-controller",
}

// verbosity is the klog level of both components (they must agree: one logging configuration).
const verbosity = "1"

// admissionConfig points the ValidatingAdmissionPolicy plugin at a directory of static manifests.
const admissionConfig = `apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
  - name: ValidatingAdmissionPolicy
    configuration:
      apiVersion: apiserver.config.k8s.io/v1
      kind: ValidatingAdmissionPolicyConfiguration
      staticManifestsDir: %q
`

func serve(dir, staticPolicies string) error {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	_ = os.Remove(filepath.Join(dir, "ready"))
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	ctx = withOwner(ctx, os.Getenv("TESTCLUSTER_OWNER_PID"))

	ports, err := freePorts(3)
	if err != nil {
		return fmt.Errorf("choosing ports: %w", err)
	}
	etcdClient, etcdPeer, apiPort := ports[0], ports[1], ports[2]

	p, err := newPKI(dir)
	if err != nil {
		return fmt.Errorf("certificates: %w", err)
	}
	loopback := []net.IP{net.ParseIP("127.0.0.1"), net.ParseIP("10.0.0.1")}
	if err := p.leaf("apiserver", pkix.Name{CommonName: "kube-apiserver"}, x509.ExtKeyUsageServerAuth,
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"}, loopback); err != nil {
		return err
	}
	if err := p.leaf("admin", pkix.Name{CommonName: "kubernetes-admin", Organization: []string{"system:masters"}},
		x509.ExtKeyUsageClientAuth, nil, nil); err != nil {
		return err
	}
	if err := p.serviceAccountKeys(); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "ca.crt"), mustRead(p.path("ca.crt")), 0o644); err != nil {
		return err
	}
	policyFile := filepath.Join(dir, "audit-policy.yaml")
	if err := os.WriteFile(policyFile, []byte(auditPolicy), 0o644); err != nil {
		return err
	}
	var extraArgs []string
	if staticPolicies != "" {
		abs, err := filepath.Abs(staticPolicies)
		if err != nil {
			return err
		}
		cfg := filepath.Join(dir, "admission-config.yaml")
		if err := os.WriteFile(cfg, fmt.Appendf(nil, admissionConfig, abs), 0o644); err != nil {
			return err
		}
		extraArgs = append(extraArgs, "--admission-control-config-file="+cfg)
	}
	server := "https://127.0.0.1:" + strconv.Itoa(apiPort)
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if err := writeKubeconfig(kubeconfig, server, p); err != nil {
		return err
	}

	_, err = startEtcd(filepath.Join(dir, "etcd"), etcdClient, etcdPeer)
	if err != nil {
		return fmt.Errorf("etcd: %w", err)
	}
	// etcd ends with the process (see the end of serve).

	apiErr := make(chan error, 1)
	go func() {
		cmd := apiserver.NewAPIServerCommand()
		cmd.SetArgs(append(extraArgs,
			"--etcd-servers=http://127.0.0.1:"+strconv.Itoa(etcdClient),
			"--bind-address=127.0.0.1",
			"--advertise-address=127.0.0.1",
			"--secure-port="+strconv.Itoa(apiPort),
			"--cert-dir="+filepath.Join(dir, "apiserver"),
			"--tls-cert-file="+p.path("apiserver.crt"),
			"--tls-private-key-file="+p.path("apiserver.key"),
			"--client-ca-file="+p.path("ca.crt"),
			"--service-account-key-file="+p.path("sa.pub"),
			"--service-account-signing-key-file="+p.path("sa.key"),
			"--service-account-issuer=https://kubernetes.default.svc",
			"--api-audiences=https://kubernetes.default.svc",
			"--service-cluster-ip-range=10.0.0.0/24",
			"--authorization-mode=Node,RBAC",
			// Pods must not wait for the service-account controller to create "default" in a
			// namespace a test has just made; the token controllers run all the same.
			"--disable-admission-plugins=ServiceAccount",
			"--endpoint-reconciler-type=none",
			"--audit-policy-file="+policyFile,
			"--audit-log-path="+filepath.Join(dir, "audit.log"),
			"--audit-log-format=json",
			"--audit-log-mode=blocking",
			"--profiling=false",
			"--enable-priority-and-fairness=false",
			"--v="+verbosity,
		))
		apiErr <- cmd.ExecuteContext(ctx)
	}()

	client, err := clientFor(kubeconfig)
	if err != nil {
		return err
	}
	if err := waitReady(ctx, client, apiErr); err != nil {
		return err
	}

	kcm := startControllerManager(kubeconfig, p)
	if err := waitControllers(ctx, client, kcm.done); err != nil {
		return err
	}

	if err := os.WriteFile(filepath.Join(dir, "ready"), []byte(server+"\n"), 0o644); err != nil {
		return err
	}
	fmt.Printf("testcluster ready: %s (kubeconfig %s)\n", server, kubeconfig)

	select {
	case <-ctx.Done():
	case err := <-apiErr:
		return fmt.Errorf("kube-apiserver exited: %v", err)
	case err := <-kcm.done:
		return fmt.Errorf("kube-controller-manager exited: %v", err)
	}
	// A test cluster needs no graceful stop: its data is thrown away with DIR. Returning ends
	// the process, and with it the API server, the controllers and etcd.
	_ = os.Remove(filepath.Join(dir, "ready"))
	return nil
}

func startEtcd(dir string, clientPort, peerPort int) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Dir = dir
	cfg.Name = "testcluster"
	cu, _ := url.Parse("http://127.0.0.1:" + strconv.Itoa(clientPort))
	pu, _ := url.Parse("http://127.0.0.1:" + strconv.Itoa(peerPort))
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{*cu}, []url.URL{*cu}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{*pu}, []url.URL{*pu}
	cfg.InitialCluster = cfg.Name + "=" + pu.String()
	cfg.LogLevel = "error"
	// A test cluster's data need not survive a power cut; fsync would dominate its latency.
	cfg.UnsafeNoFsync = true
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, errors.New("not ready within 60s")
	}
}

func writeKubeconfig(path, server string, p *pki) error {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["testcluster"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: mustRead(p.path("ca.crt"))}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{
		ClientCertificateData: mustRead(p.path("admin.crt")),
		ClientKeyData:         mustRead(p.path("admin.key")),
	}
	cfg.Contexts["admin@testcluster"] = &clientcmdapi.Context{Cluster: "testcluster", AuthInfo: "admin", Namespace: "default"}
	cfg.CurrentContext = "admin@testcluster"
	return clientcmd.WriteToFile(*cfg, path)
}

func clientFor(kubeconfig string) (*kubernetes.Clientset, error) {
	rc, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	rc.QPS, rc.Burst = 100, 200
	return kubernetes.NewForConfig(rc)
}

// waitReady returns once the API server's /readyz answers ok.
func waitReady(ctx context.Context, client *kubernetes.Clientset, apiErr <-chan error) error {
	return poll(ctx, 3*time.Minute, "kube-apiserver", apiErr, func() bool {
		body, err := client.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil && string(body) == "ok"
	})
}

// poll calls done every 250 ms until it returns true; it gives up after limit, when ctx ends,
// or when the component (named in errors) reports on exited that it stopped.
func poll(ctx context.Context, limit time.Duration, component string, exited <-chan error, done func() bool) error {
	deadline := time.Now().Add(limit)
	for !done() {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready within %v", component, limit)
		}
		select {
		case err := <-exited:
			return fmt.Errorf("%s exited: %v", component, err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
	return nil
}

// withOwner ends ctx once the process OWNER (a pid) is gone, so a test run that dies never
// leaves its cluster behind. An empty owner changes nothing.
func withOwner(ctx context.Context, owner string) context.Context {
	pid, err := strconv.Atoi(owner)
	if owner == "" || err != nil || pid <= 0 {
		return ctx
	}
	ctx, cancel := context.WithCancel(ctx)
	go func() {
		defer cancel()
		for {
			// Signal 0 checks existence; a reused pid is possible but harmless for tests.
			if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
				fmt.Printf("testcluster: owner process %d is gone; stopping\n", pid)
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
			}
		}
	}()
	return ctx
}

func freePorts(n int) ([]int, error) {
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func mustRead(path string) []byte {
	b, err := os.ReadFile(path)
	if err != nil {
		panic(err)
	}
	return b
}
