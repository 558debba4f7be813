//! Vendor profiles: pinning against stand-ins of the registries pinhook's users have, each a
//! front (`tests/common/front.rs`) that speaks the vendor's challenge, token endpoint, token
//! JSON and error bodies in front of one real `docker-registry` shared by every test of this
//! file. Success cases compare the digest with `skopeo inspect`'s of the registry behind the
//! front; failures check that the message keeps the vendor's own words and classifies the
//! refusal (401 unauthorized, 403 forbidden, "does not exist or you have no access", 429).
//! Lookups go through `pinhook resolve` (one process per lookup, so nothing is cached between
//! tests) and, for Docker Hub, through `/mutate` of `pinhook serve`.
//!
//! Sources for each profile's behaviour:
//! - Token protocol, GET and OAuth2 POST (`grant_type=refresh_token`, `access_token`,
//!   `refresh_token`): https://distribution.github.io/distribution/spec/auth/token/ and
//!   https://distribution.github.io/distribution/spec/auth/oauth/ ; reference clients:
//!   containers/image `docker/docker_client.go` (`getBearerTokenOAuth2`, no GET fallback for an
//!   identity token), distribution `registry/client/auth/session.go` (`fetchTokenWithOAuth`),
//!   containerd `remotes/docker/resolver.go` (GET when HEAD is refused).
//! - Error bodies `{"errors":[{"code","message","detail"}]}`:
//!   https://distribution.github.io/distribution/spec/api/#errors
//! - Docker Hub: realm `https://auth.docker.io/token`, service `registry.docker.io`, tokens
//!   as `token` and `access_token`, `{"details":"incorrect username or password"}`, the pull
//!   limit (`ratelimit-limit`/`ratelimit-remaining`, 429 `TOOMANYREQUESTS` "You have reached
//!   your pull rate limit…", HEAD not counted), 401 `insufficient_scope` for a repository that
//!   does not exist: https://docs.docker.com/docker-hub/usage/pulls/ ,
//!   https://docs.docker.com/reference/api/registry/auth/
//! - GHCR: https://docs.github.com/en/packages/working-with-a-github-packages-registry/working-with-the-container-registry
//!   (PAT as password, anonymous tokens for public packages, `DENIED` "requested access to the
//!   resource is denied").
//! - Amazon ECR: https://docs.aws.amazon.com/AmazonECR/latest/userguide/registry_auth.html
//!   (Basic `AWS:<token>`, 12 h tokens; "Your authorization token has expired. Reauthenticate
//!   and try again.").
//! - Azure ACR: https://github.com/Azure/acr/blob/main/docs/AAD-OAuth.md (`/oauth2/token`,
//!   `grant_type=refresh_token`, `access_token`), admin user as Basic:
//!   https://learn.microsoft.com/azure/container-registry/container-registry-authentication
//! - Google Artifact Registry / gcr.io: https://cloud.google.com/artifact-registry/docs/docker/authentication
//!   (`oauth2accesstoken`, `_json_key`; `Permission "artifactregistry.repositories.downloadArtifacts"
//!   denied on resource … (or it may not exist)`).
//! - GitLab: https://docs.gitlab.com/ee/administration/packages/container_registry.html (realm
//!   `/jwt/auth` on the GitLab host, service `container_registry`, "HTTP Basic: Access denied").
//! - Harbor: https://goharbor.io/docs/main/administration/robot-accounts/ (`robot$…` users,
//!   realm `/service/token`, service `harbor-registry`).
//! - Quay: https://docs.quay.io/glossary/robot-accounts.html (`org+robot` users, realm
//!   `/v2/auth`).
//! - Nexus: HEAD without `Docker-Content-Digest` (NEXUS-21071).
//! - GitHub Enterprise Server: HEAD answered 405 (containerd#3846 and the issue that asked for
//!   this file).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock, mpsc};

use axum::http::Method;
use base64::Engine as _;
use common::front::{
    Auth, Front, Head, Intercept, Realm, TokenAnswer, TokenCall, TokenField, Vendor, errors_reply,
    json_reply, with_header,
};
use common::registry::{Registry, RegistryOptions, TestImage};
use common::{Http, Options, Pinhook, fixture};
use serde_json::{Value, json};

/// The repository of the shared registry every front serves.
const BACKEND_REPO: &str = "vendors/app";

/// The shared registry and the digest `skopeo inspect` reads of `vendors/app:1.0`.
struct Shared {
    registry: Registry,
    digest: String,
}

/// One registry for the whole file, started from a thread that lives as long as the process
/// (the registry dies with it: see `Registry::start_dying_with_thread`).
fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let registry = Registry::start_dying_with_thread(RegistryOptions::default());
            // A Docker manifest list: the digest of the list, not of a child, is the right one.
            let digest = registry.push(BACKEND_REPO, "1.0", &TestImage::docker_list("vendors"));
            assert_eq!(registry.inspect_digest(BACKEND_REPO, "1.0"), digest);
            tx.send((registry, digest)).unwrap();
            loop {
                std::thread::park();
            }
        });
        let (registry, digest) = rx.recv().unwrap();
        Shared { registry, digest }
    })
}

/// A front for `vendor` over plain HTTP.
fn front(vendor: Vendor) -> Front {
    Front::start(vendor, &shared().registry.host, BACKEND_REPO, None)
}

/// What `pinhook resolve` printed.
struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The digest of the one pinned reference printed, after checking the run succeeded.
    fn digest(&self) -> String {
        assert!(self.ok, "pinhook resolve failed: {}", self.stderr);
        let line = self.stdout.trim();
        line.rsplit_once('@')
            .map(|(_, d)| d.to_owned())
            .unwrap_or_else(|| panic!("not pinned: {line:?}"))
    }

    /// The digest of every pinned reference printed, after checking the run succeeded.
    fn digests(&self) -> Vec<String> {
        assert!(self.ok, "pinhook resolve failed: {}", self.stderr);
        self.stdout
            .lines()
            .map(|l| {
                l.rsplit_once('@')
                    .map(|(_, d)| d.to_owned())
                    .unwrap_or_default()
            })
            .collect()
    }

    /// The error printed, after checking the run failed.
    fn error(&self) -> String {
        assert!(!self.ok, "pinhook resolve succeeded: {}", self.stdout);
        self.stderr.trim().to_owned()
    }
}

/// A docker `config.json` entry: `auth` of `user:password`.
fn login(user: &str, password: &str) -> Value {
    json!({"auth": base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))})
}

/// A docker `config.json` entry as `az acr login` writes it: a null-GUID user, an identity token.
fn identity(token: &str) -> Value {
    json!({
        "auth": base64::engine::general_purpose::STANDARD.encode("00000000-0000-0000-0000-000000000000:"),
        "identitytoken": token,
    })
}

/// `pinhook resolve` of `images` with `policy` and, when given, a registry config of `auths`.
fn resolve(images: &[&str], policy: &str, auths: Option<Value>, args: &[&str]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.yaml");
    std::fs::write(&policy_path, policy).unwrap();
    let mut cmd = Command::new(common::binary());
    cmd.arg("resolve").arg("--policy").arg(&policy_path);
    if let Some(auths) = auths {
        let config = dir.path().join("config.json");
        std::fs::write(&config, json!({"auths": auths}).to_string()).unwrap();
        cmd.arg("--registry-config").arg(config);
    }
    let out = cmd
        .args(args)
        .args(images)
        .env_remove("KUBECONFIG")
        .output()
        .expect("run pinhook resolve");
    Run {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A policy speaking plain HTTP to `host`.
fn insecure(host: &str) -> String {
    format!("registries:\n  - host: {host}\n    insecure: true\n")
}

/// `pinhook resolve` of one image of a plain-HTTP front.
fn resolve_at(f: &Front, repo: &str, auths: Option<Value>) -> Run {
    let image = format!("{}/{repo}:1.0", f.host);
    let auths = auths.map(|entry| json!({ f.host.clone(): entry }));
    resolve(&[&image], &insecure(&f.host), auths, &[])
}

// ---------------------------------------------------------------------------------------------
// Docker Hub

const HUB_SERVICE: &str = "registry.docker.io";
const HUB_USER: &str = "alice";
const HUB_PAT: &str = "dckr_pat_alice";
const HUB_LIMIT_TEXT: &str = "You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limit";

/// Docker Hub: `library/nginx` and `acme/app` public, `acme/private` for alice; anonymous
/// tokens for anything (empty for what the caller may not pull, as Docker Hub does), 401
/// `insufficient_scope` from the registry for such a token.
fn docker_hub(intercept: Option<Intercept>) -> Vendor {
    Vendor {
        auth: Auth::Bearer {
            service: HUB_SERVICE.into(),
            realm: Realm::Url("https://auth.docker.io/token".into()),
            path: "/token".into(),
            methods: vec![Method::GET, Method::POST],
            field: TokenField::Both,
            decide: Arc::new(|call: &TokenCall| {
                if call.basic.is_some() && !call.basic_is(HUB_USER, HUB_PAT) {
                    return TokenAnswer::Refuse(json_reply(
                        401,
                        json!({"details": "incorrect username or password"}),
                    ));
                }
                let repo = call.repository();
                let public = ["library/nginx", "acme/app"].contains(&repo.as_str());
                let may = public || (repo == "acme/private" && call.basic.is_some());
                TokenAnswer::Grant {
                    repositories: if may { vec![repo] } else { vec![] },
                    refresh_token: None,
                }
            }),
            no_scope: Arc::new(|repo: &str| {
                errors_reply(
                    401,
                    "UNAUTHORIZED",
                    "authentication required",
                    json!([{"Type": "repository", "Class": "", "Name": repo, "Action": "pull"}]),
                )
            }),
        },
        head: Head::Normal,
        intercept,
    }
}

/// A Docker Hub stand-in over HTTPS, its certificate for `registry-1.docker.io` and
/// `auth.docker.io` issued by a private CA (a TLS-inspecting proxy's), reached through
/// `--registry-address`.
struct Hub {
    front: Front,
    ca_file: PathBuf,
    _dir: tempfile::TempDir,
}

impl Hub {
    fn start(intercept: Option<Intercept>) -> Self {
        let names = [
            "registry-1.docker.io".to_owned(),
            "auth.docker.io".to_owned(),
        ];
        let cert = pinhook::certs::generate(&names, 2).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("proxy-ca.pem");
        std::fs::write(&ca_file, &cert.ca_pem).unwrap();
        let front = Front::start(
            docker_hub(intercept),
            &shared().registry.host,
            BACKEND_REPO,
            Some((cert.cert_pem, cert.key_pem)),
        );
        Self {
            front,
            ca_file,
            _dir: dir,
        }
    }

    /// `--registry-address registry-1.docker.io=…,auth.docker.io=…`.
    fn address_arg(&self) -> String {
        let a = &self.front.host;
        format!("--registry-address=registry-1.docker.io={a},auth.docker.io={a}")
    }

    /// A policy whose `registries[]` entry for `entry_host` trusts the proxy's CA, then `extra`.
    fn policy(&self, entry_host: &str, extra: &str) -> String {
        format!(
            "registries:\n  - host: {entry_host}\n    caFile: {}\n{extra}",
            self.ca_file.display()
        )
    }

    fn resolve(&self, image: &str, policy: &str, auths: Option<Value>) -> Run {
        self.resolve_all(&[image], policy, auths)
    }

    fn resolve_all(&self, images: &[&str], policy: &str, auths: Option<Value>) -> Run {
        resolve(images, policy, auths, &[&self.address_arg()])
    }
}

#[test]
fn docker_hub_anonymous_pull_takes_one_token_and_head_only() {
    let hub = Hub::start(None);
    let policy = hub.policy(
        "docker.io",
        "allowedRegistries: [docker.io, auth.docker.io]\n",
    );
    let run = hub.resolve("nginx:1.0", &policy, None);
    assert_eq!(run.digest(), shared().digest);
    assert_eq!(
        run.stdout.trim(),
        format!("nginx:1.0@{}", shared().digest),
        "the tag is kept"
    );
    let calls = hub.front.token_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        (
            calls[0].method.as_str(),
            calls[0].param("service"),
            calls[0].param("scope")
        ),
        ("GET", HUB_SERVICE, "repository:library/nginx:pull")
    );
    assert!(calls[0].authorization.is_none(), "anonymous: {calls:?}");
    assert_eq!(hub.front.manifest_methods(), ["HEAD 401", "HEAD 200"]);
}

/// A `registries[]` entry for any of Docker Hub's names gives Docker Hub itself its `caFile`;
/// without it the proxy's certificate is refused.
#[test]
fn docker_hub_ca_file_applies_to_docker_hub_itself() {
    let hub = Hub::start(None);
    for entry in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
        let run = hub.resolve("library/nginx:1.0", &hub.policy(entry, ""), None);
        assert_eq!(run.digest(), shared().digest, "caFile of {entry}");
    }
    let run = hub.resolve("nginx:1.0", "registries: []\n", None);
    let error = run.error();
    assert!(
        error.contains("TLS failure with registry registry-1.docker.io"),
        "{error}"
    );
}

/// `docker.io`, `index.docker.io` and `registry-1.docker.io` are one registry in
/// `allowedRegistries`, for the image and for every hop; the token host must still be listed.
#[test]
fn docker_hub_is_one_registry_in_allowed_registries() {
    let hub = Hub::start(None);
    for listed in ["docker.io", "index.docker.io", "registry-1.docker.io"] {
        let policy = hub.policy(
            "docker.io",
            &format!("allowedRegistries: [{listed}, auth.docker.io]\n"),
        );
        let run = hub.resolve_all(
            &["nginx:1.0", "index.docker.io/library/nginx:1.0"],
            &policy,
            None,
        );
        assert_eq!(run.digests(), [shared().digest.as_str(); 2], "{listed}");
    }
    let policy = hub.policy("docker.io", "allowedRegistries: [docker.io]\n");
    let error = hub.resolve("nginx:1.0", &policy, None).error();
    assert!(
        error.contains("refusing to contact auth.docker.io: not in allowedRegistries"),
        "{error}"
    );
}

/// The same through `/mutate` of `pinhook serve`.
#[tokio::test]
async fn docker_hub_is_pinned_through_mutate_with_allowed_registries_and_ca_file() {
    let hub = Hub::start(None);
    let server = Pinhook::start_with(Options {
        policy: Some(hub.policy(
            "registry-1.docker.io",
            "allowedRegistries: [index.docker.io, auth.docker.io]\n",
        )),
        args: vec![hub.address_arg()],
        ..Default::default()
    });
    static N: AtomicUsize = AtomicUsize::new(0);
    let mut review = fixture("pod_version_tags");
    let n = N.fetch_add(1, Ordering::Relaxed);
    review["request"]["uid"] = json!(format!("00000000-0000-4000-8000-{n:012}"));
    review["request"]["object"]["spec"]["containers"] =
        json!([{"name": "web", "image": "nginx:1.0"}]);
    let (status, _, body) = server
        .post_json(
            Http::V2,
            "/mutate?timeout=10s",
            serde_json::to_vec(&review).unwrap(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let resp = &body["response"];
    assert_eq!(resp["allowed"], true, "{resp}");
    let patch = base64::engine::general_purpose::STANDARD
        .decode(resp["patch"].as_str().expect("a patch"))
        .unwrap();
    let patch: Value = serde_json::from_slice(&patch).unwrap();
    assert_eq!(
        patch[1]["value"],
        format!("nginx:1.0@{}", shared().digest),
        "{patch}"
    );
}

#[test]
fn docker_hub_private_repository_with_a_personal_access_token() {
    let hub = Hub::start(None);
    let auths = json!({"https://index.docker.io/v1/": login(HUB_USER, HUB_PAT)});
    let run = hub.resolve(
        "acme/private:1.0",
        &hub.policy("docker.io", ""),
        Some(auths),
    );
    assert_eq!(run.digest(), shared().digest);
    assert!(hub.front.token_calls()[0].basic_is(HUB_USER, HUB_PAT));
}

/// The token service's words are kept, and the repository is named, not the scope string.
#[test]
fn docker_hub_wrong_password_keeps_its_words_and_names_the_repository() {
    let hub = Hub::start(None);
    let auths = json!({"docker.io": login(HUB_USER, "wrong")});
    let error = hub
        .resolve(
            "acme/private:1.0",
            &hub.policy("docker.io", ""),
            Some(auths),
        )
        .error();
    assert!(
        error.contains(
            "registry registry-1.docker.io refused access to acme/private (unauthorized: \"incorrect username or password\"; tried registry config "
        ),
        "{error}"
    );
    assert!(error.ends_with(", anonymous)"), "{error}");
    assert!(!error.contains("repository:acme/private:pull"), "{error}");
}

/// Docker Hub answers 401 for a repository that does not exist, as for one the caller may not
/// pull: the message says it cannot tell.
#[test]
fn docker_hub_unknown_repository_does_not_exist_or_you_have_no_access() {
    let hub = Hub::start(None);
    let error = hub
        .resolve("acme/nosuch:1.0", &hub.policy("docker.io", ""), None)
        .error();
    assert!(
        error.contains(
            "registry registry-1.docker.io refused access to acme/nosuch, which does not exist or you have no access (unauthorized: \"authentication required\"; tried anonymous)"
        ),
        "{error}"
    );
}

/// Docker Hub's pull limit counts GETs of manifests; HEAD stays free, and pinhook needs only HEAD.
#[test]
fn docker_hub_pull_limit_leaves_head_free() {
    let hub = Hub::start(Some(Arc::new(|method: &Method, _: &str| {
        (*method == Method::GET).then(hub_limit)
    })));
    let run = hub.resolve("nginx:1.0", &hub.policy("docker.io", ""), None);
    assert_eq!(run.digest(), shared().digest);
    assert!(
        hub.front
            .manifest_calls()
            .iter()
            .all(|c| c.method == "HEAD"),
        "{:?}",
        hub.front.manifest_methods()
    );
}

/// Docker Hub's 429 answer: `ratelimit-*` headers and its text.
fn hub_limit() -> axum::response::Response {
    let r = errors_reply(429, "TOOMANYREQUESTS", HUB_LIMIT_TEXT, json!(null));
    let r = with_header(r, "ratelimit-limit", "100;w=21600");
    let r = with_header(r, "ratelimit-remaining", "0;w=21600");
    with_header(r, "docker-ratelimit-source", "203.0.113.7")
}

/// When HEAD is limited too, the message keeps Docker Hub's text (read from a GET's body).
#[test]
fn docker_hub_pull_limit_text_is_shown() {
    let hub = Hub::start(Some(Arc::new(|_: &Method, _: &str| Some(hub_limit()))));
    let error = hub
        .resolve("nginx:1.0", &hub.policy("docker.io", ""), None)
        .error();
    assert!(
        error.contains(&format!(
            "registry registry-1.docker.io is rate-limiting requests (HTTP 429): \"{HUB_LIMIT_TEXT}\""
        )),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------------
// GHCR

const GH_USER: &str = "octocat";
const GH_PAT: &str = "ghp_octocat0123456789";

/// GHCR: `acme/app` public (anonymous tokens), `acme/private` for octocat; others are refused
/// at the token service with 403 `DENIED`.
fn ghcr() -> Vendor {
    Vendor {
        auth: Auth::Bearer {
            service: "ghcr.io".into(),
            realm: Realm::Same,
            path: "/token".into(),
            methods: vec![Method::GET],
            field: TokenField::Token,
            decide: Arc::new(|call: &TokenCall| {
                let repo = call.repository();
                if repo == "acme/app" || (repo == "acme/private" && call.basic_is(GH_USER, GH_PAT))
                {
                    TokenAnswer::grant(call)
                } else {
                    TokenAnswer::Refuse(errors_reply(
                        403,
                        "DENIED",
                        "requested access to the resource is denied",
                        json!(null),
                    ))
                }
            }),
            no_scope: Arc::new(|_: &str| {
                errors_reply(
                    403,
                    "DENIED",
                    "requested access to the resource is denied",
                    json!(null),
                )
            }),
        },
        head: Head::Normal,
        intercept: None,
    }
}

#[test]
fn ghcr_public_package_with_an_anonymous_token() {
    let f = front(ghcr());
    assert_eq!(resolve_at(&f, "acme/app", None).digest(), shared().digest);
    let calls = f.token_calls();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].basic.is_none());
}

#[test]
fn ghcr_private_package_with_a_personal_access_token() {
    let f = front(ghcr());
    let run = resolve_at(&f, "acme/private", Some(login(GH_USER, GH_PAT)));
    assert_eq!(run.digest(), shared().digest);
    assert!(f.token_calls()[0].basic_is(GH_USER, GH_PAT));
}

/// A 403 is "denied … forbidden", not "unauthorized", and keeps GHCR's words.
#[test]
fn ghcr_denied_package_is_forbidden_not_unauthorized() {
    let f = front(ghcr());
    let error = resolve_at(&f, "acme/private", Some(login("mallory", "ghp_mallory"))).error();
    assert!(
        error.contains(&format!(
            "registry {} denied access to acme/private (forbidden: \"requested access to the resource is denied\"; tried registry config ",
            f.host
        )),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------------
// Amazon ECR

const ECR_PASSWORD: &str = "eyJwYXlsb2FkIjoiZWNyIn0=";
const ECR_EXPIRED: &str = "eyJwYXlsb2FkIjoiZXhwaXJlZCJ9";
const ECR_EXPIRED_TEXT: &str =
    "Your authorization token has expired. Reauthenticate and try again.";

/// ECR: Basic `AWS:<token>` at the registry; an expired token gets 403 `DENIED`.
fn ecr() -> Vendor {
    Vendor {
        auth: Auth::Basic {
            realm: "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com/".into(),
            check: Arc::new(|creds: Option<&(String, String)>, _: &str| match creds {
                Some((u, p)) if u == "AWS" && p == ECR_PASSWORD => None,
                Some((u, p)) if u == "AWS" && p == ECR_EXPIRED => {
                    Some(errors_reply(403, "DENIED", ECR_EXPIRED_TEXT, json!(null)))
                }
                _ => Some(errors_reply(401, "DENIED", "Not Authorized", json!(null))),
            }),
        },
        head: Head::Normal,
        intercept: None,
    }
}

#[test]
fn ecr_pins_with_the_aws_basic_password() {
    let f = front(ecr());
    let run = resolve_at(&f, "acme/app", Some(login("AWS", ECR_PASSWORD)));
    assert_eq!(run.digest(), shared().digest);
    assert_eq!(f.manifest_methods(), ["HEAD 401", "HEAD 200"]);
}

#[test]
fn ecr_expired_token_says_so() {
    let f = front(ecr());
    let error = resolve_at(&f, "acme/app", Some(login("AWS", ECR_EXPIRED))).error();
    assert!(
        error.contains(&format!(
            "registry {} denied access to acme/app (forbidden: \"{ECR_EXPIRED_TEXT}\"; tried registry config ",
            f.host
        )),
        "{error}"
    );
    assert!(!error.contains("does not exist"), "{error}");
}

/// An identity token is for a token service: a registry asking for Basic credentials never
/// gets it.
#[test]
fn an_identity_token_is_never_sent_to_a_basic_registry() {
    let f = front(ecr());
    let error = resolve_at(&f, "acme/app", Some(identity(ECR_PASSWORD))).error();
    assert!(
        error.contains(&format!(
            "registry {} refused access to acme/app (unauthorized: it asks for a username and password (Basic), and an identity token is only ever exchanged at a token service; tried registry config ",
            f.host
        )),
        "{error}"
    );
    assert_eq!(
        f.manifest_methods(),
        ["HEAD 401", "HEAD 401"],
        "asked only anonymously"
    );
}

// ---------------------------------------------------------------------------------------------
// Azure ACR

const ACR_SERVICE: &str = "acme.azurecr.io";
const ACR_ADMIN_PASSWORD: &str = "acr-admin-secret";
const ACR_REFRESH: &str = "eyJhbGciOiJSUzI1NiJ9.acr-refresh";
const ACR_DENIED_TEXT: &str =
    "authentication required, visit https://aka.ms/acr/authorization for more information.";

/// ACR: `/oauth2/token` answers `access_token` only; GET with the admin user as Basic, POST
/// with the refresh-token grant of an identity token. With `rotate`, each grant returns a new
/// refresh token, and only the latest is accepted.
fn acr(rotate: bool) -> Vendor {
    let current = Arc::new(std::sync::Mutex::new(ACR_REFRESH.to_owned()));
    Vendor {
        auth: Auth::Bearer {
            service: ACR_SERVICE.into(),
            realm: Realm::Same,
            path: "/oauth2/token".into(),
            methods: vec![Method::GET, Method::POST],
            field: TokenField::AccessToken,
            decide: Arc::new(move |call: &TokenCall| {
                let refused = || {
                    TokenAnswer::Refuse(errors_reply(
                        401,
                        "UNAUTHORIZED",
                        ACR_DENIED_TEXT,
                        json!(null),
                    ))
                };
                if call.method == "GET" {
                    return if call.basic_is("acme", ACR_ADMIN_PASSWORD) {
                        TokenAnswer::grant(call)
                    } else {
                        refused()
                    };
                }
                let mut current = current.lock().unwrap();
                let valid = call.param("grant_type") == "refresh_token"
                    && call.param("refresh_token") == current.as_str()
                    && call.param("service") == ACR_SERVICE
                    && !call.param("client_id").is_empty();
                if !valid {
                    return refused();
                }
                let refresh_token = rotate.then(|| {
                    *current = format!("{}-next", *current);
                    current.clone()
                });
                TokenAnswer::Grant {
                    repositories: vec![call.repository()],
                    refresh_token,
                }
            }),
            no_scope: Arc::new(|_: &str| {
                errors_reply(401, "UNAUTHORIZED", ACR_DENIED_TEXT, json!(null))
            }),
        },
        head: Head::Normal,
        intercept: None,
    }
}

#[test]
fn acr_admin_user_pins() {
    let f = front(acr(false));
    let run = resolve_at(&f, "team/app", Some(login("acme", ACR_ADMIN_PASSWORD)));
    assert_eq!(run.digest(), shared().digest);
    assert_eq!(f.token_calls()[0].method, "GET");
}

/// `az acr login`'s identity token is exchanged with the OAuth2 refresh-token grant, and is
/// never sent as Basic credentials.
#[test]
fn acr_identity_token_is_exchanged_with_a_refresh_token_grant() {
    let f = front(acr(false));
    let run = resolve_at(&f, "team/app", Some(identity(ACR_REFRESH)));
    assert_eq!(run.digest(), shared().digest);
    let calls = f.token_calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let c = &calls[0];
    assert_eq!(c.method, "POST");
    assert_eq!(
        (
            c.param("grant_type"),
            c.param("refresh_token"),
            c.param("service"),
            c.param("scope")
        ),
        (
            "refresh_token",
            ACR_REFRESH,
            ACR_SERVICE,
            "repository:team/app:pull"
        )
    );
    assert_eq!(c.param("client_id"), "pinhook");
    assert!(c.authorization.is_none(), "{c:?}");
}

/// A refresh token the service rotates replaces the configured one for the next grant.
#[test]
fn a_rotated_refresh_token_is_used_for_the_next_grant() {
    let f = front(acr(true));
    let images = [
        format!("{}/team/app:1.0", f.host),
        format!("{}/team/api:1.0", f.host),
    ];
    let run = resolve(
        &[&images[0], &images[1]],
        &insecure(&f.host),
        Some(json!({ f.host.clone(): identity(ACR_REFRESH) })),
        &[],
    );
    assert!(run.ok, "{}", run.stderr);
    assert_eq!(run.stdout.lines().count(), 2, "{}", run.stdout);
    let sent: Vec<String> = f
        .token_calls()
        .iter()
        .map(|c| c.param("refresh_token").to_owned())
        .collect();
    assert_eq!(
        sent,
        [ACR_REFRESH.to_owned(), format!("{ACR_REFRESH}-next")]
    );
}

/// A token service that takes no POST cannot use an identity token: neither containers/image
/// nor docker falls back to GET (an identity token is no password), and neither does pinhook.
#[test]
fn an_identity_token_at_a_token_service_without_post_is_refused_with_the_reason() {
    let f = front(ghcr());
    let error = resolve_at(&f, "acme/private", Some(identity("ghr_refresh"))).error();
    assert!(
        error.contains(&format!(
            "registry {} refused access to acme/private (unauthorized: its token service answered HTTP 405 to the OAuth2 refresh-token request (POST), so an identity token cannot be used there; use a username and password; tried registry config ",
            f.host
        )),
        "{error}"
    );
    let calls = f.token_calls();
    assert_eq!(calls[0].method, "POST");
    assert!(
        calls.iter().all(|c| !c
            .authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Basic "))),
        "the identity token never goes out as Basic: {calls:?}"
    );
}

/// An OAuth2 token service that refuses an expired refresh token with `400 invalid_grant`
/// (RFC 6749 5.2); with `get`, it also takes (and refuses) anonymous GETs.
fn oauth_service(get: bool) -> Vendor {
    Vendor {
        auth: Auth::Bearer {
            service: "registry.example.com".into(),
            realm: Realm::Same,
            path: "/oauth2/token".into(),
            methods: if get {
                vec![Method::GET, Method::POST]
            } else {
                vec![Method::POST]
            },
            field: TokenField::AccessToken,
            decide: Arc::new(|call: &TokenCall| {
                TokenAnswer::Refuse(if call.method == "POST" {
                    json_reply(
                        400,
                        json!({"error": "invalid_grant", "error_description": "The refresh token has expired."}),
                    )
                } else {
                    errors_reply(401, "UNAUTHORIZED", "authentication required", json!(null))
                })
            }),
            no_scope: Arc::new(|_: &str| {
                errors_reply(401, "UNAUTHORIZED", "authentication required", json!(null))
            }),
        },
        head: Head::Normal,
        intercept: None,
    }
}

/// The expired identity token is refused in the token service's words, not reported as a
/// broken registry; and when the anonymous probe after it fails otherwise (405 from a
/// POST-only token service), the refusal is still the answer.
#[test]
fn an_expired_identity_token_is_refused_in_the_token_services_words() {
    for get in [true, false] {
        let f = front(oauth_service(get));
        let error = resolve_at(&f, "team/app", Some(identity("expired-refresh"))).error();
        assert!(
            error.contains(&format!(
                "registry {} refused access to team/app (unauthorized: \"The refresh token has expired.\"; tried registry config ",
                f.host
            )),
            "GET taken: {get}: {error}"
        );
        assert!(error.ends_with(", anonymous)"), "{error}");
    }
}

// ---------------------------------------------------------------------------------------------
// Google Artifact Registry and gcr.io

const GAR_ACCESS_TOKEN: &str = "ya29.a0AfH6SMBgar-access-token";
const GAR_KEY: &str = "{\n  \"type\": \"service_account\",\n  \"project_id\": \"acme\",\n  \"private_key\": \"-----BEGIN PRIVATE KEY-----\\nMIIE…\\n-----END PRIVATE KEY-----\\n\",\n  \"client_email\": \"puller@acme.iam.gserviceaccount.com\"\n}";
const GAR_DENIED: &str = "Permission \"artifactregistry.repositories.downloadArtifacts\" denied on resource \"projects/acme/locations/us/repositories/images\" (or it may not exist)";

/// Artifact Registry (and gcr.io, which it serves): `oauth2accesstoken` or `_json_key` as
/// Basic at `/v2/token`; `acme/images/app` is pullable, anything else gets a token that the
/// registry refuses with 403 and the IAM permission's words.
fn gar(service: &str) -> Vendor {
    Vendor {
        auth: Auth::Bearer {
            service: service.into(),
            realm: Realm::Same,
            path: "/v2/token".into(),
            methods: vec![Method::GET],
            field: TokenField::Token,
            decide: Arc::new(|call: &TokenCall| {
                let known = call.basic_is("oauth2accesstoken", GAR_ACCESS_TOKEN)
                    || call.basic_is("_json_key", GAR_KEY);
                let repo = call.repository();
                TokenAnswer::Grant {
                    repositories: if known && repo == "acme/images/app" {
                        vec![repo]
                    } else {
                        vec![]
                    },
                    refresh_token: None,
                }
            }),
            no_scope: Arc::new(|_: &str| errors_reply(403, "DENIED", GAR_DENIED, json!(null))),
        },
        head: Head::Normal,
        intercept: None,
    }
}

#[test]
fn artifact_registry_pins_with_oauth2accesstoken() {
    let f = front(gar("us-docker.pkg.dev"));
    let run = resolve_at(
        &f,
        "acme/images/app",
        Some(login("oauth2accesstoken", GAR_ACCESS_TOKEN)),
    );
    assert_eq!(run.digest(), shared().digest);
}

#[test]
fn gcr_pins_with_a_json_key() {
    let f = front(gar("gcr.io"));
    let run = resolve_at(&f, "acme/images/app", Some(login("_json_key", GAR_KEY)));
    assert_eq!(run.digest(), shared().digest);
    assert!(f.token_calls()[0].basic_is("_json_key", GAR_KEY));
}

#[test]
fn artifact_registry_permission_denied_keeps_its_words() {
    let f = front(gar("us-docker.pkg.dev"));
    let error = resolve_at(
        &f,
        "acme/images/secret",
        Some(login("oauth2accesstoken", GAR_ACCESS_TOKEN)),
    )
    .error();
    assert!(
        error.contains(&format!(
            "registry {} denied access to acme/images/secret, which does not exist or you have no access (forbidden: \"{GAR_DENIED}\"; tried registry config ",
            f.host
        )),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------------
// GitLab, Harbor, Quay

const GITLAB_DENIED: &str = "HTTP Basic: Access denied. If a password was provided for Git authentication, the password was incorrect or you're required to use a token instead of a password.";

/// A token service granting `user`/`password` (GitLab, Harbor, Quay), refusing others with 401
/// and `refusal`.
fn token_vendor(
    service: &str,
    realm: Realm,
    path: &str,
    user: &'static str,
    password: &'static str,
    refusal: &'static str,
) -> Vendor {
    Vendor {
        auth: Auth::Bearer {
            service: service.into(),
            realm,
            path: path.into(),
            methods: vec![Method::GET],
            field: TokenField::Token,
            decide: Arc::new(move |call: &TokenCall| {
                if call.basic_is(user, password) {
                    TokenAnswer::grant(call)
                } else {
                    TokenAnswer::Refuse(errors_reply(401, "UNAUTHORIZED", refusal, json!(null)))
                }
            }),
            no_scope: Arc::new(move |_: &str| {
                errors_reply(401, "UNAUTHORIZED", refusal, json!(null))
            }),
        },
        head: Head::Normal,
        intercept: None,
    }
}

fn gitlab() -> Vendor {
    token_vendor(
        "container_registry",
        Realm::OtherHost,
        "/jwt/auth",
        "deployer",
        "gldt-deploy-token",
        GITLAB_DENIED,
    )
}

#[test]
fn gitlab_token_realm_on_another_host() {
    let f = front(gitlab());
    assert!(f.realm().starts_with("http://localhost:"), "{}", f.realm());
    let run = resolve_at(&f, "acme/app", Some(login("deployer", "gldt-deploy-token")));
    assert_eq!(run.digest(), shared().digest);
    assert!(f.token_calls()[0].basic_is("deployer", "gldt-deploy-token"));
}

#[test]
fn gitlab_wrong_deploy_token_keeps_its_words() {
    let f = front(gitlab());
    let error = resolve_at(&f, "acme/app", Some(login("deployer", "revoked"))).error();
    assert!(
        error.contains(&format!(
            "registry {} refused access to acme/app (unauthorized: \"{GITLAB_DENIED}\"; tried registry config ",
            f.host
        )),
        "{error}"
    );
}

#[test]
fn harbor_robot_account_pins() {
    let f = front(token_vendor(
        "harbor-registry",
        Realm::Same,
        "/service/token",
        "robot$acme+ci",
        "harbor-robot-secret",
        "unauthorized to access repository",
    ));
    let run = resolve_at(
        &f,
        "acme/app",
        Some(login("robot$acme+ci", "harbor-robot-secret")),
    );
    assert_eq!(run.digest(), shared().digest);
    assert!(f.token_calls()[0].basic_is("robot$acme+ci", "harbor-robot-secret"));
}

#[test]
fn quay_robot_account_pins() {
    let f = front(token_vendor(
        "quay.io",
        Realm::Same,
        "/v2/auth",
        "acme+ci",
        "QUAYROBOTTOKEN0123456789",
        "Invalid Username or Password",
    ));
    let run = resolve_at(
        &f,
        "acme/app",
        Some(login("acme+ci", "QUAYROBOTTOKEN0123456789")),
    );
    assert_eq!(run.digest(), shared().digest);
}

// ---------------------------------------------------------------------------------------------
// Nexus and GitHub Enterprise Server: HEAD without a digest, HEAD refused

#[test]
fn nexus_without_docker_content_digest_on_head_is_hashed() {
    let f = front(Vendor {
        auth: Auth::Basic {
            realm: "Sonatype Nexus Repository Manager".into(),
            check: Arc::new(|creds: Option<&(String, String)>, _: &str| match creds {
                Some((u, p)) if u == "ci" && p == "nexus-secret" => None,
                _ => Some(errors_reply(
                    401,
                    "UNAUTHORIZED",
                    "Access denied to repository",
                    json!(null),
                )),
            }),
        },
        head: Head::NoDigest,
        intercept: None,
    });
    let run = resolve_at(&f, "acme/app", Some(login("ci", "nexus-secret")));
    assert_eq!(run.digest(), shared().digest);
    assert_eq!(f.manifest_methods(), ["HEAD 401", "HEAD 200", "GET 200"]);
}

#[test]
fn github_enterprise_server_refuses_head_and_the_get_is_hashed() {
    let mut vendor = token_vendor(
        "containers.ghe.example.com",
        Realm::Same,
        "/token",
        GH_USER,
        GH_PAT,
        "requested access to the resource is denied",
    );
    vendor.head = Head::NotAllowed;
    let f = front(vendor);
    let run = resolve_at(&f, "acme/app", Some(login(GH_USER, GH_PAT)));
    assert_eq!(run.digest(), shared().digest);
    assert_eq!(f.manifest_methods(), ["HEAD 401", "HEAD 405", "GET 200"]);
    assert_eq!(f.token_calls().len(), 1, "one token serves HEAD and GET");
}
