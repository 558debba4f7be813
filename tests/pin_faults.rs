//! Pinning when registries misbehave (down, slow, hung, rate-limiting, answering garbage), the
//! cache under outages and bursts, and the security boundaries: credentials never leak between
//! namespaces through the cache, and pinhook is never an SSRF proxy.
//!
//! Every registry here is real (`docker-registry` from the harness) except where the fault
//! cannot be produced by one (429, malformed digests, schema1, redirects, foreign token realms):
//! those are small axum servers speaking the registry's wire format on 127.0.0.1.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{Method, Uri};
use axum::response::Response;
use base64::Engine as _;
use common::kube::FakeKube;
use common::registry::{
    Background, DelayProxy, OCI_MANIFEST, ProxyMode, Registry, RegistryAuth, RegistryOptions,
    TestImage, free_port, serve_router,
};
use common::{Http, Options, Pinhook, fixture};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

// ---------------------------------------------------------------------------------------------
// Helpers

/// `registries:` entries speaking plain HTTP for `hosts`, followed by `extra` policy YAML.
fn policy(hosts: &[&str], extra: &str) -> String {
    let mut out = String::from("registries:\n");
    for h in hosts {
        out += &format!("  - host: \"{h}\"\n    insecure: true\n");
    }
    out + extra
}

/// A Pod review in `ns` with one container `web` running `image` (a fresh uid each time).
fn pod(image: &str, ns: &str) -> Value {
    static N: AtomicUsize = AtomicUsize::new(0);
    let mut review = fixture("pod_version_tags");
    let n = N.fetch_add(1, Ordering::Relaxed);
    review["request"]["uid"] = json!(format!("00000000-0000-4000-8000-{n:012}"));
    review["request"]["namespace"] = json!(ns);
    review["request"]["object"]["metadata"]["namespace"] = json!(ns);
    review["request"]["object"]["spec"]["containers"] = json!([{"name": "web", "image": image}]);
    review
}

/// POSTs `review` to `/mutate?timeout=TIMEOUT` with `client`; returns the checked `response`.
async fn post_review(client: &reqwest::Client, url: &str, review: &Value) -> Value {
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .json(review)
        .send()
        .await
        .expect("POST /mutate");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let body: Value = resp.json().await.expect("AdmissionReview JSON");
    assert_eq!(body["apiVersion"], "admission.k8s.io/v1", "{body}");
    assert_eq!(body["kind"], "AdmissionReview", "{body}");
    assert_eq!(
        body["response"]["uid"], review["request"]["uid"],
        "uid not echoed: {body}"
    );
    body["response"].clone()
}

/// `/mutate` over HTTP/2 with the API server's `timeout`.
async fn mutate(server: &Pinhook, review: &Value, timeout: &str) -> Value {
    let url = server.url(&format!("/mutate?timeout={timeout}"));
    post_review(&server.client(Http::V2), &url, review).await
}

/// The one image the patch writes, after checking it is `test` then `replace` of that field.
fn pinned_image(resp: &Value) -> String {
    assert_eq!(resp["allowed"], true, "{resp}");
    assert_eq!(resp["patchType"], "JSONPatch", "{resp}");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(resp["patch"].as_str().expect("patch"))
        .unwrap();
    let ops: Value = serde_json::from_slice(&patch).unwrap();
    let ops = ops.as_array().unwrap();
    assert_eq!(ops.len(), 2, "{ops:?}");
    assert_eq!(ops[0]["op"], "test");
    assert_eq!(ops[1]["op"], "replace");
    assert_eq!(ops[1]["path"], "/spec/containers/0/image");
    ops[1]["value"].as_str().unwrap().to_owned()
}

/// The denial message, after checking the request was denied with 403.
fn denial(resp: &Value) -> String {
    assert_eq!(resp["allowed"], false, "{resp}");
    assert_eq!(resp["status"]["code"], 403, "{resp}");
    assert!(resp.get("patch").is_none(), "{resp}");
    resp["status"]["message"].as_str().unwrap().to_owned()
}

/// The response's warnings.
fn warnings(resp: &Value) -> Vec<String> {
    resp["warnings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| w.as_str().unwrap().to_owned())
        .collect()
}

fn sha256(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// `127.0.0.1:PORT` where nothing listens.
fn dead_host() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// The value of one series (`name{labels}` exactly as exposed), or 0 when absent.
fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// A server speaking just enough of the registry API to misbehave: `respond(method, path, n)`
/// answers the `n`-th (from 0) request with that method and path. Every request is recorded.
struct FakeRegistry {
    host: String,
    hits: Arc<Mutex<Vec<(String, Instant)>>>,
    _server: Background,
}

impl FakeRegistry {
    fn start(respond: impl Fn(&Method, &str, usize) -> Response + Send + Sync + 'static) -> Self {
        let hits = Arc::new(Mutex::new(Vec::<(String, Instant)>::new()));
        let respond = Arc::new(respond);
        let recorded = hits.clone();
        let router = axum::Router::new().fallback(move |method: Method, uri: Uri| {
            let (hits, respond) = (recorded.clone(), respond.clone());
            async move {
                let line = format!("{method} {}", uri.path());
                let n = {
                    let mut hits = hits.lock().unwrap();
                    let n = hits.iter().filter(|(l, _)| *l == line).count();
                    hits.push((line, Instant::now()));
                    n
                };
                respond(&method, uri.path(), n)
            }
        });
        let server = serve_router("fake-registry", router);
        Self {
            host: server.addr.to_string(),
            hits,
            _server: server,
        }
    }

    /// When each `METHOD PATH` request arrived.
    fn times(&self, method: &str, path: &str) -> Vec<Instant> {
        let line = format!("{method} {path}");
        let hits = self.hits.lock().unwrap();
        hits.iter()
            .filter(|(l, _)| *l == line)
            .map(|(_, t)| *t)
            .collect()
    }
}

/// A response with `status`, `headers` and `body`.
fn reply(status: u16, headers: &[(&str, &str)], body: &[u8]) -> Response {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(axum::body::Body::from(body.to_vec())).unwrap()
}

/// The registry's 404 for an unknown manifest.
fn manifest_unknown() -> Response {
    reply(
        404,
        &[("content-type", "application/json")],
        br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
    )
}

// ---------------------------------------------------------------------------------------------
// Registry down, slow or hung

#[tokio::test]
async fn stopped_registry_denies_by_default_and_leaves_unpinned_when_allowed() {
    let mut reg = Registry::plain();
    reg.push("down/app", "1.0.0", &TestImage::single("down"));
    let host = reg.host.clone();
    reg.stop();
    let image = format!("{host}/down/app:1.0.0");
    // A fresh pinhook: nothing cached, nothing resolved before.
    let server = Pinhook::start_with(Options {
        policy: Some(policy(
            &[&host],
            "rules:\n  - namespaces: [lenient]\n    onResolveFailure: allow\n",
        )),
        ..Default::default()
    });

    let resp = mutate(&server, &pod(&image, "shop"), "10s").await;
    let msg = denial(&resp);
    assert!(
        msg.contains(&format!("cannot pin image \"{image}\"")),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("cannot connect to registry {host}: ")),
        "{msg}"
    );
    assert!(msg.contains("Connection refused"), "{msg}");
    assert!(
        resp["auditAnnotations"]["unresolved-images"]
            .as_str()
            .unwrap()
            .contains(&image),
        "{resp}"
    );

    let resp = mutate(&server, &pod(&image, "lenient"), "10s").await;
    assert_eq!(resp["allowed"], true, "{resp}");
    assert!(
        resp.get("patch").is_none() && resp.get("patchType").is_none(),
        "{resp}"
    );
    assert_eq!(
        warnings(&resp),
        [format!(
            "pinhook: container \"web\": {image} left unpinned: connect"
        )]
    );
    let unpinned = resp["auditAnnotations"]["unpinned-images"]
        .as_str()
        .unwrap();
    assert!(
        unpinned.starts_with(&format!("web: {image} (cannot connect to registry {host}")),
        "{unpinned}"
    );
    let uid = resp["uid"].clone();
    let record = server.wait_for_line(Duration::from_secs(5), |v| {
        v["event"] == "admission.unpinned" && v["uid"] == uid
    });
    assert_eq!(record["namespace"], "lenient");
    assert_eq!(record["images"][0]["image"], image.as_str());
    assert_eq!(record["images"][0]["result"], "unpinned");
    assert!(record["images"][0].get("pinned").is_none(), "{record}");
    assert!(
        record["images"][0]["error"]
            .as_str()
            .unwrap()
            .contains(&format!("cannot connect to registry {host}")),
        "{record}"
    );
}

#[tokio::test]
async fn slow_registry_is_answered_before_the_api_server_deadline() {
    let reg = Registry::plain();
    reg.push("slow/app", "1.0.0", &TestImage::single("slow"));
    reg.push("slow/app", "2.0.0", &TestImage::single("slow2"));
    // Every burst towards the registry is held far longer than any budget here.
    let proxy = DelayProxy::start(reg.addr, ProxyMode::Delay(Duration::from_secs(30)));
    let host = proxy.host();
    let server = Pinhook::start_with(Options {
        policy: Some(policy(
            &[&host],
            "rules:\n  - namespaces: [lenient]\n    onResolveFailure: allow\n",
        )),
        ..Default::default()
    });

    let image = format!("{host}/slow/app:1.0.0");
    let start = Instant::now();
    let resp = mutate(&server, &pod(&image, "shop"), "2s").await;
    let took = start.elapsed();
    eprintln!("slow registry: denied after {took:?} (request timeout 2s)");
    let msg = denial(&resp);
    assert!(
        msg.contains(&format!("cannot pin image \"{image}\"")),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("registry {host} did not answer within")),
        "{msg}"
    );
    assert!(
        took < Duration::from_millis(2500),
        "answered after {took:?}, past the API server's 2s"
    );

    let image = format!("{host}/slow/app:2.0.0");
    let start = Instant::now();
    let resp = mutate(&server, &pod(&image, "lenient"), "2s").await;
    let took = start.elapsed();
    eprintln!("slow registry, onResolveFailure: allow: answered after {took:?}");
    assert_eq!(resp["allowed"], true, "{resp}");
    assert!(resp.get("patch").is_none(), "{resp}");
    assert_eq!(
        warnings(&resp),
        [format!(
            "pinhook: container \"web\": {image} left unpinned: timeout"
        )]
    );
    assert!(took < Duration::from_millis(2500), "{took:?}");
    assert!(proxy.accepted() >= 2, "pinhook did try the registry");
    // The registry never saw the held requests.
    assert_eq!(reg.manifest_requests("slow/app", "1.0.0"), 0);
}

#[tokio::test]
async fn paused_registry_times_out_then_pins_once_resumed() {
    let reg = Registry::plain();
    let digest = reg.push("hung/app", "1.0.0", &TestImage::single("hung"));
    let host = reg.host.clone();
    let server = Pinhook::start_with(Options {
        policy: Some(policy(
            &[&host],
            "rules:\n  - namespaces: [lenient]\n    onResolveFailure: allow\n",
        )),
        // Failures are remembered only briefly, so the recovery below is seen at once.
        args: vec!["--cache-negative-ttl".into(), "100ms".into()],
        ..Default::default()
    });
    let image = format!("{host}/hung/app:1.0.0");

    reg.pause();
    let start = Instant::now();
    let resp = mutate(&server, &pod(&image, "shop"), "2s").await;
    let took = start.elapsed();
    eprintln!("paused registry: denied after {took:?} (request timeout 2s)");
    let msg = denial(&resp);
    assert!(
        msg.contains(&format!("registry {host} did not answer within")),
        "{msg}"
    );
    assert!(msg.contains(&format!("\"{image}\"")), "{msg}");
    assert!(took < Duration::from_millis(2500), "{took:?}");

    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = mutate(&server, &pod(&image, "lenient"), "2s").await;
    assert_eq!(resp["allowed"], true, "{resp}");
    assert!(resp.get("patch").is_none(), "{resp}");
    assert_eq!(
        warnings(&resp),
        [format!(
            "pinhook: container \"web\": {image} left unpinned: timeout"
        )]
    );

    reg.resume();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resp = mutate(&server, &pod(&image, "shop"), "10s").await;
    assert_eq!(pinned_image(&resp), format!("{image}@{digest}"));
}

#[tokio::test]
async fn stale_if_error_serves_the_last_digest_with_its_age_and_0s_switches_it_off() {
    let mut reg = Registry::plain();
    let digest = reg.push(
        "platform/payments/ledger-service",
        "1.0.0",
        &TestImage::multi_arch("stale"),
    );
    let host = reg.host.clone();
    let server = Pinhook::start_with(Options {
        policy: Some(policy(
            &[&host],
            "staleIfError: 1h\nrules:\n  - namespaces: [strict]\n    staleIfError: 0s\n",
        )),
        args: vec!["--cache-ttl".into(), "1s".into()],
        ..Default::default()
    });
    // A name of realistic length: the warning's age must survive its 120-character limit.
    let image = format!("{host}/platform/payments/ledger-service:1.0.0");
    let pinned = format!("{image}@{digest}");

    let resolved_at = Instant::now();
    let resp = mutate(&server, &pod(&image, "shop"), "10s").await;
    assert_eq!(pinned_image(&resp), pinned);

    reg.stop();
    // Past --cache-ttl: the cached answer has expired and the registry must be asked again.
    tokio::time::sleep(Duration::from_millis(1300)).await;

    let resp = mutate(&server, &pod(&image, "shop"), "10s").await;
    assert_eq!(pinned_image(&resp), pinned, "the same digest as before");
    let w = warnings(&resp);
    assert_eq!(w.len(), 1, "{w:?}");
    let age: u64 = w[0]
        .strip_prefix("pinhook: container \"web\": registry unreachable, digest resolved ")
        .and_then(|r| r.split_once("s ago: "))
        // Then the image and digest, as far as the limit lets them go.
        .filter(|(_, rest)| {
            format!("{image} pinned to {digest}").starts_with(rest.trim_end_matches('…'))
        })
        .unwrap_or_else(|| panic!("no age in {:?}", w[0]))
        .0
        .parse()
        .unwrap();
    assert!(
        (1..=resolved_at.elapsed().as_secs()).contains(&age),
        "age {age}s, resolved {:?} ago",
        resolved_at.elapsed()
    );
    let uid = resp["uid"].clone();
    let record = server.wait_for_line(Duration::from_secs(5), |v| {
        v["event"] == "admission.pinned" && v["uid"] == uid
    });
    assert_eq!(record["images"][0]["result"], "stale", "{record}");
    assert_eq!(record["images"][0]["staleSeconds"], age, "{record}");

    // staleIfError: 0s: the same outage is a plain failure.
    let resp = mutate(&server, &pod(&image, "strict"), "10s").await;
    let msg = denial(&resp);
    assert!(
        msg.contains(&format!("cannot connect to registry {host}")),
        "{msg}"
    );
    let metrics = server.metrics().await;
    assert_eq!(
        metric(&metrics, "pinhook_cache_lookups_total{result=\"stale\"}"),
        1.0,
        "{metrics}"
    );
}

// ---------------------------------------------------------------------------------------------
// The cache: single-flight, and no leaks between namespaces

#[tokio::test]
async fn a_burst_of_admissions_of_one_uncached_image_asks_the_registry_once() {
    let reg = Registry::plain();
    let digest = reg.push("burst/app", "1.0.0", &TestImage::multi_arch("burst"));
    let host = reg.host.clone();
    let server = Pinhook::start_with(Options {
        policy: Some(policy(&[&host], "")),
        ..Default::default()
    });
    let image = format!("{host}/burst/app:1.0.0");
    // One HTTP/2 client: 100 streams on one connection, all in flight together.
    let client = server.client(Http::V2);
    let url = server.url("/mutate?timeout=10s");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..100 {
        let (client, url, review) = (client.clone(), url.clone(), pod(&image, "shop"));
        tasks.spawn(async move { post_review(&client, &url, &review).await });
    }
    let answers = tasks.join_all().await;
    assert_eq!(answers.len(), 100);
    for resp in &answers {
        assert_eq!(pinned_image(resp), format!("{image}@{digest}"));
    }
    assert_eq!(
        reg.manifest_requests("burst/app", "1.0.0"),
        1,
        "counted at the registry: {:#?}",
        reg.access_log()
    );
}

/// A pod in `ns` running `image` with `imagePullSecrets: [regcred]`.
fn pod_with_secret(image: &str, ns: &str) -> Value {
    let mut review = pod(image, ns);
    review["request"]["object"]["spec"]["imagePullSecrets"] = json!([{"name": "regcred"}]);
    review
}

#[tokio::test]
async fn a_digest_resolved_with_one_namespaces_secret_never_answers_another_namespace() {
    let reg = Registry::start(RegistryOptions {
        tls: false,
        auth: RegistryAuth::basic("alice", "s3cret"),
    });
    let digest = reg.push("private/app", "1.0.0", &TestImage::single("private"));
    let host = reg.host.clone();
    let image = format!("{host}/private/app:1.0.0");
    let fake = FakeKube::start();
    // Only namespace "a" holds the secret; "b" names the same secret, which it does not have.
    fake.add_dockerconfigjson_secret("a", "regcred", &host, "alice", "s3cret");
    let start = |dir: &tempfile::TempDir| {
        Pinhook::start_with(Options {
            policy: Some(policy(&[&host], "")),
            env: vec![(
                "KUBECONFIG".into(),
                fake.write_kubeconfig(dir.path()).display().to_string(),
            )],
            ..Default::default()
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let unauthorized =
        format!("registry {host} refused access to private/app (unauthorized; tried anonymous)");

    // a, then b: the digest cached for a's credentials must not answer b.
    let server = start(&dir);
    let resp = mutate(&server, &pod_with_secret(&image, "a"), "10s").await;
    assert_eq!(pinned_image(&resp), format!("{image}@{digest}"));
    let asked = reg.manifest_requests("private/app", "1.0.0");
    let resp = mutate(&server, &pod_with_secret(&image, "b"), "10s").await;
    let msg = denial(&resp);
    assert!(msg.contains(&unauthorized), "{msg}");
    assert!(msg.contains(&format!("\"{image}\"")), "{msg}");
    assert!(
        reg.manifest_requests("private/app", "1.0.0") > asked,
        "b was answered without asking the registry"
    );
    // A pod in b without any pull secret is refused the same way.
    let msg = denial(&mutate(&server, &pod(&image, "b"), "10s").await);
    assert!(msg.contains(&unauthorized), "{msg}");
    assert!(fake.secret_gets("b", "regcred") >= 1);
    drop(server);

    // b, then a: b's failure must not answer a either.
    let server = start(&dir);
    let msg = denial(&mutate(&server, &pod_with_secret(&image, "b"), "10s").await);
    assert!(msg.contains(&unauthorized), "{msg}");
    let resp = mutate(&server, &pod_with_secret(&image, "a"), "10s").await;
    assert_eq!(pinned_image(&resp), format!("{image}@{digest}"));
    assert!(fake.forbidden().is_empty(), "{:?}", fake.forbidden());
}

// ---------------------------------------------------------------------------------------------
// Never an SSRF proxy

#[tokio::test]
async fn metadata_addresses_are_refused_as_registry_mirror_token_realm_or_redirect() {
    let reg = Registry::plain();
    let digest = reg.push("m/app", "1.0.0", &TestImage::single("mirror"));
    // A registry whose token realm and redirects point at the metadata service.
    let fake = FakeRegistry::start(|_, path, _| match path {
        "/v2/realm/app/manifests/1.0.0" => reply(
            401,
            &[(
                "www-authenticate",
                r#"Bearer realm="http://169.254.169.254/latest/meta-data/iam",service="x""#,
            )],
            b"",
        ),
        "/v2/redirect/app/manifests/1.0.0" => reply(
            307,
            &[(
                "location",
                "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            )],
            b"",
        ),
        _ => manifest_unknown(),
    });
    let extra = format!(
        "  - host: \"{}\"\n    insecure: true\n    mirrors: [\"169.254.169.254:80\"]\n",
        reg.host
    );
    let server = Pinhook::start_with(Options {
        policy: Some(policy(&["169.254.169.254", &fake.host], &extra)),
        ..Default::default()
    });

    // Written in the image, and configured as a plain-HTTP registry.
    let image = "169.254.169.254/latest/meta-data:1.0.0";
    let msg = denial(&mutate(&server, &pod(image, "shop"), "10s").await);
    assert!(
        msg.contains(
            "refusing to contact 169.254.169.254: 169.254.169.254 is a link-local or metadata address"
        ),
        "{msg}"
    );

    // As a mirror: skipped, and the registry itself answers.
    let image = format!("{}/m/app:1.0.0", reg.host);
    let resp = mutate(&server, &pod(&image, "shop"), "10s").await;
    assert_eq!(pinned_image(&resp), format!("{image}@{digest}"));
    let line = server.wait_for_line(Duration::from_secs(5), |v| {
        v["message"] == "mirror failed; trying the next endpoint"
    });
    assert_eq!(line["mirror"], "169.254.169.254:80", "{line}");
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("refusing to contact 169.254.169.254:80"),
        "{line}"
    );

    // As a token realm, and as a redirect target.
    for repo in ["realm", "redirect"] {
        let image = format!("{}/{repo}/app:1.0.0", fake.host);
        let msg = denial(&mutate(&server, &pod(&image, "shop"), "10s").await);
        assert!(
            msg.contains("refusing to contact 169.254.169.254"),
            "{repo}: {msg}"
        );
        assert!(
            msg.contains("link-local or metadata address"),
            "{repo}: {msg}"
        );
    }

    let metrics = server.metrics().await;
    assert!(
        !metrics
            .lines()
            .any(|l| l.starts_with("pinhook_registry_requests") && l.contains("169.254")),
        "a request was counted against a metadata address:\n{metrics}"
    );
}

#[tokio::test]
async fn a_token_realm_outside_allowed_registries_is_never_contacted() {
    let reg = Registry::start(RegistryOptions {
        tls: false,
        auth: RegistryAuth::token("bob", "hunter2", Duration::from_secs(300)),
    });
    let digest = reg.push("team/app", "1.0.0", &TestImage::single("realm"));
    let issuer = reg.issuer().unwrap();
    let realm_host = issuer.addr.to_string();
    assert_ne!(realm_host, reg.host);
    let host = reg.host.clone();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("config.json");
    let auth = base64::engine::general_purpose::STANDARD.encode("bob:hunter2");
    std::fs::write(
        &config,
        json!({"auths": {&host: {"auth": auth}}}).to_string(),
    )
    .unwrap();
    let extra = format!(
        "allowedRegistries: [\"{host}\"]\nrules:\n  - namespaces: [open]\n    allowedRegistries: [\"{host}\", \"{realm_host}\"]\n"
    );
    let server = Pinhook::start_with(Options {
        policy: Some(policy(&[&host], &extra)),
        args: vec!["--registry-config".into(), config.display().to_string()],
        ..Default::default()
    });
    let image = format!("{host}/team/app:1.0.0");

    let msg = denial(&mutate(&server, &pod(&image, "shop"), "10s").await);
    assert!(
        msg.contains(&format!(
            "refusing to contact {realm_host}: not in allowedRegistries"
        )),
        "{msg}"
    );
    assert!(msg.contains(&format!("\"{image}\"")), "{msg}");
    assert_eq!(issuer.token_requests(), 0, "the realm was contacted");

    // The same image where the realm is allowed: the setup works, so the refusal above is the rule's.
    let resp = mutate(&server, &pod(&image, "open"), "10s").await;
    assert_eq!(pinned_image(&resp), format!("{image}@{digest}"));
    assert!(issuer.token_requests() >= 1);
}

// ---------------------------------------------------------------------------------------------
// Registries answering oddly

#[tokio::test]
async fn rate_limiting_is_waited_out_when_it_fits_the_deadline_and_denied_when_not() {
    let digest = sha256(b"rate-limited manifest");
    let d = digest.clone();
    let fake = FakeRegistry::start(move |_, path, n| match path {
        "/v2/limited/app/manifests/1.0.0" if n == 0 => reply(429, &[("retry-after", "1")], b""),
        "/v2/limited/app/manifests/1.0.0" => reply(
            200,
            &[
                ("content-type", OCI_MANIFEST),
                ("docker-content-digest", &d),
            ],
            b"",
        ),
        "/v2/throttled/app/manifests/1.0.0" => reply(429, &[("retry-after", "30")], b""),
        _ => manifest_unknown(),
    });
    let host = fake.host.clone();
    let server = Pinhook::start_with(Options {
        policy: Some(policy(&[&host], "")),
        ..Default::default()
    });

    let image = format!("{host}/limited/app:1.0.0");
    let resp = mutate(&server, &pod(&image, "shop"), "10s").await;
    assert_eq!(pinned_image(&resp), format!("{image}@{digest}"));
    let heads = fake.times("HEAD", "/v2/limited/app/manifests/1.0.0");
    assert_eq!(heads.len(), 2, "one 429, then one retry");
    let gap = heads[1] - heads[0];
    eprintln!("Retry-After: 1 honoured: retried after {gap:?}");
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}");

    let image = format!("{host}/throttled/app:1.0.0");
    let start = Instant::now();
    let resp = mutate(&server, &pod(&image, "shop"), "3s").await;
    let took = start.elapsed();
    eprintln!("Retry-After: 30 with a 3s request timeout: denied after {took:?}");
    let msg = denial(&resp);
    assert!(
        msg.contains(&format!(
            "registry {host} is rate-limiting requests (HTTP 429, retry after 30s)"
        )),
        "{msg}"
    );
    assert!(msg.contains(&format!("\"{image}\"")), "{msg}");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(
        fake.times("HEAD", "/v2/throttled/app/manifests/1.0.0")
            .len(),
        1,
        "a wait that does not fit is not attempted"
    );
}

#[tokio::test]
async fn garbage_answers_are_hashed_or_refused_never_trusted() {
    // Unusual spacing: only hashing the exact bytes gives the right digest.
    let body: &[u8] = b"{\n  \"schemaVersion\": 2,\n  \"mediaType\": \"application/vnd.oci.image.manifest.v1+json\",\n  \"config\": {\"mediaType\": \"application/vnd.oci.image.config.v1+json\", \"digest\": \"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a\", \"size\": 2},\n  \"layers\": []\n}\n";
    let schema1: &[u8] = br#"{"schemaVersion":1,"name":"schema1/app","tag":"1.0.0","architecture":"amd64","fsLayers":[],"history":[],"signatures":[]}"#;
    let schema1_type = "application/vnd.docker.distribution.manifest.v1+prettyjws";
    let schema1_digest = sha256(schema1);
    let fake = FakeRegistry::start(move |method, path, _| {
        let get = *method == Method::GET;
        match path {
            // No Docker-Content-Digest at all: the GET body must be hashed.
            "/v2/nodigest/app/manifests/1.0.0" => reply(
                200,
                &[("content-type", OCI_MANIFEST)],
                if get { body } else { b"" },
            ),
            "/v2/baddigest/app/manifests/1.0.0" => reply(
                200,
                &[
                    ("content-type", OCI_MANIFEST),
                    ("docker-content-digest", "sha256:zzz"),
                ],
                b"",
            ),
            // What an old registry sends when it ignores Accept: schema1, with its own digest.
            "/v2/schema1/app/manifests/1.0.0" => reply(
                200,
                &[
                    ("content-type", schema1_type),
                    ("docker-content-digest", &schema1_digest),
                ],
                if get { schema1 } else { b"" },
            ),
            _ => manifest_unknown(),
        }
    });
    let host = fake.host.clone();
    let server = Pinhook::start_with(Options {
        policy: Some(policy(&[&host], "")),
        ..Default::default()
    });

    let image = format!("{host}/nodigest/app:1.0.0");
    let resp = mutate(&server, &pod(&image, "shop"), "10s").await;
    assert_eq!(pinned_image(&resp), format!("{image}@{}", sha256(body)));
    assert_eq!(
        fake.times("GET", "/v2/nodigest/app/manifests/1.0.0").len(),
        1
    );

    let image = format!("{host}/baddigest/app:1.0.0");
    let msg = denial(&mutate(&server, &pod(&image, "shop"), "10s").await);
    assert!(
        msg.contains(&format!(
            "registry {host} sent an unusable answer: Docker-Content-Digest \"sha256:zzz\" is not a sha256 digest"
        )),
        "{msg}"
    );
    assert!(msg.contains(&format!("\"{image}\"")), "{msg}");

    let image = format!("{host}/schema1/app:1.0.0");
    let msg = denial(&mutate(&server, &pod(&image, "shop"), "10s").await);
    assert!(
        msg.contains(&format!(
            "registry {host} sent an unusable answer: it served a schema1 manifest ({schema1_type})"
        )),
        "{msg}"
    );
    assert!(msg.contains(&format!("\"{image}\"")), "{msg}");

    // Still serving, and nothing panicked.
    assert!(server.metrics().await.contains("pinhook_registry_requests"));
    let stderr = server.stderr().join("\n");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        !server.lines().iter().any(|l| l.contains("panicked")),
        "{:#?}",
        server.lines()
    );
}

// ---------------------------------------------------------------------------------------------
// Metrics

#[tokio::test]
async fn metrics_count_cache_lookups_registry_requests_and_resolution_time() {
    let reg = Registry::plain();
    let digest = reg.push("metrics/app", "1.0.0", &TestImage::single("metrics"));
    let host = reg.host.clone();
    let dead = dead_host();
    let server = Pinhook::start_with(Options {
        policy: Some(policy(&[&host, &dead], "")),
        ..Default::default()
    });
    let image = format!("{host}/metrics/app:1.0.0");

    // A burst of 10 for one uncached image: one miss, nine hits, one registry request.
    let client = server.client(Http::V2);
    let url = server.url("/mutate?timeout=10s");
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (client, url, review) = (client.clone(), url.clone(), pod(&image, "shop"));
        tasks.spawn(async move { post_review(&client, &url, &review).await });
    }
    for resp in tasks.join_all().await {
        assert_eq!(pinned_image(&resp), format!("{image}@{digest}"));
    }
    // A missing tag (always denied) and a registry that is down.
    let msg = denial(
        &mutate(
            &server,
            &pod(&format!("{host}/metrics/app:9.9.9"), "shop"),
            "10s",
        )
        .await,
    );
    assert!(msg.contains("not found"), "{msg}");
    let msg = denial(
        &mutate(
            &server,
            &pod(&format!("{dead}/metrics/app:1.0.0"), "shop"),
            "10s",
        )
        .await,
    );
    assert!(msg.contains("cannot connect"), "{msg}");

    let m = server.metrics().await;
    eprintln!("{m}");
    let v = |series: &str| metric(&m, series);
    assert_eq!(
        v("pinhook_cache_lookups_total{result=\"miss\"}"),
        3.0,
        "{m}"
    );
    assert_eq!(v("pinhook_cache_lookups_total{result=\"hit\"}"), 9.0, "{m}");
    assert_eq!(
        v("pinhook_cache_lookups_total{result=\"stale\"}"),
        0.0,
        "{m}"
    );
    let requests = |registry: &str, outcome: &str| {
        v(&format!(
            "pinhook_registry_requests_total{{registry=\"{registry}\",outcome=\"{outcome}\"}}"
        ))
    };
    assert_eq!(requests(&host, "ok"), 1.0, "{m}");
    assert_eq!(requests(&host, "not-found"), 1.0, "{m}");
    assert_eq!(requests(&dead, "connect"), 1.0, "{m}");
    // What pinhook counts is what the registry saw.
    assert_eq!(reg.manifest_requests("metrics/app", "1.0.0"), 1);
    assert_eq!(reg.manifest_requests("metrics/app", "9.9.9"), 1);
    // Only the successful uncached resolution is timed.
    assert_eq!(v("pinhook_resolution_duration_seconds_count"), 1.0, "{m}");
    let sum = v("pinhook_resolution_duration_seconds_sum");
    assert!(sum > 0.0 && sum < 10.0, "{m}");
    assert_eq!(
        v("pinhook_resolution_duration_seconds_bucket{le=\"10.0\"}"),
        1.0,
        "{m}"
    );
    assert_eq!(
        v("pinhook_pinned_images_total{result=\"pinned\"}"),
        10.0,
        "{m}"
    );
    assert_eq!(
        v("pinhook_pinned_images_total{result=\"failed\"}"),
        2.0,
        "{m}"
    );
    assert_eq!(
        v("pinhook_admission_requests_total{endpoint=\"mutate\",decision=\"allowed\"}"),
        10.0,
        "{m}"
    );
    assert_eq!(
        v("pinhook_admission_requests_total{endpoint=\"mutate\",decision=\"denied\"}"),
        2.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tarpit_registry_of_one_namespace_does_not_starve_another_namespace() {
    // Namespace `tenant-a` uses a tarpit (accepts, never answers); `tenant-b` a healthy registry.
    let healthy = Registry::plain();
    let digest = healthy.push("shop/web", "1.0.0", &TestImage::single("fair"));
    let tarpit_backend = Registry::plain();
    let tarpit = DelayProxy::start(tarpit_backend.addr, ProxyMode::BlackHole);
    let (tarpit_host, healthy_host) = (tarpit.host(), healthy.host.clone());
    let server = Pinhook::start_with(Options {
        policy: Some(policy(&[&tarpit_host, &healthy_host], "")),
        // The defaults, written out: 16 lookups in flight, 4 of them to any one registry.
        args: vec![
            "--max-concurrent-resolutions".into(),
            "16".into(),
            "--max-concurrent-resolutions-per-registry".into(),
            "4".into(),
        ],
        ..Default::default()
    });

    // More admissions of distinct tarpit images than the whole process-wide pool.
    const A: usize = 20;
    let done_a = Arc::new(AtomicUsize::new(0));
    let mut tenant_a = tokio::task::JoinSet::new();
    for i in 0..A {
        let (client, url) = (server.client(Http::V2), server.url("/mutate?timeout=4s"));
        let review = pod(&format!("{tarpit_host}/stuck/app:{i}.0.0"), "tenant-a");
        let done_a = done_a.clone();
        tenant_a.spawn(async move {
            let resp = post_review(&client, &url, &review).await;
            done_a.fetch_add(1, Ordering::SeqCst);
            resp
        });
    }
    // Tenant A's lookups have taken the tarpit's share of permits.
    let start = Instant::now();
    while tarpit.accepted() < 4 {
        assert!(
            start.elapsed() < Duration::from_secs(3),
            "pinhook never reached the tarpit"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let image = format!("{healthy_host}/shop/web:1.0.0");
    let resp = mutate(&server, &pod(&image, "tenant-b"), "4s").await;
    // Ordering, not timing: B is answered while every one of A's admissions is still waiting.
    assert_eq!(
        done_a.load(Ordering::SeqCst),
        0,
        "tenant B waited for tenant A's tarpit"
    );
    assert_eq!(pinned_image(&resp), format!("{image}@{digest}"));
    assert_eq!(
        tarpit.accepted(),
        4,
        "the tarpit held at most its share of lookups"
    );

    let (mut timed_out, mut queued) = (0, 0);
    for resp in tenant_a.join_all().await {
        let msg = denial(&resp);
        if msg.contains(&format!("registry {tarpit_host} did not answer within")) {
            // Only lookups that ran say so, with the time they actually had.
            assert!(!msg.contains("within 0.0s"), "{msg}");
            timed_out += 1;
        } else if msg.contains(&format!(
            "pinhook's lookups to registry {tarpit_host} were all busy for"
        )) {
            assert!(
                msg.contains("(4 in flight, the most per registry); the registry was not asked"),
                "{msg}"
            );
            assert!(!msg.contains("did not answer"), "{msg}");
            queued += 1;
        } else {
            panic!("unexpected denial for tenant A: {msg}");
        }
    }
    eprintln!("tenant A: {timed_out} timed out at the tarpit, {queued} queued behind them");
    // The first four ran into the tarpit; the others queued for its share (a few may have got a
    // permit with a little time left, and ran, and say so).
    assert_eq!(timed_out + queued, A);
    assert!(timed_out >= 4 && queued >= A / 2, "{timed_out} {queued}");
}
