//! `/mutate` rules that hold before any registry is asked: policy denials, idempotence on
//! digests, controller-owned objects, `pin: false`, and refusing metadata addresses.

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{BOTH, Http, Options, Pinhook, fixture};
use serde_json::{Value, json};

async fn mutate(server: &Pinhook, http: Http, review: &Value) -> Value {
    let (status, _, body) = server
        .post_json(
            http,
            "/mutate?timeout=10s",
            serde_json::to_vec(review).unwrap(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(body["kind"], "AdmissionReview");
    assert_eq!(body["response"]["uid"], review["request"]["uid"]);
    body["response"].clone()
}

fn with_image(mut review: Value, pointer: &str, image: &str) -> Value {
    *review
        .pointer_mut(&format!("/request/object{pointer}"))
        .unwrap() = json!(image);
    review
}

#[tokio::test]
async fn policy_denials_are_the_same_as_validate() {
    let server = Pinhook::start();
    for http in BOTH {
        let review = fixture("deployment_mutable_tags");
        let m = mutate(&server, http, &review).await;
        let (_, _, v) = server.validate(http, &review).await;
        assert_eq!(m["allowed"], false);
        assert_eq!(m["status"], v["response"]["status"]);
        assert!(m.get("patch").is_none());
    }
}

#[tokio::test]
async fn digests_get_no_patch() {
    let server = Pinhook::start();
    let m = mutate(&server, Http::V2, &fixture("pod_pinned_by_digest")).await;
    assert_eq!(m["allowed"], true);
    assert!(
        m.get("patch").is_none() && m.get("patchType").is_none(),
        "{m}"
    );
    assert!(m.get("warnings").is_none(), "{m}");
}

#[tokio::test]
async fn delete_and_unknown_kinds_get_no_patch() {
    let server = Pinhook::start();
    for name in [
        "pod_delete",
        "configmap_unknown_kind",
        "pod_in_kube_system",
        "pod_connect_exec",
    ] {
        let m = mutate(&server, Http::V2, &fixture(name)).await;
        assert_eq!(m["allowed"], true, "{name}");
        assert!(m.get("patch").is_none(), "{name}: {m}");
    }
}

#[tokio::test]
async fn controller_owned_workloads_are_never_mutated() {
    // The image points at a port where nothing listens: any resolution attempt would fail and
    // deny, so an allowed answer without a patch proves none was made.
    let dead = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    drop(TcpListener::bind(dead));
    let policy = format!("registries:\n  - host: {dead}\n    insecure: true\n");
    let server = Pinhook::start_with(Options {
        policy: Some(policy),
        ..Default::default()
    });
    for (file, owner) in [
        ("replicaset_version_tags", "Deployment"),
        ("job_version_tags", "CronJob"),
    ] {
        let mut review = with_image(
            fixture(file),
            "/spec/template/spec/containers/0/image",
            &format!("{dead}/shop/web:1.4.2"),
        );
        review["request"]["object"]["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": owner, "name": "web", "uid": "1d2c", "controller": true, "blockOwnerDeletion": true}]);
        let m = mutate(&server, Http::V2, &review).await;
        assert_eq!(m["allowed"], true, "{file}: {m}");
        assert!(m.get("patch").is_none(), "{file}: {m}");

        // The same object without a controller owner is resolved (and fails here).
        review["request"]["object"]["metadata"]["ownerReferences"][0]["controller"] = json!(false);
        let m = mutate(&server, Http::V2, &review).await;
        assert_eq!(m["allowed"], false, "{file}: {m}");
        assert!(
            m["status"]["message"]
                .as_str()
                .unwrap()
                .contains("cannot connect to registry"),
            "{m}"
        );
    }
}

#[tokio::test]
async fn pin_false_validates_only() {
    let server = Pinhook::start_with(Options {
        policy: Some("pin: false\n".into()),
        ..Default::default()
    });
    let review = with_image(
        fixture("pod_version_tags"),
        "/spec/containers/0/image",
        "127.0.0.1:1/shop/web:1.4.2",
    );
    let m = mutate(&server, Http::V2, &review).await;
    assert_eq!(m["allowed"], true);
    assert!(m.get("patch").is_none(), "{m}");
}

#[tokio::test]
async fn metadata_addresses_are_never_contacted() {
    let server = Pinhook::start();
    for image in [
        "169.254.169.254/latest/meta-data:1.0.0",
        "169.254.170.2:80/creds:1.0.0",
        "100.100.100.200/x/y:1.0.0",
        // A bracketed IPv6 host is a valid reference (distribution's grammar): the guard refuses
        // EC2's IPv6 metadata address all the same.
        "[fd00:ec2::254]:80/x/y:1.0.0",
    ] {
        let review = with_image(
            fixture("pod_version_tags"),
            "/spec/containers/0/image",
            image,
        );
        let m = mutate(&server, Http::V2, &review).await;
        assert_eq!(m["allowed"], false, "{image}: {m}");
        let msg = m["status"]["message"].as_str().unwrap();
        assert!(msg.contains("refusing to contact"), "{image}: {msg}");
        assert!(
            msg.contains("link-local or metadata address"),
            "{image}: {msg}"
        );
    }
    let metrics = server.metrics().await;
    assert!(
        !metrics.contains("169.254"),
        "a request was counted against a metadata address:\n{metrics}"
    );
}

#[tokio::test]
async fn a_hung_registry_is_bounded_by_the_api_server_timeout() {
    // Accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let _keep = std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming().take(16) {
            held.push(s);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let policy = format!("registries:\n  - host: {addr}\n    insecure: true\n");
    let server = Pinhook::start_with(Options {
        policy: Some(policy),
        args: vec![
            "--registry-timeout".into(),
            "30s".into(),
            "--deadline-margin".into(),
            "500ms".into(),
        ],
        ..Default::default()
    });
    let review = with_image(
        fixture("pod_version_tags"),
        "/spec/containers/0/image",
        &format!("{addr}/shop/web:1.4.2"),
    );
    let start = Instant::now();
    let (status, _, body) = server
        .post_json(
            Http::V2,
            "/mutate?timeout=2s",
            serde_json::to_vec(&review).unwrap(),
        )
        .await;
    let took = start.elapsed();
    assert_eq!(status, 200);
    assert!(
        took < Duration::from_millis(2000),
        "answered after {took:?}, past the API server's 2s"
    );
    assert!(
        took >= Duration::from_millis(1200),
        "gave up too early: {took:?}"
    );
    let msg = body["response"]["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("registry {addr} did not answer within")),
        "{msg}"
    );
}
