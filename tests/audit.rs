//! The audit trail and the metrics, observed from outside: one JSON line on stdout per request
//! with findings, none for clean requests, nothing from the object beyond its images, and
//! `pinhook_`-prefixed Prometheus counters for every decision.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{Http, Options, Pinhook, fixture};
use serde_json::{Value, json};

/// The uid of the request [`settle`] sends; its record is left out of what `settle` returns.
const BARRIER_UID: &str = "barrier-00000000-0000-0000-0000-000000000000";

/// Sends one more offending request and waits for its audit line. stdout is read by another
/// thread, but in order, so once that line is in every line written before it is too. Returns
/// the audit records other than the barrier's.
async fn settle(server: &Pinhook) -> Vec<Value> {
    let mut review = fixture("pod_mutable_latest_tag");
    review["request"]["uid"] = json!(BARRIER_UID);
    let (status, _, body) = server.validate(Http::V2, &review).await;
    assert_eq!(status, 200, "{body}");
    server.wait_for_line(Duration::from_secs(10), |v| v["uid"] == BARRIER_UID);
    server
        .audit_records()
        .into_iter()
        .filter(|r| r["uid"] != BARRIER_UID)
        .collect()
}

/// Posts fixture `review` and returns its `response`.
async fn post(server: &Pinhook, review: &Value) -> Value {
    let (status, _, body) = server.validate(Http::V2, review).await;
    assert_eq!(status, 200, "{body}");
    common::response_of(&body, review["request"]["uid"].as_str().unwrap())
}

fn start_in(mode: &str) -> Pinhook {
    Pinhook::start_with(Options {
        policy: Some(format!("mode: {mode}\n")),
        ..Default::default()
    })
}

#[tokio::test]
async fn denied_request_writes_one_json_audit_line_with_every_field() {
    let server = Pinhook::start();
    let review = fixture("pod_dry_run_mutable_tag");
    let uid = review["request"]["uid"].as_str().unwrap().to_owned();
    assert_eq!(post(&server, &review).await["allowed"], false);

    let records = settle(&server).await;
    assert_eq!(records.len(), 1, "{records:#?}");
    let r = &records[0];

    let keys: BTreeSet<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
    let expected: BTreeSet<&str> = [
        "timestamp",
        "event",
        "uid",
        "operation",
        "namespace",
        "kind",
        "name",
        "generateName",
        "user",
        "dryRun",
        "mode",
        "endpoint",
        "violations",
    ]
    .into();
    assert_eq!(keys, expected, "{r}");

    let ts = r["timestamp"].as_str().unwrap();
    assert!(
        ts.contains('T') && ts.ends_with('Z'),
        "not RFC 3339 UTC: {ts}"
    );
    assert_eq!(r["event"], "admission.denied");
    assert_eq!(r["uid"], uid);
    assert_eq!(r["operation"], "CREATE");
    assert_eq!(r["namespace"], "shop");
    assert_eq!(r["kind"], "Pod");
    assert_eq!(r["name"], "");
    assert_eq!(r["generateName"], "web-7d9c6b5f4-");
    assert_eq!(r["user"], "alice@example.com");
    assert_eq!(r["dryRun"], true);
    assert_eq!(r["mode"], "enforce");
    assert_eq!(r["endpoint"], "validate");
    assert_eq!(
        r["violations"],
        json!([{
            "container": "web",
            "site": "container",
            "path": "spec.containers[0]",
            "image": "nginx:latest",
            "rule": "mutable-tag",
            "reason": "image \"nginx:latest\" uses mutable tag \"latest\"; use a version tag or a digest",
        }])
    );
}

#[tokio::test]
async fn warned_and_audited_requests_are_recorded_with_their_event() {
    for (mode, event) in [("warn", "admission.warned"), ("audit", "admission.audited")] {
        let server = start_in(mode);
        let review = fixture("pod_mutable_latest_tag");
        assert_eq!(post(&server, &review).await["allowed"], true, "{mode}");
        let records = settle(&server).await;
        assert_eq!(records.len(), 1, "{mode}: {records:#?}");
        assert_eq!(records[0]["event"], event, "{mode}");
        assert_eq!(records[0]["mode"], mode);
        assert_eq!(records[0]["uid"], review["request"]["uid"]);
    }
}

#[tokio::test]
async fn clean_requests_write_no_audit_line() {
    let server = Pinhook::start();
    for name in ["pod_version_tags", "pod_pinned_by_digest"] {
        assert_eq!(
            post(&server, &fixture(name)).await["allowed"],
            true,
            "{name}"
        );
    }
    let records = settle(&server).await;
    assert!(records.is_empty(), "{records:#?}");
}

#[tokio::test]
async fn metrics_count_requests_by_decision_and_latency() {
    let server = Pinhook::start();
    for name in ["pod_mutable_latest_tag", "pod_dry_run_mutable_tag"] {
        assert_eq!(
            post(&server, &fixture(name)).await["allowed"],
            false,
            "{name}"
        );
    }
    assert_eq!(
        post(&server, &fixture("pod_version_tags")).await["allowed"],
        true
    );
    let (status, _, body) = server.post_json(Http::V2, "/validate", b"{".to_vec()).await;
    assert_eq!(status, 400, "{body}");

    let text = server.metrics().await;
    let lines: Vec<&str> = text.lines().collect();
    for expected in [
        r#"pinhook_admission_requests_total{endpoint="validate",decision="denied"} 2"#,
        r#"pinhook_admission_requests_total{endpoint="validate",decision="allowed"} 1"#,
        r#"pinhook_admission_requests_total{endpoint="validate",decision="error"} 1"#,
        r#"pinhook_admission_duration_seconds_count{endpoint="validate"} 3"#,
        r#"pinhook_violations_total{rule="mutable-tag",mode="enforce"} 2"#,
    ] {
        assert!(lines.contains(&expected), "missing {expected:?} in\n{text}");
    }

    let names: Vec<&str> = lines
        .iter()
        .filter_map(|l| match l.strip_prefix("# TYPE ") {
            Some(rest) => rest.split(' ').next(),
            None if l.starts_with('#') => None,
            None => l.split(['{', ' ']).next(),
        })
        .collect();
    assert!(names.len() > 10, "too few metrics to judge:\n{text}");
    let foreign: Vec<&&str> = names
        .iter()
        .filter(|n| !n.starts_with("pinhook_"))
        .collect();
    assert!(foreign.is_empty(), "{foreign:?} in\n{text}");
}

#[tokio::test]
async fn audit_line_never_contains_env_values() {
    const SECRET: &str = "s3cr3t-value";
    let server = Pinhook::start();
    let mut review = fixture("pod_mutable_latest_tag");
    review["request"]["object"]["spec"]["containers"][0]["env"] =
        json!([{"name": "DB_PASSWORD", "value": SECRET}]);
    assert_eq!(post(&server, &review).await["allowed"], false);

    let records = settle(&server).await;
    assert_eq!(records.len(), 1, "the request was audited: {records:#?}");
    let leaks: Vec<String> = server
        .lines()
        .into_iter()
        .chain(server.stderr())
        .filter(|l| l.contains(SECRET))
        .collect();
    assert!(leaks.is_empty(), "{leaks:#?}");
}

/// A log reader that stops reading (a stuck log shipper, a full pipe) holds no admission: the
/// records queue in the server, far beyond the 64 KiB a pipe holds, and every one of them is
/// written, whole and once, when stdout is read again.
#[tokio::test]
async fn a_stalled_stdout_reader_holds_no_admission_and_loses_no_audit_line() {
    const N: usize = 600;
    let mut server = Pinhook::start_with(Options {
        hold_stdout: true,
        ..Default::default()
    });
    let client = server.client(Http::V2);
    let url = server.url("/validate?timeout=10s");
    let review = fixture("pod_mutable_latest_tag");
    for i in 0..N {
        let mut r = review.clone();
        r["request"]["uid"] = json!(format!("stalled-reader-{i:04}"));
        let sent =
            tokio::time::timeout(Duration::from_secs(10), client.post(&url).json(&r).send()).await;
        let resp = sent
            .unwrap_or_else(|_| panic!("admission {i} waited 10 s for the log reader"))
            .expect("request");
        assert_eq!(resp.status(), 200, "admission {i}");
    }

    server.read_stdout();
    let last = format!("stalled-reader-{:04}", N - 1);
    server.wait_for_line(Duration::from_secs(20), |v| v["uid"] == last);
    let lines: Vec<String> = server
        .lines()
        .into_iter()
        .filter(|l| l.contains("stalled-reader-"))
        .collect();
    let bytes: usize = lines.iter().map(|l| l.len() + 1).sum();
    assert!(
        bytes > 128 * 1024,
        "the records ({bytes} bytes) must overflow a pipe for this test to mean anything"
    );
    let uids: Vec<String> = lines
        .iter()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert_eq!(v["event"], "admission.denied", "{l}");
            v["uid"].as_str().unwrap().to_owned()
        })
        .collect();
    let expected: Vec<String> = (0..N).map(|i| format!("stalled-reader-{i:04}")).collect();
    assert_eq!(uids, expected, "every record once, in order");

    // Waited for off the runtime, which must stay free to close the client's connection
    // when the server's graceful shutdown asks it to.
    let status = tokio::task::spawn_blocking(move || {
        server.sigterm();
        server.wait_exit(Duration::from_secs(10))
    })
    .await
    .unwrap();
    assert!(status.success(), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_reader_stalled_past_the_queue_starves_no_health_check_and_drops_are_counted() {
    const N: usize = 200;
    let mut server = Pinhook::start_with(Options {
        hold_stdout: true,
        args: vec!["--log-queue-bytes".into(), "65536".into()],
        ..Default::default()
    });
    // HTTP/1.1: one connection per request in flight, none queued behind another's stream.
    let client = server.client(Http::V1);
    let ops = reqwest::Client::new();
    let url = server.url("/validate?timeout=2s");
    // Ten offending containers: audit lines of a few KiB, so that a handful fill the queue.
    let mut review = fixture("pod_mutable_latest_tag");
    let containers: Vec<Value> = (0..10)
        .map(|i| json!({"name": format!("c{i}"), "image": format!("registry.example/team/app-{i}:latest")}))
        .collect();
    review["request"]["object"]["spec"]["containers"] = json!(containers);
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    // Under --max-connections (64): each request in flight has a connection of its own.
    let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(48));
    for i in 0..N {
        let (client, url) = (client.clone(), url.clone());
        let mut r = review.clone();
        r["request"]["uid"] = json!(format!("overflow-{i:04}"));
        let in_flight = in_flight.clone();
        tasks.spawn(async move {
            let _slot = in_flight.acquire().await.unwrap();
            let resp =
                tokio::time::timeout(Duration::from_secs(3), client.post(&url).json(&r).send())
                    .await
                    .unwrap_or_else(|_| panic!("admission {i} outlived its 2 s timeout"))
                    .expect("request");
            assert_eq!(resp.status(), 200, "admission {i}");
        });
    }
    // While reviews wait for room, health checks answer at once.
    let mut slowest = Duration::ZERO;
    while !tasks.is_empty() {
        let probe = std::time::Instant::now();
        let health = tokio::time::timeout(
            Duration::from_secs(1),
            ops.get(server.ops_url("/healthz")).send(),
        )
        .await
        .expect("/healthz answered within 1 s")
        .expect("healthz");
        assert_eq!(health.status(), 200);
        slowest = slowest.max(probe.elapsed());
        tokio::select! {
            joined = tasks.join_next() => { joined.unwrap().unwrap(); }
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );

    let metrics = ops
        .get(server.ops_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing:\n{metrics}"))
    };
    let dropped = value("pinhook_log_lines_dropped_total{stream=\"audit\"}");
    let queued = value("pinhook_log_queue_bytes");
    assert!(
        dropped > 0.0,
        "{N} records of ~1 KiB fit a 64 KiB queue and a pipe? {metrics}"
    );
    assert!(queued <= 65536.0, "queue holds {queued} bytes");

    // The reader reads again: what was kept arrives whole, and only the dropped ones are missing.
    server.read_stdout();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let written = server
        .lines()
        .iter()
        .filter(|l| l.contains("overflow-"))
        .inspect(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            assert_eq!(v["event"], "admission.denied");
        })
        .count();
    assert_eq!(
        written + dropped as usize,
        N,
        "{written} written, {dropped} dropped"
    );
    eprintln!("slowest /healthz while stalled: {slowest:?}; {written} written, {dropped} dropped");
}
