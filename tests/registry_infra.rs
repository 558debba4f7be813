//! Self-tests of the registry / token issuer / proxy / fake API server harness.

mod common;

use std::time::{Duration, Instant};

use base64::Engine as _;
use common::kube::FakeKube;
use common::registry::{
    DOCKER_LIST, DOCKER_MANIFEST, DelayProxy, MANIFEST_ACCEPT, OCI_INDEX, OCI_MANIFEST, ProxyMode,
    Registry, RegistryAuth, RegistryOptions, TOKEN_SERVICE, TestImage,
};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

fn sha256(bytes: &[u8]) -> String {
    let hex: String = Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!("sha256:{hex}")
}

/// GETs a manifest with the four Accept types; checks the digest header against the body.
async fn get_manifest(
    client: &reqwest::Client,
    reg: &Registry,
    repo: &str,
    reference: &str,
    bearer: Option<&str>,
) -> (String, String, Value) {
    let mut req = client
        .get(reg.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("accept", MANIFEST_ACCEPT);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200, "{:?}", resp.text().await);
    let digest = resp.headers()["docker-content-digest"]
        .to_str()
        .unwrap()
        .to_string();
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_string();
    let body = resp.bytes().await.unwrap();
    assert_eq!(
        sha256(&body),
        digest,
        "Docker-Content-Digest is the body's sha256"
    );
    (digest, content_type, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn plain_registry_holds_the_three_kinds_of_image() {
    let t = Instant::now();
    let reg = Registry::start(RegistryOptions::default());
    eprintln!("plain registry up in {:?}", t.elapsed());
    let client = reg.client();

    let t = Instant::now();
    let single = reg.push("demo/single", "1.0", &TestImage::single("a"));
    eprintln!("push Single in {:?}", t.elapsed());
    let t = Instant::now();
    let multi = reg.push("demo/multi", "1.0", &TestImage::multi_arch("a"));
    eprintln!("push MultiArch in {:?}", t.elapsed());
    let t = Instant::now();
    let docker = reg.push("demo/docker", "1.0", &TestImage::docker_v2("a"));
    eprintln!("push DockerV2 in {:?}", t.elapsed());
    assert_eq!(reg.inspect_digest("demo/single", "1.0"), single);
    assert_eq!(reg.inspect_digest("demo/multi", "1.0"), multi);
    assert_eq!(reg.inspect_digest("demo/docker", "1.0"), docker);
    assert_ne!(single, multi);

    // The harness's own traffic (skopeo) is not counted.
    assert_eq!(reg.manifest_requests("demo/multi", "1.0"), 0);

    let (d, ct, m) = get_manifest(&client, &reg, "demo/single", "1.0", None).await;
    assert_eq!((d.as_str(), ct.as_str()), (single.as_str(), OCI_MANIFEST));
    assert_eq!(m["mediaType"], OCI_MANIFEST);

    let (d, ct, m) = get_manifest(&client, &reg, "demo/multi", "1.0", None).await;
    assert_eq!(d, multi, "push returns the index digest");
    assert_eq!(ct, OCI_INDEX);
    assert_eq!(m["mediaType"], OCI_INDEX);
    let platforms: Vec<&str> = m["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["platform"]["architecture"].as_str().unwrap())
        .collect();
    assert_eq!(platforms, ["amd64", "arm64"]);
    // Each child is stored and addressable by digest.
    for c in m["manifests"].as_array().unwrap() {
        let child = c["digest"].as_str().unwrap();
        let (d, ct, _) = get_manifest(&client, &reg, "demo/multi", child, None).await;
        assert_eq!((d.as_str(), ct.as_str()), (child, OCI_MANIFEST));
    }

    let (d, ct, m) = get_manifest(&client, &reg, "demo/docker", "1.0", None).await;
    assert_eq!(
        (d.as_str(), ct.as_str()),
        (docker.as_str(), DOCKER_MANIFEST)
    );
    assert_eq!(m["mediaType"], DOCKER_MANIFEST);
    assert_eq!(
        m["config"]["mediaType"],
        "application/vnd.docker.container.image.v1+json"
    );

    // Without Accept: OCI content is unknown, Docker content comes back down-converted to
    // schema 1 with another digest (the traps a resolver must avoid).
    let resp = client
        .get(reg.url("/v2/demo/single/manifests/1.0"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let resp = client
        .get(reg.url("/v2/demo/docker/manifests/1.0"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_ne!(resp.headers()["docker-content-digest"], docker.as_str());

    let list = reg.push("demo/list", "1.0", &TestImage::docker_list("a"));
    let (d, ct, m) = get_manifest(&client, &reg, "demo/list", "1.0", None).await;
    assert_eq!((d.as_str(), ct.as_str()), (list.as_str(), DOCKER_LIST));
    assert_eq!(m["manifests"][0]["mediaType"], DOCKER_MANIFEST);
    // Accepting only Docker v2 gets the amd64 child instead of the list.
    let resp = client
        .head(reg.url("/v2/demo/list/manifests/1.0"))
        .header("accept", DOCKER_MANIFEST)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["docker-content-digest"],
        m["manifests"][0]["digest"].as_str().unwrap()
    );

    // HEAD counts too; digests and other repositories are counted apart.
    let resp = client
        .head(reg.url("/v2/demo/multi/manifests/1.0"))
        .header("accept", MANIFEST_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["docker-content-digest"], multi.as_str());
    assert_eq!(reg.manifest_requests("demo/multi", "1.0"), 2);
    assert_eq!(reg.manifest_requests("demo/single", "1.0"), 2);
    assert_eq!(reg.manifest_requests("demo/list", "1.0"), 2);
    assert_eq!(reg.manifest_requests("demo/multi", &multi), 0);
    assert!(reg.log().iter().all(|l| !l.contains("pinhook-harness")));

    // Same seed, same bytes: pushing again elsewhere gives the same digest.
    assert_eq!(reg.push("demo/again", "x", &TestImage::single("a")), single);
    assert_ne!(reg.push("demo/again", "y", &TestImage::single("b")), single);
}

#[tokio::test]
async fn tls_registry_takes_pushes_and_speaks_both_http_versions() {
    let reg = Registry::start(RegistryOptions {
        tls: true,
        ..Default::default()
    });
    let ca = reg.ca_pem().unwrap();
    let ca_file = reg.ca_file().unwrap();
    assert_eq!(std::fs::read_to_string(&ca_file).unwrap(), ca);
    let entries: Vec<_> = std::fs::read_dir(ca_file.parent().unwrap())
        .unwrap()
        .collect();
    assert_eq!(entries.len(), 1, "the CA directory holds only ca.crt");

    let digest = reg.push("secure/app", "v1", &TestImage::multi_arch("tls"));
    for http in common::BOTH {
        let resp = common::client_for(&ca, http)
            .head(reg.url("/v2/secure/app/manifests/v1"))
            .header("accept", MANIFEST_ACCEPT)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["docker-content-digest"], digest.as_str());
        let want = match http {
            common::Http::V1 => reqwest::Version::HTTP_11,
            common::Http::V2 => reqwest::Version::HTTP_2,
        };
        assert_eq!(resp.version(), want);
    }
    assert_eq!(reg.manifest_requests("secure/app", "v1"), 2);

    // Through a delaying proxy: TLS 1.3 costs two client flights (hello; finished + request).
    let delay = Duration::from_millis(100);
    let proxy = DelayProxy::start(reg.addr, ProxyMode::Delay(delay));
    let t = Instant::now();
    let resp = common::client_for(&ca, common::Http::V2)
        .get(format!("https://{}/v2/", proxy.host()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(t.elapsed() >= 2 * delay, "{:?}", t.elapsed());
}

#[tokio::test]
async fn basic_auth_registry_challenges_then_accepts_credentials() {
    let reg = Registry::start(RegistryOptions {
        tls: false,
        auth: RegistryAuth::basic("alice", "s3cret"),
    });
    let client = reg.client();
    let resp = client.get(reg.url("/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"].to_str().unwrap();
    assert!(challenge.starts_with("Basic realm="), "{challenge}");

    let resp = client
        .get(reg.url("/v2/"))
        .basic_auth("alice", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let resp = client
        .get(reg.url("/v2/"))
        .basic_auth("alice", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let digest = reg.push("private/app", "1", &TestImage::single("basic"));
    let resp = client
        .head(reg.url("/v2/private/app/manifests/1"))
        .header("accept", MANIFEST_ACCEPT)
        .basic_auth("alice", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["docker-content-digest"], digest.as_str());
}

/// Parses `Bearer realm="…",service="…",scope="…"` (values without commas or quotes).
fn bearer_challenge(h: &str) -> std::collections::HashMap<String, String> {
    let rest = h.strip_prefix("Bearer ").expect(h);
    rest.split("\",")
        .filter_map(|kv| {
            let (k, v) = kv.split_once('=')?;
            Some((k.trim().to_string(), v.trim_matches('"').to_string()))
        })
        .collect()
}

#[tokio::test]
async fn token_registry_runs_the_bearer_flow() {
    let reg = Registry::start(RegistryOptions {
        tls: false,
        auth: RegistryAuth::token("bob", "hunter2", Duration::from_secs(300)),
    });
    let issuer = reg.issuer().unwrap();
    let digest = reg.push("team/app", "2.0", &TestImage::docker_v2("token"));
    assert!(
        issuer.all_requests().iter().any(|r| r.authorized),
        "skopeo pushed through the token flow"
    );
    assert_eq!(
        reg.token_requests(),
        0,
        "skopeo's token requests are not counted"
    );

    let client = reg.client();
    let url = reg.url("/v2/team/app/manifests/2.0");
    let resp = client
        .head(&url)
        .header("accept", MANIFEST_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_string();
    let c = bearer_challenge(&challenge);
    assert_eq!(c["realm"], issuer.realm(), "{challenge}");
    assert_eq!(c["service"], TOKEN_SERVICE, "{challenge}");
    assert_eq!(c["scope"], "repository:team/app:pull", "{challenge}");

    // No or wrong credentials: 401 from the issuer.
    let token_url = format!(
        "{}?service={}&scope={}",
        c["realm"], c["service"], c["scope"]
    );
    let resp = client.get(&token_url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let resp = client
        .get(&token_url)
        .basic_auth("bob", Some("nope"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    let resp = client
        .get(&token_url)
        .basic_auth("bob", Some("hunter2"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["expires_in"], 300);
    assert!(body["issued_at"].as_str().unwrap().ends_with('Z'), "{body}");
    let token = body["token"].as_str().unwrap();
    assert_eq!(body["access_token"], token);
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(token.split('.').nth(1).unwrap())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(claims["aud"], TOKEN_SERVICE);
    assert_eq!(claims["access"][0]["name"], "team/app");
    assert_eq!(claims["access"][0]["actions"][0], "pull");

    let resp = client
        .head(&url)
        .header("accept", MANIFEST_ACCEPT)
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["docker-content-digest"], digest.as_str());
    let (d, _, _) = get_manifest(&client, &reg, "team/app", "2.0", Some(token)).await;
    assert_eq!(d, digest);

    assert_eq!(reg.token_requests(), 3);
    let granted: Vec<_> = issuer
        .requests()
        .into_iter()
        .filter(|r| r.authorized)
        .collect();
    assert_eq!(granted.len(), 1);
    assert_eq!(granted[0].scopes, ["repository:team/app:pull"]);
    // 401 + 200 + 200 (the anonymous one included).
    assert_eq!(reg.manifest_requests("team/app", "2.0"), 3);

    // A token for another repository: insufficient_scope; an expired one: invalid_token.
    let other = issuer.issue(&["repository:team/other:pull"]);
    let resp = client
        .head(&url)
        .header("accept", MANIFEST_ACCEPT)
        .bearer_auth(&other)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let h = resp.headers()["www-authenticate"].to_str().unwrap();
    assert!(h.contains("insufficient_scope"), "{h}");
    let expired = issuer.issue_expired(&["repository:team/app:pull"]);
    let resp = client
        .head(&url)
        .header("accept", MANIFEST_ACCEPT)
        .bearer_auth(&expired)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let h = resp.headers()["www-authenticate"].to_str().unwrap();
    assert!(h.contains("invalid_token"), "{h}");
}

#[tokio::test]
async fn short_lived_tokens_expire_at_the_registry_after_their_ttl() {
    let reg = Registry::start(RegistryOptions {
        tls: true,
        auth: RegistryAuth::token("bob", "hunter2", Duration::from_secs(2)),
    });
    reg.push("short/app", "1", &TestImage::single("ttl"));
    let token = reg.issuer().unwrap().issue(&["repository:short/app:pull"]);
    let client = reg.client();
    let head = |t: String| {
        client
            .head(reg.url("/v2/short/app/manifests/1"))
            .header("accept", MANIFEST_ACCEPT)
            .bearer_auth(t)
            .send()
    };
    assert_eq!(head(token.clone()).await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(3100)).await;
    assert_eq!(head(token).await.unwrap().status(), 401);
}

#[tokio::test]
async fn delay_proxy_delays_black_holes_and_resets() {
    let reg = Registry::start(RegistryOptions::default());
    let delay = Duration::from_millis(300);
    let proxy = DelayProxy::start(reg.addr, ProxyMode::Delay(delay));
    assert_eq!(proxy.host(), proxy.addr.to_string());
    let get = |host: String, timeout: Duration| async move {
        // A fresh client per request: one connection, one round trip.
        let c = reqwest::Client::builder().timeout(timeout).build().unwrap();
        let t = Instant::now();
        let r = c.get(format!("http://{host}/v2/")).send().await;
        (r.map(|r| r.status().as_u16()), t.elapsed())
    };
    common::init_crypto();
    let (direct, direct_time) = get(reg.host.clone(), Duration::from_secs(5)).await;
    assert_eq!(direct.unwrap(), 200);
    let (via, via_time) = get(proxy.host(), Duration::from_secs(5)).await;
    assert_eq!(via.unwrap(), 200);
    eprintln!("direct {direct_time:?}, via Delay(300ms) {via_time:?}");
    assert!(via_time >= delay, "{via_time:?}");
    assert!(direct_time < delay, "{direct_time:?}");

    proxy.set_mode(ProxyMode::BlackHole);
    let (r, took) = get(proxy.host(), Duration::from_millis(500)).await;
    assert!(r.unwrap_err().is_timeout());
    assert!(took >= Duration::from_millis(500));

    proxy.set_mode(ProxyMode::Reset);
    let (r, took) = get(proxy.host(), Duration::from_secs(5)).await;
    assert!(r.is_err());
    assert!(took < Duration::from_secs(1), "{took:?}");

    proxy.set_mode(ProxyMode::Pass);
    assert_eq!(
        get(proxy.host(), Duration::from_secs(5)).await.0.unwrap(),
        200
    );
    assert_eq!(proxy.accepted(), 4);
}

#[tokio::test]
async fn paused_registry_hangs_until_resumed() {
    let mut reg = Registry::start(RegistryOptions::default());
    reg.push("p/app", "1", &TestImage::single("pause"));
    let c = reqwest::Client::builder()
        .timeout(Duration::from_millis(400))
        .build()
        .unwrap();
    reg.pause();
    let err = c.get(reg.url("/v2/")).send().await.unwrap_err();
    assert!(err.is_timeout(), "{err}");
    reg.resume();
    assert_eq!(c.get(reg.url("/v2/")).send().await.unwrap().status(), 200);
    assert_eq!(reg.manifest_requests("p/app", "1"), 0);
    reg.stop();
    // A fresh client: a pooled connection to the killed process would fail differently.
    let c = reqwest::Client::new();
    let err = c.get(reg.url("/v2/")).send().await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
}

#[tokio::test]
async fn fake_kube_serves_named_reads_and_forbids_lists() {
    use k8s_openapi::api::core::v1::{Secret, ServiceAccount};
    use kube::api::{Api, ListParams};

    common::init_crypto();
    let fake = FakeKube::start();
    fake.add_dockerconfigjson_secret("apps", "regcred", "127.0.0.1:5555", "alice", "pw");
    fake.add_dockercfg_secret("apps", "legacy", "127.0.0.1:5556", "carol", "pw2");
    fake.add_service_account("apps", "default", &["regcred", "legacy"]);

    // Through the real kube client and k8s-openapi types.
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig =
        kube::config::Kubeconfig::read_from(fake.write_kubeconfig(dir.path())).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "apps");
    let s = secrets.get("regcred").await.unwrap();
    assert_eq!(s.type_.as_deref(), Some("kubernetes.io/dockerconfigjson"));
    let cfg: Value = serde_json::from_slice(&s.data.unwrap()[".dockerconfigjson"].0).unwrap();
    assert_eq!(cfg["auths"]["127.0.0.1:5555"]["username"], "alice");
    assert_eq!(cfg["auths"]["127.0.0.1:5555"]["auth"], "YWxpY2U6cHc=");
    let legacy = secrets.get("legacy").await.unwrap();
    assert_eq!(legacy.type_.as_deref(), Some("kubernetes.io/dockercfg"));
    let cfg: Value = serde_json::from_slice(&legacy.data.unwrap()[".dockercfg"].0).unwrap();
    assert_eq!(cfg["127.0.0.1:5556"]["password"], "pw2");
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), "apps");
    let sa = sas.get("default").await.unwrap();
    let names: Vec<String> = sa
        .image_pull_secrets
        .unwrap()
        .into_iter()
        .map(|r| r.name)
        .collect();
    assert_eq!(names, ["regcred", "legacy"]);

    match secrets.get("missing").await.unwrap_err() {
        kube::Error::Api(s) => {
            assert_eq!(s.code, 404);
            assert_eq!(s.reason, "NotFound");
            assert_eq!(s.message, "secrets \"missing\" not found");
        }
        e => panic!("{e}"),
    }
    assert!(secrets.get_opt("missing").await.unwrap().is_none());
    match secrets.list(&ListParams::default()).await.unwrap_err() {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden")),
        e => panic!("{e}"),
    }

    // Raw: the 404 Status object and a cluster-wide LIST and a WATCH.
    let http = reqwest::Client::new();
    let resp = http
        .get(format!(
            "{}/api/v1/namespaces/x/serviceaccounts/nope",
            fake.url()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let status: Value = resp.json().await.unwrap();
    assert_eq!(
        status,
        serde_json::json!({"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",
            "message":"serviceaccounts \"nope\" not found","reason":"NotFound",
            "details":{"name":"nope","kind":"serviceaccounts"},"code":404})
    );
    for path in [
        "/api/v1/secrets",
        "/api/v1/namespaces/apps/secrets/regcred?watch=true",
    ] {
        let resp = http
            .get(format!("{}{path}", fake.url()))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 403, "{path}");
    }
    assert_eq!(
        http.get(format!("{}/version", fake.url()))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let forbidden = fake.forbidden();
    assert_eq!(forbidden.len(), 3, "{forbidden:?}");
    assert_eq!(forbidden[0], "GET /api/v1/namespaces/apps/secrets");
    assert_eq!(forbidden[1], "GET /api/v1/secrets");
    assert_eq!(
        forbidden[2],
        "GET /api/v1/namespaces/apps/secrets/regcred?watch=true"
    );
    assert_eq!(fake.secret_gets("apps", "regcred"), 1);
    assert!(fake.requests().len() >= 9, "{:?}", fake.requests());

    fake.remove_secret("apps", "regcred");
    assert!(secrets.get_opt("regcred").await.unwrap().is_none());
}
