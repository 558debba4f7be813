//! A real Kubernetes control plane for end-to-end tests: `scripts/testcluster up` (embedded
//! etcd, kube-apiserver and kube-controller-manager of the release in tests/cluster/go.mod),
//! driven with the kubectl of the same release, and pinhook registered with it by the chart's
//! own render (`webhook.url`, `webhook.namespaceLabels`). One cluster per test binary, shared by
//! its tests; each test works in namespaces of its own, labelled so that only its own pinhook
//! judges them. The cluster stops by itself when the test binary exits.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::Deserialize as _;
use serde_json::{Value, json};

use super::Pinhook;

/// The label that ties a test namespace to the pinhook registration of one test.
pub const TEST_LABEL: &str = "e2e.pinhook.dev/test";

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A running test cluster.
pub struct Cluster {
    /// DIR of `scripts/testcluster up DIR`: kubeconfig, audit.log, kubectl, pid.
    pub dir: PathBuf,
    _tmp: tempfile::TempDir,
}

static CLUSTER: LazyLock<Cluster> = LazyLock::new(|| Cluster::start(None));

/// The cluster of this test binary, started on first use.
pub fn cluster() -> &'static Cluster {
    &CLUSTER
}

/// What a kubectl run printed.
#[derive(Debug, Clone)]
pub struct Out {
    /// Whether it exited 0.
    pub ok: bool,
    /// Standard output.
    pub stdout: String,
    /// Standard error (kubectl's errors and the API server's `Warning:` lines).
    pub stderr: String,
    /// How long it took.
    pub elapsed: Duration,
}

impl Cluster {
    /// Starts a cluster of its own; with `static_policies`, its API server also loads the
    /// ValidatingAdmissionPolicies of that directory from disk.
    pub fn start(static_policies: Option<&Path>) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("pinhook-testcluster-")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let script = root().join("scripts/testcluster");
        let mut cmd = Command::new(&script);
        cmd.arg("up")
            .arg(&dir)
            .env("TESTCLUSTER_OWNER_PID", std::process::id().to_string());
        if let Some(p) = static_policies {
            cmd.env("TESTCLUSTER_STATIC_POLICIES", p);
        }
        let out = cmd.output().expect("run scripts/testcluster");
        assert!(
            out.status.success(),
            "scripts/testcluster up failed (is the control plane built? `make cluster`):\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir, _tmp: tmp }
    }

    /// The cluster-admin kubeconfig.
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.join("kubeconfig")
    }

    /// The API server's URL.
    pub fn server(&self) -> String {
        std::fs::read_to_string(self.dir.join("ready"))
            .unwrap()
            .trim()
            .to_owned()
    }

    /// The cluster's CA (PEM).
    pub fn ca_pem(&self) -> String {
        std::fs::read_to_string(self.dir.join("ca.crt")).unwrap()
    }

    /// Runs `kubectl ARGS` as cluster-admin.
    pub fn kubectl(&self, args: &[&str]) -> Out {
        self.kubectl_as(&self.kubeconfig(), args, None)
    }

    /// Runs `kubectl ARGS` as cluster-admin with `stdin`.
    pub fn kubectl_in(&self, args: &[&str], stdin: &str) -> Out {
        self.kubectl_as(&self.kubeconfig(), args, Some(stdin))
    }

    /// Runs `kubectl ARGS` with another kubeconfig.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Out {
        let started = Instant::now();
        let mut child = Command::new(self.dir.join("kubectl"))
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        let out = child.wait_with_output().unwrap();
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: started.elapsed(),
        }
    }

    /// `kubectl ARGS`, which must succeed; its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(out.ok, "kubectl {args:?} failed:\n{}", out.stderr);
        out.stdout
    }

    /// `kubectl apply -f -` of `objects` (JSON or YAML text), which must succeed.
    pub fn apply(&self, objects: &str) -> Out {
        let out = self.kubectl_in(&["apply", "-f", "-"], objects);
        assert!(out.ok, "kubectl apply failed:\n{}\n{objects}", out.stderr);
        out
    }

    /// `kubectl run probe --image=IMAGE -n NS --dry-run=server -o json`: the whole admission
    /// chain (policies, webhooks) runs, nothing is stored; stdout is the admitted Pod.
    pub fn dry_run_pod(&self, ns: &str, image: &str) -> Out {
        let image = format!("--image={image}");
        self.kubectl(&[
            "run",
            "probe",
            "-n",
            ns,
            &image,
            "--dry-run=server",
            "-o",
            "json",
        ])
    }

    /// `kubectl apply -n NS -f -` of `objects`, which must succeed.
    pub fn apply_in(&self, ns: &str, objects: &str) -> Out {
        let out = self.kubectl_in(&["apply", "-n", ns, "-f", "-"], objects);
        assert!(
            out.ok,
            "kubectl apply -n {ns} failed:\n{}\n{objects}",
            out.stderr
        );
        out
    }

    /// `kubectl get WHAT -o json` in `ns` (`None`: cluster-scoped).
    pub fn get(&self, ns: Option<&str>, what: &[&str]) -> Value {
        let mut args = vec!["get"];
        args.extend_from_slice(what);
        args.extend_from_slice(&["-o", "json"]);
        if let Some(ns) = ns {
            args.extend_from_slice(&["-n", ns]);
        }
        serde_json::from_str(&self.ok(&args)).unwrap()
    }

    /// The `items` of `kubectl get KIND -n NS -o json`.
    pub fn items(&self, ns: &str, kind: &str) -> Vec<Value> {
        self.get(Some(ns), &[kind])["items"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Creates namespace `name` labelled for the test `test` (`None`: not judged by any test's
    /// pinhook).
    pub fn namespace(&self, name: &str, test: Option<&str>) {
        let mut labels = serde_json::Map::new();
        if let Some(t) = test {
            labels.insert(TEST_LABEL.into(), t.into());
        }
        let ns = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": name, "labels": labels}});
        self.apply(&ns.to_string());
    }

    /// The API server's audit events so far (audit.log, JSON lines).
    pub fn audit_events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// A kubeconfig file in `dir` that authenticates with a bearer `token`.
    pub fn token_kubeconfig(&self, dir: &Path, token: &str) -> PathBuf {
        let ca = base64::engine::general_purpose::STANDARD.encode(self.ca_pem());
        let cfg = json!({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "c", "cluster": {"server": self.server(),
                "certificate-authority-data": ca}}],
            "users": [{"name": "u", "user": {"token": token}}],
            "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
            "current-context": "c",
        });
        let path = dir.join("token.kubeconfig");
        std::fs::write(&path, cfg.to_string()).unwrap();
        path
    }
}

impl Drop for Cluster {
    /// Stops the cluster (the shared ones, in statics, stop with the test binary instead).
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/testcluster"))
            .arg("down")
            .arg(&self.dir)
            .output();
    }
}

/// Polls `f` every 200 ms until it returns `Some`, for at most `timeout`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let started = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            started.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The chart rendered by scripts/chart.py (Helm's own engine) in certificate `mode`, with an
/// extra values file of `values` (YAML), as objects.
pub fn render_chart(mode: &str, release: &str, namespace: &str, values: &str) -> Vec<Value> {
    let python = root().join(".tools/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make packaging-deps` (scripts/install-packaging-tools.sh)",
        python.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("values.yaml");
    std::fs::write(&f, values).unwrap();
    let out = Command::new(python)
        .arg(root().join("scripts/chart.py"))
        .args(["render", "--mode", mode, "--release", release])
        .args(["--namespace", namespace, "-f"])
        .arg(&f)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "render failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml_ng::Deserializer::from_str(&String::from_utf8(out.stdout).unwrap())
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|d| !d.is_null())
        .collect()
}

/// The objects of `docs` of one of `kinds`, as a `List` for `kubectl apply`.
pub fn list_of(docs: &[Value], kinds: &[&str]) -> String {
    let items: Vec<&Value> = docs
        .iter()
        .filter(|d| kinds.contains(&d["kind"].as_str().unwrap_or_default()))
        .collect();
    assert!(!items.is_empty(), "the render has none of {kinds:?}");
    json!({"apiVersion": "v1", "kind": "List", "items": items}).to_string()
}

/// How a test registers its pinhook.
#[derive(Debug, Clone)]
pub struct Registration {
    /// Helm release name: names the webhook configurations.
    pub release: String,
    /// `webhook.failurePolicy`.
    pub failure_policy: &'static str,
    /// `webhook.timeoutSeconds`.
    pub timeout_seconds: u32,
}

impl Registration {
    /// Release `test`, failurePolicy Fail, 10 s.
    pub fn new(test: &str) -> Self {
        Self {
            release: test.to_owned(),
            failure_policy: "Fail",
            timeout_seconds: 10,
        }
    }
}

/// Registers `pinhook` (running on 127.0.0.1 with its test certificate) for the namespaces
/// labelled `TEST_LABEL=<reg.release>`: the chart's MutatingWebhookConfiguration and
/// ValidatingWebhookConfiguration, rendered with `webhook.url` and the certificate's CA as
/// `caBundle` (certificate mode `secret`).
pub fn register(c: &Cluster, pinhook: &Pinhook, reg: &Registration) -> Vec<Value> {
    register_at(c, pinhook.addr, &pinhook.ca_pem, reg)
}

/// [`register`] for a pinhook listening on `addr` with a certificate signed by `ca_pem`.
pub fn register_at(
    c: &Cluster,
    addr: std::net::SocketAddr,
    ca_pem: &str,
    reg: &Registration,
) -> Vec<Value> {
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    let values = format!(
        "webhook:\n  url: https://{addr}\n  failurePolicy: {fp}\n  timeoutSeconds: {t}\n  \
         namespaceLabels:\n    {TEST_LABEL}: {rel}\ncertificates:\n  mode: secret\n  secret:\n    \
         name: unused\n    caBundle: {ca}\n",
        fp = reg.failure_policy,
        t = reg.timeout_seconds,
        rel = reg.release,
    );
    let docs = render_chart(
        "secret",
        &reg.release,
        &format!("pinhook-{}", reg.release),
        &values,
    );
    c.apply(&list_of(
        &docs,
        &[
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ],
    ));
    docs
}

/// Waits until a server-side dry run of a Pod with a mutable tag in `ns` reaches pinhook (its
/// denial or its warning): the API server has loaded the webhook configurations.
pub fn wait_registered(c: &Cluster, ns: &str) {
    wait_for(Duration::from_secs(30), "the webhooks to be called", || {
        let out = c.dry_run_pod(ns, "127.0.0.1:1/pinhook-probe:latest");
        out.stderr.contains("pinhook").then_some(())
    });
}

/// A Pod manifest with one container.
pub fn pod(name: &str, image: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{"name": "app", "image": image}]}})
}

/// A Deployment manifest of `replicas` with one container `app`.
pub fn deployment(name: &str, image: &str, replicas: u32) -> Value {
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name},
        "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image}]}}}})
}
