//! pinhook's memory under the worst a Pod author can send, measured in the server's own process
//! (VmHWM, the peak resident set) and compared with the chart's memory limit.
//!
//! The attack, all at once: the largest bodies the budget admits, parsed concurrently (a typed
//! Pod of ~3.4 MiB whose every container has the most JSON structure per byte), a stalled log
//! reader with audit lines filling the log queue, and thousands of distinct long image strings
//! for the reference memo. What a test cannot fill cheaply — the digest cache (32 MiB by bytes)
//! and the HTTP/2 buffers of unread answers on every allowed connection — is added from their
//! limits. The sum must stay under the chart's `resources.limits.memory`; the README's
//! resource table records the figures this test prints.

mod common;

use std::time::Duration;

use common::{Http, Options, Pinhook, fixture};
use serde_json::{Value, json};

/// The chart's memory limit, read from charts/pinhook/values.yaml (`limits: memory: NNNMi`).
fn chart_limit_mib() -> u64 {
    let values = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/pinhook/values.yaml"),
    )
    .unwrap();
    let limits = values.split("limits:").nth(1).expect("resources.limits");
    let memory = limits
        .lines()
        .find_map(|l| l.trim().strip_prefix("memory:"))
        .expect("limits.memory");
    memory
        .trim()
        .trim_end_matches("Mi")
        .parse()
        .expect("a limit in Mi")
}

fn peak_rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM");
    kib / 1024
}

/// A Pod review of about `bytes`, made of containers with the most structure per byte.
fn dense_pod(bytes: usize, uid: &str) -> Value {
    let mut review = fixture("pod_mutable_latest_tag");
    let one = json!({"name": "c", "image": "nginx:latest", "env": [{"name": "A", "value": "B"}, {"name": "C", "value": "D"}], "ports": [{"containerPort": 80}]});
    let per = serde_json::to_string(&one).unwrap().len() + 1;
    let containers: Vec<Value> = (0..bytes / per).map(|_| one.clone()).collect();
    review["request"]["object"]["spec"]["containers"] = json!(containers);
    review["request"]["uid"] = json!(uid);
    review
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worst_a_pod_author_can_send_stays_under_the_charts_memory_limit() {
    let server = Pinhook::start_with(Options {
        hold_stdout: true,
        ..Default::default()
    });
    let pid = server.pid();
    let idle = peak_rss_mib(pid);
    let client = server.client(Http::V2);

    // Thousands of distinct long image strings: the reference memo fills to its bound.
    let mut review = fixture("pod_mutable_latest_tag");
    for round in 0..40 {
        let containers: Vec<Value> = (0..100)
            .map(|i| json!({"name": format!("c{i}"), "image": format!("registry.example/{}/app-{round}-{i}:latest", "x".repeat(200))}))
            .collect();
        review["request"]["object"]["spec"]["containers"] = json!(containers);
        let resp = client
            .post(server.url("/validate"))
            .json(&review)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }

    // The largest bodies, eight at a time on eight connections (the budget lets the first in,
    // the rest wait or get 503), and audit lines piling up behind the stalled reader.
    let client = server.client(Http::V1);
    let big = serde_json::to_vec(&dense_pod(3_400_000, "dense")).unwrap();
    assert!(
        big.len() > 3_300_000 && big.len() < 3_670_016,
        "{}",
        big.len()
    );
    let mut served = 0;
    for _round in 0..3 {
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let (client, url, body) = (
                client.clone(),
                server.url("/validate?timeout=10s"),
                big.clone(),
            );
            tasks.spawn(async move {
                client
                    .post(url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            });
        }
        while let Some(status) = tasks.join_next().await {
            let status = status.unwrap().expect("an answer");
            assert!(status == 200 || status == 503, "{status}");
            served += usize::from(status == 200);
        }
    }
    assert!(
        served >= 3,
        "only {served} of the largest reviews were served"
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let peak = peak_rss_mib(pid);

    // Not filled here, added from their limits: the digest cache (32 MiB) and unread answers
    // held in HTTP/2 buffers on every allowed connection (64 × 64 streams × 64 KiB = 256 MiB
    // would be the theoretical ceiling of hyper's per-stream buffer; answers larger than the
    // buffer stay in the budget measured above, and no answer but a patch exceeds 8 KB, so
    // 64 connections × 64 streams × 8 KB = 32 MiB).
    let unfilled = 32 + 32;
    let limit = chart_limit_mib();
    eprintln!(
        "idle {idle} MiB, peak under attack {peak} MiB, + {unfilled} MiB unfilled bounds = {} MiB, chart limit {limit} MiB ({served} of 24 maximum-size reviews served)",
        peak + unfilled
    );
    assert!(
        peak + unfilled < limit,
        "peak {peak} MiB + {unfilled} MiB exceeds the chart's {limit} MiB"
    );
}
