//! The /validate and /mutate rules through pinhook's whole HTTP stack in this process: the real
//! router, the one-pass decision, the answer and the metrics, with a fake resolver behind the
//! `Resolve` seam. Milliseconds per test; TLS, reloads, signals and real registries have their
//! own process-spawning suites.

mod common;

use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::router::{Answer, Call, InProcess, patch, pod, review};
use pinhook::resolve::ResolveError;
use serde_json::{Value, json};

const D1: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
const D2: &str = "sha256:2222222222222222222222222222222222222222222222222222222222222222";

fn create(object: Value) -> Value {
    review("", "Pod", "CREATE", object, Value::Null)
}

#[tokio::test]
async fn validate_denies_a_mutable_tag_with_the_container_and_the_fix() {
    let p = InProcess::new("");
    let r = p
        .review("/validate", &create(pod(&[("web", "nginx:latest")])))
        .await;
    assert_eq!(r["allowed"], false);
    assert_eq!(r["uid"], "uid-1");
    assert_eq!(r["status"]["code"], 403);
    let msg = r["status"]["message"].as_str().unwrap();
    assert!(
        msg.contains(r#"container "web" (spec.containers[0]): image "nginx:latest" uses mutable tag "latest"; use a version tag or a digest"#),
        "{msg}"
    );
    assert_eq!(
        r["auditAnnotations"]["rejected-images"],
        "web=nginx:latest (mutable-tag)"
    );
    assert!(p.resolver.calls().is_empty(), "/validate never resolves");
}

#[tokio::test]
async fn mutate_pins_every_tag_once_with_a_test_before_each_replace() {
    let p = InProcess::new("");
    p.resolver
        .set("docker.io/library/nginx:1.27.3", Answer::Digest(D1.into()));
    p.resolver
        .set("ghcr.io/acme/api:2.0.0", Answer::Digest(D2.into()));
    let object = pod(&[
        ("web", "nginx:1.27.3"),
        ("api", "ghcr.io/acme/api:2.0.0"),
        ("pinned", &format!("redis:7@{D1}")),
    ]);
    let r = p.review("/mutate", &create(object.clone())).await;
    assert_eq!(r["allowed"], true, "{r}");
    assert_eq!(r["patchType"], "JSONPatch");
    let ops = patch(&r).unwrap();
    assert_eq!(
        ops,
        [
            json!({"op": "test", "path": "/spec/containers/0/image", "value": "nginx:1.27.3"}),
            json!({"op": "replace", "path": "/spec/containers/0/image", "value": format!("nginx:1.27.3@{D1}")}),
            json!({"op": "test", "path": "/spec/containers/1/image", "value": "ghcr.io/acme/api:2.0.0"}),
            json!({"op": "replace", "path": "/spec/containers/1/image", "value": format!("ghcr.io/acme/api:2.0.0@{D2}")}),
        ]
    );
    let mut patched = object;
    let ops: json_patch::Patch = serde_json::from_value(json!(ops)).unwrap();
    json_patch::patch(&mut patched, &ops).unwrap();
    assert_eq!(
        patched["spec"]["containers"][1]["image"],
        format!("ghcr.io/acme/api:2.0.0@{D2}")
    );
    assert_eq!(
        p.resolver.calls().len(),
        2,
        "one lookup per tag: {:?}",
        p.resolver.calls()
    );
    assert!(
        r["auditAnnotations"]["pinned-images"]
            .as_str()
            .unwrap()
            .starts_with(&format!("web: nginx:1.27.3 → nginx:1.27.3@{D1}")),
        "{r}"
    );
}

#[tokio::test]
async fn mutate_denies_without_asking_the_registry_when_the_policy_denies() {
    let p = InProcess::new("");
    let r = p
        .review(
            "/mutate",
            &create(pod(&[("web", "nginx:latest"), ("ok", "nginx:1.27.3")])),
        )
        .await;
    assert_eq!(r["allowed"], false);
    assert!(r.get("patch").is_none());
    assert!(p.resolver.calls().is_empty(), "{:?}", p.resolver.calls());
}

#[tokio::test]
async fn keep_tag_false_writes_name_at_digest() {
    let p = InProcess::new("keepTag: false\n");
    p.resolver
        .set("docker.io/library/nginx:1.27.3", Answer::Digest(D1.into()));
    let r = p
        .review("/mutate", &create(pod(&[("web", "nginx:1.27.3")])))
        .await;
    assert_eq!(patch(&r).unwrap()[1]["value"], format!("nginx@{D1}"));
}

#[tokio::test]
async fn an_update_keeps_the_old_digest_of_the_same_tag_without_a_lookup() {
    let p = InProcess::new("");
    let old = pod(&[("web", &format!("shop/web:1.4.2@{D1}"))]);
    let new = pod(&[("web", "shop/web:1.4.2")]);
    let r = p
        .review("/mutate", &review("", "Pod", "UPDATE", new, old))
        .await;
    assert_eq!(
        patch(&r).unwrap()[1]["value"],
        format!("shop/web:1.4.2@{D1}")
    );
    assert!(
        r["warnings"][0]
            .as_str()
            .unwrap()
            .contains("kept its digest")
    );
    assert!(p.resolver.calls().is_empty());
}

#[tokio::test]
async fn a_changed_refresh_annotation_asks_the_registry_again() {
    let p = InProcess::new("");
    p.resolver
        .set("docker.io/shop/web:1.4.2", Answer::Digest(D2.into()));
    let with = |v: &str, image: &str| {
        let mut o = pod(&[("web", image)]);
        o["metadata"]["annotations"] = json!({"pinhook.dev/refresh": v});
        o
    };
    let r = p
        .review(
            "/mutate",
            &review(
                "",
                "Pod",
                "UPDATE",
                with("2", "shop/web:1.4.2"),
                with("1", &format!("shop/web:1.4.2@{D1}")),
            ),
        )
        .await;
    assert_eq!(
        patch(&r).unwrap()[1]["value"],
        format!("shop/web:1.4.2@{D2}")
    );
    assert_eq!(
        p.resolver.calls(),
        [Call {
            image: "docker.io/shop/web:1.4.2".into(),
            fresh: true,
            allowed: false
        }]
    );
}

#[tokio::test]
async fn a_missing_tag_denies_with_the_hint_and_an_outage_follows_on_resolve_failure() {
    let p = InProcess::new("onResolveFailure: allow\n");
    p.resolver.set(
        "docker.io/shop/down:1.0.0",
        Answer::Error(ResolveError::Timeout {
            registry: "docker.io".into(),
            seconds: 3.0,
        }),
    );
    let r = p
        .review("/mutate", &create(pod(&[("web", "shop/gone:1.0.0")])))
        .await;
    assert_eq!(r["allowed"], false);
    let msg = r["status"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with("pinhook could not pin Pod shop/p: 1 image could not be resolved"),
        "{msg}"
    );
    assert!(
        msg.ends_with("push the tag or correct the image name"),
        "{msg}"
    );

    let r = p
        .review("/mutate", &create(pod(&[("web", "shop/down:1.0.0")])))
        .await;
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none());
    assert_eq!(
        r["warnings"][0],
        r#"pinhook: container "web": shop/down:1.0.0 left unpinned: timeout"#
    );
    assert!(
        r["auditAnnotations"]["unpinned-images"]
            .as_str()
            .unwrap()
            .contains("did not answer within 3.0s")
    );
}

#[tokio::test]
async fn a_stale_digest_is_pinned_with_its_age() {
    let p = InProcess::new("");
    p.resolver.set(
        "docker.io/shop/web:1.0.0",
        Answer::Stale(D1.into(), Duration::from_secs(125)),
    );
    let r = p
        .review("/mutate", &create(pod(&[("web", "shop/web:1.0.0")])))
        .await;
    assert_eq!(
        patch(&r).unwrap()[1]["value"],
        format!("shop/web:1.0.0@{D1}")
    );
    assert!(
        r["warnings"][0]
            .as_str()
            .unwrap()
            .contains("registry unreachable, digest resolved 2m5s ago"),
        "{r}"
    );
}

#[tokio::test]
async fn a_registry_that_never_answers_is_cut_at_the_admission_deadline() {
    let p = InProcess::new("");
    p.resolver.set("docker.io/shop/web:1.0.0", Answer::Hang);
    let r = p
        .review(
            "/mutate?timeout=1500ms",
            &create(pod(&[("web", "shop/web:1.0.0")])),
        )
        .await;
    assert_eq!(r["allowed"], false);
    let msg = r["status"]["message"].as_str().unwrap();
    // The budget is the API server's timeout less the 1 s margin.
    assert!(msg.contains("did not answer within 0.5s"), "{msg}");
}

#[tokio::test]
async fn a_controlled_replicaset_is_judged_but_not_pinned() {
    let p = InProcess::new("");
    let rs = json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
        "metadata": {"name": "web-1", "namespace": "shop", "ownerReferences": [
            {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u", "controller": true}]},
        "spec": {"template": {"spec": {"containers": [{"name": "web", "image": "shop/web:1.0.0"}]}}}});
    let r = p
        .review(
            "/mutate",
            &review("apps", "ReplicaSet", "CREATE", rs, Value::Null),
        )
        .await;
    assert_eq!(r["allowed"], true);
    assert!(r.get("patch").is_none());
    assert!(p.resolver.calls().is_empty());
}

#[tokio::test]
async fn allowed_registries_reach_the_resolver_scope() {
    let p = InProcess::new("allowedRegistries: [ghcr.io]\n");
    p.resolver
        .set("ghcr.io/acme/api:2.0.0", Answer::Digest(D2.into()));
    let r = p
        .review(
            "/mutate",
            &create(pod(&[("api", "ghcr.io/acme/api:2.0.0")])),
        )
        .await;
    assert_eq!(r["allowed"], true, "{r}");
    assert!(p.resolver.calls()[0].allowed);
}

#[tokio::test]
async fn metrics_count_the_answer_pinhook_gave() {
    let p = InProcess::new("");
    p.resolver
        .set("docker.io/library/nginx:1.27.3", Answer::Digest(D1.into()));
    p.review("/mutate", &create(pod(&[("web", "nginx:1.27.3")])))
        .await;
    p.review("/validate", &create(pod(&[("web", "nginx:latest")])))
        .await;
    let m = p.metrics().await;
    for line in [
        r#"pinhook_admission_requests_total{endpoint="mutate",decision="allowed"} 1"#,
        r#"pinhook_admission_requests_total{endpoint="validate",decision="denied"} 1"#,
        r#"pinhook_violations_total{rule="mutable-tag",mode="enforce"} 1"#,
        r#"pinhook_pinned_images_total{result="pinned"} 1"#,
    ] {
        assert!(m.contains(line), "{line} missing in\n{m}");
    }
}

#[tokio::test]
async fn bad_bodies_get_a_precise_error_not_an_answer() {
    let p = InProcess::new("");
    let (status, body) = p
        .send(
            Request::post("/validate")
                .body(Body::from("{not json"))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .starts_with("body is not valid JSON"),
        "{v}"
    );
    let (status, body) = p
        .send(
            Request::post("/mutate")
                .header("content-length", "99999999")
                .body(Body::from("{}"))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(String::from_utf8_lossy(&body).contains("--max-body-bytes"));
    let (status, _) = p
        .send(Request::post("/nope").body(Body::empty()).unwrap())
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_absurd_timeout_is_clamped_and_answered_not_a_panic() {
    let p = InProcess::new("");
    p.resolver
        .set("docker.io/library/nginx:1.27.3", Answer::Digest(D1.into()));
    for path in [
        "/mutate?timeout=5000000000000000h",
        "/mutate?timeout=18446744073709551615s",
        "/validate?timeout=5000000000000000h",
    ] {
        let r = p
            .review(path, &create(pod(&[("web", "nginx:1.27.3")])))
            .await;
        assert_eq!(r["allowed"], true, "{path}: {r}");
    }
    assert_eq!(p.resolver.calls().len(), 2);
}

/// A Pod with `n` containers `cI` running `image`.
fn wide_pod(n: usize, image: &str) -> Value {
    let cs: Vec<Value> = (0..n)
        .map(|i| json!({"name": format!("c{i}"), "image": image}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "shop"}, "spec": {"containers": cs}})
}

/// The whole answer to `review` on `path`, and its size in bytes.
async fn answer_bytes(p: &InProcess, path: &str, review: &Value) -> (Value, usize) {
    let (status, body) = p
        .send(
            Request::post(path)
                .header("content-type", "application/json")
                .body(Body::from(review.to_string()))
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let v: Value = serde_json::from_slice(&body).unwrap();
    (v["response"].clone(), body.len())
}

#[tokio::test]
async fn ten_thousand_containers_get_a_bounded_answer() {
    let request = create(wide_pod(10_000, "nginx:latest"));
    assert!(request.to_string().len() > 350_000);

    // enforce: a message of 20 containers and a count, an annotation of 20.
    let p = InProcess::new("");
    let (r, size) = answer_bytes(&p, "/validate", &request).await;
    assert!(size < 8 * 1024, "{size} bytes");
    let msg = r["status"]["message"].as_str().unwrap();
    assert_eq!(msg.lines().count(), 22, "{msg}");
    assert!(msg.ends_with("\n- and 9980 more"), "{msg}");
    assert!(
        r["auditAnnotations"]["rejected-images"]
            .as_str()
            .unwrap()
            .ends_with(", and 9980 more")
    );

    // warn: ten warnings and a count.
    let p = InProcess::new("mode: warn\n");
    let (r, size) = answer_bytes(&p, "/validate", &request).await;
    assert!(size < 8 * 1024, "{size} bytes");
    let warnings = r["warnings"].as_array().unwrap();
    assert_eq!(warnings.len(), 11);
    assert_eq!(
        warnings[10],
        "pinhook: and 9990 more warnings (see the audit annotations)"
    );

    // /mutate, every tag missing: a bounded denial.
    let p = InProcess::new("");
    let request = create(wide_pod(10_000, "shop/gone:1.0.0"));
    let (r, size) = answer_bytes(&p, "/mutate", &request).await;
    assert_eq!(r["allowed"], false);
    assert!(size < 16 * 1024, "{size} bytes");
    assert!(
        r["status"]["message"]
            .as_str()
            .unwrap()
            .ends_with("\n- and 9980 more")
    );
}

#[tokio::test]
async fn control_characters_in_names_never_reach_the_requesters_terminal() {
    let p = InProcess::new("");
    let evil = "\n\u{1b}[31mFAKE\u{1b}[0m\r";
    let object = json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": format!("web{evil}-"), "namespace": format!("shop{evil}")},
        "spec": {"containers": [{"name": format!("c{evil}"), "image": "nginx:latest"}]}});
    let mut request = create(object);
    request["request"]["namespace"] = json!(format!("shop{evil}"));
    let r = p.review("/validate", &request).await;
    let msg = r["status"]["message"].as_str().unwrap();
    assert!(!msg.contains('\u{1b}') && !msg.contains('\r'), "{msg:?}");
    assert_eq!(msg.lines().count(), 2, "{msg}");
    assert!(
        msg.starts_with(r"pinhook denied Pod shop\n\u{1b}[31mFAKE\u{1b}[0m\r/web\n\u{1b}[31mFAKE\u{1b}[0m\r-*: 1 image"),
        "{msg}"
    );
    assert!(
        msg.contains(r#"container "c\n\u{1b}[31mFAKE\u{1b}[0m\r" (spec.containers[0])"#),
        "{msg}"
    );
    let ann = r["auditAnnotations"]["rejected-images"].as_str().unwrap();
    assert!(!ann.chars().any(char::is_control), "{ann:?}");
}
