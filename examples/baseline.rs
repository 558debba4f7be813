//! The physical limit pinhook's warm path is measured against (see BENCHMARKS.md): the same
//! stack as `pinhook serve` — tokio's multi-threaded runtime, axum, axum-server with rustls
//! (ring), HTTP/2 and HTTP/1.1 offered by ALPN, the same certificate loader — doing the least
//! an admission webhook can do: read the AdmissionReview body, parse it with kube's types
//! exactly as pinhook does, and answer `allowed: true` for the request's uid, serialized as
//! pinhook serializes its answers (`pinhook::server::review_json`).
//!
//! ```text
//! baseline --listen 127.0.0.1:0 --ops-listen 127.0.0.1:0 --tls-cert tls.crt --tls-key tls.key
//! ```
//!
//! Every path of the TLS listener (`/validate`, `/mutate`, …) answers the same way; the plain
//! ops listener answers `GET /readyz` (for the start-up figure). Once both listeners are bound
//! it prints one JSON line: `{"message":"baseline serving","listen":…,"ops_listen":…}`.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use axum::Router;
use axum::body::Bytes;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum_server::tls_rustls::RustlsConfig;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionReview};

/// Parses the review and allows it; a body that is not a review gets 400, as in pinhook.
async fn review(body: Bytes) -> Response {
    let review: AdmissionReview<DynamicObject> = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    let request: AdmissionRequest<DynamicObject> = match review.try_into() {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, e.to_string()).into_response(),
    };
    // The cheapest serialization of the answer there is in the repository: pinhook's own.
    match pinhook::server::review_json(&request.uid, &pinhook::answer::Answer::allow()) {
        Ok(body) => (
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            body,
        )
            .into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

struct Args {
    listen: SocketAddr,
    ops_listen: SocketAddr,
    cert: PathBuf,
    key: PathBuf,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut listen: SocketAddr = "127.0.0.1:0".parse()?;
    let mut ops_listen: SocketAddr = "127.0.0.1:0".parse()?;
    let (mut cert, mut key) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--listen" => listen = value.parse().context("--listen")?,
            "--ops-listen" => ops_listen = value.parse().context("--ops-listen")?,
            "--tls-cert" => cert = Some(PathBuf::from(value)),
            "--tls-key" => key = Some(PathBuf::from(value)),
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(Args {
        listen,
        ops_listen,
        cert: cert.context("--tls-cert is required")?,
        key: key.context("--tls-key is required")?,
    })
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let tls = RustlsConfig::from_config(pinhook::tls::load(&args.cert, &args.key)?);
        let webhook = std::net::TcpListener::bind(args.listen)
            .with_context(|| format!("cannot listen on {}", args.listen))?;
        webhook.set_nonblocking(true)?;
        let ops = tokio::net::TcpListener::bind(args.ops_listen)
            .await
            .with_context(|| format!("cannot listen on {}", args.ops_listen))?;
        let (listen, ops_listen) = (webhook.local_addr()?, ops.local_addr()?);
        let app = Router::new().fallback(post(review));
        // TCP_NODELAY, as pinhook sets it.
        let server = axum_server::from_tcp_rustls(webhook, tls)?
            .map(|tls| tls.acceptor(axum_server::accept::NoDelayAcceptor::new()))
            .serve(app.into_make_service());
        let ops_app = Router::new().route("/readyz", get(|| async { "ready\n" }));
        let ops_server = axum::serve(ops, ops_app).into_future();
        println!(
            "{}",
            serde_json::json!({
                "message": "baseline serving",
                "listen": listen.to_string(),
                "ops_listen": ops_listen.to_string(),
            })
        );
        tokio::select! {
            r = server => r.context("webhook listener failed"),
            r = ops_server => r.context("ops listener failed"),
        }
    })
}
