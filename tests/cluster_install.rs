//! Installing pinhook into a real kube-apiserver (tests/cluster): every object of manifests/
//! and of the chart in each certificate mode is accepted by the API server, and pinhook run
//! with the token of the chart's ServiceAccount, under the chart's own RBAC enforced by the real
//! authorizer, bootstraps its certificate, is called by the API server with it, reads a pod's
//! pull secret in the pod's namespace, and is refused what the chart does not grant.

mod common;

use std::time::Duration;

use base64::Engine as _;
use common::Pinhook;
use common::cluster::{
    Cluster, TEST_LABEL, cluster, list_of, render_chart, root, wait_for, wait_registered,
};
use common::registry::{Registry, RegistryAuth, RegistryOptions, TestImage, free_port};
use serde_json::{Value, json};

/// The objects of a YAML stream.
fn yaml_docs(text: &str) -> Vec<Value> {
    use serde::Deserialize as _;
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|d| !d.is_null())
        .collect()
}

#[test]
fn manifests_and_every_chart_mode_are_accepted_by_the_api_server() {
    let c = cluster();
    let manifests = root().join("manifests");
    let ns_doc = std::fs::read_to_string(manifests.join("namespace.yaml")).unwrap();
    c.apply(&ns_doc);
    let docs = yaml_docs(&std::fs::read_to_string(manifests.join("pinhook.yaml")).unwrap());
    assert!(docs.len() >= 10, "{} objects", docs.len());

    // Every object, server-side dry run: admission, validation and defaulting of the real API.
    let dir = manifests.display().to_string();
    let dry = c.kubectl(&["apply", "--dry-run=server", "-f", &dir]);
    assert!(dry.ok, "{}", dry.stderr);
    let lines = dry
        .stdout
        .lines()
        .filter(|l| l.ends_with("(server dry run)"))
        .count();
    assert_eq!(lines, docs.len() + 1, "{}", dry.stdout);
    // The backstop's file, through the API (its static twin is tests/cluster_backstop_static.rs).
    let backstop = manifests
        .join("backstop/backstop.yaml")
        .display()
        .to_string();
    let dry = c.kubectl(&["apply", "--dry-run=server", "-f", &backstop]);
    assert!(dry.ok, "{}", dry.stderr);
    assert_eq!(dry.stdout.lines().count(), 2, "{}", dry.stdout);

    // Really applied: everything that needs no running pinhook Pod. The webhook configurations
    // would send every Pod in the cluster to a Service with no endpoint (there is no kubelet),
    // so those stay a dry run.
    let webhooks = [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ];
    let kinds: Vec<&str> = docs
        .iter()
        .map(|d| d["kind"].as_str().unwrap())
        .filter(|k| !webhooks.contains(k))
        .collect();
    c.apply(&list_of(&docs, &kinds));
    for d in docs
        .iter()
        .filter(|d| !webhooks.contains(&d["kind"].as_str().unwrap()))
    {
        let mut args = vec![
            d["kind"].as_str().unwrap(),
            d["metadata"]["name"].as_str().unwrap(),
        ];
        if let Some(ns) = d["metadata"]["namespace"].as_str() {
            args.extend(["-n", ns]);
        }
        args.extend(["-o", "name"]);
        c.ok(&["get"].into_iter().chain(args).collect::<Vec<_>>());
    }
    // The controllers act on the chart's Deployment: a ReplicaSet of two Pods.
    wait_for(Duration::from_secs(60), "the pinhook Pods", || {
        (c.items("pinhook", "pods").len() == 2).then_some(())
    });

    // Each certificate mode of the chart, in a namespace of its own.
    for mode in ["bootstrap", "certManager", "secret"] {
        let ns = format!("install-{}", mode.to_lowercase());
        c.namespace(&ns, None);
        let values = "certificates:\n  secret:\n    name: pinhook-tls\n    caBundle: \
                      LS0tLS1CRUdJTiBDRVJUSUZJQ0FURS0tLS0tCg==\n";
        let docs = render_chart(mode, "pinhook", &ns, values);
        // cert-manager's kinds need its CRDs, which no test cluster has; they are checked by
        // field in tests/chart.rs.
        let builtin: Vec<&str> = docs
            .iter()
            .filter(|d| {
                !d["apiVersion"]
                    .as_str()
                    .unwrap()
                    .starts_with("cert-manager.io/")
            })
            .map(|d| d["kind"].as_str().unwrap())
            .collect();
        let out = c.kubectl_in(
            &["apply", "--dry-run=server", "-n", &ns, "-f", "-"],
            &list_of(&docs, &builtin),
        );
        assert!(out.ok, "{mode}: {}", out.stderr);
        let accepted = out.stdout.lines().count();
        assert_eq!(accepted, builtin.len(), "{mode}: {}", out.stdout);
    }
}

#[test]
fn least_privilege_bootstrap_under_the_charts_own_rbac() {
    let c = cluster();
    let reg = Registry::start(RegistryOptions {
        auth: RegistryAuth::basic("puller", "s3cret"),
        ..Default::default()
    });
    let digest = reg.push("private/app", "1.0", &TestImage::single("least-privilege"));
    let port = free_port();
    let (release, release_ns, ns) = ("lp", "pinhook-lp", "lp-apps");
    let values = format!(
        "webhook:\n  url: https://127.0.0.1:{port}\n  namespaceLabels:\n    {TEST_LABEL}: lp\n\
         policy:\n  mode: enforce\n  registries:\n    - host: \"{host}\"\n      insecure: true\n",
        host = reg.host
    );
    let docs = render_chart("bootstrap", release, release_ns, &values);
    c.namespace(release_ns, None);
    c.apply(&list_of(
        &docs,
        &[
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "Role",
            "RoleBinding",
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ],
    ));
    let sa = docs.iter().find(|d| d["kind"] == "ServiceAccount").unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let user = format!("system:serviceaccount:{release_ns}:{sa}");

    // The chart's Deployment says how pinhook runs: its bootstrap flags and policy, taken as is.
    let deploy = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<String> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .filter(|a| a.starts_with("--bootstrap") || a.starts_with("--service-name"))
        .collect();
    assert!(
        args.iter()
            .any(|a| a == "--bootstrap-extra-names=127.0.0.1"),
        "{args:?}"
    );
    let secret = args
        .iter()
        .find_map(|a| a.strip_prefix("--bootstrap-secret="))
        .unwrap()
        .to_owned();
    let configmap = docs.iter().find(|d| d["kind"] == "ConfigMap").unwrap();
    let policy = configmap["data"]["policy.yaml"]
        .as_str()
        .unwrap()
        .to_owned();

    // Its credentials: a TokenRequest for the chart's ServiceAccount.
    let token = c.ok(&["create", "token", &sa, "-n", release_ns, "--duration=1h"]);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = c.token_kubeconfig(dir.path(), token.trim());
    let _pinhook = Pinhook::start_with(common::Options {
        policy: Some(policy),
        args,
        env: vec![
            ("KUBECONFIG".into(), kubeconfig.display().to_string()),
            ("PINHOOK_SERVICE_NAMESPACE".into(), release_ns.into()),
        ],
        no_cert_files: true,
        listen: Some(format!("127.0.0.1:{port}")),
        ..Default::default()
    });

    // It created its Secret and put its CA into both webhook configurations.
    let stored = c.get(Some(release_ns), &["secret", &secret]);
    let ca = base64::engine::general_purpose::STANDARD
        .decode(stored["data"]["ca.crt"].as_str().unwrap())
        .unwrap();
    let ca = String::from_utf8(ca).unwrap();
    for kind in [
        "mutatingwebhookconfiguration",
        "validatingwebhookconfiguration",
    ] {
        let name = docs
            .iter()
            .find(|d| d["kind"].as_str().unwrap().eq_ignore_ascii_case(kind))
            .unwrap()["metadata"]["name"]
            .as_str()
            .unwrap()
            .to_owned();
        wait_for(Duration::from_secs(20), "the caBundle", || {
            let w = c.get(None, &[kind, &name]);
            let bundle = w["webhooks"][0]["clientConfig"]["caBundle"].as_str()?;
            let pem = base64::engine::general_purpose::STANDARD
                .decode(bundle)
                .ok()?;
            String::from_utf8(pem)
                .ok()?
                .contains(ca.trim())
                .then_some(())
        });
    }

    // The API server calls it with that CA: a mutable tag is denied by pinhook.
    c.namespace(ns, Some("lp"));
    wait_registered(c, ns);

    // It reads the pod's pull secret, in the pod's namespace, to pin a private image.
    c.ok(&[
        "create",
        "secret",
        "docker-registry",
        "regcred",
        "-n",
        ns,
        &format!("--docker-server={}", reg.host),
        "--docker-username=puller",
        "--docker-password=s3cret",
    ]);
    let image = format!("{}/private/app:1.0", reg.host);
    let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "private"},
        "spec": {"imagePullSecrets": [{"name": "regcred"}],
            "containers": [{"name": "app", "image": image}]}});
    c.apply_in(ns, &pod.to_string());
    let stored = c.get(Some(ns), &["pod", "private"]);
    assert_eq!(
        stored["spec"]["containers"][0]["image"],
        format!("{image}@{digest}")
    );
    let read = wait_for(
        Duration::from_secs(10),
        "the secret read in the audit log",
        || {
            c.audit_events().into_iter().find(|e| {
                e["user"]["username"] == user.as_str()
                    && e["verb"] == "get"
                    && e["objectRef"]["resource"] == "secrets"
                    && e["objectRef"]["name"] == "regcred"
            })
        },
    );
    assert_eq!(read["objectRef"]["namespace"], ns);
    assert_eq!(read["responseStatus"]["code"], 200, "{read}");

    // What the chart does not grant, the real authorizer refuses.
    let list = c.kubectl_as(&kubeconfig, &["get", "secrets", "-n", ns], None);
    assert!(!list.ok, "{list:?}");
    let refusal = format!("User \"{user}\" cannot list resource \"secrets\"");
    assert!(list.stderr.contains(&refusal), "{}", list.stderr);
    let other = c.kubectl_as(
        &kubeconfig,
        &[
            "get",
            "mutatingwebhookconfiguration",
            "zz-not-pinhooks",
            "-o",
            "name",
        ],
        None,
    );
    assert!(other.stderr.contains("forbidden"), "{other:?}");
}

#[test]
fn a_second_cluster_is_independent_of_the_first() {
    let first = cluster();
    let second = Cluster::start(None);
    assert_ne!(first.server(), second.server());
    first.namespace("only-in-the-first", None);
    let out = second.kubectl(&["get", "namespace", "only-in-the-first"]);
    assert!(!out.ok && out.stderr.contains("NotFound"), "{out:?}");
    // Each has its own CA: the first's admin credentials are refused by the second.
    let crossed = second.kubectl_as(
        &first.kubeconfig(),
        &["get", "--server", &second.server(), "namespaces"],
        None,
    );
    assert!(!crossed.ok, "{crossed:?}");
}
