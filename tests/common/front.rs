//! A registry front: one vendor's challenge, token endpoint, token JSON and error bodies, in
//! front of a real `docker-registry` (anonymous, plain HTTP) that stores and serves the
//! manifests. Every repository the front is asked for is served from one repository of that
//! registry (the front decides which repositories exist and who may pull them); digests,
//! content types and bytes are the registry's own.
//!
//! The front records what it was asked (token requests with their method, parameters or form
//! fields and Basic credentials; manifest requests with their method and answer), so a test
//! can check the protocol a client spoke, not only its result.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread::JoinHandle;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{Value, json};

use super::registry::{Background, percent_decode};

/// A request to the token endpoint, as the front read it.
#[derive(Debug, Clone, Default)]
pub struct TokenCall {
    /// `GET` or `POST`.
    pub method: String,
    /// Query parameters (GET) or form fields (POST), decoded.
    pub params: HashMap<String, String>,
    /// The Basic credentials, if any.
    pub basic: Option<(String, String)>,
    /// The raw `Authorization` header, if any.
    pub authorization: Option<String>,
}

impl TokenCall {
    /// A parameter, or "".
    pub fn param(&self, key: &str) -> &str {
        self.params.get(key).map_or("", String::as_str)
    }

    /// The repository of the `scope` parameter (`repository:NAME:pull`), or "".
    pub fn repository(&self) -> String {
        let scope = self.param("scope");
        scope
            .strip_prefix("repository:")
            .and_then(|r| r.rsplit_once(':'))
            .map(|(name, _)| name.to_owned())
            .unwrap_or_default()
    }

    /// Whether the Basic credentials are exactly `user`/`password`.
    pub fn basic_is(&self, user: &str, password: &str) -> bool {
        self.basic
            .as_ref()
            .is_some_and(|(u, p)| u == user && p == password)
    }
}

/// What the token endpoint answers.
pub enum TokenAnswer {
    /// A token that may pull these repositories (possibly none, as Docker Hub gives an
    /// anonymous token for a repository that does not exist), and a rotated refresh token.
    Grant {
        /// Repositories the token may pull.
        repositories: Vec<String>,
        /// A new refresh token to send back (`refresh_token`), for OAuth2 grants.
        refresh_token: Option<String>,
    },
    /// This answer instead (the vendor's refusal).
    Refuse(Response),
}

impl TokenAnswer {
    /// A token for the requested repository.
    pub fn grant(call: &TokenCall) -> Self {
        Self::Grant {
            repositories: vec![call.repository()],
            refresh_token: None,
        }
    }
}

/// Which field the token JSON carries the token in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenField {
    /// `{"token": …}` (distribution's, GHCR, Quay, Harbor, GitLab, GAR).
    Token,
    /// `{"access_token": …}` (OAuth2: ACR).
    AccessToken,
    /// Both (Docker Hub).
    Both,
}

/// Judges Basic credentials (None when absent) for a repository: `None` to serve, or the refusal.
pub type BasicCheck =
    Arc<dyn Fn(Option<&(String, String)>, &str) -> Option<Response> + Send + Sync>;
/// The token endpoint's decision for one request.
pub type TokenDecision = Arc<dyn Fn(&TokenCall) -> TokenAnswer + Send + Sync>;
/// The registry's answer to a valid token that does not cover the repository.
pub type NoScope = Arc<dyn Fn(&str) -> Response + Send + Sync>;
/// An answer given to a manifest request (method, repository) after authentication, instead of
/// the registry's (rate limits); `None` lets it through.
pub type Intercept = Arc<dyn Fn(&Method, &str) -> Option<Response> + Send + Sync>;

/// Where the token endpoint's realm points.
#[derive(Debug, Clone)]
pub enum Realm {
    /// The front itself (`http(s)://127.0.0.1:PORT/PATH`).
    Same,
    /// The same server reached as another host: `http://localhost:OTHERPORT/PATH` (GitLab's
    /// realm lives on the GitLab host, not the registry's).
    OtherHost,
    /// This URL (e.g. `https://auth.docker.io/token`, with `--registry-address`).
    Url(String),
}

/// How the registry authenticates.
pub enum Auth {
    /// `WWW-Authenticate: Basic realm=…`, credentials judged by the check.
    Basic {
        /// The challenge's realm.
        realm: String,
        /// The judge.
        check: BasicCheck,
    },
    /// Bearer tokens from the token endpoint.
    Bearer {
        /// The challenge's `service`.
        service: String,
        /// Where the realm points.
        realm: Realm,
        /// The token endpoint's path.
        path: String,
        /// Methods the token endpoint takes; others get 405.
        methods: Vec<Method>,
        /// The token endpoint's decision.
        decide: TokenDecision,
        /// The token JSON's field.
        field: TokenField,
        /// The registry's answer to a token that does not cover the repository.
        no_scope: NoScope,
    },
}

/// How the registry answers `HEAD` of a manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// As the registry does (with `Docker-Content-Digest`).
    Normal,
    /// Without `Docker-Content-Digest` (Nexus).
    NoDigest,
    /// `405 Method Not Allowed` (GitHub Enterprise Server, older registries).
    NotAllowed,
}

/// One vendor's behaviour.
pub struct Vendor {
    /// Authentication.
    pub auth: Auth,
    /// HEAD behaviour.
    pub head: Head,
    /// Answers given instead of the registry's after authentication.
    pub intercept: Option<Intercept>,
}

/// A manifest request the front answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestCall {
    /// `HEAD` or `GET`.
    pub method: String,
    /// The repository asked for.
    pub repository: String,
    /// The status answered.
    pub status: u16,
}

struct FrontState {
    vendor: Vendor,
    backend: String,
    backend_repo: String,
    client: reqwest::Client,
    realm: OnceLock<String>,
    tokens: Mutex<HashMap<String, Vec<String>>>,
    next: AtomicUsize,
    token_calls: Mutex<Vec<TokenCall>>,
    manifest_calls: Mutex<Vec<ManifestCall>>,
}

/// A running front; stops when dropped.
pub struct Front {
    /// `127.0.0.1:PORT`, the registry host of image references.
    pub host: String,
    state: Arc<FrontState>,
    _servers: Vec<Server>,
}

enum Server {
    Plain(Background),
    Tls(TlsServer),
}

impl Front {
    /// Starts a front for `vendor` serving `backend_repo` of the registry at `backend`
    /// (`127.0.0.1:PORT`, plain HTTP); with `tls` (certificate and key PEM), over HTTPS.
    pub fn start(
        vendor: Vendor,
        backend: &str,
        backend_repo: &str,
        tls: Option<(String, String)>,
    ) -> Self {
        super::init_crypto();
        let state = Arc::new(FrontState {
            vendor,
            backend: format!("http://{backend}"),
            backend_repo: backend_repo.to_owned(),
            client: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            realm: OnceLock::new(),
            tokens: Mutex::new(HashMap::new()),
            next: AtomicUsize::new(0),
            token_calls: Mutex::new(Vec::new()),
            manifest_calls: Mutex::new(Vec::new()),
        });
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let mut servers = Vec::new();
        let (addr, scheme) = match tls {
            None => {
                let s = Background::spawn("registry-front", {
                    let router = router.clone();
                    move |listener| async move {
                        let _ = axum::serve(listener, router).await;
                    }
                });
                let addr = s.addr;
                servers.push(Server::Plain(s));
                (addr, "http")
            }
            Some((cert, key)) => {
                let s = TlsServer::start(router.clone(), cert, key);
                let addr = s.addr;
                servers.push(Server::Tls(s));
                (addr, "https")
            }
        };
        if let Auth::Bearer { realm, path, .. } = &state.vendor.auth {
            let url = match realm {
                Realm::Same => format!("{scheme}://{addr}{path}"),
                Realm::OtherHost => {
                    let other = Background::spawn("registry-front-auth", {
                        let router = router.clone();
                        move |listener| async move {
                            let _ = axum::serve(listener, router).await;
                        }
                    });
                    let url = format!("http://localhost:{}{path}", other.addr.port());
                    servers.push(Server::Plain(other));
                    url
                }
                Realm::Url(u) => u.clone(),
            };
            let _ = state.realm.set(url);
        }
        Self {
            host: addr.to_string(),
            state,
            _servers: servers,
        }
    }

    /// The realm of its Bearer challenge.
    pub fn realm(&self) -> String {
        self.state.realm.get().cloned().unwrap_or_default()
    }

    /// Token requests so far.
    pub fn token_calls(&self) -> Vec<TokenCall> {
        self.state.token_calls.lock().unwrap().clone()
    }

    /// Manifest requests so far.
    pub fn manifest_calls(&self) -> Vec<ManifestCall> {
        self.state.manifest_calls.lock().unwrap().clone()
    }

    /// `METHOD STATUS` of every manifest request, in order.
    pub fn manifest_methods(&self) -> Vec<String> {
        self.manifest_calls()
            .iter()
            .map(|c| format!("{} {}", c.method, c.status))
            .collect()
    }
}

/// A JSON answer with `status`.
pub fn json_reply(status: u16, body: Value) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

/// distribution's error body: `{"errors":[{"code","message","detail"}]}` with `status`.
pub fn errors_reply(status: u16, code: &str, message: &str, detail: Value) -> Response {
    json_reply(
        status,
        json!({"errors": [{"code": code, "message": message, "detail": detail}]}),
    )
}

/// A plain-text answer with `status`.
pub fn text_reply(status: u16, text: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        text.to_owned(),
    )
        .into_response()
}

/// Adds a header to an answer.
pub fn with_header(mut r: Response, name: &'static str, value: &str) -> Response {
    r.headers_mut()
        .insert(name, HeaderValue::from_str(value).unwrap());
    r
}

fn basic_of(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let b = v.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(b.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

fn pairs(s: &str) -> HashMap<String, String> {
    let mut out: HashMap<String, String> = HashMap::new();
    for pair in s.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let (k, v) = (percent_decode(k), percent_decode(v));
        out.entry(k)
            .and_modify(|e| {
                e.push(' ');
                e.push_str(&v);
            })
            .or_insert(v);
    }
    out
}

async fn handle(
    State(state): State<Arc<FrontState>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path().to_owned();
    if let Auth::Bearer {
        path: token_path,
        methods,
        decide,
        field,
        ..
    } = &state.vendor.auth
        && path == *token_path
    {
        return token(
            &state, &method, &uri, &headers, &body, methods, decide, *field,
        );
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return text_reply(404, "404 page not found");
    };
    let (repository, reference) = match rest.rsplit_once("/manifests/") {
        Some((r, t)) => (r.to_owned(), t.to_owned()),
        None if rest.is_empty() => (String::new(), String::new()),
        None => return errors_reply(404, "UNSUPPORTED", "not served by this front", json!(null)),
    };
    let answer = manifest(&state, &method, &headers, &repository, &reference).await;
    if !repository.is_empty() {
        state.manifest_calls.lock().unwrap().push(ManifestCall {
            method: method.to_string(),
            repository,
            status: answer.status().as_u16(),
        });
    }
    answer
}

#[allow(clippy::too_many_arguments)]
fn token(
    state: &FrontState,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    methods: &[Method],
    decide: &TokenDecision,
    field: TokenField,
) -> Response {
    let params = if *method == Method::POST {
        pairs(&String::from_utf8_lossy(body))
    } else {
        pairs(uri.query().unwrap_or(""))
    };
    let call = TokenCall {
        method: method.to_string(),
        params,
        basic: basic_of(headers),
        authorization: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    state.token_calls.lock().unwrap().push(call.clone());
    if !methods.contains(method) {
        return text_reply(405, "405 method not allowed");
    }
    match decide(&call) {
        TokenAnswer::Refuse(r) => r,
        TokenAnswer::Grant {
            repositories,
            refresh_token,
        } => {
            let n = state.next.fetch_add(1, Ordering::Relaxed);
            let token = format!("front-token-{n}");
            state
                .tokens
                .lock()
                .unwrap()
                .insert(token.clone(), repositories);
            let mut body = json!({"expires_in": 300, "issued_at": "2026-01-01T00:00:00Z"});
            if field != TokenField::AccessToken {
                body["token"] = json!(token);
            }
            if field != TokenField::Token {
                body["access_token"] = json!(token);
            }
            if let Some(r) = refresh_token {
                body["refresh_token"] = json!(r);
            }
            json_reply(200, body)
        }
    }
}

async fn manifest(
    state: &FrontState,
    method: &Method,
    headers: &HeaderMap,
    repository: &str,
    reference: &str,
) -> Response {
    match &state.vendor.auth {
        Auth::Basic { realm, check } => {
            if let Some(r) = check(basic_of(headers).as_ref(), repository) {
                return if r.status() == StatusCode::UNAUTHORIZED
                    && !r.headers().contains_key(header::WWW_AUTHENTICATE)
                {
                    with_header(r, "www-authenticate", &format!("Basic realm=\"{realm}\""))
                } else {
                    r
                };
            }
        }
        Auth::Bearer {
            service, no_scope, ..
        } => {
            let realm = state.realm.get().cloned().unwrap_or_default();
            let scope = format!("repository:{repository}:pull");
            let challenge = |error: Option<&str>| {
                let mut c = format!("Bearer realm=\"{realm}\",service=\"{service}\"");
                if !repository.is_empty() {
                    c.push_str(&format!(",scope=\"{scope}\""));
                }
                if let Some(e) = error {
                    c.push_str(&format!(",error=\"{e}\""));
                }
                c
            };
            let presented = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::to_owned);
            let grants = presented.and_then(|t| state.tokens.lock().unwrap().get(&t).cloned());
            match grants {
                None => {
                    return with_header(
                        errors_reply(
                            401,
                            "UNAUTHORIZED",
                            "authentication required",
                            json!([{"Type": "repository", "Class": "", "Name": repository, "Action": "pull"}]),
                        ),
                        "www-authenticate",
                        &challenge(None),
                    );
                }
                Some(repos) if !repository.is_empty() && !repos.iter().any(|r| r == repository) => {
                    let r = no_scope(repository);
                    return if r.status() == StatusCode::UNAUTHORIZED
                        && !r.headers().contains_key(header::WWW_AUTHENTICATE)
                    {
                        with_header(
                            r,
                            "www-authenticate",
                            &challenge(Some("insufficient_scope")),
                        )
                    } else {
                        r
                    };
                }
                Some(_) => {}
            }
        }
    }
    if repository.is_empty() {
        return json_reply(200, json!({}));
    }
    if let Some(intercept) = &state.vendor.intercept
        && let Some(r) = intercept(method, repository)
    {
        return r;
    }
    if *method == Method::HEAD && state.vendor.head == Head::NotAllowed {
        return errors_reply(
            405,
            "UNSUPPORTED",
            "The operation is unsupported.",
            json!(null),
        );
    }
    let url = format!(
        "{}/v2/{}/manifests/{reference}",
        state.backend, state.backend_repo
    );
    let mut req = state
        .client
        .request(method.clone(), &url)
        .header("user-agent", super::registry::HARNESS_USER_AGENT);
    if let Some(accept) = headers.get(header::ACCEPT) {
        req = req.header(header::ACCEPT, accept);
    }
    let resp = match req.send().await {
        Ok(r) => r,
        Err(e) => return text_reply(502, &format!("front: backend failed: {e}")),
    };
    let status = resp.status().as_u16();
    let mut out = axum::http::Response::builder().status(status);
    for name in ["content-type", "docker-content-digest", "content-length"] {
        if name == "docker-content-digest"
            && *method == Method::HEAD
            && state.vendor.head == Head::NoDigest
        {
            continue;
        }
        if let Some(v) = resp.headers().get(name) {
            out = out.header(name, v.clone());
        }
    }
    let body = resp.bytes().await.unwrap_or_default();
    out.body(axum::body::Body::from(body)).unwrap()
}

/// An HTTPS server of a router on 127.0.0.1 (its own thread and runtime), until dropped.
pub struct TlsServer {
    /// Where it listens.
    pub addr: std::net::SocketAddr,
    handle: axum_server::Handle<std::net::SocketAddr>,
    thread: Option<JoinHandle<()>>,
}

impl TlsServer {
    fn start(router: axum::Router, cert: String, key: String) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = axum_server::Handle::new();
        let h = handle.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let config = axum_server::tls_rustls::RustlsConfig::from_pem(
                    cert.into_bytes(),
                    key.into_bytes(),
                )
                .await
                .unwrap();
                let _ = axum_server::from_tcp_rustls(listener, config)
                    .unwrap()
                    .handle(h)
                    .serve(router.into_make_service())
                    .await;
            });
        });
        Self {
            addr,
            handle,
            thread: Some(thread),
        }
    }
}

impl Drop for TlsServer {
    fn drop(&mut self) {
        self.handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
