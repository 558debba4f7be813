//! Command-line flags, each with a `PINHOOK_…` environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
pub enum Command {
    /// Serve the admission webhook over HTTPS.
    Serve(ServeArgs),
    /// Check Kubernetes manifests against the policy, offline.
    Check(CheckArgs),
    /// Generate a throw-away CA and serving certificate (for demos and tests).
    Cert(CertArgs),
}

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
    #[arg(long, env = "PINHOOK_TLS_CERT")]
    pub tls_cert: PathBuf,
    /// PEM private key of the certificate; reloaded when it changes.
    #[arg(long, env = "PINHOOK_TLS_KEY")]
    pub tls_key: PathBuf,
    /// Policy file (YAML); the built-in default applies when absent. Reloaded when it changes.
    #[arg(long, env = "PINHOOK_POLICY")]
    pub policy: Option<PathBuf>,
    /// Largest request body accepted; larger ones get 413.
    #[arg(long, env = "PINHOOK_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// How often the policy and certificate files are checked for changes.
    #[arg(long, env = "PINHOOK_RELOAD_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub reload_interval: Duration,
    /// Time allowed for a request to arrive when the API server gives no `?timeout=`.
    #[arg(long, env = "PINHOOK_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// On SIGTERM, how long in-flight requests may take to finish.
    #[arg(long, env = "PINHOOK_SHUTDOWN_GRACE", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
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

/// Parses a Go-style duration as the API server writes it: `10s`, `500ms`, `1m30s`, `2h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {text:?}: expected e.g. 10s, 500ms, 1m30s, 2h");
    if text.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = text;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        if num_len == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        total += value * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn rejects_bad_durations() {
        for t in ["", "10", "s", "10x", "-1s", "1.2.3s"] {
            assert!(parse_duration(t).is_err(), "{t}");
        }
    }

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
}
