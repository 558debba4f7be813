//! `pinhook drift --cluster` against a real kube-apiserver and controller-manager
//! (tests/cluster), with the identity the chart gives it (`drift.rbac.enabled`): a TokenRequest
//! token of the chart's `RELEASE-drift` ServiceAccount, bound to the chart's ClusterRole. The
//! workloads are pinned to a real registry on 127.0.0.1; a tag is moved by pushing another
//! image to it. No webhook is registered: the objects are stored as written, and the
//! controllers create their ReplicaSets, Jobs' Pods and Deployments' Pods, which must not be
//! reported a second time.

mod common;

use std::time::Duration;

use common::cluster::{Cluster, cluster, deployment, pod, render_chart, wait_for};
use common::drift::{drift, policy_file};
use common::registry::{Registry, TestImage};
use serde_json::{Value, json};

const RELEASE: &str = "drifttest";
const RELEASE_NS: &str = "pinhook-drifttest";
/// The chart names its objects RELEASE-pinhook when the release name does not contain "pinhook".
const SA: &str = "drifttest-pinhook-drift";

/// Applies the chart's drift ServiceAccount, ClusterRole and ClusterRoleBinding (rendered with
/// `drift.rbac.enabled=true`, nothing else of the chart) and returns a kubeconfig with a token
/// of that ServiceAccount.
fn drift_identity(c: &Cluster, dir: &std::path::Path) -> std::path::PathBuf {
    let docs = render_chart(
        "bootstrap",
        RELEASE,
        RELEASE_NS,
        "drift:\n  rbac:\n    enabled: true\n",
    );
    let items: Vec<&Value> = docs
        .iter()
        .filter(|d| d["metadata"]["name"] == SA)
        .collect();
    let kinds: Vec<&str> = items.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"],
        "the chart's drift objects"
    );
    c.namespace(RELEASE_NS, None);
    c.apply(&json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string());
    let token = c.ok(&["create", "token", SA, "-n", RELEASE_NS, "--duration=1h"]);
    c.token_kubeconfig(dir, token.trim())
}

/// `kubectl auth can-i VERB RESOURCE [-A]` as the identity of `kubeconfig`.
fn can_i(c: &Cluster, kubeconfig: &std::path::Path, verb: &str, resource: &str) -> bool {
    let out = c.kubectl_as(kubeconfig, &["auth", "can-i", verb, resource, "-A"], None);
    match out.stdout.trim() {
        "yes" => true,
        "no" => false,
        other => panic!(
            "kubectl auth can-i {verb} {resource}: {other:?} {}",
            out.stderr
        ),
    }
}

#[test]
fn cluster_drift_reports_moved_tags_of_live_workloads_with_read_only_rbac() {
    let c = cluster();
    let reg = Registry::plain();
    let dir = tempfile::tempdir().unwrap();
    let policy = policy_file(dir.path(), &reg.host);
    let policy = policy.to_str().unwrap();
    let kubeconfig = drift_identity(c, dir.path());

    // Read-only, and only what drift lists: no Secrets, no writes, no watch.
    for resource in [
        "pods",
        "deployments.apps",
        "statefulsets.apps",
        "daemonsets.apps",
        "jobs.batch",
        "cronjobs.batch",
    ] {
        assert!(can_i(c, &kubeconfig, "list", resource), "list {resource}");
        assert!(can_i(c, &kubeconfig, "get", resource), "get {resource}");
        for verb in ["watch", "create", "update", "patch", "delete"] {
            assert!(!can_i(c, &kubeconfig, verb, resource), "{verb} {resource}");
        }
    }
    for resource in [
        "secrets",
        "configmaps",
        "serviceaccounts",
        "replicasets.apps",
    ] {
        assert!(!can_i(c, &kubeconfig, "get", resource), "get {resource}");
        assert!(!can_i(c, &kubeconfig, "list", resource), "list {resource}");
    }
    // And the API server says so, not only the authorizer's self-review.
    let secrets = c.kubectl_as(&kubeconfig, &["get", "secrets", "-A"], None);
    assert!(!secrets.ok, "{secrets:?}");
    assert!(secrets.stderr.contains("Forbidden"), "{secrets:?}");

    // Workloads pinned to the registry: a Deployment and a Job on shop/web:1.0.0 (which will
    // move), a bare Pod on shop/api:2.0.0 (which stays).
    let old = reg.push("shop/web", "1.0.0", &TestImage::single("cluster-drift-old"));
    let api = reg.push("shop/api", "2.0.0", &TestImage::single("cluster-drift-api"));
    let web = format!("{}/shop/web:1.0.0@{old}", reg.host);
    let ns = "drift-e2e";
    c.namespace(ns, None);
    let job = json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate"},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
            "containers": [{"name": "migrate", "image": web}]}}}});
    let items = json!({"apiVersion": "v1", "kind": "List", "items": [
        deployment("web", &web, 1),
        job,
        pod("api", &format!("{}/shop/api:2.0.0@{api}", reg.host)),
    ]});
    c.apply_in(ns, &items.to_string());
    // The controllers made the Deployment's Pod and the Job's Pod: both carry the moved image
    // too, and must be reported through their owners only.
    wait_for(Duration::from_secs(60), "the controllers' Pods", || {
        let pods = c.items(ns, "pods");
        (pods.len() == 3).then_some(())
    });

    // Before the move: all current.
    let before = drift(
        &["--cluster", "--policy", policy, "--output", "json"],
        Some(&kubeconfig),
        None,
    );
    assert_eq!(before.code, 0, "{before:#?}");
    let report = before.json();
    assert_eq!(report["moved"], json!([]), "{report}");
    assert_eq!(
        report["current"], 3,
        "Deployment, Job and bare Pod: {report}"
    );

    // The tag moves.
    let new = reg.push(
        "shop/web",
        "1.0.0",
        &TestImage::multi_arch("cluster-drift-new"),
    );
    assert_ne!(old, new);
    let after = drift(
        &["--cluster", "--policy", policy, "--output", "json"],
        Some(&kubeconfig),
        None,
    );
    assert_eq!(after.code, 1, "{after:#?}");
    let report = after.json();
    let moved = report["moved"].as_array().unwrap();
    let mut objects: Vec<&str> = moved
        .iter()
        .map(|m| m["object"].as_str().unwrap())
        .collect();
    objects.sort_unstable();
    assert_eq!(
        objects,
        ["Deployment drift-e2e/web", "Job drift-e2e/migrate"],
        "{report}"
    );
    let deploy = moved
        .iter()
        .find(|m| m["object"] == "Deployment drift-e2e/web")
        .unwrap();
    assert_eq!(
        deploy,
        &json!({
            "object": "Deployment drift-e2e/web",
            "site": "container \"app\"",
            "path": "spec.template.spec.containers[0]",
            "image": web,
            "tag": format!("{}/shop/web:1.0.0", reg.host),
            "pinned": old,
            "current": new,
        })
    );
    assert_eq!(report["current"], 1, "{report}");
    assert_eq!(report["unchecked"], json!([]), "{report}");
    assert_eq!(report["errors"], json!([]), "{report}");

    // --namespace limits the listing; as text, one line per moved reference.
    let scoped = drift(
        &["--cluster", "--policy", policy, "--namespace", ns],
        Some(&kubeconfig),
        None,
    );
    assert_eq!(scoped.code, 1, "{scoped:#?}");
    assert!(
        scoped.stdout.lines().count() == 2
            && scoped.stdout.contains(&format!(
                "moved: Deployment drift-e2e/web: container \"app\" \
                 (spec.template.spec.containers[0]): {}/shop/web:1.0.0 pinned to {old}, now {new}\n",
                reg.host
            )),
        "{scoped:#?}"
    );
    c.namespace("drift-e2e-empty", None);
    let empty = drift(
        &[
            "--cluster",
            "--policy",
            policy,
            "--namespace",
            "drift-e2e-empty",
        ],
        Some(&kubeconfig),
        None,
    );
    assert_eq!(empty.code, 0, "{empty:#?}");
    assert_eq!(
        empty.summary(),
        "pinhook drift: 0 pinned reference(s) checked, 0 moved, 0 unchecked, 0 error(s)"
    );

    // An identity without the chart's role: the API refuses, the report says which list and
    // why, and the status is 2 (incomplete), not 0.
    c.ok(&["create", "serviceaccount", "nobody", "-n", RELEASE_NS]);
    let token = c.ok(&[
        "create",
        "token",
        "nobody",
        "-n",
        RELEASE_NS,
        "--duration=1h",
    ]);
    let nobody_dir = tempfile::tempdir().unwrap();
    let nobody = c.token_kubeconfig(nobody_dir.path(), token.trim());
    let refused = drift(&["--cluster", "--policy", policy], Some(&nobody), None);
    assert_eq!(refused.code, 2, "{refused:#?}");
    assert!(
        refused.stderr.contains(
            "pinhook drift: cannot list deployments: deployments.apps is forbidden: \
             User \"system:serviceaccount:pinhook-drifttest:nobody\" cannot list resource \
             \"deployments\" in API group \"apps\" at the cluster scope (403 Forbidden)"
        ),
        "{refused:#?}"
    );
    assert!(refused.summary().ends_with(", 6 error(s)"), "{refused:#?}");
}
