//! The processes the benchmark starts — pinhook, the baseline server, the load generators — and
//! what it reads off them from /proc (resident memory, CPU time).

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Where the binaries under test are.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `pinhook` (release profile).
    pub pinhook: PathBuf,
    /// `examples/baseline.rs`.
    pub baseline: PathBuf,
    /// `examples/loadgen.rs`.
    pub loadgen: PathBuf,
}

impl Bins {
    /// The binaries of this build; the examples sit next to pinhook under `examples/`.
    /// `BENCH_PINHOOK` and `BENCH_BASELINE` replace the servers (e.g. with builds that keep
    /// their symbols, for `make profile`).
    pub fn locate() -> Self {
        let built = PathBuf::from(env!("CARGO_BIN_EXE_pinhook"));
        let examples = built.parent().unwrap().join("examples");
        let var = |k: &str| {
            std::env::var(k)
                .ok()
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        };
        let bins = Self {
            baseline: var("BENCH_BASELINE").unwrap_or_else(|| examples.join("baseline")),
            loadgen: examples.join("loadgen"),
            pinhook: var("BENCH_PINHOOK").unwrap_or(built),
        };
        for b in [&bins.pinhook, &bins.baseline, &bins.loadgen] {
            assert!(
                b.exists(),
                "{} is missing: run `make bench`, which builds it first",
                b.display()
            );
        }
        bins
    }
}

/// `taskset -c CPU` in front of a command, when CPU pinning is on and taskset exists.
#[derive(Debug, Clone, Copy)]
pub struct Pinning {
    /// CPU for the servers under test.
    pub server: Option<usize>,
    /// CPU for the load generators.
    pub client: Option<usize>,
}

impl Pinning {
    /// Server on the last CPU, clients on the first, when there are at least two CPUs,
    /// `taskset` is installed and `BENCH_PIN` is not `0`.
    pub fn detect() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let wanted = std::env::var("BENCH_PIN").map_or(true, |v| v != "0");
        let taskset = Command::new("taskset")
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if wanted && taskset && cpus >= 2 {
            Self {
                server: Some(cpus - 1),
                client: Some(0),
            }
        } else {
            Self {
                server: None,
                client: None,
            }
        }
    }

    /// A command for `program`, pinned to `cpu` if given.
    pub fn command(cpu: Option<usize>, program: &Path) -> Command {
        match cpu {
            Some(cpu) => {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(cpu.to_string()).arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    /// `taskset -c N ` or nothing, for printed commands.
    pub fn prefix(cpu: Option<usize>) -> String {
        cpu.map_or_else(String::new, |c| format!("taskset -c {c} "))
    }
}

/// A server under test (pinhook or the baseline), killed on drop. Its standard output goes
/// through a pipe to a thread that writes it to a file, as a container runtime reads a
/// container's output (a server writing straight to a file would stall whenever the file
/// system flushes); standard error goes to a file.
pub struct Server {
    child: Child,
    /// The HTTPS listener.
    pub addr: SocketAddr,
    /// The plain-HTTP listener (`/readyz`, `/metrics`).
    pub ops: SocketAddr,
    /// The command line, for the report.
    pub command: String,
}

impl Server {
    /// Starts `program args…`, pinned to `cpu`, and waits for the JSON line whose `message` is
    /// `serving`, reading the listener addresses from `listen_key` and `ops_key`.
    pub fn start(
        program: &Path,
        args: &[String],
        cpu: Option<usize>,
        log: &Path,
        serving: &str,
        ops_key: &str,
    ) -> Self {
        let mut cmd = Pinning::command(cpu, program);
        cmd.args(args)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(File::create(log.with_extension("err")).unwrap());
        let command = format!(
            "{}{} {}",
            Pinning::prefix(cpu),
            program.display(),
            args.join(" ")
        );
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {command}: {e}"));
        let mut out = child.stdout.take().unwrap();
        let mut file = File::create(log).unwrap();
        std::thread::spawn(move || std::io::copy(&mut out, &mut file));
        let started = Instant::now();
        loop {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(v) = text
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["message"] == serving)
            {
                let addr = v["listen"].as_str().unwrap().parse().unwrap();
                let ops = v[ops_key].as_str().unwrap().parse().unwrap();
                return Self {
                    child,
                    addr,
                    ops,
                    command,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{command} exited with {status} before serving:\n{text}\n{}",
                    std::fs::read_to_string(log.with_extension("err")).unwrap_or_default()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "{command} did not start within 120 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The process id (taskset execs the server, so it is the server's).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// CPU time used so far (user + system, all threads).
    pub fn cpu(&self) -> Duration {
        cpu_time(self.pid())
    }

    /// `https://localhost:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `VmRSS` of `pid` in KiB (0 when gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Clock ticks per second of /proc/PID/stat (`getconf CLK_TCK`, 100 on Linux).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// User + system CPU time of `pid`, every thread included.
pub fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let ticks: f64 = stat
        .rsplit_once(')')
        .map(|(_, rest)| {
            rest.split_whitespace()
                .skip(11)
                .take(2)
                .filter_map(|v| v.parse::<f64>().ok())
                .sum()
        })
        .unwrap_or(0.0);
    Duration::from_secs_f64(ticks / clock_ticks())
}

/// GET `path` on a plain-HTTP listener; the status code, or `None` when not reachable.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// What the load generator reported.
#[derive(Debug, Clone, Default)]
pub struct Load {
    /// Requests answered correctly in the measured window.
    pub requests: u64,
    /// Wrong or failed answers.
    pub errors: u64,
    /// The first error, if any.
    pub first_error: Option<String>,
    /// Requests per second.
    pub rps: f64,
    /// Latency percentiles in µs.
    pub p50: f64,
    /// p90 (µs).
    pub p90: f64,
    /// p99 (µs).
    pub p99: f64,
    /// p99.9 (µs).
    pub p999: f64,
    /// Server CPU time per answered request (µs), from /proc.
    pub server_cpu_us: f64,
    /// Load generator CPU seconds.
    pub client_cpu_s: f64,
    /// Fixed rate: p99 of how late the generator handed requests over (µs).
    pub lag_p99: f64,
    /// Fixed rate: p99 latency counted from the intended start (µs).
    pub p99_intended: f64,
    /// The command line.
    pub command: String,
}

/// One run of `examples/loadgen`.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// The endpoint path, e.g. `/mutate?timeout=10s`.
    pub path: String,
    /// The request body file.
    pub body: PathBuf,
    /// The CA that signed the servers' certificate.
    pub cacert: PathBuf,
    /// HTTP/2 connections.
    pub connections: usize,
    /// Concurrent streams per connection (closed loop).
    pub streams: usize,
    /// Measured window.
    pub duration: Duration,
    /// Unmeasured warm-up before it.
    pub warmup: Duration,
    /// Fixed rate (requests per second), or closed loop.
    pub rate: Option<f64>,
    /// Text every answer must contain.
    pub expect: String,
}

fn secs(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

impl LoadSpec {
    /// The loadgen arguments against `server`.
    pub fn args(&self, server: &Server) -> Vec<String> {
        let mut a = vec![
            "--url".into(),
            server.url(&self.path),
            "--connect".into(),
            server.addr.to_string(),
            "--body".into(),
            self.body.display().to_string(),
            "--cacert".into(),
            self.cacert.display().to_string(),
            "--connections".into(),
            self.connections.to_string(),
            "--streams".into(),
            self.streams.to_string(),
            "--duration".into(),
            secs(self.duration),
            "--warmup".into(),
            secs(self.warmup),
            "--expect".into(),
            self.expect.clone(),
        ];
        if let Some(r) = self.rate {
            a.push("--rate".into());
            a.push(format!("{r:.0}"));
        }
        a
    }

    /// Runs the load generator against `server` and reads its report and the server's CPU time.
    pub fn run(&self, bins: &Bins, pin: Pinning, server: &Server) -> Load {
        let args = self.args(server);
        let command = format!(
            "{}{} {}",
            Pinning::prefix(pin.client),
            bins.loadgen.display(),
            args.iter()
                .map(|a| shell_quote(a))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let cpu_before = server.cpu();
        let out = Pinning::command(pin.client, &bins.loadgen)
            .args(&args)
            .output()
            .expect("run loadgen");
        let cpu = server.cpu().saturating_sub(cpu_before);
        assert!(
            out.status.success(),
            "{command} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("loadgen printed no JSON ({e}): {:?}", out.stdout));
        let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
        let requests = v["requests"].as_u64().unwrap_or(0);
        // The window's requests plus the warm-up's: the CPU reading covers the whole run.
        let total_seconds = (self.duration + self.warmup).as_secs_f64();
        let served = f("rps") * total_seconds;
        Load {
            requests,
            errors: v["errors"].as_u64().unwrap_or(0),
            first_error: v["first_error"].as_str().map(str::to_owned),
            rps: f("rps"),
            p50: f("p50_us"),
            p90: f("p90_us"),
            p99: f("p99_us"),
            p999: f("p999_us"),
            server_cpu_us: if served > 0.0 {
                cpu.as_secs_f64() * 1e6 / served
            } else {
                0.0
            },
            client_cpu_s: f("cpu_seconds"),
            lag_p99: f("lag_p99_us"),
            p99_intended: f("p99_intended_us"),
            command,
        }
    }
}

/// What h2load (Debian's nghttp2-client) reported, for a cross-check with another client.
#[derive(Debug, Clone)]
pub struct H2load {
    /// Requests per second.
    pub rps: f64,
    /// Requests that got a 2xx.
    pub ok: u64,
    /// Requests done.
    pub done: u64,
    /// The command line.
    pub command: String,
}

/// Runs h2load with `connections × streams` against `server` for `seconds`, if it is installed.
pub fn h2load(
    pin: Pinning,
    server: &Server,
    path: &str,
    body: &Path,
    connections: usize,
    streams: usize,
    seconds: u64,
) -> Option<H2load> {
    let args: Vec<String> = vec![
        "-c".into(),
        connections.to_string(),
        "-m".into(),
        streams.to_string(),
        "-t".into(),
        "1".into(),
        "-D".into(),
        seconds.to_string(),
        "--warm-up-time".into(),
        "1".into(),
        "-d".into(),
        body.display().to_string(),
        "-H".into(),
        "content-type: application/json".into(),
        format!("https://127.0.0.1:{}{path}", server.addr.port()),
    ];
    let command = format!(
        "{}h2load {}",
        Pinning::prefix(pin.client),
        args.iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = Pinning::command(pin.client, Path::new("h2load"))
        .args(&args)
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!(
            "h2load failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout);
    // "finished in 3.00s, 12345.67 req/s, 9.87MB/s"
    let rps = text
        .lines()
        .find(|l| l.starts_with("finished in"))?
        .split(", ")
        .nth(1)?
        .strip_suffix(" req/s")?
        .parse()
        .ok()?;
    // "requests: 100 total, 100 started, 100 done, 100 succeeded, 0 failed, 0 errored, 0 timeout"
    let done = text
        .lines()
        .find(|l| l.starts_with("requests:"))?
        .split(", ")
        .find_map(|p| p.strip_suffix(" done"))?
        .trim()
        .parse()
        .ok()?;
    // "status codes: 100 2xx, 0 3xx, 0 4xx, 0 5xx"
    let ok = text
        .lines()
        .find(|l| l.starts_with("status codes:"))?
        .trim_start_matches("status codes:")
        .split(", ")
        .find_map(|p| p.trim().strip_suffix(" 2xx"))?
        .parse()
        .ok()?;
    Some(H2load {
        rps,
        ok,
        done,
        command,
    })
}

/// Quotes `s` for a POSIX shell when it needs it.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./:=@%+,".contains(&b))
    {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// What oha reported, for a cross-check with the most common Rust load generator.
#[derive(Debug, Clone)]
pub struct Oha {
    /// Requests per second.
    pub rps: f64,
    /// p99 latency (µs).
    pub p99: f64,
    /// Answers with status 200.
    pub ok: u64,
    /// Answers with any other status.
    pub not_ok: u64,
    /// The command line.
    pub command: String,
}

/// oha, from `BENCH_OHA` or the PATH (`cargo install --locked oha`), if there is one.
pub fn oha_binary() -> Option<PathBuf> {
    let candidate = std::env::var("BENCH_OHA").map_or_else(|_| PathBuf::from("oha"), PathBuf::from);
    Command::new(&candidate)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|_| candidate)
}

/// Runs oha against `server`: `connections × streams` over HTTP/2 for `seconds`, or at `rate`
/// requests per second with latency correction.
#[allow(clippy::too_many_arguments)]
pub fn oha(
    oha: &Path,
    pin: Pinning,
    server: &Server,
    path: &str,
    body: &Path,
    cacert: &Path,
    connections: usize,
    streams: usize,
    seconds: u64,
    rate: Option<f64>,
) -> Option<Oha> {
    let mut args: Vec<String> = vec![
        "-z".into(),
        format!("{seconds}s"),
        "-c".into(),
        connections.to_string(),
        "-p".into(),
        streams.to_string(),
        "--http2".into(),
        "-m".into(),
        "POST".into(),
        "-D".into(),
        body.display().to_string(),
        "-H".into(),
        "content-type: application/json".into(),
        "--cacert".into(),
        cacert.display().to_string(),
        "--no-tui".into(),
        "--output-format".into(),
        "json".into(),
    ];
    if let Some(r) = rate {
        args.extend([
            "-q".into(),
            format!("{r:.0}"),
            "--latency-correction".into(),
        ]);
    }
    args.push(server.url(path));
    let command = format!(
        "{}{} {}",
        Pinning::prefix(pin.client),
        oha.display(),
        args.iter()
            .map(|a| shell_quote(a))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = Pinning::command(pin.client, oha)
        .args(&args)
        .output()
        .ok()?;
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    Some(Oha {
        rps: v["summary"]["requestsPerSec"].as_f64()?,
        p99: v["latencyPercentiles"]["p99"].as_f64()? * 1e6,
        ok: v["statusCodeDistribution"]["200"].as_u64().unwrap_or(0),
        not_ok: v["statusCodeDistribution"].as_object().map_or(0, |m| {
            m.iter()
                .filter(|(k, _)| k.as_str() != "200")
                .filter_map(|(_, n)| n.as_u64())
                .sum()
        }),
        command,
    })
}
