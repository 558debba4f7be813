//! Process lifecycle: health and readiness, graceful drain on SIGTERM, configuration through
//! environment variables, and refusing to start on an invalid policy.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Http, Pinhook, fixture};
use serde_json::Value;

#[tokio::test]
async fn health_and_readiness_on_the_plain_port() {
    let server = Pinhook::start();
    let get = |path: &str| reqwest::get(server.ops_url(path));
    let r = get("/healthz").await.unwrap();
    assert_eq!(r.status(), 200);
    let r = get("/readyz").await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.text().await.unwrap(), "ready\n");
    let r = get("/validate").await.unwrap();
    assert_eq!(
        r.status(),
        404,
        "the webhook must not be served on the plain port"
    );
}

#[tokio::test]
async fn wrong_method_and_unknown_path_are_refused() {
    let server = Pinhook::start();
    let client = server.client(Http::V2);
    assert_eq!(
        client
            .get(server.url("/validate"))
            .send()
            .await
            .unwrap()
            .status(),
        405
    );
    let r = client
        .post(server.url("/nope"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert!(
        v["error"]
            .as_str()
            .unwrap()
            .contains("POST /validate and POST /mutate")
    );
}

#[tokio::test]
async fn sigterm_finishes_in_flight_requests_then_exits_zero() {
    let mut server = Pinhook::start();
    let body = serde_json::to_vec(&fixture("pod_mutable_latest_tag")).unwrap();
    let (first, rest) = body.split_at(body.len() / 2);

    // A request in flight: headers and half the body sent.
    let mut tls = server.raw_tls(Duration::from_secs(15));
    write!(tls, "POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len()).unwrap();
    tls.write_all(first).unwrap();
    tls.flush().unwrap();
    std::thread::sleep(Duration::from_millis(200));

    server.sigterm();
    server.wait_for_line(Duration::from_secs(5), |v| {
        v["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("shutting down"))
    });
    // Draining: not ready, and no new connections are accepted.
    let ready = reqwest::get(server.ops_url("/readyz"))
        .await
        .map(|r| r.status().as_u16());
    assert!(
        !matches!(ready, Ok(200)),
        "still ready while draining: {ready:?}"
    );
    let fresh = server
        .client(Http::V2)
        .post(server.url("/validate"))
        .body("{}")
        .send()
        .await;
    assert!(
        fresh.is_err(),
        "a new connection was accepted after SIGTERM"
    );

    // The in-flight request completes.
    tls.write_all(rest).unwrap();
    tls.flush().unwrap();
    let mut reader = BufReader::new(tls);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
    }
    let mut response = vec![0; length];
    reader.read_exact(&mut response).unwrap();
    let v: Value = serde_json::from_slice(&response).unwrap();
    assert_eq!(v["response"]["uid"], "0df28fbd-5f5f-11e8-bc74-36e6bb280816");
    assert_eq!(v["response"]["allowed"], false);
    drop(reader);

    let status = server.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit status {status}");
}

/// Starts `pinhook serve` configured only through `PINHOOK_*` variables; returns the child and
/// its "pinhook serving" log line.
fn start_from_env(dir: &std::path::Path, env: &[(&str, String)]) -> (std::process::Child, Value) {
    let mut child = Command::new(common::binary())
        .arg("serve")
        .env_remove("KUBECONFIG")
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .current_dir(dir)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let serving = loop {
        let line = lines
            .next()
            .expect("pinhook exited before serving")
            .unwrap();
        if let Ok(v) = serde_json::from_str::<Value>(&line)
            && v["message"] == "pinhook serving"
        {
            break v;
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, serving)
}

#[tokio::test]
async fn every_setting_has_an_environment_variable() {
    let dir = tempfile::tempdir().unwrap();
    let ca = common::write_certs(dir.path());
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, "mode: warn\n").unwrap();
    let env = [
        ("PINHOOK_LISTEN", "127.0.0.1:0".to_owned()),
        ("PINHOOK_METRICS_LISTEN", "127.0.0.1:0".to_owned()),
        (
            "PINHOOK_TLS_CERT",
            dir.path().join("tls.crt").display().to_string(),
        ),
        (
            "PINHOOK_TLS_KEY",
            dir.path().join("tls.key").display().to_string(),
        ),
        ("PINHOOK_POLICY", policy.display().to_string()),
        ("PINHOOK_MAX_BODY_BYTES", "500".to_owned()),
    ];
    let (mut child, serving) = start_from_env(dir.path(), &env);
    assert_eq!(serving["policy"], policy.display().to_string());
    let port = serving["listen"]
        .as_str()
        .unwrap()
        .rsplit_once(':')
        .unwrap()
        .1
        .to_owned();
    let body = serde_json::to_vec(&fixture("pod_mutable_latest_tag")).unwrap();
    assert!(body.len() > 500);
    let r = common::client_for(&ca, Http::V2)
        .post(format!("https://localhost:{port}/validate"))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(status, 413);
}

#[test]
fn invalid_policy_at_startup_exits_nonzero_naming_file_line_and_key() {
    let dir = tempfile::tempdir().unwrap();
    common::write_certs(dir.path());
    let policy = dir.path().join("policy.yaml");
    std::fs::write(
        &policy,
        "mode: enforce\nrules:\n  - namespaces: [a]\n    mdoe: warn\n",
    )
    .unwrap();
    let out = common::serve_command()
        .arg("--tls-cert")
        .arg(dir.path().join("tls.crt"))
        .arg("--tls-key")
        .arg(dir.path().join("tls.key"))
        .arg("--policy")
        .arg(&policy)
        .env_remove("KUBECONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&policy.display().to_string()), "{stderr}");
    assert!(stderr.contains("line 4"), "{stderr}");
    assert!(stderr.contains("key \"rules[0].mdoe\""), "{stderr}");
}
