//! Real container registries for resolver tests: Debian's `docker-registry` (distribution 2.8)
//! started per test with its own config on 127.0.0.1, images pushed into it with `skopeo` from
//! OCI layouts built here, a JWT token issuer for the Bearer flow, and a fault-injecting TCP
//! proxy. Everything is blocking (std threads and processes), so it is usable from
//! `#[tokio::test]`; the servers of our own run on a tokio runtime on a background thread.
//!
//! Counters (`manifest_requests`, `token_requests`) leave out the harness's own traffic:
//! skopeo (User-Agent `skopeo/…`, used by `push` and `inspect_digest`) and the readiness and
//! log-sync probes (User-Agent [`HARNESS_USER_AGENT`]).

use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The four manifest media types a digest resolver must accept (OCI index, OCI manifest,
/// Docker manifest list, Docker manifest v2), as one `Accept` header value.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// OCI image index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Docker manifest list media type.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Docker image manifest v2 (schema 2) media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// User-Agent of the harness's own probes (left out of the counters).
pub const HARNESS_USER_AGENT: &str = "pinhook-test-harness";
/// The `service` of token-auth registries (the JWT audience).
pub const TOKEN_SERVICE: &str = "pinhook-test-registry";
/// The `issuer` of the tokens.
pub const TOKEN_ISSUER: &str = "pinhook-test-issuer";
/// Realm of the Basic-auth registries.
pub const BASIC_REALM: &str = "pinhook-test-registry";

/// distribution's clock-skew leeway on `exp` (registry/auth/token: `Leeway = 60 * time.Second`).
const REGISTRY_TOKEN_LEEWAY: Duration = Duration::from_secs(60);

/// How a registry authenticates clients.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum RegistryAuth {
    /// No authentication.
    #[default]
    Anonymous,
    /// `auth.htpasswd` with one bcrypt entry: `401 WWW-Authenticate: Basic`.
    Basic { user: String, password: String },
    /// `auth.token` backed by a [`TokenIssuer`] that accepts `user`/`password` and whose tokens
    /// the registry accepts for `token_ttl` after issue.
    Token {
        user: String,
        password: String,
        token_ttl: Duration,
    },
}

impl RegistryAuth {
    /// `Basic { user, password }`.
    pub fn basic(user: &str, password: &str) -> Self {
        Self::Basic {
            user: user.into(),
            password: password.into(),
        }
    }

    /// `Token { user, password, token_ttl }`.
    pub fn token(user: &str, password: &str, token_ttl: Duration) -> Self {
        Self::Token {
            user: user.into(),
            password: password.into(),
            token_ttl,
        }
    }

    /// The credentials, if any.
    pub fn creds(&self) -> Option<(&str, &str)> {
        match self {
            Self::Anonymous => None,
            Self::Basic { user, password } | Self::Token { user, password, .. } => {
                Some((user, password))
            }
        }
    }
}

/// How to start a registry. Default: plain HTTP, anonymous.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Serve HTTPS (HTTP/1.1 and HTTP/2 by ALPN) with a certificate for 127.0.0.1/localhost.
    pub tls: bool,
    /// Authentication.
    pub auth: RegistryAuth,
}

/// An image to push; `seed` makes its digests unique (same seed, same bytes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TestImage {
    /// One OCI manifest (linux/amd64), pushed as OCI.
    Single { seed: String },
    /// An OCI image index of linux/amd64 and linux/arm64 manifests, pushed with `--all`.
    MultiArch { seed: String },
    /// One image whose config has a `history`, pushed with `--format v2s2` (Docker media types).
    DockerV2 { seed: String },
    /// `MultiArch` pushed with `--all --format v2s2`: a Docker manifest list of two Docker v2
    /// manifests (configs with `history`).
    DockerList { seed: String },
}

impl TestImage {
    /// `Single { seed }`.
    pub fn single(seed: &str) -> Self {
        Self::Single { seed: seed.into() }
    }

    /// `MultiArch { seed }`.
    pub fn multi_arch(seed: &str) -> Self {
        Self::MultiArch { seed: seed.into() }
    }

    /// `DockerV2 { seed }`.
    pub fn docker_v2(seed: &str) -> Self {
        Self::DockerV2 { seed: seed.into() }
    }

    /// `DockerList { seed }`.
    pub fn docker_list(seed: &str) -> Self {
        Self::DockerList { seed: seed.into() }
    }

    /// Writes an OCI image layout for this image into `dir`, with `tag` as its ref name.
    /// Returns the descriptor's digest of what `index.json` points at (the manifest, or the
    /// index for `MultiArch`), as stored locally (skopeo may convert it on push).
    pub fn write_layout(&self, dir: &Path, tag: &str) -> String {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        let top = match self {
            Self::Single { seed } => image_manifest(dir, seed, "amd64", None, false),
            Self::DockerV2 { seed } => image_manifest(dir, seed, "amd64", None, true),
            Self::MultiArch { seed } | Self::DockerList { seed } => {
                let history = matches!(self, Self::DockerList { .. });
                let children: Vec<Value> = [("amd64", None), ("arm64", Some("v8"))]
                    .into_iter()
                    .map(|(arch, variant)| {
                        let mut d = image_manifest(dir, seed, arch, variant, history);
                        let mut platform = json!({"architecture": arch, "os": "linux"});
                        if let Some(v) = variant {
                            platform["variant"] = json!(v);
                        }
                        d["platform"] = platform;
                        d
                    })
                    .collect();
                let index = json!({
                    "schemaVersion": 2,
                    "mediaType": OCI_INDEX,
                    "manifests": children,
                });
                let bytes = serde_json::to_vec(&index).unwrap();
                descriptor(OCI_INDEX, &write_blob(dir, &bytes), bytes.len())
            }
        };
        let digest = top["digest"].as_str().unwrap().to_string();
        let mut entry = top;
        entry["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
        let index = json!({
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [entry],
        });
        std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
        digest
    }

    fn copy_args(&self) -> &'static [&'static str] {
        match self {
            Self::Single { .. } => &[],
            Self::MultiArch { .. } => &["--all"],
            Self::DockerV2 { .. } => &["--format", "v2s2"],
            Self::DockerList { .. } => &["--all", "--format", "v2s2"],
        }
    }
}

/// A running `docker-registry serve CONFIG`, killed on drop.
pub struct Registry {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `127.0.0.1:PORT` (what image references use).
    pub host: String,
    child: Child,
    dir: tempfile::TempDir,
    ca_pem: Option<String>,
    tls_client: Option<Arc<rustls::ClientConfig>>,
    auth: RegistryAuth,
    issuer: Option<TokenIssuer>,
    lines: Arc<Mutex<Vec<String>>>,
    paused: AtomicBool,
    stopped: bool,
    counter: AtomicUsize,
}

impl Registry {
    /// Starts a registry and waits until `GET /v2/` answers (401 counts).
    pub fn start(opts: RegistryOptions) -> Self {
        Self::start_process(opts, false)
    }

    /// Like [`Registry::start`], under `setpriv --pdeathsig KILL`: the registry dies with the
    /// thread that started it, so one shared by every test of a file (started from a thread
    /// that lives as long as the test process, and never dropped) does not outlive the process.
    pub fn start_dying_with_thread(opts: RegistryOptions) -> Self {
        Self::start_process(opts, true)
    }

    fn start_process(opts: RegistryOptions, die_with_thread: bool) -> Self {
        super::init_crypto();
        let dir = tempfile::tempdir().unwrap();
        let mut tls_yaml = String::new();
        let mut auth_yaml = String::new();
        let mut ca_pem = None;
        let mut tls_client = None;
        if opts.tls {
            let c = pinhook::certs::generate(&["127.0.0.1".into(), "localhost".into()], 2)
                .expect("generate registry certificate");
            std::fs::write(dir.path().join("tls.crt"), &c.cert_pem).unwrap();
            std::fs::write(dir.path().join("tls.key"), &c.key_pem).unwrap();
            // skopeo's --cert-dir takes every *.key as a client key: a directory with only ca.crt.
            std::fs::create_dir(dir.path().join("ca")).unwrap();
            std::fs::write(dir.path().join("ca/ca.crt"), &c.ca_pem).unwrap();
            tls_yaml = format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                yaml_path(&dir.path().join("tls.crt")),
                yaml_path(&dir.path().join("tls.key")),
            );
            tls_client = Some(rustls_client(&c.ca_pem));
            ca_pem = Some(c.ca_pem);
        }
        let mut issuer = None;
        match &opts.auth {
            RegistryAuth::Anonymous => {}
            RegistryAuth::Basic { user, password } => {
                let out = Command::new("htpasswd")
                    .args(["-nbB", user, password])
                    .output()
                    .expect("run htpasswd (scripts/install-test-deps.sh installs apache2-utils)");
                assert!(out.status.success(), "htpasswd: {out:?}");
                let entry = String::from_utf8(out.stdout).unwrap();
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, format!("{}\n", entry.trim())).unwrap();
                auth_yaml = format!(
                    "auth:\n  htpasswd:\n    realm: {BASIC_REALM}\n    path: {}\n",
                    yaml_path(&path)
                );
            }
            RegistryAuth::Token {
                user,
                password,
                token_ttl,
            } => {
                let i = TokenIssuer::start(user, password, *token_ttl);
                let bundle = dir.path().join("token-root.pem");
                std::fs::write(&bundle, i.cert_pem()).unwrap();
                auth_yaml = format!(
                    "auth:\n  token:\n    realm: {}\n    service: {TOKEN_SERVICE}\n    issuer: {TOKEN_ISSUER}\n    rootcertbundle: {}\n",
                    i.realm(),
                    yaml_path(&bundle)
                );
                issuer = Some(i);
            }
        }

        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = free_port();
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let config = format!(
                "version: 0.1\n\
                 log:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n  \
                 maintenance:\n    uploadpurging:\n      enabled: false\n\
                 http:\n  addr: {addr}\n  secret: pinhook-test-secret\n{tls_yaml}{auth_yaml}",
                yaml_path(&dir.path().join("data")),
            );
            let config_path = dir.path().join("config.yml");
            std::fs::write(&config_path, &config).unwrap();
            let mut command = if die_with_thread {
                let mut c = Command::new("setpriv");
                c.args(["--pdeathsig", "KILL", "docker-registry"]);
                c
            } else {
                Command::new("docker-registry")
            };
            let mut child = command
                .arg("serve")
                .arg(&config_path)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawn docker-registry (run scripts/install-test-deps.sh)");
            let lines = Arc::new(Mutex::new(Vec::new()));
            collect_lines(child.stdout.take().unwrap(), lines.clone());
            collect_lines(child.stderr.take().unwrap(), lines.clone());
            let started = Instant::now();
            let up = loop {
                let probe = raw_get(
                    addr,
                    tls_client.as_ref(),
                    "/v2/?pinhook-harness=ready",
                    &[],
                    Duration::from_secs(1),
                );
                if probe.is_ok() {
                    break true;
                }
                if let Ok(Some(status)) = child.try_wait() {
                    // Give the readers a moment to drain the last lines.
                    std::thread::sleep(Duration::from_millis(50));
                    let log = lines.lock().unwrap().join("\n");
                    if log.contains("address already in use") && attempt < 5 {
                        break false;
                    }
                    panic!("docker-registry exited with {status}\nconfig:\n{config}\nlog:\n{log}");
                }
                if started.elapsed() > Duration::from_secs(15) {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "docker-registry did not answer GET /v2/ within 15 s\nlog:\n{}",
                        lines.lock().unwrap().join("\n")
                    );
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            if !up {
                let _ = child.wait();
                continue;
            }
            return Self {
                addr,
                host: format!("127.0.0.1:{port}"),
                child,
                dir,
                ca_pem,
                tls_client,
                auth: opts.auth,
                issuer,
                lines,
                paused: AtomicBool::new(false),
                stopped: false,
                counter: AtomicUsize::new(0),
            };
        }
    }

    /// A plain, anonymous registry.
    pub fn plain() -> Self {
        Self::start(RegistryOptions::default())
    }

    /// Whether it serves HTTPS.
    pub fn tls(&self) -> bool {
        self.ca_pem.is_some()
    }

    /// `http://HOST` or `https://HOST`, followed by `path`.
    pub fn url(&self, path: &str) -> String {
        let scheme = if self.tls() { "https" } else { "http" };
        format!("{scheme}://{}{path}", self.host)
    }

    /// The authentication it was started with.
    pub fn auth(&self) -> &RegistryAuth {
        &self.auth
    }

    /// The CA of its TLS certificate (PEM), when TLS.
    pub fn ca_pem(&self) -> Option<String> {
        self.ca_pem.clone()
    }

    /// The CA as a file: `DIR/ca.crt`, alone in its directory (usable as skopeo's `--cert-dir`).
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.ca_pem
            .as_ref()
            .map(|_| self.dir.path().join("ca/ca.crt"))
    }

    /// A reqwest client for it (HTTP/1.1; trusts only its CA when TLS; no credentials).
    pub fn client(&self) -> reqwest::Client {
        match &self.ca_pem {
            Some(ca) => super::client_for(ca, super::Http::V1),
            None => {
                super::init_crypto();
                reqwest::Client::builder()
                    .timeout(Duration::from_secs(30))
                    .build()
                    .unwrap()
            }
        }
    }

    /// The token issuer, for `RegistryAuth::Token`.
    pub fn issuer(&self) -> Option<&TokenIssuer> {
        self.issuer.as_ref()
    }

    /// Token requests made to the issuer, except skopeo's (0 without an issuer).
    pub fn token_requests(&self) -> usize {
        self.issuer.as_ref().map_or(0, TokenIssuer::token_requests)
    }

    /// Builds `image` as an OCI layout, pushes it to `REPO:TAG` with skopeo (with the registry's
    /// credentials and CA), and returns the digest skopeo reads back (`inspect_digest`).
    pub fn push(&self, repo: &str, tag: &str, image: &TestImage) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let layout = self.dir.path().join(format!("layout-{n}"));
        image.write_layout(&layout, tag);
        let mut cmd = Command::new("skopeo");
        cmd.args(["--insecure-policy", "copy", "--quiet"])
            .args(image.copy_args())
            .args(self.skopeo_args("--dest-"))
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.host));
        let out = cmd.output().expect("run skopeo copy");
        assert!(
            out.status.success(),
            "skopeo copy to {}/{repo}:{tag} failed: {}\n{}\nregistry log:\n{}",
            self.host,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.lines.lock().unwrap().join("\n")
        );
        self.inspect_digest(repo, tag)
    }

    /// The digest of `REPO:TAG` per `skopeo inspect --format '{{.Digest}}'` (for an index: the
    /// index's digest), independently of pinhook.
    pub fn inspect_digest(&self, repo: &str, tag: &str) -> String {
        let out = Command::new("skopeo")
            .args([
                "--insecure-policy",
                "inspect",
                "--no-tags",
                "--format",
                "{{.Digest}}",
            ])
            .args(self.skopeo_args("--"))
            .arg(format!("docker://{}/{repo}:{tag}", self.host))
            .output()
            .expect("run skopeo inspect");
        assert!(
            out.status.success(),
            "skopeo inspect {}/{repo}:{tag} failed: {}",
            self.host,
            String::from_utf8_lossy(&out.stderr)
        );
        let digest = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(
            digest.starts_with("sha256:") && digest.len() == 71,
            "{digest:?}"
        );
        digest
    }

    fn skopeo_args(&self, prefix: &str) -> Vec<String> {
        let mut args = Vec::new();
        match self.ca_file() {
            Some(ca) => args.push(format!(
                "{prefix}cert-dir={}",
                ca.parent().unwrap().display()
            )),
            None => args.push(format!("{prefix}tls-verify=false")),
        }
        if let Some((user, password)) = self.auth.creds() {
            args.push(format!("{prefix}creds={user}:{password}"));
        }
        args
    }

    /// Access-log lines for `HEAD` or `GET /v2/REPO/manifests/REFERENCE`, except skopeo's and the
    /// harness's. Waits for the log to catch up with every request answered before the call.
    pub fn manifest_requests(&self, repo: &str, reference: &str) -> usize {
        let needles = [
            format!("\"HEAD /v2/{repo}/manifests/{reference} HTTP/"),
            format!("\"GET /v2/{repo}/manifests/{reference} HTTP/"),
        ];
        self.access_log()
            .iter()
            .filter(|l| needles.iter().any(|n| l.contains(n.as_str())))
            .count()
    }

    /// Access-log lines (`127.0.0.1 - - [date] "METHOD PATH HTTP/x" status size "" "agent"`),
    /// except skopeo's and the harness's, after catching up like `manifest_requests`.
    pub fn access_log(&self) -> Vec<String> {
        self.log()
            .into_iter()
            .filter(|l| {
                let Some(agent) = access_log_agent(l) else {
                    return false;
                };
                !agent.starts_with("skopeo/") && agent != HARNESS_USER_AGENT
            })
            .collect()
    }

    /// Everything it wrote (stdout: access log; stderr: logrus lines), minus the harness's probes.
    /// Waits for the log to catch up with every request answered before the call.
    pub fn log(&self) -> Vec<String> {
        self.sync_log();
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| !l.contains("pinhook-harness="))
            .cloned()
            .collect()
    }

    /// Sends a marker request and waits until its access-log line has been read: the registry
    /// writes each access-log line before the response is complete, and stdout is ordered.
    fn sync_log(&self) {
        if self.stopped || self.paused.load(Ordering::SeqCst) {
            return;
        }
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let marker = format!("pinhook-harness=sync-{n} HTTP/");
        let path = format!("/v2/?pinhook-harness=sync-{n}");
        if raw_get(
            self.addr,
            self.tls_client.as_ref(),
            &path,
            &[],
            Duration::from_secs(2),
        )
        .is_err()
        {
            return;
        }
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(2) {
            if self
                .lines
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains(&marker))
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Kills the registry (its port then refuses connections).
    pub fn stop(&mut self) {
        if !self.stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            self.stopped = true;
        }
    }

    /// SIGSTOP: the port still accepts connections (kernel backlog) but nothing answers.
    pub fn pause(&self) {
        self.signal("-STOP");
        self.paused.store(true, Ordering::SeqCst);
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) {
        self.signal("-CONT");
        self.paused.store(false, Ordering::SeqCst);
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} failed");
    }

    /// The registry process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The User-Agent of an access-log line (its last quoted field), if it is one.
fn access_log_agent(line: &str) -> Option<&str> {
    if !line.starts_with("127.0.0.1 - ") || !line.ends_with('"') {
        return None;
    }
    line.rsplit('"').nth(1)
}

fn yaml_path(p: &Path) -> String {
    serde_json::to_string(p.to_str().expect("UTF-8 path")).unwrap()
}

/// A port that was free a moment ago (bind :0, read, release).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn collect_lines<R: Read + Send + 'static>(r: R, sink: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            sink.lock().unwrap().push(line);
        }
    });
}

fn rustls_client(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

/// A blocking HTTP/1.1 GET (TLS when `tls` is given); returns the status and the response head.
fn raw_get(
    addr: SocketAddr,
    tls: Option<&Arc<rustls::ClientConfig>>,
    path: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> std::io::Result<(u16, String)> {
    let tcp = TcpStream::connect_timeout(&addr, timeout)?;
    tcp.set_read_timeout(Some(timeout))?;
    tcp.set_write_timeout(Some(timeout))?;
    let mut req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: {HARNESS_USER_AGENT}\r\nConnection: close\r\n"
    );
    for (k, v) in headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    let head = match tls {
        None => exchange(tcp, &req)?,
        Some(cfg) => {
            let conn = rustls::ClientConnection::new(cfg.clone(), addr.ip().into())
                .map_err(std::io::Error::other)?;
            exchange(rustls::StreamOwned::new(conn, tcp), &req)?
        }
    };
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| head.strip_prefix("HTTP/1.0 "))
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP response: {head:?}")))?;
    Ok((status, head))
}

fn exchange<S: Read + Write>(mut s: S, req: &str) -> std::io::Result<String> {
    s.write_all(req.as_bytes())?;
    s.flush()?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                buf.extend_from_slice(&chunk[..n]);
                if buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    break;
                }
            }
            Err(e) if buf.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    if buf.is_empty() {
        return Err(std::io::Error::other("empty response"));
    }
    let text = String::from_utf8_lossy(&buf);
    Ok(text
        .split("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_string())
}

// ---------------------------------------------------------------------------------------------
// OCI layouts

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Writes `bytes` as a blob of the layout in `dir`; returns `sha256:…`.
fn write_blob(dir: &Path, bytes: &[u8]) -> String {
    let hex = sha256_hex(bytes);
    std::fs::write(dir.join("blobs/sha256").join(&hex), bytes).unwrap();
    format!("sha256:{hex}")
}

fn descriptor(media_type: &str, digest: &str, size: usize) -> Value {
    json!({"mediaType": media_type, "digest": digest, "size": size})
}

/// Writes a layer, a config and a manifest for one platform; returns the manifest descriptor.
fn image_manifest(
    dir: &Path,
    seed: &str,
    arch: &str,
    variant: Option<&str>,
    history: bool,
) -> Value {
    let content = format!("pinhook test image\nseed={seed}\narch={arch}\n");
    let tar = tar_one_file("pinhook/seed.txt", content.as_bytes());
    let diff_id = format!("sha256:{}", sha256_hex(&tar));
    let layer = gzip(&tar);
    let layer_digest = write_blob(dir, &layer);
    let mut config = json!({
        "created": "2024-01-01T00:00:00Z",
        "architecture": arch,
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Cmd": ["/bin/sh"],
            "Labels": {"pinhook.test/seed": seed},
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    });
    if let Some(v) = variant {
        config["variant"] = json!(v);
    }
    if history {
        config["history"] = json!([
            {
                "created": "2024-01-01T00:00:00Z",
                "created_by": format!("/bin/sh -c #(nop) ADD file:{} in /pinhook ", &diff_id[7..]),
            },
            {
                "created": "2024-01-01T00:00:00Z",
                "created_by": "/bin/sh -c #(nop)  CMD [\"/bin/sh\"]",
                "empty_layer": true,
            },
        ]);
    }
    let config = serde_json::to_vec(&config).unwrap();
    let config_digest = write_blob(dir, &config);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": descriptor("application/vnd.oci.image.config.v1+json", &config_digest, config.len()),
        "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", &layer_digest, layer.len())],
    });
    let manifest = serde_json::to_vec(&manifest).unwrap();
    descriptor(OCI_MANIFEST, &write_blob(dir, &manifest), manifest.len())
}

/// A ustar archive holding one regular file (mode 0644, uid/gid 0, mtime 0): deterministic.
fn tar_one_file(name: &str, content: &[u8]) -> Vec<u8> {
    assert!(name.len() < 100);
    let mut h = [0u8; 512];
    let put = |h: &mut [u8; 512], off: usize, s: &[u8]| h[off..off + s.len()].copy_from_slice(s);
    put(&mut h, 0, name.as_bytes());
    put(&mut h, 100, b"0000644\0");
    put(&mut h, 108, b"0000000\0");
    put(&mut h, 116, b"0000000\0");
    put(&mut h, 124, format!("{:011o}\0", content.len()).as_bytes());
    put(&mut h, 136, b"00000000000\0");
    put(&mut h, 148, b"        ");
    h[156] = b'0';
    put(&mut h, 257, b"ustar\0");
    put(&mut h, 263, b"00");
    put(&mut h, 265, b"root");
    put(&mut h, 297, b"root");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    put(&mut h, 148, format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(content);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// `gzip -n` (no name, no timestamp: deterministic).
fn gzip(data: &[u8]) -> Vec<u8> {
    let mut child = Command::new("gzip")
        .args(["-n", "-c"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn gzip");
    let mut stdin = child.stdin.take().unwrap();
    let data = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(out.status.success());
    out.stdout
}

// ---------------------------------------------------------------------------------------------
// Servers of our own: a tokio runtime on a background thread.

/// A task serving a listener bound on 127.0.0.1:0, on a current-thread runtime of its own
/// thread. Dropping it stops the task (and every connection task) and joins the thread.
pub struct Background {
    /// The listening address.
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Background {
    /// Binds 127.0.0.1:0 and runs `serve(listener)` on a new thread until dropped.
    pub fn spawn<F, Fut>(name: &str, serve: F) -> Self
    where
        F: FnOnce(tokio::net::TcpListener) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                    tokio::select! {
                        _ = serve(listener) => {}
                        _ = rx => {}
                    }
                });
                // Dropping `rt` here cancels every spawned connection task.
            })
            .unwrap();
        Self {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Serves an axum router on a [`Background`] thread.
pub fn serve_router(name: &str, router: axum::Router) -> Background {
    Background::spawn(name, move |listener| async move {
        let _ = axum::serve(listener, router).await;
    })
}

// ---------------------------------------------------------------------------------------------
// Token issuer

/// One request to the token endpoint.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// The request's User-Agent.
    pub user_agent: String,
    /// The `scope` parameters, decoded.
    pub scopes: Vec<String>,
    /// Whether the Basic credentials matched (a token was issued).
    pub authorized: bool,
}

struct IssuerState {
    user: String,
    password: String,
    ttl: Duration,
    key: ring::signature::EcdsaKeyPair,
    rng: ring::rand::SystemRandom,
    x5c: String,
    jti: AtomicUsize,
    requests: Mutex<Vec<TokenRequest>>,
}

/// A Docker token service (the Docker Hub / GHCR protocol): `GET /token?service=…&scope=…` with
/// HTTP Basic credentials answers `{"token", "access_token", "expires_in", "issued_at"}`, an
/// ES256 JWT whose header `x5c` holds the signing certificate (which is also the registry's
/// `rootcertbundle`). Wrong or missing credentials: 401. Every requested scope is granted
/// with the requested actions (skopeo pushes ask for `pull,push`).
///
/// Lifetime: `expires_in` is the configured TTL, and the JWT's `exp` is set 60 s earlier than
/// `iat + ttl` to cancel distribution's 60 s clock-skew leeway, so the registry really answers
/// `401 invalid_token` about `ttl` after issue (to the second). Clients must treat the token as
/// opaque (as the token spec says) and use `expires_in`; with a TTL under 60 s, `exp` lies
/// before `iat`.
pub struct TokenIssuer {
    /// Where it listens.
    pub addr: SocketAddr,
    cert_pem: String,
    state: Arc<IssuerState>,
    _server: Background,
}

impl TokenIssuer {
    /// Starts an issuer accepting `user`/`password`, whose tokens registries accept for `ttl`.
    pub fn start(user: &str, password: &str, ttl: Duration) -> Self {
        let key = rcgen::KeyPair::generate().expect("P-256 key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "pinhook test token signer");
        let cert = params.self_signed(&key).expect("self-signed token cert");
        let rng = ring::rand::SystemRandom::new();
        let signing = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &rng,
        )
        .expect("ring accepts rcgen's PKCS#8");
        let state = Arc::new(IssuerState {
            user: user.into(),
            password: password.into(),
            ttl,
            key: signing,
            rng,
            x5c: B64.encode(cert.der()),
            jti: AtomicUsize::new(0),
            requests: Mutex::new(Vec::new()),
        });
        let router = axum::Router::new()
            .route("/token", axum::routing::get(token_handler))
            .with_state(state.clone());
        let server = serve_router("token-issuer", router);
        Self {
            addr: server.addr,
            cert_pem: cert.pem(),
            state,
            _server: server,
        }
    }

    /// `http://127.0.0.1:PORT/token`.
    pub fn realm(&self) -> String {
        format!("http://{}/token", self.addr)
    }

    /// The signing certificate (PEM), self-signed.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Requests to `/token` (authorized or not), except skopeo's.
    pub fn token_requests(&self) -> usize {
        self.requests().len()
    }

    /// Requests to `/token`, except skopeo's, oldest first.
    pub fn requests(&self) -> Vec<TokenRequest> {
        self.state
            .requests
            .lock()
            .unwrap()
            .iter()
            .filter(|r| !r.user_agent.starts_with("skopeo/"))
            .cloned()
            .collect()
    }

    /// Every request to `/token`, skopeo's included.
    pub fn all_requests(&self) -> Vec<TokenRequest> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Signs a token for `scopes` (e.g. `repository:demo/app:pull`) directly, without counting.
    pub fn issue(&self, scopes: &[&str]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        sign_token(&self.state, &scopes, self.state.ttl)
    }

    /// Signs a token the registry already refuses as expired.
    pub fn issue_expired(&self, scopes: &[&str]) -> String {
        let scopes: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
        sign_token(&self.state, &scopes, Duration::ZERO)
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A JWT granting the requested actions on each `type:name:actions` scope. Its `exp` is pulled
/// back by the registry's 60 s leeway so the registry stops accepting it `ttl` after issue
/// (`ttl` zero: already refused).
fn sign_token(state: &IssuerState, scopes: &[String], ttl: Duration) -> String {
    let now = unix_now();
    let access: Vec<Value> = scopes
        .iter()
        .filter_map(|s| {
            let (kind, rest) = s.split_once(':')?;
            let (name, actions) = rest.rsplit_once(':')?;
            let actions: Vec<&str> = actions.split(',').filter(|a| !a.is_empty()).collect();
            Some(json!({"type": kind, "name": name, "actions": actions}))
        })
        .collect();
    let exp = (now + ttl.as_secs()) as i64
        - REGISTRY_TOKEN_LEEWAY.as_secs() as i64
        - i64::from(ttl.is_zero());
    let header = json!({"alg": "ES256", "typ": "JWT", "x5c": [state.x5c]});
    let claims = json!({
        "iss": TOKEN_ISSUER,
        "sub": state.user,
        "aud": TOKEN_SERVICE,
        "exp": exp,
        "nbf": now,
        "iat": now,
        "jti": format!("pinhook-test-{}", state.jti.fetch_add(1, Ordering::Relaxed)),
        "access": access,
    });
    let input = format!(
        "{}.{}",
        B64URL.encode(serde_json::to_vec(&header).unwrap()),
        B64URL.encode(serde_json::to_vec(&claims).unwrap())
    );
    let sig = state.key.sign(&state.rng, input.as_bytes()).unwrap();
    format!("{input}.{}", B64URL.encode(sig.as_ref()))
}

async fn token_handler(
    State(state): State<Arc<IssuerState>>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response {
    let mut scopes = Vec::new();
    let mut service = None;
    for pair in query.as_deref().unwrap_or("").split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "scope" => scopes.extend(
                percent_decode(v)
                    .split(' ')
                    .filter(|s| !s.is_empty())
                    .map(String::from),
            ),
            "service" => service = Some(percent_decode(v)),
            _ => {}
        }
    }
    let authorized = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| B64.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .is_some_and(|c| c == format!("{}:{}", state.user, state.password));
    let user_agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    state.requests.lock().unwrap().push(TokenRequest {
        user_agent,
        scopes: scopes.clone(),
        authorized,
    });
    if !authorized {
        return (
            StatusCode::UNAUTHORIZED,
            [(
                header::WWW_AUTHENTICATE,
                format!("Basic realm=\"{TOKEN_ISSUER}\""),
            )],
            axum::Json(json!({"errors": [{"code": "UNAUTHORIZED", "message": "authentication required", "detail": null}]})),
        )
            .into_response();
    }
    if service.as_deref().is_some_and(|s| s != TOKEN_SERVICE) {
        return (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({"errors": [{"code": "DENIED", "message": "unknown service"}]})),
        )
            .into_response();
    }
    let token = sign_token(&state, &scopes, state.ttl);
    let issued_at = time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    axum::Json(json!({
        "token": token,
        "access_token": token,
        "expires_in": state.ttl.as_secs(),
        "issued_at": issued_at,
    }))
    .into_response()
}

/// Decodes `%XX` escapes and `+` (form encoding).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len()
                && bytes[i + 1].is_ascii_hexdigit()
                && bytes[i + 2].is_ascii_hexdigit() =>
            {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
                continue;
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Fault-injecting proxy

/// What a [`DelayProxy`] does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyMode {
    /// Forward untouched.
    Pass,
    /// Forward, holding each client→server burst for this long (~one delay per round trip).
    Delay(Duration),
    /// Accept, read and discard, never answer.
    BlackHole,
    /// Accept, then close at once with a TCP reset.
    Reset,
}

/// A TCP proxy on 127.0.0.1 in front of `target` that injects faults. Its mode can change
/// while it runs (new connections, and each new burst of `Delay`, see the new mode).
pub struct DelayProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    mode: Arc<Mutex<ProxyMode>>,
    accepted: Arc<AtomicUsize>,
    _server: Background,
}

impl DelayProxy {
    /// Starts a proxy to `target` in `mode`.
    pub fn start(target: SocketAddr, mode: ProxyMode) -> Self {
        let shared = Arc::new(Mutex::new(mode));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (m, a) = (shared.clone(), accepted.clone());
        let server = Background::spawn("delay-proxy", move |listener| async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    continue;
                };
                a.fetch_add(1, Ordering::Relaxed);
                let m = m.clone();
                tokio::spawn(proxy_conn(client, target, m));
            }
        });
        Self {
            addr: server.addr,
            mode: shared,
            accepted,
            _server: server,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// Switches the mode.
    pub fn set_mode(&self, mode: ProxyMode) {
        *self.mode.lock().unwrap() = mode;
    }

    /// The current mode.
    pub fn mode(&self) -> ProxyMode {
        *self.mode.lock().unwrap()
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

async fn proxy_conn(
    mut client: tokio::net::TcpStream,
    target: SocketAddr,
    mode: Arc<Mutex<ProxyMode>>,
) {
    let current = || *mode.lock().unwrap();
    match current() {
        ProxyMode::Reset => {
            let _ = client.set_zero_linger();
            drop(client);
            return;
        }
        ProxyMode::BlackHole => {
            let mut buf = [0u8; 4096];
            while matches!(client.read(&mut buf).await, Ok(n) if n > 0) {}
            // Keep it open after the client half-closes, until the client goes away.
            std::future::pending::<()>().await;
            return;
        }
        ProxyMode::Pass | ProxyMode::Delay(_) => {}
    }
    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
        let _ = client.set_zero_linger();
        return;
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let upstream = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let mut burst = buf[..n].to_vec();
            if let ProxyMode::Delay(d) = current() {
                tokio::time::sleep(d).await;
                // Whatever else arrived while we held the burst goes with it.
                loop {
                    match cr.try_read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => burst.extend_from_slice(&buf[..n]),
                        Err(_) => break,
                    }
                }
            }
            if sw.write_all(&burst).await.is_err() {
                break;
            }
        }
        let _ = sw.shutdown().await;
    };
    let downstream = async move {
        let _ = tokio::io::copy(&mut sr, &mut cw).await;
        let _ = cw.shutdown().await;
    };
    tokio::join!(upstream, downstream);
}
