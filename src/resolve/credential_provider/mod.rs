//! The kubelet's credential-provider plugins (`ecr-credential-provider`,
//! `acr-credential-provider`, GKE's `auth-provider-gcp`…) run by pinhook, with the kubelet's
//! config file (`--image-credential-provider-config`) and plugin directory
//! (`--image-credential-provider-bin-dir`), speaking `credentialprovider.kubelet.k8s.io`
//! `CredentialProviderRequest`/`CredentialProviderResponse` on stdin/stdout.
//!
//! For an image, every provider whose `matchImages` matches is asked (from its cache when it
//! can be), in file order; the credentials of the response's `auth` map that match the image
//! come after the pod's pull secrets and before `--registry-config`. A failing plugin gives
//! nothing and a note naming it and the image, and resolution goes on with the other
//! credential sources, as the kubelet does.
//! Reference: <https://kubernetes.io/docs/tasks/administer-cluster/kubelet-credential-provider/>.

mod accounts;
pub mod config;
pub mod exec;
pub mod matching;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use accounts::{AccountInfo, ServiceAccounts, TOKEN_EXPIRATION_SECONDS};
use config::{CredentialProviderConfig, ProviderConfig, TokenCacheType};
use matching::ImagePattern;

use super::auth::{Credential, Keyring};
use crate::reference::ImageRef;

/// The longest a plugin may run, whatever the admission deadline: the kubelet's own limit.
pub const MAX_PLUGIN_TIME: Duration = Duration::from_secs(60);

/// Most cached responses, across providers.
const MAX_CACHED_RESPONSES: u64 = 10_000;

/// The providers cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The config file is unusable.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The bin dir or a provider's executable is missing.
    #[error("credential provider {name:?}: {}: {detail}", path.display())]
    Executable {
        /// The provider.
        name: String,
        /// The path looked at.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// `--image-credential-provider-bin-dir` is unusable.
    #[error("credential provider bin dir {}: {detail}", path.display())]
    BinDir {
        /// The directory.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
}

/// A provider gave no credentials for an image, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("credential provider {plugin:?} for image {image}: {reason}")]
pub struct ProviderError {
    /// The provider's name.
    pub plugin: String,
    /// The image asked about (`registry/repository`).
    pub image: String,
    /// What went wrong.
    pub reason: String,
}

/// The pod whose images are resolved: its namespace and service account.
#[derive(Debug, Clone, Copy)]
pub struct Account<'a> {
    /// The namespace.
    pub namespace: &'a str,
    /// `serviceAccountName`, `default` when unset.
    pub name: &'a str,
}

/// What the providers gave for one image.
#[derive(Debug, Clone, Default)]
pub struct Provided {
    /// Their credentials, in provider order.
    pub keyring: Keyring,
    /// Matching providers that failed, and why.
    pub failures: Vec<ProviderError>,
    /// Matching providers not asked by design (the service account lacks a required
    /// annotation: workloads opt in that way), and why; worth a word only if access is refused.
    pub not_asked: Vec<ProviderError>,
}

/// Why a matching provider gave nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Nothing {
    /// It failed.
    Failed(String),
    /// It was not to be asked for this pod.
    NotAsked(String),
}

impl From<String> for Nothing {
    fn from(reason: String) -> Self {
        Self::Failed(reason)
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Request<'a> {
    kind: &'static str,
    api_version: &'a str,
    image: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_account_token: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    service_account_annotations: Option<&'a BTreeMap<String, String>>,
}

/// A response as decoded once `kind` and `apiVersion` are known to be right.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawResponse {
    #[serde(rename = "kind")]
    _kind: serde::de::IgnoredAny,
    #[serde(rename = "apiVersion")]
    _api_version: serde::de::IgnoredAny,
    #[serde(default)]
    cache_key_type: String,
    cache_duration: Option<String>,
    #[serde(default)]
    auth: BTreeMap<String, AuthConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthConfig {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
}

/// `cacheKeyType` of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheKeyType {
    Image,
    Registry,
    Global,
}

/// A response's `auth` entry, its key normalized as the kubelet's keyring does.
#[derive(Debug, Clone)]
struct AuthEntry {
    key: String,
    pattern: Option<ImagePattern>,
    username: String,
    password: String,
}

/// A usable response.
#[derive(Debug, Clone)]
struct Response {
    cache_key_type: CacheKeyType,
    /// `None`: the provider's default.
    cache_duration: Option<Duration>,
    auth: Vec<AuthEntry>,
}

/// A cached response and until when it may be used.
#[derive(Debug)]
struct Cached {
    auth: Vec<AuthEntry>,
    keep: Duration,
}

struct CachedExpiry;

impl moka::Expiry<String, Arc<Cached>> for CachedExpiry {
    fn expire_after_create(&self, _: &String, value: &Arc<Cached>, _: Instant) -> Option<Duration> {
        Some(value.keep)
    }
}

#[derive(Debug)]
struct Provider {
    config: ProviderConfig,
    path: PathBuf,
}

/// The configured plugins, their response cache and the service-account access they need.
pub struct CredentialProviders {
    providers: Vec<Provider>,
    accounts: Option<ServiceAccounts>,
    cache: moka::future::Cache<String, Arc<Cached>>,
    flights: moka::future::Cache<String, Arc<Result<Response, String>>>,
    reserve: Duration,
    metrics: Option<Arc<crate::metrics::Metrics>>,
}

impl std::fmt::Debug for CredentialProviders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialProviders")
            .field("providers", &self.providers)
            .finish_non_exhaustive()
    }
}

/// The kubelet's keyring key for an `auth` map key: without scheme, `/v1/` or `/v2/` dropped.
fn normalize_auth_key(key: &str) -> String {
    let rest = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let (host, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    let path = if path.starts_with("/v2/") || path.starts_with("/v1/") {
        &path[3..]
    } else {
        path
    };
    if path.is_empty() || path == "/" {
        host.to_owned()
    } else {
        format!("{host}{path}")
    }
}

/// Whether `image` (`registry/repository`) is pulled from Docker Hub, as the kubelet decides.
fn is_docker_hub(image: &str) -> bool {
    matches!(
        image.split_once('/'),
        Some(("docker.io" | "index.docker.io", _))
    )
}

/// A hex SHA-256 of `text`, for cache keys that must not hold a token.
fn hash(text: &str) -> String {
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl CredentialProviders {
    /// Loads `config` and checks that `bin_dir` holds each provider's executable;
    /// `accounts` serves providers with `tokenAttributes` (without it they give a note);
    /// a plugin's deadline leaves `reserve` of the caller's for the registry.
    pub fn load(
        config: &Path,
        bin_dir: &Path,
        accounts: Option<ServiceAccounts>,
        reserve: Duration,
    ) -> Result<Self, SetupError> {
        let parsed = CredentialProviderConfig::load(config)?;
        match std::fs::metadata(bin_dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(SetupError::BinDir {
                    path: bin_dir.to_owned(),
                    detail: "not a directory".into(),
                });
            }
            Err(e) => {
                return Err(SetupError::BinDir {
                    path: bin_dir.to_owned(),
                    detail: e.to_string(),
                });
            }
        }
        let mut providers = Vec::new();
        for p in parsed.providers {
            use std::os::unix::fs::PermissionsExt;
            let path = bin_dir.join(&p.name);
            let problem = match std::fs::metadata(&path) {
                Ok(m) if !m.is_file() => Some("not a regular file".to_owned()),
                Ok(m) if m.permissions().mode() & 0o111 == 0 => Some("not executable".to_owned()),
                Ok(_) => None,
                Err(e) => Some(e.to_string()),
            };
            if let Some(detail) = problem {
                return Err(SetupError::Executable {
                    name: p.name,
                    path,
                    detail,
                });
            }
            providers.push(Provider { config: p, path });
        }
        Ok(Self {
            providers,
            accounts,
            cache: moka::future::Cache::builder()
                .max_capacity(MAX_CACHED_RESPONSES)
                .expire_after(CachedExpiry)
                .build(),
            // Only the calls in flight: each is removed once answered.
            flights: moka::future::Cache::builder()
                .max_capacity(MAX_CACHED_RESPONSES)
                .time_to_live(MAX_PLUGIN_TIME)
                .build(),
            reserve,
            metrics: None,
        })
    }

    /// Counts each plugin run in `metrics` (`pinhook_credential_provider_runs_total`).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// The providers' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.providers
            .iter()
            .map(|p| p.config.name.as_str())
            .collect()
    }

    /// Whether any provider needs service-account tokens.
    pub fn wants_tokens(&self) -> bool {
        self.providers
            .iter()
            .any(|p| p.config.token_attributes.is_some())
    }

    /// Whether some provider's `matchImages` matches `image`.
    pub fn matches(&self, image: &ImageRef) -> bool {
        let name = format!("{}/{}", image.registry(), image.repository());
        self.providers
            .iter()
            .any(|p| p.config.match_images.iter().any(|m| m.matches(&name)))
    }

    /// The credentials every matching provider gives for `image`, for a pod of `account`,
    /// asked before `deadline`.
    pub async fn credentials(
        &self,
        image: &ImageRef,
        account: Option<Account<'_>>,
        deadline: Instant,
    ) -> Provided {
        let name = format!("{}/{}", image.registry(), image.repository());
        let mut provided = Provided::default();
        for provider in &self.providers {
            if !provider
                .config
                .match_images
                .iter()
                .any(|m| m.matches(&name))
            {
                continue;
            }
            match self.ask(provider, &name, account, deadline).await {
                Ok(auth) => {
                    let credentials = matching_credentials(&auth, &name)
                        .into_iter()
                        .map(|a| Credential {
                            username: a.username.clone(),
                            password: a.password.clone(),
                            source: format!("credential provider {}", provider.config.name),
                            // The kubelet's plugins answer with a username and password only.
                            identity_token: false,
                        })
                        .collect();
                    provided
                        .keyring
                        .extend(Keyring::for_registry(image.registry(), credentials));
                }
                Err(nothing) => {
                    let (list, reason) = match nothing {
                        Nothing::Failed(r) => (&mut provided.failures, r),
                        Nothing::NotAsked(r) => (&mut provided.not_asked, r),
                    };
                    list.push(ProviderError {
                        plugin: provider.config.name.clone(),
                        image: name.clone(),
                        reason,
                    });
                }
            }
        }
        provided
    }

    /// One provider's `auth` entries for `image`: cached, or from the plugin.
    async fn ask(
        &self,
        provider: &Provider,
        image: &str,
        account: Option<Account<'_>>,
        deadline: Instant,
    ) -> Result<Vec<AuthEntry>, Nothing> {
        let p = &provider.config;
        // The service account's part of cache and single-flight keys, its token and annotations.
        let mut sa_key = String::new();
        let mut token = None;
        let mut annotations = None;
        if let Some(t) = &p.token_attributes {
            let accounts = self.accounts.as_ref().ok_or_else(|| {
                "it needs the pod's service-account token (tokenAttributes), and pinhook has no Kubernetes API to request one".to_owned()
            })?;
            let account = account.ok_or_else(|| {
                "it needs the pod's service-account token (tokenAttributes), and no pod is known here".to_owned()
            })?;
            let who = format!("{}/{}", account.namespace, account.name);
            match accounts.get(account.namespace, account.name).await? {
                None if t.require_service_account => {
                    return Err(Nothing::Failed(format!(
                        "service account {who} does not exist, and the provider requires one (requireServiceAccount: true)"
                    )));
                }
                // Not required: asked without a token, as the kubelet does for a pod without one.
                None => {}
                Some(info) => {
                    let mut chosen = BTreeMap::new();
                    for k in &t.required_annotation_keys {
                        match info.annotations.get(k) {
                            Some(v) => {
                                chosen.insert(k.clone(), v.clone());
                            }
                            None => {
                                return Err(Nothing::NotAsked(format!(
                                    "service account {who} lacks the required annotation {k:?}, so the provider was not asked"
                                )));
                            }
                        }
                    }
                    for k in &t.optional_annotation_keys {
                        if let Some(v) = info.annotations.get(k) {
                            chosen.insert(k.clone(), v.clone());
                        }
                    }
                    let jwt = accounts
                        .token(account.namespace, account.name, &t.audience)
                        .await?;
                    let mut parts = vec![
                        account.namespace.to_owned(),
                        account.name.to_owned(),
                        info.uid.clone(),
                        serde_json::to_string(&chosen).unwrap_or_default(),
                    ];
                    if t.cache_type == TokenCacheType::Token {
                        parts.push(hash(&jwt));
                    }
                    sa_key = serde_json::to_string(&parts).unwrap_or_default();
                    token = Some(jwt);
                    annotations = Some(chosen);
                }
            }
        }
        let key = |base: &str| {
            serde_json::to_string(&[p.name.as_str(), base, sa_key.as_str()]).unwrap_or_default()
        };
        let registry = image.split('/').next().unwrap_or(image);
        for base in [image, registry, "\u{0}global"] {
            if let Some(hit) = self.cache.get(&key(base)).await {
                return Ok(hit.auth.clone());
            }
        }
        // One plugin process for concurrent identical requests (image, token, annotations).
        let flight = serde_json::to_string(&[
            p.name.as_str(),
            image,
            &token.as_deref().map(hash).unwrap_or_default(),
            &serde_json::to_string(&annotations).unwrap_or_default(),
        ])
        .unwrap_or_default();
        let request = Request {
            kind: "CredentialProviderRequest",
            api_version: &p.api_version,
            image,
            service_account_token: token.as_deref(),
            service_account_annotations: annotations.as_ref(),
        };
        let input = serde_json::to_vec(&request).map_err(|e| e.to_string())?;
        let answer = self
            .flights
            .get_with_by_ref(&flight, async {
                Arc::new(self.exec(provider, input, deadline).await)
            })
            .await;
        self.flights.invalidate(&flight).await;
        let response = (*answer).clone()?;
        let keep = response.cache_duration.unwrap_or(p.default_cache_duration);
        if !keep.is_zero() {
            let base = match response.cache_key_type {
                CacheKeyType::Image => image,
                CacheKeyType::Registry => registry,
                CacheKeyType::Global => "\u{0}global",
            };
            self.cache
                .insert(
                    key(base),
                    Arc::new(Cached {
                        auth: response.auth.clone(),
                        keep,
                    }),
                )
                .await;
        }
        Ok(response.auth)
    }

    /// Runs the plugin with `input` within `deadline` less the reserve, and reads its response.
    async fn exec(
        &self,
        provider: &Provider,
        input: Vec<u8>,
        deadline: Instant,
    ) -> Result<Response, String> {
        let remaining = deadline.saturating_duration_since(Instant::now());
        // The registry keeps its reserve, but never more than half of what is left.
        let timeout = remaining
            .saturating_sub(self.reserve.min(remaining / 2))
            .min(MAX_PLUGIN_TIME);
        if timeout < Duration::from_millis(10) {
            return Err(format!(
                "not run: {:.3}s left before the admission deadline",
                remaining.as_secs_f64()
            ));
        }
        let started = Instant::now();
        let (path, args, env) = (
            provider.path.clone(),
            provider.config.args.clone(),
            provider.config.env.clone(),
        );
        let ran =
            tokio::task::spawn_blocking(move || exec::run(&path, &args, &env, input, timeout))
                .await
                .map_err(|e| format!("the plugin runner failed: {e}"));
        let response = match ran {
            Ok(Ok(out)) => {
                parse_response(&out, &provider.config.api_version).map_err(|e| ("invalid", e))
            }
            Ok(Err(e @ exec::ExecError::Timeout { .. })) => Err(("timeout", e.to_string())),
            Ok(Err(e @ exec::ExecError::Exit { .. })) => Err(("exit", e.to_string())),
            Ok(Err(e @ exec::ExecError::TooLarge { .. })) => Err(("invalid", e.to_string())),
            Ok(Err(e)) => Err(("error", e.to_string())),
            Err(e) => Err(("error", e)),
        };
        let outcome = response.as_ref().map_or_else(|(label, _)| *label, |_| "ok");
        tracing::debug!(plugin = %provider.config.name, outcome, seconds = started.elapsed().as_secs_f64(), "credential provider ran");
        if let Some(m) = &self.metrics {
            m.plugin_runs
                .get_or_create(&crate::metrics::PluginLabels {
                    provider: provider.config.name.clone(),
                    outcome,
                })
                .inc();
        }
        response.map_err(|(_, e)| e)
    }
}

/// Reads a plugin's stdout; the text is never quoted back, as it may hold credentials.
fn parse_response(out: &[u8], api_version: &str) -> Result<Response, String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Header {
        #[serde(default)]
        kind: String,
        #[serde(default)]
        api_version: String,
    }
    let header: Header = serde_json::from_slice(out).map_err(|e| {
        format!(
            "its output is not a JSON object ({} bytes; line {}, column {})",
            out.len(),
            e.line(),
            e.column()
        )
    })?;
    if header.api_version != api_version {
        return Err(format!(
            "its response has apiVersion {:?}, expected {api_version:?}",
            crate::text::clip(&crate::text::escape(&header.api_version), 80)
        ));
    }
    if header.kind != "CredentialProviderResponse" {
        return Err(format!(
            "its response has kind {:?}, expected \"CredentialProviderResponse\"",
            crate::text::clip(&crate::text::escape(&header.kind), 80)
        ));
    }
    let raw: RawResponse = serde_json::from_slice(out).map_err(|e| {
        // serde's message names a field or type, never a value of the response.
        let what = e.to_string();
        let what = what.split(" at line ").next().unwrap_or_default();
        format!(
            "its response cannot be decoded: {}",
            crate::text::clip(what, 200)
        )
    })?;
    let cache_key_type = match raw.cache_key_type.as_str() {
        "Image" => CacheKeyType::Image,
        "Registry" => CacheKeyType::Registry,
        "Global" => CacheKeyType::Global,
        other => {
            return Err(format!(
                "its response has cacheKeyType {:?}; expected Image, Registry or Global",
                crate::text::clip(&crate::text::escape(other), 40)
            ));
        }
    };
    let cache_duration = match raw.cache_duration.as_deref() {
        None => None,
        Some(text) => Some(config::parse_go_duration(text).ok_or_else(|| {
            format!(
                "its response has cacheDuration {:?}, not a duration of at least 0",
                crate::text::clip(&crate::text::escape(text), 40)
            )
        })?),
    };
    let mut auth: Vec<AuthEntry> = raw
        .auth
        .into_iter()
        .map(|(k, v)| {
            let key = normalize_auth_key(&k);
            AuthEntry {
                pattern: ImagePattern::parse(&key).ok(),
                key,
                username: v.username,
                password: v.password,
            }
        })
        .collect();
    // The kubelet's keyring order: keys reverse-sorted, so longer paths come first.
    auth.sort_by(|a, b| b.key.cmp(&a.key));
    Ok(Response {
        cache_key_type,
        cache_duration,
        auth,
    })
}

/// The `auth` entries that apply to `image`, as the kubelet's keyring looks them up: every key
/// that matches, else a Docker Hub key for a Docker Hub image.
fn matching_credentials<'a>(auth: &'a [AuthEntry], image: &str) -> Vec<&'a AuthEntry> {
    let matched: Vec<&AuthEntry> = auth
        .iter()
        .filter(|a| a.pattern.as_ref().is_some_and(|p| p.matches(image)))
        .collect();
    if matched.is_empty() && is_docker_hub(image) {
        return auth.iter().filter(|a| a.key == "index.docker.io").collect();
    }
    matched
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(keys: &[&str]) -> Vec<AuthEntry> {
        let json = serde_json::json!({
            "kind": "CredentialProviderResponse",
            "apiVersion": "credentialprovider.kubelet.k8s.io/v1",
            "cacheKeyType": "Registry",
            "auth": keys.iter().map(|k| (k.to_string(), serde_json::json!({"username": k, "password": "p"}))).collect::<serde_json::Map<_, _>>(),
        });
        parse_response(
            json.to_string().as_bytes(),
            "credentialprovider.kubelet.k8s.io/v1",
        )
        .unwrap()
        .auth
    }

    fn users(auth: &[AuthEntry], image: &str) -> Vec<String> {
        matching_credentials(auth, image)
            .into_iter()
            .map(|a| a.username.clone())
            .collect()
    }

    #[test]
    fn auth_keys_match_like_the_kubelet_keyring() {
        let auth = entries(&[
            "https://registry.io/v2/",
            "registry.io/team",
            "*.registry.io",
            "other.io:5000",
            "https://index.docker.io/v1/",
        ]);
        assert_eq!(
            users(&auth, "registry.io/team/app"),
            ["registry.io/team", "https://registry.io/v2/"]
        );
        assert_eq!(
            users(&auth, "registry.io/other"),
            ["https://registry.io/v2/"]
        );
        assert_eq!(users(&auth, "eu.registry.io/app"), ["*.registry.io"]);
        assert_eq!(users(&auth, "other.io:5000/app"), ["other.io:5000"]);
        assert!(users(&auth, "other.io/app").is_empty());
        assert_eq!(
            users(&auth, "docker.io/library/nginx"),
            ["https://index.docker.io/v1/"]
        );
    }

    #[test]
    fn responses_are_checked_without_quoting_secrets() {
        let v1 = "credentialprovider.kubelet.k8s.io/v1";
        let err = |text: &str| parse_response(text.as_bytes(), v1).unwrap_err();
        assert_eq!(
            err("hunter2 is not json"),
            "its output is not a JSON object (19 bytes; line 1, column 1)"
        );
        assert_eq!(
            err(
                r#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1beta1","cacheKeyType":"Image"}"#
            ),
            "its response has apiVersion \"credentialprovider.kubelet.k8s.io/v1beta1\", expected \"credentialprovider.kubelet.k8s.io/v1\""
        );
        assert_eq!(
            err(
                r#"{"kind":"CredentialProviderRequest","apiVersion":"credentialprovider.kubelet.k8s.io/v1"}"#
            ),
            "its response has kind \"CredentialProviderRequest\", expected \"CredentialProviderResponse\""
        );
        assert_eq!(
            err(
                r#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"Pod"}"#
            ),
            "its response has cacheKeyType \"Pod\"; expected Image, Registry or Global"
        );
        let e = err(
            r#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"Image","auth":{"r.io":{"username":"u","password":"hunter2","extra":"hunter2"}}}"#,
        );
        assert!(
            e.starts_with("its response cannot be decoded: unknown field `extra`"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "{e}");
        let ok = parse_response(
            br#"{"kind":"CredentialProviderResponse","apiVersion":"credentialprovider.kubelet.k8s.io/v1","cacheKeyType":"Global","cacheDuration":"1m30s"}"#,
            v1,
        )
        .unwrap();
        assert_eq!(ok.cache_key_type, CacheKeyType::Global);
        assert_eq!(ok.cache_duration, Some(Duration::from_secs(90)));
    }

    /// A config for one provider `p` in a temporary directory, and its bin dir.
    fn setup(executable: Option<u32>) -> (tempfile::TempDir, PathBuf, PathBuf) {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.yaml");
        std::fs::write(
            &config,
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n  - name: p\n    matchImages: [r.io]\n    defaultCacheDuration: 1m\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n",
        )
        .unwrap();
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        if let Some(mode) = executable {
            std::fs::write(bin.join("p"), "#!/bin/sh\n").unwrap();
            std::fs::set_permissions(bin.join("p"), std::fs::Permissions::from_mode(mode)).unwrap();
        }
        (dir, config, bin)
    }

    #[test]
    fn load_checks_the_bin_dir_and_each_executable() {
        let (_dir, config, bin) = setup(Some(0o755));
        let p = CredentialProviders::load(&config, &bin, None, Duration::from_secs(3)).unwrap();
        assert_eq!(p.names(), ["p"]);
        assert!(!p.wants_tokens());
        assert!(p.matches(&ImageRef::parse("r.io/team/app:1.0").unwrap()));
        assert!(!p.matches(&ImageRef::parse("q.io/team/app:1.0").unwrap()));

        let (_dir, config, bin) = setup(Some(0o644));
        let err = CredentialProviders::load(&config, &bin, None, Duration::ZERO).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "credential provider \"p\": {}: not executable",
                bin.join("p").display()
            )
        );
        let (_dir, config, bin) = setup(None);
        let err =
            CredentialProviders::load(&config, &bin.join("p"), None, Duration::ZERO).unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "credential provider bin dir {}: ",
                bin.join("p").display()
            )),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_token_provider_without_a_kubernetes_api_says_so() {
        use std::os::unix::fs::PermissionsExt;
        let (dir, config, bin) = setup(Some(0o755));
        std::fs::write(
            &config,
            "apiVersion: kubelet.config.k8s.io/v1\nkind: CredentialProviderConfig\nproviders:\n  - name: p\n    matchImages: [r.io]\n    defaultCacheDuration: 1m\n    apiVersion: credentialprovider.kubelet.k8s.io/v1\n    tokenAttributes:\n      serviceAccountTokenAudience: a\n      requireServiceAccount: true\n      cacheType: Token\n",
        )
        .unwrap();
        let marker = dir.path().join("ran");
        std::fs::write(
            bin.join("p"),
            format!("#!/bin/sh\ntouch {}\n", marker.display()),
        )
        .unwrap();
        std::fs::set_permissions(bin.join("p"), std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = CredentialProviders::load(&config, &bin, None, Duration::ZERO).unwrap();
        assert!(p.wants_tokens());
        let image = ImageRef::parse("r.io/app:1").unwrap();
        let account = Account {
            namespace: "shop",
            name: "default",
        };
        let got = p
            .credentials(
                &image,
                Some(account),
                Instant::now() + Duration::from_secs(5),
            )
            .await;
        assert!(got.keyring.is_empty());
        assert_eq!(
            got.failures,
            [ProviderError {
                plugin: "p".into(),
                image: "r.io/app".into(),
                reason: "it needs the pod's service-account token (tokenAttributes), and pinhook has no Kubernetes API to request one".into(),
            }]
        );
        assert!(
            !marker.exists(),
            "the plugin must not run without its token"
        );
    }

    #[test]
    fn requests_are_the_kubelet_json() {
        let annotations = BTreeMap::from([("a.io/k".to_owned(), "v".to_owned())]);
        let plain = Request {
            kind: "CredentialProviderRequest",
            api_version: "credentialprovider.kubelet.k8s.io/v1",
            image: "r.io/app",
            service_account_token: None,
            service_account_annotations: None,
        };
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"kind":"CredentialProviderRequest","apiVersion":"credentialprovider.kubelet.k8s.io/v1","image":"r.io/app"}"#
        );
        let with_token = Request {
            service_account_token: Some("jwt"),
            service_account_annotations: Some(&annotations),
            ..plain
        };
        assert_eq!(
            serde_json::to_string(&with_token).unwrap(),
            r#"{"kind":"CredentialProviderRequest","apiVersion":"credentialprovider.kubelet.k8s.io/v1","image":"r.io/app","serviceAccountToken":"jwt","serviceAccountAnnotations":{"a.io/k":"v"}}"#
        );
    }
}
