//! Command-line flags, each with a `PINHOOK_…` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::duration::parse_duration;

/// pinhook: reject mutable image tags and pin images to digests at admission.
#[derive(Debug, Parser)]
#[command(name = "pinhook", version, about)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
    /// Log format.
    #[arg(long, env = "PINHOOK_LOG_FORMAT", value_enum, default_value_t = LogFormat::Json, global = true)]
    pub log_format: LogFormat,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `pinhook=debug`.
    #[arg(long, env = "PINHOOK_LOG_LEVEL", default_value = "info", global = true)]
    pub log_level: String,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Human-readable text.
    Text,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once at start-up; boxing would only add noise"
)]
pub enum Command {
    /// Serve the admission webhook over HTTPS.
    Serve(ServeArgs),
    /// Check Kubernetes manifests against the policy, offline.
    Check(CheckArgs),
    /// Resolve images to pinned references, as /mutate would.
    Resolve(ResolveCmdArgs),
    /// Generate a throw-away CA and serving certificate (for demos and tests).
    Cert(CertArgs),
    /// Report pinned `name:tag@digest` references whose tag now points elsewhere.
    Drift(DriftArgs),
    /// Pin the images of manifest files in place, as /mutate would.
    Pin(PinArgs),
    /// A KRM function: pin the images of a ResourceList (stdin to stdout).
    Krm(KrmArgs),
}

/// Registry resolution flags, shared by `serve` and `resolve`.
#[derive(Debug, Clone, Args)]
pub struct RegistryArgs {
    /// A docker `config.json` with registry credentials, used after the pod's pull secrets.
    #[arg(long, env = "PINHOOK_REGISTRY_CONFIG")]
    pub registry_config: Option<PathBuf>,
    /// The kubelet's `CredentialProviderConfig` file: its plugins are asked for credentials
    /// after the pod's pull secrets and before --registry-config.
    #[arg(
        long,
        env = "PINHOOK_IMAGE_CREDENTIAL_PROVIDER_CONFIG",
        requires = "image_credential_provider_bin_dir"
    )]
    pub image_credential_provider_config: Option<PathBuf>,
    /// The directory holding the credential-provider plugins' executables.
    #[arg(
        long,
        env = "PINHOOK_IMAGE_CREDENTIAL_PROVIDER_BIN_DIR",
        requires = "image_credential_provider_config"
    )]
    pub image_credential_provider_bin_dir: Option<PathBuf>,
    /// Timeout of each registry HTTP call.
    #[arg(long, env = "PINHOOK_REGISTRY_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub registry_timeout: Duration,
    /// How long a resolved digest is reused before asking the registry again.
    #[arg(long, env = "PINHOOK_CACHE_TTL", default_value = "5m", value_parser = parse_duration)]
    pub cache_ttl: Duration,
    /// How long a failed resolution is remembered.
    #[arg(long, env = "PINHOOK_CACHE_NEGATIVE_TTL", default_value = "15s", value_parser = parse_duration)]
    pub cache_negative_ttl: Duration,
    /// Most digests kept in the cache.
    #[arg(long, env = "PINHOOK_CACHE_MAX_ENTRIES", default_value_t = 100_000)]
    pub cache_max_entries: u64,
    /// Most bytes the digest cache may hold (keys, digests and remembered errors, estimated);
    /// least-used entries leave first.
    #[arg(long, env = "PINHOOK_CACHE_MAX_BYTES", default_value_t = crate::resolve::DEFAULT_CACHE_MAX_BYTES)]
    pub cache_max_bytes: u64,
    /// Most registry lookups in flight at once, across the process.
    #[arg(long, env = "PINHOOK_MAX_CONCURRENT_RESOLUTIONS", default_value_t = 16)]
    pub max_concurrent_resolutions: usize,
    /// Most registry lookups in flight at once to one registry host (its fair share of the above).
    #[arg(
        long,
        env = "PINHOOK_MAX_CONCURRENT_RESOLUTIONS_PER_REGISTRY",
        default_value_t = 4
    )]
    pub max_concurrent_resolutions_per_registry: usize,
    /// Connect to a registry host at a fixed address instead of its DNS answer, as
    /// `NAME=IP:PORT` (repeatable, or comma-separated): split-horizon DNS, a TLS-inspecting proxy
    /// reached by address. TLS still verifies NAME's certificate, the port is used when the URL
    /// names none, and the SSRF guard judges the address like a DNS answer.
    #[arg(long = "registry-address", env = "PINHOOK_REGISTRY_ADDRESSES", value_delimiter = ',', value_parser = parse_registry_address)]
    pub registry_addresses: Vec<(String, SocketAddr)>,
}

/// Parses `NAME=IP:PORT` of `--registry-address`.
fn parse_registry_address(s: &str) -> Result<(String, SocketAddr), String> {
    let (name, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NAME=IP:PORT"))?;
    let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
    if name.is_empty() || name.contains([':', '/', '[']) {
        return Err(format!(
            "{s:?}: NAME must be a host name without port, e.g. registry-1.docker.io"
        ));
    }
    let addr: SocketAddr = addr
        .trim()
        .parse()
        .map_err(|e| format!("{s:?}: {addr:?} is not IP:PORT ({e})"))?;
    Ok((name, addr))
}

impl RegistryArgs {
    /// The resolver settings these flags describe.
    pub fn resolver_settings(&self) -> crate::resolve::ResolverSettings {
        crate::resolve::ResolverSettings {
            call_timeout: self.registry_timeout,
            ttl: self.cache_ttl,
            negative_ttl: self.cache_negative_ttl,
            max_entries: self.cache_max_entries,
            max_bytes: self.cache_max_bytes,
            max_concurrent: self.max_concurrent_resolutions,
            max_concurrent_per_registry: self.max_concurrent_resolutions_per_registry,
            addresses: self.registry_addresses.iter().cloned().collect(),
        }
    }

    /// The plugins of `--image-credential-provider-config`, if given; `accounts` serves those
    /// that want the pod's service-account token.
    pub fn credential_providers(
        &self,
        accounts: Option<crate::resolve::credential_provider::ServiceAccounts>,
    ) -> Result<
        Option<crate::resolve::credential_provider::CredentialProviders>,
        crate::resolve::credential_provider::SetupError,
    > {
        let (Some(config), Some(bin_dir)) = (
            &self.image_credential_provider_config,
            &self.image_credential_provider_bin_dir,
        ) else {
            return Ok(None);
        };
        crate::resolve::credential_provider::CredentialProviders::load(
            config,
            bin_dir,
            accounts,
            self.registry_timeout,
        )
        .map(Some)
    }

    /// The credentials of `--registry-config`, if given.
    pub fn keyring(&self) -> Result<crate::resolve::auth::Keyring, RegistryConfigFileError> {
        let Some(path) = &self.registry_config else {
            return Ok(crate::resolve::auth::Keyring::default());
        };
        let bytes = std::fs::read(path).map_err(|source| RegistryConfigFileError::Read {
            path: path.clone(),
            source,
        })?;
        Ok(crate::resolve::auth::Keyring::from_docker_config_json(
            &bytes,
            &format!("registry config {}", path.display()),
        )?)
    }
}

/// `--registry-config` cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum RegistryConfigFileError {
    /// The file cannot be read.
    #[error("cannot read --registry-config {}: {source}", path.display())]
    Read {
        /// The file named.
        path: PathBuf,
        /// Why it cannot be read.
        source: std::io::Error,
    },
    /// It is not a usable docker `config.json` (the message names the file).
    #[error(transparent)]
    Parse(#[from] crate::resolve::auth::ConfigError),
}

/// Flags of `pinhook resolve`.
#[derive(Debug, Clone, Args)]
pub struct ResolveCmdArgs {
    /// Policy file (YAML): its `registries`, `allowedRegistries` and tag rules apply.
    #[arg(long, env = "PINHOOK_POLICY")]
    pub policy: Option<PathBuf>,
    /// Namespace whose policy rules apply.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Registry settings.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Image references to resolve.
    #[arg(required = true)]
    pub images: Vec<String>,
}

/// Default `--max-body-bytes`: the API server's own request limit (3 MiB) plus 512 KiB for the
/// AdmissionReview around the object; an UPDATE's `object` and `oldObject` fit too, as etcd's
/// default 1.5 MiB value limit keeps each storable object under 1.5 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 3 * 1024 * 1024 + 512 * 1024;

/// Default `--max-inflight-body-bytes` (5 MiB): one maximum-size body and 1.5 MiB of ordinary
/// reviews at once. Parsing costs up to ~60 times the body (the densest JSON), so
/// this keeps the worst case measured by tests/resource_bounds.rs under the chart's limit.
pub const DEFAULT_MAX_INFLIGHT_BODY_BYTES: usize = 5 * 1024 * 1024;

/// Flags of `pinhook serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address of the HTTPS webhook listener.
    #[arg(long, env = "PINHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Address of the plain-HTTP listener for /healthz, /readyz and /metrics.
    #[arg(long, env = "PINHOOK_METRICS_LISTEN", default_value = "0.0.0.0:8080")]
    pub metrics_listen: SocketAddr,
    /// PEM certificate chain served to the API server; reloaded when it changes.
    #[arg(
        long,
        env = "PINHOOK_TLS_CERT",
        required_unless_present = "bootstrap_secret",
        conflicts_with = "bootstrap_secret",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the certificate; reloaded when it changes.
    #[arg(
        long,
        env = "PINHOOK_TLS_KEY",
        required_unless_present = "bootstrap_secret",
        conflicts_with = "bootstrap_secret",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
    /// Certificate bootstrap: pinhook makes and rotates its own certificate (instead of files).
    #[command(flatten)]
    pub bootstrap: BootstrapArgs,
    /// Policy file (YAML); the built-in default applies when absent. Reloaded when it changes.
    #[arg(long, env = "PINHOOK_POLICY")]
    pub policy: Option<PathBuf>,
    /// Most webhook connections open at once; a further one waits (before its TLS handshake)
    /// up to --request-timeout for one to close, then is closed. The API server multiplexes
    /// its calls over a few HTTP/2 connections.
    #[arg(long, env = "PINHOOK_MAX_CONNECTIONS", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub max_connections: u64,
    /// Bytes of log lines queued ahead of a slow stdout reader. Beyond half of it, ordinary log
    /// lines are dropped (and counted); audit lines may use all of it, and a review waits,
    /// within its deadline, for room for its audit lines.
    #[arg(long, env = "PINHOOK_LOG_QUEUE_BYTES", default_value_t = crate::logs::DEFAULT_QUEUE_BYTES)]
    pub log_queue_bytes: usize,
    /// Largest request body accepted; larger ones get 413.
    #[arg(long, env = "PINHOOK_MAX_BODY_BYTES", default_value_t = DEFAULT_MAX_BODY_BYTES)]
    pub max_body_bytes: usize,
    /// Request-body bytes read and parsed at once across the process; a request waits (within
    /// its deadline) for its Content-Length (or --max-body-bytes when unknown), else gets 503.
    #[arg(long, env = "PINHOOK_MAX_INFLIGHT_BODY_BYTES", default_value_t = DEFAULT_MAX_INFLIGHT_BODY_BYTES)]
    pub max_inflight_body_bytes: usize,
    /// A webhook connection with no request in flight for this long is closed (HTTP/1.1 and
    /// HTTP/2); longer than the API server's own 90 s, so it normally closes first.
    #[arg(long, env = "PINHOOK_IDLE_TIMEOUT", default_value = "120s", value_parser = parse_duration)]
    pub idle_timeout: Duration,
    /// How often the policy and certificate files are checked for changes.
    #[arg(long, env = "PINHOOK_RELOAD_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub reload_interval: Duration,
    /// Time allowed for a request to arrive when the API server gives no `?timeout=`.
    #[arg(long, env = "PINHOOK_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[arg(long, env = "PINHOOK_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// Time kept in reserve before the API server's `?timeout=`, so pinhook always answers first.
    #[arg(long, env = "PINHOOK_DEADLINE_MARGIN", default_value = "1s", value_parser = parse_duration)]
    pub deadline_margin: Duration,
    /// How long pull secrets and service accounts read from the Kubernetes API are reused.
    #[arg(long, env = "PINHOOK_SECRET_CACHE_TTL", default_value = "30s", value_parser = parse_duration)]
    pub secret_cache_ttl: Duration,
    /// Registry settings.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Flags of the certificate bootstrap, which `--bootstrap-secret` turns on.
#[derive(Debug, Clone, Args)]
pub struct BootstrapArgs {
    /// Secret (in --service-namespace) holding pinhook's own CA and serving certificate; created
    /// or reused at start-up and rotated before expiry. Replaces --tls-cert and --tls-key.
    #[arg(long, env = "PINHOOK_BOOTSTRAP_SECRET", requires_all = ["service_name", "service_namespace"])]
    pub bootstrap_secret: Option<String>,
    /// MutatingWebhookConfiguration whose webhooks get the CA in `caBundle`.
    #[arg(
        long,
        env = "PINHOOK_BOOTSTRAP_MUTATING_WEBHOOK",
        requires = "bootstrap_secret"
    )]
    pub bootstrap_mutating_webhook: Option<String>,
    /// ValidatingWebhookConfiguration whose webhooks get the CA in `caBundle`.
    #[arg(
        long,
        env = "PINHOOK_BOOTSTRAP_VALIDATING_WEBHOOK",
        requires = "bootstrap_secret"
    )]
    pub bootstrap_validating_webhook: Option<String>,
    /// Name of the Service the API server calls; the certificate is for SERVICE.NAMESPACE.svc.
    #[arg(long, env = "PINHOOK_SERVICE_NAME", requires = "bootstrap_secret")]
    pub service_name: Option<String>,
    /// Namespace of that Service and of the Secret: pinhook's own.
    #[arg(long, env = "PINHOOK_SERVICE_NAMESPACE", requires = "bootstrap_secret")]
    pub service_namespace: Option<String>,
    /// More names for the serving certificate besides SERVICE.NAMESPACE.svc (DNS names or IP
    /// addresses, comma-separated): the host of an out-of-cluster webhook URL.
    #[arg(
        long,
        env = "PINHOOK_BOOTSTRAP_EXTRA_NAMES",
        value_delimiter = ',',
        requires = "bootstrap_secret"
    )]
    pub bootstrap_extra_names: Vec<String>,
    /// Validity of each serving certificate.
    #[arg(long, env = "PINHOOK_BOOTSTRAP_CERT_VALIDITY", default_value = "2160h", value_parser = parse_duration)]
    pub bootstrap_cert_validity: Duration,
    /// Validity of the CA; it is replaced once it cannot cover a whole serving certificate.
    #[arg(long, env = "PINHOOK_BOOTSTRAP_CA_VALIDITY", default_value = "87600h", value_parser = parse_duration)]
    pub bootstrap_ca_validity: Duration,
    /// A serving certificate is replaced when less than this is left of it.
    #[arg(long, env = "PINHOOK_BOOTSTRAP_RENEW_BEFORE", default_value = "720h", value_parser = parse_duration)]
    pub bootstrap_renew_before: Duration,
    /// How often the Secret and the caBundle are checked, renewed and repaired.
    #[arg(long, env = "PINHOOK_BOOTSTRAP_CHECK_INTERVAL", default_value = "1m", value_parser = parse_duration)]
    pub bootstrap_check_interval: Duration,
}

/// Flags of `pinhook check`.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// Policy file (YAML); the built-in default applies when absent.
    #[arg(long, env = "PINHOOK_POLICY")]
    pub policy: Option<PathBuf>,
    /// Namespace assumed for objects that name none.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Manifest files (YAML or JSON, multi-document); `-` reads standard input.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Flags of `pinhook pin`.
#[derive(Debug, Clone, Args)]
pub struct PinArgs {
    /// Policy file (YAML); the built-in default applies when absent.
    #[arg(long, env = "PINHOOK_POLICY")]
    pub policy: Option<PathBuf>,
    /// Namespace assumed for objects that name none.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Change nothing: exit 1 when an image would be pinned or is denied.
    #[arg(long)]
    pub check: bool,
    /// Resolve `name:tag@digest` again and update the digest where the tag moved.
    #[arg(long)]
    pub refresh: bool,
    /// Registry settings.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Manifest files and directories (walked for *.yaml, *.yml, *.json); `-` reads stdin
    /// and writes the pinned text to stdout.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
}

/// Flags of `pinhook krm` (the policy comes from the ResourceList's `functionConfig`).
#[derive(Debug, Clone, Args)]
pub struct KrmArgs {
    /// Namespace assumed for objects that name none.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Registry settings.
    #[command(flatten)]
    pub registry: RegistryArgs,
}

/// Flags of `pinhook drift`.
#[derive(Debug, Clone, Args)]
pub struct DriftArgs {
    /// Read the live Deployments, StatefulSets, DaemonSets, CronJobs, Jobs and Pods through
    /// the Kubernetes API (KUBECONFIG, else in-cluster) instead of files.
    #[arg(long)]
    pub cluster: bool,
    /// Policy file (YAML): its `registries`, exemptions and tag rules apply.
    #[arg(long, env = "PINHOOK_POLICY")]
    pub policy: Option<PathBuf>,
    /// Files: the namespace of objects that name none (default `default`). `--cluster`: read
    /// only this namespace (default: all).
    #[arg(long)]
    pub namespace: Option<String>,
    /// Report format on standard output.
    #[arg(long, value_enum, default_value_t = DriftOutput::Text)]
    pub output: DriftOutput,
    /// Registry settings.
    #[command(flatten)]
    pub registry: RegistryArgs,
    /// Manifest files and directories (walked for *.yaml, *.yml, *.json); `-` reads stdin.
    #[arg(required_unless_present = "cluster", conflicts_with = "cluster")]
    pub paths: Vec<PathBuf>,
}

/// How `pinhook drift` writes its report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DriftOutput {
    /// One line per moved or unchecked reference.
    Text,
    /// One JSON document: `checked`, `current`, `moved`, `unchecked`, `errors`.
    Json,
}

/// Flags of `pinhook cert`.
#[derive(Debug, Clone, Args)]
pub struct CertArgs {
    /// Directory to write `ca.crt`, `tls.crt` and `tls.key` into.
    #[arg(long)]
    pub out_dir: PathBuf,
    /// DNS names and IP addresses the certificate is for.
    #[arg(long = "name", default_values = ["localhost", "127.0.0.1"])]
    pub names: Vec<String>,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    pub days: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_serve_flag_has_an_env_var() {
        use clap::CommandFactory;
        let cmd = Cli::command();
        let serve = cmd.find_subcommand("serve").unwrap();
        for arg in serve
            .get_arguments()
            .filter(|a| !a.is_global_set() && a.get_id() != "help")
        {
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            assert!(
                env.is_some_and(|e| e.starts_with("PINHOOK_")),
                "--{} has no PINHOOK_ variable",
                arg.get_id()
            );
        }
    }

    #[test]
    fn registry_addresses_are_name_equals_ip_and_port() {
        let cli = Cli::try_parse_from([
            "pinhook",
            "resolve",
            "--registry-address",
            "Registry-1.Docker.IO=127.0.0.1:5443,auth.docker.io=[::1]:8443",
            "--registry-address=quay.io.=10.0.0.7:443",
            "quay.io/a/b:1",
        ])
        .unwrap();
        let Command::Resolve(args) = cli.command else {
            panic!("not resolve");
        };
        let addresses = args.registry.resolver_settings().addresses;
        assert_eq!(addresses.len(), 3);
        assert_eq!(
            addresses["registry-1.docker.io"],
            "127.0.0.1:5443".parse().unwrap()
        );
        assert_eq!(addresses["auth.docker.io"], "[::1]:8443".parse().unwrap());
        assert_eq!(addresses["quay.io"], "10.0.0.7:443".parse().unwrap());
        for bad in [
            "quay.io",
            "quay.io=10.0.0.7",
            "quay.io:443=10.0.0.7:443",
            "=1.2.3.4:5",
        ] {
            assert!(parse_registry_address(bad).is_err(), "{bad}");
        }
    }
}
