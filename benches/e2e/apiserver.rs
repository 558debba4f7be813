//! 11: Pod creation as the API server sees it. A real kube-apiserver (tests/cluster) creates
//! Pods sequentially and from 16 concurrent clients in four namespaces, in one run: one that
//! no webhook judges (the baseline), one sent to the baseline server (examples/baseline.rs:
//! parse and allow, the floor of any webhook) through the same two webhook configurations, one
//! judged by pinhook's `/mutate` and `/validate` with the image's digest cached, and one where
//! every Pod names a new tag behind the 20 ms registry delay. The figure is pinhook's added
//! latency per Pod creation; the API server's own
//! `apiserver_admission_webhook_admission_duration_seconds` (sequential runs) is the
//! cross-check.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};

use super::common::cluster::{Cluster, Registration, register_at, wait_registered};
use super::report::{Met, Row};
use super::{Bench, Lab, median};

/// Pods created one after the other, per scenario.
pub const SEQUENTIAL: usize = 100;
/// Concurrent clients, and Pods each creates, per scenario.
pub const CLIENTS: usize = 16;
pub const PER_CLIENT: usize = 10;
/// Tags the cold scenario needs in the registry (one per Pod, both runs, plus warm-up).
pub const COLD_TAGS: usize = SEQUENTIAL + CLIENTS * PER_CLIENT + 1;

/// The tag of cold Pod `i`.
pub fn cold_tag(i: usize) -> String {
    format!("api-cold-{i}")
}

/// Latencies of one scenario, in ms.
struct Run {
    sequential: Vec<f64>,
    concurrent: Vec<f64>,
    concurrent_wall: Duration,
}

fn percentile(xs: &[f64], p: f64) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
    v[i.min(v.len() - 1)]
}

/// The sum and count of the API server's webhook admission histogram for pinhook's webhooks.
async fn webhook_histogram(client: &kube::Client) -> (f64, f64) {
    let req = axum::http::Request::get("/metrics")
        .body(Vec::new())
        .unwrap();
    let text = client.request_text(req).await.unwrap_or_default();
    let family = "apiserver_admission_webhook_admission_duration_seconds";
    let mut sum = 0.0;
    let mut count = 0.0;
    for line in text.lines().filter(|l| l.contains("pinhook.dev")) {
        let value = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok());
        if line.starts_with(&format!("{family}_sum{{")) {
            sum += value.unwrap_or(0.0);
        } else if line.starts_with(&format!("{family}_count{{")) {
            count += value.unwrap_or(0.0);
        }
    }
    (sum, count)
}

async fn create(api: &Api<Pod>, name: String, image: String) -> f64 {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": image}]}
    }))
    .unwrap();
    let t0 = Instant::now();
    let created = api.create(&PostParams::default(), &pod).await;
    let elapsed = t0.elapsed().as_secs_f64() * 1e3;
    if let Err(e) = created {
        panic!("creating pod {name} with {image}: {e}");
    }
    elapsed
}

/// Creates the scenario's Pods in `ns`, sequentially then from `CLIENTS` clients; also returns
/// the API server's mean time per webhook call during the sequential run, in ms.
async fn run(client: &kube::Client, ns: &str, image: &dyn Fn(usize) -> String) -> (Run, f64) {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    // Warm the connections and, for the cached scenario, the digest.
    create(&api, format!("{ns}-warm"), image(COLD_TAGS - 1)).await;
    let before = webhook_histogram(client).await;
    let mut sequential = Vec::with_capacity(SEQUENTIAL);
    for i in 0..SEQUENTIAL {
        sequential.push(create(&api, format!("{ns}-s{i}"), image(i)).await);
    }
    let after = webhook_histogram(client).await;
    let (sum, count) = (after.0 - before.0, after.1 - before.1);
    let per_call = if count > 0.0 { sum / count * 1e3 } else { 0.0 };
    let t0 = Instant::now();
    let clients = (0..CLIENTS).map(|c| {
        let api = api.clone();
        let images: Vec<String> = (0..PER_CLIENT)
            .map(|j| image(SEQUENTIAL + c * PER_CLIENT + j))
            .collect();
        async move {
            let mut out = Vec::with_capacity(PER_CLIENT);
            for (j, img) in images.into_iter().enumerate() {
                out.push(create(&api, format!("{ns}-c{c}-{j}"), img).await);
            }
            out
        }
    });
    let concurrent: Vec<f64> = futures_util::future::join_all(clients)
        .await
        .into_iter()
        .flatten()
        .collect();
    let run = Run {
        sequential,
        concurrent,
        concurrent_wall: t0.elapsed(),
    };
    (run, per_call)
}

impl Bench {
    pub(crate) fn apiserver(&mut self, lab: &Lab) {
        // A cluster of this group's own, stopped when the group ends (dropped), so its
        // controllers, busy with hundreds of pending Pods, do not load the groups after it.
        let cluster = Cluster::start(None);
        let c = &cluster;
        // The harness runs on the clients' CPU and the cluster inherited it; like a real control
        // plane, the API server may use both CPUs (pinhook stays on the servers' CPU).
        let pid = std::fs::read_to_string(c.dir.join("pid")).unwrap();
        let _ = std::process::Command::new("taskset")
            .args(["-a", "-p", "-c", "0-1", pid.trim()])
            .stdout(std::process::Stdio::null())
            .status();
        lab.proxy
            .set_mode(super::ProxyMode::Delay(super::RTT_DELAY));
        let pinhook = self.pinhook("pinhook-apiserver", &lab.policy(), &[]);
        let baseline = self.baseline("baseline-apiserver", &[]);
        c.namespace("bench-none", None);
        c.namespace("bench-floor", Some("floor"));
        c.namespace("bench-cached", Some("bench"));
        c.namespace("bench-cold", Some("bench"));
        register_at(c, pinhook.addr, &self.ca_pem, &Registration::new("bench"));
        register_at(c, baseline.addr, &self.ca_pem, &Registration::new("floor"));
        wait_registered(c, "bench-cached");

        let kubeconfig = c.kubeconfig();
        let (none, floor, cached, cold) = self.rt.block_on(async {
            let kc = kube::config::Kubeconfig::read_from(&kubeconfig).unwrap();
            let config = kube::Config::from_custom_kubeconfig(
                kc,
                &kube::config::KubeConfigOptions::default(),
            )
            .await
            .unwrap();
            let client = kube::Client::try_from(config).unwrap();
            let warm = lab.image("warm-0");
            let none = run(&client, "bench-none", &|_| warm.clone()).await;
            let floor = run(&client, "bench-floor", &|_| warm.clone()).await;
            let cached = run(&client, "bench-cached", &|_| warm.clone()).await;
            let cold = run(&client, "bench-cold", &|i| lab.image(&cold_tag(i))).await;
            (none, floor, cached, cold)
        });
        drop(pinhook);
        drop(baseline);
        let (none, _) = none;
        let (floor, floor_call) = floor;
        let (cached, cached_call) = cached;
        let (cold, cold_call) = cold;

        let cmd = "`BENCH_ONLY=apiserver make bench`".to_owned();
        let base_p50 = median(&none.sequential);
        let base_c50 = median(&none.concurrent);
        let describe = |r: &Run| {
            format!(
                "sequential p50 {:.2} / p99 {:.2} ms; 16 clients p50 {:.2} / p99 {:.2} ms, \
                 {:.0} Pods/s",
                median(&r.sequential),
                percentile(&r.sequential, 99.0),
                median(&r.concurrent),
                percentile(&r.concurrent, 99.0),
                r.concurrent.len() as f64 / r.concurrent_wall.as_secs_f64()
            )
        };
        let baseline = format!("no webhook: {}", describe(&none));
        let added = |r: &Run| {
            format!(
                "{} — added p50 {:+.2} ms sequential, {:+.2} ms with 16 clients",
                describe(r),
                median(&r.sequential) - base_p50,
                median(&r.concurrent) - base_c50
            )
        };
        for (figure, run) in [
            (
                "11. Pod creation through kube-apiserver, a do-nothing webhook (the floor)",
                &floor,
            ),
            (
                "11a. Pod creation through kube-apiserver, pinhook /mutate + /validate, digest cached",
                &cached,
            ),
            (
                "11b. Pod creation through kube-apiserver, a new tag per Pod (20 ms per registry round trip)",
                &cold,
            ),
        ] {
            self.rows.push(Row {
                figure: figure.into(),
                value: added(run),
                baseline: baseline.clone(),
                ratio: format!(
                    "{:.2}× (sequential p50)",
                    median(&run.sequential) / base_p50
                ),
                target: "for information".into(),
                met: Met::Info,
                command: cmd.clone(),
            });
        }
        self.rows.push(Row {
            figure: "11c. The API server's own webhook histogram, per call, sequential runs".into(),
            value: format!(
                "pinhook {cached_call:.2} ms cached, {cold_call:.2} ms new tag \
                 (apiserver_admission_webhook_admission_duration_seconds sum/count; two calls \
                 per Pod: /mutate, /validate)"
            ),
            baseline: format!("{floor_call:.2} ms: the do-nothing webhook"),
            ratio: format!("{:.2}× (cached)", cached_call / floor_call),
            target: "for information".into(),
            met: Met::Info,
            command: cmd,
        });
    }
}
