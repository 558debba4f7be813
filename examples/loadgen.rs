//! An HTTP/2-over-TLS load generator for the benchmarks (BENCHMARKS.md): many connections, many
//! concurrent streams per connection, a closed-loop mode (as fast as the server answers) and a
//! fixed-rate open-loop mode, latency percentiles p50/p90/p99/p99.9, and a check of every answer.
//!
//! ```text
//! loadgen --url https://localhost:8443/mutate?timeout=10s --body review.json --cacert ca.crt \
//!         [--connect 127.0.0.1:8443] [--connections 4] [--streams 16] \
//!         [--duration 3s] [--warmup 500ms] [--rate 5000] [--expect '"allowed":true']
//! ```
//!
//! Closed loop (no `--rate`): `connections × streams` requests are always in flight. Fixed rate
//! (`--rate R`): a pacing thread releases request `i` at `start + i/R` whatever the server is
//! doing (open loop: a slow server never slows the sending, so there is no coordinated
//! omission), spread over the connections. Each latency runs from the moment the request is
//! handed to the HTTP/2 stack (waiting for a stream slot included) to the last byte of the
//! answer. How late the generator itself released requests is reported apart (`lag_p99_us`,
//! `lag_max_us`), and the latency counted from the intended start too (`p99_intended_us`), so a
//! busy client cannot pass for a slow server. Requests released during `--warmup` are sent but
//! not counted. An answer that is not HTTP 200, or lacks the `--expect` text, is an error.
//!
//! It prints one JSON object: `requests`, `errors`, `seconds`, `rps`, `p50_us`, `p90_us`,
//! `p99_us`, `p999_us`, `max_us`, `mean_us`, its own CPU seconds (`cpu_seconds`) and, at a
//! fixed rate, the lag figures above.
//!
//! Why not oha or h2load: see BENCHMARKS.md ("Load generator").

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http2::SendRequest;
use hyper::{Request, Uri};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};

struct Args {
    url: Uri,
    connect: Option<SocketAddr>,
    body: Bytes,
    cacert: PathBuf,
    connections: usize,
    streams: usize,
    duration: Duration,
    warmup: Duration,
    rate: Option<f64>,
    expect: Option<String>,
}

fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    pinhook::duration::parse_duration(s).map_err(|e| anyhow::anyhow!("{s:?}: {e}"))
}

fn parse_args() -> anyhow::Result<Args> {
    let (mut url, mut connect, mut body, mut cacert) = (None, None, None, None);
    let mut a = Args {
        url: Uri::from_static("https://localhost/"),
        connect: None,
        body: Bytes::new(),
        cacert: PathBuf::new(),
        connections: 4,
        streams: 16,
        duration: Duration::from_secs(3),
        warmup: Duration::from_millis(500),
        rate: None,
        expect: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .with_context(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--url" => url = Some(value.parse::<Uri>().context("--url")?),
            "--connect" => connect = Some(value.parse::<SocketAddr>().context("--connect")?),
            "--body" => {
                body = Some(
                    std::fs::read(&value).with_context(|| format!("cannot read --body {value}"))?,
                )
            }
            "--cacert" => cacert = Some(PathBuf::from(value)),
            "--connections" => a.connections = value.parse().context("--connections")?,
            "--streams" => a.streams = value.parse().context("--streams")?,
            "--duration" => a.duration = parse_duration(&value)?,
            "--warmup" => a.warmup = parse_duration(&value)?,
            "--rate" => a.rate = Some(value.parse().context("--rate")?),
            "--expect" => a.expect = Some(value),
            other => bail!("unknown flag {other}"),
        }
    }
    a.url = url.context("--url is required")?;
    a.connect = connect;
    a.body = Bytes::from(body.context("--body is required")?);
    a.cacert = cacert.context("--cacert is required")?;
    if a.connections == 0 || a.streams == 0 {
        bail!("--connections and --streams must be at least 1");
    }
    if a.rate.is_some_and(|r| r.is_nan() || r <= 0.0) {
        bail!("--rate must be positive");
    }
    Ok(a)
}

/// One HTTP/2 connection over TLS, ALPN `h2` only.
async fn connect(args: &Args, tls: &Arc<rustls::ClientConfig>) -> anyhow::Result<Conn> {
    let host = args.url.host().context("--url has no host")?.to_owned();
    let port = args.url.port_u16().unwrap_or(443);
    let tcp = match args.connect {
        Some(addr) => tokio::net::TcpStream::connect(addr).await,
        None => tokio::net::TcpStream::connect((host.as_str(), port)).await,
    }
    .with_context(|| format!("cannot connect to {host}:{port}"))?;
    tcp.set_nodelay(true)?;
    let name = ServerName::try_from(host.clone()).context("server name")?;
    let stream = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .context("TLS handshake")?;
    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        bail!("the server did not agree to HTTP/2 (ALPN h2)");
    }
    let (send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(stream))
        .await
        .context("HTTP/2 handshake")?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

type Conn = SendRequest<Full<Bytes>>;

/// Sends one request and checks the answer; `Ok(())` when it is 200 with the expected text.
async fn one(conn: &mut Conn, args: &Args) -> Result<(), String> {
    let req = Request::post(args.url.clone())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(args.body.clone()))
        .map_err(|e| e.to_string())?;
    conn.ready().await.map_err(|e| e.to_string())?;
    let resp = conn.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status != hyper::StatusCode::OK {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ));
    }
    if let Some(expect) = &args.expect
        && !std::str::from_utf8(&body).is_ok_and(|b| b.contains(expect.as_str()))
    {
        return Err(format!(
            "answer lacks {expect:?}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ));
    }
    Ok(())
}

#[derive(Default)]
struct Tally {
    latencies_ns: Vec<u64>,
    /// Fixed rate: how late each counted request was handed over, and its latency from the
    /// intended start.
    lags_ns: Vec<u64>,
    from_intended_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn record(&mut self, counted: bool, result: Result<(), String>, latency: Duration) {
        if !counted {
            return;
        }
        match result {
            Ok(()) => self.latencies_ns.push(latency.as_nanos() as u64),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    fn record_paced(
        &mut self,
        counted: bool,
        result: Result<(), String>,
        latency: Duration,
        lag: Duration,
    ) {
        if counted && result.is_ok() {
            self.lags_ns.push(lag.as_nanos() as u64);
            self.from_intended_ns
                .push((lag + latency).as_nanos() as u64);
        }
        self.record(counted, result, latency);
    }

    fn merge(&mut self, other: Tally) {
        self.latencies_ns.extend(other.latencies_ns);
        self.lags_ns.extend(other.lags_ns);
        self.from_intended_ns.extend(other.from_intended_ns);
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
    }
}

/// `connections × streams` workers, each sending its next request when the last one is answered.
async fn closed_loop(args: Arc<Args>, conns: Vec<Conn>, start: Instant) -> Tally {
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let mut workers = tokio::task::JoinSet::new();
    for conn in &conns {
        for _ in 0..args.streams {
            let (mut conn, args) = (conn.clone(), args.clone());
            workers.spawn(async move {
                let mut tally = Tally::default();
                loop {
                    let t0 = Instant::now();
                    if t0 >= end {
                        break;
                    }
                    let r = one(&mut conn, &args).await;
                    tally.record(t0 >= measure_from, r, t0.elapsed());
                }
                tally
            });
        }
    }
    let mut total = Tally::default();
    while let Some(t) = workers.join_next().await {
        total.merge(t.unwrap_or_default());
    }
    total
}

/// Requests released at a fixed rate by a pacing thread, latency counted from the intended start.
async fn open_loop(args: Arc<Args>, conns: Vec<Conn>, start: Instant, rate: f64) -> Tally {
    let measure_from = start + args.warmup;
    let end = measure_from + args.duration;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    // A thread sleeps with the kernel's timer precision (tens of µs), where tokio's timer
    // ticks in whole milliseconds and would release requests in bursts.
    let pacer = std::thread::spawn(move || {
        let interval = Duration::from_secs_f64(1.0 / rate);
        let mut i: u32 = 0;
        loop {
            let intended = start + interval * i;
            if intended >= end {
                break;
            }
            let now = Instant::now();
            if intended > now {
                std::thread::sleep(intended - now);
            }
            if tx.send(intended).is_err() {
                break;
            }
            i += 1;
        }
    });
    let mut tasks = tokio::task::JoinSet::new();
    let mut total = Tally::default();
    let mut next = 0usize;
    while let Some(intended) = rx.recv().await {
        let (mut conn, args) = (conns[next % conns.len()].clone(), args.clone());
        next += 1;
        tasks.spawn(async move {
            let sent = Instant::now();
            let r = one(&mut conn, &args).await;
            (intended >= measure_from, r, sent.elapsed(), sent - intended)
        });
        // Reap finished requests as we go, so the set stays small.
        while let Some(done) = tasks.try_join_next() {
            if let Ok((counted, r, latency, lag)) = done {
                total.record_paced(counted, r, latency, lag);
            }
        }
    }
    let _ = pacer.join();
    while let Some(done) = tasks.join_next().await {
        if let Ok((counted, r, latency, lag)) = done {
            total.record_paced(counted, r, latency, lag);
        }
    }
    total
}

/// CPU seconds (user + system) this process has used, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0.0;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields
        .get(11..13)
        .map(|f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum())
        .unwrap_or(0.0);
    ticks / 100.0
}

fn percentile(sorted: &[u64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Arc::new(parse_args()?);
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(&args.cacert)
        .with_context(|| format!("cannot read --cacert {}", args.cacert.display()))?;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        roots.add(cert.context("--cacert")?)?;
    }
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let tls = Arc::new(tls);
    // One thread: the generator should cost as little CPU as possible next to the server.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let cpu_before = cpu_seconds();
    let tally = runtime.block_on(async {
        let mut conns = Vec::with_capacity(args.connections);
        for _ in 0..args.connections {
            conns.push(connect(&args, &tls).await?);
        }
        let start = Instant::now();
        anyhow::Ok(match args.rate {
            None => closed_loop(args.clone(), conns, start).await,
            Some(rate) => open_loop(args.clone(), conns, start, rate).await,
        })
    })?;
    // Requests started within the measured window, per second of that window.
    let seconds = args.duration.as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    let mut lat = tally.latencies_ns;
    lat.sort_unstable();
    let (mut lags, mut intended) = (tally.lags_ns, tally.from_intended_ns);
    lags.sort_unstable();
    intended.sort_unstable();
    let n = lat.len();
    let mean = if n == 0 {
        0.0
    } else {
        lat.iter().sum::<u64>() as f64 / n as f64 / 1000.0
    };
    let out = serde_json::json!({
        "mode": if args.rate.is_some() { "rate" } else { "closed" },
        "rate": args.rate,
        "connections": args.connections,
        "streams": args.streams,
        "requests": n,
        "errors": tally.errors,
        "first_error": tally.first_error,
        "seconds": seconds,
        "rps": n as f64 / seconds,
        "p50_us": percentile(&lat, 0.50),
        "p90_us": percentile(&lat, 0.90),
        "p99_us": percentile(&lat, 0.99),
        "p999_us": percentile(&lat, 0.999),
        "max_us": lat.last().map_or(0.0, |&v| v as f64 / 1000.0),
        "mean_us": mean,
        "cpu_seconds": cpu,
        "lag_p99_us": args.rate.map(|_| percentile(&lags, 0.99)),
        "lag_max_us": args.rate.map(|_| lags.last().map_or(0.0, |&v| v as f64 / 1000.0)),
        "p99_intended_us": args.rate.map(|_| percentile(&intended, 0.99)),
    });
    println!("{out}");
    Ok(())
}
