//! The backstop (chart value `backstop.enabled`): a ValidatingAdmissionPolicy evaluated inside a
//! real kube-apiserver, with no webhook. Its CEL expressions against a table of images, and the
//! outage it exists for: pinhook stopped, webhooks on `failurePolicy: Ignore`, a Deployment is
//! admitted but its Pods are refused with the backstop's message; pinhook back, the ReplicaSet
//! controller's retries create them pinned.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::cluster::{
    Cluster, TEST_LABEL, cluster, deployment, list_of, render_chart, wait_for, wait_registered,
};
use common::registry::{Registry, TestImage, free_port};
use common::{Options, Pinhook};
use serde_json::{Value, json};

const DIGEST: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The chart rendered with the backstop on for namespaces labelled `test`, plus `values`.
fn backstop_docs(test: &str, values: &str) -> Vec<Value> {
    let values = format!(
        "backstop:\n  enabled: true\nwebhook:\n  namespaceLabels:\n    {TEST_LABEL}: {test}\n{values}"
    );
    render_chart("bootstrap", test, &format!("pinhook-{test}"), &values)
}

/// Waits until the API server enforces the backstop in `ns` (policies load asynchronously).
fn wait_enforced(c: &Cluster, ns: &str) {
    wait_for(
        Duration::from_secs(30),
        "the backstop to be enforced",
        || {
            let out = c.dry_run_pod(ns, "probe:1.0");
            out.stderr.contains("pinhook backstop").then_some(())
        },
    );
}

/// A Pod with the given containers, init containers and image volumes.
fn pod(containers: &[&str], init: &[&str], volumes: &[&str]) -> Value {
    let list = |prefix: &str, images: &[&str]| -> Vec<Value> {
        images
            .iter()
            .enumerate()
            .map(|(i, image)| json!({"name": format!("{prefix}{i}"), "image": image}))
            .collect()
    };
    let vols: Vec<Value> = volumes
        .iter()
        .enumerate()
        .map(|(i, r)| json!({"name": format!("vol{i}"), "image": {"reference": r}}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "table"},
        "spec": {"containers": list("app", containers), "initContainers": list("init", init),
            "volumes": vols}})
}

#[test]
fn the_cel_expressions_against_a_table_of_images() {
    let c = cluster();
    let ns = "backstop-table";
    let policy = "policy:\n  exemptImages:\n    - registry.k8s.io/pause:*\n    - docker.io/library/busybox*\n";
    let docs = backstop_docs(ns, policy);
    c.apply(&list_of(
        &docs,
        &[
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ],
    ));
    c.namespace(ns, Some(ns));
    wait_enforced(c, ns);

    let pinned = format!("registry.example.com:5000/shop/web:1.0@{DIGEST}");
    let allowed: Vec<(&str, Value)> = vec![
        (
            "tag and digest, registry with a port",
            pod(&[&pinned], &[], &[]),
        ),
        (
            "digest only",
            pod(
                &[&format!("registry.example.com:5000/shop/web@{DIGEST}")],
                &[],
                &[],
            ),
        ),
        (
            "Docker Hub short name with digest",
            pod(&[&format!("nginx@{DIGEST}")], &[], &[]),
        ),
        (
            "exempt by exemptImages",
            pod(&["registry.k8s.io/pause:3.10"], &[], &[]),
        ),
        (
            "exempt Docker Hub glob, short name",
            pod(&["busybox"], &["busybox:1.36"], &[]),
        ),
        (
            "pinned image volume",
            pod(
                &[&pinned],
                &[],
                &[&format!("quay.io/acme/model:2@{DIGEST}")],
            ),
        ),
    ];
    let refused: Vec<(&str, Value, &str)> = vec![
        (
            "a registry port is not a tag",
            pod(&["registry.example.com:5000/shop/web"], &[], &[]),
            "container \"app0\" image \"registry.example.com:5000/shop/web\"",
        ),
        (
            "implicit latest",
            pod(&["nginx"], &[], &[]),
            "container \"app0\" image \"nginx\"",
        ),
        (
            "a version tag is still a tag",
            pod(&["nginx:1.27.3"], &[], &[]),
            "nginx:1.27.3",
        ),
        (
            "upper-case digest algorithm",
            pod(&[&format!("nginx@SHA256:{}", &DIGEST[7..])], &[], &[]),
            "SHA256",
        ),
        (
            "short digest",
            pod(&["nginx@sha256:0123"], &[], &[]),
            "nginx@sha256:0123",
        ),
        (
            "upper-case repository",
            pod(&["ghcr.io/Acme/App:1.0"], &[], &[]),
            "ghcr.io/Acme/App:1.0",
        ),
        (
            "init container",
            pod(&[&pinned], &["alpine:3.20"], &[]),
            "init container \"init0\" image \"alpine:3.20\"",
        ),
        (
            "image volume",
            pod(&[&pinned], &[], &["quay.io/acme/model:latest"]),
            "volume \"vol0\" image \"quay.io/acme/model:latest\"",
        ),
        (
            "exemptImages is not a prefix match",
            pod(&["registry.k8s.io/pause-evil:1"], &[], &[]),
            "pause-evil",
        ),
    ];
    for (case, p) in allowed {
        let out = c.kubectl_in(
            &["create", "-n", ns, "--dry-run=server", "-f", "-"],
            &p.to_string(),
        );
        assert!(out.ok, "{case}: refused: {}", out.stderr);
    }
    for (case, p, needle) in refused {
        let out = c.kubectl_in(
            &["create", "-n", ns, "--dry-run=server", "-f", "-"],
            &p.to_string(),
        );
        assert!(!out.ok, "{case}: admitted");
        assert!(
            out.stderr
                .contains("pinhook backstop (backstop-table-pinhook-backstop)"),
            "{case}: {}",
            out.stderr
        );
        assert!(
            out.stderr.contains(needle),
            "{case}: {needle:?} not in {}",
            out.stderr
        );
    }

    // On UPDATE only new images are judged: a Pod admitted before the backstop keeps working.
    let legacy_ns = "backstop-legacy";
    c.namespace(legacy_ns, None);
    c.ok(&["run", "legacy", "-n", legacy_ns, "--image=nginx:1.27"]);
    c.ok(&[
        "label",
        "namespace",
        legacy_ns,
        &format!("{TEST_LABEL}={ns}"),
    ]);
    wait_enforced(c, legacy_ns);
    c.ok(&["label", "-n", legacy_ns, "pod/legacy", "tier=web"]);
    let changed = c.kubectl(&[
        "set",
        "image",
        "-n",
        legacy_ns,
        "pod/legacy",
        "legacy=nginx:1.28",
    ]);
    assert!(
        !changed.ok && changed.stderr.contains("nginx:1.28"),
        "{changed:?}"
    );
}

#[test]
fn with_pinhook_down_workloads_are_admitted_but_their_pods_wait_for_it() {
    let c = cluster();
    let ns = "backstop-outage";
    let reg = Registry::plain();
    let digest = reg.push("shop/web", "1.0", &TestImage::single("backstop"));
    let port = free_port();
    let policy = format!(
        "registries:\n  - host: \"{}\"\n    insecure: true\n",
        reg.host
    );
    let start = || {
        Pinhook::start_with(Options {
            policy: Some(policy.clone()),
            listen: Some(format!("127.0.0.1:{port}")),
            ..Default::default()
        })
    };
    let pinhook = start();
    let ca = base64::engine::general_purpose::STANDARD.encode(&pinhook.ca_pem);
    // The documented combination: backstop on, webhooks on Ignore.
    let docs = render_chart(
        "secret",
        ns,
        &format!("pinhook-{ns}"),
        &format!(
            "backstop:\n  enabled: true\nwebhook:\n  failurePolicy: Ignore\n  url: https://127.0.0.1:{port}\n  \
             namespaceLabels:\n    {TEST_LABEL}: {ns}\ncertificates:\n  mode: secret\n  secret:\n    \
             name: unused\n    caBundle: {ca}\n"
        ),
    );
    c.apply(&list_of(
        &docs,
        &[
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
            "ValidatingAdmissionPolicy",
            "ValidatingAdmissionPolicyBinding",
        ],
    ));
    c.namespace(ns, Some(ns));
    wait_registered(c, ns);
    drop(pinhook);
    // The policy is loaded asynchronously: wait until it refuses a Pod (pinhook being down, the
    // webhooks let the probe through to it), so the Deployment's Pods cannot slip in before.
    wait_enforced(c, ns);

    let image = format!("{}/shop/web:1.0", reg.host);
    c.apply_in(ns, &deployment("web", &image, 2).to_string());
    let d = c.get(Some(ns), &["deployment", "web"]);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"], image,
        "admitted unpinned while pinhook is down"
    );
    // The ReplicaSet controller tries to create the Pods and the backstop refuses them.
    let refusal = wait_for(Duration::from_secs(60), "a FailedCreate event", || {
        c.items(ns, "events").into_iter().find(|e| {
            e["reason"] == "FailedCreate"
                && e["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("pinhook backstop"))
        })
    });
    let message = refusal["message"].as_str().unwrap();
    assert!(
        message.contains(&format!(
            "container \"app\" image \"{image}\" is not pinned by digest"
        )),
        "{message}"
    );
    assert!(c.items(ns, "pods").is_empty());

    // pinhook is back (same port; the webhooks trust its new CA): the retries create the Pods,
    // pinned.
    let pinhook = start();
    let ca = base64::engine::general_purpose::STANDARD.encode(&pinhook.ca_pem);
    for kind in [
        "mutatingwebhookconfiguration",
        "validatingwebhookconfiguration",
    ] {
        let name = format!("{ns}-pinhook");
        let patch =
            json!([{"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": ca}]);
        c.ok(&[
            "patch",
            kind,
            &name,
            "--type=json",
            "-p",
            &patch.to_string(),
        ]);
    }
    let pods = wait_for(Duration::from_secs(120), "the Pods, created pinned", || {
        let pods = c.items(ns, "pods");
        (pods.len() == 2).then_some(pods)
    });
    for p in pods {
        assert_eq!(
            p["spec"]["containers"][0]["image"],
            format!("{image}@{digest}")
        );
    }
}
