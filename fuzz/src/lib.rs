//! What the fuzz targets share: pinhook's router in-process over a resolver that answers every
//! image at once (the digest of its own name), and the checks every answer must pass.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::Engine;
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use pinhook::metrics::Metrics;
use pinhook::mutate::Pinner;
use pinhook::policy::Policy;
use pinhook::reference::ImageRef;
use pinhook::resolve::auth::Keyring;
use pinhook::resolve::digest::Digest;
use pinhook::resolve::{Resolve, ResolveError, Resolved, Scope};
use pinhook::server::{AppState, Limits, router};
use serde_json::Value;
use tower::ServiceExt;

/// Answers every image with the sha256 of its normalized name, at once, without I/O.
#[derive(Debug)]
pub struct InstantResolver;

impl Resolve for InstantResolver {
    fn resolve<'a>(
        &'a self,
        image: &'a ImageRef,
        _scope: &'a Scope,
        _deadline: Instant,
        _fresh: bool,
    ) -> BoxFuture<'a, Result<Resolved, ResolveError>> {
        let digest = Digest::of(image.normalized().as_bytes()).to_string();
        Box::pin(async move {
            Ok(Resolved {
                digest,
                stale_for: None,
            })
        })
    }
}

/// The request-body limit the harness runs with (pinhook's default).
pub const MAX_BODY_BYTES: usize = 3_670_016;

static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("a current-thread runtime")
});

static STATE: LazyLock<AppState> = LazyLock::new(|| {
    let pinner = Pinner::new(Arc::new(InstantResolver), None, Keyring::default());
    let limits = Limits {
        max_body_bytes: MAX_BODY_BYTES,
        request_timeout: Duration::from_secs(10),
        deadline_margin: Duration::from_secs(1),
        max_inflight_body_bytes: 2 * MAX_BODY_BYTES,
    };
    let state = AppState::new(
        Policy::default(),
        limits,
        Some(Arc::new(pinner)),
        Arc::new(Metrics::new()),
    );
    state.set_ready(true);
    state
});

/// Sends one request body to `path` (e.g. `/mutate?timeout=10s`) through pinhook's router.
pub fn send(path: &str, body: Vec<u8>) -> (StatusCode, Vec<u8>) {
    RUNTIME.block_on(async {
        let request = Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(body))
            .expect("a request");
        let resp = router(STATE.clone())
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .expect("a response body")
            .to_bytes();
        (status, bytes.to_vec())
    })
}

/// Checks what any answer must be: a known status; on 200, an AdmissionReview whose response
/// carries a uid, an `allowed` flag and, when present, a JSON patch that applies to `object`.
/// Returns the patched object when there was a patch and an object to apply it to.
pub fn check_answer(status: StatusCode, body: &[u8], object: Option<&Value>) -> Option<Value> {
    assert!(
        matches!(status.as_u16(), 200 | 400 | 413 | 415 | 422 | 503),
        "unexpected status {status}: {}",
        String::from_utf8_lossy(body)
    );
    if status != StatusCode::OK {
        assert!(!body.is_empty(), "an error status without a message");
        return None;
    }
    let review: Value = serde_json::from_slice(body).expect("a 200 answer is JSON");
    let response = &review["response"];
    assert!(response["uid"].is_string(), "no uid: {review}");
    assert!(response["allowed"].is_boolean(), "no allowed: {review}");
    let patch = response.get("patch")?.as_str()?;
    let patch = base64::engine::general_purpose::STANDARD
        .decode(patch)
        .expect("the patch is standard base64");
    let patch: json_patch::Patch =
        serde_json::from_slice(&patch).expect("the patch is a JSON Patch");
    let mut patched = object?.clone();
    json_patch::patch(&mut patched, &patch)
        .expect("the patch applies to the object it was made for");
    Some(patched)
}
