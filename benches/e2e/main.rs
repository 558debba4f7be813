//! `make bench`: pinhook end to end, next to the fastest server the same stack allows, on the
//! same machine in the same run, written to BENCHMARKS.md.
//!
//! It starts a real registry (Debian's `docker-registry`, TLS, HTTP/2) behind a TCP proxy that
//! adds a delay per round trip, pinhook (`target/release/pinhook`), the baseline server
//! (`examples/baseline.rs`) and the load generator (`examples/loadgen.rs`), and measures:
//!
//! 1. the warm `/mutate` path (a Deployment whose 3 images are cached): throughput against the
//!    baseline, latency at a fixed rate of half pinhook's own maximum, latency unloaded;
//! 2. the `/validate` path on the same object;
//! 3. the cold path: one new image against one registry round trip through the same proxy,
//!    five new images against one;
//! 4. single flight: 500 concurrent admissions of one new image, manifest requests counted in
//!    the registry's access log;
//! 5. resident memory idle and with 100,000 cached digests (filled through the real path from
//!    a fast registry of our own), and the cost per entry;
//! 6. start-up to `/readyz` 200;
//! 7. the stripped binary size;
//! 8. instructions per warm request under callgrind (exact, whatever else the machine runs);
//! 11. Pod creation through a real kube-apiserver (tests/cluster): no webhook, pinhook with the
//!     digest cached, and a new tag per Pod (apiserver.rs).
//!
//! Servers run pinned to one CPU and load generators to the other (`taskset`; `BENCH_PIN=0`
//! turns it off), so a ratio compares the servers' costs rather than a shared CPU's.
//!
//! Settings (environment): `BENCH_ONLY=warm,cold,singleflight,memory,startup,size,callgrind,apiserver`
//! runs some groups (and writes `target/bench/BENCHMARKS.partial.md` unless `BENCH_OUT` says
//! otherwise); `BENCH_SECONDS` (3) is each load run's measured window; `BENCH_ROUNDS` (3) the
//! interleaved rounds of the throughput comparison; `BENCH_NOTE` a note for the report.
//!
//! Under `cargo test` (no `--bench` argument) it does nothing: the benchmark takes minutes.

mod apiserver;
#[path = "../../tests/common/mod.rs"]
mod common;
mod procs;
mod report;
mod reviews;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use axum::extract::Path as UrlPath;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use common::registry::{
    DelayProxy, MANIFEST_ACCEPT, ProxyMode, Registry, RegistryOptions, TestImage, free_port,
    serve_router,
};
use common::{Http, client_for};
use procs::{Bins, LoadSpec, Pinning, Server};
use report::{Met, Row, ratio};
use serde_json::Value;
use sha2::Digest as _;

const REPO: &str = "bench/app";
/// Added per round trip between pinhook and the registry on the cold path.
const RTT_DELAY: Duration = Duration::from_millis(20);
/// Added per round trip while the 500 single-flight admissions arrive, so they overlap.
const SINGLE_FLIGHT_DELAY: Duration = Duration::from_millis(200);
const COLD_SAMPLES: usize = 20;
const SINGLE_FLIGHT_ADMISSIONS: usize = 500;
const FILL_ENTRIES: usize = 100_000;
const FILL_WARM_ENTRIES: usize = 1_000;
const FILL_IMAGES_PER_POD: usize = 20;
const STARTUP_RUNS: usize = 15;
const CALLGRIND_WARMUP: usize = 200;
const CALLGRIND_REQUESTS: usize = 1_000;

fn main() {
    if !std::env::args().any(|a| a == "--bench") {
        eprintln!(
            "e2e: the end-to-end benchmark runs under `cargo bench --bench e2e` or `make bench`"
        );
        return;
    }
    common::init_crypto();
    let started = Instant::now();
    let mut bench = Bench::new();
    // The harness's own threads (the servers' output copiers, the registry and proxy it
    // starts, its HTTP clients) share the load generators' CPU, not the servers'.
    if let Some(cpu) = bench.pin.client {
        let pinned = std::process::Command::new("taskset")
            .args([
                "-a",
                "-p",
                "-c",
                &cpu.to_string(),
                &std::process::id().to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(pinned, "taskset -p could not pin the harness to CPU {cpu}");
    }
    let load_start = loadavg();
    eprintln!(
        "e2e: writing to {}; servers on CPU {:?}, clients on CPU {:?}",
        bench.out.display(),
        bench.pin.server,
        bench.pin.client
    );
    let needs_lab = ["warm", "cold", "singleflight", "callgrind", "apiserver"]
        .iter()
        .any(|g| bench.wants(g));
    let lab = needs_lab.then(|| Lab::start(&bench));
    if let Some(lab) = &lab {
        if bench.wants("warm") {
            bench.warm(lab);
        }
        if bench.wants("cold") {
            bench.cold(lab);
        }
        if bench.wants("singleflight") {
            bench.single_flight(lab);
        }
        if bench.wants("apiserver") {
            bench.apiserver(lab);
        }
    }
    if bench.wants("memory") {
        bench.memory();
    }
    if bench.wants("startup") {
        bench.startup();
    }
    if bench.wants("size") {
        bench.size();
    }
    if let Some(lab) = &lab
        && bench.wants("callgrind")
    {
        bench.callgrind(lab);
    }
    bench.rows.sort_by_key(|r| figure_order(&r.figure));
    let ctx = report::Context {
        started: bench.started_at.clone(),
        seconds: started.elapsed().as_secs_f64(),
        commit: git_commit(),
        rustc: command_output("rustc", &["-V"]),
        cpu: cpu_model(),
        load: (load_start, loadavg()),
        pinning: match (bench.pin.server, bench.pin.client) {
            (Some(s), Some(c)) => format!(
                "servers under test pinned to CPU {s}; load generators, the harness, the \
                 registry and the proxy to CPU {c} (`taskset`)"
            ),
            _ => "no pinning (`BENCH_PIN=0`, one CPU, or no `taskset`)".into(),
        },
        note: std::env::var("BENCH_NOTE").ok().filter(|n| !n.is_empty()),
        appendix: include_str!("notes.md").to_owned(),
        details: bench.details.clone(),
    };
    // Paths relative to the repository, so the commands run from its root on any clone.
    let text =
        report::render(&bench.rows, &ctx).replace(concat!(env!("CARGO_MANIFEST_DIR"), "/"), "");
    report::write(&bench.out, &text);
    println!("{text}");
    eprintln!(
        "e2e: wrote {} in {:.0} s",
        bench.out.display(),
        started.elapsed().as_secs_f64()
    );
}

/// Table order: by figure number as written (`1a`, `1b`, … `10`).
fn figure_order(figure: &str) -> (u32, String) {
    let digits: String = figure.chars().take_while(char::is_ascii_digit).collect();
    (digits.parse().unwrap_or(99), figure.to_owned())
}

struct Bench {
    bins: Bins,
    pin: Pinning,
    dir: PathBuf,
    ca_pem: String,
    seconds: Duration,
    rounds: usize,
    only: Option<Vec<String>>,
    out: PathBuf,
    rows: Vec<Row>,
    details: Vec<String>,
    rt: tokio::runtime::Runtime,
    started_at: String,
}

impl Bench {
    fn new() -> Self {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let dir = root.join("target/bench");
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("certs")).unwrap();
        let ca_pem = common::write_certs(&dir.join("certs"));
        let only: Option<Vec<String>> = std::env::var("BENCH_ONLY")
            .ok()
            .filter(|v| !v.is_empty())
            .map(|v| v.split(',').map(|s| s.trim().to_owned()).collect());
        let out = std::env::var("BENCH_OUT")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                if only.is_some() {
                    dir.join("BENCHMARKS.partial.md")
                } else {
                    root.join("BENCHMARKS.md")
                }
            });
        let env_num = |k: &str, d: u64| {
            std::env::var(k)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(d)
        };
        Self {
            bins: Bins::locate(),
            pin: Pinning::detect(),
            ca_pem,
            seconds: Duration::from_secs(env_num("BENCH_SECONDS", 3)),
            rounds: env_num("BENCH_ROUNDS", 3) as usize,
            only,
            out,
            rows: Vec::new(),
            details: Vec::new(),
            rt: tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .unwrap(),
            started_at: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap(),
            dir,
        }
    }

    fn wants(&self, group: &str) -> bool {
        self.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|g| g == group))
    }

    fn cacert(&self) -> PathBuf {
        self.dir.join("certs/ca.crt")
    }

    fn detail(&mut self, line: String) {
        eprintln!("e2e: {line}");
        self.details.push(line);
    }

    /// `pinhook serve` on 127.0.0.1 with the benchmark certificate and `policy`, optionally
    /// wrapped (e.g. in valgrind).
    fn pinhook(&self, name: &str, policy: &str, wrapper: &[&str]) -> Server {
        let policy_path = self.dir.join(format!("{name}-policy.yaml"));
        std::fs::write(&policy_path, policy).unwrap();
        let certs = self.dir.join("certs");
        let mut args: Vec<String> = wrapper.iter().map(|s| s.to_string()).collect();
        let program = if wrapper.is_empty() {
            self.bins.pinhook.clone()
        } else {
            args.push(self.bins.pinhook.display().to_string());
            PathBuf::from(wrapper[0])
        };
        if !wrapper.is_empty() {
            args.remove(0);
        }
        args.extend(
            [
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--metrics-listen",
                "127.0.0.1:0",
            ]
            .map(String::from),
        );
        args.extend([
            "--tls-cert".into(),
            certs.join("tls.crt").display().to_string(),
            "--tls-key".into(),
            certs.join("tls.key").display().to_string(),
            "--policy".into(),
            policy_path.display().to_string(),
        ]);
        Server::start(
            &program,
            &args,
            self.pin.server,
            &self.dir.join(format!("{name}.log")),
            "pinhook serving",
            "metrics_listen",
        )
    }

    /// The baseline server with the benchmark certificate, optionally wrapped.
    fn baseline(&self, name: &str, wrapper: &[&str]) -> Server {
        let certs = self.dir.join("certs");
        let mut args: Vec<String> = wrapper.iter().skip(1).map(|s| s.to_string()).collect();
        let program = match wrapper.first() {
            Some(w) => {
                args.push(self.bins.baseline.display().to_string());
                PathBuf::from(w)
            }
            None => self.bins.baseline.clone(),
        };
        args.extend([
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--ops-listen".into(),
            "127.0.0.1:0".into(),
            "--tls-cert".into(),
            certs.join("tls.crt").display().to_string(),
            "--tls-key".into(),
            certs.join("tls.key").display().to_string(),
        ]);
        Server::start(
            &program,
            &args,
            self.pin.server,
            &self.dir.join(format!("{name}.log")),
            "baseline serving",
            "ops_listen",
        )
    }

    fn write_body(&self, name: &str, review: &Value) -> PathBuf {
        let path = self.dir.join(name);
        std::fs::write(&path, serde_json::to_vec(review).unwrap()).unwrap();
        path
    }

    /// POSTs `body` to `url` and returns the time to the full answer and the answer.
    fn admit(&self, client: &reqwest::Client, url: &str, body: &Value) -> (Duration, Value) {
        self.rt
            .block_on(admit(client, url, serde_json::to_vec(body).unwrap()))
    }

    // -----------------------------------------------------------------------------------------
    // 1, 2: the warm path

    fn warm(&mut self, lab: &Lab) {
        let images: Vec<String> = (0..3).map(|i| lab.image(&format!("warm-{i}"))).collect();
        let review = reviews::deployment(&images);
        let body = self.write_body("deployment-3.json", &review);
        let pinhook = self.pinhook("pinhook-warm", &lab.policy(), &[]);
        let baseline = self.baseline("baseline-warm", &[]);
        let client = client_for(&self.ca_pem, Http::V2);
        let mutate_url = pinhook.url("/mutate?timeout=10s");
        let rewarm = |b: &Self| {
            let (_, answer) = b.admit(&client, &mutate_url, &review);
            assert_eq!(
                reviews::pinned_count(&answer),
                Ok(3),
                "the warm-path Deployment is not pinned: {answer}"
            );
        };
        rewarm(self);
        let (_, base_answer) = self.admit(&client, &baseline.url("/mutate"), &review);
        assert_eq!(base_answer["response"]["allowed"], true, "{base_answer}");
        let metrics_before = self.rt.block_on(scrape(pinhook.ops));
        self.detail(format!(
            "warm path: pinhook started as `{}`",
            pinhook.command
        ));
        self.detail(format!(
            "warm path: baseline started as `{}`",
            baseline.command
        ));

        let spec = |path: &str, expect: &str| LoadSpec {
            path: path.into(),
            body: body.clone(),
            cacert: self.cacert(),
            connections: 4,
            streams: 16,
            duration: self.seconds,
            warmup: Duration::from_millis(500),
            rate: None,
            expect: expect.into(),
        };
        let mutate = spec("/mutate?timeout=10s", "\"patchType\":\"JSONPatch\"");
        let validate = spec("/validate?timeout=10s", "\"allowed\":true");
        let base = spec("/mutate?timeout=10s", "\"allowed\":true");

        let (mut b_runs, mut m_runs, mut v_runs) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..self.rounds {
            rewarm(self);
            let b = base.run(&self.bins, self.pin, &baseline);
            let m = mutate.run(&self.bins, self.pin, &pinhook);
            let v = validate.run(&self.bins, self.pin, &pinhook);
            for (name, l) in [("baseline", &b), ("/mutate", &m), ("/validate", &v)] {
                assert_eq!(
                    l.errors, 0,
                    "{name}: {} wrong answers, first: {:?}\n{}",
                    l.errors, l.first_error, l.command
                );
            }
            self.detail(format!(
                "round {}: baseline {:.0}/s ({:.1} µs CPU/req), /mutate {:.0}/s ({:.1} µs), \
                 /validate {:.0}/s ({:.1} µs); {}/{}/{} answers checked; load generator CPU \
                 {:.2}/{:.2}/{:.2} s",
                round + 1,
                b.rps,
                b.server_cpu_us,
                m.rps,
                m.server_cpu_us,
                v.rps,
                v.server_cpu_us,
                b.requests,
                m.requests,
                v.requests,
                b.client_cpu_s,
                m.client_cpu_s,
                v.client_cpu_s
            ));
            b_runs.push(b);
            m_runs.push(m);
            v_runs.push(v);
        }
        let metrics_after = self.rt.block_on(scrape(pinhook.ops));
        let registry_calls = sum_metric(&metrics_after, "pinhook_registry_requests_total")
            - sum_metric(&metrics_before, "pinhook_registry_requests_total");
        let hits = metric(
            &metrics_after,
            "pinhook_cache_lookups_total{result=\"hit\"}",
        ) - metric(
            &metrics_before,
            "pinhook_cache_lookups_total{result=\"hit\"}",
        );
        self.detail(format!(
            "warm runs: {hits:.0} cache hits, {registry_calls:.0} registry requests \
             (the re-warm requests between rounds included)"
        ));

        let per_round = |a: &[procs::Load], f: fn(&procs::Load) -> f64| -> Vec<f64> {
            a.iter().map(f).collect()
        };
        let ratios = |xs: &[procs::Load]| -> Vec<f64> {
            xs.iter().zip(&b_runs).map(|(x, b)| x.rps / b.rps).collect()
        };
        let cpu_ratios = |xs: &[procs::Load]| -> Vec<f64> {
            xs.iter()
                .zip(&b_runs)
                .map(|(x, b)| x.server_cpu_us / b.server_cpu_us)
                .collect()
        };
        let b_rps = median(&per_round(&b_runs, |l| l.rps));
        let m_rps = median(&per_round(&m_runs, |l| l.rps));
        let v_rps = median(&per_round(&v_runs, |l| l.rps));
        let m_ratio = median(&ratios(&m_runs));
        let v_ratio = median(&ratios(&v_runs));
        let b_cpu = median(&per_round(&b_runs, |l| l.server_cpu_us));
        let m_cpu = median(&per_round(&m_runs, |l| l.server_cpu_us));
        let v_cpu = median(&per_round(&v_runs, |l| l.server_cpu_us));
        let rounds_note = |rs: Vec<f64>| {
            rs.iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let reproduce =
            |group: &str, cmd: &str| format!("`BENCH_ONLY={group} make bench`; load: `{cmd}`");
        self.rows.push(Row {
            figure: "1a. Warm /mutate throughput (Deployment, 3 cached images)".into(),
            value: format!("{m_rps:.0} req/s"),
            baseline: format!("{b_rps:.0} req/s (baseline server)"),
            ratio: format!(
                "{m_ratio:.2}× (median of rounds: {})",
                rounds_note(ratios(&m_runs))
            ),
            target: "≥ 0.7×".into(),
            met: if m_ratio >= 0.7 { Met::Yes } else { Met::No },
            command: reproduce("warm", &m_runs[0].command),
        });
        self.rows.push(Row {
            figure: "1b. Warm /mutate server CPU per request".into(),
            value: format!("{m_cpu:.1} µs"),
            baseline: format!("{b_cpu:.1} µs"),
            ratio: format!(
                "{:.2}× (rounds: {})",
                median(&cpu_ratios(&m_runs)),
                rounds_note(cpu_ratios(&m_runs))
            ),
            target: "— (explains 1a)".into(),
            met: Met::Info,
            command: "same runs as 1a; CPU from /proc/PID/stat".into(),
        });
        self.rows.push(Row {
            figure: "2a. /validate throughput (same object)".into(),
            value: format!("{v_rps:.0} req/s"),
            baseline: format!("{b_rps:.0} req/s (baseline server)"),
            ratio: format!(
                "{v_ratio:.2}× (median of rounds: {})",
                rounds_note(ratios(&v_runs))
            ),
            target: "≥ 0.8×".into(),
            met: if v_ratio >= 0.8 { Met::Yes } else { Met::No },
            command: reproduce("warm", &v_runs[0].command),
        });
        self.rows.push(Row {
            figure: "2b. /validate server CPU per request".into(),
            value: format!("{v_cpu:.1} µs"),
            baseline: format!("{b_cpu:.1} µs"),
            ratio: format!("{:.2}×", median(&cpu_ratios(&v_runs))),
            target: "— (explains 2a)".into(),
            met: Met::Info,
            command: "same runs as 2a".into(),
        });

        // Latency at a fixed rate: half of pinhook's own maximum, baseline at the same rate.
        let rate = (m_rps / 2.0).floor();
        let fixed = LoadSpec {
            rate: Some(rate),
            duration: self.seconds * 2,
            ..mutate.clone()
        };
        rewarm(self);
        let ml = fixed.run(&self.bins, self.pin, &pinhook);
        let bl = LoadSpec {
            expect: base.expect.clone(),
            ..fixed.clone()
        }
        .run(&self.bins, self.pin, &baseline);
        assert_eq!(ml.errors, 0, "{:?}", ml.first_error);
        self.detail(format!(
            "fixed rate {rate:.0}/s: pinhook p50/p90/p99/p99.9 {}/{}/{}/{}; baseline {}/{}/{}/{}; \
             load generator lateness p99 {} / {} (p99 counted from the intended start: pinhook {}, \
             baseline {})",
            ms(ml.p50),
            ms(ml.p90),
            ms(ml.p99),
            ms(ml.p999),
            ms(bl.p50),
            ms(bl.p90),
            ms(bl.p99),
            ms(bl.p999),
            ms(ml.lag_p99),
            ms(bl.lag_p99),
            ms(ml.p99_intended),
            ms(bl.p99_intended)
        ));
        self.rows.push(Row {
            figure: format!("1c. Warm /mutate latency at a fixed {rate:.0} req/s (half of 1a)"),
            value: format!(
                "p99 {} (p50 {}, p99.9 {}; {:.0} req/s served)",
                ms(ml.p99),
                ms(ml.p50),
                ms(ml.p999),
                ml.rps
            ),
            baseline: format!(
                "p99 {} (p50 {}, p99.9 {}) at the same rate",
                ms(bl.p99),
                ms(bl.p50),
                ms(bl.p999)
            ),
            ratio: ratio(ml.p99, bl.p99),
            target: "p99 < 1 ms".into(),
            met: if ml.p99 < 1000.0 { Met::Yes } else { Met::No },
            command: reproduce("warm", &ml.command),
        });

        // One request at a time: the latency floor.
        let single = LoadSpec {
            connections: 1,
            streams: 1,
            ..mutate.clone()
        };
        rewarm(self);
        let ms1 = single.run(&self.bins, self.pin, &pinhook);
        let bs1 = LoadSpec {
            expect: base.expect.clone(),
            ..single.clone()
        }
        .run(&self.bins, self.pin, &baseline);
        self.rows.push(Row {
            figure: "1d. Warm /mutate latency, one request in flight".into(),
            value: format!("p50 {}, p99 {}", ms(ms1.p50), ms(ms1.p99)),
            baseline: format!("p50 {}, p99 {}", ms(bs1.p50), ms(bs1.p99)),
            ratio: ratio(ms1.p50, bs1.p50) + " (p50)",
            target: "—".into(),
            met: Met::Info,
            command: reproduce("warm", &ms1.command),
        });

        // The same comparison with another client: h2load (nghttp2), if installed.
        rewarm(self);
        let h = |s: &Server, path: &str| {
            procs::h2load(
                self.pin,
                s,
                path,
                &body,
                4,
                16,
                self.seconds.as_secs().max(1),
            )
        };
        if let (Some(hb), Some(hm), Some(hv)) = (
            h(&baseline, "/mutate?timeout=10s"),
            h(&pinhook, "/mutate?timeout=10s"),
            h(&pinhook, "/validate?timeout=10s"),
        ) {
            let all_ok = [&hb, &hm, &hv].iter().all(|r| r.ok == r.done && r.done > 0);
            self.rows.push(Row {
                figure: "1e. Cross-check of 1a and 2a with h2load".into(),
                value: format!("/mutate {:.0} req/s, /validate {:.0} req/s", hm.rps, hv.rps),
                baseline: format!("{:.0} req/s", hb.rps),
                ratio: format!(
                    "/mutate {}, /validate {}",
                    ratio(hm.rps, hb.rps),
                    ratio(hv.rps, hb.rps)
                ),
                target: "same targets as 1a, 2a".into(),
                met: if !all_ok {
                    Met::No
                } else if hm.rps / hb.rps >= 0.7 && hv.rps / hb.rps >= 0.8 {
                    Met::Yes
                } else {
                    Met::No
                },
                command: format!("`{}`", hm.command),
            });
        } else {
            self.detail(
                "h2load not installed (scripts/install-bench-deps.sh): no cross-check".into(),
            );
        }
        // And with oha, when it is installed (too long to build for `make bench` itself).
        if let Some(oha) = procs::oha_binary() {
            let cacert = self.cacert();
            let run = |s: &Server, path: &str, rate: Option<f64>| {
                procs::oha(
                    &oha,
                    self.pin,
                    s,
                    path,
                    &body,
                    &cacert,
                    4,
                    16,
                    self.seconds.as_secs().max(1),
                    rate,
                )
            };
            rewarm(self);
            let runs = (
                run(&baseline, "/mutate?timeout=10s", None),
                run(&pinhook, "/mutate?timeout=10s", None),
                run(&pinhook, "/validate?timeout=10s", None),
                run(&baseline, "/mutate?timeout=10s", Some(rate)),
                run(&pinhook, "/mutate?timeout=10s", Some(rate)),
            );
            if let (Some(ob), Some(om), Some(ov), Some(obr), Some(omr)) = runs {
                let all_ok = [&ob, &om, &ov, &obr, &omr]
                    .iter()
                    .all(|r| r.ok > 0 && r.not_ok == 0);
                self.rows.push(Row {
                    figure: "1f. Cross-check of 1a, 2a and 1c with oha".into(),
                    value: format!(
                        "/mutate {:.0} req/s, /validate {:.0} req/s; /mutate p99 {} at {rate:.0} req/s",
                        om.rps,
                        ov.rps,
                        ms(omr.p99)
                    ),
                    baseline: format!("{:.0} req/s; p99 {} at {rate:.0} req/s", ob.rps, ms(obr.p99)),
                    ratio: format!(
                        "/mutate {}, /validate {}; p99 {}",
                        ratio(om.rps, ob.rps),
                        ratio(ov.rps, ob.rps),
                        ratio(omr.p99, obr.p99)
                    ),
                    target: "same targets as 1a, 2a, 1c".into(),
                    met: if all_ok
                        && om.rps / ob.rps >= 0.7
                        && ov.rps / ob.rps >= 0.8
                        && omr.p99 < 1000.0
                    {
                        Met::Yes
                    } else {
                        Met::No
                    },
                    command: format!("`{}`", om.command),
                });
            }
        } else {
            self.detail(
                "oha not installed (`cargo install --locked oha`): no oha cross-check".into(),
            );
        }
        self.detail(format!(
            "pinhook RSS after the warm-path runs: {:.1} MiB; baseline: {:.1} MiB",
            pinhook.rss_kib() as f64 / 1024.0,
            baseline.rss_kib() as f64 / 1024.0
        ));
    }

    // -----------------------------------------------------------------------------------------
    // 3: the cold path

    fn cold(&mut self, lab: &Lab) {
        lab.proxy.set_mode(ProxyMode::Delay(RTT_DELAY));
        let pinhook = self.pinhook("pinhook-cold", &lab.policy(), &[]);
        let client = client_for(&self.ca_pem, Http::V2);
        let registry_client = client_for(&lab.registry.ca_pem().unwrap(), Http::V2);
        let url = pinhook.url("/mutate?timeout=10s");
        // HEADs of `tags` sent at once on the harness's connection. One is the registry round
        // trip (3a's baseline); five are what the registry and proxy need to answer five tags,
        // whoever asks (the floor under 3b).
        let heads = |tags: &[String]| {
            self.rt.block_on(async {
                let t0 = Instant::now();
                let all = tags.iter().map(|tag| {
                    let u = format!("https://{}/v2/{REPO}/manifests/{tag}", lab.proxy.host());
                    let req = registry_client
                        .head(u)
                        .header("accept", MANIFEST_ACCEPT)
                        .send();
                    async move {
                        let resp = req.await.expect("HEAD through the proxy");
                        assert!(resp.status().is_success(), "HEAD: {}", resp.status());
                    }
                });
                futures_util::future::join_all(all).await;
                t0.elapsed()
            })
        };
        let admit_new = |tags: &[String]| {
            let images: Vec<String> = tags.iter().map(|t| lab.image(t)).collect();
            let (t, answer) = self.admit(&client, &url, &reviews::deployment(&images));
            assert_eq!(
                reviews::pinned_count(&answer),
                Ok(images.len()),
                "cold admission not pinned: {answer}"
            );
            t
        };
        // Warm the connections (TCP + TLS through the proxy) on both sides first.
        heads(&["cold-warm-rtt".into()]);
        admit_new(&["cold-warm-1".into()]);
        admit_new(
            &(0..5)
                .map(|j| format!("cold-warm-5-{j}"))
                .collect::<Vec<_>>(),
        );
        let (mut rtt, mut one, mut five) = (Vec::new(), Vec::new(), Vec::new());
        let mut five_heads = Vec::new();
        for i in 0..COLD_SAMPLES {
            rtt.push(heads(&[format!("rtt-{i}")]).as_secs_f64() * 1e3);
            five_heads.push(
                heads(&(0..5).map(|j| format!("rtt5-{i}-{j}")).collect::<Vec<_>>()).as_secs_f64()
                    * 1e3,
            );
            one.push(admit_new(&[format!("cold1-{i}")]).as_secs_f64() * 1e3);
            five.push(
                admit_new(&(0..5).map(|j| format!("cold5-{i}-{j}")).collect::<Vec<_>>())
                    .as_secs_f64()
                    * 1e3,
            );
        }
        let asked: usize = (0..COLD_SAMPLES)
            .map(|i| lab.registry.manifest_requests(REPO, &format!("cold1-{i}")))
            .sum();
        let (rtt_m, one_m, five_m) = (median(&rtt), median(&one), median(&five));
        self.detail(format!(
            "cold path ({COLD_SAMPLES} samples each, interleaved, {} ms added per round trip): \
             registry HEAD {}; five HEADs at once {}; one new image {}; five new images {}; \
             manifest requests for the {COLD_SAMPLES} one-image admissions: {asked}",
            RTT_DELAY.as_millis(),
            spread(&rtt),
            spread(&five_heads),
            spread(&one),
            spread(&five)
        ));
        let r1 = one_m / rtt_m;
        let r5 = five_m / one_m;
        self.rows.push(Row {
            figure: "3a. Cold /mutate: one new image (20 ms per registry round trip)".into(),
            value: format!("{one_m:.1} ms (median of {COLD_SAMPLES})"),
            baseline: format!("{rtt_m:.1} ms: one manifest HEAD through the same proxy"),
            ratio: format!("{r1:.2}×"),
            target: "≤ 1.2×".into(),
            met: if r1 <= 1.2 && asked == COLD_SAMPLES {
                Met::Yes
            } else {
                Met::No
            },
            command: "`BENCH_ONLY=cold make bench`".into(),
        });
        self.rows.push(Row {
            figure: "3b. Cold /mutate: a pod with 5 new images".into(),
            value: format!(
                "{five_m:.1} ms (median of {COLD_SAMPLES}); five HEADs sent at once by the \
                 harness take {:.1} ms ({:.2}× one HEAD)",
                median(&five_heads),
                median(&five_heads) / rtt_m
            ),
            baseline: format!("{one_m:.1} ms: one new image (3a)"),
            ratio: format!("{r5:.2}×"),
            target: "≤ 1.3×".into(),
            met: if r5 <= 1.3 { Met::Yes } else { Met::No },
            command: "`BENCH_ONLY=cold make bench`".into(),
        });
    }

    // -----------------------------------------------------------------------------------------
    // 4: single flight

    fn single_flight(&mut self, lab: &Lab) {
        lab.proxy.set_mode(ProxyMode::Delay(SINGLE_FLIGHT_DELAY));
        let pinhook = self.pinhook("pinhook-singleflight", &lab.policy(), &[]);
        let body = serde_json::to_vec(&reviews::deployment(&[lab.image("single-flight")])).unwrap();
        let url = pinhook.url("/mutate?timeout=10s");
        let clients: Vec<reqwest::Client> =
            (0..5).map(|_| client_for(&self.ca_pem, Http::V2)).collect();
        // Open the five connections first, so the 500 requests leave together.
        for c in &clients {
            let (_, answer) = self.admit(c, &pinhook.url("/validate"), &reviews::deployment(&[]));
            assert_eq!(answer["response"]["allowed"], true);
        }
        let results = self.rt.block_on(async {
            let t0 = Instant::now();
            let mut set = tokio::task::JoinSet::new();
            for i in 0..SINGLE_FLIGHT_ADMISSIONS {
                let (c, url, body) = (
                    clients[i % clients.len()].clone(),
                    url.clone(),
                    body.clone(),
                );
                set.spawn(async move {
                    let start = t0.elapsed();
                    let (_, answer) = admit(&c, &url, body).await;
                    (start, t0.elapsed(), answer)
                });
            }
            let mut out = Vec::new();
            while let Some(r) = set.join_next().await {
                out.push(r.unwrap());
            }
            out
        });
        lab.proxy.set_mode(ProxyMode::Delay(RTT_DELAY));
        let first_end = results.iter().map(|r| r.1).min().unwrap();
        let overlapping = results.iter().filter(|r| r.0 < first_end).count();
        let right_digest = results
            .iter()
            .filter(|r| reviews::pinned_digests(&r.2) == vec![lab.digest.clone()])
            .count();
        let manifests = lab.registry.manifest_requests(REPO, "single-flight");
        let metrics = self.rt.block_on(scrape(pinhook.ops));
        self.detail(format!(
            "single flight: {SINGLE_FLIGHT_ADMISSIONS} admissions over 5 HTTP/2 connections, \
             {overlapping} of them sent before the first answer arrived \
             ({} ms added per registry round trip); {right_digest} pinned to skopeo's digest; \
             cache lookups: {:.0} miss, {:.0} hit",
            SINGLE_FLIGHT_DELAY.as_millis(),
            metric(&metrics, "pinhook_cache_lookups_total{result=\"miss\"}"),
            metric(&metrics, "pinhook_cache_lookups_total{result=\"hit\"}"),
        ));
        self.rows.push(Row {
            figure: "4. Single flight: 500 concurrent admissions of one new image".into(),
            value: format!(
                "{manifests} manifest request(s) in the registry's access log \
                 ({overlapping} admissions in flight together, {right_digest}/{SINGLE_FLIGHT_ADMISSIONS} pinned right)"
            ),
            baseline: "1 (one lookup is the least possible)".into(),
            ratio: ratio(manifests as f64, 1.0),
            target: "exactly 1".into(),
            met: if manifests == 1 && right_digest == SINGLE_FLIGHT_ADMISSIONS {
                Met::Yes
            } else {
                Met::No
            },
            command: "`BENCH_ONLY=singleflight make bench`".into(),
        });
    }

    // -----------------------------------------------------------------------------------------
    // 5: memory with 100,000 cached digests

    fn memory(&mut self) {
        let fake = serve_router(
            "fake-registry",
            axum::Router::new()
                .route("/v2/", axum::routing::any(|| async { "{}" }))
                .route("/v2/{*rest}", axum::routing::any(fake_manifest)),
        );
        let host = fake.addr.to_string();
        let policy = format!("registries:\n  - host: \"{host}\"\n    insecure: true\n");
        let pinhook = self.pinhook("pinhook-memory", &policy, &[]);
        let client = client_for(&self.ca_pem, Http::V2);
        let url = pinhook.url("/mutate?timeout=30s");
        std::thread::sleep(Duration::from_millis(300));
        let rss_idle = pinhook.rss_kib();
        let image = |i: usize| format!("{host}/team-{:03}/service-{:02}:1.{i}.0", i % 499, i % 97);
        let mut key_bytes = 0usize;
        let mut fill = |from: usize, to: usize| {
            let pods: Vec<Vec<u8>> = (from..to)
                .step_by(FILL_IMAGES_PER_POD)
                .map(|start| {
                    let images: Vec<String> = (start..(start + FILL_IMAGES_PER_POD).min(to))
                        .map(image)
                        .collect();
                    key_bytes += images.iter().map(String::len).sum::<usize>();
                    serde_json::to_vec(&reviews::pod(&images, &format!("fill-{start}"))).unwrap()
                })
                .collect();
            let pinned = self.rt.block_on(async {
                let mut pinned = 0usize;
                let mut set = tokio::task::JoinSet::new();
                for body in pods {
                    while set.len() >= 4 {
                        pinned += set.join_next().await.unwrap().unwrap();
                    }
                    let (c, url) = (client.clone(), url.clone());
                    set.spawn(async move {
                        let (_, answer) = admit(&c, &url, body).await;
                        reviews::pinned_count(&answer)
                            .unwrap_or_else(|e| panic!("fill admission: {e}"))
                    });
                }
                while let Some(r) = set.join_next().await {
                    pinned += r.unwrap();
                }
                pinned
            });
            assert_eq!(pinned, to - from, "every image of the fill must be pinned");
        };
        let t0 = Instant::now();
        fill(0, FILL_WARM_ENTRIES);
        std::thread::sleep(Duration::from_millis(500));
        let rss_warm = pinhook.rss_kib();
        fill(FILL_WARM_ENTRIES, FILL_ENTRIES);
        let fill_seconds = t0.elapsed().as_secs_f64();
        std::thread::sleep(Duration::from_secs(1));
        let rss_full = pinhook.rss_kib();
        let metrics = self.rt.block_on(scrape(pinhook.ops));
        let entries = metric(&metrics, "pinhook_cache_entries");
        let misses = metric(&metrics, "pinhook_cache_lookups_total{result=\"miss\"}");
        let per_entry = (rss_full.saturating_sub(rss_warm)) as f64 * 1024.0
            / (FILL_ENTRIES - FILL_WARM_ENTRIES) as f64;
        // The information an entry must hold: the image reference and a 32-byte digest.
        let raw = key_bytes as f64 / FILL_ENTRIES as f64 + 32.0;
        self.detail(format!(
            "memory: {FILL_ENTRIES} images in {} pods of {FILL_IMAGES_PER_POD} through /mutate \
             in {fill_seconds:.1} s; RSS idle {:.1} MiB, after {FILL_WARM_ENTRIES} entries {:.1} MiB, \
             after {FILL_ENTRIES} {:.1} MiB; cache entries reported: {entries:.0}, misses {misses:.0}",
            FILL_ENTRIES / FILL_IMAGES_PER_POD,
            kib_mib(rss_idle),
            kib_mib(rss_warm),
            kib_mib(rss_full),
        ));
        let full_ok =
            entries == FILL_ENTRIES as f64 || (entries == 0.0 && misses >= FILL_ENTRIES as f64);
        self.rows.push(Row {
            figure: "5b. RSS with 100,000 cached digests".into(),
            value: format!("{:.1} MiB", kib_mib(rss_full)),
            baseline: format!("{:.1} MiB: the same process idle", kib_mib(rss_idle)),
            ratio: ratio(rss_full as f64, rss_idle as f64),
            target: "≤ 100 MiB".into(),
            met: if kib_mib(rss_full) <= 100.0 && full_ok {
                Met::Yes
            } else {
                Met::No
            },
            command: "`BENCH_ONLY=memory make bench`".into(),
        });
        self.rows.push(Row {
            figure: "5c. Memory per cached digest".into(),
            value: format!("{per_entry:.0} bytes"),
            baseline: format!(
                "{raw:.0} bytes: the entry's information (reference as written + 32-byte digest)"
            ),
            ratio: ratio(per_entry, raw),
            target: "— (report)".into(),
            met: Met::Info,
            command: "`BENCH_ONLY=memory make bench`".into(),
        });
    }

    // -----------------------------------------------------------------------------------------
    // 5a, 6: start-up and idle memory

    fn startup(&mut self) {
        let certs = self.dir.join("certs");
        let tls = |a: &mut Vec<String>| {
            a.extend([
                "--tls-cert".into(),
                certs.join("tls.crt").display().to_string(),
                "--tls-key".into(),
                certs.join("tls.key").display().to_string(),
            ])
        };
        let (mut p_ms, mut b_ms, mut p_rss, mut b_rss) = (vec![], vec![], vec![], vec![]);
        let mut p_cmd = String::new();
        for _ in 0..STARTUP_RUNS {
            for which in ["pinhook", "baseline"] {
                let (listen, ops) = (free_port(), free_port());
                let ops_addr: std::net::SocketAddr = format!("127.0.0.1:{ops}").parse().unwrap();
                let (program, mut args) = if which == "pinhook" {
                    (
                        self.bins.pinhook.clone(),
                        vec![
                            "serve".to_string(),
                            "--listen".into(),
                            format!("127.0.0.1:{listen}"),
                            "--metrics-listen".into(),
                            format!("127.0.0.1:{ops}"),
                        ],
                    )
                } else {
                    (
                        self.bins.baseline.clone(),
                        vec![
                            "--listen".into(),
                            format!("127.0.0.1:{listen}"),
                            "--ops-listen".into(),
                            format!("127.0.0.1:{ops}"),
                        ],
                    )
                };
                tls(&mut args);
                if which == "pinhook" {
                    p_cmd = format!(
                        "{}{} {}",
                        Pinning::prefix(self.pin.server),
                        program.display(),
                        args.join(" ")
                    );
                }
                // On the servers' CPU like every other server here: left on the harness's CPU,
                // the server would share it with the poller below.
                let t0 = Instant::now();
                let mut child = Pinning::command(self.pin.server, &program)
                    .args(&args)
                    .env_remove("KUBECONFIG")
                    .stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap();
                let ready = loop {
                    if procs::http_status(ops_addr, "/readyz") == Some(200) {
                        break t0.elapsed();
                    }
                    if let Ok(Some(s)) = child.try_wait() {
                        panic!("{which} exited with {s} during start-up");
                    }
                    assert!(
                        t0.elapsed() < Duration::from_secs(20),
                        "{which} never ready"
                    );
                    std::thread::sleep(Duration::from_micros(200));
                };
                std::thread::sleep(Duration::from_millis(300));
                let rss = procs::rss_kib(child.id());
                let _ = child.kill();
                let _ = child.wait();
                let ms = ready.as_secs_f64() * 1e3;
                if which == "pinhook" {
                    p_ms.push(ms);
                    p_rss.push(rss as f64);
                } else {
                    b_ms.push(ms);
                    b_rss.push(rss as f64);
                }
            }
        }
        let (pm, bm) = (median(&p_ms), median(&b_ms));
        let (pr, br) = (median(&p_rss) / 1024.0, median(&b_rss) / 1024.0);
        self.detail(format!(
            "start-up to /readyz 200 over {STARTUP_RUNS} runs each (interleaved): pinhook {}; \
             baseline {}",
            spread(&p_ms),
            spread(&b_ms)
        ));
        self.rows.push(Row {
            figure: "5a. RSS idle (after start-up)".into(),
            value: format!("{pr:.1} MiB"),
            baseline: format!("{br:.1} MiB (baseline server)"),
            ratio: ratio(pr, br),
            target: "≤ 20 MiB".into(),
            met: if pr <= 20.0 { Met::Yes } else { Met::No },
            command: format!(
                "`BENCH_ONLY=startup make bench`: VmRSS of `{p_cmd}` 300 ms after /readyz"
            ),
        });
        self.rows.push(Row {
            figure: format!("6. Start-up: process start to /readyz 200 (median of {STARTUP_RUNS})"),
            value: format!("{pm:.1} ms"),
            baseline: format!("{bm:.1} ms (baseline server)"),
            ratio: ratio(pm, bm),
            target: "≤ 100 ms".into(),
            met: if pm <= 100.0 { Met::Yes } else { Met::No },
            command: format!(
                "`BENCH_ONLY=startup make bench`: `{p_cmd}`, GET /readyz every 0.2 ms"
            ),
        });
    }

    // -----------------------------------------------------------------------------------------
    // 7: binary size

    fn size(&mut self) {
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let stripped =
            |p: &Path| std::fs::read(p).is_ok_and(|b| !b.windows(7).any(|w| w == b".symtab"));
        let (p, b) = (size(&self.bins.pinhook), size(&self.bins.baseline));
        let mib = |n: u64| n as f64 / (1024.0 * 1024.0);
        self.rows.push(Row {
            figure: "7. Release binary size, stripped".into(),
            value: format!(
                "{:.1} MiB{}",
                mib(p),
                if stripped(&self.bins.pinhook) {
                    ""
                } else {
                    " (NOT stripped)"
                }
            ),
            baseline: format!("{:.1} MiB (baseline server, same profile)", mib(b)),
            ratio: ratio(p as f64, b as f64),
            target: "— (report)".into(),
            met: Met::Info,
            command: format!("`stat -c %s {}`", self.bins.pinhook.display()),
        });
        // The image (Dockerfile) is `scratch` plus two files: the static binary that
        // scripts/build-static.sh builds and the CA bundle. No container engine runs here, so
        // its size is the sum of those files; the static build (minutes) is not redone here.
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let arch = std::env::consts::ARCH;
        let static_bin = root.join(format!("target/{arch}-unknown-linux-gnu/release/pinhook"));
        let ca_bundle = Path::new("/etc/ssl/certs/ca-certificates.crt");
        let (s, c) = (size(&static_bin), size(ca_bundle));
        self.rows.push(Row {
            figure: "7b. Container image size (its files, uncompressed)".into(),
            value: if s == 0 {
                "not measured: the static binary is not built (run `make static` first)".into()
            } else {
                format!(
                    "{:.1} MiB (static binary {:.1} MiB + CA bundle {:.2} MiB)",
                    mib(s + c),
                    mib(s),
                    mib(c)
                )
            },
            baseline: format!("{:.1} MiB (the release binary of 7)", mib(p)),
            ratio: if s == 0 {
                "—".into()
            } else {
                ratio((s + c) as f64, p as f64)
            },
            target: "— (report)".into(),
            met: Met::Info,
            command: format!(
                "`make static && stat -c %s {} {}`",
                static_bin.display(),
                ca_bundle.display()
            ),
        });
    }

    // -----------------------------------------------------------------------------------------
    // 8: instructions per request (callgrind)

    fn callgrind(&mut self, lab: &Lab) {
        if std::process::Command::new("valgrind")
            .arg("--version")
            .output()
            .is_err()
        {
            self.detail("valgrind not installed: no instruction counts".into());
            return;
        }
        let images: Vec<String> = (0..3).map(|i| lab.image(&format!("warm-{i}"))).collect();
        let review = reviews::deployment(&images);
        let body = serde_json::to_vec(&review).unwrap();
        let client = client_for(&self.ca_pem, Http::V2);
        let out_dir = self.dir.join("callgrind");
        std::fs::create_dir_all(&out_dir).unwrap();
        let mut counts = Vec::new();
        for (name, path) in [
            ("baseline", "/mutate?timeout=30s"),
            ("mutate", "/mutate?timeout=30s"),
            ("validate", "/validate?timeout=30s"),
        ] {
            let out_file = out_dir.join(format!("{name}.out"));
            let out_arg = format!("--callgrind-out-file={}", out_file.display());
            let wrapper = ["valgrind", "--tool=callgrind", out_arg.as_str()];
            let server = if name == "baseline" {
                self.baseline("baseline-callgrind", &wrapper)
            } else {
                self.pinhook(
                    &format!("pinhook-callgrind-{name}"),
                    &lab.policy(),
                    &wrapper,
                )
            };
            let url = server.url(path);
            let send = |n: usize| {
                self.rt.block_on(async {
                    let mut set = tokio::task::JoinSet::new();
                    for i in 0..n {
                        while set.len() >= 8 {
                            set.join_next().await.unwrap().unwrap();
                        }
                        let (c, url, body) = (client.clone(), url.clone(), body.clone());
                        set.spawn(async move {
                            let (_, answer) = admit(&c, &url, body).await;
                            assert_eq!(
                                answer["response"]["allowed"], true,
                                "request {i}: {answer}"
                            );
                        });
                    }
                    while let Some(r) = set.join_next().await {
                        r.unwrap();
                    }
                })
            };
            send(CALLGRIND_WARMUP);
            let control = |flag: &str| {
                let out = std::process::Command::new("callgrind_control")
                    .arg(flag)
                    .arg(server.pid().to_string())
                    .output()
                    .expect("callgrind_control");
                assert!(
                    out.status.success(),
                    "callgrind_control {flag}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            };
            control("--zero");
            send(CALLGRIND_REQUESTS);
            control("--dump");
            let total = dumped_instructions(&out_dir, &format!("{name}.out"));
            counts.push((name, total as f64 / CALLGRIND_REQUESTS as f64));
            drop(server);
        }
        let base = counts[0].1;
        self.detail(format!(
            "callgrind: {CALLGRIND_REQUESTS} requests after {CALLGRIND_WARMUP} of warm-up, 8 in \
             flight over one HTTP/2 connection; instructions per request: {}",
            counts
                .iter()
                .map(|(n, c)| format!("{n} {c:.0}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for (figure, i, name) in [
            (
                "8a. Instructions per warm /mutate request (callgrind)",
                1,
                "mutate",
            ),
            (
                "8b. Instructions per /validate request (callgrind)",
                2,
                "validate",
            ),
        ] {
            self.rows.push(Row {
                figure: figure.into(),
                value: format!("{:.0}", counts[i].1),
                baseline: format!("{base:.0} (baseline server)"),
                ratio: ratio(counts[i].1, base),
                target: "— (exact; explains 1a/2a)".into(),
                met: Met::Info,
                command: format!(
                    "`BENCH_ONLY=callgrind make bench`: `valgrind --tool=callgrind` on the {name} server, `callgrind_control --zero`, {CALLGRIND_REQUESTS} requests, `--dump`"
                ),
            });
        }
    }
}

/// The `summary:`/`totals:` Ir of the newest dump file named `prefix…` in `dir`.
fn dumped_instructions(dir: &Path, prefix: &str) -> u64 {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix))
        })
        .collect();
    files.sort_by_key(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok());
    let newest = files.last().expect("callgrind wrote no dump");
    let text = std::fs::read_to_string(newest).unwrap();
    text.lines()
        .find_map(|l| {
            l.strip_prefix("summary:")
                .or_else(|| l.strip_prefix("totals:"))
        })
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no totals in {}", newest.display()))
}

async fn fake_manifest(UrlPath(rest): UrlPath<String>) -> axum::response::Response {
    if !rest.contains("/manifests/") {
        return StatusCode::NOT_FOUND.into_response();
    }
    let hex: String = sha2::Sha256::digest(rest.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let digest = format!("sha256:{hex}");
    let mut headers = HeaderMap::new();
    headers.insert(
        "docker-content-digest",
        HeaderValue::from_str(&digest).unwrap(),
    );
    headers.insert(
        "content-type",
        HeaderValue::from_static("application/vnd.oci.image.manifest.v1+json"),
    );
    (headers, "{}").into_response()
}

/// The registry, the delaying proxy in front of it, and tags to resolve.
struct Lab {
    registry: Registry,
    proxy: DelayProxy,
    digest: String,
}

impl Lab {
    fn start(bench: &Bench) -> Self {
        let registry = Registry::start(RegistryOptions {
            tls: true,
            ..Default::default()
        });
        let digest = registry.push(REPO, "seed", &TestImage::single("pinhook-bench"));
        let client = registry.client();
        let mut tags: Vec<String> = vec![
            "cold-warm-rtt".into(),
            "cold-warm-1".into(),
            "single-flight".into(),
        ];
        tags.extend((0..3).map(|i| format!("warm-{i}")));
        tags.extend((0..apiserver::COLD_TAGS).map(apiserver::cold_tag));
        tags.extend((0..5).map(|j| format!("cold-warm-5-{j}")));
        for i in 0..COLD_SAMPLES {
            tags.push(format!("rtt-{i}"));
            tags.extend((0..5).map(|j| format!("rtt5-{i}-{j}")));
            tags.push(format!("cold1-{i}"));
            tags.extend((0..5).map(|j| format!("cold5-{i}-{j}")));
        }
        let base = registry.url(&format!("/v2/{REPO}/manifests"));
        bench.rt.block_on(async {
            let resp = client
                .get(format!("{base}/seed"))
                .header("accept", MANIFEST_ACCEPT)
                .send()
                .await
                .unwrap();
            assert!(
                resp.status().is_success(),
                "GET seed manifest: {}",
                resp.status()
            );
            let media = resp.headers()["content-type"].to_str().unwrap().to_owned();
            let manifest = resp.bytes().await.unwrap();
            let mut set = tokio::task::JoinSet::new();
            for tag in tags {
                while set.len() >= 8 {
                    set.join_next().await.unwrap().unwrap();
                }
                let (client, url, media, manifest) = (
                    client.clone(),
                    format!("{base}/{tag}"),
                    media.clone(),
                    manifest.clone(),
                );
                set.spawn(async move {
                    let resp = client
                        .put(&url)
                        .header("content-type", media)
                        .body(manifest)
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(resp.status(), StatusCode::CREATED, "PUT {url}");
                });
            }
            while let Some(r) = set.join_next().await {
                r.unwrap();
            }
        });
        let proxy = DelayProxy::start(registry.addr, ProxyMode::Delay(RTT_DELAY));
        Self {
            registry,
            proxy,
            digest,
        }
    }

    /// `127.0.0.1:PROXYPORT/bench/app:TAG`.
    fn image(&self, tag: &str) -> String {
        format!("{}/{REPO}:{tag}", self.proxy.host())
    }

    /// A policy trusting the registry's CA behind the proxy; everything else built in.
    fn policy(&self) -> String {
        format!(
            "registries:\n  - host: \"{}\"\n    caFile: \"{}\"\n",
            self.proxy.host(),
            self.registry.ca_file().unwrap().display()
        )
    }
}

async fn admit(client: &reqwest::Client, url: &str, body: Vec<u8>) -> (Duration, Value) {
    let t0 = Instant::now();
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("POST {url}: {e}"));
    let status = resp.status();
    let bytes = resp.bytes().await.expect("answer body");
    let elapsed = t0.elapsed();
    assert_eq!(
        status,
        StatusCode::OK,
        "POST {url}: {}",
        String::from_utf8_lossy(&bytes)
    );
    let answer = serde_json::from_slice(&bytes).expect("answer is JSON");
    (elapsed, answer)
}

async fn scrape(ops: std::net::SocketAddr) -> String {
    reqwest::get(format!("http://{ops}/metrics"))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .unwrap()
}

/// The value of the sample named exactly `name` (with its labels), 0 when absent.
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

/// The sum of every sample of `family` (any labels).
fn sum_metric(text: &str, family: &str) -> f64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(family)
                .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// `median M ms (min A, max B)`.
fn spread(xs: &[f64]) -> String {
    let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
    let max = xs.iter().copied().fold(0.0, f64::max);
    format!("median {:.2} ms (min {min:.2}, max {max:.2})", median(xs))
}

fn ms(us: f64) -> String {
    format!("{:.3} ms", us / 1000.0)
}

fn kib_mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn command_output(program: &str, args: &[&str]) -> String {
    std::process::Command::new(program)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn git_commit() -> String {
    let dir = env!("CARGO_MANIFEST_DIR");
    let head = command_output("git", &["-C", dir, "rev-parse", "--short", "HEAD"]);
    let dirty = !command_output(
        "git",
        &["-C", dir, "status", "--porcelain", "--untracked-files=no"],
    )
    .is_empty();
    if dirty {
        format!("{head} (with uncommitted changes)")
    } else {
        head
    }
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown".into());
    let n = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{n} × {model}")
}
