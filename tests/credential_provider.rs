//! The kubelet's credential-provider plugins, run by pinhook: a plugin of the test's own
//! (a Python script speaking `credentialprovider.kubelet.k8s.io/v1` on stdin/stdout, as
//! documented at <https://kubernetes.io/docs/tasks/administer-cluster/kubelet-credential-provider/>)
//! hands out the credentials of a real `docker-registry` with Basic auth; every expected digest
//! is the one `skopeo` pushed, never one computed by pinhook. The plugin appends each request
//! it gets (and its argv, environment and pid) to a file, so the tests assert the request JSON,
//! how often it ran (caching, single flight), that a hung plugin was killed, and the messages
//! for plugins that fail.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::kube::FakeKube;
use common::registry::{Registry, RegistryAuth, RegistryOptions, TestImage};
use common::{Http, Options, Pinhook, fixture};
use serde_json::{Value, json};

/// The plugin: reads the request, logs it, then behaves as the `mode` file says.
const PLUGIN: &str = r#"#!/usr/bin/env python3
import json, os, sys, time
request = sys.stdin.read()
here = os.path.dirname(os.path.abspath(__file__))
state = os.environ["PLUGIN_STATE"]
def setting(name, default):
    try:
        with open(os.path.join(state, name)) as f:
            return f.read().strip()
    except FileNotFoundError:
        return default
with open(os.path.join(state, "requests.jsonl"), "a") as f:
    f.write(json.dumps({"request": json.loads(request), "argv": sys.argv[1:],
                        "env": os.environ.get("PLUGIN_GREETING"), "pid": os.getpid()}) + "\n")
mode = setting("mode", "ok")
time.sleep(float(setting("delay", "0")))
if mode == "hang":
    time.sleep(60)
if mode == "fail":
    sys.stderr.write("cannot reach the metadata service\n")
    sys.exit(3)
if mode == "garbage":
    print("password=hunter2 <- not JSON")
    sys.exit(0)
response = {
    "kind": "CredentialProviderResponse",
    "apiVersion": setting("api_version", "credentialprovider.kubelet.k8s.io/v1"),
    "cacheKeyType": setting("cache_key_type", "Registry"),
    "auth": {key: {"username": setting("user", ""), "password": setting("password", "")}
             for key in setting("auth_keys", "").split(",")},
}
duration = setting("cache_duration", "")
if duration:
    response["cacheDuration"] = duration
print(json.dumps(response))
"#;

/// A plugin installed in a bin dir, its config file, and the state directory it reads.
struct Plugin {
    dir: tempfile::TempDir,
}

impl Plugin {
    /// `test-plugin` for images of `host`, handing out `user:password` for `host`.
    fn new(host: &str, user: &str, password: &str) -> Self {
        Self::with(&[host], user, password, "")
    }

    /// `test-plugin` for images of `hosts`, handing out `user:password` for each, with `extra`
    /// YAML added to the provider's entry (indented 4 spaces).
    fn with(hosts: &[&str], user: &str, password: &str, extra: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let state = dir.path().join("state");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&state).unwrap();
        let exe = bin.join("test-plugin");
        std::fs::write(&exe, PLUGIN).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let config = format!(
            r#"apiVersion: kubelet.config.k8s.io/v1
kind: CredentialProviderConfig
providers:
  - name: test-plugin
    matchImages: [{match_images}, "*.unused.example"]
    defaultCacheDuration: 5m
    apiVersion: credentialprovider.kubelet.k8s.io/v1
    args: [get-credentials, --verbose]
    env:
      - name: PLUGIN_STATE
        value: {state}
      - name: PLUGIN_GREETING
        value: from-the-config
{extra}"#,
            state = state.display(),
            match_images = hosts
                .iter()
                .map(|h| format!("{h:?}"))
                .collect::<Vec<_>>()
                .join(", "),
        );
        std::fs::write(dir.path().join("config.yaml"), config).unwrap();
        let p = Self { dir };
        p.set("auth_keys", &hosts.join(","));
        p.set("user", user);
        p.set("password", password);
        p
    }

    fn set(&self, name: &str, value: &str) {
        std::fs::write(self.dir.path().join("state").join(name), value).unwrap();
    }

    fn config(&self) -> PathBuf {
        self.dir.path().join("config.yaml")
    }

    fn bin_dir(&self) -> PathBuf {
        self.dir.path().join("bin")
    }

    /// The flags that turn it on.
    fn args(&self) -> Vec<String> {
        vec![
            "--image-credential-provider-config".into(),
            self.config().display().to_string(),
            "--image-credential-provider-bin-dir".into(),
            self.bin_dir().display().to_string(),
        ]
    }

    /// Every call so far: request, argv, env, pid.
    fn calls(&self) -> Vec<Value> {
        match std::fs::read_to_string(self.dir.path().join("state/requests.jsonl")) {
            Ok(text) => text
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect(),
            Err(_) => Vec::new(),
        }
    }
}

fn insecure_policy(host: &str) -> String {
    format!("registries:\n  - host: {host}\n    insecure: true\n")
}

fn basic_registry() -> Registry {
    Registry::start(RegistryOptions {
        tls: false,
        auth: RegistryAuth::basic("alice", "s3cret"),
    })
}

fn server(host: &str, args: Vec<String>) -> Pinhook {
    Pinhook::start_with(Options {
        policy: Some(insecure_policy(host)),
        args,
        ..Default::default()
    })
}

/// A Pod review with one container running `image`, with a fresh uid.
fn review(image: &str) -> Value {
    static UID: AtomicUsize = AtomicUsize::new(0);
    let mut r = fixture("pod_version_tags");
    let n = UID.fetch_add(1, Ordering::Relaxed);
    r["request"]["uid"] = json!(format!("0c0d0e0f-0000-4000-8000-{n:012}"));
    r["request"]["object"]["spec"]["containers"] = json!([{"name": "app", "image": image}]);
    r
}

/// `/mutate`'s response to `review`, with `timeout` as the API server's `?timeout=`.
async fn mutate_within(server: &Pinhook, review: &Value, timeout: &str) -> Value {
    let (status, _, body) = server
        .post_json(
            Http::V2,
            &format!("/mutate?timeout={timeout}"),
            serde_json::to_vec(review).unwrap(),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["response"]["uid"], review["request"]["uid"], "{body}");
    body["response"].clone()
}

async fn mutate(server: &Pinhook, review: &Value) -> Value {
    mutate_within(server, review, "10s").await
}

/// The image the patch writes (panics when the response has no patch).
fn pinned(resp: &Value) -> String {
    assert_eq!(resp["allowed"], true, "{resp}");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(resp["patch"].as_str().expect("a patch"))
        .unwrap();
    let patch: Value = serde_json::from_slice(&bytes).unwrap();
    patch
        .as_array()
        .unwrap()
        .iter()
        .find(|op| op["op"] == "replace")
        .expect("a replace operation")["value"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn denial(resp: &Value) -> String {
    assert_eq!(resp["allowed"], false, "{resp}");
    resp["status"]["message"].as_str().unwrap().to_owned()
}

/// Writes a docker `config.json` with `user:password` for `host` into `dir`.
fn docker_config(dir: &Path, host: &str, user: &str, password: &str) -> String {
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let path = dir.join("config.json");
    std::fs::write(
        &path,
        serde_json::to_vec(&json!({"auths": {host: {"auth": auth}}})).unwrap(),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

#[tokio::test]
async fn plugin_credentials_pin_the_registry_digest_and_a_registry_answer_is_reused() {
    let reg = basic_registry();
    let h = reg.host.clone();
    let one = reg.push("private/app", "1.0.0", &TestImage::docker_v2("cp-one"));
    let two = reg.push("private/api", "2.0.0", &TestImage::single("cp-two"));
    let plugin = Plugin::new(&h, "alice", "s3cret");
    let server = server(&h, plugin.args());

    let started = Instant::now();
    let resp = mutate(&server, &review(&format!("{h}/private/app:1.0.0"))).await;
    let first = started.elapsed();
    assert_eq!(pinned(&resp), format!("{h}/private/app:1.0.0@{one}"));

    let calls = plugin.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(
        calls[0]["request"],
        json!({
            "kind": "CredentialProviderRequest",
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "image": format!("{h}/private/app"),
        }),
        "the request carries no token: the provider has no tokenAttributes"
    );
    assert_eq!(calls[0]["argv"], json!(["get-credentials", "--verbose"]));
    assert_eq!(calls[0]["env"], "from-the-config");

    // cacheKeyType Registry: another repository of the registry needs no plugin call.
    let started = Instant::now();
    let resp = mutate(&server, &review(&format!("{h}/private/api:2.0.0"))).await;
    let second = started.elapsed();
    assert_eq!(pinned(&resp), format!("{h}/private/api:2.0.0@{two}"));
    assert_eq!(
        plugin.calls().len(),
        1,
        "the registry-wide answer was reused"
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(
            "pinhook_credential_provider_runs_total{provider=\"test-plugin\",outcome=\"ok\"} 1\n"
        ),
        "{metrics}"
    );
    eprintln!("first admission (plugin run + registry) {first:?}, second (cached) {second:?}");
}

#[tokio::test]
async fn an_image_keyed_answer_is_reused_for_that_image_only_and_zero_duration_not_at_all() {
    let reg = basic_registry();
    let h = reg.host.clone();
    let one = reg.push("private/app", "1.0.0", &TestImage::single("cp-img-one"));
    reg.push("private/app", "1.0.1", &TestImage::single("cp-img-two"));
    let other = reg.push("private/web", "1.0.0", &TestImage::single("cp-img-three"));
    let plugin = Plugin::new(&h, "alice", "s3cret");
    plugin.set("cache_key_type", "Image");
    let server = server(&h, plugin.args());

    for tag in ["1.0.0", "1.0.1"] {
        let resp = mutate(&server, &review(&format!("{h}/private/app:{tag}"))).await;
        assert!(pinned(&resp).starts_with(&format!("{h}/private/app:{tag}@sha256:")));
    }
    assert_eq!(plugin.calls().len(), 1, "two tags of one image: one call");
    let resp = mutate(&server, &review(&format!("{h}/private/web:1.0.0"))).await;
    assert_eq!(pinned(&resp), format!("{h}/private/web:1.0.0@{other}"));
    assert_eq!(plugin.calls().len(), 2, "another image: asked again");

    // cacheDuration 0s: the answer is used once and never cached.
    let fresh = Plugin::new(&h, "alice", "s3cret");
    fresh.set("cache_duration", "0s");
    let server = self::server(&h, fresh.args());
    for _ in 0..3 {
        let resp = mutate(&server, &review(&format!("{h}/private/app:1.0.0"))).await;
        assert_eq!(pinned(&resp), format!("{h}/private/app:1.0.0@{one}"));
    }
    assert_eq!(fresh.calls().len(), 3);
}

#[tokio::test]
async fn a_global_answer_serves_another_registry_with_its_own_entry_of_the_auth_map() {
    let a = basic_registry();
    let b = Registry::start(RegistryOptions {
        tls: false,
        auth: RegistryAuth::basic("alice", "s3cret"),
    });
    let da = a.push("private/app", "1.0.0", &TestImage::single("cp-global-a"));
    let db = b.push("private/app", "1.0.0", &TestImage::single("cp-global-b"));
    let plugin = Plugin::with(&[&a.host, &b.host], "alice", "s3cret", "");
    plugin.set("cache_key_type", "Global");
    let server = Pinhook::start_with(Options {
        policy: Some(format!(
            "registries:\n  - host: {}\n    insecure: true\n  - host: {}\n    insecure: true\n",
            a.host, b.host
        )),
        args: plugin.args(),
        ..Default::default()
    });
    for (reg, digest) in [(&a, &da), (&b, &db)] {
        let image = format!("{}/private/app:1.0.0", reg.host);
        let resp = mutate(&server, &review(&image)).await;
        assert_eq!(pinned(&resp), format!("{image}@{digest}"));
    }
    let calls = plugin.calls();
    assert_eq!(calls.len(), 1, "one answer for every registry: {calls:?}");
    assert_eq!(
        calls[0]["request"]["image"],
        format!("{}/private/app", a.host)
    );
}

#[tokio::test]
async fn concurrent_admissions_of_one_image_share_one_plugin_run() {
    let reg = basic_registry();
    let h = reg.host.clone();
    let digest = reg.push("private/app", "1.0.0", &TestImage::single("cp-flight"));
    let plugin = Plugin::new(&h, "alice", "s3cret");
    plugin.set("delay", "0.5");
    let server = server(&h, plugin.args());
    let image = format!("{h}/private/app:1.0.0");
    let reviews: Vec<Value> = (0..8).map(|_| review(&image)).collect();
    let answers = futures_util::future::join_all(reviews.iter().map(|r| mutate(&server, r))).await;
    for resp in &answers {
        assert_eq!(pinned(resp), format!("{image}@{digest}"));
    }
    assert_eq!(plugin.calls().len(), 1, "{:?}", plugin.calls());
}

#[tokio::test]
async fn a_hung_plugin_is_killed_within_the_admission_deadline_and_named() {
    let reg = basic_registry();
    let h = reg.host.clone();
    reg.push("private/app", "1.0.0", &TestImage::single("cp-hang"));
    let plugin = Plugin::new(&h, "alice", "s3cret");
    plugin.set("mode", "hang");
    let server = server(&h, plugin.args());
    let image = format!("{h}/private/app:1.0.0");
    let started = Instant::now();
    // 4 s from the API server, 1 s of pinhook's margin: 3 s; the registry keeps half of it.
    let msg = denial(&mutate_within(&server, &review(&image), "4s").await);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(4), "{took:?}");
    assert!(
        msg.contains(&format!(
            "credential provider \"test-plugin\" for image {h}/private/app: did not answer within 1.5s and was killed"
        )),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("registry {h} refused access to private/app (unauthorized; tried anonymous; credential provider")),
        "{msg}"
    );
    let metrics = server.metrics().await;
    assert!(
        metrics.contains(
            "pinhook_credential_provider_runs_total{provider=\"test-plugin\",outcome=\"timeout\"} 1\n"
        ),
        "{metrics}"
    );
    let pid = plugin.calls()[0]["pid"].as_u64().unwrap();
    let alive = Command::new("kill")
        .args(["-0", &pid.to_string()])
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(!alive, "plugin process {pid} is still running");
}

#[tokio::test]
async fn a_failing_plugin_is_named_and_pinhook_falls_back_to_the_registry_config() {
    let reg = basic_registry();
    let h = reg.host.clone();
    let digest = reg.push("private/app", "1.0.0", &TestImage::single("cp-fail"));
    let image = format!("{h}/private/app:1.0.0");
    let plugin = Plugin::new(&h, "alice", "s3cret");
    let dir = tempfile::tempdir().unwrap();
    let config = docker_config(dir.path(), &h, "alice", "s3cret");
    let mut args = plugin.args();
    args.extend(["--registry-config".to_owned(), config.clone()]);
    let with_fallback = server(&h, args);
    let alone = server(&h, plugin.args());

    let cases = [
        (
            "fail",
            None,
            "exited with status 3; stderr: cannot reach the metadata service",
        ),
        (
            "garbage",
            None,
            "its output is not a JSON object (29 bytes; line 1, column 1)",
        ),
        (
            "ok",
            Some(("api_version", "credentialprovider.kubelet.k8s.io/v1beta1")),
            "its response has apiVersion \"credentialprovider.kubelet.k8s.io/v1beta1\", expected \"credentialprovider.kubelet.k8s.io/v1\"",
        ),
        (
            "ok",
            Some(("cache_key_type", "Pod")),
            "its response has cacheKeyType \"Pod\"; expected Image, Registry or Global",
        ),
    ];
    for (mode, setting, reason) in cases {
        plugin.set("mode", mode);
        plugin.set("api_version", "credentialprovider.kubelet.k8s.io/v1");
        plugin.set("cache_key_type", "Registry");
        if let Some((name, value)) = setting {
            plugin.set(name, value);
        }
        // Failures are not cached: each admission asks again.
        let msg = denial(&mutate(&alone, &review(&image)).await);
        let want = format!(
            "(unauthorized; tried anonymous; credential provider \"test-plugin\" for image {h}/private/app: {reason})"
        );
        assert!(msg.contains(&want), "{mode}: {msg}\nwant {want}");
        assert!(!msg.contains("hunter2"), "{msg}");
        let resp = mutate(&with_fallback, &review(&image)).await;
        assert_eq!(pinned(&resp), format!("{image}@{digest}"), "{mode}");
    }
    let metrics = alone.metrics().await;
    for (outcome, n) in [("exit", 1), ("invalid", 3)] {
        assert!(
            metrics.contains(&format!(
                "pinhook_credential_provider_runs_total{{provider=\"test-plugin\",outcome=\"{outcome}\"}} {n}\n"
            )),
            "{metrics}"
        );
    }
    assert!(
        with_fallback.lines().iter().any(|l| l.contains(
            "credential provider gave no credentials; going on with the other credential sources"
        ) && l.contains("test-plugin")),
        "the fallback is logged"
    );
}

#[tokio::test]
async fn pull_secrets_come_first_then_plugin_credentials_then_the_registry_config() {
    let reg = basic_registry();
    let h = reg.host.clone();
    let digest = reg.push("private/app", "1.0.0", &TestImage::single("cp-order"));
    let image = format!("{h}/private/app:1.0.0");
    let kube = FakeKube::start();
    kube.add_dockerconfigjson_secret("shop", "regcred", &h, "alice", "wrong-secret");
    kube.add_service_account("shop", "default", &[]);
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = kube.write_kubeconfig(dir.path());
    let start = |plugin: &Plugin, config: &str| {
        let mut args = plugin.args();
        args.extend(["--registry-config".to_owned(), config.to_owned()]);
        Pinhook::start_with(Options {
            policy: Some(insecure_policy(&h)),
            args,
            env: vec![("KUBECONFIG".into(), kubeconfig.to_str().unwrap().into())],
            ..Default::default()
        })
    };
    let with_secret = |image: &str| {
        let mut r = review(image);
        r["request"]["object"]["spec"]["imagePullSecrets"] = json!([{"name": "regcred"}]);
        r
    };
    // All three wrong: the message lists them in the order they were tried.
    let plugin = Plugin::new(&h, "alice", "wrong-plugin");
    let wrong = docker_config(dir.path(), &h, "alice", "wrong-config");
    let server = start(&plugin, &wrong);
    let msg = denial(&mutate(&server, &with_secret(&image)).await);
    assert!(
        msg.contains(&format!(
            "(unauthorized: \"authentication required\"; tried pull secret shop/regcred, credential provider test-plugin, registry config {wrong}, anonymous)"
        )),
        "{msg}"
    );
    // Only the registry config right: the plugin's wrong password does not stop it.
    let right = dir.path().join("right");
    std::fs::create_dir(&right).unwrap();
    let right = docker_config(&right, &h, "alice", "s3cret");
    let server = start(&plugin, &right);
    let resp = mutate(&server, &with_secret(&image)).await;
    assert_eq!(pinned(&resp), format!("{image}@{digest}"));
}

#[test]
fn pinhook_resolve_uses_the_plugins_and_refuses_a_bad_config_naming_file_and_field() {
    let reg = basic_registry();
    let h = reg.host.clone();
    let digest = reg.push("private/app", "1.0.0", &TestImage::single("cp-cli"));
    let plugin = Plugin::new(&h, "alice", "s3cret");
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, insecure_policy(&h)).unwrap();
    let image = format!("{h}/private/app:1.0.0");
    let out = Command::new(common::binary())
        .arg("resolve")
        .arg("--policy")
        .arg(&policy)
        .args(plugin.args())
        .arg(&image)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{image}@{digest}")
    );

    std::fs::write(
        plugin.config(),
        "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n  - name: test-plugin\n    matchImages: []\n    defaultCacheDuration: 5m\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n",
    )
    .unwrap();
    let out = Command::new(common::binary())
        .arg("resolve")
        .args(plugin.args())
        .arg(&image)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        format!(
            "pinhook resolve: credential provider config {}: providers[0].matchImages: at least 1 item is required",
            plugin.config().display()
        )
    );
    // A provider whose executable is missing is refused at start-up, naming the path.
    std::fs::remove_file(plugin.bin_dir().join("test-plugin")).unwrap();
    std::fs::write(
        plugin.config(),
        format!("apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n  - name: test-plugin\n    matchImages: [\"{h}\"]\n    defaultCacheDuration: 5m\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n"),
    )
    .unwrap();
    let out = Command::new(common::binary())
        .arg("resolve")
        .args(plugin.args())
        .arg(&image)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "credential provider \"test-plugin\": {}: No such file or directory",
            plugin.bin_dir().join("test-plugin").display()
        )),
        "{err}"
    );
}

// ---------------------------------------------------------------------------------------------
// The service-account token path, against the real kube-apiserver of tests/cluster.

/// Where the chart's objects for these tests live, and the namespace of the admitted workloads.
const RELEASE: &str = "credprov";
const RELEASE_NS: &str = "pinhook-credprov";
const SHOP: &str = "credprov-shop";
const AUDIENCE: &str = "registry.example.com";

/// A provider entry asking for the pod's service-account token, as EKS/AKS/GKE configure it.
const TOKEN_ATTRIBUTES: &str = "    tokenAttributes:
      serviceAccountTokenAudience: registry.example.com
      requireServiceAccount: true
      requiredServiceAccountAnnotationKeys: [example.com/registry-role]
      optionalServiceAccountAnnotationKeys: [example.com/tenant, example.com/absent]
      cacheType: ServiceAccount
";

/// Applies the chart's ServiceAccount and RBAC for `release` (with `values`) and returns a
/// kubeconfig with a token of that ServiceAccount: pinhook's own identity, as in a cluster.
fn chart_identity(
    c: &common::cluster::Cluster,
    release: &str,
    values: &str,
    dir: &Path,
) -> PathBuf {
    let docs = common::cluster::render_chart("bootstrap", release, RELEASE_NS, values);
    c.apply(&common::cluster::list_of(
        &docs,
        &["ServiceAccount", "ClusterRole", "ClusterRoleBinding"],
    ));
    let sa = docs.iter().find(|d| d["kind"] == "ServiceAccount").unwrap()["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let token = c.ok(&["create", "token", &sa, "-n", RELEASE_NS, "--duration=1h"]);
    c.token_kubeconfig(dir, token.trim())
}

/// The claims of a JWT (unverified: the API server signed it, the test only reads it).
fn jwt_claims(jwt: &str) -> Value {
    let payload = jwt.split('.').nth(1).expect("a JWT has three parts");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[test]
fn the_pods_service_account_token_reaches_the_plugin_through_a_real_api_server() {
    use common::cluster::{Registration, cluster, deployment, register, wait_registered};
    let c = cluster();
    let reg = basic_registry();
    let h = reg.host.clone();
    let digest = reg.push("private/app", "1.0.0", &TestImage::single("cp-e2e"));
    let image = format!("{h}/private/app:1.0.0");
    let plugin = Plugin::with(&[&h], "alice", "s3cret", TOKEN_ATTRIBUTES);

    c.namespace(RELEASE_NS, None);
    c.namespace(SHOP, Some(RELEASE));
    c.apply_in(
        SHOP,
        &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "builder",
            "annotations": {"example.com/registry-role": "reader", "example.com/tenant": "shop",
                "example.com/unrelated": "not passed"}}})
        .to_string(),
    );
    c.apply_in(
        SHOP,
        &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "plain"}})
            .to_string(),
    );
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = chart_identity(
        c,
        RELEASE,
        "credentialProviders:\n  serviceAccountTokens:\n    enabled: true\n",
        dir.path(),
    );
    let start = |kubeconfig: &Path| {
        Pinhook::start_with(Options {
            policy: Some(insecure_policy(&h)),
            args: plugin.args(),
            env: vec![("KUBECONFIG".into(), kubeconfig.display().to_string())],
            ..Default::default()
        })
    };
    let pinhook = start(&kubeconfig);
    register(c, &pinhook, &Registration::new(RELEASE));
    wait_registered(c, SHOP);

    // A Deployment whose pod template runs as `builder`, created through the API server.
    let mut d = deployment("web", &image, 1);
    d["spec"]["template"]["spec"]["serviceAccountName"] = json!("builder");
    let out = c.apply_in(SHOP, &d.to_string());
    assert!(out.ok, "{}", out.stderr);
    let stored = c.get(Some(SHOP), &["deployment", "web"]);
    assert_eq!(
        stored["spec"]["template"]["spec"]["containers"][0]["image"],
        format!("{image}@{digest}"),
        "the plugin's credentials pinned the stored template"
    );

    let calls = plugin.calls();
    let call = calls
        .iter()
        .find(|c| c["request"]["image"] == format!("{h}/private/app"))
        .expect("the plugin was asked");
    let request = &call["request"];
    assert_eq!(request["kind"], "CredentialProviderRequest");
    assert_eq!(
        request["apiVersion"],
        "credentialprovider.kubelet.k8s.io/v1"
    );
    assert_eq!(
        request["serviceAccountAnnotations"],
        json!({"example.com/registry-role": "reader", "example.com/tenant": "shop"})
    );
    let token = request["serviceAccountToken"].as_str().expect("a token");
    let claims = jwt_claims(token);
    assert_eq!(claims["aud"], json!([AUDIENCE]), "{claims}");
    assert_eq!(
        claims["sub"],
        format!("system:serviceaccount:{SHOP}:builder"),
        "{claims}"
    );
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert_eq!(lifetime, 600, "a short-lived token: {claims}");
    // The API server accepts the token for its audience: it is a real one.
    let token_review = c.kubectl_in(
        &["create", "-f", "-", "-o", "json"],
        &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token, "audiences": [AUDIENCE]}})
        .to_string(),
    );
    assert!(token_review.ok, "{}", token_review.stderr);
    let token_review: Value = serde_json::from_str(&token_review.stdout).unwrap();
    assert_eq!(
        token_review["status"]["authenticated"], true,
        "{token_review}"
    );
    assert_eq!(
        token_review["status"]["user"]["username"],
        format!("system:serviceaccount:{SHOP}:builder")
    );

    // The answer is cached per service account (cacheType ServiceAccount): a second
    // Deployment of the same account asks no more.
    let before = plugin.calls().len();
    let mut d = deployment("api", &image, 1);
    d["spec"]["template"]["spec"]["serviceAccountName"] = json!("builder");
    assert!(c.apply_in(SHOP, &d.to_string()).ok);
    assert_eq!(plugin.calls().len(), before);

    // An account without the required annotation: the plugin is not asked, and the denial says why.
    let in_ns = |ns: &str, account: &str| {
        let mut r = review(&image);
        r["request"]["namespace"] = json!(ns);
        r["request"]["object"]["metadata"]["namespace"] = json!(ns);
        r["request"]["object"]["spec"]["serviceAccountName"] = json!(account);
        r
    };
    let in_shop = |account: &str| in_ns(SHOP, account);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    // No leak across service accounts or namespaces: an account of the same name and
    // annotations in another namespace is asked about on its own, with its own token.
    let other = "credprov-other";
    c.namespace(other, None);
    c.apply_in(
        other,
        &json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "builder",
            "annotations": {"example.com/registry-role": "reader", "example.com/tenant": "shop"}}})
        .to_string(),
    );
    let resp = rt.block_on(mutate(&pinhook, &in_ns(other, "builder")));
    assert_eq!(pinned(&resp), format!("{image}@{digest}"));
    let calls = plugin.calls();
    assert_eq!(calls.len(), before + 1, "asked again for another namespace");
    let sub = jwt_claims(
        calls[before]["request"]["serviceAccountToken"]
            .as_str()
            .unwrap(),
    )["sub"]
        .clone();
    assert_eq!(sub, format!("system:serviceaccount:{other}:builder"));
    let msg = denial(&rt.block_on(mutate(&pinhook, &in_shop("plain"))));
    assert!(
        msg.contains(&format!(
            "credential provider \"test-plugin\" for image {h}/private/app: service account {SHOP}/plain lacks the required annotation \"example.com/registry-role\", so the provider was not asked"
        )),
        "{msg}"
    );
    // Opting out by leaving the annotation off is not a failure: no warning is logged for it.
    assert!(
        !pinhook
            .lines()
            .iter()
            .any(|l| l.contains("going on with the other credential sources")),
        "{:?}",
        pinhook.lines()
    );
    let msg = denial(&rt.block_on(mutate(&pinhook, &in_shop("ghost"))));
    assert!(
        msg.contains(&format!(
            "service account {SHOP}/ghost does not exist, and the provider requires one (requireServiceAccount: true)"
        )),
        "{msg}"
    );

    // Without the chart's token RBAC (serviceAccountTokens off), pinhook says what it lacks.
    let plain_dir = tempfile::tempdir().unwrap();
    let plain = chart_identity(c, "credprov-norbac", "", plain_dir.path());
    let without = start(&plain);
    let msg = denial(&rt.block_on(mutate(&without, &in_shop("builder"))));
    assert!(
        msg.contains(&format!(
            "credential provider \"test-plugin\" for image {h}/private/app: pinhook may not create a token for service account {SHOP}/builder (HTTP 403: "
        )) && msg.contains("grant pinhook's service account create on serviceaccounts/token (chart value credentialProviders.serviceAccountTokens.enabled=true)"),
        "{msg}"
    );
}
