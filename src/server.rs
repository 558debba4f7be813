//! The HTTPS webhook server (`/validate` and `/mutate`), the plain-HTTP health and metrics
//! listener, hot reload of the policy and certificate, and graceful shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum_server::tls_rustls::RustlsConfig;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use kube::core::DynamicObject;
use kube::core::admission::{
    AdmissionRequest, AdmissionReview, META_API_VERSION_V1, META_KIND, Operation,
};

use crate::admission::{self, Endpoint};
use crate::answer::{Answer, TEXT_MAX_CHARS};
use crate::audit::{self, RequestInfo};
use crate::bootstrap::{self, Bootstrap, BootstrapError, Material};
use crate::budget::{BodyBudget, HeldBody};
use crate::config::ServeArgs;
use crate::duration::parse_duration;
use crate::idle::IdleAcceptor;
use crate::metrics::{Metrics, ReloadLabels};
use crate::mutate::Pinner;
use crate::pin::NoPin;
use crate::policy::{Policy, PolicyError};
use crate::reload::FileWatch;
use crate::resolve::Resolver;
use crate::resolve::secrets::PullSecrets;
use crate::text::clip;
use crate::tls::{self, TlsError};

/// The server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The policy file is invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The certificate bootstrap failed.
    #[error(transparent)]
    Bootstrap(#[from] BootstrapError),
    /// A setting (registry config, caFile) is unusable.
    #[error("{message}")]
    Config {
        /// What is wrong, naming the file.
        message: String,
    },
    /// A listener could not be bound or served.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Request limits from the flags.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest body accepted.
    pub max_body_bytes: usize,
    /// Deadline when the API server gives no `?timeout=`.
    pub request_timeout: Duration,
    /// Reserve kept before the deadline.
    pub deadline_margin: Duration,
    /// Request-body bytes in flight across the process (at least `max_body_bytes`).
    pub max_inflight_body_bytes: usize,
}

/// State shared by every request.
#[derive(Debug, Clone)]
pub struct AppState {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    policy: ArcSwap<Policy>,
    metrics: Arc<Metrics>,
    ready: AtomicBool,
    max_body_bytes: usize,
    body_timeout: Duration,
    deadline_margin: Duration,
    budget: Arc<BodyBudget>,
    pinner: Option<Arc<Pinner>>,
}

impl AppState {
    /// New state serving `policy`, not yet ready; without a pinner, /mutate only validates.
    pub fn new(
        policy: Policy,
        limits: Limits,
        pinner: Option<Arc<Pinner>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            inner: Arc::new(Shared {
                policy: ArcSwap::from_pointee(policy),
                metrics,
                ready: AtomicBool::new(false),
                max_body_bytes: limits.max_body_bytes,
                body_timeout: limits.request_timeout,
                deadline_margin: limits.deadline_margin,
                budget: BodyBudget::new(
                    limits
                        .max_inflight_body_bytes
                        .max(limits.max_body_bytes)
                        .try_into()
                        .unwrap_or(u64::MAX),
                ),
                pinner,
            }),
        }
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Marks the server ready (or not) for `/readyz`.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::SeqCst);
    }

    /// The policy in force.
    pub fn policy(&self) -> Arc<Policy> {
        self.inner.policy.load_full()
    }

    /// Replaces the policy for subsequent requests.
    pub fn set_policy(&self, policy: Policy) {
        self.inner.policy.store(Arc::new(policy));
    }
}

/// The webhook endpoints (served over TLS).
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/validate", post(validate))
        .route("/mutate", post(mutate))
        .fallback(not_found)
        .with_state(state)
}

/// Health, readiness and metrics (served over plain HTTP).
pub fn ops_router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(ops_not_found)
        .with_state(state)
}

async fn not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "no such endpoint; pinhook serves POST /validate and POST /mutate".into(),
    )
}

async fn ops_not_found() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "no such endpoint; this port serves GET /healthz, /readyz and /metrics".into(),
    )
}

async fn readyz(State(state): State<AppState>) -> Response {
    if state.inner.ready.load(Ordering::SeqCst) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    if let Some(pinner) = &state.inner.pinner {
        let entries = pinner.resolver().cached_entries().await;
        state
            .metrics()
            .cache_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }
    if let Some(queue) = crate::logs::installed() {
        state.metrics().set_log_stats(queue.stats());
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics().encode(),
    )
        .into_response()
}

/// A request that is not a usable AdmissionReview.
#[derive(Debug)]
struct BadRequest {
    status: StatusCode,
    message: String,
}

fn error_response(status: StatusCode, message: String) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Reads the body within the size limit and `wait` (what is left of `deadline`); the body stays
/// with the caller, so an HTTP/2 stream left unread can be closed after the answer is sent.
async fn read_body(
    state: &AppState,
    body: &mut Body,
    wait: Duration,
    deadline: Duration,
) -> Result<Bytes, BadRequest> {
    let limit = state.inner.max_body_bytes;
    let too_large = || BadRequest {
        status: StatusCode::PAYLOAD_TOO_LARGE,
        message: format!("request body exceeds the limit of {limit} bytes (--max-body-bytes)"),
    };
    let collect = Limited::new(body, limit).collect();
    match tokio::time::timeout(wait, collect).await {
        Err(_) => Err(BadRequest {
            status: StatusCode::REQUEST_TIMEOUT,
            message: format!(
                "request body not received within {}s",
                deadline.as_secs_f64()
            ),
        }),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(too_large()),
        Ok(Err(e)) => Err(BadRequest {
            status: StatusCode::BAD_REQUEST,
            message: format!("cannot read request body: {e}"),
        }),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Most bytes of a refused HTTP/2 request body read and discarded after the answer.
pub const DRAIN_MAX_BYTES: usize = 16 * 1024 * 1024;

/// Longest time a refused HTTP/2 request body is read and discarded after the answer.
pub const DRAIN_MAX_TIME: Duration = Duration::from_secs(5);

/// `response` to an HTTP/2 request whose `body` was not read (413, 408, 503, 400): the stream
/// must end the way clients read as "stop sending" (RFC 9113 §8.1). Dropping the body before the
/// answer is out resets the stream with CANCEL (curl: error 92, no status); so the rest of the
/// body is read and discarded, up to [`DRAIN_MAX_BYTES`] and [`DRAIN_MAX_TIME`], and the body is
/// dropped only once the answer has been sent: a client still sending then gets
/// RST_STREAM(NO_ERROR) after a complete answer, and one that finished in time no reset at all
/// (curl 7.88 fails on any reset that arrives while it is still uploading).
fn close_after(response: Response, mut body: Body) -> Response {
    let (sent_tx, sent_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let drain = async {
            let mut seen = 0usize;
            while let Some(Ok(frame)) = body.frame().await {
                seen = seen.saturating_add(frame.data_ref().map_or(0, |d| d.len()));
                if seen > DRAIN_MAX_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_MAX_TIME, drain).await;
        // The sender goes with the answer's body, once the answer has been written.
        let _ = tokio::time::timeout(DRAIN_MAX_TIME, sent_rx).await;
        drop(body);
    });
    let (parts, out) = response.into_parts();
    let out = out.map_frame(move |frame| {
        let _sent: &tokio::sync::oneshot::Sender<()> = &sent_tx;
        frame
    });
    Response::from_parts(parts, Body::new(out))
}

/// Parses an AdmissionReview v1 with a request.
fn parse_review(bytes: &[u8]) -> Result<AdmissionRequest<DynamicObject>, BadRequest> {
    let bad = |message: String| BadRequest {
        status: StatusCode::BAD_REQUEST,
        message,
    };
    let not_a_review = |e: serde_json::Error| bad(format!("body is not an AdmissionReview: {e}"));
    // One tree of the whole body. Deserializing `AdmissionReview<DynamicObject>` straight from
    // the bytes built it twice at once: DynamicObject flattens its fields, and serde buffers a
    // flattened struct's content in a tree of its own before building the value.
    let mut root: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| bad(format!("body is not valid JSON: {e}")))?;
    // The objects are moved out of that tree, not copied; the small rest is read by serde.
    let mut take = |field: &str| {
        let slot = root.get_mut("request")?.as_object_mut()?;
        if !slot.get(field)?.is_object() {
            return None; // left in place, for serde's message naming the wrong type
        }
        slot.remove(field)
    };
    let (object, old_object) = (take("object"), take("oldObject"));
    let review: AdmissionReview<DynamicObject> =
        serde_json::from_value(root).map_err(not_a_review)?;
    if review.types.api_version != META_API_VERSION_V1 || review.types.kind != META_KIND {
        return Err(bad(format!(
            "unsupported review {}/{}; pinhook speaks {META_API_VERSION_V1}/{META_KIND}",
            review.types.api_version, review.types.kind
        )));
    }
    let mut req: AdmissionRequest<DynamicObject> = review
        .try_into()
        .map_err(|_| bad("AdmissionReview has no request".into()))?;
    if req.uid.is_empty() {
        return Err(bad("AdmissionReview request has an empty uid".into()));
    }
    if let Some(object) = object {
        req.object = Some(dynamic_object(object).map_err(not_a_review)?);
    }
    if let Some(object) = old_object {
        req.old_object = Some(dynamic_object(object).map_err(not_a_review)?);
    }
    Ok(req)
}

/// A JSON object as kube's `DynamicObject`: `apiVersion` and `kind`, `metadata`, and the rest as
/// its data, as DynamicObject's own (flattened) deserialization splits it.
fn dynamic_object(value: serde_json::Value) -> Result<DynamicObject, serde_json::Error> {
    let serde_json::Value::Object(mut fields) = value else {
        return serde_json::from_value(value);
    };
    let metadata = match fields.remove("metadata") {
        Some(m) => serde_json::from_value(m)?,
        None => Default::default(),
    };
    let both_strings = [fields.get("apiVersion"), fields.get("kind")]
        .iter()
        .all(|v| matches!(v, Some(serde_json::Value::String(_))));
    let types = both_strings.then(|| {
        let mut text = |key: &str| match fields.remove(key) {
            Some(serde_json::Value::String(s)) => s,
            _ => String::new(),
        };
        kube::core::TypeMeta {
            api_version: text("apiVersion"),
            kind: text("kind"),
        }
    });
    Ok(DynamicObject {
        types,
        metadata,
        data: serde_json::Value::Object(fields),
    })
}

/// The longest `?timeout=` honoured: the API server's own maximum for a webhook call (30 s);
/// a longer one is taken as 30 s (one too large to be a duration at all is ignored).
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The deadline the API server gave (`?timeout=10s`, at most [`MAX_REQUEST_TIMEOUT`]), else
/// the configured one.
fn request_deadline(query: Option<&str>, default: Duration) -> Duration {
    query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("timeout="))
        .and_then(|v| parse_duration(v).ok())
        .map(|d| d.min(MAX_REQUEST_TIMEOUT))
        .unwrap_or(default)
}

async fn validate(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    handle(state, Endpoint::Validate, query, request).await
}

async fn mutate(
    State(state): State<AppState>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Response {
    handle(state, Endpoint::Mutate, query, request).await
}

/// One request, one pass: read it, decide, resolve what the decision asks for, answer; the
/// audit trail and the metrics read the answer.
async fn handle(
    state: AppState,
    endpoint: Endpoint,
    query: Option<String>,
    request: Request,
) -> Response {
    let start = Instant::now();
    let metrics = state.metrics();
    let deadline = request_deadline(query.as_deref(), state.inner.body_timeout);
    let http2 = request.version() == axum::http::Version::HTTP_2;
    let (parts, mut body) = request.into_parts();
    let result = async {
        let max = state.inner.max_body_bytes;
        let length = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|len| len.to_str().ok())
            .and_then(|s| s.parse::<u64>().ok());
        if let Some(len) = length
            && len > max as u64
        {
            return Err(BadRequest {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: format!(
                    "request body of {len} bytes exceeds the limit of {max} bytes (--max-body-bytes)"
                ),
            });
        }
        // The bytes this body may take, reserved before it is read and held until the answer.
        let wanted = length.unwrap_or(max as u64);
        let budget = &state.inner.budget;
        let reservation = budget.reserve(wanted, deadline).await.map_err(|_| BadRequest {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: format!(
                "request bodies in flight fill the budget of {} bytes (--max-inflight-body-bytes) and {wanted} bytes did not become free within {}s; retry",
                budget.capacity(),
                deadline.as_secs_f64()
            ),
        })?;
        let wait = deadline.saturating_sub(start.elapsed());
        let bytes = read_body(&state, &mut body, wait, deadline).await?;
        Ok((parse_review(&bytes)?, reservation))
    }
    .await;
    let (req, reservation) = match result {
        Ok(ok) => ok,
        Err(bad) => {
            tracing::warn!(endpoint = endpoint.as_str(), status = bad.status.as_u16(), error = %bad.message, "rejected malformed admission request");
            metrics.request(endpoint.as_str(), "error");
            let response = error_response(bad.status, bad.message);
            return if http2 {
                close_after(response, body)
            } else {
                response
            };
        }
    };
    drop(body);
    let policy = state.policy();
    let decision = admission::review(&policy, &req, endpoint);
    if let Err(NoPin::Controlled(owner)) = &decision.pin {
        tracing::debug!(object = %decision.object, owner, "not pinned: controlled by an owner whose template was pinned");
    }
    let results = match (&decision.pin, &state.inner.pinner) {
        (Ok(plan), Some(pinner)) => {
            let budget = deadline
                .saturating_sub(state.inner.deadline_margin)
                .max(Duration::from_millis(100));
            // `budget` is bounded, but an Instant overflow must never panic a request.
            let deadline = start
                .checked_add(budget)
                .unwrap_or_else(|| start + MAX_REQUEST_TIMEOUT);
            pinner.pin(plan, &decision.object.namespace, deadline).await
        }
        _ => Vec::new(),
    };
    let answer = Answer::new(&decision, &results);
    let info = RequestInfo {
        uid: clip(&req.uid, TEXT_MAX_CHARS).into_owned(),
        operation: operation_name(&req.operation).to_owned(),
        user: clip(
            req.user_info.username.as_deref().unwrap_or_default(),
            TEXT_MAX_CHARS,
        )
        .into_owned(),
        dry_run: req.dry_run,
    };
    let lines = audit::lines(&answer.records, &decision, &info);
    if !lines.is_empty()
        && let Some(queue) = crate::logs::installed()
    {
        // Room for the audit lines in the log queue, waited for without holding a worker; when
        // the log reader stalls past the deadline they are dropped and counted, and the answer
        // (whose audit annotations the API server records) still goes out.
        let bytes = lines.iter().map(|l| l.len() + 1).sum();
        let until = start
            .checked_add(deadline.saturating_sub(state.inner.deadline_margin))
            .unwrap_or_else(|| start + MAX_REQUEST_TIMEOUT);
        queue.room_for(bytes, until).await;
    }
    audit::write(&lines);
    let body = match review_json(&req.uid, &answer) {
        Ok(b) => b,
        Err(e) => {
            metrics.request(endpoint.as_str(), "error");
            return error_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot serialize response: {e}"),
            );
        }
    };
    metrics.answered(
        endpoint.as_str(),
        &answer.labels,
        start.elapsed().as_secs_f64(),
    );
    // The answer keeps the request's reserved bytes (grown to its own size) until the connection
    // has taken its last frame: an answer the client does not read stays counted.
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        Body::new(HeldBody::new(body.into(), reservation)),
    )
        .into_response()
}

/// The AdmissionReview answer as the API server reads it: `admission.k8s.io/v1`, the patch as
/// base64 and `patchType: JSONPatch` with it, written in one pass.
pub fn review_json(uid: &str, answer: &Answer<'_>) -> Result<Vec<u8>, serde_json::Error> {
    use base64::Engine;

    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Review<'a> {
        api_version: &'static str,
        kind: &'static str,
        response: Response<'a>,
    }

    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Response<'a> {
        uid: &'a str,
        allowed: bool,
        status: &'a kube::core::Status,
        #[serde(skip_serializing_if = "Option::is_none")]
        patch: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        patch_type: Option<&'static str>,
        #[serde(skip_serializing_if = "HashMap::is_empty")]
        audit_annotations: &'a HashMap<String, String>,
        #[serde(skip_serializing_if = "<[String]>::is_empty")]
        warnings: &'a [String],
    }

    let patch = match &answer.patch {
        Some(p) => Some(base64::engine::general_purpose::STANDARD.encode(serde_json::to_vec(p)?)),
        None => None,
    };
    let review = Review {
        api_version: META_API_VERSION_V1,
        kind: META_KIND,
        response: Response {
            uid,
            allowed: answer.allowed,
            status: &answer.status,
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            audit_annotations: &answer.audit_annotations,
            warnings: &answer.warnings,
        },
    };
    let mut out = Vec::with_capacity(512);
    serde_json::to_writer(&mut out, &review)?;
    Ok(out)
}

fn operation_name(op: &Operation) -> &'static str {
    match op {
        Operation::Create => "CREATE",
        Operation::Update => "UPDATE",
        Operation::Delete => "DELETE",
        Operation::Connect => "CONNECT",
    }
}

/// Why a changed file was not taken (the previous policy or certificate stays in force).
#[derive(Debug, thiserror::Error)]
enum ReloadError {
    /// A file could not be read.
    #[error(transparent)]
    Read(#[from] crate::reload::ReadError),
    /// The policy is invalid.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The policy's `registries` list is unusable.
    #[error("{file}: {source}")]
    Registries {
        /// The policy file.
        file: String,
        /// What is wrong.
        source: crate::resolve::RegistryConfigError,
    },
    /// The certificate or key is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// Reloads the policy when its file changes; an invalid file is refused and the old policy kept.
fn watch_policy(
    state: AppState,
    mut watch: FileWatch,
    path: PathBuf,
    interval: Duration,
    call_timeout: Duration,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(snapshot) = watch.poll() else {
                continue;
            };
            let file = path.display().to_string();
            let loaded = snapshot.map_err(ReloadError::Read).and_then(|files| {
                let text = String::from_utf8_lossy(&files[0]);
                let policy = Policy::from_yaml(&text, &file)?;
                // A registries entry whose caFile cannot be used refuses the whole reload.
                if let Some(pinner) = &state.inner.pinner {
                    pinner
                        .resolver()
                        .reconfigure(policy.registries(), call_timeout)
                        .map_err(|source| ReloadError::Registries {
                            file: file.clone(),
                            source,
                        })?;
                }
                Ok(policy)
            });
            let metrics = state.metrics();
            match loaded {
                Ok(policy) => {
                    state.set_policy(policy);
                    metrics
                        .policy_reloads
                        .get_or_create(&ReloadLabels { result: "success" })
                        .inc();
                    metrics.policy_valid.set(1);
                    tracing::info!(policy = %file, "policy reloaded");
                }
                Err(error) => {
                    metrics
                        .policy_reloads
                        .get_or_create(&ReloadLabels { result: "failure" })
                        .inc();
                    metrics.policy_valid.set(0);
                    tracing::error!(policy = %file, %error, "policy reload refused; the previous policy stays in force");
                }
            }
        }
    });
}

/// Swaps in a new certificate for new connections when the files change; open ones keep theirs.
fn watch_certificate(
    state: AppState,
    config: RustlsConfig,
    mut watch: FileWatch,
    cert: PathBuf,
    key: PathBuf,
    interval: Duration,
) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let Some(snapshot) = watch.poll() else {
                continue;
            };
            let loaded = snapshot
                .map_err(ReloadError::Read)
                .and_then(|files| Ok(tls::from_pem(&files[0], &files[1], &cert, &key)?));
            match loaded {
                Ok(server_config) => {
                    config.reload_from_config(server_config);
                    count_tls_reload(&state, "success");
                    tracing::info!(cert = %cert.display(), "TLS certificate reloaded");
                }
                Err(error) => {
                    count_tls_reload(&state, "failure");
                    tracing::error!(cert = %cert.display(), %error, "TLS certificate reload refused; the previous certificate stays in use");
                }
            }
        }
    });
}

/// Counts one certificate reload (`success` or `failure`) on `pinhook_tls_reloads_total`.
fn count_tls_reload(state: &AppState, result: &'static str) {
    state
        .metrics()
        .tls_reloads
        .get_or_create(&ReloadLabels { result })
        .inc();
}

/// Where the serving certificate comes from.
#[expect(
    clippy::large_enum_variant,
    reason = "one value, made once at start-up"
)]
enum Certificate {
    /// `--tls-cert` and `--tls-key`, polled for changes.
    Files {
        watch: FileWatch,
        cert: PathBuf,
        key: PathBuf,
    },
    /// `--bootstrap-secret`: made and rotated by pinhook (the material now served).
    Bootstrap(Bootstrap, Material),
}

impl Certificate {
    /// Loads the files, or runs the first bootstrap sync; returns the TLS configuration to serve.
    async fn prepare(args: &ServeArgs) -> Result<(Self, Arc<rustls::ServerConfig>), ServeError> {
        if let Some(settings) = bootstrap::Settings::from_args(&args.bootstrap)? {
            let bootstrap = Bootstrap::connect(settings).await?;
            let synced = bootstrap.sync().await?;
            let config = bootstrap_config(&bootstrap, &synced.material)?;
            tracing::info!(
                secret = %bootstrap.settings().secret_ref(),
                dns_name = %bootstrap.settings().dns_name(),
                not_after = %synced.material.not_after,
                created = synced.wrote.is_some(),
                "serving the bootstrap certificate"
            );
            return Ok((Self::Bootstrap(bootstrap, synced.material), config));
        }
        let (Some(cert), Some(key)) = (args.tls_cert.clone(), args.tls_key.clone()) else {
            return Err(ServeError::Config {
                message: "either --tls-cert and --tls-key or --bootstrap-secret is required".into(),
            });
        };
        // The baseline is read before the files, so a change in between is seen later, not lost.
        let watch = FileWatch::new(
            vec![cert.clone(), key.clone()],
            crate::reload::MAX_PEM_BYTES,
        );
        let config = tls::load(&cert, &key)?;
        Ok((Self::Files { watch, cert, key }, config))
    }
}

/// The TLS configuration for bootstrap material; errors name the Secret's keys.
fn bootstrap_config(
    bootstrap: &Bootstrap,
    material: &Material,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let secret = bootstrap.settings().secret_ref();
    tls::from_pem(
        material.cert_pem.as_bytes(),
        material.key_pem.as_bytes(),
        Path::new(&format!("Secret {secret} tls.crt")),
        Path::new(&format!("Secret {secret} tls.key")),
    )
}

/// Re-checks the bootstrap Secret and caBundle every `--bootstrap-check-interval`; serves a
/// renewed certificate (this replica's or another's) to new connections.
fn watch_bootstrap(
    state: AppState,
    config: RustlsConfig,
    bootstrap: Bootstrap,
    mut served: Material,
) {
    tokio::spawn(async move {
        let interval = bootstrap.settings().check_interval;
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let synced = match bootstrap.sync().await {
                Ok(s) => s,
                Err(error) => {
                    tracing::error!(%error, not_after = %served.not_after, "certificate bootstrap check failed; serving the current certificate and retrying");
                    continue;
                }
            };
            if synced.material.cert_pem == served.cert_pem {
                continue;
            }
            match bootstrap_config(&bootstrap, &synced.material) {
                Ok(server_config) => {
                    config.reload_from_config(server_config);
                    count_tls_reload(&state, "success");
                    tracing::info!(secret = %bootstrap.settings().secret_ref(), not_after = %synced.material.not_after, "TLS certificate rotated");
                    served = synced.material;
                }
                Err(error) => {
                    count_tls_reload(&state, "failure");
                    tracing::error!(%error, "bootstrap certificate refused; the previous certificate stays in use");
                }
            }
        }
    });
}

/// Most HTTP/2 streams (requests) open at once on one connection; the API server opens another
/// connection past it.
pub const HTTP2_MAX_CONCURRENT_STREAMS: u32 = 64;

/// Most response bytes buffered per HTTP/2 stream for a client that does not open its receive
/// window (hyper's default is ~400 KB).
pub const HTTP2_MAX_SEND_BUF_BYTES: usize = 64 * 1024;

/// Request bytes one HTTP/2 stream may send before pinhook reads them. A stream whose body waits
/// for `--max-inflight-body-bytes` is not read; with hyper's default (1 MiB, the whole
/// connection window) one such stream stalled every other request on its connection.
pub const HTTP2_STREAM_WINDOW_BYTES: u32 = 128 * 1024;

/// Request bytes all streams of one HTTP/2 connection may send before pinhook reads them: 16
/// waiting streams' worth, so it takes that many to stall a connection, and at most 2 MiB per
/// connection is buffered outside the body budget.
pub const HTTP2_CONNECTION_WINDOW_BYTES: u32 = 16 * HTTP2_STREAM_WINDOW_BYTES;

/// How often an HTTP/2 connection is pinged when nothing arrives on it.
pub const HTTP2_KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(30);

/// How long a ping may go unanswered before the HTTP/2 connection is closed.
pub const HTTP2_KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Connection limits of the webhook listener: on HTTP/1, each next request's headers must
/// arrive within `request_timeout` of the previous answer (so idle keep-alive connections and
/// slow headers are cut); on HTTP/2, pings find dead peers and streams and buffers are capped.
fn configure_connections(
    builder: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    request_timeout: Duration,
) {
    builder.http1().header_read_timeout(request_timeout);
    builder
        .http2()
        .max_concurrent_streams(HTTP2_MAX_CONCURRENT_STREAMS)
        .initial_stream_window_size(HTTP2_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW_BYTES)
        .max_send_buf_size(HTTP2_MAX_SEND_BUF_BYTES)
        .keep_alive_interval(HTTP2_KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(HTTP2_KEEP_ALIVE_TIMEOUT);
}

/// Resolves when SIGTERM or SIGINT arrives.
async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
}

/// Runs `pinhook serve` until SIGTERM, then drains in-flight requests.
pub async fn serve(args: ServeArgs) -> Result<(), ServeError> {
    let (policy_watch, policy) = match &args.policy {
        Some(path) => {
            // The baseline is read before the policy, so a change in between is seen later, not lost.
            let watch = FileWatch::new(vec![path.clone()], crate::reload::MAX_POLICY_BYTES);
            (Some(watch), Policy::load(path)?)
        }
        None => (None, Policy::default()),
    };
    let (certificate, server_config) = Certificate::prepare(&args).await?;
    let tls_config = RustlsConfig::from_config(server_config);
    let metrics = Arc::new(Metrics::new());
    let resolver = Resolver::new(
        policy.registries(),
        &args.registry.resolver_settings(),
        metrics.clone(),
    )
    .map_err(|message| ServeError::Config {
        message: format!("{}: {message}", policy.source()),
    })?;
    let registry_config = args.registry.keyring().map_err(|e| ServeError::Config {
        message: e.to_string(),
    })?;
    let secrets = match PullSecrets::connect(args.secret_cache_ttl).await {
        Ok(s) => {
            tracing::info!(
                "pull-secret lookup is on: credentials come from each pod's imagePullSecrets and service account"
            );
            Some(s)
        }
        Err(reason) => {
            tracing::warn!(%reason, "pull-secret lookup is off: no Kubernetes API is configured; using --registry-config and anonymous access");
            None
        }
    };
    let accounts = secrets.as_ref().map(|s| {
        crate::resolve::credential_provider::ServiceAccounts::new(s.client(), args.secret_cache_ttl)
    });
    let providers =
        args.registry
            .credential_providers(accounts)
            .map_err(|e| ServeError::Config {
                message: e.to_string(),
            })?;
    if let Some(p) = &providers {
        tracing::info!(providers = ?p.names(), "credential providers are on: their plugins are asked after the pod's pull secrets and before --registry-config");
        if p.wants_tokens() && secrets.is_none() {
            tracing::warn!(
                "a credential provider wants service-account tokens (tokenAttributes) and no Kubernetes API is configured: it will give no credentials"
            );
        }
    }
    let providers = providers.map(|p| Arc::new(p.with_metrics(metrics.clone())));
    let pinner = Pinner::new(Arc::new(resolver), secrets, registry_config)
        .with_credential_providers(providers);
    let limits = Limits {
        max_body_bytes: args.max_body_bytes,
        request_timeout: args.request_timeout,
        deadline_margin: args.deadline_margin,
        max_inflight_body_bytes: args.max_inflight_body_bytes,
    };
    if args.max_inflight_body_bytes < args.max_body_bytes {
        return Err(ServeError::Config {
            message: format!(
                "--max-inflight-body-bytes ({}) must be at least --max-body-bytes ({}), or a body of the largest size could never be read",
                args.max_inflight_body_bytes, args.max_body_bytes
            ),
        });
    }
    let state = AppState::new(policy, limits, Some(Arc::new(pinner)), metrics);

    let listen = |addr: SocketAddr| {
        let l = std::net::TcpListener::bind(addr)
            .map_err(|source| ServeError::Listen { addr, source })?;
        l.set_nonblocking(true)
            .map_err(|source| ServeError::Listen { addr, source })?;
        Ok::<_, ServeError>(l)
    };
    let webhook_listener = listen(args.listen)?;
    let ops_listener = listen(args.metrics_listen)?;
    let webhook_addr = webhook_listener
        .local_addr()
        .map_err(|source| ServeError::Listen {
            addr: args.listen,
            source,
        })?;
    let ops_addr = ops_listener
        .local_addr()
        .map_err(|source| ServeError::Listen {
            addr: args.metrics_listen,
            source,
        })?;

    if let (Some(watch), Some(path)) = (policy_watch, args.policy.clone()) {
        watch_policy(
            state.clone(),
            watch,
            path,
            args.reload_interval,
            args.registry.registry_timeout,
        );
    }
    match certificate {
        Certificate::Files { watch, cert, key } => watch_certificate(
            state.clone(),
            tls_config.clone(),
            watch,
            cert,
            key,
            args.reload_interval,
        ),
        Certificate::Bootstrap(bootstrap, served) => {
            watch_bootstrap(state.clone(), tls_config.clone(), bootstrap, served)
        }
    }

    let handle = axum_server::Handle::new();
    let mut server = axum_server::from_tcp_rustls(webhook_listener, tls_config)
        .map_err(|source| ServeError::Listen {
            addr: webhook_addr,
            source,
        })?
        // Answers go out as soon as they are written: with Nagle's algorithm on, a small last
        // segment waits for the ACK of the previous one, which a client may delay by 40 ms.
        .map(|tls| {
            IdleAcceptor::new(
                tls.acceptor(axum_server::accept::NoDelayAcceptor::new()),
                args.idle_timeout,
            )
            .with_max_connections(args.max_connections as usize, args.request_timeout)
        })
        .handle(handle.clone())
        .first_request_timeout(args.request_timeout);
    configure_connections(server.http_builder(), args.request_timeout);
    let server = server.serve(router(state.clone()).into_make_service());
    let webhook = tokio::spawn(server);

    let ops_listener =
        tokio::net::TcpListener::from_std(ops_listener).map_err(|source| ServeError::Listen {
            addr: ops_addr,
            source,
        })?;
    let (ops_stop, ops_stopped) = tokio::sync::oneshot::channel::<()>();
    let ops = tokio::spawn(
        axum::serve(ops_listener, ops_router(state.clone()))
            .with_graceful_shutdown(async {
                let _ = ops_stopped.await;
            })
            .into_future(),
    );

    state.set_ready(true);
    tracing::info!(
        listen = %webhook_addr,
        metrics_listen = %ops_addr,
        policy = %state.policy().source(),
        "pinhook serving"
    );

    shutdown_signal().await;
    tracing::info!(
        grace_seconds = args.shutdown_grace.as_secs_f64(),
        in_flight = handle.connection_count(),
        "shutting down: no new connections, draining in-flight requests"
    );
    state.set_ready(false);
    handle.graceful_shutdown(Some(args.shutdown_grace));
    match webhook.await {
        Ok(Err(source)) => {
            return Err(ServeError::Listen {
                addr: webhook_addr,
                source,
            });
        }
        Err(e) => tracing::error!(error = %e, "webhook server task failed"),
        Ok(Ok(())) => {}
    }
    let _ = ops_stop.send(());
    let _ = ops.await;
    tracing::info!("pinhook stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadline_comes_from_query() {
        assert_eq!(
            request_deadline(Some("timeout=5s"), Duration::from_secs(10)),
            Duration::from_secs(5)
        );
        assert_eq!(
            request_deadline(Some("a=b&timeout=3s"), Duration::from_secs(10)),
            Duration::from_secs(3)
        );
        assert_eq!(
            request_deadline(None, Duration::from_secs(10)),
            Duration::from_secs(10)
        );
        assert_eq!(
            request_deadline(Some("timeout=bogus"), Duration::from_secs(10)),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn deadline_is_at_most_the_api_servers_maximum() {
        for q in ["timeout=31s", "timeout=1h", "timeout=5000000000000000h"] {
            assert_eq!(
                request_deadline(Some(q), Duration::from_secs(10)),
                MAX_REQUEST_TIMEOUT,
                "{q}"
            );
        }
        assert_eq!(
            request_deadline(Some("timeout=30s"), Duration::from_secs(10)),
            Duration::from_secs(30)
        );
        assert_eq!(
            request_deadline(
                Some("timeout=99999999999999999999999999999999999999h"),
                Duration::from_secs(10)
            ),
            Duration::from_secs(10)
        );
    }

    #[test]
    fn not_json_and_not_a_review_are_told_apart() {
        let e = parse_review(b"{not json").unwrap_err();
        assert!(
            e.message.starts_with("body is not valid JSON"),
            "{}",
            e.message
        );
        let e = parse_review(
            br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":1}}"#,
        )
        .unwrap_err();
        assert!(
            e.message.starts_with("body is not an AdmissionReview"),
            "{}",
            e.message
        );
        let e =
            parse_review(br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#)
                .unwrap_err();
        assert!(
            e.message
                .contains("unsupported review admission.k8s.io/v1beta1"),
            "{}",
            e.message
        );
        let e = parse_review(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#)
            .unwrap_err();
        assert_eq!(e.message, "AdmissionReview has no request");
    }

    fn pod_request(image: &str) -> AdmissionRequest<DynamicObject> {
        use crate::admission::fixtures::{pod, request};
        request(
            ("", "Pod"),
            "CREATE",
            pod(&[("web", image)]),
            serde_json::Value::Null,
        )
    }

    #[test]
    fn review_json_is_kubes_document_with_a_base64_patch() {
        use base64::Engine;
        let req = pod_request("nginx:latest");
        let policy = Policy::from_yaml("mode: warn", "t").unwrap();
        let decision = admission::review(&policy, &req, Endpoint::Mutate);
        let results = [crate::pin::PinResult::Pinned {
            digest: format!("sha256:{}", "0".repeat(64)),
        }];
        let answer = Answer::new(&decision, &results);
        let patch = answer.patch.clone().unwrap();
        let ours: serde_json::Value =
            serde_json::from_slice(&review_json(&req.uid, &answer).unwrap()).unwrap();
        // What kube's own serialization gives for the same answer, the patch bytes as base64.
        let mut kubes = kube::core::admission::AdmissionResponse::from(&req)
            .with_patch(patch.clone())
            .unwrap();
        kubes.types.api_version = META_API_VERSION_V1.to_owned();
        kubes.types.kind = META_KIND.to_owned();
        kubes.warnings = Some(answer.warnings.clone());
        kubes.audit_annotations = answer.audit_annotations.clone();
        let bytes = kubes.patch.take().unwrap();
        let mut expected = serde_json::to_value(kubes.into_review()).unwrap();
        expected["response"]["patch"] =
            serde_json::json!(base64::engine::general_purpose::STANDARD.encode(&bytes));
        assert_eq!(ours, expected);
        assert_eq!(ours["response"]["patchType"], "JSONPatch");
        assert_eq!(ours["response"]["warnings"].as_array().unwrap().len(), 2);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(ours["response"]["patch"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<json_patch::Patch>(&decoded).unwrap(),
            patch
        );
    }

    #[test]
    fn review_json_without_patch_has_no_patch_type() {
        let req = pod_request("nginx:1.27.1");
        let decision = admission::review(&Policy::default(), &req, Endpoint::Validate);
        let v: serde_json::Value =
            serde_json::from_slice(&review_json(&req.uid, &Answer::new(&decision, &[])).unwrap())
                .unwrap();
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
        assert_eq!(v["response"]["uid"], "u-1");
        assert_eq!(v["response"]["allowed"], true);
        assert!(v["response"].get("patch").is_none() && v["response"].get("patchType").is_none());
        assert!(v["response"].get("warnings").is_none());
    }
}
