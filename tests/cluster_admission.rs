//! pinhook called by a real kube-apiserver (tests/cluster: Kubernetes' own modules), with its
//! webhook configurations from the chart's render, a real registry behind it, and the real
//! controllers copying its pins: denials and warnings as `kubectl` shows them, pins through
//! Deployments, StatefulSets, DaemonSets and CronJobs, no ReplicaSet storm, reinvocation after
//! a later mutating webhook, ephemeral containers, the API server's audit log, and what the
//! user sees when pinhook or a registry is down.
//!
//! One cluster serves every test of this file; each test has its own namespace, labelled so
//! that only its own pinhook judges it.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::Pinhook;
use common::cluster::{
    Cluster, Registration, TEST_LABEL, cluster, deployment, pod, register, wait_for,
    wait_registered,
};
use common::registry::{DelayProxy, ProxyMode, Registry, TestImage};
use serde_json::{Value, json};

/// An image no registry serves, on a loopback port nothing listens on: pinning it fails at once.
const NOWHERE: &str = "127.0.0.1:1/pinhook-e2e/nowhere";

/// A policy that lets pinhook speak plain HTTP to the test registry `host`.
fn registry_policy(host: &str, extra: &str) -> String {
    format!("registries:\n  - host: {host}\n    insecure: true\n{extra}")
}

/// A plain registry holding `images` (`repo`, `tag`, seed), their digests in that order, and a
/// pinhook for namespace `test` that pins from it (policy `extra` added), registered.
fn with_registry(
    c: &Cluster,
    test: &str,
    images: &[(&str, &str, &str)],
    extra: &str,
) -> (Registry, Vec<String>, Pinhook) {
    let reg = Registry::plain();
    let digests = images
        .iter()
        .map(|(repo, tag, seed)| reg.push(repo, tag, &TestImage::single(seed)))
        .collect();
    let pinhook = setup(
        c,
        test,
        Some(registry_policy(&reg.host, extra)),
        Registration::new(test),
    );
    (reg, digests, pinhook)
}

/// Starts pinhook with `policy` (None: the built-in one) and the cluster-admin kubeconfig (for
/// pull secrets), creates namespace `test` for it, registers it and waits until it is called.
fn setup(c: &Cluster, test: &str, policy: Option<String>, reg: Registration) -> Pinhook {
    let pinhook = Pinhook::start_with(common::Options {
        policy,
        env: vec![("KUBECONFIG".into(), c.kubeconfig().display().to_string())],
        ..Default::default()
    });
    c.namespace(test, Some(&reg.release));
    register(c, &pinhook, &reg);
    wait_registered(c, test);
    pinhook
}

/// The image of the first container of a pod spec.
fn image_of(spec: &Value) -> String {
    spec["containers"][0]["image"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// An audit event of the API server for `resource` (`name`, if given) in `ns` whose
/// annotations `pred` accepts.
fn audit_event(
    c: &Cluster,
    ns: &str,
    resource: &str,
    name: Option<&str>,
    pred: impl Fn(&serde_json::Map<String, Value>) -> bool,
) -> Value {
    wait_for(Duration::from_secs(10), "an audit event", || {
        c.audit_events().into_iter().find(|e| {
            e["objectRef"]["namespace"] == ns
                && e["objectRef"]["resource"] == resource
                && name.is_none_or(|n| e["objectRef"]["name"] == n)
                && e["stage"] == "ResponseComplete"
                && e["annotations"].as_object().is_some_and(&pred)
        })
    })
}

#[test]
fn kubectl_shows_the_denial_and_the_audit_log_records_it() {
    let c = cluster();
    let pinhook = setup(c, "deny", None, Registration::new("deny"));

    let out = c.kubectl(&["run", "web", "-n", "deny", "--image=nginx:latest"]);
    assert!(!out.ok, "a pod with nginx:latest was created: {out:?}");
    for needle in [
        "admission webhook \"mutate.pinhook.dev\" denied the request",
        "container \"web\"",
        "image \"nginx:latest\" uses mutable tag \"latest\"",
        "use a version tag or a digest",
    ] {
        assert!(
            out.stderr.contains(needle),
            "{needle:?} not in:\n{}",
            out.stderr
        );
    }
    let get = c.kubectl(&["get", "pod", "web", "-n", "deny"]);
    assert!(!get.ok && get.stderr.contains("NotFound"), "{get:?}");

    // The API server's audit log carries pinhook's annotations, under the webhook's name.
    let event = audit_event(c, "deny", "pods", Some("web"), |a| {
        a.get("mutate.pinhook.dev/rejected-images")
            .is_some_and(|v| v.as_str().unwrap_or_default().contains("web=nginx:latest"))
    });
    assert_eq!(event["verb"], "create");
    assert_eq!(event["responseStatus"]["code"], 403, "{event}");
    assert_eq!(event["annotations"]["mutate.pinhook.dev/mode"], "enforce");

    // A server-side dry run is judged too, and pinhook's own audit line says so.
    let manifest = pod("dry", "nginx:1.27-latest");
    let dry = c.kubectl_in(
        &["apply", "-n", "deny", "--dry-run=server", "-f", "-"],
        &manifest.to_string(),
    );
    assert!(
        !dry.ok && dry.stderr.contains("nginx:1.27-latest"),
        "{dry:?}"
    );
    let record = pinhook.wait_for_line(Duration::from_secs(10), |r| {
        r["event"] == "admission.denied" && r["name"] == "dry"
    });
    assert_eq!(record["dryRun"], true, "{record}");
    assert_eq!(record["namespace"], "deny");
    assert!(
        record["user"]
            .as_str()
            .unwrap()
            .contains("kubernetes-admin"),
        "{record}"
    );
    let dry_event = audit_event(c, "deny", "pods", Some("dry"), |a| {
        a.get("mutate.pinhook.dev/rejected-images")
            .is_some_and(|v| v.as_str().unwrap_or_default().contains("nginx:1.27-latest"))
    });
    assert!(
        dry_event["requestURI"]
            .as_str()
            .unwrap()
            .contains("dryRun=All"),
        "{dry_event}"
    );
}

#[test]
fn warn_mode_prints_pinhooks_warnings_and_admits_the_pod() {
    let c = cluster();
    let (reg, digests, _p) =
        with_registry(c, "warn", &[("shop/web", "latest", "warn")], "mode: warn\n");
    let digest = &digests[0];
    let image = format!("{}/shop/web:latest", reg.host);
    let out = c.kubectl(&["run", "web", "-n", "warn", &format!("--image={image}")]);
    assert!(out.ok, "{out:?}");
    let warning = format!(
        "Warning: pinhook: container \"web\": image \"{image}\" uses mutable tag \"latest\""
    );
    assert!(
        out.stderr.contains(&warning),
        "{warning:?} not in:\n{}",
        out.stderr
    );
    // Warn mode still freezes what runs: the mutable tag is pinned.
    let p = c.get(Some("warn"), &["pod", "web"]);
    assert_eq!(image_of(&p["spec"]), format!("{image}@{digest}"));
}

#[test]
fn pins_reach_every_replicaset_and_pod_the_controllers_make() {
    let c = cluster();
    let reg = Registry::plain();
    let digest = reg.push("shop/web", "1.0", &TestImage::multi_arch("controllers"));
    let model = reg.push("acme/model", "7", &TestImage::single("controllers-model"));
    let model_image = format!("{}/acme/model:7", reg.host);
    let _p = setup(
        c,
        "chain",
        Some(registry_policy(&reg.host, "")),
        Registration::new("chain"),
    );
    let image = format!("{}/shop/web:1.0", reg.host);
    let pinned = format!("{image}@{digest}");
    let ns = "chain";

    // A node for the DaemonSet controller to place a Pod on (no kubelet: it stays Pending).
    c.apply(
        &json!({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "e2e-chain-node",
            "labels": {"kubernetes.io/hostname": "e2e-chain-node"}}})
        .to_string(),
    );
    let labels = |name: &str| json!({"matchLabels": {"app": name}});
    let template = |name: &str| {
        json!({"metadata": {"labels": {"app": name}},
            "spec": {"containers": [{"name": "app", "image": image}]}})
    };
    // The Deployment also mounts an OCI image as a volume (GA in 1.36).
    let mut web = deployment("web", &image, 2);
    web["spec"]["template"]["spec"]["volumes"] =
        json!([{"name": "model", "image": {"reference": model_image}}]);
    let objects = json!({"apiVersion": "v1", "kind": "List", "items": [
        web,
        {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
            "spec": {"serviceName": "db", "replicas": 1, "selector": labels("db"),
                "template": template("db")}},
        // The node has no kubelet, so it keeps the not-ready taint; like most node agents, this
        // one tolerates every taint.
        {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": "agent"},
            "spec": {"selector": labels("agent"), "template": {
                "metadata": {"labels": {"app": "agent"}},
                "spec": {"tolerations": [{"operator": "Exists"}],
                    "containers": [{"name": "app", "image": image}]}}}},
        {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": "report"},
            "spec": {"schedule": "* * * * *", "jobTemplate": {"spec": {"template": {
                "spec": {"restartPolicy": "Never",
                    "containers": [{"name": "app", "image": image}]}}}}}},
    ]});
    c.apply_in(ns, &objects.to_string());

    // The stored objects are pinned, with the tag kept.
    let d = c.get(Some(ns), &["deployment", "web"]);
    assert_eq!(image_of(&d["spec"]["template"]["spec"]), pinned);
    let cj = c.get(Some(ns), &["cronjob", "report"]);
    assert_eq!(
        image_of(&cj["spec"]["jobTemplate"]["spec"]["template"]["spec"]),
        pinned
    );

    // What the controllers made from them carries the same digest.
    let rs = wait_for(Duration::from_secs(30), "the ReplicaSet", || {
        c.items(ns, "replicasets").into_iter().next()
    });
    assert_eq!(image_of(&rs["spec"]["template"]["spec"]), pinned);
    let owned_pods = |prefix: &str, n: usize| {
        wait_for(
            Duration::from_secs(90),
            &format!("{n} pod(s) {prefix}*"),
            || {
                let pods: Vec<Value> = c
                    .items(ns, "pods")
                    .into_iter()
                    .filter(|p| p["metadata"]["name"].as_str().unwrap().starts_with(prefix))
                    .collect();
                (pods.len() >= n).then_some(pods)
            },
        )
    };
    for (prefix, n) in [("web-", 2), ("db-0", 1), ("agent-", 1)] {
        for p in owned_pods(prefix, n) {
            assert_eq!(image_of(&p["spec"]), pinned, "{}", p["metadata"]["name"]);
        }
    }
    let pinned_model = format!("{model_image}@{model}");
    assert_eq!(
        rs["spec"]["template"]["spec"]["volumes"][0]["image"]["reference"],
        pinned_model
    );
    for p in owned_pods("web-", 2) {
        assert_eq!(p["spec"]["volumes"][0]["image"]["reference"], pinned_model);
    }
    // CronJob → Job → Pod: the cronjob controller starts a Job within a minute.
    let job = wait_for(Duration::from_secs(90), "a Job of the CronJob", || {
        c.items(ns, "jobs").into_iter().next()
    });
    assert_eq!(image_of(&job["spec"]["template"]["spec"]), pinned);
    let job_name = job["metadata"]["name"].as_str().unwrap().to_owned();
    for p in owned_pods(&job_name, 1) {
        assert_eq!(image_of(&p["spec"]), pinned);
    }

    // The API server's audit log has the original → pinned reference for the Deployment.
    let event = audit_event(c, ns, "deployments", Some("web"), |a| {
        a.get("mutate.pinhook.dev/pinned-images").is_some()
    });
    let pins = event["annotations"]["mutate.pinhook.dev/pinned-images"]
        .as_str()
        .unwrap();
    assert!(pins.contains(&format!("app: {image} → {pinned}")), "{pins}");
    c.ok(&["delete", "node", "e2e-chain-node"]);
}

/// The ReplicaSets of deployment `name` in `ns`, by name.
fn replicasets(c: &Cluster, ns: &str) -> Vec<(String, String)> {
    c.items(ns, "replicasets")
        .iter()
        .map(|rs| {
            (
                rs["metadata"]["name"].as_str().unwrap().to_owned(),
                image_of(&rs["spec"]["template"]["spec"]),
            )
        })
        .collect()
}

/// Watches `ns` for `window`: at every look there is exactly one ReplicaSet, with `image`.
fn assert_one_replicaset_for(c: &Cluster, ns: &str, image: &str, window: Duration) {
    let started = Instant::now();
    while started.elapsed() < window {
        let rs = replicasets(c, ns);
        assert_eq!(
            rs.len(),
            1,
            "ReplicaSets after {:?}: {rs:?}",
            started.elapsed()
        );
        assert_eq!(rs[0].1, image);
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[test]
fn reapplying_scaling_relabelling_and_a_moved_tag_make_no_new_replicaset() {
    let c = cluster();
    let (reg, digests, _p) = with_registry(c, "storm", &[("shop/web", "1.0", "storm-old")], "");
    let old = digests[0].clone();
    let ns = "storm";
    let image = format!("{}/shop/web:1.0", reg.host);
    let manifest = deployment("web", &image, 1).to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("web.json");
    std::fs::write(&file, &manifest).unwrap();
    let file = file.to_str().unwrap();

    c.ok(&["apply", "-n", ns, "-f", file]);
    wait_for(Duration::from_secs(30), "the first ReplicaSet", || {
        (replicasets(c, ns).len() == 1).then_some(())
    });
    let pinned = format!("{image}@{old}");
    assert_eq!(replicasets(c, ns)[0].1, pinned);

    for _ in 0..5 {
        c.ok(&["apply", "-n", ns, "-f", file]);
    }
    for _ in 0..5 {
        c.ok(&[
            "apply",
            "-n",
            ns,
            "--server-side",
            "--force-conflicts",
            "-f",
            file,
        ]);
    }
    c.ok(&["scale", "-n", ns, "deployment/web", "--replicas=3"]);
    c.ok(&["scale", "-n", ns, "deployment/web", "--replicas=1"]);
    c.ok(&[
        "label",
        "-n",
        ns,
        "deployment/web",
        "tier=frontend",
        "--overwrite",
    ]);
    // The tag moves to new content in the registry; the manifest is applied again.
    let new = reg.push("shop/web", "1.0", &TestImage::single("storm-new"));
    assert_ne!(new, old);
    c.ok(&["apply", "-n", ns, "-f", file]);
    c.ok(&[
        "apply",
        "-n",
        ns,
        "--server-side",
        "--force-conflicts",
        "-f",
        file,
    ]);
    assert_one_replicaset_for(c, ns, &pinned, Duration::from_secs(30));

    // Changing pinhook.dev/refresh in the manifest moves to what the tag names now: exactly one
    // new ReplicaSet.
    let mut refreshed = deployment("web", &image, 1);
    refreshed["metadata"]["annotations"] = json!({"pinhook.dev/refresh": "2026-11-30"});
    c.apply_in(ns, &refreshed.to_string());
    let repinned = format!("{image}@{new}");
    let d = c.get(Some(ns), &["deployment", "web"]);
    assert_eq!(image_of(&d["spec"]["template"]["spec"]), repinned);
    wait_for(Duration::from_secs(30), "the refreshed ReplicaSet", || {
        let rs = replicasets(c, ns);
        (rs.len() == 2 && rs.iter().any(|r| r.1 == repinned)).then_some(())
    });
    std::thread::sleep(Duration::from_secs(10));
    let rs = replicasets(c, ns);
    assert_eq!(rs.len(), 2, "{rs:?}");
}

#[test]
fn a_deployment_admitted_before_pinhook_is_not_rolled_by_it() {
    let c = cluster();
    let reg = Registry::plain();
    reg.push("shop/web", "1.0", &TestImage::single("legacy"));
    let pinhook = Pinhook::start_with(common::Options {
        policy: Some(registry_policy(&reg.host, "")),
        env: vec![("KUBECONFIG".into(), c.kubeconfig().display().to_string())],
        ..Default::default()
    });
    let ns = "legacy";
    // Created while no pinhook judges the namespace: it keeps its tag.
    c.namespace(ns, None);
    let image = format!("{}/shop/web:1.0", reg.host);
    c.apply_in(ns, &deployment("web", &image, 1).to_string());
    wait_for(Duration::from_secs(30), "the ReplicaSet", || {
        (replicasets(c, ns).len() == 1).then_some(())
    });
    // Now pinhook is registered for the namespace.
    register(c, &pinhook, &Registration::new("legacy"));
    c.ok(&["label", "namespace", ns, &format!("{TEST_LABEL}=legacy")]);
    wait_registered(c, ns);

    c.ok(&["scale", "-n", ns, "deployment/web", "--replicas=2"]);
    c.ok(&["label", "-n", ns, "deployment/web", "tier=frontend"]);
    c.ok(&["scale", "-n", ns, "deployment/web", "--replicas=1"]);
    assert_one_replicaset_for(c, ns, &image, Duration::from_secs(30));
    let d = c.get(Some(ns), &["deployment", "web"]);
    assert_eq!(image_of(&d["spec"]["template"]["spec"]), image);
}

#[test]
fn a_sidecar_added_after_pinhook_is_pinned_on_reinvocation() {
    let c = cluster();
    let (reg, digests, _p) = with_registry(
        c,
        "reinvoke",
        &[
            ("shop/web", "1.0", "reinvoke-app"),
            ("mesh/proxy", "2.1", "reinvoke-sidecar"),
        ],
        "",
    );
    let (app, side) = (&digests[0], &digests[1]);
    let sidecar = format!("{}/mesh/proxy:2.1", reg.host);
    // A second mutating webhook, ordered after pinhook's ("reinvoke-…" < "zz-…"), that adds a
    // sidecar with a tag, and does not ask to be called again.
    let injector = injector::start(&sidecar);
    let ca = base64::engine::general_purpose::STANDARD.encode(&injector.ca_pem);
    c.apply(
        &json!({"apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration", "metadata": {"name": "zz-e2e-sidecar-injector"},
            "webhooks": [{"name": "inject.e2e.pinhook.dev", "admissionReviewVersions": ["v1"],
                "sideEffects": "None", "reinvocationPolicy": "Never", "timeoutSeconds": 5,
                "clientConfig": {"url": format!("https://{}/inject", injector.addr), "caBundle": ca},
                "namespaceSelector": {"matchLabels": {TEST_LABEL: "reinvoke"}},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"],
                    "resources": ["pods"]}]}]})
        .to_string(),
    );
    let image = format!("{}/shop/web:1.0", reg.host);
    let pinned_sidecar = format!("{sidecar}@{side}");
    wait_for(Duration::from_secs(30), "the injector to be called", || {
        let out = c.dry_run_pod("reinvoke", &image);
        (out.ok && out.stdout.contains("mesh/proxy")).then_some(())
    });
    c.ok(&["run", "app", "-n", "reinvoke", &format!("--image={image}")]);
    let p = c.get(Some("reinvoke"), &["pod", "app"]);
    let images: Vec<&str> = p["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["image"].as_str().unwrap())
        .collect();
    assert_eq!(images, [format!("{image}@{app}"), pinned_sidecar]);
    // The API server records that pinhook was called again (round 1) and changed the pod.
    let event = audit_event(c, "reinvoke", "pods", Some("app"), |a| {
        a.iter().any(|(k, v)| {
            k.starts_with("mutation.webhook.admission.k8s.io/round_1")
                && v.as_str()
                    .unwrap_or_default()
                    .contains("mutate.pinhook.dev")
        })
    });
    assert_eq!(event["objectRef"]["name"], "app", "{event}");
}

#[test]
fn a_sidecar_added_by_a_mutating_admission_policy_is_pinned() {
    let c = cluster();
    let (reg, digests, _p) = with_registry(
        c,
        "map-sidecar",
        &[
            ("shop/web", "1.0", "map-app"),
            ("mesh/proxy", "2.1", "map-sidecar"),
        ],
        "",
    );
    let sidecar = format!("{}/mesh/proxy:2.1", reg.host);
    // A MutatingAdmissionPolicy (GA in 1.36) that adds a sidecar with a tag. The API server
    // runs admission policies before webhooks, so pinhook sees the sidecar in its first call.
    let policy = format!(
        r#"apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicy
metadata:
  name: e2e-add-sidecar
spec:
  failurePolicy: Fail
  reinvocationPolicy: IfNeeded
  matchConstraints:
    resourceRules:
      - apiGroups: [""]
        apiVersions: ["v1"]
        operations: ["CREATE"]
        resources: ["pods"]
  matchConditions:
    - name: no-sidecar-yet
      expression: "!object.spec.containers.exists(c, c.name == 'mesh-proxy')"
  mutations:
    - patchType: ApplyConfiguration
      applyConfiguration:
        expression: >-
          Object{{spec: Object.spec{{containers: [Object.spec.containers{{name: "mesh-proxy", image: "{sidecar}"}}]}}}}
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingAdmissionPolicyBinding
metadata:
  name: e2e-add-sidecar
spec:
  policyName: e2e-add-sidecar
  matchResources:
    namespaceSelector:
      matchLabels:
        {TEST_LABEL}: map-sidecar
"#
    );
    c.apply(&policy);
    let image = format!("{}/shop/web:1.0", reg.host);
    let created = wait_for(
        Duration::from_secs(30),
        "the policy to add its sidecar",
        || {
            let out = c.dry_run_pod("map-sidecar", &image);
            (out.ok && out.stdout.contains("mesh-proxy")).then_some(out.stdout)
        },
    );
    let p: Value = serde_json::from_str(&created).unwrap();
    let images: Vec<&str> = p["spec"]["containers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["image"].as_str().unwrap())
        .collect();
    assert_eq!(
        images,
        [
            format!("{image}@{}", digests[0]),
            format!("{sidecar}@{}", digests[1])
        ]
    );
}

#[test]
fn ephemeral_containers_are_judged_and_pinned() {
    let c = cluster();
    let (reg, digests, _p) = with_registry(
        c,
        "ephemeral",
        &[
            ("shop/web", "1.0", "eph-app"),
            ("tools/debug", "3.2", "eph-debug"),
        ],
        "",
    );
    let debug = &digests[1];
    let ns = "ephemeral";
    c.ok(&[
        "run",
        "target",
        "-n",
        ns,
        &format!("--image={}/shop/web:1.0", reg.host),
    ]);

    // As `kubectl debug` does it: the pods/ephemeralcontainers subresource.
    let denied = c.kubectl(&[
        "debug",
        "target",
        "-n",
        ns,
        "--image=busybox:latest",
        "--container=shell",
    ]);
    assert!(!denied.ok, "{denied:?}");
    for needle in ["\"shell\"", "busybox:latest", "mutable tag \"latest\""] {
        assert!(
            denied.stderr.contains(needle),
            "{needle:?} not in:\n{}",
            denied.stderr
        );
    }
    let image = format!("{}/tools/debug:3.2", reg.host);
    c.ok(&[
        "debug",
        "target",
        "-n",
        ns,
        &format!("--image={image}"),
        "--container=dbg",
    ]);
    let p = c.get(Some(ns), &["pod", "target"]);
    let eph = p["spec"]["ephemeralContainers"].as_array().unwrap();
    assert_eq!(eph.len(), 1, "{eph:?}");
    assert_eq!(eph[0]["name"], "dbg");
    assert_eq!(eph[0]["image"], format!("{image}@{debug}"));
}

#[test]
fn pinhook_down_fails_closed_or_open_as_the_failure_policy_says() {
    let c = cluster();
    let mut fail = Registration::new("down-fail");
    fail.failure_policy = "Fail";
    let mut ignore = Registration::new("down-ignore");
    ignore.failure_policy = "Ignore";
    let p1 = setup(c, "down-fail", None, fail);
    let p2 = setup(c, "down-ignore", None, ignore);
    drop(p1);
    drop(p2);
    let image = format!("--image={NOWHERE}:1.0");

    let refused = c.kubectl(&["run", "web", "-n", "down-fail", &image]);
    assert!(!refused.ok, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("failed calling webhook \"mutate.pinhook.dev\""),
        "{}",
        refused.stderr
    );
    assert!(
        refused.stderr.contains("connection refused"),
        "{}",
        refused.stderr
    );

    let admitted = c.kubectl(&["run", "web", "-n", "down-ignore", &image]);
    assert!(admitted.ok, "{admitted:?}");
    let p = c.get(Some("down-ignore"), &["pod", "web"]);
    assert_eq!(image_of(&p["spec"]), format!("{NOWHERE}:1.0"));
}

#[test]
fn a_hung_registry_gets_pinhooks_answer_before_the_api_servers_timeout() {
    let c = cluster();
    let reg = Registry::plain();
    reg.push("shop/web", "1.0", &TestImage::single("hung"));
    let proxy = DelayProxy::start(reg.addr, ProxyMode::BlackHole);
    let mut r = Registration::new("hung");
    r.timeout_seconds = 10;
    let _p = setup(c, "hung", Some(registry_policy(&proxy.host(), "")), r);
    let image = format!("{}/shop/web:1.0", proxy.host());
    let out = c.kubectl(&["run", "web", "-n", "hung", &format!("--image={image}")]);
    eprintln!("hung registry: kubectl answered in {:?}", out.elapsed);
    assert!(!out.ok, "{out:?}");
    assert!(
        out.elapsed < Duration::from_secs(10),
        "took {:?}",
        out.elapsed
    );
    assert!(out.stderr.contains("denied the request"), "{}", out.stderr);
    assert!(out.stderr.contains(&image), "{}", out.stderr);
    assert!(!out.stderr.contains("deadline exceeded"), "{}", out.stderr);
    assert!(proxy.accepted() > 0, "pinhook never tried the registry");
}

/// A minimal TLS mutating webhook that adds a `sidecar` container to every Pod that has none.
mod injector {
    use std::net::SocketAddr;

    use axum::Json;
    use axum::routing::post;
    use base64::Engine as _;
    use serde_json::{Value, json};

    use super::common::registry::Background;

    pub struct Injector {
        pub addr: SocketAddr,
        pub ca_pem: String,
        _server: Background,
    }

    pub fn start(image: &str) -> Injector {
        super::common::init_crypto();
        let cert = pinhook::certs::generate(&["127.0.0.1".into()], 1).unwrap();
        let image = image.to_owned();
        let (cert_pem, key_pem) = (cert.cert_pem.clone(), cert.key_pem.clone());
        let server = Background::spawn("sidecar-injector", move |listener| async move {
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem(
                cert_pem.into_bytes(),
                key_pem.into_bytes(),
            )
            .await
            .unwrap();
            let app = axum::Router::new().route(
                "/inject",
                post(move |Json(review): Json<Value>| {
                    let image = image.clone();
                    async move { Json(answer(&review, &image)) }
                }),
            );
            let std = listener.into_std().unwrap();
            let _ = axum_server::from_tcp_rustls(std, tls)
                .unwrap()
                .serve(app.into_make_service())
                .await;
        });
        Injector {
            addr: server.addr,
            ca_pem: cert.ca_pem,
            _server: server,
        }
    }

    fn answer(review: &Value, image: &str) -> Value {
        let req = &review["request"];
        let containers = req["object"]["spec"]["containers"].as_array();
        let has = containers.is_some_and(|cs| cs.iter().any(|c| c["name"] == "sidecar"));
        let mut response = json!({"uid": req["uid"], "allowed": true});
        if !has {
            let patch = json!([{"op": "add", "path": "/spec/containers/-",
                "value": {"name": "sidecar", "image": image}}]);
            response["patchType"] = "JSONPatch".into();
            response["patch"] = base64::engine::general_purpose::STANDARD
                .encode(patch.to_string())
                .into();
        }
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response})
    }
}
