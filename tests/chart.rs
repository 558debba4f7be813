//! The Helm chart, rendered by Helm itself (scripts/chart.py: Helm v4's Go SDK from PyPI
//! helm-python-sdk) in each certificate mode, checked against what pinhook is: the webhooks can
//! never lock out pinhook's own namespace or kube-system, their rules cover every kind pinhook
//! judges, the Service, ports and paths lead to what `pinhook serve` listens on, the flags the
//! Deployment passes are ones the binary accepts, and RBAC is least privilege.
//! Schema validation of the same renders is `make chart-check` (kubernetes-validate).

mod common;

use std::collections::BTreeMap;
use std::path::PathBuf;

use clap::{CommandFactory, Parser};
use pinhook::config::{Cli, Command as Sub};
use pinhook::workload::{ALL_KINDS, WorkloadKind};
use serde_json::{Value, json};

const MODES: [&str; 3] = ["bootstrap", "certManager", "secret"];

/// The chart rendered by scripts/chart.py; `values` is an extra values file's YAML.
fn render_with(mode: &str, release: &str, namespace: &str, values: Option<&str>) -> Vec<Value> {
    common::cluster::render_chart(mode, release, namespace, values.unwrap_or(""))
}

fn render(mode: &str) -> Vec<Value> {
    render_with(mode, "pinhook", "pinhook", None)
}

fn all<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = all(docs, kind);
    assert_eq!(found.len(), 1, "expected one {kind}");
    found[0]
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .into_iter()
        .flatten()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// Whether a Kubernetes label selector matches `labels`.
fn selects(selector: &Value, labels: &BTreeMap<&str, &str>) -> bool {
    if selector.is_null() {
        return true;
    }
    for (k, v) in selector["matchLabels"].as_object().into_iter().flatten() {
        if labels.get(k.as_str()) != Some(&v.as_str().unwrap()) {
            return false;
        }
    }
    for e in selector["matchExpressions"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let key = e["key"].as_str().unwrap();
        let values = strings(&e["values"]);
        let value = labels.get(key);
        let ok = match e["operator"].as_str().unwrap() {
            "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
            "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            op => panic!("unknown operator {op}"),
        };
        if !ok {
            return false;
        }
    }
    true
}

/// A namespace's labels as the API server sets them.
fn namespace_labels(name: &str) -> BTreeMap<&str, &str> {
    BTreeMap::from([("kubernetes.io/metadata.name", name)])
}

/// Every webhook of both configurations, with its configuration's kind.
fn webhooks(docs: &[Value]) -> Vec<(&'static str, &Value)> {
    let mut out = Vec::new();
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        let config = one(docs, kind);
        let hooks = config["webhooks"].as_array().unwrap();
        assert!(!hooks.is_empty(), "{kind} has no webhooks");
        let kind: &'static str = if kind.starts_with("Mutating") {
            "mutating"
        } else {
            "validating"
        };
        out.extend(hooks.iter().map(|w| (kind, w)));
    }
    out
}

fn container(docs: &[Value]) -> &Value {
    &one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
}

fn container_port(docs: &[Value], name: &str) -> u64 {
    container(docs)["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == name)
        .unwrap_or_else(|| panic!("no container port named {name}"))["containerPort"]
        .as_u64()
        .unwrap()
}

/// `pinhook serve` parsed from the Deployment's args (clap, exactly as the binary parses them),
/// with the container's plain `env` values set as the kubelet would (downward API values are
/// given directly).
fn serve_args(docs: &[Value]) -> pinhook::config::ServeArgs {
    let c = container(docs);
    assert!(
        c.get("command").is_none(),
        "the chart must keep the image's ENTRYPOINT"
    );
    let args = strings(&c["args"]);
    assert_eq!(args[0], "serve");
    let mut argv = vec!["pinhook".to_owned()];
    argv.extend(args);
    for e in c["env"].as_array().into_iter().flatten() {
        let name = e["name"].as_str().unwrap();
        let value = match e["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.namespace") => "pinhook".to_owned(),
            Some(other) => panic!("unexpected fieldRef {other}"),
            None => e["value"].as_str().unwrap().to_owned(),
        };
        // The matching flag, as clap would read the variable.
        let flag = Cli::command()
            .find_subcommand("serve")
            .unwrap()
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|v| v == name))
            .unwrap_or_else(|| panic!("{name} is not a pinhook serve variable"))
            .get_long()
            .unwrap()
            .to_owned();
        argv.push(format!("--{flag}={value}"));
    }
    match Cli::try_parse_from(&argv) {
        Ok(Cli {
            command: Sub::Serve(args),
            ..
        }) => args,
        Ok(_) => unreachable!(),
        Err(e) => panic!("pinhook refuses the chart's arguments {argv:?}: {e}"),
    }
}

fn port_of(addr: std::net::SocketAddr) -> u64 {
    u64::from(addr.port())
}

#[test]
fn webhooks_never_see_pinhooks_own_namespace_or_kube_system() {
    for (mode, ns) in [
        ("bootstrap", "pinhook"),
        ("certManager", "security"),
        ("secret", "pinhook"),
    ] {
        let docs = render_with(
            mode,
            "pinhook",
            ns,
            Some("webhook:\n  excludeNamespaces: [istio-system]\n"),
        );
        for (kind, w) in webhooks(&docs) {
            let selector = &w["namespaceSelector"];
            for excluded in [ns, "kube-system", "istio-system"] {
                assert!(
                    !selects(selector, &namespace_labels(excluded)),
                    "{mode}: {kind} webhook sees namespace {excluded}: {selector}"
                );
            }
            for judged in ["default", "shop", "pinhook-smoke"] {
                assert!(
                    selects(selector, &namespace_labels(judged)),
                    "{mode}: {kind} webhook skips namespace {judged}"
                );
            }
            // The opt-out label.
            let objects = &w["objectSelector"];
            assert!(!selects(
                objects,
                &BTreeMap::from([("pinhook.dev/ignore", "true")])
            ));
            assert!(selects(objects, &BTreeMap::new()));
            assert!(selects(
                objects,
                &BTreeMap::from([("pinhook.dev/ignore", "false")])
            ));
        }
    }
}

#[test]
fn the_exclusions_cannot_be_configured_away() {
    let docs = render_with(
        "bootstrap",
        "pinhook",
        "pinhook",
        Some("webhook:\n  excludeNamespaces: []\n  optOutLabel: \"\"\n"),
    );
    for (kind, w) in webhooks(&docs) {
        for excluded in ["pinhook", "kube-system"] {
            assert!(
                !selects(&w["namespaceSelector"], &namespace_labels(excluded)),
                "{kind}"
            );
        }
        assert!(w.get("objectSelector").is_none(), "{kind}: opt-out removed");
    }
}

#[test]
fn rules_cover_every_kind_pinhook_judges() {
    let mut wanted: Vec<(&str, String)> = ALL_KINDS
        .iter()
        .map(|k| (k.group(), k.resource().to_owned()))
        .collect();
    wanted.push((WorkloadKind::Pod.group(), "pods/ephemeralcontainers".into()));
    for mode in MODES {
        let docs = render(mode);
        for (kind, w) in webhooks(&docs) {
            let rules = w["rules"].as_array().unwrap();
            for (group, resource) in &wanted {
                let covered = rules.iter().any(|r| {
                    strings(&r["apiGroups"]).iter().any(|g| g == group)
                        && strings(&r["resources"]).contains(resource)
                        && strings(&r["apiVersions"]).iter().any(|v| v == "v1")
                        && strings(&r["operations"]) == ["CREATE", "UPDATE"]
                });
                assert!(covered, "{mode}: {kind} webhook misses {group}/{resource}");
            }
            // Nothing beyond what pinhook judges, and no wildcards.
            for r in rules {
                for field in ["apiGroups", "resources", "apiVersions", "operations"] {
                    assert!(!strings(&r[field]).iter().any(|s| s.contains('*')), "{r}");
                }
                for res in strings(&r["resources"]) {
                    assert!(
                        wanted.iter().any(|(_, w)| *w == res),
                        "{mode}: {kind} webhook asks for {res}, which pinhook does not judge"
                    );
                }
            }
        }
    }
}

#[test]
fn webhook_settings_follow_the_admission_contract() {
    for mode in MODES {
        let docs = render(mode);
        for (kind, w) in webhooks(&docs) {
            assert_eq!(w["admissionReviewVersions"], json!(["v1"]), "{mode} {kind}");
            assert_eq!(w["sideEffects"], "None", "{mode} {kind}");
            assert_eq!(
                w["failurePolicy"], "Fail",
                "{mode} {kind}: default must be Fail"
            );
            let timeout = w["timeoutSeconds"].as_u64().unwrap();
            assert!((1..=30).contains(&timeout), "{mode} {kind}: {timeout}");
            if kind == "mutating" {
                assert_eq!(w["reinvocationPolicy"], "IfNeeded", "{mode}");
            }
        }
    }
    let docs = render_with(
        "bootstrap",
        "pinhook",
        "pinhook",
        Some("webhook:\n  failurePolicy: Ignore\n  timeoutSeconds: 5\n"),
    );
    for (kind, w) in webhooks(&docs) {
        assert_eq!(w["failurePolicy"], "Ignore", "{kind}");
        assert_eq!(w["timeoutSeconds"], 5, "{kind}");
    }
}

#[tokio::test]
async fn service_ports_and_paths_lead_to_what_pinhook_serves() {
    // pinhook's own defaults, from its flag definitions.
    let serve = Cli::command().find_subcommand("serve").unwrap().clone();
    let default = |id: &str| -> std::net::SocketAddr {
        serve
            .get_arguments()
            .find(|a| a.get_id() == id)
            .unwrap()
            .get_default_values()[0]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (default_listen, default_ops) = (default("listen"), default("metrics_listen"));
    // `pin: false`: /mutate answers without asking a registry (tests stay on 127.0.0.1).
    let server = common::Pinhook::start_with(common::Options {
        policy: Some("pin: false\n".into()),
        ..Default::default()
    });

    for mode in MODES {
        let docs = render(mode);
        let args = serve_args(&docs);
        let https = container_port(&docs, "https");
        let metrics = container_port(&docs, "metrics");
        assert_eq!(
            port_of(args.listen),
            https,
            "{mode}: --listen vs containerPort https"
        );
        assert_eq!(port_of(args.metrics_listen), metrics, "{mode}");
        assert_eq!(
            https,
            port_of(default_listen),
            "{mode}: chart and binary defaults differ"
        );
        assert_eq!(metrics, port_of(default_ops), "{mode}");

        let service = one(&docs, "Service");
        let deployment = one(&docs, "Deployment");
        let pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
            .collect::<BTreeMap<_, _>>();
        assert!(
            selects(
                &json!({"matchLabels": service["spec"]["selector"]}),
                &pod_labels
            ),
            "{mode}: the Service does not select pinhook's pods"
        );
        for (kind, w) in webhooks(&docs) {
            let svc = &w["clientConfig"]["service"];
            assert_eq!(svc["name"], service["metadata"]["name"], "{mode} {kind}");
            assert_eq!(
                svc["namespace"], service["metadata"]["namespace"],
                "{mode} {kind}"
            );
            let port = service["spec"]["ports"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["port"] == svc["port"])
                .unwrap_or_else(|| panic!("{mode}: {kind} webhook calls a port the Service lacks"));
            let target = match &port["targetPort"] {
                Value::String(name) => container_port(&docs, name),
                n => n.as_u64().unwrap(),
            };
            assert_eq!(
                target, https,
                "{mode}: {kind} webhook does not reach the HTTPS listener"
            );
            let path = svc["path"].as_str().unwrap();
            assert_eq!(
                path,
                format!(
                    "/{}",
                    if kind == "mutating" {
                        "mutate"
                    } else {
                        "validate"
                    }
                )
            );
            // The running binary answers that path with an AdmissionReview.
            let (status, _, body) = server
                .post_json(
                    common::Http::V2,
                    &format!("{path}?timeout=10s"),
                    serde_json::to_vec(&common::fixture("pod_version_tags")).unwrap(),
                )
                .await;
            assert_eq!(status, 200, "{path}: {body}");
            assert_eq!(body["kind"], "AdmissionReview", "{path}");
        }
        // Probes on the plain port.
        let c = container(&docs);
        for (probe, path) in [("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")] {
            assert_eq!(c[probe]["httpGet"]["path"], path, "{mode}");
            assert_eq!(c[probe]["httpGet"]["port"], "metrics", "{mode}");
            let resp = reqwest::get(server.ops_url(path)).await.unwrap();
            assert_eq!(resp.status(), 200, "{path}");
        }
    }
}

#[test]
fn certificates_come_from_where_the_mode_says() {
    // bootstrap: pinhook's own Secret, no caBundle in the manifests.
    let docs = render("bootstrap");
    let args = serve_args(&docs);
    let settings = pinhook::bootstrap::Settings::from_args(&args.bootstrap)
        .unwrap()
        .expect("bootstrap is on by default");
    assert_eq!(settings.dns_name(), "pinhook.pinhook.svc");
    assert_eq!(settings.service, one(&docs, "Service")["metadata"]["name"]);
    assert_eq!(
        settings.mutating_webhook.as_deref(),
        one(&docs, "MutatingWebhookConfiguration")["metadata"]["name"].as_str()
    );
    assert_eq!(
        settings.validating_webhook.as_deref(),
        one(&docs, "ValidatingWebhookConfiguration")["metadata"]["name"].as_str()
    );
    assert!(args.tls_cert.is_none());
    for (kind, w) in webhooks(&docs) {
        assert!(
            w["clientConfig"].get("caBundle").is_none(),
            "{kind}: set at start-up, not render time"
        );
    }
    assert!(
        all(&docs, "Secret").is_empty(),
        "no certificate is made at render time"
    );

    // certManager: a Certificate for the Service name, injected by the cainjector.
    let docs = render("certManager");
    let args = serve_args(&docs);
    let certificate = all(&docs, "Certificate")
        .into_iter()
        .find(|c| c["spec"]["isCA"] != true)
        .unwrap();
    assert_eq!(
        certificate["spec"]["dnsNames"],
        json!(["pinhook.pinhook.svc"])
    );
    let secret_name = certificate["spec"]["secretName"].as_str().unwrap();
    assert_mounted(&docs, secret_name, &args);
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        assert_eq!(
            one(&docs, kind)["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            format!(
                "pinhook/{}",
                certificate["metadata"]["name"].as_str().unwrap()
            )
        );
    }

    // secret: an existing Secret, caBundle from values.
    let docs = render("secret");
    let args = serve_args(&docs);
    assert_mounted(&docs, "pinhook-serving-tls", &args);
    for (kind, w) in webhooks(&docs) {
        use base64::Engine as _;
        let pem = base64::engine::general_purpose::STANDARD
            .decode(w["clientConfig"]["caBundle"].as_str().unwrap())
            .unwrap();
        let ca = pinhook::certs::CertInfo::parse(std::str::from_utf8(&pem).unwrap()).unwrap();
        assert!(ca.is_ca, "{kind}: caBundle is not a CA certificate");
    }
}

/// `--tls-cert`/`--tls-key` point into a read-only mount of `secret`.
fn assert_mounted(docs: &[Value], secret: &str, args: &pinhook::config::ServeArgs) {
    assert!(args.bootstrap.bootstrap_secret.is_none());
    let spec = &one(docs, "Deployment")["spec"]["template"]["spec"];
    let volume = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["secret"]["secretName"] == secret)
        .unwrap_or_else(|| panic!("Secret {secret} is not mounted"));
    let mount = container(docs)["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == volume["name"])
        .unwrap();
    assert_eq!(mount["readOnly"], true);
    let dir = PathBuf::from(mount["mountPath"].as_str().unwrap());
    assert_eq!(
        args.tls_cert.as_deref(),
        Some(dir.join("tls.crt").as_path())
    );
    assert_eq!(args.tls_key.as_deref(), Some(dir.join("tls.key").as_path()));
}

#[test]
fn rbac_is_least_privilege() {
    for mode in MODES {
        let docs = render(mode);
        let bootstrap_secret = serve_args(&docs).bootstrap.bootstrap_secret;
        let webhook_names: Vec<String> = [
            "MutatingWebhookConfiguration",
            "ValidatingWebhookConfiguration",
        ]
        .iter()
        .map(|k| {
            one(&docs, k)["metadata"]["name"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
        for role in all(&docs, "ClusterRole")
            .into_iter()
            .chain(all(&docs, "Role"))
        {
            let name = format!(
                "{}/{}",
                role["kind"].as_str().unwrap(),
                role["metadata"]["name"].as_str().unwrap()
            );
            let cluster_wide = role["kind"] == "ClusterRole";
            for rule in role["rules"].as_array().unwrap() {
                let verbs = strings(&rule["verbs"]);
                let resources = strings(&rule["resources"]);
                let names = strings(&rule["resourceNames"]);
                for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
                    assert!(
                        !strings(&rule[field]).iter().any(|s| s == "*"),
                        "{mode}: {name} has a wildcard: {rule}"
                    );
                }
                assert!(rule.get("nonResourceURLs").is_none(), "{mode}: {name}");
                for v in &verbs {
                    assert!(
                        ![
                            "list",
                            "watch",
                            "deletecollection",
                            "delete",
                            "escalate",
                            "bind",
                            "impersonate"
                        ]
                        .contains(&v.as_str()),
                        "{mode}: {name} grants {v}"
                    );
                }
                for r in &resources {
                    match r.as_str() {
                        "secrets" | "serviceaccounts" if names.is_empty() => {
                            // Unnamed access: only get (pull secrets anywhere), or create in
                            // pinhook's own namespace (RBAC cannot name a created object).
                            let ok = verbs == ["get"]
                                || (!cluster_wide && verbs == ["create"] && r == "secrets");
                            assert!(ok, "{mode}: {name} grants {verbs:?} on every {r}");
                        }
                        "secrets" => {
                            assert!(
                                !cluster_wide,
                                "{mode}: {name}: Secret writes must be namespaced"
                            );
                            assert_eq!(
                                Some(names.clone()),
                                bootstrap_secret.clone().map(|s| vec![s]),
                                "{mode}: {name}"
                            );
                        }
                        "mutatingwebhookconfigurations" | "validatingwebhookconfigurations" => {
                            assert!(
                                !names.is_empty()
                                    && names.iter().all(|n| webhook_names.contains(n)),
                                "{mode}: {name} on {r} must name pinhook's own: {names:?}"
                            );
                            assert!(
                                verbs.iter().all(|v| v == "get" || v == "patch"),
                                "{mode}: {name}: {verbs:?}"
                            );
                        }
                        other => panic!("{mode}: {name} grants access to {other}"),
                    }
                }
            }
            if !cluster_wide {
                assert_eq!(role["metadata"]["namespace"], "pinhook", "{mode}: {name}");
            }
        }
        if mode != "bootstrap" {
            assert!(
                all(&docs, "Role").is_empty(),
                "{mode}: no Secret writes without bootstrap"
            );
            for role in all(&docs, "ClusterRole") {
                for rule in role["rules"].as_array().unwrap() {
                    assert_eq!(strings(&rule["verbs"]), ["get"], "{mode}: {rule}");
                }
            }
        }
        // Every binding binds pinhook's service account, and only it.
        let account =
            one(&docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"].clone();
        assert_eq!(one(&docs, "ServiceAccount")["metadata"]["name"], account);
        for b in all(&docs, "ClusterRoleBinding")
            .into_iter()
            .chain(all(&docs, "RoleBinding"))
        {
            assert_eq!(
                b["subjects"],
                json!([{"kind": "ServiceAccount", "name": account, "namespace": "pinhook"}]),
                "{mode}"
            );
        }
    }
}

#[test]
fn the_deployment_is_highly_available_and_locked_down() {
    for mode in MODES {
        let docs = render(mode);
        let deployment = one(&docs, "Deployment");
        let spec = &deployment["spec"];
        assert_eq!(spec["replicas"], 2, "{mode}");
        assert_eq!(
            spec["strategy"]["rollingUpdate"]["maxUnavailable"], 0,
            "{mode}"
        );
        let pod_labels: BTreeMap<&str, &str> = spec["template"]["metadata"]["labels"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str().unwrap()))
            .collect();
        let pdb = one(&docs, "PodDisruptionBudget");
        assert_eq!(pdb["spec"]["minAvailable"], 1, "{mode}");
        assert!(
            selects(&pdb["spec"]["selector"], &pod_labels),
            "{mode}: PDB misses the pods"
        );
        let spread = &spec["template"]["spec"]["topologySpreadConstraints"][0];
        assert_eq!(spread["topologyKey"], "kubernetes.io/hostname", "{mode}");
        assert!(selects(&spread["labelSelector"], &pod_labels), "{mode}");

        let pod = &spec["template"]["spec"]["securityContext"];
        assert_eq!(pod["runAsNonRoot"], true);
        assert_eq!(pod["seccompProfile"]["type"], "RuntimeDefault");
        let c = container(&docs);
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], false, "{mode}");
        assert_eq!(sc["readOnlyRootFilesystem"], true, "{mode}");
        assert_eq!(sc["runAsNonRoot"], true, "{mode}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{mode}");
        assert!(sc["runAsUser"].as_u64().unwrap() > 0, "{mode}");
        for kind in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    c["resources"][kind].get(resource).is_some(),
                    "{mode}: {kind}.{resource}"
                );
            }
        }
        // The policy file the Deployment points at is the ConfigMap's, and it loads.
        let args = serve_args(&docs);
        let policy = args.policy.expect("--policy");
        let cm = one(&docs, "ConfigMap");
        let volume = spec["template"]["spec"]["volumes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["configMap"]["name"] == cm["metadata"]["name"])
            .unwrap();
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == volume["name"])
            .unwrap();
        let key = policy
            .strip_prefix(mount["mountPath"].as_str().unwrap())
            .unwrap();
        let text = cm["data"][key.to_str().unwrap()].as_str().unwrap();
        pinhook::policy::Policy::from_yaml(text, "chart ConfigMap").unwrap();
    }
}

#[test]
fn policy_values_become_the_policy_file() {
    let docs = render_with(
        "bootstrap",
        "pinhook",
        "pinhook",
        Some("policy:\n  mode: audit\n  rules:\n    - namespaces: [prod-*]\n      mode: enforce\n"),
    );
    let text = one(&docs, "ConfigMap")["data"]["policy.yaml"]
        .as_str()
        .unwrap()
        .to_owned();
    let policy = pinhook::policy::Policy::from_yaml(&text, "chart ConfigMap").unwrap();
    assert_eq!(policy.profile_for("shop").unwrap().mode.as_str(), "audit");
    assert_eq!(
        policy.profile_for("prod-eu").unwrap().mode.as_str(),
        "enforce"
    );
}

#[test]
fn drift_rbac_is_off_by_default_and_read_only() {
    for mode in MODES {
        let docs = render(mode);
        assert!(
            docs.iter().all(|d| !d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .ends_with("-drift")),
            "{mode}: drift RBAC rendered without drift.rbac.enabled"
        );
    }
    let docs = render_with(
        "bootstrap",
        "pinhook",
        "pinhook",
        Some("drift:\n  rbac:\n    enabled: true\n"),
    );
    let named = |kind: &str| -> &Value {
        let found: Vec<&Value> = all(&docs, kind)
            .into_iter()
            .filter(|d| d["metadata"]["name"] == "pinhook-drift")
            .collect();
        assert_eq!(found.len(), 1, "expected one {kind} pinhook-drift");
        found[0]
    };
    assert_eq!(named("ServiceAccount")["metadata"]["namespace"], "pinhook");
    // Exactly get and list on exactly the kinds `pinhook drift --cluster` lists: no Secrets, no
    // watch, no writes, no wildcard.
    let mut granted: Vec<(String, String)> = Vec::new();
    for rule in named("ClusterRole")["rules"].as_array().unwrap() {
        assert_eq!(strings(&rule["verbs"]), ["get", "list"], "{rule}");
        assert!(rule.get("resourceNames").is_none(), "{rule}");
        assert!(rule.get("nonResourceURLs").is_none(), "{rule}");
        for group in strings(&rule["apiGroups"]) {
            for r in strings(&rule["resources"]) {
                granted.push((group.clone(), r));
            }
        }
    }
    let mut listed: Vec<(String, String)> = pinhook::drift::cluster_kinds()
        .iter()
        .map(|r| (r.group.clone(), r.plural.clone()))
        .collect();
    granted.sort();
    listed.sort();
    assert_eq!(granted, listed);
    let binding = named("ClusterRoleBinding");
    assert_eq!(
        binding["roleRef"],
        json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "pinhook-drift"})
    );
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "pinhook-drift", "namespace": "pinhook"}])
    );
    // The webhook's own account gets nothing from it, and nothing else changes.
    let without: Vec<&Value> = docs
        .iter()
        .filter(|d| d["metadata"]["name"] != "pinhook-drift")
        .collect();
    assert_eq!(without, render("bootstrap").iter().collect::<Vec<_>>());
}

#[test]
fn credential_providers_are_off_by_default_and_mount_the_config_and_grant_tokens_when_asked() {
    for mode in MODES {
        let docs = render(mode);
        let args = strings(&container(&docs)["args"]);
        assert!(
            !args
                .iter()
                .any(|a| a.starts_with("--image-credential-provider")),
            "{mode}: {args:?}"
        );
        assert!(
            docs.iter().all(|d| !d["metadata"]["name"]
                .as_str()
                .unwrap_or_default()
                .contains("credential-provider")
                && d["metadata"]["name"] != "pinhook-service-account-tokens"),
            "{mode}: credential-provider objects rendered without credentialProviders.enabled"
        );
    }
    let config = "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n  - name: ecr-credential-provider\n    matchImages: [\"*.dkr.ecr.*.amazonaws.com\"]\n    defaultCacheDuration: 12h\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n";
    let values = format!(
        "credentialProviders:\n  enabled: true\n  config:\n{}  binVolume:\n    hostPath:\n      path: /etc/eks/image-credential-provider\n",
        config
            .lines()
            .map(|l| format!("    {l}\n"))
            .collect::<String>()
    );
    let docs = render_with("bootstrap", "pinhook", "pinhook", Some(&values));
    // The flags the binary accepts, pointing at what is mounted.
    let args = serve_args(&docs);
    let config_path = args
        .registry
        .image_credential_provider_config
        .clone()
        .unwrap();
    let bin_dir = args
        .registry
        .image_credential_provider_bin_dir
        .clone()
        .unwrap();
    let mounts = container(&docs)["volumeMounts"].as_array().unwrap().clone();
    let mounted = |name: &str| -> PathBuf {
        let m = mounts.iter().find(|m| m["name"] == name).unwrap();
        assert_eq!(m["readOnly"], true, "{m}");
        PathBuf::from(m["mountPath"].as_str().unwrap())
    };
    assert_eq!(
        config_path.parent().unwrap(),
        mounted("credential-provider-config")
    );
    assert_eq!(bin_dir, mounted("credential-provider-bin"));
    let volumes = one(&docs, "Deployment")["spec"]["template"]["spec"]["volumes"].clone();
    let volume = |name: &str| {
        volumes
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["name"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(
        volume("credential-provider-bin"),
        json!({"name": "credential-provider-bin", "hostPath": {"path": "/etc/eks/image-credential-provider"}})
    );
    let cm_name = volume("credential-provider-config")["configMap"]["name"].clone();
    let cm = all(&docs, "ConfigMap")
        .into_iter()
        .find(|c| c["metadata"]["name"] == cm_name)
        .unwrap();
    // The file pinhook reads is a valid config, equal to the values given.
    let text = cm["data"][config_path.file_name().unwrap().to_str().unwrap()]
        .as_str()
        .unwrap();
    let parsed = pinhook::resolve::credential_provider::config::CredentialProviderConfig::parse(
        text.as_bytes(),
        &config_path,
    )
    .unwrap();
    assert_eq!(parsed.providers[0].name, "ecr-credential-provider");
    // Tokens are a separate opt-in: no token RBAC yet.
    assert!(
        all(&docs, "ClusterRole")
            .iter()
            .all(|r| !r["rules"].to_string().contains("serviceaccounts/token"))
    );

    let docs = render_with(
        "bootstrap",
        "pinhook",
        "pinhook",
        Some(&format!(
            "{values}  serviceAccountTokens:\n    enabled: true\n"
        )),
    );
    let role = all(&docs, "ClusterRole")
        .into_iter()
        .find(|r| r["metadata"]["name"] == "pinhook-service-account-tokens")
        .expect("the token ClusterRole");
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": [""], "resources": ["serviceaccounts/token"], "verbs": ["create"]}])
    );
    let binding = all(&docs, "ClusterRoleBinding")
        .into_iter()
        .find(|r| r["metadata"]["name"] == "pinhook-service-account-tokens")
        .expect("the token ClusterRoleBinding");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": "pinhook", "namespace": "pinhook"}])
    );
    assert_eq!(binding["roleRef"]["name"], "pinhook-service-account-tokens");
}
