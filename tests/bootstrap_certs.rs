//! Certificate bootstrap (`pinhook serve --bootstrap-secret …`) against a fake API server that
//! speaks the real wire format and enforces the RBAC rules the chart renders
//! (manifests/pinhook.yaml): the Secret is created or reused, both webhook configurations get
//! the CA in `caBundle`, the served certificate chains to that CA for the Service's DNS name,
//! replicas agree on one Secret, certificates and CAs rotate, and every call pinhook makes is
//! one the chart's Role and ClusterRole allow.

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::kube::{FakeKube, Rbac};
use common::{Options, Pinhook, fixture};
use pinhook::certs::{Authority, CertInfo};
use serde::Deserialize as _;
use serde_json::Value;

const NS: &str = "pinhook";
const SECRET: &str = "pinhook-tls";
const DNS_NAME: &str = "pinhook.pinhook.svc";
const MUTATING: &str = "mutatingwebhookconfigurations";
const VALIDATING: &str = "validatingwebhookconfigurations";

/// The chart rendered with its defaults (bootstrap mode), as checked in.
fn manifests() -> (String, Vec<Value>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("manifests/pinhook.yaml");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let docs = serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap())
        .filter(|d| !d.is_null())
        .collect();
    (text, docs)
}

fn deployment_container(docs: &[Value]) -> Value {
    let d = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    d["spec"]["template"]["spec"]["containers"][0].clone()
}

/// A fake cluster holding the chart's two webhook configurations and enforcing the RBAC the
/// chart grants pinhook's service account.
struct Cluster {
    kube: FakeKube,
    dir: tempfile::TempDir,
    rbac: Rbac,
}

fn cluster() -> Cluster {
    cluster_with(|r| r)
}

fn cluster_with(edit_rbac: impl FnOnce(Rbac) -> Rbac) -> Cluster {
    common::init_crypto();
    let (text, docs) = manifests();
    let kube = FakeKube::start();
    for d in docs.iter().filter(|d| {
        d["kind"] == "MutatingWebhookConfiguration" || d["kind"] == "ValidatingWebhookConfiguration"
    }) {
        kube.add_webhook_configuration(d);
    }
    let deployment = docs.iter().find(|d| d["kind"] == "Deployment").unwrap();
    let account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
        .as_str()
        .unwrap();
    let rbac = edit_rbac(Rbac::from_manifests(&text, NS, account));
    assert!(!rbac.grants.is_empty(), "the chart grants pinhook nothing");
    kube.authorize(rbac.clone());
    Cluster {
        kube,
        dir: tempfile::tempdir().unwrap(),
        rbac,
    }
}

/// The bootstrap flags of the chart's Deployment, with some values replaced; and its
/// environment as the kubelet would set it (the downward-API namespace).
fn chart_flags(overrides: &[(&str, &str)]) -> (Vec<String>, Vec<(String, String)>) {
    let (_, docs) = manifests();
    let container = deployment_container(&docs);
    let mut args = Vec::new();
    for a in container["args"].as_array().unwrap() {
        let a = a.as_str().unwrap();
        let Some((flag, value)) = a.split_once('=') else {
            continue;
        };
        if !(flag.starts_with("--bootstrap-") || flag.starts_with("--service-")) {
            continue;
        }
        let value = overrides
            .iter()
            .find(|(f, _)| *f == flag)
            .map_or(value, |(_, v)| *v);
        args.push(format!("{flag}={value}"));
    }
    assert!(
        args.iter().any(|a| a.starts_with("--bootstrap-secret=")),
        "the chart's Deployment does not turn on the bootstrap: {container}"
    );
    let mut env = Vec::new();
    for e in container["env"].as_array().into_iter().flatten() {
        let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.namespace") => NS.to_owned(),
            Some(other) => panic!("unexpected fieldRef {other}"),
            None => e["value"].as_str().unwrap().to_owned(),
        };
        env.push((e["name"].as_str().unwrap().to_owned(), value));
    }
    (args, env)
}

impl Cluster {
    fn kubeconfig(&self) -> String {
        self.kube
            .write_kubeconfig(self.dir.path())
            .display()
            .to_string()
    }

    /// Starts `pinhook serve` with the chart's bootstrap flags (some replaced).
    fn start(&self, overrides: &[(&str, &str)]) -> Pinhook {
        let (args, mut env) = chart_flags(overrides);
        env.push(("KUBECONFIG".into(), self.kubeconfig()));
        Pinhook::start_with(Options {
            args,
            env,
            no_cert_files: true,
            ..Default::default()
        })
    }

    fn secret(&self) -> BTreeMap<String, Vec<u8>> {
        self.kube.secret_data(NS, SECRET)
    }

    fn secret_text(&self, key: &str) -> String {
        String::from_utf8(self.secret().remove(key).unwrap_or_default()).unwrap()
    }

    /// The caBundle of every webhook of a configuration; all must be equal.
    fn ca_bundle(&self, resource: &str) -> Option<String> {
        let config = self
            .kube
            .webhook_configuration(resource, "pinhook")
            .unwrap();
        let bundles: Vec<Option<String>> = config["webhooks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                w["clientConfig"]["caBundle"].as_str().map(|b| {
                    use base64::Engine as _;
                    let bytes = base64::engine::general_purpose::STANDARD.decode(b).unwrap();
                    String::from_utf8(bytes).unwrap()
                })
            })
            .collect();
        assert!(bundles.windows(2).all(|w| w[0] == w[1]), "{bundles:?}");
        bundles[0].clone()
    }

    /// Lines the fake answered with `code`, for requests starting with `prefix`.
    fn answered(&self, prefix: &str, code: u16) -> usize {
        self.kube
            .answered()
            .iter()
            .filter(|(l, c)| l.starts_with(prefix) && *c == code)
            .count()
    }

    fn assert_nothing_forbidden(&self) {
        assert!(
            self.kube.forbidden().is_empty(),
            "the chart's RBAC refused: {:?}",
            self.kube.forbidden()
        );
        for r in self.kube.requests() {
            assert!(!r.contains("watch"), "watch: {r}");
        }
        for a in self.kube.authorized() {
            assert!(a.verb != "list" && a.verb != "watch", "{a:?}");
        }
    }
}

const SECRET_PATH: &str = "/api/v1/namespaces/pinhook/secrets";

/// A client that trusts only `ca_pem` (a PEM bundle) and reaches `server` under the Service's
/// DNS name, as the API server does.
fn api_server_client(server: &Pinhook, ca_pem: &str) -> reqwest::Client {
    common::init_crypto();
    let certs = reqwest::Certificate::from_pem_bundle(ca_pem.as_bytes()).unwrap();
    assert!(!certs.is_empty(), "no CA in {ca_pem:?}");
    reqwest::Client::builder()
        .tls_certs_only(certs)
        .resolve(DNS_NAME, server.addr)
        .tls_info(true)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// POSTs a review to /validate; returns the DER of the certificate the server presented.
async fn served_certificate(
    client: &reqwest::Client,
    server: &Pinhook,
) -> Result<Vec<u8>, reqwest::Error> {
    let resp = client
        .post(format!(
            "https://{DNS_NAME}:{}/validate?timeout=10s",
            server.addr.port()
        ))
        .json(&fixture("pod_version_tags"))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let der = resp
        .extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|t| t.peer_certificate())
        .expect("TLS info")
        .to_vec();
    let body: Value = resp.json().await?;
    assert_eq!(body["response"]["allowed"], true, "{body}");
    Ok(der)
}

fn der_of(pem: &str) -> Vec<u8> {
    CertInfo::parse(pem).unwrap().der
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < timeout, "{what} within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test]
async fn a_fresh_start_creates_the_secret_and_patches_both_ca_bundles() {
    let c = cluster();
    assert!(c.ca_bundle(VALIDATING).is_none() && c.ca_bundle(MUTATING).is_none());
    let server = c.start(&[]);

    let secret = c.kube.secret(NS, SECRET).expect("Secret created");
    assert_eq!(secret["type"], "kubernetes.io/tls");
    let data = c.secret();
    for key in ["tls.crt", "tls.key", "ca.crt", "ca.key", "ca-bundle.crt"] {
        assert!(data.contains_key(key), "{key} missing: {:?}", data.keys());
    }
    let ca = c.secret_text("ca.crt");
    let bundle = c.secret_text("ca-bundle.crt");
    assert_eq!(
        CertInfo::parse_bundle(&bundle).unwrap(),
        [CertInfo::parse(&ca).unwrap()]
    );
    assert_eq!(c.ca_bundle(VALIDATING).as_deref(), Some(bundle.as_str()));
    assert_eq!(c.ca_bundle(MUTATING).as_deref(), Some(bundle.as_str()));
    let leaf = CertInfo::parse(&c.secret_text("tls.crt")).unwrap();
    assert_eq!(leaf.names, [DNS_NAME]);

    // The API server's view: trust only the caBundle, call SERVICE.NAMESPACE.svc.
    let webhook_bundle = c.ca_bundle(VALIDATING).unwrap();
    let served = served_certificate(&api_server_client(&server, &webhook_bundle), &server)
        .await
        .expect("a client trusting only the caBundle is served");
    assert_eq!(served, leaf.der);
    let stranger = Authority::generate("another CA", time::Duration::days(1)).unwrap();
    let err = served_certificate(&api_server_client(&server, stranger.cert_pem()), &server)
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err:?}");

    assert_eq!(c.answered(&format!("POST {SECRET_PATH}"), 201), 1);
    assert_eq!(
        c.answered("PATCH /apis/admissionregistration.k8s.io/v1/", 200),
        2
    );
    c.assert_nothing_forbidden();
    server.wait_for_line(Duration::from_secs(5), |v| {
        v["message"] == "serving the bootstrap certificate" && v["created"] == true
    });
}

#[tokio::test]
async fn a_second_instance_reuses_the_secret() {
    let c = cluster();
    let first = c.start(&[]);
    let version = c.kube.secret(NS, SECRET).unwrap()["metadata"]["resourceVersion"].clone();
    let second = c.start(&[]);

    assert_eq!(
        c.kube.secret(NS, SECRET).unwrap()["metadata"]["resourceVersion"],
        version,
        "the second instance rewrote the Secret"
    );
    let writes: Vec<_> = c
        .kube
        .requests()
        .into_iter()
        .filter(|r| r.starts_with("POST ") || r.starts_with("PUT "))
        .collect();
    assert_eq!(writes.len(), 1, "{writes:?}");
    let bundle = c.ca_bundle(VALIDATING).unwrap();
    let a = served_certificate(&api_server_client(&first, &bundle), &first)
        .await
        .unwrap();
    let b = served_certificate(&api_server_client(&second, &bundle), &second)
        .await
        .unwrap();
    assert_eq!(a, b);
    assert_eq!(a, der_of(&c.secret_text("tls.crt")));
    second.wait_for_line(Duration::from_secs(5), |v| {
        v["message"] == "serving the bootstrap certificate" && v["created"] == false
    });
    c.assert_nothing_forbidden();
}

#[tokio::test]
async fn two_instances_racing_to_create_the_secret_converge_on_the_winners() {
    let c = cluster();
    // Both read "not found" before either writes, so both try to create.
    c.kube.hold_secret_reads(2);
    let (a, b) = std::thread::scope(|s| {
        let a = s.spawn(|| c.start(&[]));
        let b = s.spawn(|| c.start(&[]));
        (a.join().unwrap(), b.join().unwrap())
    });
    assert_eq!(c.answered(&format!("GET {SECRET_PATH}/{SECRET}"), 404), 2);
    assert_eq!(c.answered(&format!("POST {SECRET_PATH}"), 201), 1);
    assert_eq!(c.answered(&format!("POST {SECRET_PATH}"), 409), 1);
    let winner = der_of(&c.secret_text("tls.crt"));
    let bundle = c.ca_bundle(VALIDATING).unwrap();
    assert_eq!(c.ca_bundle(MUTATING).unwrap(), bundle);
    for server in [&a, &b] {
        let served = served_certificate(&api_server_client(server, &bundle), server)
            .await
            .unwrap();
        assert_eq!(served, winner);
    }
    let losers = [&a, &b]
        .iter()
        .filter(|s| {
            s.lines()
                .iter()
                .any(|l| l.contains("another replica wrote the certificate Secret first"))
        })
        .count();
    assert_eq!(losers, 1);
    c.assert_nothing_forbidden();
}

/// Seeds the Secret with `ca` and a serving certificate issued `age` ago for `validity`, and
/// both webhooks' caBundle with `ca` (as a previous run would have left them).
fn seed(c: &Cluster, ca: &Authority, age: time::Duration, validity: time::Duration) -> String {
    let now = time::OffsetDateTime::now_utc();
    let (cert, key) = ca
        .issue_at(&[DNS_NAME.to_owned()], now - age, validity)
        .unwrap();
    let data = BTreeMap::from([
        ("tls.crt".to_owned(), cert.clone().into_bytes()),
        ("tls.key".to_owned(), key.into_bytes()),
        ("ca.crt".to_owned(), ca.cert_pem().as_bytes().to_vec()),
        ("ca.key".to_owned(), ca.key_pem().as_bytes().to_vec()),
        (
            "ca-bundle.crt".to_owned(),
            ca.cert_pem().as_bytes().to_vec(),
        ),
    ]);
    c.kube.add_secret(NS, SECRET, "kubernetes.io/tls", &data);
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(ca.cert_pem());
    for resource in [MUTATING, VALIDATING] {
        c.kube
            .edit_webhook_configuration(resource, "pinhook", |obj| {
                for w in obj["webhooks"].as_array_mut().unwrap() {
                    w["clientConfig"]["caBundle"] = Value::String(b64.clone());
                }
            });
    }
    cert
}

#[tokio::test]
async fn an_expiring_certificate_is_replaced_at_start_up_by_one_from_the_same_ca() {
    let c = cluster();
    let ca = Authority::generate("pinhook CA (earlier run)", time::Duration::days(3650)).unwrap();
    // 89 days into a 90-day certificate: 1 day left, less than the chart's renewBefore (720h).
    let old = seed(&c, &ca, time::Duration::days(89), time::Duration::days(90));
    let server = c.start(&[]);

    assert_eq!(c.answered(&format!("PUT {SECRET_PATH}/{SECRET}"), 200), 1);
    let new = c.secret_text("tls.crt");
    assert_ne!(new, old);
    assert_eq!(c.secret_text("ca.crt"), ca.cert_pem(), "the CA was kept");
    let renewed = CertInfo::parse(&new).unwrap();
    assert!(renewed.not_after - time::OffsetDateTime::now_utc() > time::Duration::days(89));
    // The webhooks already trust that CA: no patch needed, and the new certificate chains to it.
    assert_eq!(c.answered("PATCH ", 200), 0);
    let served = served_certificate(&api_server_client(&server, ca.cert_pem()), &server)
        .await
        .unwrap();
    assert_eq!(served, renewed.der);
    c.assert_nothing_forbidden();
}

#[tokio::test]
async fn a_ca_near_its_end_is_replaced_with_both_cas_trusted_meanwhile() {
    let c = cluster();
    // A CA with 10 days left cannot cover a 90-day serving certificate.
    let now = time::OffsetDateTime::now_utc();
    let old_ca = Authority::generate_at(
        "pinhook CA (old)",
        now - time::Duration::days(3640),
        time::Duration::days(3650),
    )
    .unwrap();
    seed(
        &c,
        &old_ca,
        time::Duration::days(1),
        time::Duration::days(9),
    );
    let server = c.start(&[]);

    let new_ca = c.secret_text("ca.crt");
    assert_ne!(new_ca, old_ca.cert_pem());
    let bundle = c.secret_text("ca-bundle.crt");
    assert_eq!(
        CertInfo::parse_bundle(&bundle).unwrap(),
        [
            CertInfo::parse(&new_ca).unwrap(),
            CertInfo::parse(old_ca.cert_pem()).unwrap()
        ],
        "the bundle holds the new CA, then the old one until it expires"
    );
    assert_eq!(c.ca_bundle(VALIDATING).unwrap(), bundle);
    assert_eq!(c.ca_bundle(MUTATING).unwrap(), bundle);
    // The served certificate is the new CA's: the bundle and the new CA alone verify it,
    // the old CA alone does not.
    let served = served_certificate(&api_server_client(&server, &bundle), &server)
        .await
        .unwrap();
    assert_eq!(served, der_of(&c.secret_text("tls.crt")));
    served_certificate(&api_server_client(&server, &new_ca), &server)
        .await
        .unwrap();
    assert!(
        served_certificate(&api_server_client(&server, old_ca.cert_pem()), &server)
            .await
            .is_err()
    );
    c.assert_nothing_forbidden();
}

#[tokio::test]
async fn a_running_server_rotates_its_certificate_before_expiry() {
    let c = cluster();
    let server = c.start(&[
        ("--bootstrap-cert-validity", "20s"),
        ("--bootstrap-renew-before", "15s"),
        ("--bootstrap-ca-validity", "1h"),
        ("--bootstrap-check-interval", "500ms"),
    ]);
    let ca = c.secret_text("ca.crt");
    let bundle = c.ca_bundle(VALIDATING).unwrap();
    let client = api_server_client(&server, &bundle);
    let first = served_certificate(&client, &server).await.unwrap();

    server.wait_for_line(Duration::from_secs(30), |v| {
        v["message"] == "TLS certificate rotated"
    });
    // The open connection keeps working; new connections get the new certificate, from the
    // same CA, and the webhooks' caBundle did not need to change.
    served_certificate(&client, &server)
        .await
        .expect("the open connection survives rotation");
    let fresh = api_server_client(&server, &bundle);
    let second = served_certificate(&fresh, &server).await.unwrap();
    assert_ne!(first, second);
    assert_eq!(c.secret_text("ca.crt"), ca);
    assert_eq!(c.ca_bundle(VALIDATING).unwrap(), bundle);
    assert!(c.answered(&format!("PUT {SECRET_PATH}/{SECRET}"), 200) >= 1);
    c.assert_nothing_forbidden();
}

#[tokio::test]
async fn a_wiped_ca_bundle_is_restored_at_the_next_check() {
    let c = cluster();
    let _server = c.start(&[("--bootstrap-check-interval", "300ms")]);
    let bundle = c.ca_bundle(VALIDATING).unwrap();
    // As `kubectl replace -f manifests/` would leave it: no caBundle.
    c.kube
        .edit_webhook_configuration(VALIDATING, "pinhook", |obj| {
            for w in obj["webhooks"].as_array_mut().unwrap() {
                w["clientConfig"]
                    .as_object_mut()
                    .unwrap()
                    .remove("caBundle");
            }
        });
    assert!(c.ca_bundle(VALIDATING).is_none());
    wait_until("caBundle restored", Duration::from_secs(20), || {
        c.ca_bundle(VALIDATING).as_deref() == Some(bundle.as_str())
    });
    c.assert_nothing_forbidden();
}

#[test]
fn every_permission_the_chart_grants_for_the_bootstrap_is_used_and_no_other() {
    let c = cluster();
    // A fresh start (create, patch) followed by a renewal at start-up (update).
    {
        let _first = c.start(&[]);
    }
    let ca = Authority::generate("pinhook CA", time::Duration::days(3650)).unwrap();
    seed(&c, &ca, time::Duration::days(89), time::Duration::days(90));
    let _second = c.start(&[]);
    c.assert_nothing_forbidden();

    let used: Vec<_> = c.kube.authorized();
    for g in c
        .rbac
        .grants
        .iter()
        // Pull credentials (get secrets/serviceaccounts in any namespace) belong to pinning.
        .filter(|g| g.role != "ClusterRole/pinhook-pull-secrets")
    {
        for verb in &g.verbs {
            for resource in &g.resources {
                assert!(
                    used.iter()
                        .any(|a| &a.verb == verb && &a.resource == resource),
                    "{} grants {verb} on {resource}, which the bootstrap never uses",
                    g.role
                );
            }
        }
    }
    // And the bootstrap stays on pinhook's own objects.
    for a in &used {
        match a.resource.as_str() {
            "secrets" => {
                assert_eq!(a.namespace.as_deref(), Some(NS), "{a:?}");
                assert!(
                    a.name.is_none() || a.name.as_deref() == Some(SECRET),
                    "{a:?}"
                );
            }
            "mutatingwebhookconfigurations" | "validatingwebhookconfigurations" => {
                assert_eq!(a.name.as_deref(), Some("pinhook"), "{a:?}")
            }
            other => panic!("unexpected call on {other}: {a:?}"),
        }
    }
}

#[test]
fn without_the_namespaced_role_the_bootstrap_fails_and_names_the_refused_call() {
    // The same chart RBAC minus the Role that allows creating the Secret.
    let c = cluster_with(|mut r| {
        r.grants.retain(|g| !g.role.starts_with("Role/"));
        r
    });
    let (args, env) = chart_flags(&[]);
    let out = common::serve_command()
        .args(&args)
        .envs(env)
        .env("KUBECONFIG", c.kubeconfig())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("cannot create Secret pinhook/pinhook-tls") && stderr.contains("forbidden"),
        "{stderr}"
    );
    assert!(c.kube.secret(NS, SECRET).is_none());
}

#[test]
fn tls_files_and_bootstrap_exclude_each_other() {
    let out = Command::new(common::binary())
        .args([
            "serve",
            "--tls-cert",
            "a.crt",
            "--tls-key",
            "a.key",
            "--bootstrap-secret",
            "s",
            "--service-name",
            "pinhook",
            "--service-namespace",
            "pinhook",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot be used with"), "{stderr}");
}
