//! Bootstrap certificates: pinhook's own CA and serving certificate, kept in one Secret in its
//! namespace, trusted through the `caBundle` of its two webhook configurations, and rotated
//! before they expire — as Kyverno and k8s-digester do, so the default install needs nothing
//! else (no cert-manager, no certificate made at `helm template` time).
//!
//! The Secret (type `kubernetes.io/tls`) holds `tls.crt` and `tls.key` (what pinhook serves),
//! `ca.crt` and `ca.key` (the CA that signs them) and `ca-bundle.crt` (every CA the API server
//! must trust: the current one first, then earlier ones until they expire). Every API call
//! names its object: get, create and update of that Secret; get and patch of the two webhook
//! configurations — what the chart's Role and ClusterRole grant, and nothing more.
//!
//! # Several replicas
//! One sync reads the webhook configurations, then the Secret. If the Secret is missing or
//! must be renewed, the new contents are written (create, or update carrying the
//! `resourceVersion` that was read) and the sync starts over; a `409` (another replica wrote
//! first) also starts it over, so everyone ends up serving the winner's Secret. Then `caBundle`
//! is patched wherever it differs, with the configuration's `resourceVersion` as a
//! precondition; a `409` (someone patched in between) starts over too. A writer always writes
//! the Secret before it reads the configurations, so the last successful patch always carries
//! the newest Secret's bundle.
//!
//! # Rotation
//! The serving certificate is renewed, signed by the same CA, when less than `renew_before`
//! is left of it. The CA is replaced once it can no longer cover a whole serving certificate;
//! the old CA stays in the bundle until it expires, so a replica still serving a certificate of
//! the old CA stays trusted while it picks up the new one at its next check.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Api;
use kube::api::{Patch, PatchParams, PostParams};
use serde_json::json;
use time::OffsetDateTime;

use crate::certs::{Authority, CertError, CertInfo, key_matches};
use crate::config::BootstrapArgs;

/// Secret keys.
const TLS_CRT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";
const CA_CRT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const CA_BUNDLE: &str = "ca-bundle.crt";
/// How often one sync starts over (after a write or a conflict) before giving up.
const MAX_ATTEMPTS: usize = 6;
/// Field manager named in writes.
const MANAGER: &str = "pinhook";

/// The bootstrap could not do its job.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// The flags do not make sense together.
    #[error("invalid bootstrap settings: {0}")]
    Settings(String),
    /// No Kubernetes API is configured.
    #[error("certificate bootstrap needs the Kubernetes API, but none is configured: {0}")]
    Connect(String),
    /// A call to the Kubernetes API failed.
    #[error("cannot {verb} {object}: {reason}")]
    Api {
        /// `get`, `create`, `update` or `patch`.
        verb: &'static str,
        /// E.g. `Secret pinhook/pinhook-tls`.
        object: String,
        /// The API server's message and code, or the transport error.
        reason: String,
    },
    /// Generating a certificate failed.
    #[error(transparent)]
    Cert(#[from] CertError),
    /// Other writers kept changing the objects.
    #[error(
        "Secret {object} or its webhook configurations kept changing under pinhook; gave up after {MAX_ATTEMPTS} attempts"
    )]
    Contended {
        /// The Secret.
        object: String,
    },
}

/// What the bootstrap manages, from the flags.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The Secret's name.
    pub secret: String,
    /// pinhook's namespace: of the Secret and of the Service.
    pub namespace: String,
    /// The Service the API server calls.
    pub service: String,
    /// The MutatingWebhookConfiguration to patch, if any.
    pub mutating_webhook: Option<String>,
    /// The ValidatingWebhookConfiguration to patch, if any.
    pub validating_webhook: Option<String>,
    /// Names the certificate carries besides [`Settings::dns_name`] (DNS names or IPs).
    pub extra_names: Vec<String>,
    /// Validity of a serving certificate.
    pub cert_validity: Duration,
    /// Validity of a CA.
    pub ca_validity: Duration,
    /// Renew a serving certificate when less than this is left.
    pub renew_before: Duration,
    /// How often to check.
    pub check_interval: Duration,
}

impl Settings {
    /// The settings `--bootstrap-secret` and its companions describe; `None` without it.
    pub fn from_args(args: &BootstrapArgs) -> Result<Option<Self>, BootstrapError> {
        let Some(secret) = args.bootstrap_secret.clone() else {
            return Ok(None);
        };
        let need = |v: &Option<String>, flag: &str| {
            v.clone()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| BootstrapError::Settings(format!("--bootstrap-secret needs {flag}")))
        };
        let s = Self {
            secret,
            namespace: need(&args.service_namespace, "--service-namespace")?,
            service: need(&args.service_name, "--service-name")?,
            mutating_webhook: args.bootstrap_mutating_webhook.clone(),
            validating_webhook: args.bootstrap_validating_webhook.clone(),
            extra_names: args
                .bootstrap_extra_names
                .iter()
                .map(|n| n.trim().to_owned())
                .filter(|n| !n.is_empty())
                .collect(),
            cert_validity: args.bootstrap_cert_validity,
            ca_validity: args.bootstrap_ca_validity,
            renew_before: args.bootstrap_renew_before,
            check_interval: args.bootstrap_check_interval,
        };
        s.check()?;
        Ok(Some(s))
    }

    fn check(&self) -> Result<(), BootstrapError> {
        let bad = |m: &str| Err(BootstrapError::Settings(m.to_owned()));
        if self.renew_before >= self.cert_validity {
            return bad("--bootstrap-renew-before must be shorter than --bootstrap-cert-validity");
        }
        if self.cert_validity >= self.ca_validity {
            return bad("--bootstrap-cert-validity must be shorter than --bootstrap-ca-validity");
        }
        if self.check_interval.is_zero() || self.check_interval >= self.renew_before {
            return bad(
                "--bootstrap-check-interval must be non-zero and shorter than --bootstrap-renew-before",
            );
        }
        Ok(())
    }

    /// The name the API server checks: `SERVICE.NAMESPACE.svc`.
    pub fn dns_name(&self) -> String {
        format!("{}.{}.svc", self.service, self.namespace)
    }

    /// Every name of the serving certificate: [`Settings::dns_name`] first, then the extra ones.
    pub fn names(&self) -> Vec<String> {
        let mut names = vec![self.dns_name()];
        for n in &self.extra_names {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        names
    }

    /// `NAMESPACE/SECRET`, for messages.
    pub fn secret_ref(&self) -> String {
        format!("{}/{}", self.namespace, self.secret)
    }
}

/// The certificate in force: what pinhook serves and what its webhooks trust.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    /// Serving certificate (PEM).
    pub cert_pem: String,
    /// Its private key (PEM).
    pub key_pem: String,
    /// The CAs the webhooks' `caBundle` holds (PEM).
    pub ca_bundle_pem: String,
    /// When the serving certificate expires.
    pub not_after: OffsetDateTime,
}

/// The outcome of one sync.
#[derive(Debug, Clone)]
pub struct Synced {
    /// The certificate in force.
    pub material: Material,
    /// Why this sync wrote the Secret, if it did.
    pub wrote: Option<String>,
    /// Webhook configurations whose `caBundle` this sync patched (`Kind/name`).
    pub patched: Vec<String>,
    /// Webhook configurations that do not exist (yet).
    pub missing: Vec<String>,
}

/// What the Secret's contents call for.
#[derive(Debug)]
enum Plan {
    /// Usable as they are.
    Keep(Material),
    /// New contents to write, and why.
    Write(BTreeMap<String, String>, String),
}

/// Decides whether the stored contents can be served, or what to write instead.
fn plan(
    stored: &BTreeMap<String, String>,
    s: &Settings,
    now: OffsetDateTime,
) -> Result<Plan, CertError> {
    let cert_validity = time::Duration::try_from(s.cert_validity).unwrap_or(time::Duration::MAX);
    let renew_before = time::Duration::try_from(s.renew_before).unwrap_or(time::Duration::MAX);
    let ca_validity = time::Duration::try_from(s.ca_validity).unwrap_or(time::Duration::MAX);
    let dns_name = s.dns_name();
    let names = s.names();
    let previous: Vec<CertInfo> = stored
        .get(CA_BUNDLE)
        .and_then(|b| CertInfo::parse_bundle(b).ok())
        .unwrap_or_default();

    let mut reasons = Vec::new();
    let stored_ca = match (stored.get(CA_CRT), stored.get(CA_KEY)) {
        (Some(c), Some(k)) => match Authority::from_pem(c, k) {
            Ok(ca) if ca.not_after() - now >= cert_validity => Some(ca),
            Ok(ca) => {
                reasons.push(format!(
                    "the CA expires at {}, too soon to sign a whole serving certificate",
                    ca.not_after()
                ));
                None
            }
            Err(e) => {
                reasons.push(format!("the stored CA is unusable ({e})"));
                None
            }
        },
        _ => {
            reasons.push("there is no CA yet".into());
            None
        }
    };
    let mut retiring = Vec::new();
    let (ca, leaf) = match stored_ca {
        Some(ca) => {
            let leaf = usable_leaf(stored, &ca, &names, now, renew_before, &mut reasons);
            (ca, leaf)
        }
        None => {
            if let Some(old) = stored.get(CA_CRT).and_then(|c| CertInfo::parse(c).ok()) {
                retiring.push(old);
            }
            (
                Authority::generate_at(&format!("pinhook CA {dns_name}"), now, ca_validity)?,
                None,
            )
        }
    };

    // The bundle: the current CA, then earlier CAs until they expire.
    let current = CertInfo::parse(ca.cert_pem()).map_err(|_| CertError {
        names: vec![dns_name.clone()],
        source: rcgen::Error::CouldNotParseCertificate,
    })?;
    let mut bundle = vec![current.clone()];
    for c in retiring.into_iter().chain(previous.iter().cloned()) {
        if c.not_after > now && !bundle.iter().any(|b| b.der == c.der) {
            bundle.push(c);
        }
    }
    let bundle_pem: String = bundle.iter().map(|c| pem_of(&c.der)).collect();
    if leaf.is_some() && reasons.is_empty() {
        let stored_bundle: Vec<&[u8]> = previous.iter().map(|c| c.der.as_slice()).collect();
        let wanted: Vec<&[u8]> = bundle.iter().map(|c| c.der.as_slice()).collect();
        if stored_bundle != wanted {
            reasons.push("the CA bundle holds an expired or missing CA".into());
        }
    }

    if let (Some((cert_pem, key_pem, not_after)), true) = (&leaf, reasons.is_empty()) {
        return Ok(Plan::Keep(Material {
            cert_pem: cert_pem.clone(),
            key_pem: key_pem.clone(),
            ca_bundle_pem: bundle_pem,
            not_after: *not_after,
        }));
    }
    let (cert_pem, key_pem) = match leaf {
        Some((c, k, _)) => (c, k),
        None => ca.issue_at(&names, now, cert_validity)?,
    };
    let data = BTreeMap::from([
        (TLS_CRT.to_owned(), cert_pem),
        (TLS_KEY.to_owned(), key_pem),
        (CA_CRT.to_owned(), ca.cert_pem().to_owned()),
        (CA_KEY.to_owned(), ca.key_pem().to_owned()),
        (CA_BUNDLE.to_owned(), bundle_pem),
    ]);
    Ok(Plan::Write(data, reasons.join("; ")))
}

/// The stored serving certificate, if it is still good: its PEM, key PEM and expiry.
fn usable_leaf(
    stored: &BTreeMap<String, String>,
    ca: &Authority,
    names: &[String],
    now: OffsetDateTime,
    renew_before: time::Duration,
    reasons: &mut Vec<String>,
) -> Option<(String, String, OffsetDateTime)> {
    let (Some(cert_pem), Some(key_pem)) = (stored.get(TLS_CRT), stored.get(TLS_KEY)) else {
        reasons.push("there is no serving certificate yet".into());
        return None;
    };
    let problem = match (CertInfo::parse(cert_pem), CertInfo::parse(ca.cert_pem())) {
        (Err(e), _) | (_, Err(e)) => Some(format!("the serving certificate is unreadable ({e})")),
        (Ok(leaf), Ok(root)) => {
            if !key_matches(&leaf, key_pem) {
                Some("tls.key does not belong to tls.crt".into())
            } else if !leaf.signed_by(&root) {
                Some("the serving certificate is not signed by the stored CA".into())
            } else if let Some(missing) = names.iter().find(|n| !leaf.names.contains(n)) {
                Some(format!(
                    "the serving certificate is for {:?}, not {missing}",
                    leaf.names
                ))
            } else if leaf.not_before > now {
                Some(format!(
                    "the serving certificate is not valid before {}",
                    leaf.not_before
                ))
            } else if leaf.not_after - now < renew_before {
                Some(format!(
                    "the serving certificate expires at {}",
                    leaf.not_after
                ))
            } else {
                return Some((cert_pem.clone(), key_pem.clone(), leaf.not_after));
            }
        }
    };
    reasons.extend(problem);
    None
}

fn pem_of(der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The webhook configurations pinhook patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WebhookKind {
    Mutating,
    Validating,
}

impl WebhookKind {
    fn name(self) -> &'static str {
        match self {
            Self::Mutating => "MutatingWebhookConfiguration",
            Self::Validating => "ValidatingWebhookConfiguration",
        }
    }
}

/// A webhook configuration as read: its resourceVersion and each webhook's name and caBundle.
#[derive(Debug)]
struct WebhookState {
    resource_version: Option<String>,
    bundles: Vec<(String, Option<Vec<u8>>)>,
}

impl WebhookState {
    /// From a configuration's resourceVersion and webhooks (each webhook's name and caBundle).
    fn new<W>(
        resource_version: Option<String>,
        webhooks: Option<Vec<W>>,
        parts: impl Fn(&W) -> (&String, &Option<ByteString>),
    ) -> Self {
        let bundles = webhooks
            .unwrap_or_default()
            .iter()
            .map(|w| {
                let (name, bundle) = parts(w);
                (name.clone(), bundle.as_ref().map(|b| b.0.clone()))
            })
            .collect();
        Self {
            resource_version,
            bundles,
        }
    }
}

/// Keeps pinhook's certificate Secret and its webhooks' `caBundle` in order.
#[derive(Clone)]
pub struct Bootstrap {
    settings: Settings,
    secrets: Api<Secret>,
    mutating: Api<MutatingWebhookConfiguration>,
    validating: Api<ValidatingWebhookConfiguration>,
}

impl std::fmt::Debug for Bootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bootstrap")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Bootstrap {
    /// Connects with the in-cluster configuration or `KUBECONFIG`.
    pub async fn connect(settings: Settings) -> Result<Self, BootstrapError> {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| BootstrapError::Connect(e.to_string()))?;
        Ok(Self::with_client(client, settings))
    }

    /// Uses `client`.
    pub fn with_client(client: kube::Client, settings: Settings) -> Self {
        Self {
            secrets: Api::namespaced(client.clone(), &settings.namespace),
            mutating: Api::all(client.clone()),
            validating: Api::all(client),
            settings,
        }
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn webhooks(&self) -> Vec<(WebhookKind, &str)> {
        let s = &self.settings;
        [
            (WebhookKind::Mutating, s.mutating_webhook.as_deref()),
            (WebhookKind::Validating, s.validating_webhook.as_deref()),
        ]
        .into_iter()
        .filter_map(|(k, n)| n.map(|n| (k, n)))
        .collect()
    }

    /// Makes sure a usable certificate is in the Secret and its CAs are in every `caBundle`;
    /// returns the certificate to serve.
    pub async fn sync(&self) -> Result<Synced, BootstrapError> {
        let mut wrote = None;
        let mut patched = Vec::new();
        for _ in 0..MAX_ATTEMPTS {
            let mut configs = Vec::new();
            for (kind, name) in self.webhooks() {
                configs.push((kind, name, self.read_webhook(kind, name).await?));
            }
            let secret = self
                .secrets
                .get_opt(&self.settings.secret)
                .await
                .map_err(|e| self.secret_error("get", e))?;
            let stored = secret_strings(secret.as_ref());
            let material = match plan(&stored, &self.settings, OffsetDateTime::now_utc())? {
                Plan::Keep(m) => m,
                Plan::Write(data, reason) => {
                    if self.write_secret(secret, data).await? {
                        tracing::info!(secret = %self.settings.secret_ref(), %reason, "bootstrap certificate written");
                        wrote = Some(reason);
                    } else {
                        tracing::info!(secret = %self.settings.secret_ref(), "another replica wrote the certificate Secret first; using it");
                    }
                    // Read the configurations again after the write (see the module docs).
                    continue;
                }
            };
            let mut missing = Vec::new();
            let mut conflict = false;
            for (kind, name, state) in configs {
                let label = format!("{}/{name}", kind.name());
                let Some(state) = state else {
                    missing.push(label);
                    continue;
                };
                let bundle = material.ca_bundle_pem.as_bytes();
                if state
                    .bundles
                    .iter()
                    .all(|(_, b)| b.as_deref() == Some(bundle))
                {
                    continue;
                }
                if self.patch_webhook(kind, name, &state, bundle).await? {
                    tracing::info!(webhook = %label, "caBundle patched");
                    patched.push(label);
                } else {
                    conflict = true;
                    break;
                }
            }
            if conflict {
                continue;
            }
            for m in &missing {
                tracing::warn!(webhook = %m, "webhook configuration not found; its caBundle will be set once it exists");
            }
            return Ok(Synced {
                material,
                wrote,
                patched,
                missing,
            });
        }
        Err(BootstrapError::Contended {
            object: self.settings.secret_ref(),
        })
    }

    fn secret_error(&self, verb: &'static str, e: kube::Error) -> BootstrapError {
        BootstrapError::Api {
            verb,
            object: format!("Secret {}", self.settings.secret_ref()),
            reason: describe(&e),
        }
    }

    /// Creates or updates the Secret; `false` when another writer got there first (409).
    async fn write_secret(
        &self,
        existing: Option<Secret>,
        data: BTreeMap<String, String>,
    ) -> Result<bool, BootstrapError> {
        let pp = PostParams {
            dry_run: false,
            field_manager: Some(MANAGER.into()),
        };
        let data = data
            .into_iter()
            .map(|(k, v)| (k, ByteString(v.into_bytes())))
            .collect();
        let result = match existing {
            None => {
                let secret = Secret {
                    metadata: ObjectMeta {
                        name: Some(self.settings.secret.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        labels: Some(BTreeMap::from([(
                            "app.kubernetes.io/managed-by".to_owned(),
                            "pinhook".to_owned(),
                        )])),
                        ..ObjectMeta::default()
                    },
                    type_: Some("kubernetes.io/tls".into()),
                    data: Some(data),
                    ..Secret::default()
                };
                self.secrets
                    .create(&pp, &secret)
                    .await
                    .map_err(|e| ("create", e))
            }
            Some(mut secret) => {
                // Keeps metadata.resourceVersion: the update fails with 409 if anyone wrote since.
                secret.data = Some(data);
                secret.string_data = None;
                secret.metadata.managed_fields = None;
                self.secrets
                    .replace(&self.settings.secret, &pp, &secret)
                    .await
                    .map_err(|e| ("update", e))
            }
        };
        match result {
            Ok(_) => Ok(true),
            Err((_, kube::Error::Api(s))) if s.is_conflict() || s.is_already_exists() => Ok(false),
            Err((verb, e)) => Err(self.secret_error(verb, e)),
        }
    }

    async fn read_webhook(
        &self,
        kind: WebhookKind,
        name: &str,
    ) -> Result<Option<WebhookState>, BootstrapError> {
        let err = |e| BootstrapError::Api {
            verb: "get",
            object: format!("{} {name}", kind.name()),
            reason: describe(&e),
        };
        Ok(match kind {
            WebhookKind::Mutating => self.mutating.get_opt(name).await.map_err(err)?.map(|c| {
                WebhookState::new(c.metadata.resource_version, c.webhooks, |w| {
                    (&w.name, &w.client_config.ca_bundle)
                })
            }),
            WebhookKind::Validating => self.validating.get_opt(name).await.map_err(err)?.map(|c| {
                WebhookState::new(c.metadata.resource_version, c.webhooks, |w| {
                    (&w.name, &w.client_config.ca_bundle)
                })
            }),
        })
    }

    /// Sets `caBundle` on every webhook of a configuration (strategic merge by webhook name,
    /// `resourceVersion` as a precondition); `false` on a 409 conflict.
    async fn patch_webhook(
        &self,
        kind: WebhookKind,
        name: &str,
        state: &WebhookState,
        bundle: &[u8],
    ) -> Result<bool, BootstrapError> {
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::STANDARD.encode(bundle);
        let hooks: Vec<_> = state
            .bundles
            .iter()
            .map(|(n, _)| json!({"name": n, "clientConfig": {"caBundle": b64}}))
            .collect();
        let patch = Patch::Strategic(json!({
            "metadata": {"resourceVersion": state.resource_version},
            "webhooks": hooks,
        }));
        let pp = PatchParams {
            field_manager: Some(MANAGER.into()),
            ..PatchParams::default()
        };
        let result = match kind {
            WebhookKind::Mutating => self.mutating.patch(name, &pp, &patch).await.map(|_| ()),
            WebhookKind::Validating => self.validating.patch(name, &pp, &patch).await.map(|_| ()),
        };
        match result {
            Ok(()) => Ok(true),
            Err(kube::Error::Api(s)) if s.is_conflict() => Ok(false),
            Err(e) => Err(BootstrapError::Api {
                verb: "patch",
                object: format!("{} {name}", kind.name()),
                reason: describe(&e),
            }),
        }
    }
}

/// A kube error in one line: the API server's message and code, or the transport error.
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
        other => other.to_string(),
    }
}

/// The Secret's data as text (unreadable entries left out).
fn secret_strings(secret: Option<&Secret>) -> BTreeMap<String, String> {
    secret
        .and_then(|s| s.data.as_ref())
        .map(|d| {
            d.iter()
                .filter_map(|(k, v)| Some((k.clone(), String::from_utf8(v.0.clone()).ok()?)))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn settings() -> Settings {
        Settings {
            secret: "pinhook-tls".into(),
            namespace: "pinhook".into(),
            service: "pinhook".into(),
            mutating_webhook: Some("pinhook".into()),
            validating_webhook: Some("pinhook".into()),
            extra_names: Vec::new(),
            cert_validity: 90 * DAY,
            ca_validity: 3650 * DAY,
            renew_before: 30 * DAY,
            check_interval: Duration::from_secs(60),
        }
    }

    fn write(p: Plan) -> (BTreeMap<String, String>, String) {
        match p {
            Plan::Write(d, r) => (d, r),
            Plan::Keep(_) => panic!("expected a write"),
        }
    }

    fn keep(p: Plan) -> Material {
        match p {
            Plan::Keep(m) => m,
            Plan::Write(_, r) => panic!("expected keep, got a write: {r}"),
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[test]
    fn an_empty_secret_gets_a_ca_and_a_certificate_for_the_service() {
        let (data, reason) = write(plan(&BTreeMap::new(), &settings(), now()).unwrap());
        assert!(reason.contains("no CA yet"), "{reason}");
        let leaf = CertInfo::parse(&data[TLS_CRT]).unwrap();
        let ca = CertInfo::parse(&data[CA_CRT]).unwrap();
        assert_eq!(leaf.names, ["pinhook.pinhook.svc"]);
        assert!(leaf.signed_by(&ca) && key_matches(&leaf, &data[TLS_KEY]));
        assert_eq!(CertInfo::parse_bundle(&data[CA_BUNDLE]).unwrap(), [ca]);
        // What was just written is kept as it is.
        let m = keep(plan(&data, &settings(), now()).unwrap());
        assert_eq!(m.cert_pem, data[TLS_CRT]);
        assert_eq!(m.ca_bundle_pem, data[CA_BUNDLE]);
    }

    #[test]
    fn extra_names_are_in_the_certificate_and_a_stored_one_without_them_is_replaced() {
        let (data, _) = write(plan(&BTreeMap::new(), &settings(), now()).unwrap());
        let mut s = settings();
        s.extra_names = vec!["127.0.0.1".into(), "pinhook.example".into()];
        let (renewed, reason) = write(plan(&data, &s, now()).unwrap());
        assert!(reason.contains("not 127.0.0.1"), "{reason}");
        let mut names = CertInfo::parse(&renewed[TLS_CRT]).unwrap().names;
        names.sort();
        assert_eq!(
            names,
            ["127.0.0.1", "pinhook.example", "pinhook.pinhook.svc"]
        );
        assert_eq!(renewed[CA_CRT], data[CA_CRT]);
        keep(plan(&renewed, &s, now()).unwrap());
    }

    #[test]
    fn a_certificate_about_to_expire_is_renewed_by_the_same_ca() {
        let (data, _) = write(plan(&BTreeMap::new(), &settings(), now()).unwrap());
        let later = now() + time::Duration::days(61);
        let (renewed, reason) = write(plan(&data, &settings(), later).unwrap());
        assert!(reason.contains("serving certificate expires"), "{reason}");
        assert_ne!(renewed[TLS_CRT], data[TLS_CRT]);
        assert_eq!(renewed[CA_CRT], data[CA_CRT]);
        assert_eq!(renewed[CA_BUNDLE], data[CA_BUNDLE]);
    }

    #[test]
    fn a_ca_that_cannot_cover_a_whole_certificate_is_replaced_and_kept_in_the_bundle() {
        let (data, _) = write(plan(&BTreeMap::new(), &settings(), now()).unwrap());
        // 3600 days on, the CA has 50 days left: less than the 90 of a serving certificate.
        let later = now() + time::Duration::days(3600);
        let (renewed, reason) = write(plan(&data, &settings(), later).unwrap());
        assert!(reason.contains("too soon to sign"), "{reason}");
        assert_ne!(renewed[CA_CRT], data[CA_CRT]);
        let bundle = CertInfo::parse_bundle(&renewed[CA_BUNDLE]).unwrap();
        let old = CertInfo::parse(&data[CA_CRT]).unwrap();
        let new = CertInfo::parse(&renewed[CA_CRT]).unwrap();
        assert_eq!(bundle, [new.clone(), old.clone()]);
        assert!(CertInfo::parse(&renewed[TLS_CRT]).unwrap().signed_by(&new));
        // Once the old CA has expired (day 3650), it is dropped from the bundle; the serving
        // certificate (issued on day 3600, renewed from day 3660) stays.
        let after = now() + time::Duration::days(3655);
        let (cleaned, reason) = write(plan(&renewed, &settings(), after).unwrap());
        assert!(reason.contains("bundle"), "{reason}");
        assert_eq!(cleaned[CA_CRT], renewed[CA_CRT]);
        assert_eq!(cleaned[TLS_CRT], renewed[TLS_CRT]);
        assert_eq!(CertInfo::parse_bundle(&cleaned[CA_BUNDLE]).unwrap(), [new]);
    }

    #[test]
    fn a_certificate_for_another_service_or_key_is_replaced() {
        let (data, _) = write(plan(&BTreeMap::new(), &settings(), now()).unwrap());
        let mut other = settings();
        other.service = "renamed".into();
        let (_, reason) = write(plan(&data, &other, now()).unwrap());
        assert!(reason.contains("not renamed.pinhook.svc"), "{reason}");
        let mut swapped = data.clone();
        swapped.insert(TLS_KEY.into(), data[CA_KEY].clone());
        let (_, reason) = write(plan(&swapped, &settings(), now()).unwrap());
        assert!(reason.contains("tls.key does not belong"), "{reason}");
    }

    #[test]
    fn garbage_in_the_secret_is_replaced_not_served() {
        let junk = BTreeMap::from([
            (CA_CRT.to_owned(), "not a certificate".to_owned()),
            (CA_KEY.to_owned(), "not a key".to_owned()),
            (TLS_CRT.to_owned(), String::new()),
        ]);
        let (data, reason) = write(plan(&junk, &settings(), now()).unwrap());
        assert!(reason.contains("stored CA is unusable"), "{reason}");
        keep(plan(&data, &settings(), now()).unwrap());
    }

    #[test]
    fn settings_must_leave_room_to_renew() {
        let mut s = settings();
        s.renew_before = 90 * DAY;
        assert!(s.check().is_err());
        let mut s = settings();
        s.ca_validity = 90 * DAY;
        assert!(s.check().is_err());
        let mut s = settings();
        s.check_interval = 30 * DAY;
        assert!(s.check().is_err());
        settings().check().unwrap();
    }
}
