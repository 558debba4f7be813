//! Resolving a tag to its digest: credentials in kubelet order, a single-flight cache keyed by
//! credential scope, a bounded stale window for registry outages, and errors in plain words.

pub mod auth;
pub mod credential_provider;
pub mod digest;
mod guard;
pub mod host;
pub mod labels;
pub mod permits;
pub mod registry;
pub mod secrets;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use futures_util::future::BoxFuture;
use moka::ops::compute::{CompResult, Op};

use crate::metrics::{Metrics, RegistryLabels};
use crate::patterns::Patterns;
use crate::policy::RegistrySettings;
use crate::reference::ImageRef;
use auth::{Credential, Keyring};
use digest::Digest;
pub use guard::AddressOverrides;
pub use permits::Pool;
use permits::{Permits, Slot};
pub use registry::RegistryConfigError;
use registry::{Exchange, Transport};

/// Why a tag could not be resolved.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ResolveError {
    /// The registry has no such tag (or repository).
    #[error("tag {tag:?} not found in {registry}/{repository}")]
    NotFound {
        /// Registry host.
        registry: String,
        /// Repository.
        repository: String,
        /// Tag.
        tag: String,
    },
    /// Every credential (and anonymous access) was refused.
    #[error("registry {registry} {} access to {repository}{} ({}{}; tried {tried})", refusal.verb(), if *maybe_missing { ", which does not exist or you have no access" } else { "" }, refusal.word(), said(reason))]
    Unauthorized {
        /// Registry host.
        registry: String,
        /// Repository.
        repository: String,
        /// The credential sources tried, in order.
        tried: String,
        /// 401 (who asked) or 403 (what was asked).
        refusal: Refusal,
        /// Why: the registry's own words (quoted, escaped, at most 200 characters) or pinhook's;
        /// empty when neither has any.
        reason: String,
        /// The registry refused a token its token service had issued: it does not tell a
        /// repository that does not exist from one the credential may not pull.
        maybe_missing: bool,
    },
    /// The registry answered 429 and asked to wait longer than the deadline allows.
    #[error("registry {registry} is rate-limiting requests (HTTP 429{}){}", retry_after.map(|s| format!(", retry after {s:.0}s")).unwrap_or_default(), said(reason))]
    RateLimited {
        /// Registry host.
        registry: String,
        /// Seconds the registry asked to wait.
        retry_after: Option<f64>,
        /// The registry's words (quoted, escaped, bounded), or empty.
        reason: String,
    },
    /// No answer within the per-call timeout or the admission deadline.
    #[error("registry {registry} did not answer within {seconds:.1}s")]
    Timeout {
        /// Registry host.
        registry: String,
        /// The limit that expired.
        seconds: f64,
    },
    /// The lookup queued for a permit behind other lookups until its deadline; the registry was not asked.
    #[error("pinhook's lookups {} were all busy for {seconds:.1}s ({in_flight} in flight, {}); the registry was not asked", match pool { Pool::Registry => format!("to registry {registry}"), Pool::All => "to all registries".to_owned() }, match pool { Pool::Registry => "the most per registry", Pool::All => "the most across all registries" })]
    Busy {
        /// Registry host.
        registry: String,
        /// How long the lookup queued.
        seconds: f64,
        /// Lookups holding the permits of the pool it waited for.
        in_flight: usize,
        /// Which pool was full.
        pool: Pool,
    },
    /// The TLS handshake failed (unknown CA, wrong name, expired certificate…).
    #[error("TLS failure with registry {registry}: {detail}")]
    Tls {
        /// Registry host.
        registry: String,
        /// rustls' explanation.
        detail: String,
    },
    /// The connection failed (refused, reset, DNS).
    #[error("cannot connect to registry {registry}: {detail}")]
    Connect {
        /// Registry host.
        registry: String,
        /// The cause.
        detail: String,
    },
    /// pinhook refuses to contact this host (metadata address, or outside `allowedRegistries`).
    #[error("refusing to contact {host}: {reason}")]
    Forbidden {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
    /// An unexpected HTTP status.
    #[error("registry {registry} answered HTTP {status}{}", said(reason))]
    Status {
        /// Registry host.
        registry: String,
        /// The status code.
        status: u16,
        /// The registry's words (quoted, escaped, bounded), or empty.
        reason: String,
    },
    /// An answer that cannot be used.
    #[error("registry {registry} sent an unusable answer: {detail}")]
    Invalid {
        /// Registry host.
        registry: String,
        /// What was wrong.
        detail: String,
    },
    /// pinhook is shutting down and starts no new lookup (the resolution slots are closed).
    #[error("cannot resolve an image of registry {registry}: pinhook is shutting down")]
    ShuttingDown {
        /// Registry host.
        registry: String,
    },
    /// The digest cache gave neither a digest nor an error (a bug in pinhook, not the registry).
    #[error("the digest cache returned no answer for an image of registry {registry}")]
    NoCachedAnswer {
        /// Registry host.
        registry: String,
    },
    /// The transport had no endpoint to ask for the registry (a bug in pinhook, not the registry).
    #[error("no endpoint to ask for registry {registry}")]
    NoEndpoint {
        /// Registry host.
        registry: String,
    },
}

/// How a registry (or its token service) refused a credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// HTTP 401: the credential (or its absence) was not accepted.
    Unauthorized,
    /// HTTP 403: the credential was accepted and may not pull this repository.
    Forbidden,
}

impl Refusal {
    /// The refusal for an HTTP status (403 is forbidden, anything else unauthorized).
    pub fn of_status(status: u16) -> Self {
        if status == 403 {
            Self::Forbidden
        } else {
            Self::Unauthorized
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Self::Unauthorized => "refused",
            Self::Forbidden => "denied",
        }
    }

    fn word(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
        }
    }
}

/// `: reason`, or nothing for an empty reason.
fn said(reason: &str) -> String {
    if reason.is_empty() {
        String::new()
    } else {
        format!(": {reason}")
    }
}

impl ResolveError {
    /// A short label for metrics and audit records.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not-found",
            Self::Unauthorized {
                refusal: Refusal::Forbidden,
                ..
            } => "denied",
            Self::Unauthorized { .. } => "unauthorized",
            Self::RateLimited { .. } => "rate-limited",
            Self::Timeout { .. } => "timeout",
            Self::Busy { .. } => "busy",
            Self::Tls { .. } => "tls",
            Self::Connect { .. } => "connect",
            Self::Forbidden { .. } => "forbidden",
            Self::Status { .. } => "status",
            Self::Invalid { .. } => "invalid",
            Self::ShuttingDown { .. } => "shutting-down",
            Self::NoCachedAnswer { .. } => "no-cached-answer",
            Self::NoEndpoint { .. } => "no-endpoint",
        }
    }

    /// Whether an `Unauthorized` error carries a reason.
    fn has_reason(&self) -> bool {
        matches!(self, Self::Unauthorized { reason, .. } if !reason.is_empty())
    }

    /// An `Unauthorized` error listing `tried` as the credentials tried; others unchanged.
    fn with_tried(self, tried: String) -> Self {
        match self {
            Self::Unauthorized {
                registry,
                repository,
                refusal,
                reason,
                maybe_missing,
                ..
            } => Self::Unauthorized {
                registry,
                repository,
                tried,
                refusal,
                reason,
                maybe_missing,
            },
            other => other,
        }
    }

    /// True when the registry is unreachable or failing (or pinhook's lookups all busy), so a recent digest may be served.
    pub fn is_outage(&self) -> bool {
        match self {
            Self::RateLimited { .. }
            | Self::Timeout { .. }
            | Self::Busy { .. }
            | Self::Connect { .. } => true,
            Self::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// A resolved digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// `sha256:…`.
    pub digest: String,
    /// When the registry was down and a recent answer was served instead: how old it is.
    pub stale_for: Option<Duration>,
}

/// Resolver settings that come from flags.
#[derive(Debug, Clone)]
pub struct ResolverSettings {
    /// Timeout of one registry HTTP call.
    pub call_timeout: Duration,
    /// How long a resolved digest is reused.
    pub ttl: Duration,
    /// How long a failure is remembered.
    pub negative_ttl: Duration,
    /// Most entries kept.
    pub max_entries: u64,
    /// Most bytes the entries may take, as [`entry_weight`] estimates them.
    pub max_bytes: u64,
    /// Most registry lookups in flight at once, across the process.
    pub max_concurrent: usize,
    /// Most registry lookups in flight at once to one registry host.
    pub max_concurrent_per_registry: usize,
    /// `--registry-address`: registry host names connected to at a fixed address.
    pub addresses: guard::AddressOverrides,
}

impl Default for ResolverSettings {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(3),
            ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(15),
            max_entries: 100_000,
            max_bytes: DEFAULT_CACHE_MAX_BYTES,
            max_concurrent: 16,
            max_concurrent_per_registry: 4,
            addresses: guard::AddressOverrides::new(),
        }
    }
}

/// What one resolution needs besides the image.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Credentials in kubelet order: pod pull secrets, service-account pull secrets, registry config.
    pub keyring: Keyring,
    /// `allowedRegistries` of the profile in force (contact nothing else when set).
    pub allowed: Option<Patterns>,
    /// `staleIfError` of the profile in force.
    pub stale_if_error: Duration,
}

/// A cached answer: the latest digest or error for one tag and credential scope, when it was
/// obtained, and — after an error — the last digest the registry gave (for `staleIfError`).
/// One entry per key holds both, so a tag costs one cache entry, not two.
#[derive(Debug, Clone)]
struct Cached {
    result: Result<Digest, Arc<ResolveError>>,
    at: Instant,
    last_good: Option<(Digest, Instant)>,
}

impl Cached {
    /// Whether the answer may still be given without asking the registry again.
    fn is_fresh(&self, ttl: Duration, negative_ttl: Duration) -> bool {
        let limit = if self.result.is_ok() {
            ttl
        } else {
            negative_ttl
        };
        self.at.elapsed() < limit
    }

    /// The digest to serve if the registry fails now: this answer's, or the one kept from before.
    fn good(&self) -> Option<(Digest, Instant)> {
        match self.result {
            Ok(digest) => Some((digest, self.at)),
            Err(_) => self.last_good,
        }
    }
}

/// The oldest last good answer ever served during an outage, whatever `staleIfError` says.
const LAST_GOOD_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Cache keys: `registry/repository:tag|credentials`.
type Key = Arc<str>;

/// Default bytes the digest cache may hold (`--cache-max-bytes`): 32 MiB, about 100,000 entries
/// of ordinary length.
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 32 * 1024 * 1024;

/// What an entry costs besides its key and error text: moka's node, expiry and frequency
/// bookkeeping and the key's `Arc`, rounded up.
const ENTRY_OVERHEAD_BYTES: usize = 160;

/// The bytes one cache entry takes, estimated: its key (an image string an attacker may make
/// long), the value, and the text of a remembered error.
fn entry_weight(key: &Key, value: &Cached) -> u64 {
    let error = match &value.result {
        Ok(_) => 0,
        Err(e) => e.to_string().len(),
    };
    (key.len() + std::mem::size_of::<Cached>() + error + ENTRY_OVERHEAD_BYTES) as u64
}

/// How long moka keeps an entry: a digest for [`LAST_GOOD_MAX_AGE`] (it is re-resolved after
/// the TTL, but kept for outages until then), an error for the negative TTL unless it carries a
/// last good digest.
struct CacheExpiry {
    negative_ttl: Duration,
}

impl CacheExpiry {
    fn keep(&self, value: &Cached) -> Duration {
        match value.good() {
            Some((_, at)) => LAST_GOOD_MAX_AGE
                .saturating_sub(at.elapsed())
                .max(self.negative_ttl),
            None => self.negative_ttl,
        }
    }
}

impl moka::Expiry<Key, Cached> for CacheExpiry {
    fn expire_after_create(&self, _key: &Key, value: &Cached, _now: Instant) -> Option<Duration> {
        Some(self.keep(value))
    }

    fn expire_after_update(
        &self,
        _key: &Key,
        value: &Cached,
        _now: Instant,
        _remaining: Option<Duration>,
    ) -> Option<Duration> {
        Some(self.keep(value))
    }
}

/// The seam between `/mutate` and the registries: the [`Resolver`] in production, a fake in
/// tests of the admission rules.
pub trait Resolve: Send + Sync + std::fmt::Debug {
    /// Resolves `image`'s tag before `deadline`; with `fresh`, not from an earlier answer.
    fn resolve<'a>(
        &'a self,
        image: &'a ImageRef,
        scope: &'a Scope,
        deadline: Instant,
        fresh: bool,
    ) -> BoxFuture<'a, Result<Resolved, ResolveError>>;

    /// Number of cached answers, for `/metrics` (none, for a resolver without a cache).
    fn cached_entries(&self) -> BoxFuture<'_, u64> {
        Box::pin(async { 0 })
    }

    /// Takes the `registries` of a reloaded policy; an unusable `caFile` refuses the reload.
    /// A resolver without per-registry settings has nothing to take.
    fn reconfigure(
        &self,
        _registries: &[RegistrySettings],
        _call_timeout: Duration,
    ) -> Result<(), RegistryConfigError> {
        Ok(())
    }
}

impl Resolve for Resolver {
    fn resolve<'a>(
        &'a self,
        image: &'a ImageRef,
        scope: &'a Scope,
        deadline: Instant,
        fresh: bool,
    ) -> BoxFuture<'a, Result<Resolved, ResolveError>> {
        Box::pin(Resolver::resolve(self, image, scope, deadline, fresh))
    }

    fn cached_entries(&self) -> BoxFuture<'_, u64> {
        Box::pin(self.counted_entries())
    }

    fn reconfigure(
        &self,
        registries: &[RegistrySettings],
        call_timeout: Duration,
    ) -> Result<(), RegistryConfigError> {
        Resolver::reconfigure(self, registries, call_timeout)
    }
}

/// Resolves tags to digests, with a cache shared by all admissions.
pub struct Resolver {
    transport: ArcSwap<Transport>,
    cache: moka::future::Cache<Key, Cached>,
    ttl: Duration,
    negative_ttl: Duration,
    permits: Permits,
    metrics: Arc<Metrics>,
    addresses: Arc<guard::AddressOverrides>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver")
            .field("entries", &self.cache.entry_count())
            .finish()
    }
}

impl Resolver {
    /// A resolver for `registries` (from the policy) with `settings` (from flags).
    pub fn new(
        registries: &[RegistrySettings],
        settings: &ResolverSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self, RegistryConfigError> {
        let floor = settings.max_bytes / settings.max_entries.max(1);
        let addresses = Arc::new(settings.addresses.clone());
        Ok(Self {
            transport: ArcSwap::from_pointee(Transport::new(
                registries,
                settings.call_timeout,
                addresses.clone(),
            )?),
            addresses,
            cache: moka::future::Cache::builder()
                // Bounded in bytes; each entry weighs at least max_bytes / max_entries, so the
                // count stays within max_entries too.
                .weigher(move |key: &Key, value: &Cached| {
                    let weight = entry_weight(key, value).max(floor);
                    u32::try_from(weight).unwrap_or(u32::MAX)
                })
                .max_capacity(settings.max_bytes)
                .expire_after(CacheExpiry {
                    negative_ttl: settings.negative_ttl,
                })
                .build(),
            ttl: settings.ttl,
            negative_ttl: settings.negative_ttl,
            permits: Permits::new(
                settings.max_concurrent,
                settings.max_concurrent_per_registry,
            ),
            metrics,
        })
    }

    /// Replaces the per-registry settings (on policy reload); the cache stays.
    pub fn reconfigure(
        &self,
        registries: &[RegistrySettings],
        call_timeout: Duration,
    ) -> Result<(), RegistryConfigError> {
        self.transport.store(Arc::new(Transport::new(
            registries,
            call_timeout,
            self.addresses.clone(),
        )?));
        Ok(())
    }

    /// Number of cached answers (for benchmarks and metrics); may lag behind recent inserts.
    pub fn cached_entries(&self) -> u64 {
        self.cache.entry_count()
    }

    /// Number of cached answers once pending inserts and evictions are applied.
    pub async fn counted_entries(&self) -> u64 {
        self.cache.run_pending_tasks().await;
        self.cache.entry_count()
    }

    /// Resolves `image`'s tag before `deadline`; concurrent calls for the same image and
    /// credentials share one registry lookup. With `fresh`, a cached answer counts only if it
    /// was obtained after this call began (`pinhook.dev/refresh`).
    pub async fn resolve(
        &self,
        image: &ImageRef,
        scope: &Scope,
        deadline: Instant,
        fresh: bool,
    ) -> Result<Resolved, ResolveError> {
        let called = Instant::now();
        let tag = image
            .tag()
            .or(image.effective_tag())
            .unwrap_or("latest")
            .to_owned();
        let credentials = scope.keyring.lookup(image.registry(), image.repository());
        // Keyed by the credentials that could be used, so an answer obtained with one namespace's
        // secret never serves a namespace without it.
        let scope_key = if credentials.is_empty() {
            "anonymous".to_owned()
        } else {
            credentials
                .iter()
                .map(Credential::fingerprint)
                .collect::<Vec<_>>()
                .join(",")
        };
        // And by `allowedRegistries`: a lookup refused under one namespace's list (e.g. a token
        // realm outside it) must not answer a namespace whose list allows it.
        let allowed_key = scope
            .allowed
            .as_ref()
            .map(|a| format!("|allowed={}", a.sources().join(",")))
            .unwrap_or_default();
        let key: Key = format!(
            "{}/{}:{tag}|{scope_key}{allowed_key}",
            image.registry(),
            image.repository()
        )
        .into();
        // The hot path: a fresh answer, without taking the key's lock.
        let cached = match self.cache.get(&key).await {
            Some(c) if !fresh && c.is_fresh(self.ttl, self.negative_ttl) => Some(c),
            _ => None,
        };
        let (entry, label) = match cached {
            Some(c) => (c, "hit"),
            None => {
                // One lookup per key at a time (single flight): moka runs the computations of a
                // key one after the other, and a caller that finds the answer refreshed while it
                // waited uses it.
                let start = Instant::now();
                let (ttl, negative_ttl) = (self.ttl, self.negative_ttl);
                // A lookup that found pinhook's lookups all busy is not the registry's answer:
                // it is given to this caller only, never cached, so the next caller tries again.
                let busy: std::sync::Mutex<Option<Cached>> = std::sync::Mutex::new(None);
                let busy_ref = &busy;
                let computed = self
                    .cache
                    .entry_by_ref(&key)
                    .and_compute_with(|current| async move {
                        let previous = current.map(|e| e.into_value());
                        if previous.as_ref().is_some_and(|p| {
                            p.is_fresh(ttl, negative_ttl) && (!fresh || p.at >= called)
                        }) {
                            return Op::Nop;
                        }
                        let result = self
                            .lookup(image, &tag, &credentials, scope.allowed.as_ref(), deadline)
                            .await;
                        if let Err(e @ ResolveError::Busy { .. }) = result {
                            let answer = Cached {
                                result: Err(Arc::new(e)),
                                at: Instant::now(),
                                last_good: previous.as_ref().and_then(Cached::good),
                            };
                            if let Ok(mut slot) = busy_ref.lock() {
                                *slot = Some(answer);
                            }
                            return Op::Nop;
                        }
                        let result = result.map_err(Arc::new);
                        let last_good = match result {
                            Ok(_) => None,
                            Err(_) => previous.as_ref().and_then(Cached::good),
                        };
                        Op::Put(Cached {
                            result,
                            at: Instant::now(),
                            last_good,
                        })
                    })
                    .await;
                let busy = busy
                    .into_inner()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                match (busy, computed) {
                    (Some(answer), _) => (answer, "miss"),
                    (None, CompResult::Inserted(e) | CompResult::ReplacedWith(e)) => {
                        if e.value().result.is_ok() {
                            self.metrics
                                .resolution_duration
                                .observe(start.elapsed().as_secs_f64());
                        }
                        (e.into_value(), "miss")
                    }
                    (None, CompResult::Unchanged(e)) => (e.into_value(), "hit"),
                    // The computation always puts a value or finds a fresh one; should moka
                    // ever answer otherwise, the request gets an error rather than a panic.
                    (None, CompResult::StillNone(_) | CompResult::Removed(_)) => (
                        Cached {
                            result: Err(Arc::new(ResolveError::NoCachedAnswer {
                                registry: image.registry().to_owned(),
                            })),
                            at: Instant::now(),
                            last_good: None,
                        },
                        "miss",
                    ),
                }
            }
        };
        let (answer, label) = match &entry.result {
            Ok(digest) => (
                Ok(Resolved {
                    digest: digest.to_string(),
                    stale_for: None,
                }),
                label,
            ),
            // The registry is failing: a digest resolved recently enough is still served.
            Err(e) => match entry.last_good {
                Some((digest, at))
                    if e.is_outage()
                        && at.elapsed() <= scope.stale_if_error.min(LAST_GOOD_MAX_AGE) =>
                {
                    (
                        Ok(Resolved {
                            digest: digest.to_string(),
                            stale_for: Some(at.elapsed()),
                        }),
                        "stale",
                    )
                }
                _ => (Err((**e).clone()), label),
            },
        };
        self.metrics.cache_lookup(label);
        answer
    }

    async fn lookup(
        &self,
        image: &ImageRef,
        tag: &str,
        credentials: &[Credential],
        allowed: Option<&Patterns>,
        deadline: Instant,
    ) -> Result<Digest, ResolveError> {
        let transport = self.transport.load_full();
        let endpoints = transport.endpoints(image.registry());
        let mut last_err = None;
        for endpoint in &endpoints {
            // A fair share: this host's permits and the process's, held while talking to it.
            let mut slot = match Slot::acquire(&self.permits, &endpoint.host, deadline).await {
                Ok(slot) => slot,
                Err(e) => {
                    last_err = Some(e);
                    continue;
                }
            };
            let mut tried = Vec::new();
            let attempts = credentials.iter().map(Some).chain(std::iter::once(None));
            let mut result = None;
            for credential in attempts {
                let mut exchange = Exchange::default();
                let lookup = registry::Lookup {
                    repository: image.repository(),
                    tag,
                    credential,
                    allowed,
                    deadline,
                };
                let r = transport
                    .digest(endpoint, &lookup, &mut exchange, &mut slot)
                    .await;
                let outcome = match &r {
                    Ok(_) => "ok",
                    Err(e) => e.metric_label(),
                };
                if exchange.requests > 0 {
                    self.metrics
                        .registry_requests
                        .get_or_create(&RegistryLabels {
                            registry: transport.registry_label(&endpoint.host),
                            outcome,
                        })
                        .inc_by(u64::from(exchange.requests));
                }
                tried.push(credential.map_or_else(|| "anonymous".to_owned(), |c| c.source.clone()));
                match r {
                    Err(e @ ResolveError::Unauthorized { .. }) => {
                        // The first refusal with a reason (of the most specific credential)
                        // says the most; an anonymous retry's "authentication required" must
                        // not hide it.
                        let first = match result.take() {
                            Some(Err(f @ ResolveError::Unauthorized { .. }))
                                if f.has_reason() || !e.has_reason() =>
                            {
                                f
                            }
                            _ => e,
                        };
                        result = Some(Err(first.with_tried(tried.join(", "))));
                    }
                    // After refused credentials, anonymous access only probes for a public
                    // image: when the probe fails otherwise (a token service without GET, an
                    // unexpected status…), the credential's refusal is the answer. A 404 stays
                    // the answer (as the kubelet's last error would, and always denied).
                    Err(ref e)
                        if credential.is_none()
                            && !matches!(e, ResolveError::NotFound { .. })
                            && matches!(result, Some(Err(ResolveError::Unauthorized { .. }))) =>
                    {
                        if let Some(Err(e)) = result.take() {
                            result = Some(Err(e.with_tried(tried.join(", "))));
                        }
                        break;
                    }
                    other => {
                        result = Some(other);
                        break;
                    }
                }
            }
            match result {
                Some(Ok(d)) => return Ok(d),
                Some(Err(e)) => {
                    // A mirror that fails falls through to the next endpoint; the registry's own error stands.
                    if endpoint.mirror_of.is_some() {
                        tracing::warn!(mirror = %endpoint.host, image = image.original(), error = %e, "mirror failed; trying the next endpoint");
                    }
                    last_err = Some(e);
                }
                None => {}
            }
        }
        Err(last_err.unwrap_or_else(|| ResolveError::NoEndpoint {
            registry: image.registry().to_owned(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registry of our own on 127.0.0.1: answers `HEAD /v2/*/manifests/*` with a digest after
    /// `delay`, or with `status` when it is not 200; counts manifest requests.
    struct FakeRegistry {
        host: String,
        requests: Arc<std::sync::atomic::AtomicUsize>,
        status: Arc<std::sync::atomic::AtomicU16>,
    }

    const DIGEST: &str = "sha256:7b3ccabffc97de872a30dfd234fd972a66d247c8cfc69b0550f276481852627c";

    async fn fake_registry(delay: Duration) -> FakeRegistry {
        use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
        let requests = Arc::new(AtomicUsize::new(0));
        let status = Arc::new(AtomicU16::new(200));
        let (r, st) = (requests.clone(), status.clone());
        let app = axum::Router::new().route(
            "/v2/{*rest}",
            axum::routing::any(move || {
                let (r, st) = (r.clone(), st.clone());
                async move {
                    r.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(delay).await;
                    let code = axum::http::StatusCode::from_u16(st.load(Ordering::SeqCst)).unwrap();
                    (code, [("docker-content-digest", DIGEST)], "")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeRegistry {
            host,
            requests,
            status,
        }
    }

    /// A resolver for the plain-HTTP fake registry at `host`, with `settings` and `metrics`.
    fn resolver_with(host: &str, settings: &ResolverSettings, metrics: Arc<Metrics>) -> Resolver {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let registries = [RegistrySettings {
            host: host.to_owned(),
            insecure: true,
            ..Default::default()
        }];
        Resolver::new(&registries, settings, metrics).unwrap()
    }

    fn resolver(host: &str, ttl: Duration) -> Resolver {
        let settings = ResolverSettings {
            ttl,
            negative_ttl: Duration::from_millis(1),
            ..Default::default()
        };
        resolver_with(host, &settings, Arc::new(Metrics::new()))
    }

    fn scope(stale_if_error: Duration) -> Scope {
        Scope {
            stale_if_error,
            ..Default::default()
        }
    }

    fn soon() -> Instant {
        Instant::now() + Duration::from_secs(5)
    }

    #[test]
    fn internal_failures_have_their_own_words_and_labels() {
        let r = || "registry.example.com".to_owned();
        let cases = [
            (
                ResolveError::ShuttingDown { registry: r() },
                "shutting-down",
                "cannot resolve an image of registry registry.example.com: pinhook is shutting down",
            ),
            (
                ResolveError::NoCachedAnswer { registry: r() },
                "no-cached-answer",
                "the digest cache returned no answer for an image of registry registry.example.com",
            ),
            (
                ResolveError::NoEndpoint { registry: r() },
                "no-endpoint",
                "no endpoint to ask for registry registry.example.com",
            ),
        ];
        for (e, label, message) in cases {
            assert_eq!((e.metric_label(), e.to_string().as_str()), (label, message));
            assert!(!e.is_outage(), "{e}");
        }
    }

    #[tokio::test]
    async fn a_fresh_resolve_asks_the_registry_despite_a_cached_answer() {
        use std::sync::atomic::Ordering;
        let reg = fake_registry(Duration::ZERO).await;
        let r = resolver(&reg.host, Duration::from_secs(3600));
        let image = ImageRef::parse(&format!("{}/shop/web:1.0.0", reg.host)).unwrap();
        let s = scope(Duration::ZERO);
        r.resolve(&image, &s, soon(), false).await.unwrap();
        r.resolve(&image, &s, soon(), false).await.unwrap();
        assert_eq!(reg.requests.load(Ordering::SeqCst), 1);
        r.resolve(&image, &s, soon(), true).await.unwrap();
        assert_eq!(
            reg.requests.load(Ordering::SeqCst),
            2,
            "fresh skips the cache"
        );
        // ...and refreshes it for everyone else.
        r.resolve(&image, &s, soon(), false).await.unwrap();
        assert_eq!(reg.requests.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn the_cache_is_bounded_in_bytes_and_in_entries() {
        let reg = fake_registry(Duration::ZERO).await;
        let bounded = |max_entries: u64, max_bytes: u64| {
            let settings = ResolverSettings {
                max_entries,
                max_bytes,
                ..Default::default()
            };
            resolver_with(&reg.host, &settings, Arc::new(Metrics::new()))
        };
        // 400 tags of 230-character repositories: ~200 KiB of entries, for a 64 KiB cache.
        let long = "long-repository-name-".repeat(11);
        let by_bytes = bounded(100_000, 64 * 1024);
        let by_count = bounded(10, DEFAULT_CACHE_MAX_BYTES);
        for i in 0..400 {
            let image = ImageRef::parse(&format!("{}/{long}{i}:1.0.0", reg.host)).unwrap();
            for r in [&by_bytes, &by_count] {
                r.resolve(&image, &scope(Duration::ZERO), soon(), false)
                    .await
                    .unwrap();
            }
        }
        by_bytes.cache.run_pending_tasks().await;
        by_count.cache.run_pending_tasks().await;
        let (bytes, kept) = (by_bytes.cache.weighted_size(), by_bytes.cache.entry_count());
        assert!(bytes <= 64 * 1024, "{bytes} bytes held");
        assert!((100..400).contains(&kept), "{kept} entries kept");
        assert!(
            by_count.cache.entry_count() <= 10,
            "{}",
            by_count.cache.entry_count()
        );
    }

    #[tokio::test]
    async fn cached_then_stale_during_an_outage_then_fresh_again() {
        use std::sync::atomic::Ordering;
        let reg = fake_registry(Duration::ZERO).await;
        let r = resolver(&reg.host, Duration::from_millis(50));
        let image = ImageRef::parse(&format!("{}/shop/web:1.0.0", reg.host)).unwrap();
        let hour = scope(Duration::from_secs(3600));
        let first = r.resolve(&image, &hour, soon(), false).await.unwrap();
        assert_eq!((first.digest.as_str(), first.stale_for), (DIGEST, None));
        r.resolve(&image, &hour, soon(), false).await.unwrap();
        assert_eq!(
            reg.requests.load(Ordering::SeqCst),
            1,
            "the second answer is cached"
        );

        // Past the TTL the registry is asked again; it fails, and the last digest is served.
        tokio::time::sleep(Duration::from_millis(80)).await;
        reg.status.store(503, Ordering::SeqCst);
        let stale = r.resolve(&image, &hour, soon(), false).await.unwrap();
        assert_eq!(stale.digest, DIGEST);
        assert!(stale.stale_for.is_some());
        assert_eq!(reg.requests.load(Ordering::SeqCst), 2);
        // A profile without a stale window gets the error.
        tokio::time::sleep(Duration::from_millis(5)).await;
        let err = r
            .resolve(&image, &scope(Duration::ZERO), soon(), false)
            .await;
        assert!(
            matches!(err, Err(ResolveError::Status { status: 503, .. })),
            "{err:?}"
        );
        // The last good digest survives the failed refreshes.
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(
            r.resolve(&image, &hour, soon(), false)
                .await
                .unwrap()
                .stale_for
                .is_some()
        );

        reg.status.store(200, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let back = r.resolve(&image, &hour, soon(), false).await.unwrap();
        assert_eq!((back.digest.as_str(), back.stale_for), (DIGEST, None));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn thousands_of_registries_make_a_bounded_number_of_metric_series() {
        use std::sync::atomic::Ordering;
        let reg = fake_registry(Duration::ZERO).await;
        let metrics = Arc::new(Metrics::new());
        let settings = ResolverSettings {
            call_timeout: Duration::from_secs(2),
            ..Default::default()
        };
        let r = Arc::new(resolver_with(&reg.host, &settings, metrics.clone()));
        // A port nobody listens on, on any address: every 127.a.b.c (all loopback) refuses it.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        const HOSTS: usize = 3000;
        let mut set = tokio::task::JoinSet::new();
        let mut results = Vec::new();
        for i in 0..HOSTS {
            let r = r.clone();
            let image = format!("127.0.{}.{}:{closed}/shop/web:1.0.0", i / 250, i % 250 + 1);
            set.spawn(async move {
                let image = ImageRef::parse(&image).unwrap();
                r.resolve(&image, &scope(Duration::ZERO), soon(), false)
                    .await
            });
            if set.len() >= 64 {
                results.push(set.join_next().await.unwrap().unwrap());
            }
        }
        results.extend(set.join_all().await);
        assert_eq!(results.len(), HOSTS);
        for result in &results {
            assert!(
                matches!(result, Err(ResolveError::Connect { .. })),
                "{result:?}"
            );
        }
        // The configured registry keeps its own label.
        let image = ImageRef::parse(&format!("{}/shop/web:1.0.0", reg.host)).unwrap();
        r.resolve(&image, &scope(Duration::ZERO), soon(), false)
            .await
            .unwrap();
        assert_eq!(reg.requests.load(Ordering::SeqCst), 1);

        let text = metrics.encode();
        let mut series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("pinhook_registry_requests_total{"))
            .collect();
        series.sort_unstable();
        let mut want = [
            format!(
                "pinhook_registry_requests_total{{registry=\"other\",outcome=\"connect\"}} {HOSTS}"
            ),
            format!(
                "pinhook_registry_requests_total{{registry=\"{}\",outcome=\"ok\"}} 1",
                reg.host
            ),
        ];
        want.sort_unstable();
        assert_eq!(series, want, "{text}");
    }

    #[tokio::test]
    async fn concurrent_lookups_of_one_tag_make_one_request() {
        let reg = fake_registry(Duration::from_millis(200)).await;
        let r = Arc::new(resolver(&reg.host, Duration::from_secs(300)));
        let image = ImageRef::parse(&format!("{}/shop/web:2.0.0", reg.host)).unwrap();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let (r, image) = (r.clone(), image.clone());
            set.spawn(async move {
                r.resolve(&image, &scope(Duration::ZERO), soon(), false)
                    .await
            });
        }
        while let Some(answer) = set.join_next().await {
            assert_eq!(answer.unwrap().unwrap().digest, DIGEST);
        }
        assert_eq!(reg.requests.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    fn one_at_a_time(host: &str) -> Resolver {
        let settings = ResolverSettings {
            max_concurrent: 1,
            max_concurrent_per_registry: 1,
            ..Default::default()
        };
        resolver_with(host, &settings, Arc::new(Metrics::new()))
    }

    async fn until(what: impl Fn() -> bool) {
        for _ in 0..1000 {
            if what() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("condition never met");
    }

    #[tokio::test]
    async fn a_lookup_sleeping_on_retry_after_lets_other_lookups_run() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // `slow/*` answers 429 with `Retry-After: 1` once, then the digest; `fast/*` at once.
        let slow = Arc::new(AtomicUsize::new(0));
        let s = slow.clone();
        let app = axum::Router::new().route(
            "/v2/{*rest}",
            axum::routing::any(move |uri: axum::http::Uri| {
                let s = s.clone();
                async move {
                    let limited = uri.path().starts_with("/v2/slow/")
                        && s.fetch_add(1, Ordering::SeqCst) == 0;
                    if limited {
                        (
                            axum::http::StatusCode::TOO_MANY_REQUESTS,
                            [("retry-after", "1")],
                            "",
                        )
                    } else {
                        (
                            axum::http::StatusCode::OK,
                            [("docker-content-digest", DIGEST)],
                            "",
                        )
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let host = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move { axum::serve(listener, app).await });
        // One permit in the whole process: only a permit given back lets `fast` through.
        let r = Arc::new(one_at_a_time(&host));
        let sleeper = {
            let (r, image) = (
                r.clone(),
                ImageRef::parse(&format!("{host}/slow/web:1.0.0")).unwrap(),
            );
            tokio::spawn(async move {
                r.resolve(&image, &scope(Duration::ZERO), soon(), false)
                    .await
            })
        };
        until(|| slow.load(Ordering::SeqCst) == 1).await;
        let fast = ImageRef::parse(&format!("{host}/fast/web:1.0.0")).unwrap();
        let answer = r
            .resolve(&fast, &scope(Duration::ZERO), soon(), false)
            .await;
        assert_eq!(answer.unwrap().digest, DIGEST);
        assert!(
            !sleeper.is_finished(),
            "the other lookup ran while the first slept on Retry-After"
        );
        assert_eq!(sleeper.await.unwrap().unwrap().digest, DIGEST);
        assert_eq!(slow.load(Ordering::SeqCst), 2, "asked again after the wait");
    }

    #[tokio::test]
    async fn a_lookup_queued_past_its_deadline_says_so_and_is_not_cached() {
        use std::sync::atomic::Ordering;
        let reg = fake_registry(Duration::from_secs(2)).await;
        let r = Arc::new(one_at_a_time(&reg.host));
        let first = {
            let (r, image) = (
                r.clone(),
                ImageRef::parse(&format!("{}/shop/web:1.0.0", reg.host)).unwrap(),
            );
            tokio::spawn(async move {
                r.resolve(&image, &scope(Duration::ZERO), soon(), false)
                    .await
            })
        };
        until(|| reg.requests.load(Ordering::SeqCst) == 1).await;
        let queued = ImageRef::parse(&format!("{}/shop/api:1.0.0", reg.host)).unwrap();
        let deadline = Instant::now() + Duration::from_millis(300);
        let err = r
            .resolve(&queued, &scope(Duration::ZERO), deadline, false)
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "pinhook's lookups to registry {} were all busy for 0.",
                reg.host
            )),
            "{text}"
        );
        assert!(
            text.contains("(1 in flight, the most per registry)"),
            "{text}"
        );
        assert_eq!(reg.requests.load(Ordering::SeqCst), 1, "never asked");
        assert_eq!(r.counted_entries().await, 0, "a busy answer is not cached");
        assert_eq!(first.await.unwrap().unwrap().digest, DIGEST);
        // Once the permit is free, the same image is looked up.
        let answer = r
            .resolve(&queued, &scope(Duration::ZERO), soon(), false)
            .await;
        assert_eq!(answer.unwrap().digest, DIGEST);
    }
}
