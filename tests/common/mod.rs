//! Test harness: runs the real `pinhook` binary on 127.0.0.1 with a generated certificate and
//! talks to it over HTTP/1.1 or HTTP/2 with a client that trusts only that certificate's CA.
#![allow(dead_code)]

pub mod cluster;
pub mod drift;
pub mod front;
pub mod kube;
pub mod registry;
pub mod router;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// The HTTP version a client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Http {
    /// HTTP/1.1 only.
    V1,
    /// HTTP/2 only (ALPN h2).
    V2,
}

/// Both versions, for tests that run over each.
pub const BOTH: [Http; 2] = [Http::V1, Http::V2];

/// How to start the server.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Policy YAML written to a file and passed with `--policy`.
    pub policy: Option<String>,
    /// Extra command-line arguments.
    pub args: Vec<String>,
    /// Extra environment variables (e.g. `KUBECONFIG` pointing at a `FakeKube`). `KUBECONFIG` is
    /// removed from the inherited environment unless set here, so no test reaches a real cluster.
    pub env: Vec<(String, String)>,
    /// Passes no `--tls-cert`/`--tls-key`: the server gets its certificate another way (e.g.
    /// `--bootstrap-secret`); `ca_pem` is then a CA the server does not use.
    pub no_cert_files: bool,
    /// Stops reading the server's stdout once it reports that it is serving, until
    /// [`Pinhook::read_stdout`]: stands for a log reader that has stalled.
    pub hold_stdout: bool,
    /// The webhook listener's address (default `127.0.0.1:0`, an ephemeral port).
    pub listen: Option<String>,
}

/// A running `pinhook serve`.
pub struct Pinhook {
    child: Child,
    /// The HTTPS webhook address.
    pub addr: SocketAddr,
    /// The plain-HTTP ops address.
    pub ops: SocketAddr,
    /// The CA that signed the serving certificate (PEM).
    pub ca_pem: String,
    /// Scratch directory holding certificates and the policy.
    pub dir: tempfile::TempDir,
    lines: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    /// Releases the held stdout reader (see [`Options::hold_stdout`]); dropping it does too.
    stdout_gate: Option<std::sync::mpsc::Sender<()>>,
}

/// Loads `tests/fixtures/NAME.json`.
pub fn fixture(name: &str) -> Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(format!("{name}.json"));
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read fixture {}: {e}", path.display()));
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("fixture {} is not JSON: {e}", path.display()))
}

/// Installs the rustls provider the clients use (idempotent).
pub fn init_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Writes a fresh CA + serving certificate for localhost/127.0.0.1 into `dir`; returns the CA PEM.
pub fn write_certs(dir: &Path) -> String {
    let c = pinhook::certs::generate(&["localhost".into(), "127.0.0.1".into()], 2)
        .expect("generate certificate");
    std::fs::write(dir.join("tls.crt"), &c.cert_pem).unwrap();
    std::fs::write(dir.join("tls.key"), &c.key_pem).unwrap();
    std::fs::write(dir.join("ca.crt"), &c.ca_pem).unwrap();
    c.ca_pem
}

/// The `pinhook` binary under test.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pinhook"))
}

/// `pinhook serve` on ephemeral loopback ports (both listeners); the caller adds the rest.
pub fn serve_command() -> Command {
    serve_command_on("127.0.0.1:0")
}

/// `pinhook serve` with the webhook listener on `listen` and the ops listener on an ephemeral
/// loopback port; the caller adds the rest.
pub fn serve_command_on(listen: &str) -> Command {
    let mut c = Command::new(binary());
    c.args([
        "serve",
        "--listen",
        listen,
        "--metrics-listen",
        "127.0.0.1:0",
    ]);
    c
}

/// The `message` of the log line `pinhook serve` writes once both listeners are bound.
const SERVING_MESSAGE: &str = "pinhook serving";

/// Reads `r` line by line into `sink`; with a `gate`, stops after the [`SERVING_MESSAGE`]
/// line until the gate opens (a message, or its sender dropped).
fn spawn_reader<R: std::io::Read + Send + 'static>(
    r: R,
    sink: Arc<Mutex<Vec<String>>>,
    mut gate: Option<std::sync::mpsc::Receiver<()>>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            let serving = line.contains(SERVING_MESSAGE);
            sink.lock().unwrap().push(line);
            if serving && let Some(g) = gate.take() {
                let _ = g.recv();
            }
        }
    });
}

impl Pinhook {
    /// Starts with the built-in policy.
    pub fn start() -> Self {
        Self::start_with(Options::default())
    }

    /// Starts with `opts` and waits until it reports that it is serving.
    pub fn start_with(opts: Options) -> Self {
        init_crypto();
        let dir = tempfile::tempdir().unwrap();
        let ca_pem = write_certs(dir.path());
        let mut cmd = serve_command_on(opts.listen.as_deref().unwrap_or("127.0.0.1:0"));
        cmd.args(["--reload-interval", "100ms"]);
        if !opts.no_cert_files {
            cmd.arg("--tls-cert")
                .arg(dir.path().join("tls.crt"))
                .arg("--tls-key")
                .arg(dir.path().join("tls.key"));
        }
        if let Some(policy) = &opts.policy {
            let p = dir.path().join("policy.yaml");
            std::fs::write(&p, policy).unwrap();
            cmd.arg("--policy").arg(p);
        }
        cmd.env_remove("KUBECONFIG");
        for (k, v) in &opts.env {
            cmd.env(k, v);
        }
        cmd.args(&opts.args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn pinhook");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let (stdout_gate, gate) = opts.hold_stdout.then(std::sync::mpsc::channel).unzip();
        spawn_reader(child.stdout.take().unwrap(), lines.clone(), gate);
        spawn_reader(child.stderr.take().unwrap(), stderr.clone(), None);
        let started = Instant::now();
        loop {
            let serving = lines
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["message"] == SERVING_MESSAGE);
            if let Some(v) = serving {
                let addr = v["listen"].as_str().unwrap().parse().unwrap();
                let ops = v["metrics_listen"].as_str().unwrap().parse().unwrap();
                return Self {
                    child,
                    addr,
                    ops,
                    ca_pem,
                    dir,
                    lines,
                    stderr,
                    stdout_gate,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "pinhook exited with {status} before serving\nstdout: {:?}\nstderr: {:?}",
                    lines.lock().unwrap(),
                    stderr.lock().unwrap()
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "pinhook did not start: {:?}",
                lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Resumes reading stdout after [`Options::hold_stdout`].
    pub fn read_stdout(&mut self) {
        if let Some(gate) = self.stdout_gate.take() {
            let _ = gate.send(());
        }
    }

    /// A raw HTTP/1.1-over-TLS connection, so a test can send part of a request and stop.
    pub fn raw_tls(
        &self,
        read_timeout: Duration,
    ) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
        use rustls::pki_types::pem::PemObject;
        init_crypto();
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(self.ca_pem.as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let conn = rustls::ClientConnection::new(Arc::new(config), "localhost".try_into().unwrap())
            .unwrap();
        let tcp = std::net::TcpStream::connect(self.addr).unwrap();
        tcp.set_read_timeout(Some(read_timeout)).unwrap();
        rustls::StreamOwned::new(conn, tcp)
    }

    /// `https://localhost:PORT/PATH`.
    pub fn url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.addr.port())
    }

    /// `http://127.0.0.1:OPSPORT/PATH`.
    pub fn ops_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ops)
    }

    /// A client trusting only this server's CA, speaking `http`.
    pub fn client(&self, http: Http) -> reqwest::Client {
        client_for(&self.ca_pem, http)
    }

    /// POSTs `body` to `/validate` and returns status, HTTP version and parsed JSON.
    pub async fn validate(
        &self,
        http: Http,
        body: &Value,
    ) -> (reqwest::StatusCode, reqwest::Version, Value) {
        self.post_json(
            http,
            "/validate?timeout=10s",
            serde_json::to_vec(body).unwrap(),
        )
        .await
    }

    /// POSTs raw bytes to `path`.
    pub async fn post_json(
        &self,
        http: Http,
        path: &str,
        body: Vec<u8>,
    ) -> (reqwest::StatusCode, reqwest::Version, Value) {
        let resp = self
            .client(http)
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        let status = resp.status();
        let version = resp.version();
        let text = resp.text().await.expect("body");
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("response is not JSON ({e}): {text:?}"));
        (status, version, json)
    }

    /// The `/metrics` text.
    pub async fn metrics(&self) -> String {
        reqwest::get(self.ops_url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every stdout line so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Every stderr line so far.
    pub fn stderr(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// The audit records (stdout JSON lines whose `event` starts with `admission.`).
    pub fn audit_records(&self) -> Vec<Value> {
        self.lines()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| {
                v["event"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("admission."))
            })
            .collect()
    }

    /// Waits up to `timeout` for a stdout JSON line satisfying `pred`.
    pub fn wait_for_line(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            if let Some(v) = self
                .lines()
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| pred(v))
            {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "no matching line within {timeout:?}: {:#?}",
                self.lines()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The policy file path (when started with a policy).
    pub fn policy_path(&self) -> PathBuf {
        self.dir.path().join("policy.yaml")
    }

    /// Sends SIGTERM.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < timeout,
                "pinhook did not exit within {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pinhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client trusting only `ca_pem`, speaking `http`.
pub fn client_for(ca_pem: &str, http: Http) -> reqwest::Client {
    init_crypto();
    let builder = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap()])
        .timeout(Duration::from_secs(30));
    let builder = match http {
        Http::V1 => builder.http1_only(),
        Http::V2 => builder.http2_prior_knowledge(),
    };
    builder.build().unwrap()
}

/// The response object of an AdmissionReview answer, after checking its envelope.
pub fn response_of(review: &Value, uid: &str) -> Value {
    assert_eq!(review["apiVersion"], "admission.k8s.io/v1", "{review}");
    assert_eq!(review["kind"], "AdmissionReview", "{review}");
    let resp = review["response"].clone();
    assert_eq!(resp["uid"], uid, "uid not echoed: {review}");
    assert!(
        resp.get("patch").is_none() && resp.get("patchType").is_none(),
        "validate must never patch: {review}"
    );
    resp
}
