//! Pinning against a real registry: correctness and authentication.
//!
//! Every registry is a real `docker-registry` on 127.0.0.1 started by the harness, every image
//! is pushed with `skopeo`, and every expected digest is the one `skopeo inspect` reads back,
//! never one computed by pinhook. Reviews go to `/mutate` over HTTP/2, and the JSON Patch that
//! comes back is applied with Python's `jsonpatch` (an independent RFC 6902 implementation), so
//! the tests check what the API server would store, not what pinhook says it did.

mod common;

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::kube::FakeKube;
use common::registry::{MANIFEST_ACCEPT, Registry, RegistryAuth, RegistryOptions, TestImage};
use common::{Http, Options, Pinhook, fixture};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// Helpers

/// A policy speaking plain HTTP to `host`, followed by `extra` policy YAML.
fn insecure_policy(host: &str, extra: &str) -> String {
    format!("registries:\n  - host: {host}\n    insecure: true\n{extra}")
}

/// Starts pinhook with `policy` and extra `args`.
fn server(policy: String, args: &[&str]) -> Pinhook {
    Pinhook::start_with(Options {
        policy: Some(policy),
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        ..Default::default()
    })
}

/// The JSON pointer of the container list of the review's object.
fn containers_pointer(review: &Value) -> &'static str {
    match review["request"]["kind"]["kind"].as_str() {
        Some("Pod") => "/request/object/spec/containers",
        _ => "/request/object/spec/template/spec/containers",
    }
}

/// Replaces the containers of the review's object with one per `(name, image)`.
fn set_containers(r: &mut Value, containers: &[(&str, &str)]) {
    let list: Vec<Value> = containers
        .iter()
        .map(|(name, image)| json!({"name": name, "image": image}))
        .collect();
    *r.pointer_mut(containers_pointer(r)).unwrap() = json!(list);
}

/// A review built from `tests/fixtures/FIXTURE.json` whose object has one container per
/// `(name, image)`, with a fresh uid.
fn review(fixture_name: &str, containers: &[(&str, &str)]) -> Value {
    static UID: AtomicUsize = AtomicUsize::new(0);
    let mut r = fixture(fixture_name);
    let n = UID.fetch_add(1, Ordering::Relaxed);
    r["request"]["uid"] = json!(format!("0e1f2a3b-0000-4000-8000-{n:012}"));
    set_containers(&mut r, containers);
    r
}

/// Turns a CREATE review into an UPDATE whose `oldObject` is the object with `old_images`.
fn update_of(mut r: Value, old_images: &[(&str, &str)]) -> Value {
    let mut old = r.clone();
    set_containers(&mut old, old_images);
    r["request"]["operation"] = json!("UPDATE");
    r["request"]["options"] = json!({"apiVersion": "meta.k8s.io/v1", "kind": "UpdateOptions"});
    r["request"]["oldObject"] = old["request"]["object"].take();
    r
}

/// POSTs `review` to `/mutate` over HTTP/2 and returns its `response`, after checking the
/// envelope and that a patch, when present, is a base64 JSONPatch.
async fn mutate(server: &Pinhook, review: &Value) -> Value {
    let (status, version, body) = server
        .post_json(
            Http::V2,
            "/mutate?timeout=10s",
            serde_json::to_vec(review).unwrap(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(version, reqwest::Version::HTTP_2);
    assert_eq!(body["apiVersion"], "admission.k8s.io/v1", "{body}");
    assert_eq!(body["kind"], "AdmissionReview", "{body}");
    assert_eq!(body["response"]["uid"], review["request"]["uid"], "{body}");
    body["response"].clone()
}

/// The decoded JSON Patch of an allowed response (panics when there is none).
fn patch_of(resp: &Value) -> Value {
    assert_eq!(resp["allowed"], true, "{resp}");
    assert_eq!(resp["patchType"], "JSONPatch", "{resp}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(resp["patch"].as_str().expect("patch is a base64 string"))
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Applies `patch` to `object` with Python's `jsonpatch` (`test` operations included).
fn apply_with_jsonpatch(object: &Value, patch: &Value) -> Value {
    const SCRIPT: &str = "import json, sys, jsonpatch\n\
        d = json.load(sys.stdin)\n\
        json.dump(jsonpatch.apply_patch(d['object'], d['patch']), sys.stdout)\n";
    let mut child = Command::new("python3")
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3 (scripts/install-test-deps.sh installs jsonpatch)");
    let input = serde_json::to_vec(&json!({"object": object, "patch": patch})).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "jsonpatch refused the patch {patch}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Sends `review`, applies its patch to the request object with `jsonpatch`, and returns the
/// response and the patched review (ready to be sent again).
async fn mutate_and_apply(server: &Pinhook, review: &Value) -> (Value, Value) {
    let resp = mutate(server, review).await;
    let patch = patch_of(&resp);
    let mut patched = review.clone();
    patched["request"]["object"] = apply_with_jsonpatch(&review["request"]["object"], &patch);
    (resp, patched)
}

/// `(name, image)` of every container of the review's object.
fn images(review: &Value) -> Vec<(String, String)> {
    review
        .pointer(containers_pointer(review))
        .and_then(Value::as_array)
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_owned(),
                c["image"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// The status message of a denied response.
fn denial(resp: &Value) -> String {
    assert_eq!(resp["allowed"], false, "{resp}");
    assert!(resp.get("patch").is_none(), "{resp}");
    resp["status"]["message"].as_str().unwrap().to_owned()
}

/// Writes a docker `config.json` with `user:password` for `host` into `dir`.
fn docker_config(dir: &Path, host: &str, user: &str, password: &str) -> String {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let path = dir.join("config.json");
    std::fs::write(
        &path,
        serde_json::to_vec(&json!({"auths": {host: {"auth": auth}}})).unwrap(),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

/// The audit records of the request `uid` (waiting until at least one has been written).
fn audit_of(server: &Pinhook, uid: &Value) -> Vec<Value> {
    server.wait_for_line(Duration::from_secs(5), |v| {
        v["uid"] == *uid
            && v["event"]
                .as_str()
                .is_some_and(|e| e.starts_with("admission."))
    });
    server
        .audit_records()
        .into_iter()
        .filter(|r| r["uid"] == *uid)
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Correctness

#[tokio::test]
async fn every_kind_of_image_is_pinned_to_the_digest_skopeo_reads() {
    let reg = Registry::plain();
    let h = reg.host.clone();
    let pushed = [
        (
            "single",
            reg.push("shop/single", "1.0.0", &TestImage::single("eq-single")),
        ),
        (
            "multi",
            reg.push("shop/multi", "1.0.0", &TestImage::multi_arch("eq-multi")),
        ),
        (
            "docker",
            reg.push("shop/docker", "1.0.0", &TestImage::docker_v2("eq-docker")),
        ),
        (
            "list",
            reg.push("shop/list", "1.0.0", &TestImage::docker_list("eq-list")),
        ),
    ];
    // The platform manifests of both indexes: pinning one of them would break other platforms.
    let mut children = Vec::new();
    for repo in ["shop/multi", "shop/list"] {
        let index: Value = reg
            .client()
            .get(reg.url(&format!("/v2/{repo}/manifests/1.0.0")))
            .header("accept", MANIFEST_ACCEPT)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        for m in index["manifests"].as_array().unwrap() {
            children.push(m["digest"].as_str().unwrap().to_owned());
        }
    }
    assert_eq!(children.len(), 4);

    let server = server(insecure_policy(&h, ""), &[]);
    let containers: Vec<(&str, String)> = pushed
        .iter()
        .map(|(name, _)| (*name, format!("{h}/shop/{name}:1.0.0")))
        .collect();
    let containers: Vec<(&str, &str)> = containers.iter().map(|(n, i)| (*n, i.as_str())).collect();
    for fixture_name in ["pod_version_tags", "deployment_version_tags"] {
        let r = review(fixture_name, &containers);
        let (resp, patched) = mutate_and_apply(&server, &r).await;
        // Only image fields, each replace preceded by a test of the old value.
        let ops = patch_of(&resp);
        let ops = ops.as_array().unwrap();
        assert_eq!(ops.len(), 2 * pushed.len(), "{ops:?}");
        for pair in ops.chunks(2) {
            assert_eq!(
                (pair[0]["op"].as_str(), pair[1]["op"].as_str()),
                (Some("test"), Some("replace"))
            );
            assert_eq!(pair[0]["path"], pair[1]["path"]);
            assert!(
                pair[0]["path"].as_str().unwrap().ends_with("/image"),
                "{pair:?}"
            );
        }
        let got = images(&patched);
        for ((name, digest), (got_name, got_image)) in pushed.iter().zip(&got) {
            assert_eq!(got_name, name);
            assert_eq!(
                *got_image,
                format!("{h}/shop/{name}:1.0.0@{digest}"),
                "{fixture_name}"
            );
            let pinned = got_image.rsplit_once('@').unwrap().1;
            assert!(
                !children.iter().any(|c| c == pinned),
                "{name}: a platform manifest was pinned"
            );
        }
    }
}

#[tokio::test]
async fn a_patched_object_gets_no_patch_the_second_time() {
    let reg = Registry::plain();
    let h = reg.host.clone();
    reg.push("shop/web", "1.0.0", &TestImage::multi_arch("idem"));
    reg.push("shop/api", "2.1.0", &TestImage::single("idem"));
    let server = server(insecure_policy(&h, ""), &[]);
    let (web, api) = (format!("{h}/shop/web:1.0.0"), format!("{h}/shop/api:2.1.0"));
    for fixture_name in ["pod_version_tags", "deployment_version_tags"] {
        let r = review(fixture_name, &[("web", &web), ("api", &api)]);
        let (_, mut patched) = mutate_and_apply(&server, &r).await;
        assert!(images(&patched).iter().all(|(_, i)| i.contains("@sha256:")));
        let before = reg.manifest_requests("shop/web", "1.0.0");
        patched["request"]["uid"] =
            json!(format!("{}-again", r["request"]["uid"].as_str().unwrap()));
        let resp = mutate(&server, &patched).await;
        assert_eq!(resp["allowed"], true, "{resp}");
        assert!(
            resp.get("patch").is_none() && resp.get("patchType").is_none(),
            "{resp}"
        );
        assert_eq!(
            reg.manifest_requests("shop/web", "1.0.0"),
            before,
            "a digest was resolved again"
        );
    }
}

#[tokio::test]
async fn keep_tag_false_pins_name_at_digest_in_the_users_spelling() {
    let reg = Registry::plain();
    let port = reg.addr.port();
    let digest = reg.push("team/sub/app", "3.2.1", &TestImage::single("keep"));
    // The same registry spelled two ways: each keeps its own spelling.
    let policy = format!(
        "keepTag: false\nregistries:\n  - host: 127.0.0.1:{port}\n    insecure: true\n  - host: localhost:{port}\n    insecure: true\n"
    );
    let server = server(policy, &[]);
    let ip = format!("127.0.0.1:{port}/team/sub/app:3.2.1");
    let name = format!("localhost:{port}/team/sub/app:3.2.1");
    let r = review("deployment_version_tags", &[("ip", &ip), ("name", &name)]);
    let (_, patched) = mutate_and_apply(&server, &r).await;
    assert_eq!(
        images(&patched),
        [
            (
                "ip".to_owned(),
                format!("127.0.0.1:{port}/team/sub/app@{digest}")
            ),
            (
                "name".to_owned(),
                format!("localhost:{port}/team/sub/app@{digest}")
            ),
        ]
    );
}

#[tokio::test]
async fn a_tls_registry_is_pinned_with_its_ca_file_and_refused_without() {
    let reg = Registry::start(RegistryOptions {
        tls: true,
        ..Default::default()
    });
    let h = reg.host.clone();
    let digest = reg.push("secure/app", "1.0.0", &TestImage::multi_arch("tls"));
    let image = format!("{h}/secure/app:1.0.0");
    let ca = reg.ca_file().unwrap();

    let trusting = server(
        format!("registries:\n  - host: {h}\n    caFile: {}\n", ca.display()),
        &[],
    );
    let r = review("pod_version_tags", &[("app", &image)]);
    let (_, patched) = mutate_and_apply(&trusting, &r).await;
    assert_eq!(images(&patched)[0].1, format!("{image}@{digest}"));

    let untrusting = server("# defaults\n".into(), &[]);
    let r = review("pod_version_tags", &[("app", &image)]);
    let msg = denial(&mutate(&untrusting, &r).await);
    assert!(
        msg.contains(&format!("TLS failure with registry {h}"))
            && msg.contains("give the registry's CA as caFile"),
        "{msg}"
    );
    assert!(msg.contains(&format!("{image:?}")), "{msg}");
}

#[tokio::test]
async fn basic_auth_registry_is_pinned_with_registry_config_credentials() {
    let reg = Registry::start(RegistryOptions {
        tls: false,
        auth: RegistryAuth::basic("alice", "s3cret"),
    });
    let h = reg.host.clone();
    let digest = reg.push("private/app", "1.0.0", &TestImage::docker_v2("basic"));
    let dir = tempfile::tempdir().unwrap();
    let config = docker_config(dir.path(), &h, "alice", "s3cret");
    let server = server(insecure_policy(&h, ""), &["--registry-config", &config]);
    let image = format!("{h}/private/app:1.0.0");
    let (_, patched) =
        mutate_and_apply(&server, &review("pod_version_tags", &[("app", &image)])).await;
    assert_eq!(images(&patched)[0].1, format!("{image}@{digest}"));
}

#[tokio::test]
async fn basic_auth_registry_without_valid_credentials_denies_naming_what_was_tried() {
    let reg = Registry::start(RegistryOptions {
        tls: false,
        auth: RegistryAuth::basic("alice", "s3cret"),
    });
    let h = reg.host.clone();
    reg.push("private/app", "1.0.0", &TestImage::single("basic"));
    let image = format!("{h}/private/app:1.0.0");

    // No credentials at all: only anonymous access was tried.
    let anonymous = server(insecure_policy(&h, ""), &[]);
    let msg = denial(&mutate(&anonymous, &review("pod_version_tags", &[("app", &image)])).await);
    assert!(msg.contains(&format!("{image:?}")), "{msg}");
    assert!(
        msg.contains(&format!(
            "registry {h} refused access to private/app (unauthorized; tried anonymous)"
        )),
        "{msg}"
    );

    // A wrong password in --registry-config: that file, then anonymous; the registry's words.
    let dir = tempfile::tempdir().unwrap();
    let config = docker_config(dir.path(), &h, "alice", "wrong");
    let wrong = server(insecure_policy(&h, ""), &["--registry-config", &config]);
    let msg = denial(&mutate(&wrong, &review("pod_version_tags", &[("app", &image)])).await);
    assert!(
        msg.contains(&format!(
            "(unauthorized: \"authentication required\"; tried registry config {config}, anonymous)"
        )),
        "{msg}"
    );
}

#[tokio::test]
async fn bearer_token_is_fetched_once_and_reused_for_another_tag() {
    let reg = Registry::start(RegistryOptions {
        tls: false,
        auth: RegistryAuth::token("bob", "hunter2", Duration::from_secs(300)),
    });
    let h = reg.host.clone();
    let one = reg.push("team/app", "1.0.0", &TestImage::single("tok1"));
    let two = reg.push("team/app", "2.0.0", &TestImage::docker_list("tok2"));
    let dir = tempfile::tempdir().unwrap();
    let config = docker_config(dir.path(), &h, "bob", "hunter2");
    let server = server(insecure_policy(&h, ""), &["--registry-config", &config]);

    let image = format!("{h}/team/app:1.0.0");
    let (_, patched) =
        mutate_and_apply(&server, &review("pod_version_tags", &[("app", &image)])).await;
    assert_eq!(images(&patched)[0].1, format!("{image}@{one}"));
    assert_eq!(reg.token_requests(), 1);

    let image = format!("{h}/team/app:2.0.0");
    let (_, patched) = mutate_and_apply(
        &server,
        &review("deployment_version_tags", &[("app", &image)]),
    )
    .await;
    assert_eq!(images(&patched)[0].1, format!("{image}@{two}"));
    assert!(
        reg.manifest_requests("team/app", "2.0.0") >= 1,
        "2.0.0 was not a cache miss"
    );
    assert_eq!(
        reg.token_requests(),
        1,
        "the token of team/app was not reused"
    );
}

#[tokio::test]
async fn pull_secrets_of_the_pod_and_of_its_service_account_are_used_by_get_only() {
    let reg = Registry::start(RegistryOptions {
        tls: false,
        auth: RegistryAuth::basic("carol", "pa55"),
    });
    let h = reg.host.clone();
    let shop = reg.push("shop/app", "1.0.0", &TestImage::single("ps1"));
    let team = reg.push("team/app", "1.0.0", &TestImage::multi_arch("ps2"));
    let kube = FakeKube::start();
    // shop: the pod names a dockerconfigjson secret; its default service account has none.
    kube.add_dockerconfigjson_secret("shop", "regcred", &h, "carol", "pa55");
    kube.add_service_account("shop", "default", &[]);
    // team: the pod names nothing; the default service account has a legacy dockercfg secret.
    kube.add_dockercfg_secret("team", "legacy", &h, "carol", "pa55");
    kube.add_service_account("team", "default", &["legacy"]);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.write_kubeconfig(dir.path());
    let server = Pinhook::start_with(Options {
        policy: Some(insecure_policy(&h, "")),
        env: vec![("KUBECONFIG".into(), kubeconfig.to_str().unwrap().into())],
        ..Default::default()
    });
    let in_ns = |mut r: Value, ns: &str| {
        r["request"]["namespace"] = json!(ns);
        r["request"]["object"]["metadata"]["namespace"] = json!(ns);
        r
    };

    let image = format!("{h}/shop/app:1.0.0");
    let mut r = review("pod_version_tags", &[("app", &image)]);
    r["request"]["object"]["spec"]["imagePullSecrets"] = json!([{"name": "regcred"}]);
    let (_, patched) = mutate_and_apply(&server, &r).await;
    assert_eq!(images(&patched)[0].1, format!("{image}@{shop}"));

    let image = format!("{h}/team/app:1.0.0");
    let r = in_ns(review("pod_version_tags", &[("app", &image)]), "team");
    let (_, patched) = mutate_and_apply(&server, &r).await;
    assert_eq!(images(&patched)[0].1, format!("{image}@{team}"));

    // Control: a namespace with neither is refused, so the credentials above came from the secrets.
    let r = in_ns(review("pod_version_tags", &[("app", &image)]), "other");
    let msg = denial(&mutate(&server, &r).await);
    assert!(msg.contains("unauthorized; tried anonymous"), "{msg}");

    assert!(kube.forbidden().is_empty(), "{:?}", kube.forbidden());
    let requests = kube.requests();
    for want in [
        "GET /api/v1/namespaces/shop/secrets/regcred",
        "GET /api/v1/namespaces/team/serviceaccounts/default",
        "GET /api/v1/namespaces/team/secrets/legacy",
    ] {
        assert!(
            requests.iter().any(|r| r == want),
            "{want} missing: {requests:?}"
        );
    }
    for req in &requests {
        let Some(path) = req.strip_prefix("GET /api/v1/namespaces/") else {
            panic!("not a namespaced GET: {req}");
        };
        let parts: Vec<&str> = path.split('/').collect();
        assert!(
            parts.len() == 3
                && ["secrets", "serviceaccounts"].contains(&parts[1])
                && !parts[2].is_empty()
                && !path.contains('?'),
            "not a GET by name: {req}"
        );
    }
}

#[tokio::test]
async fn a_re_pushed_tag_is_pinned_to_its_new_digest_after_the_cache_ttl() {
    let reg = Registry::plain();
    let h = reg.host.clone();
    let a = reg.push("shop/web", "1.0.0", &TestImage::single("before"));
    let server = server(insecure_policy(&h, ""), &["--cache-ttl", "1s"]);
    let image = format!("{h}/shop/web:1.0.0");
    let pinned = |r: &Value| images(r)[0].1.clone();

    let (_, patched) =
        mutate_and_apply(&server, &review("pod_version_tags", &[("web", &image)])).await;
    assert_eq!(pinned(&patched), format!("{image}@{a}"));

    let b = reg.push("shop/web", "1.0.0", &TestImage::multi_arch("after"));
    assert_ne!(a, b);
    let start = Instant::now();
    loop {
        let (_, patched) =
            mutate_and_apply(&server, &review("pod_version_tags", &[("web", &image)])).await;
        let got = pinned(&patched);
        if got != format!("{image}@{a}") {
            assert_eq!(got, format!("{image}@{b}"));
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "still pinned to the old digest 10 s after a 1 s cache TTL"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn update_keeps_the_old_digest_unless_refresh_changes() {
    let reg = Registry::plain();
    let h = reg.host.clone();
    let a = reg.push("shop/web", "1.0.0", &TestImage::single("v-a"));
    let b = reg.push("shop/web", "1.0.0", &TestImage::single("v-b"));
    assert_ne!(a, b);
    assert_eq!(reg.inspect_digest("shop/web", "1.0.0"), b);
    let server = server(insecure_policy(&h, ""), &[]);
    let image = format!("{h}/shop/web:1.0.0");
    let old_image = format!("{image}@{a}");
    let set_refresh = |mut r: Value, old: &str, new: &str| {
        r["request"]["oldObject"]["metadata"]["annotations"] = json!({"pinhook.dev/refresh": old});
        r["request"]["object"]["metadata"]["annotations"] = json!({"pinhook.dev/refresh": new});
        r
    };

    // A GitOps re-apply of the tag (refresh annotation present but unchanged): digest A kept.
    let before = reg.manifest_requests("shop/web", "1.0.0");
    let r = update_of(
        review("deployment_version_tags", &[("web", &image)]),
        &[("web", &old_image)],
    );
    let r = set_refresh(r, "1", "1");
    let (resp, patched) = mutate_and_apply(&server, &r).await;
    assert_eq!(images(&patched)[0].1, old_image);
    assert_eq!(
        reg.manifest_requests("shop/web", "1.0.0"),
        before,
        "the registry was asked"
    );
    let warnings = resp["warnings"].to_string();
    assert!(warnings.contains("kept its digest"), "{warnings}");

    // The same update with a new refresh value resolves again: digest B.
    let r = update_of(
        review("deployment_version_tags", &[("web", &image)]),
        &[("web", &old_image)],
    );
    let r = set_refresh(r, "1", "2");
    let (_, patched) = mutate_and_apply(&server, &r).await;
    assert_eq!(images(&patched)[0].1, format!("{image}@{b}"));
    assert!(reg.manifest_requests("shop/web", "1.0.0") > before);
}

#[tokio::test]
async fn a_missing_tag_is_denied_even_when_failures_are_allowed() {
    let reg = Registry::plain();
    let h = reg.host.clone();
    reg.push("shop/web", "1.0.0", &TestImage::single("nf"));
    let server = server(insecure_policy(&h, "onResolveFailure: allow\n"), &[]);
    let good = format!("{h}/shop/web:1.0.0");
    let missing = format!("{h}/shop/web:9.9.9");
    let r = review("pod_version_tags", &[("web", &good), ("api", &missing)]);
    let resp = mutate(&server, &r).await;
    let msg = denial(&resp);
    assert!(
        msg.contains(&format!(
            "container \"api\" (spec.containers[1]): cannot pin image {missing:?}: tag \"9.9.9\" not found in {h}/shop/web"
        )),
        "{msg}"
    );
    assert!(
        !msg.contains("\"web\""),
        "the resolvable image is not blamed: {msg}"
    );

    // One audit record, a denial naming the missing image; nothing recorded as pinned.
    let records = audit_of(&server, &r["request"]["uid"]);
    assert_eq!(records.len(), 1, "{records:#?}");
    assert_eq!(records[0]["event"], "admission.denied", "{records:#?}");
    assert_eq!(records[0]["endpoint"], "mutate");
    let recorded = records[0].to_string();
    assert!(
        recorded.contains(&missing) && recorded.contains("not found"),
        "{recorded}"
    );
}

#[tokio::test]
async fn pinning_is_recorded_in_audit_line_annotation_and_warning() {
    let reg = Registry::plain();
    let h = reg.host.clone();
    let digest = reg.push("shop/web", "1.4.2", &TestImage::multi_arch("rec"));
    let server = server(insecure_policy(&h, ""), &[]);
    let image = format!("{h}/shop/web:1.4.2");
    let pinned = format!("{image}@{digest}");
    let r = review("deployment_version_tags", &[("web", &image)]);
    let (resp, patched) = mutate_and_apply(&server, &r).await;
    assert_eq!(images(&patched)[0].1, pinned);

    assert_eq!(
        resp["auditAnnotations"]["pinned-images"],
        format!("web: {image} → {pinned}"),
        "{resp}"
    );
    let warnings: Vec<&str> = resp["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap())
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("\"web\"")
            && warnings[0].contains(&format!("{image} pinned to {}", &digest[..19])),
        "{warnings:?}"
    );

    let records = audit_of(&server, &r["request"]["uid"]);
    assert_eq!(records.len(), 1, "{records:#?}");
    let rec = &records[0];
    assert_eq!(rec["event"], "admission.pinned");
    assert_eq!(
        (rec["kind"].as_str(), rec["name"].as_str()),
        (Some("Deployment"), Some("web"))
    );
    assert_eq!(
        rec["images"],
        json!([{
            "container": "web",
            "site": "container",
            "path": "spec.template.spec.containers[0]",
            "image": image,
            "pinned": pinned,
            "result": "pinned",
        }])
    );
}

#[tokio::test]
async fn image_volumes_are_pinned_to_the_digest_skopeo_reads() {
    let reg = Registry::plain();
    let h = reg.host.clone();
    let web = reg.push("shop/web", "1.0.0", &TestImage::single("volume-web"));
    let model = reg.push("acme/model", "2.0", &TestImage::multi_arch("volume-model"));
    let server = server(insecure_policy(&h, ""), &[]);
    let web_image = format!("{h}/shop/web:1.0.0");
    let model_image = format!("{h}/acme/model:2.0");
    for fixture_name in ["pod_version_tags", "deployment_version_tags"] {
        let mut r = review(fixture_name, &[("web", &web_image)]);
        let spec = containers_pointer(&r).trim_end_matches("/containers");
        r.pointer_mut(spec).unwrap()["volumes"] = json!([
            {"name": "scratch", "emptyDir": {}},
            {"name": "model", "image": {"reference": model_image, "pullPolicy": "IfNotPresent"}}
        ]);
        let (resp, patched) = mutate_and_apply(&server, &r).await;
        let pointer = format!(
            "{}/volumes/1/image/reference",
            spec.trim_start_matches("/request/object")
        );
        let patch = patch_of(&resp);
        assert!(
            patch
                .as_array()
                .unwrap()
                .iter()
                .any(|op| op["op"] == "replace" && op["path"] == pointer),
            "{fixture_name}: {patch}"
        );
        let spec_after = patched.pointer(spec).unwrap();
        assert_eq!(
            spec_after["volumes"][1]["image"]["reference"],
            format!("{model_image}@{model}")
        );
        assert_eq!(
            spec_after["volumes"][1]["image"]["pullPolicy"],
            "IfNotPresent"
        );
        assert_eq!(
            spec_after["volumes"][0],
            json!({"name": "scratch", "emptyDir": {}})
        );
        assert_eq!(
            spec_after["containers"][0]["image"],
            format!("{web_image}@{web}")
        );
        assert!(
            resp["warnings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w.as_str().unwrap().starts_with(&format!(
                    "pinhook: volume \"model\": {model_image} pinned to sha256:"
                ))),
            "{resp}"
        );
        assert!(
            resp["auditAnnotations"]["pinned-images"]
                .as_str()
                .unwrap()
                .contains(&format!(
                    "volume/model: {model_image} → {model_image}@{model}"
                )),
            "{resp}"
        );
        // Idempotent: the patched object gets no patch.
        let again = mutate(&server, &patched).await;
        assert!(again.get("patch").is_none(), "{fixture_name}: {again}");
    }
}
