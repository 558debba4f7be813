//! pinhook's HTTP stack in this process: the real router and answer path, driven with
//! `tower::ServiceExt::oneshot` (no socket, no TLS), and a fake resolver behind the
//! [`Resolve`] seam, so the admission rules are tested in milliseconds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use futures_util::future::BoxFuture;
use http_body_util::BodyExt;
use pinhook::metrics::Metrics;
use pinhook::mutate::Pinner;
use pinhook::policy::Policy;
use pinhook::reference::ImageRef;
use pinhook::resolve::auth::Keyring;
use pinhook::resolve::{Resolve, ResolveError, Resolved, Scope};
use pinhook::server::{AppState, Limits, ops_router, router};
use serde_json::{Value, json};
use tower::ServiceExt;

/// What the fake resolver answers for `registry/repository:tag`.
#[derive(Debug, Clone)]
pub enum Answer {
    /// This digest.
    Digest(String),
    /// This digest, served stale (the registry is down) after `Duration`.
    Stale(String, Duration),
    /// This error.
    Error(ResolveError),
    /// Never answers.
    Hang,
}

/// One call the fake resolver received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// `registry/repository:tag`.
    pub image: String,
    /// Asked to bypass the cache (`pinhook.dev/refresh`).
    pub fresh: bool,
    /// Whether the scope carried `allowedRegistries`.
    pub allowed: bool,
}

/// A resolver answering from a table, recording every call.
#[derive(Debug, Default)]
pub struct FakeResolver {
    answers: Mutex<HashMap<String, Answer>>,
    calls: Mutex<Vec<Call>>,
}

impl FakeResolver {
    /// Answers `answer` for `image` (`registry/repository:tag`, normalized).
    pub fn set(&self, image: &str, answer: Answer) {
        self.answers
            .lock()
            .unwrap()
            .insert(image.to_owned(), answer);
    }

    /// The calls so far.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

impl Resolve for FakeResolver {
    fn resolve<'a>(
        &'a self,
        image: &'a ImageRef,
        scope: &'a Scope,
        _deadline: Instant,
        fresh: bool,
    ) -> BoxFuture<'a, Result<Resolved, ResolveError>> {
        let key = format!(
            "{}/{}:{}",
            image.registry(),
            image.repository(),
            image.tag().unwrap_or("latest")
        );
        self.calls.lock().unwrap().push(Call {
            image: key.clone(),
            fresh,
            allowed: scope.allowed.is_some(),
        });
        let answer = self.answers.lock().unwrap().get(&key).cloned();
        Box::pin(async move {
            match answer {
                Some(Answer::Digest(digest)) => Ok(Resolved {
                    digest,
                    stale_for: None,
                }),
                Some(Answer::Stale(digest, age)) => Ok(Resolved {
                    digest,
                    stale_for: Some(age),
                }),
                Some(Answer::Error(e)) => Err(e),
                Some(Answer::Hang) => std::future::pending().await,
                None => Err(ResolveError::NotFound {
                    registry: image.registry().to_owned(),
                    repository: image.repository().to_owned(),
                    tag: image.tag().unwrap_or("latest").to_owned(),
                }),
            }
        })
    }
}

/// pinhook's routers over one state, with a fake resolver.
pub struct InProcess {
    /// The shared state (policy, metrics).
    pub state: AppState,
    /// The fake resolver behind `/mutate`.
    pub resolver: Arc<FakeResolver>,
}

impl InProcess {
    /// Serves `policy_yaml` (empty: the built-in policy) with default limits.
    pub fn new(policy_yaml: &str) -> Self {
        let policy = if policy_yaml.is_empty() {
            Policy::default()
        } else {
            Policy::from_yaml(policy_yaml, "policy.yaml").expect("policy")
        };
        let resolver = Arc::new(FakeResolver::default());
        let pinner = Pinner::new(resolver.clone(), None, Keyring::default());
        let limits = Limits {
            max_body_bytes: 3 * 1024 * 1024,
            request_timeout: Duration::from_secs(10),
            deadline_margin: Duration::from_secs(1),
            max_inflight_body_bytes: 12 * 1024 * 1024,
        };
        let state = AppState::new(
            policy,
            limits,
            Some(Arc::new(pinner)),
            Arc::new(Metrics::new()),
        );
        state.set_ready(true);
        Self { state, resolver }
    }

    /// Sends `request` through the webhook router; the status and the body.
    pub async fn send(&self, request: Request<Body>) -> (StatusCode, Vec<u8>) {
        let resp = router(self.state.clone())
            .oneshot(request)
            .await
            .expect("router is infallible");
        let status = resp.status();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (status, body.to_vec())
    }

    /// POSTs `review` to `path` (`/validate`, `/mutate?timeout=…`); the `response` object.
    pub async fn review(&self, path: &str, review: &Value) -> Value {
        let request = Request::post(path)
            .header("content-type", "application/json")
            .body(Body::from(review.to_string()))
            .unwrap();
        let (status, body) = self.send(request).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        let v: Value = serde_json::from_slice(&body).expect("JSON answer");
        v["response"].clone()
    }

    /// The OpenMetrics text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let resp = ops_router(self.state.clone())
            .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(body.to_vec()).unwrap()
    }
}

/// An AdmissionReview of `operation` on `object` (a `group`/`kind`) in namespace `shop`.
pub fn review(group: &str, kind: &str, operation: &str, object: Value, old: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": "uid-1", "kind": {"group": group, "version": "v1", "kind": kind},
            "resource": {"group": group, "version": "v1", "resource": "x"},
            "namespace": "shop", "operation": operation,
            "userInfo": {"username": "alice"},
            "object": object, "oldObject": old
        }
    })
}

/// A Pod named `p` with one container per `(name, image)`.
pub fn pod(images: &[(&str, &str)]) -> Value {
    let cs: Vec<Value> = images
        .iter()
        .map(|(n, i)| json!({"name": n, "image": i}))
        .collect();
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "namespace": "shop"}, "spec": {"containers": cs}})
}

/// The JSON Patch of an answer, decoded.
pub fn patch(response: &Value) -> Option<Vec<Value>> {
    use base64::Engine;
    let b64 = response.get("patch")?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("base64 patch");
    serde_json::from_slice(&bytes).expect("JSON patch")
}
