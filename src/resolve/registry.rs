//! Talking to a registry: `HEAD` the manifest with every manifest media type accepted, take
//! `Docker-Content-Digest` (or `GET` and hash the exact bytes), answering Basic and Bearer
//! challenges, honouring `429 Retry-After` within the deadline; every client it builds carries
//! the SSRF guard of `guard.rs`, and redirects are followed here, one hop at a time, each one
//! checked by that guard.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use reqwest::StatusCode;
use reqwest::header::{
    ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, LOCATION, RETRY_AFTER, WWW_AUTHENTICATE,
};

use super::auth::Credential;
use super::digest::Digest;
pub use super::guard::is_forbidden;
use super::guard::{self, AddressOverrides, ForbiddenAddress, Hop, Route};
use super::host;
use super::labels::RegistryLabelSet;
use super::permits::Slot;
use super::{Refusal, ResolveError};
use crate::patterns::Patterns;
use crate::policy::RegistrySettings;

/// The `Accept` header: OCI index, OCI manifest, Docker manifest list, Docker manifest v2
/// (checked against oci-client's constants in a test).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json";

/// The policy's `registries` list cannot be turned into HTTP clients.
#[derive(Debug, thiserror::Error)]
pub enum RegistryConfigError {
    /// The default client could not be built (no TLS roots, …).
    #[error("cannot build HTTP client: {0}")]
    Client(#[source] reqwest::Error),
    /// A `caFile` is unusable.
    #[error("registries[{host}].caFile {}: {problem}", file.display())]
    CaFile {
        /// The registry entry's host.
        host: String,
        /// The file named.
        file: std::path::PathBuf,
        /// What is wrong with it.
        problem: CaFileProblem,
    },
}

/// What is wrong with a `caFile`.
#[derive(Debug, thiserror::Error)]
pub enum CaFileProblem {
    /// It cannot be read.
    #[error("{0}")]
    Read(std::io::Error),
    /// It is not PEM.
    #[error("not PEM certificates: {0}")]
    NotPem(reqwest::Error),
    /// It holds no certificate.
    #[error("no certificate found")]
    Empty,
    /// Its certificates cannot be used by the TLS client.
    #[error("{0}")]
    Client(reqwest::Error),
}

/// A cached bearer token.
#[derive(Debug, Clone)]
struct Token {
    value: String,
    expires: Instant,
}

/// Where to send requests for one registry: its endpoint host and scheme.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `host[:port]` to connect to.
    pub host: String,
    /// `http` or `https`.
    pub scheme: &'static str,
    /// For a mirror of another registry: that registry (sent as `?ns=`).
    pub mirror_of: Option<String>,
}

/// Redirects followed per request, as reqwest's default policy would (and browsers do).
const MAX_REDIRECTS: usize = 5;

/// The largest manifest read (containers/image's `MaxManifestBodySize`, 4 MiB).
const MANIFEST_MAX_BYTES: usize = 4 * 1024 * 1024;
/// The largest token response read (containers/image's `MaxAuthTokenBodySize`, 1 MiB).
const TOKEN_MAX_BYTES: usize = 1024 * 1024;
/// The most of an error answer's body read for the registry's words.
const ERROR_BODY_MAX_BYTES: usize = 64 * 1024;
/// The longest the registry's words are shown in a message.
pub const WORDS_MAX_CHARS: usize = 200;
/// `client_id` of the OAuth2 token request (a required field, any value).
const OAUTH_CLIENT_ID: &str = "pinhook";

/// The two clients of one trust configuration: the registry's own (its resolver refuses only
/// forbidden addresses) and the one for later hops of a registry that is not internal (its
/// resolver refuses loopback and private addresses too). Neither follows redirects itself.
#[derive(Debug, Clone)]
struct Clients {
    registry: reqwest::Client,
    public_hops: reqwest::Client,
}

impl Clients {
    fn build(
        call_timeout: Duration,
        addresses: &Arc<AddressOverrides>,
        configure: impl Fn(reqwest::ClientBuilder) -> reqwest::ClientBuilder,
    ) -> Result<Self, reqwest::Error> {
        Ok(Self {
            registry: configure(client_builder(call_timeout, true, addresses)).build()?,
            public_hops: configure(client_builder(call_timeout, false, addresses)).build()?,
        })
    }
}

/// One request of a lookup: its first hop, and how it is sent.
struct Request {
    method: reqwest::Method,
    url: reqwest::Url,
    /// [`Hop::Registry`] or [`Hop::TokenRealm`]; later hops are redirects.
    hop: Hop,
    /// Whether to send the manifest `Accept` header.
    accept: bool,
    authorization: Option<String>,
    /// A form-encoded body (the OAuth2 token request); such a request follows no redirect.
    form: Option<String>,
    /// Time allowed for the request and its redirects.
    limit: Duration,
}

/// HTTP clients and settings for every registry, rebuilt when the policy changes.
#[derive(Debug)]
pub struct Transport {
    default: Clients,
    per_host: HashMap<String, Clients>,
    insecure: HashSet<String>,
    mirrors: HashMap<String, Vec<String>>,
    call_timeout: Duration,
    tokens: moka::sync::Cache<String, Token>,
    /// Refresh tokens a token service rotated, by realm, service and identity token.
    refresh_tokens: moka::sync::Cache<String, String>,
    labels: RegistryLabelSet,
}

/// What one lookup asks for, and within which bounds.
#[derive(Debug, Clone, Copy)]
pub struct Lookup<'a> {
    /// Repository path.
    pub repository: &'a str,
    /// Tag to resolve.
    pub tag: &'a str,
    /// The credential to present, or `None` for anonymous.
    pub credential: Option<&'a Credential>,
    /// `allowedRegistries`, bounding every host contacted.
    pub allowed: Option<&'a Patterns>,
    /// When to give up.
    pub deadline: Instant,
}

/// Statistics about one registry exchange, for metrics.
#[derive(Debug, Default, Clone, Copy)]
pub struct Exchange {
    /// Requests sent.
    pub requests: u32,
}

fn client_builder(
    call_timeout: Duration,
    allow_internal: bool,
    addresses: &Arc<AddressOverrides>,
) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .dns_resolver(Arc::new(guard::GuardedResolver {
            allow_internal,
            overrides: addresses.clone(),
        }))
        .connect_timeout(call_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .user_agent(concat!("pinhook/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
}

impl Transport {
    /// Builds clients for `registries`, connecting to the names of `addresses` at their
    /// address; a `caFile` that cannot be read or parsed is an error.
    pub fn new(
        registries: &[RegistrySettings],
        call_timeout: Duration,
        addresses: Arc<AddressOverrides>,
    ) -> Result<Self, RegistryConfigError> {
        let default =
            Clients::build(call_timeout, &addresses, |b| b).map_err(RegistryConfigError::Client)?;
        let mut per_host = HashMap::new();
        let mut insecure = HashSet::new();
        let mut mirrors = HashMap::new();
        for r in registries {
            let host = host::canonical(&r.host);
            if r.insecure {
                insecure.insert(host.clone());
                for m in &r.mirrors {
                    insecure.insert(m.to_ascii_lowercase());
                }
            }
            if let Some(ca) = &r.ca_file {
                let ca_error = |problem| RegistryConfigError::CaFile {
                    host: r.host.clone(),
                    file: ca.clone(),
                    problem,
                };
                let pem = std::fs::read(ca).map_err(|e| ca_error(CaFileProblem::Read(e)))?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| ca_error(CaFileProblem::NotPem(e)))?;
                if certs.is_empty() {
                    return Err(ca_error(CaFileProblem::Empty));
                }
                let client = Clients::build(call_timeout, &addresses, |mut b| {
                    for c in &certs {
                        b = b.add_root_certificate(c.clone());
                    }
                    b
                })
                .map_err(|e| ca_error(CaFileProblem::Client(e)))?;
                // Keyed by the canonical name: an entry for docker.io, index.docker.io or
                // registry-1.docker.io applies to Docker Hub itself (asked at registry-1.docker.io).
                for h in std::iter::once(&host).chain(r.mirrors.iter()) {
                    per_host.insert(host::canonical(h), client.clone());
                }
            }
            if !r.mirrors.is_empty() {
                mirrors.insert(host, r.mirrors.clone());
            }
        }
        Ok(Self {
            default,
            per_host,
            insecure,
            mirrors,
            call_timeout,
            labels: RegistryLabelSet::new(registries),
            tokens: moka::sync::Cache::builder()
                .max_capacity(10_000)
                .time_to_live(Duration::from_secs(3600))
                .build(),
            refresh_tokens: moka::sync::Cache::builder().max_capacity(10_000).build(),
        })
    }

    /// The endpoints to try for `registry`: its mirrors, then itself.
    pub fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let canonical = host::canonical(registry);
        let scheme = |h: &str| {
            if self.insecure.contains(h) {
                "http"
            } else {
                "https"
            }
        };
        let mut out: Vec<Endpoint> = self
            .mirrors
            .get(&canonical)
            .into_iter()
            .flatten()
            .map(|m| Endpoint {
                host: m.to_ascii_lowercase(),
                scheme: scheme(&m.to_ascii_lowercase()),
                mirror_of: Some(registry.to_owned()),
            })
            .collect();
        let host = if canonical == "docker.io" {
            "registry-1.docker.io".to_owned()
        } else {
            canonical.clone()
        };
        out.push(Endpoint {
            scheme: scheme(&canonical),
            host,
            mirror_of: None,
        });
        out
    }

    /// The `registry` metric label of an endpoint host, from the closed set of this policy.
    pub fn registry_label(&self, host: &str) -> String {
        self.labels.label(host)
    }

    /// The clients for an endpoint host: its registry entry's (by canonical name), or the default.
    fn clients(&self, host: &str) -> &Clients {
        self.per_host
            .get(&host::canonical(host))
            .unwrap_or(&self.default)
    }

    /// Resolves `repository:tag` at `endpoint` with `credential` (or anonymously).
    pub async fn digest(
        &self,
        endpoint: &Endpoint,
        q: &Lookup<'_>,
        exchange: &mut Exchange,
        slot: &mut Slot<'_>,
    ) -> Result<Digest, ResolveError> {
        let Lookup {
            repository,
            tag,
            credential,
            allowed,
            deadline,
        } = *q;
        let mut url = format!(
            "{}://{}/v2/{repository}/manifests/{tag}",
            endpoint.scheme, endpoint.host
        );
        if let Some(ns) = &endpoint.mirror_of {
            url.push_str("?ns=");
            url.push_str(ns);
        }
        let url = reqwest::Url::parse(&url).map_err(|e| ResolveError::Connect {
            registry: endpoint.host.clone(),
            detail: e.to_string(),
        })?;
        let mut route = Route {
            allowed,
            registry: &endpoint.host,
            internal: false,
        };
        // The host reqwest will dial, normalized by the URL parser, not the string written.
        guard::check_url(&url, Hop::Registry, &route)?;
        let scope = format!("repository:{repository}:pull");
        // Tokens are reused until they expire, per host, scope and credential (never across credentials).
        let token_key = format!(
            "{}|{scope}|{}",
            endpoint.host,
            credential.map_or("anonymous".into(), Credential::fingerprint)
        );
        let mut authorization: Option<String> = self
            .tokens
            .get(&token_key)
            .filter(|t| t.expires > Instant::now())
            .map(|t| format!("Bearer {}", t.value));
        // Whether `authorization` is a token the registry's token service issued.
        let mut bearer = authorization.is_some();
        let mut challenged = false;
        let mut rate_limited = 0;
        // HEAD first. GET when the registry refuses HEAD (405: GitHub Enterprise Server, older
        // registries) or sends no digest, and once after a refusal: a HEAD answer has no body,
        // and the body holds the registry's own words.
        let mut method = reqwest::Method::HEAD;
        let mut for_words = false;
        loop {
            let resp = self
                .send(
                    endpoint,
                    method.clone(),
                    &url,
                    authorization.as_deref(),
                    deadline,
                    (&mut route, &mut *exchange),
                )
                .await?;
            let head = method == reqwest::Method::HEAD;
            let status = resp.status();
            // A refusal after HEAD is asked again with GET, for its words.
            let words_by_get = head && !for_words;
            match status {
                s if s.is_success() => {
                    refuse_schema1(resp.headers(), &endpoint.host)?;
                    let header = digest_header(resp.headers(), &endpoint.host)?;
                    match header {
                        Some(d) if head => return Ok(d),
                        _ if head => method = reqwest::Method::GET,
                        _ => {
                            return self
                                .hash_manifest(endpoint, resp, header, &url, &route)
                                .await;
                        }
                    }
                }
                StatusCode::METHOD_NOT_ALLOWED if head => {
                    // As containerd does: the manifest's bytes are hashed instead.
                    tracing::debug!(registry = %endpoint.host, "HEAD refused with 405; asking with GET");
                    method = reqwest::Method::GET;
                }
                StatusCode::UNAUTHORIZED if !challenged => {
                    challenged = true;
                    // Several header lines are one comma-separated list (RFC 9110 5.3).
                    let header = resp
                        .headers()
                        .get_all(WWW_AUTHENTICATE)
                        .iter()
                        .filter_map(|v| v.to_str().ok())
                        .collect::<Vec<_>>()
                        .join(", ");
                    let challenge = parse_challenge(&header);
                    authorization = match challenge {
                        Challenge::Basic => match credential {
                            Some(c) if c.identity_token => {
                                return Err(refused(
                                    endpoint,
                                    repository,
                                    Refusal::Unauthorized,
                                    "it asks for a username and password (Basic), and an identity token is only ever exchanged at a token service".into(),
                                    false,
                                ));
                            }
                            Some(c) => Some(basic(c)),
                            None => {
                                return Err(refused(
                                    endpoint,
                                    repository,
                                    Refusal::Unauthorized,
                                    String::new(),
                                    false,
                                ));
                            }
                        },
                        Challenge::Bearer { realm, service } => {
                            let t = self
                                .fetch_token(
                                    endpoint,
                                    (&realm, &service, &scope),
                                    q,
                                    (&mut route, &mut *exchange),
                                )
                                .await?;
                            let header = format!("Bearer {}", t.value);
                            self.tokens.insert(token_key.clone(), t);
                            bearer = true;
                            Some(header)
                        }
                        Challenge::None => {
                            return Err(refused(
                                endpoint,
                                repository,
                                Refusal::Unauthorized,
                                String::new(),
                                false,
                            ));
                        }
                    };
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if words_by_get => {
                    for_words = true;
                    method = reqwest::Method::GET;
                }
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                    let reason = words_of(resp).await;
                    return Err(refused(
                        endpoint,
                        repository,
                        Refusal::of_status(status.as_u16()),
                        reason,
                        bearer,
                    ));
                }
                StatusCode::NOT_FOUND => {
                    return Err(ResolveError::NotFound {
                        registry: endpoint.host.clone(),
                        repository: repository.to_owned(),
                        tag: tag.to_owned(),
                    });
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    let wait = retry_after(resp.headers());
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    rate_limited += 1;
                    match wait {
                        Some(w)
                            if rate_limited <= 3
                                && w.saturating_add(Duration::from_millis(50)) < remaining =>
                        {
                            // Other lookups run while this one waits.
                            slot.sleep(w).await?;
                        }
                        _ if words_by_get => {
                            for_words = true;
                            method = reqwest::Method::GET;
                        }
                        _ => {
                            return Err(ResolveError::RateLimited {
                                registry: endpoint.host.clone(),
                                retry_after: wait.map(|w| w.as_secs_f64()),
                                reason: words_of(resp).await,
                            });
                        }
                    }
                }
                s if s.is_client_error() && words_by_get => {
                    for_words = true;
                    method = reqwest::Method::GET;
                }
                status => {
                    return Err(ResolveError::Status {
                        registry: endpoint.host.clone(),
                        status: status.as_u16(),
                        reason: words_of(resp).await,
                    });
                }
            }
        }
    }

    async fn send(
        &self,
        endpoint: &Endpoint,
        method: reqwest::Method,
        url: &reqwest::Url,
        authorization: Option<&str>,
        deadline: Instant,
        (route, exchange): (&mut Route<'_>, &mut Exchange),
    ) -> Result<reqwest::Response, ResolveError> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let limit = remaining.min(self.call_timeout);
        if limit.is_zero() {
            return Err(ResolveError::Timeout {
                registry: endpoint.host.clone(),
                seconds: 0.0,
            });
        }
        let request = Request {
            method,
            url: url.clone(),
            hop: Hop::Registry,
            accept: true,
            authorization: authorization.map(str::to_owned),
            form: None,
            limit,
        };
        self.request(endpoint, request, route, exchange).await
    }

    /// Sends `r` and follows its redirects (at most [`MAX_REDIRECTS`]) one hop at a time, each
    /// checked by the guard before it is sent; the registry's own first hop notes in `route`
    /// whether the registry answered from an internal address, which later hops may then reach.
    async fn request(
        &self,
        endpoint: &Endpoint,
        r: Request,
        route: &mut Route<'_>,
        exchange: &mut Exchange,
    ) -> Result<reqwest::Response, ResolveError> {
        let until = Instant::now() + r.limit;
        let clients = self.clients(&endpoint.host);
        let (mut url, mut hop, mut authorization) = (r.url, r.hop, r.authorization);
        let mut redirects = 0;
        loop {
            let client = if hop == Hop::Registry || route.internal {
                &clients.registry
            } else {
                &clients.public_hops
            };
            let mut req = client
                .request(r.method.clone(), url.clone())
                .timeout(until.saturating_duration_since(Instant::now()));
            if r.accept {
                req = req.header(ACCEPT, MANIFEST_ACCEPT);
            }
            if let Some(a) = &authorization {
                req = req.header(AUTHORIZATION, a);
            }
            if let Some(form) = &r.form {
                req = req
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(form.clone());
            }
            exchange.requests += 1;
            let resp = match req.send().await {
                Ok(resp) => resp,
                Err(e) if hop == Hop::Registry => {
                    return Err(classify(&endpoint.host, &e, r.limit));
                }
                Err(e) => return Err(guard::hop_failed(route, hop, &url, &e)),
            };
            if hop == Hop::Registry {
                // An IP literal is the address dialled; for a name, the peer that answered.
                route.internal = guard::dialled_ip(&url)
                    .or_else(|| resp.remote_addr().map(|a| a.ip()))
                    .is_some_and(guard::is_internal);
            }
            let redirect = matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308);
            // Like reqwest: past the limit, or without a usable Location, the 3xx is the answer.
            // A form (it holds a refresh token) is never sent on to where a redirect points.
            let next = match resp.headers().get(LOCATION) {
                Some(location) if redirect && redirects < MAX_REDIRECTS && r.form.is_none() => {
                    location.to_str().ok().and_then(|l| url.join(l).ok())
                }
                _ => None,
            };
            let Some(next) = next else {
                return Ok(resp);
            };
            guard::check_url(&next, Hop::Redirect, route)?;
            // Credentials never follow a redirect to another origin (as reqwest does).
            if next.scheme() != url.scheme()
                || next.host_str() != url.host_str()
                || next.port_or_known_default() != url.port_or_known_default()
            {
                authorization = None;
            }
            tracing::debug!(registry = route.registry, from = %url, to = %next, "following a redirect");
            (url, hop) = (next, Hop::Redirect);
            redirects += 1;
        }
    }

    /// The digest of a manifest answered to GET: the sha256 of its bytes (at most
    /// [`MANIFEST_MAX_BYTES`]), which must equal `Docker-Content-Digest` when one was sent.
    async fn hash_manifest(
        &self,
        endpoint: &Endpoint,
        mut resp: reqwest::Response,
        header: Option<Digest>,
        url: &reqwest::Url,
        route: &Route<'_>,
    ) -> Result<Digest, ResolveError> {
        let redirected = resp.url() != url;
        let final_url = resp.url().clone();
        let (body, complete) = read_at_most(&mut resp, MANIFEST_MAX_BYTES)
            .await
            .map_err(|e| {
                if redirected {
                    guard::hop_failed(route, Hop::Redirect, &final_url, &e)
                } else {
                    classify(&endpoint.host, &e, self.call_timeout)
                }
            })?;
        if !complete {
            return Err(ResolveError::Invalid {
                registry: endpoint.host.clone(),
                detail: format!(
                    "the manifest is larger than {} MiB",
                    MANIFEST_MAX_BYTES / (1024 * 1024)
                ),
            });
        }
        let computed = Digest::of(&body);
        if let Some(h) = header
            && h != computed
        {
            return Err(ResolveError::Invalid {
                registry: endpoint.host.clone(),
                detail: format!(
                    "Docker-Content-Digest {h} does not match the manifest's sha256 {computed}"
                ),
            });
        }
        Ok(computed)
    }

    /// A token for `scope` from the token service of a Bearer challenge: with an identity
    /// token, the OAuth2 refresh-token grant (`POST`, form-encoded, as containers/image and
    /// docker do); otherwise `GET` with the credential as Basic (or none).
    async fn fetch_token(
        &self,
        endpoint: &Endpoint,
        (realm, service, scope): (&str, &str, &str),
        q: &Lookup<'_>,
        (route, exchange): (&mut Route<'_>, &mut Exchange),
    ) -> Result<Token, ResolveError> {
        let Lookup {
            repository,
            credential,
            deadline,
            ..
        } = *q;
        let mut realm_url = reqwest::Url::parse(realm).map_err(|e| ResolveError::Invalid {
            registry: endpoint.host.clone(),
            detail: format!("token realm {realm:?} is not a URL: {e}"),
        })?;
        let realm_host = host::of_url(&realm_url);
        guard::check_url(&realm_url, Hop::TokenRealm, route)?;
        let limit = deadline
            .saturating_duration_since(Instant::now())
            .min(self.call_timeout);
        let identity = credential.filter(|c| c.identity_token);
        let refresh_key = identity.map(|c| format!("{realm}|{service}|{}", c.fingerprint()));
        let request = match identity {
            Some(c) => {
                // A refresh token the service rotated earlier replaces the configured one.
                let refresh = refresh_key
                    .as_ref()
                    .and_then(|k| self.refresh_tokens.get(k))
                    .unwrap_or_else(|| c.password.clone());
                let mut form = realm_url.clone();
                form.set_query(None);
                {
                    let mut pairs = form.query_pairs_mut();
                    pairs.append_pair("grant_type", "refresh_token");
                    if !service.is_empty() {
                        pairs.append_pair("service", service);
                    }
                    pairs.append_pair("scope", scope);
                    pairs.append_pair("refresh_token", &refresh);
                    pairs.append_pair("client_id", OAUTH_CLIENT_ID);
                }
                Request {
                    method: reqwest::Method::POST,
                    url: realm_url.clone(),
                    hop: Hop::TokenRealm,
                    accept: false,
                    authorization: None,
                    form: Some(form.query().unwrap_or_default().to_owned()),
                    limit,
                }
            }
            None => {
                {
                    let mut query = realm_url.query_pairs_mut();
                    query.append_pair("scope", scope);
                    if !service.is_empty() {
                        query.append_pair("service", service);
                    }
                }
                Request {
                    method: reqwest::Method::GET,
                    url: realm_url.clone(),
                    hop: Hop::TokenRealm,
                    accept: false,
                    authorization: credential.map(basic),
                    form: None,
                    limit,
                }
            }
        };
        let mut resp = self.request(endpoint, request, route, exchange).await?;
        let status = resp.status();
        if !status.is_success() {
            let wait = retry_after(resp.headers());
            let reason = words_of(resp).await;
            return Err(match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => refused(
                    endpoint,
                    repository,
                    Refusal::of_status(status.as_u16()),
                    reason,
                    false,
                ),
                // RFC 6749 5.2: a refresh token that is expired, revoked or not this client's
                // is `400 invalid_grant`; the credential is refused, in the service's words.
                StatusCode::BAD_REQUEST if identity.is_some() => {
                    refused(endpoint, repository, Refusal::Unauthorized, reason, false)
                }
                // Neither containers/image nor docker falls back to GET for an identity token
                // (it is no password): the credential cannot be used here.
                StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED if identity.is_some() => {
                    refused(
                        endpoint,
                        repository,
                        Refusal::Unauthorized,
                        format!(
                            "its token service answered HTTP {} to the OAuth2 refresh-token request (POST), so an identity token cannot be used there; use a username and password",
                            status.as_u16()
                        ),
                        false,
                    )
                }
                StatusCode::TOO_MANY_REQUESTS => ResolveError::RateLimited {
                    registry: realm_host,
                    retry_after: wait.map(|d| d.as_secs_f64()),
                    reason,
                },
                s => ResolveError::Status {
                    registry: realm_host,
                    status: s.as_u16(),
                    reason,
                },
            });
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
            #[serde(default)]
            expires_in: Option<u64>,
            #[serde(default)]
            refresh_token: Option<String>,
        }
        let (body, complete) = read_at_most(&mut resp, TOKEN_MAX_BYTES)
            .await
            .map_err(|e| guard::hop_failed(route, Hop::TokenRealm, &realm_url, &e))?;
        if !complete {
            return Err(ResolveError::Invalid {
                registry: realm_host,
                detail: format!(
                    "token response is larger than {} MiB",
                    TOKEN_MAX_BYTES / (1024 * 1024)
                ),
            });
        }
        let t: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| ResolveError::Invalid {
                registry: realm_host.clone(),
                detail: format!("token response is not JSON: {e}"),
            })?;
        let value = t
            .token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ResolveError::Invalid {
                registry: realm_host.clone(),
                detail: "token response has no token".into(),
            })?;
        if let (Some(key), Some(rotated)) = (refresh_key, t.refresh_token.filter(|r| !r.is_empty()))
        {
            self.refresh_tokens.insert(key, rotated);
        }
        // The spec's default lifetime is 60 s; keep a margin so a token never expires mid-request.
        // `expires_in` is the token server's word: clamped to a day, so no value overflows.
        let lifetime = Duration::from_secs(t.expires_in.unwrap_or(60).clamp(10, 86_400));
        Ok(Token {
            value,
            expires: Instant::now() + (lifetime - Duration::from_secs(5)),
        })
    }
}

/// A refusal by `endpoint` of `repository` (see [`ResolveError::Unauthorized`]).
fn refused(
    endpoint: &Endpoint,
    repository: &str,
    refusal: Refusal,
    reason: String,
    maybe_missing: bool,
) -> ResolveError {
    ResolveError::Unauthorized {
        registry: endpoint.host.clone(),
        repository: repository.to_owned(),
        tried: String::new(),
        refusal,
        reason,
        maybe_missing,
    }
}

/// Reads `resp`'s body up to `max` bytes; `false` when there was more (then the bytes read are
/// the first `max`).
async fn read_at_most(
    resp: &mut reqwest::Response,
    max: usize,
) -> Result<(Vec<u8>, bool), reqwest::Error> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await? {
        if out.len() + chunk.len() > max {
            let room = max - out.len();
            out.extend_from_slice(&chunk[..room]);
            return Ok((out, false));
        }
        out.extend_from_slice(&chunk);
    }
    Ok((out, true))
}

/// The registry's own words in an error answer, made safe to show (see [`registry_words`]);
/// empty when the body cannot be read or says nothing.
async fn words_of(mut resp: reqwest::Response) -> String {
    match read_at_most(&mut resp, ERROR_BODY_MAX_BYTES).await {
        Ok((body, _)) => registry_words(&body),
        Err(e) => {
            tracing::debug!(error = %e, "the body of a registry's error answer could not be read");
            String::new()
        }
    }
}

/// What an error body says, quoted, on one line, escaped and at most [`WORDS_MAX_CHARS`]
/// characters: the `message` (and string `detail`) of each of distribution's
/// `{"errors":[{"code","message","detail"}]}`, else the first of `error_description`,
/// `details`, `detail`, `message`, `error` of another JSON object (token services), else plain
/// text; an HTML page or an empty body says nothing.
pub fn registry_words(body: &[u8]) -> String {
    let said = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(v) => json_words(&v),
        Err(_) => {
            let text = String::from_utf8_lossy(body);
            let text = text.trim();
            if text.starts_with('<') {
                String::new()
            } else {
                text.to_owned()
            }
        }
    };
    let one_line = said.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.is_empty() {
        return String::new();
    }
    format!("\"{}\"", crate::text::shown(&one_line, WORDS_MAX_CHARS))
}

fn json_words(v: &serde_json::Value) -> String {
    use serde_json::Value;
    fn text(v: Option<&serde_json::Value>) -> &str {
        v.and_then(serde_json::Value::as_str)
            .map(str::trim)
            .unwrap_or("")
    }
    if let Some(errors) = v.get("errors").and_then(Value::as_array) {
        let parts: Vec<String> = errors
            .iter()
            .filter_map(|e| {
                let message = text(e.get("message"));
                let detail = text(e.get("detail"));
                match (message.is_empty(), detail.is_empty() || detail == message) {
                    (false, true) => Some(message.to_owned()),
                    (false, false) => Some(format!("{message}: {detail}")),
                    (true, false) => Some(detail.to_owned()),
                    (true, true) => Some(text(e.get("code")).to_owned()).filter(|c| !c.is_empty()),
                }
            })
            .collect();
        return parts.join("; ");
    }
    ["error_description", "details", "detail", "message", "error"]
        .iter()
        .map(|k| text(v.get(*k)))
        .find(|s| !s.is_empty())
        .unwrap_or_default()
        .to_owned()
}

fn basic(c: &Credential) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", c.username, c.password))
    )
}

/// A Docker schema1 manifest (`application/vnd.docker.distribution.manifest.v1+json` or
/// `+prettyjws`, what old registries send when they ignore `Accept`) has a digest that cannot
/// be pulled; OCI's `application/vnd.oci.image.manifest.v1+json` is not one.
fn refuse_schema1(headers: &HeaderMap, registry: &str) -> Result<(), ResolveError> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if content_type
        .trim()
        .to_ascii_lowercase()
        .starts_with("application/vnd.docker.distribution.manifest.v1+")
    {
        return Err(ResolveError::Invalid {
            registry: registry.to_owned(),
            detail: format!(
                "it served a schema1 manifest ({content_type}), whose digest cannot be pulled"
            ),
        });
    }
    Ok(())
}

/// The `Docker-Content-Digest` header: absent, a sha256 digest, or an unusable answer.
fn digest_header(headers: &HeaderMap, registry: &str) -> Result<Option<Digest>, ResolveError> {
    let Some(v) = headers.get("docker-content-digest") else {
        return Ok(None);
    };
    let d = v.to_str().unwrap_or("");
    Digest::parse(d)
        .map(Some)
        .ok_or_else(|| ResolveError::Invalid {
            registry: registry.to_owned(),
            detail: format!("Docker-Content-Digest {d:?} is not a sha256 digest"),
        })
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    v.parse::<u64>().ok().map(Duration::from_secs).or_else(|| {
        v.parse::<f64>()
            .ok()
            .and_then(|f| Duration::try_from_secs_f64(f).ok())
    })
}

/// A `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Basic,
    Bearer { realm: String, service: String },
    None,
}

/// Reads a `WWW-Authenticate` value (RFC 7235, with `http-auth`'s parser): a Bearer challenge
/// with a realm wins, then Basic, whatever their order; a syntax error ends the list, and the
/// challenges before it still count.
fn parse_challenge(header: &str) -> Challenge {
    let mut basic = false;
    for challenge in http_auth::ChallengeParser::new(header) {
        let Ok(challenge) = challenge else { break };
        if challenge.scheme.eq_ignore_ascii_case("bearer") {
            let param = |name: &str| {
                challenge
                    .params
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.to_unescaped())
                    .unwrap_or_default()
            };
            let realm = param("realm");
            if !realm.is_empty() {
                return Challenge::Bearer {
                    realm,
                    service: param("service"),
                };
            }
        } else if challenge.scheme.eq_ignore_ascii_case("basic") {
            basic = true;
        }
    }
    if basic {
        Challenge::Basic
    } else {
        Challenge::None
    }
}

/// Turns a reqwest error into what happened, in words.
fn classify(registry: &str, e: &reqwest::Error, limit: Duration) -> ResolveError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(f) = s.downcast_ref::<ForbiddenAddress>() {
            // The addresses stay in the debug log: a denial never repeats internal DNS answers.
            tracing::debug!(host = %f.host, addresses = %f.addrs, "a registry name resolves only to refused addresses");
            return ResolveError::Forbidden {
                host: f.host.clone(),
                reason: "it resolves only to link-local or metadata addresses".into(),
            };
        }
        if let Some(t) = s.downcast_ref::<rustls::Error>() {
            return ResolveError::Tls {
                registry: registry.to_owned(),
                detail: t.to_string(),
            };
        }
        // An io::Error's `source()` skips the error it wraps (hyper wraps tokio-rustls' io::Error,
        // which wraps the rustls error): step into it instead.
        source = match s
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner),
            None => s.source(),
        };
    }
    if e.is_timeout() {
        return ResolveError::Timeout {
            registry: registry.to_owned(),
            seconds: limit.as_secs_f64(),
        };
    }
    let mut detail = e.to_string();
    let mut s = std::error::Error::source(e);
    while let Some(inner) = s {
        detail = inner.to_string();
        s = inner.source();
    }
    ResolveError::Connect {
        registry: registry.to_owned(),
        detail,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_client::manifest::{
        IMAGE_MANIFEST_LIST_MEDIA_TYPE, IMAGE_MANIFEST_MEDIA_TYPE, OCI_IMAGE_INDEX_MEDIA_TYPE,
        OCI_IMAGE_MEDIA_TYPE,
    };

    /// reqwest needs a rustls provider to build a client; other tests may have installed it.
    fn install_crypto_provider() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }

    #[test]
    fn accept_covers_the_four_manifest_types() {
        for t in [
            OCI_IMAGE_INDEX_MEDIA_TYPE,
            OCI_IMAGE_MEDIA_TYPE,
            IMAGE_MANIFEST_LIST_MEDIA_TYPE,
            IMAGE_MANIFEST_MEDIA_TYPE,
        ] {
            assert!(MANIFEST_ACCEPT.contains(t), "{t}");
        }
    }

    #[test]
    fn parses_bearer_challenge() {
        let c = parse_challenge(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull""#,
        );
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.example.com/token".into(),
                service: "registry.example.com".into()
            }
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Challenge::Basic
        );
        assert_eq!(parse_challenge("Negotiate"), Challenge::None);
    }

    #[test]
    fn parses_several_challenges_and_quoted_commas() {
        let bearer = |realm: &str, service: &str| Challenge::Bearer {
            realm: realm.into(),
            service: service.into(),
        };
        // Bearer wins over Basic, in either order; unknown schemes are skipped.
        assert_eq!(
            parse_challenge(r#"Basic realm="r", Bearer realm="https://a.io/t",service="a.io""#),
            bearer("https://a.io/t", "a.io")
        );
        assert_eq!(
            parse_challenge(r#"Negotiate, Bearer realm="https://a.io/t""#),
            bearer("https://a.io/t", "")
        );
        assert_eq!(
            parse_challenge(r#"Negotiate, Basic realm="r""#),
            Challenge::Basic
        );
        // A comma or an escaped quote inside a quoted string belongs to the value.
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://a.io/t?x=1,2", service="s \"q\"", scope="repository:a/b:pull,push""#
            ),
            bearer("https://a.io/t?x=1,2", r#"s "q""#)
        );
        // Parameter names and schemes are case-insensitive; a Bearer challenge needs a realm.
        assert_eq!(
            parse_challenge(r#"bearer REALM="https://a.io/t""#),
            bearer("https://a.io/t", "")
        );
        assert_eq!(parse_challenge(r#"Bearer service="s""#), Challenge::None);
        // A syntax error ends the list; what came before it counts.
        assert_eq!(
            parse_challenge(r#"Basic realm="r", error error"#),
            Challenge::Basic
        );
        assert_eq!(parse_challenge(""), Challenge::None);
        // A realm URL must be quoted: ':' and '/' are not token characters (RFC 7235).
        assert_eq!(
            parse_challenge("Bearer realm=https://a.io/t"),
            Challenge::None
        );
    }

    #[test]
    fn rejects_malformed_digest_header() {
        let mut h = HeaderMap::new();
        h.insert("docker-content-digest", "sha256:xyz".parse().unwrap());
        assert!(matches!(
            digest_header(&h, "r"),
            Err(ResolveError::Invalid { .. })
        ));
    }

    #[test]
    fn schema1_is_refused_but_oci_manifest_v1_is_not() {
        let mut h = HeaderMap::new();
        h.insert(
            CONTENT_TYPE,
            "application/vnd.oci.image.manifest.v1+json"
                .parse()
                .unwrap(),
        );
        assert!(refuse_schema1(&h, "r").is_ok());
        for t in [
            "application/vnd.docker.distribution.manifest.v1+prettyjws",
            "application/vnd.docker.distribution.manifest.v1+json",
        ] {
            h.insert(CONTENT_TYPE, t.parse().unwrap());
            assert!(matches!(
                refuse_schema1(&h, "r"),
                Err(ResolveError::Invalid { .. })
            ));
        }
    }

    #[test]
    fn registry_words_are_kept_bounded_and_on_one_line() {
        let cases: [(&[u8], &str); 8] = [
            (
                br#"{"errors":[{"code":"DENIED","message":"Your authorization token has expired. Reauthenticate and try again."}]}"#,
                r#""Your authorization token has expired. Reauthenticate and try again.""#,
            ),
            (
                br#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":[{"Type":"repository"}]},{"code":"X","message":"","detail":"second"}]}"#,
                r#""authentication required; second""#,
            ),
            (
                br#"{"details":"incorrect username or password"}"#,
                r#""incorrect username or password""#,
            ),
            (
                br#"{"error":"invalid_grant","error_description":"refresh token expired"}"#,
                r#""refresh token expired""#,
            ),
            (
                b"  rate limited\r\n  slow down \x1b[2J",
                r#""rate limited slow down \u{1b}[2J""#,
            ),
            (b"<html><body>502 Bad Gateway</body></html>", ""),
            (b"", ""),
            (br#"{"errors":[]}"#, ""),
        ];
        for (body, want) in cases {
            assert_eq!(
                registry_words(body),
                want,
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let long = registry_words("x".repeat(5000).as_bytes());
        assert_eq!(long.chars().count(), WORDS_MAX_CHARS + 2, "{long}");
        assert!(long.contains('…'));
    }

    #[test]
    fn retry_after_seconds() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, "2".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
    }

    #[test]
    fn docker_hub_goes_to_registry_1() {
        install_crypto_provider();
        let t = Transport::new(&[], Duration::from_secs(1), Default::default()).unwrap();
        let e = t.endpoints("docker.io");
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].host.as_str(), e[0].scheme),
            ("registry-1.docker.io", "https")
        );
    }

    #[test]
    fn mirrors_come_first_and_insecure_means_http() {
        install_crypto_provider();
        let t = Transport::new(
            &[RegistrySettings {
                host: "127.0.0.1:5000".into(),
                insecure: true,
                ca_file: None,
                mirrors: vec!["127.0.0.1:6000".into()],
            }],
            Duration::from_secs(1),
            Default::default(),
        )
        .unwrap();
        let e = t.endpoints("127.0.0.1:5000");
        assert_eq!(
            e.iter()
                .map(|e| (e.host.as_str(), e.scheme))
                .collect::<Vec<_>>(),
            [("127.0.0.1:6000", "http"), ("127.0.0.1:5000", "http")]
        );
        assert_eq!(e[0].mirror_of.as_deref(), Some("127.0.0.1:5000"));
    }

    /// A TCP listener on 127.0.0.1 that counts the connections it accepts (and closes them).
    async fn counting_listener() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = accepted.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(stream);
            }
        });
        (port, accepted)
    }

    /// A registry on 127.0.0.1 answering every request `307 Location: location`.
    async fn redirecting_registry(location: String) -> String {
        let app = axum::Router::new().fallback(move || {
            let location = location.clone();
            async move {
                (
                    axum::http::StatusCode::TEMPORARY_REDIRECT,
                    [("location", location)],
                )
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        host
    }

    async fn lookup(
        t: &Transport,
        host: &str,
        scheme: &'static str,
        allowed: Option<&Patterns>,
    ) -> Result<Digest, ResolveError> {
        let endpoint = Endpoint {
            host: host.to_owned(),
            scheme,
            mirror_of: None,
        };
        let q = Lookup {
            repository: "x",
            tag: "1",
            credential: None,
            allowed,
            deadline: Instant::now() + Duration::from_secs(5),
        };
        let permits = super::super::permits::Permits::new(1, 1);
        let mut slot = Slot::acquire(&permits, host, q.deadline).await?;
        t.digest(&endpoint, &q, &mut Exchange::default(), &mut slot)
            .await
    }

    /// Spellings of "this host" (0.0.0.0 reaches the local host on Linux) are refused by the
    /// address they normalize to, before anything is dialled: the listener accepts nothing.
    #[tokio::test]
    async fn numeric_spellings_of_this_host_are_refused_before_connecting() {
        install_crypto_provider();
        let (port, accepted) = counting_listener().await;
        // The control: dialled directly, 0.0.0.0:port does reach the listener.
        tokio::net::TcpStream::connect(("0.0.0.0", port))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let reached = accepted.load(std::sync::atomic::Ordering::SeqCst);
        assert_eq!(reached, 1);
        let t = Transport::new(&[], Duration::from_secs(2), Default::default()).unwrap();
        for host in ["0", "0.0.0.0", "0x0", "00.0", "0.0.0"] {
            for scheme in ["http", "https"] {
                let err = lookup(&t, &format!("{host}:{port}"), scheme, None)
                    .await
                    .unwrap_err();
                assert!(
                    matches!(&err, ResolveError::Forbidden { reason, .. } if reason == "0.0.0.0 is an address of this host (0.0.0.0/8)"),
                    "{host}: {err:?}"
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), reached);
    }

    /// A redirect is checked on the address it normalizes to: to an address outside
    /// `allowedRegistries` (whatever its spelling) or to a forbidden one, it is never followed.
    #[tokio::test]
    async fn redirects_are_checked_on_the_normalized_address_before_connecting() {
        install_crypto_provider();
        let (port, accepted) = counting_listener().await;
        let t = Transport::new(&[], Duration::from_secs(2), Default::default()).unwrap();
        for spelling in [
            "0x7f000001",
            "2130706433",
            "0177.0.0.1",
            "127.1",
            "127.0.0.1",
        ] {
            let registry = redirecting_registry(format!("http://{spelling}:{port}/v2/x")).await;
            let allowed = Patterns::new(&[registry.as_str()], true).unwrap();
            let err = lookup(&t, &registry, "http", Some(&allowed))
                .await
                .unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("refusing to contact 127.0.0.1:{port}: not in allowedRegistries"),
                "{spelling}"
            );
        }
        for spelling in ["0", "0x0.0", "[::]", "[::ffff:0.0.0.0]"] {
            let registry = redirecting_registry(format!("http://{spelling}:{port}/v2/x")).await;
            let err = lookup(&t, &registry, "http", None).await.unwrap_err();
            assert!(
                matches!(&err, ResolveError::Forbidden { reason, .. } if reason.contains("is an address of this host")),
                "{spelling}: {err:?}"
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    /// A registry written as a name is internal when it answered from an internal address: its
    /// redirect to another loopback port is followed (the hop is judged by the peer's address).
    #[tokio::test]
    async fn a_registry_named_by_a_name_that_answers_from_loopback_may_redirect_inward() {
        install_crypto_provider();
        const D: &str = "sha256:7b3ccabffc97de872a30dfd234fd972a66d247c8cfc69b0550f276481852627c";
        let app = axum::Router::new().fallback(|| async { ([("docker-content-digest", D)], "") });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let registry = redirecting_registry(format!("http://{target}/v2/x")).await;
        let named = registry.replace("127.0.0.1", "localhost");
        let t = Transport::new(&[], Duration::from_secs(2), Default::default()).unwrap();
        let digest = lookup(&t, &named, "http", None).await.unwrap();
        assert_eq!(digest.to_string(), D);
    }

    /// A hop that fails at the network level is one sentence naming the registry, whatever the
    /// port did (closed, or open and hanging up): the denial tells nothing about it.
    #[tokio::test]
    async fn a_failed_redirect_hop_does_not_tell_what_is_listening() {
        install_crypto_provider();
        let (open, _) = counting_listener().await;
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let t = Transport::new(&[], Duration::from_secs(2), Default::default()).unwrap();
        let mut messages = Vec::new();
        for port in [open, closed] {
            let registry = redirecting_registry(format!("http://127.0.0.1:{port}/v2/x")).await;
            let err = lookup(&t, &registry, "http", None).await.unwrap_err();
            assert_eq!(err.metric_label(), "connect", "{err:?}");
            messages.push(err.to_string().replace(&registry, "REGISTRY"));
        }
        assert_eq!(messages[0], messages[1]);
        assert_eq!(
            messages[0],
            "cannot connect to registry REGISTRY: the redirect target it named could not be reached or may not be contacted (details in pinhook's debug log)"
        );
    }

    #[test]
    fn unreadable_ca_file_names_it() {
        install_crypto_provider();
        let err = Transport::new(
            &[RegistrySettings {
                host: "r.io".into(),
                insecure: false,
                ca_file: Some("/nonexistent/ca.pem".into()),
                mirrors: vec![],
            }],
            Duration::from_secs(1),
            Default::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("registries[r.io].caFile /nonexistent/ca.pem:"),
            "{err}"
        );
    }
}
