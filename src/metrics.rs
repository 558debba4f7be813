//! Prometheus metrics, every name prefixed `pinhook_`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of an admission request.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `validate` or `mutate`.
    pub endpoint: &'static str,
    /// `allowed`, `denied`, `warned`, `audited`, or `error` for a request that was not an AdmissionReview.
    pub decision: &'static str,
}

/// Labels of an admission latency observation.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    /// `validate` or `mutate`.
    pub endpoint: &'static str,
}

/// Labels of a reload attempt.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `success` or `failure`.
    pub result: &'static str,
}

/// Labels of a finding.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ViolationLabels {
    /// The rule, e.g. `mutable-tag`.
    pub rule: &'static str,
    /// `enforce`, `warn` or `audit`.
    pub mode: &'static str,
}

/// Labels of a cache lookup.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CacheLabels {
    /// `hit`, `miss`, or `stale` (served from the staleIfError window).
    pub result: &'static str,
}

/// Labels of registry HTTP requests.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RegistryLabels {
    /// The registry (or mirror) host when the policy's `registries` list names it, a
    /// well-known registry, or `other` (see `resolve::labels`): never copied from an image as is.
    pub registry: String,
    /// `ok` or the error label, e.g. `timeout`.
    pub outcome: &'static str,
}

/// Labels of dropped log lines.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    /// `audit` or `log`.
    pub stream: &'static str,
}

/// Labels of a pinning result.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PinLabels {
    /// `pinned`, `reused` (old digest kept), `stale`, `unpinned` or `failed`.
    pub result: &'static str,
}

/// Labels of a credential-provider plugin run.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PluginLabels {
    /// The provider's name, from the config file (so the set of values is bounded).
    pub provider: String,
    /// `ok`, `timeout`, `exit` (non-zero status), `invalid` (unusable response) or `error`.
    pub outcome: &'static str,
}

/// What one admission answer is counted under.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnswerLabels {
    /// `allowed`, `denied`, `warned` or `audited` (`denied` too when a tag cannot be pinned).
    pub decision: &'static str,
    /// One per offending container, when the request was not simply allowed.
    pub violations: Vec<ViolationLabels>,
    /// One `pinned_images` result per image `/mutate` handled.
    pub pins: Vec<&'static str>,
}

/// Every metric pinhook exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// Admission requests by endpoint and decision.
    pub requests: Family<RequestLabels, Counter>,
    /// Admission handling latency in seconds.
    pub duration: Family<EndpointLabels, Histogram>,
    /// Offending containers found, by rule and mode.
    pub violations: Family<ViolationLabels, Counter>,
    /// Policy file reloads by result.
    pub policy_reloads: Family<ReloadLabels, Counter>,
    /// 1 when the last policy load succeeded, 0 when the file on disk is invalid.
    pub policy_valid: Gauge,
    /// TLS certificate reloads by result.
    pub tls_reloads: Family<ReloadLabels, Counter>,
    /// Digest cache lookups by result.
    pub cache: Family<CacheLabels, Counter>,
    /// Entries in the digest cache (digests and remembered failures), set when scraped.
    pub cache_entries: Gauge,
    /// Registry HTTP requests by registry and outcome.
    pub registry_requests: Family<RegistryLabels, Counter>,
    /// Time to resolve an uncached tag, in seconds.
    pub resolution_duration: Histogram,
    /// Images handled by /mutate, by result.
    pub pins: Family<PinLabels, Counter>,
    /// Bytes of log lines waiting for the log reader, set when scraped.
    pub log_queue_bytes: Gauge,
    /// Log lines dropped because the log queue was full, by stream, set when scraped.
    pub log_lines_dropped: Family<StreamLabels, Counter>,
    /// Credential-provider plugin processes run, by provider and outcome.
    pub plugin_runs: Family<PluginLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("pinhook");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "admission_requests",
            "Admission requests by endpoint and decision",
            requests.clone(),
        );
        let duration = Family::<EndpointLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                1.0, 2.5, 5.0, 10.0,
            ])
        });
        registry.register(
            "admission_duration_seconds",
            "Time to answer an admission request",
            duration.clone(),
        );
        let violations = Family::<ViolationLabels, Counter>::default();
        registry.register(
            "violations",
            "Offending containers found, by rule and mode",
            violations.clone(),
        );
        let policy_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "policy_reloads",
            "Policy file reloads by result",
            policy_reloads.clone(),
        );
        let policy_valid = Gauge::default();
        registry.register(
            "policy_valid",
            "1 when the policy file on disk is the one in force, 0 when it is invalid",
            policy_valid.clone(),
        );
        let tls_reloads = Family::<ReloadLabels, Counter>::default();
        registry.register(
            "tls_reloads",
            "TLS certificate reloads by result",
            tls_reloads.clone(),
        );
        let cache = Family::<CacheLabels, Counter>::default();
        registry.register(
            "cache_lookups",
            "Digest cache lookups by result",
            cache.clone(),
        );
        let cache_entries = Gauge::default();
        registry.register(
            "cache_entries",
            "Entries in the digest cache (digests and remembered failures)",
            cache_entries.clone(),
        );
        let registry_requests = Family::<RegistryLabels, Counter>::default();
        registry.register(
            "registry_requests",
            "Registry HTTP requests by registry and outcome",
            registry_requests.clone(),
        );
        let resolution_duration = Histogram::new([
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]);
        registry.register(
            "resolution_duration_seconds",
            "Time to resolve an uncached tag",
            resolution_duration.clone(),
        );
        let pins = Family::<PinLabels, Counter>::default();
        registry.register(
            "pinned_images",
            "Images handled by /mutate, by result",
            pins.clone(),
        );
        let log_queue_bytes = Gauge::default();
        registry.register(
            "log_queue_bytes",
            "Bytes of log lines waiting for the log reader",
            log_queue_bytes.clone(),
        );
        let log_lines_dropped = Family::<StreamLabels, Counter>::default();
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because the log queue was full, by stream (audit or log)",
            log_lines_dropped.clone(),
        );
        let plugin_runs = Family::<PluginLabels, Counter>::default();
        registry.register(
            "credential_provider_runs",
            "Credential-provider plugin processes run, by provider and outcome",
            plugin_runs.clone(),
        );
        policy_valid.set(1);
        Self {
            log_queue_bytes,
            log_lines_dropped,
            plugin_runs,
            cache,
            cache_entries,
            registry_requests,
            resolution_duration,
            pins,
            registry,
            requests,
            duration,
            violations,
            policy_reloads,
            policy_valid,
            tls_reloads,
        }
    }

    /// Counts one admission request.
    pub fn request(&self, endpoint: &'static str, decision: &'static str) {
        self.requests
            .get_or_create(&RequestLabels { endpoint, decision })
            .inc();
    }

    /// Counts one answered admission request on `endpoint` and its latency.
    pub fn answered(&self, endpoint: &'static str, labels: &AnswerLabels, seconds: f64) {
        self.request(endpoint, labels.decision);
        for v in &labels.violations {
            self.violations.get_or_create(v).inc();
        }
        for &result in &labels.pins {
            self.pins.get_or_create(&PinLabels { result }).inc();
        }
        self.duration
            .get_or_create(&EndpointLabels { endpoint })
            .observe(seconds);
    }

    /// Counts one digest cache lookup.
    pub fn cache_lookup(&self, result: &'static str) {
        self.cache.get_or_create(&CacheLabels { result }).inc();
    }

    /// Copies the log queue's figures into the metrics (when scraped).
    pub fn set_log_stats(&self, stats: crate::logs::Stats) {
        self.log_queue_bytes
            .set(i64::try_from(stats.queued_bytes).unwrap_or(i64::MAX));
        for (stream, total) in [("audit", stats.dropped_audit), ("log", stats.dropped_log)] {
            let counter = self
                .log_lines_dropped
                .get_or_create(&StreamLabels { stream });
            counter.inc_by(total.saturating_sub(counter.get()));
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "cannot encode metrics");
        }
        out
    }
}
