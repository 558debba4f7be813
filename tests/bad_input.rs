//! Bad input never panics and never hangs: each kind gets its status and a one-line JSON error.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{BOTH, Http, Options, Pinhook, fixture};
use serde_json::{Value, json};

async fn post(server: &Pinhook, http: Http, body: Vec<u8>) -> (u16, String) {
    let resp = server
        .client(http)
        .post(server.url("/validate"))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

fn error_of(status: u16, body: &str) -> String {
    assert!(
        !body.trim_end().contains('\n'),
        "error body must be one line: {body:?}"
    );
    let v: Value = serde_json::from_str(body)
        .unwrap_or_else(|e| panic!("{status}: error body is not JSON ({e}): {body:?}"));
    v["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error field: {body}"))
        .to_owned()
}

#[tokio::test]
async fn malformed_json_gets_400_naming_the_position() {
    let server = Pinhook::start();
    for http in BOTH {
        let (status, body) = post(
            &server,
            http,
            b"{\"apiVersion\": \"admission.k8s.io/v1\",".to_vec(),
        )
        .await;
        assert_eq!(status, 400);
        assert_eq!(
            error_of(status, &body),
            "body is not valid JSON: EOF while parsing a value at line 1 column 37"
        );
        let (status, body) = post(&server, http, Vec::new()).await;
        assert_eq!(status, 400);
        assert!(
            error_of(status, &body).starts_with("body is not valid JSON: EOF while parsing"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn json_that_is_not_an_admission_review_gets_400() {
    let server = Pinhook::start();
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({"hello": "world"}),
            "body is not an AdmissionReview: missing field `apiVersion`",
        ),
        (
            json!([1, 2, 3]),
            "body is not an AdmissionReview: invalid type: sequence",
        ),
        (
            json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}),
            "AdmissionReview has no request",
        ),
        (
            {
                let mut r = fixture("pod_mutable_latest_tag");
                r["apiVersion"] = json!("admission.k8s.io/v1beta1");
                r
            },
            "unsupported review admission.k8s.io/v1beta1/AdmissionReview; pinhook speaks admission.k8s.io/v1/AdmissionReview",
        ),
        (
            json!({"apiVersion": "v1", "kind": "Pod", "metadata": {}}),
            "unsupported review v1/Pod",
        ),
    ];
    for (body, expected) in cases {
        let (status, text) = post(&server, Http::V2, serde_json::to_vec(&body).unwrap()).await;
        assert_eq!(status, 400, "{body}: {text}");
        let err = error_of(status, &text);
        assert!(
            err.starts_with(expected),
            "{body}: expected {expected:?}, got {err:?}"
        );
    }
}

#[tokio::test]
async fn request_with_wrong_field_types_gets_400_naming_the_field() {
    let server = Pinhook::start();
    let mut review = fixture("pod_mutable_latest_tag");
    review["request"]["object"] = json!("not an object");
    let (status, text) = post(&server, Http::V2, serde_json::to_vec(&review).unwrap()).await;
    assert_eq!(status, 400);
    assert!(
        error_of(status, &text)
            .starts_with("body is not an AdmissionReview: invalid type: string \"not an object\""),
        "{text}"
    );

    let mut review = fixture("pod_mutable_latest_tag");
    review["request"]["operation"] = json!("EXPLODE");
    let (status, text) = post(&server, Http::V2, serde_json::to_vec(&review).unwrap()).await;
    assert_eq!(status, 400);
    assert!(
        error_of(status, &text).contains("unknown variant `EXPLODE`"),
        "{text}"
    );
}

#[tokio::test]
async fn deeply_nested_json_is_refused_not_a_stack_overflow() {
    let server = Pinhook::start();
    let mut review = serde_json::to_string(&fixture("pod_mutable_latest_tag")).unwrap();
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    // Inside the object, which is parsed into a value (unknown fields elsewhere are skipped).
    review = review.replacen("\"spec\":{", &format!("\"spec\":{{\"extra\":{deep},"), 1);
    assert!(review.contains("\"extra\":[[["));
    let (status, text) = post(&server, Http::V2, review.into_bytes()).await;
    assert_eq!(status, 400, "{text}");
    assert!(
        error_of(status, &text).contains("recursion limit exceeded"),
        "{text}"
    );
    // The server is still alive.
    let (status, _, _) = server
        .validate(Http::V2, &fixture("pod_version_tags"))
        .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn body_over_the_limit_gets_413() {
    let server = Pinhook::start_with(Options {
        args: vec!["--max-body-bytes".into(), "4096".into()],
        ..Default::default()
    });
    for http in BOTH {
        let (status, text) = post(&server, http, vec![b' '; 5000]).await;
        assert_eq!(status, 413);
        assert_eq!(
            error_of(status, &text),
            "request body of 5000 bytes exceeds the limit of 4096 bytes (--max-body-bytes)"
        );
    }
    let (status, _, _) = server
        .validate(Http::V2, &fixture("pod_version_tags"))
        .await;
    assert_eq!(status, 200, "a body under the limit still works");
}

#[tokio::test]
async fn chunked_body_without_length_over_the_limit_gets_413() {
    let server = Pinhook::start_with(Options {
        args: vec!["--max-body-bytes".into(), "4096".into()],
        ..Default::default()
    });
    let file = server.dir.path().join("big.json");
    std::fs::write(&file, vec![b' '; 6000]).unwrap();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--http1.1",
            "-H",
            "Transfer-Encoding: chunked",
            "-H",
            "Content-Type: application/json",
            "--cacert",
        ])
        .arg(server.dir.path().join("ca.crt"))
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .args(["-w", "\n%{http_code}", &server.url("/validate")])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let (body, code) = stdout.rsplit_once('\n').unwrap();
    assert_eq!(
        code,
        "413",
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        error_of(413, body),
        "request body exceeds the limit of 4096 bytes (--max-body-bytes)"
    );
}

#[tokio::test]
async fn default_limit_is_3_5_mib_and_large_objects_below_it_work() {
    let server = Pinhook::start();
    // A 3 MiB object (the API server's own ceiling) is judged normally.
    let mut review = fixture("pod_mutable_latest_tag");
    review["request"]["object"]["metadata"]["annotations"] =
        json!({"blob": "x".repeat(3 * 1024 * 1024)});
    let (status, _, body) = server.validate(Http::V2, &review).await;
    assert_eq!(status, 200);
    assert_eq!(body["response"]["allowed"], false);
    // Just over 3.5 MiB is refused.
    let (status, text) = post(
        &server,
        Http::V2,
        vec![b' '; 3 * 1024 * 1024 + 512 * 1024 + 1],
    )
    .await;
    assert_eq!(status, 413);
    assert!(
        error_of(status, &text).contains("limit of 3670016 bytes"),
        "{text}"
    );
}

#[tokio::test]
async fn a_413_over_http2_is_read_as_an_answer_not_a_stream_error() {
    let server = Pinhook::start_with(Options {
        args: vec!["--max-body-bytes".into(), "4096".into()],
        ..Default::default()
    });
    // 4 MiB: far more than the stream's flow-control window, so the client is still sending
    // when the answer comes, and the stream must then be closed with NO_ERROR, not CANCEL.
    let big = vec![b' '; 4 * 1024 * 1024];
    let (status, text) = post(&server, Http::V2, big.clone()).await;
    assert_eq!(status, 413);
    assert_eq!(
        error_of(status, &text),
        "request body of 4194304 bytes exceeds the limit of 4096 bytes (--max-body-bytes)"
    );
    // curl (7.88 here) reported such a reset as error 92 with no status.
    let file = server.dir.path().join("big.json");
    std::fs::write(&file, &big).unwrap();
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "-H",
            "Content-Type: application/json",
            "--cacert",
        ])
        .arg(server.dir.path().join("ca.crt"))
        .arg("--data-binary")
        .arg(format!("@{}", file.display()))
        .args([
            "-w",
            "\n%{http_code} %{http_version}",
            &server.url("/validate"),
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "curl failed: {:?} {stdout} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, code) = stdout.rsplit_once('\n').unwrap();
    assert_eq!(code, "413 2", "{stdout}");
    assert!(
        error_of(413, body).contains("exceeds the limit of 4096 bytes"),
        "{body}"
    );
}

#[tokio::test]
async fn bodies_in_flight_are_bounded_and_the_excess_gets_503_within_the_deadline() {
    let server = Pinhook::start_with(Options {
        args: vec![
            "--max-body-bytes".into(),
            "100000".into(),
            "--max-inflight-body-bytes".into(),
            "150000".into(),
        ],
        ..Default::default()
    });
    // A slow client holds 100,000 bytes of the budget while its body trickles in.
    let mut slow = server.raw_tls(Duration::from_secs(10));
    slow.write_all(b"POST /validate?timeout=20s HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100000\r\n\r\n{")
        .unwrap();
    slow.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // 60,000 more do not fit: 503 once the request's own deadline has passed.
    let start = Instant::now();
    let resp = server
        .client(Http::V2)
        .post(server.url("/validate?timeout=1s"))
        .body(vec![b' '; 60_000])
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    assert_eq!(status, 503, "{text}");
    assert_eq!(
        error_of(status, &text),
        "request bodies in flight fill the budget of 150000 bytes (--max-inflight-body-bytes) and 60000 bytes did not become free within 1s; retry"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
    // An ordinary review still fits beside the slow one.
    let (status, _, _) = server
        .validate(Http::V2, &fixture("pod_version_tags"))
        .await;
    assert_eq!(status, 200);
    // Once the slow client goes, its bytes are free again.
    drop(slow);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, text) = post(&server, Http::V2, vec![b' '; 60_000]).await;
    assert_eq!(status, 400, "{text}");
}

/// An HTTP/2 connection whose streams never open their receive window: answers cannot be sent.
async fn unread_http2(server: &Pinhook) -> hyper::client::conn::http2::SendRequest<String> {
    use rustls::pki_types::pem::PemObject;
    common::init_crypto();
    let mut roots = rustls::RootCertStore::empty();
    let ca = rustls::pki_types::CertificateDer::from_pem_slice(server.ca_pem.as_bytes()).unwrap();
    roots.add(ca).unwrap();
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    let (send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .initial_stream_window_size(1)
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    send
}

#[tokio::test]
async fn an_answer_the_client_never_reads_keeps_its_bytes_counted() {
    use common::registry::{Registry, TestImage};
    let registry = Registry::plain();
    registry.push("big/app", "1.0.0", &TestImage::single("unread-answer"));
    let host = registry.host.clone();
    let server = Pinhook::start_with(Options {
        policy: Some(format!(
            "registries:\n  - host: {host}\n    insecure: true\n"
        )),
        args: vec![
            "--max-body-bytes".into(),
            "100000".into(),
            "--max-inflight-body-bytes".into(),
            "250000".into(),
        ],
        ..Default::default()
    });
    // 700 containers of one image: a ~50 KB review whose answer, a patch pinning each, is
    // ~200 KB, more than the connection buffers for a stream (64 KiB).
    let mut review = fixture("pod_version_tags");
    let containers: Vec<Value> = (0..700)
        .map(|i| json!({"name": format!("c{i}"), "image": format!("{host}/big/app:1.0.0")}))
        .collect();
    review["request"]["object"]["spec"]["containers"] = json!(containers);
    review["request"]["object"]["spec"]["initContainers"] = json!([]);
    let body = serde_json::to_string(&review).unwrap();
    assert!(body.len() < 100_000, "{}", body.len());
    let mut unread = unread_http2(&server).await;
    let request = hyper::Request::post(server.url("/mutate?timeout=10s"))
        .header("content-type", "application/json")
        .body(body)
        .unwrap();
    let head = tokio::time::timeout(Duration::from_secs(10), unread.send_request(request))
        .await
        .expect("the answer's headers arrive")
        .unwrap();
    assert_eq!(head.status(), 200);
    let length: usize = head.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(length > 150_000, "the patch is {length} bytes");
    // The unsent part of the answer stays counted: 100,000 more bytes do not fit.
    let started = Instant::now();
    let (status, text) = post_with_timeout(&server, vec![b' '; 99_000], "1s").await;
    assert_eq!(status, 503, "{text}");
    assert!(text.contains("did not become free within 1s"), "{text}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // Once that connection goes, the bytes are free again.
    drop(head);
    drop(unread);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, text) = post_with_timeout(&server, vec![b' '; 99_000], "1s").await;
    assert_eq!(status, 400, "{text}");
}

async fn post_with_timeout(server: &Pinhook, body: Vec<u8>, timeout: &str) -> (u16, String) {
    let resp = server
        .client(Http::V2)
        .post(server.url(&format!("/validate?timeout={timeout}")))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

#[tokio::test]
async fn connections_past_the_cap_wait_then_are_closed_and_the_cap_frees_with_them() {
    let server = Pinhook::start_with(Options {
        args: vec![
            "--max-connections".into(),
            "1".into(),
            "--request-timeout".into(),
            "1s".into(),
        ],
        ..Default::default()
    });
    // One connection holds the only place: its body trickles.
    let mut slow = server.raw_tls(Duration::from_secs(10));
    slow.write_all(
        b"POST /validate?timeout=20s HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n{",
    )
    .unwrap();
    slow.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let refused = server
        .client(Http::V2)
        .post(server.url("/validate"))
        .body("{}")
        .send()
        .await;
    assert!(
        refused.is_err(),
        "a second connection was served: {refused:?}"
    );
    assert!(
        (Duration::from_millis(900)..Duration::from_secs(5)).contains(&started.elapsed()),
        "closed after {:?}, not after waiting --request-timeout",
        started.elapsed()
    );
    drop(slow);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (status, _) = post(&server, Http::V2, b"{}".to_vec()).await;
    assert_eq!(status, 400, "served once the first connection closed");
}

#[tokio::test]
async fn a_stream_waiting_for_the_budget_does_not_stall_its_connection() {
    let server = Pinhook::start_with(Options {
        args: vec![
            "--max-body-bytes".into(),
            "2000000".into(),
            "--max-inflight-body-bytes".into(),
            "2000000".into(),
        ],
        ..Default::default()
    });
    // Another client holds 1,200,000 bytes of the budget while its body trickles in.
    let mut slow = server.raw_tls(Duration::from_secs(20));
    slow.write_all(b"POST /validate?timeout=20s HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1200000\r\n\r\n{")
        .unwrap();
    slow.flush().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // On one HTTP/2 connection: a 1,900,000-byte review (more than hyper's default 1 MiB connection window) waits for the budget, its body unread...
    let client = server.client(Http::V2);
    let big = tokio::spawn({
        let (client, url) = (client.clone(), server.url("/validate?timeout=8s"));
        async move {
            client
                .post(url)
                .header("content-type", "application/json")
                .body(vec![b' '; 1_900_000])
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // ...and an ordinary review on the same connection, which fits, is answered at once: the
    // waiting stream may not hold the connection's whole receive window.
    let started = Instant::now();
    let resp = tokio::time::timeout(
        Duration::from_secs(4),
        client
            .post(server.url("/validate?timeout=8s"))
            .json(&fixture("pod_version_tags"))
            .send(),
    )
    .await
    .expect("the small review was stalled behind the waiting one")
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(slow);
    assert!(matches!(big.await.unwrap(), Ok(400 | 503)));
}

#[test]
fn an_inflight_budget_below_the_body_limit_is_refused_at_start() {
    let dir = tempfile::tempdir().unwrap();
    common::write_certs(dir.path());
    let out = common::serve_command()
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .args([
            "--max-body-bytes",
            "5000",
            "--max-inflight-body-bytes",
            "4000",
        ])
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("--max-inflight-body-bytes (4000) must be at least --max-body-bytes (5000)"),
        "{stderr}"
    );
}

/// Reads from `tls` until the server closes the connection; how long that took, or `None` if it
/// stayed open for `limit`.
fn wait_for_close(
    tls: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    limit: Duration,
    mut each: impl FnMut(&mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>),
) -> Option<Vec<u8>> {
    tls.sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while start.elapsed() < limit {
        match tls.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                each(tls)
            }
            Err(_) => return Some(got),
        }
    }
    None
}

#[tokio::test]
async fn idle_keep_alive_connection_is_closed_after_the_request_timeout() {
    let server = Pinhook::start_with(Options {
        args: vec!["--request-timeout".into(), "1s".into()],
        ..Default::default()
    });
    let mut tls = server.raw_tls(Duration::from_secs(10));
    tls.write_all(b"POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}")
        .unwrap();
    tls.flush().unwrap();
    let start = Instant::now();
    let got = wait_for_close(&mut tls, Duration::from_secs(6), |_| {})
        .expect("the idle keep-alive connection stayed open");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert!(
        !got.to_ascii_lowercase().contains("connection: close"),
        "the answer itself kept the connection: {got}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn headers_dribbled_after_the_first_request_are_cut() {
    let server = Pinhook::start_with(Options {
        args: vec!["--request-timeout".into(), "1s".into()],
        ..Default::default()
    });
    let mut tls = server.raw_tls(Duration::from_secs(10));
    tls.write_all(b"POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}POST /validate HTTP/1.1\r\nHost: localhost\r\n")
        .unwrap();
    tls.flush().unwrap();
    let start = Instant::now();
    // One more header line every 200 ms, never the blank line that ends them.
    let got = wait_for_close(&mut tls, Duration::from_secs(6), |tls| {
        let _ = tls.write_all(b"X-Slow: 1\r\n");
        let _ = tls.flush();
    })
    .expect("a connection dribbling headers stayed open");
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 400"), "{got}");
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn body_that_never_arrives_gets_408_before_the_deadline() {
    let server = Pinhook::start_with(Options {
        args: vec!["--request-timeout".into(), "1s".into()],
        ..Default::default()
    });
    let mut tls = server.raw_tls(Duration::from_secs(10));
    let start = Instant::now();
    tls.write_all(b"POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"apiVersion\":")
        .unwrap();
    tls.flush().unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 408"), "{response}");
    assert!(
        response.contains(r#"{"error":"request body not received within 1s"}"#),
        "{response}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn api_server_timeout_parameter_bounds_the_wait() {
    let server = Pinhook::start_with(Options {
        args: vec!["--request-timeout".into(), "30s".into()],
        ..Default::default()
    });
    let mut tls = server.raw_tls(Duration::from_secs(10));
    let start = Instant::now();
    tls.write_all(
        b"POST /validate?timeout=1s HTTP/1.1\r\nHost: localhost\r\nContent-Length: 500\r\n\r\n{",
    )
    .unwrap();
    tls.flush().unwrap();
    let mut response = Vec::new();
    let _ = tls.read_to_end(&mut response);
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 408"));
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn silent_connection_is_closed_after_the_request_timeout() {
    let server = Pinhook::start_with(Options {
        args: vec!["--request-timeout".into(), "1s".into()],
        ..Default::default()
    });
    let mut tls = server.raw_tls(Duration::from_secs(10));
    let start = Instant::now();
    // Complete the handshake, then send nothing.
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).unwrap();
    }
    let mut buf = [0u8; 64];
    let n = tls.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "expected the server to close the idle connection");
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "took {:?}",
        start.elapsed()
    );
}

#[tokio::test]
async fn idle_http2_connection_is_closed_after_the_idle_timeout() {
    use http_body_util::BodyExt;
    use rustls::pki_types::pem::PemObject;

    let server = Pinhook::start_with(Options {
        args: vec!["--idle-timeout".into(), "1s".into()],
        ..Default::default()
    });
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(server.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let stream = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
            .handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let request = hyper::Request::post(server.url("/validate"))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(b"{}")))
        .unwrap();
    let response = send.send_request(request).await.unwrap();
    assert_eq!(response.status(), 400);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("not an AdmissionReview"));
    // The client answers pings and keeps the connection; only the server can end it.
    let idle = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(6), conn).await;
    assert!(closed.is_ok(), "the idle HTTP/2 connection stayed open");
    assert!(
        idle.elapsed() >= Duration::from_millis(800) && idle.elapsed() < Duration::from_secs(4),
        "closed after {:?}",
        idle.elapsed()
    );
}
