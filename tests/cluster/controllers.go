package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	logsapi "k8s.io/component-base/logs/api/v1"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
)

// kcm is kube-controller-manager, run in this process by its own cobra command.
type kcm struct {
	done chan error
}

func startControllerManager(kubeconfig string, p *pki) *kcm {
	// kube-apiserver applied the logging configuration already; the controller manager applies
	// the same one again, which component-base allows only when told so.
	logsapi.ReapplyHandling = logsapi.ReapplyHandlingIgnoreUnchanged
	k := &kcm{done: make(chan error, 1)}
	cmd := controllermanager.NewControllerManagerCommand()
	cmd.SetArgs([]string{
		"--kubeconfig=" + kubeconfig,
		"--controllers=" + strings.Join(controllers, ","),
		"--leader-elect=false",
		"--secure-port=0",
		"--use-service-account-credentials=false",
		"--service-account-private-key-file=" + p.path("sa.key"),
		"--root-ca-file=" + p.path("ca.crt"),
		"--concurrent-deployment-syncs=5",
		"--concurrent-replicaset-syncs=5",
		"--v=" + verbosity,
	})
	// Its Run never returns while the controllers work; the process ends it.
	go func() { k.done <- cmd.Execute() }()
	return k
}

// waitControllers returns once the deployment and replicaset controllers act on objects: a
// Deployment of zero replicas gets its ReplicaSet, and that ReplicaSet gets a status.
func waitControllers(ctx context.Context, c *kubernetes.Clientset, kcmDone <-chan error) error {
	const ns = "testcluster-probe"
	_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("probe namespace: %w", err)
	}
	zero := int32(0)
	labels := map[string]string{"app": "probe"}
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "probe"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &zero,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "probe", Image: "probe:1"}}},
			},
		},
	}
	if _, err := c.AppsV1().Deployments(ns).Create(ctx, d, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("probe deployment: %w", err)
	}
	err = poll(ctx, 2*time.Minute, "kube-controller-manager", kcmDone, func() bool {
		rs, err := c.AppsV1().ReplicaSets(ns).List(ctx, metav1.ListOptions{})
		return err == nil && len(rs.Items) == 1 && rs.Items[0].Status.ObservedGeneration >= 1
	})
	if err == nil {
		_ = c.CoreV1().Namespaces().Delete(ctx, ns, metav1.DeleteOptions{})
	}
	return err
}
