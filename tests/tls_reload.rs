//! The serving certificate: HTTP/2 over ALPN, and rotation on disk without a restart and
//! without dropping open connections.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Http, Pinhook, client_for, fixture};
use serde_json::Value;

async fn ask(
    client: &reqwest::Client,
    server: &Pinhook,
) -> Result<(reqwest::Version, Value), reqwest::Error> {
    let r = client
        .post(server.url("/validate"))
        .json(&fixture("pod_version_tags"))
        .send()
        .await?;
    let v = r.version();
    Ok((v, r.json().await?))
}

/// Writes `name` atomically (temp file + rename), as a certificate manager would.
fn replace(dir: &Path, name: &str, contents: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

#[tokio::test]
async fn negotiates_http2_over_alpn_and_serves_http1_too() {
    let server = Pinhook::start();
    common::init_crypto();
    let any = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(server.ca_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let (version, body) = ask(&any, &server).await.unwrap();
    assert_eq!(version, reqwest::Version::HTTP_2);
    assert_eq!(body["response"]["allowed"], true);
    let (version, _) = ask(&server.client(Http::V1), &server).await.unwrap();
    assert_eq!(version, reqwest::Version::HTTP_11);
}

#[tokio::test]
async fn clients_that_do_not_trust_the_ca_are_refused() {
    let server = Pinhook::start();
    let other = pinhook::certs::generate(&["localhost".into()], 1).unwrap();
    let err = ask(&client_for(&other.ca_pem, Http::V2), &server)
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");
}

#[tokio::test]
async fn rotated_certificate_serves_new_connections_and_open_ones_stay() {
    let server = Pinhook::start();
    let old_ca = server.ca_pem.clone();
    let open = server.client(Http::V2);
    ask(&open, &server).await.unwrap();

    let fresh = pinhook::certs::generate(&["localhost".into(), "127.0.0.1".into()], 2).unwrap();
    replace(server.dir.path(), "tls.key", &fresh.key_pem);
    replace(server.dir.path(), "tls.crt", &fresh.cert_pem);
    server.wait_for_line(Duration::from_secs(10), |v| {
        v["message"] == "TLS certificate reloaded"
    });

    // The pooled HTTP/2 connection made with the old certificate keeps working.
    let (version, body) = ask(&open, &server)
        .await
        .expect("open connection dropped by rotation");
    assert_eq!(version, reqwest::Version::HTTP_2);
    assert_eq!(body["response"]["allowed"], true);
    // New connections get the new certificate.
    assert!(
        ask(&client_for(&old_ca, Http::V2), &server).await.is_err(),
        "new connection still served the old certificate"
    );
    ask(&client_for(&fresh.ca_pem, Http::V2), &server)
        .await
        .expect("new certificate not served");
    assert!(
        server
            .metrics()
            .await
            .contains(r#"pinhook_tls_reloads_total{result="success"} 1"#)
    );
}

#[tokio::test]
async fn unusable_certificate_on_disk_keeps_the_old_one() {
    let server = Pinhook::start();
    // A key that does not match the certificate: refused, as is garbage.
    let other = pinhook::certs::generate(&["localhost".into()], 1).unwrap();
    replace(server.dir.path(), "tls.key", &other.key_pem);
    let line = server.wait_for_line(Duration::from_secs(10), |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("TLS certificate reload refused"))
    });
    assert!(
        line["error"]
            .as_str()
            .unwrap()
            .contains("do not form a usable pair"),
        "{line}"
    );
    replace(server.dir.path(), "tls.crt", "not a certificate");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server
        .metrics()
        .await
        .contains(r#"pinhook_tls_reloads_total{result="failure"} 2"#)
    {
        assert!(Instant::now() < deadline, "second refusal not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ask(&server.client(Http::V2), &server)
        .await
        .expect("old certificate no longer served");
}

#[test]
fn startup_fails_naming_an_unreadable_certificate() {
    let out = common::serve_command()
        .args([
            "--tls-cert",
            "/nonexistent/tls.crt",
            "--tls-key",
            "/nonexistent/tls.key",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot read /nonexistent/tls.crt"),
        "{stderr}"
    );
}
