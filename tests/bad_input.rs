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
async fn default_limit_is_8_mib_and_large_objects_below_it_work() {
    let server = Pinhook::start();
    // A 3 MiB object (the API server's own ceiling) is judged normally.
    let mut review = fixture("pod_mutable_latest_tag");
    review["request"]["object"]["metadata"]["annotations"] =
        json!({"blob": "x".repeat(3 * 1024 * 1024)});
    let (status, _, body) = server.validate(Http::V2, &review).await;
    assert_eq!(status, 200);
    assert_eq!(body["response"]["allowed"], false);
    // Just over 8 MiB is refused.
    let (status, text) = post(&server, Http::V2, vec![b' '; 8 * 1024 * 1024 + 1]).await;
    assert_eq!(status, 413);
    assert!(
        error_of(status, &text).contains("limit of 8388608 bytes"),
        "{text}"
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
