//! Resolving a tag to its digest: credentials in kubelet order, a single-flight cache keyed by
//! credential scope, a bounded stale window for registry outages, and errors in plain words.

pub mod auth;
pub mod registry;
pub mod secrets;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::metrics::{Metrics, RegistryLabels};
use crate::policy::Patterns;
use crate::reference::ImageRef;
use auth::{Credential, Keyring};
use registry::{Exchange, RegistrySettings, Transport};

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
    #[error("registry {registry} refused access to {repository} (unauthorized; tried {tried})")]
    Unauthorized {
        /// Registry host.
        registry: String,
        /// Repository.
        repository: String,
        /// The credential sources tried, in order.
        tried: String,
    },
    /// The registry answered 429 and asked to wait longer than the deadline allows.
    #[error("registry {registry} is rate-limiting requests (HTTP 429{})", retry_after.map(|s| format!(", retry after {s:.0}s")).unwrap_or_default())]
    RateLimited {
        /// Registry host.
        registry: String,
        /// Seconds the registry asked to wait.
        retry_after: Option<f64>,
    },
    /// No answer within the per-call timeout or the admission deadline.
    #[error("registry {registry} did not answer within {seconds:.1}s")]
    Timeout {
        /// Registry host.
        registry: String,
        /// The limit that expired.
        seconds: f64,
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
    #[error("registry {registry} answered HTTP {status}")]
    Status {
        /// Registry host.
        registry: String,
        /// The status code.
        status: u16,
    },
    /// An answer that cannot be used.
    #[error("registry {registry} sent an unusable answer: {detail}")]
    Invalid {
        /// Registry host.
        registry: String,
        /// What was wrong.
        detail: String,
    },
}

impl ResolveError {
    /// A short label for metrics and audit records.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::NotFound { .. } => "not-found",
            Self::Unauthorized { .. } => "unauthorized",
            Self::RateLimited { .. } => "rate-limited",
            Self::Timeout { .. } => "timeout",
            Self::Tls { .. } => "tls",
            Self::Connect { .. } => "connect",
            Self::Forbidden { .. } => "forbidden",
            Self::Status { .. } => "status",
            Self::Invalid { .. } => "invalid",
        }
    }

    /// True when the registry is unreachable or failing, so a recent digest may be served.
    pub fn is_outage(&self) -> bool {
        match self {
            Self::RateLimited { .. } | Self::Timeout { .. } | Self::Connect { .. } => true,
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
}

impl Default for ResolverSettings {
    fn default() -> Self {
        Self {
            call_timeout: Duration::from_secs(3),
            ttl: Duration::from_secs(300),
            negative_ttl: Duration::from_secs(15),
            max_entries: 100_000,
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

/// A sha256 digest as its 32 bytes: the cache holds up to `--cache-max-entries` of them, twice
/// (answers and last good answers), so not as 71-character strings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Sha256([u8; 32]);

impl Sha256 {
    /// `sha256:` and 64 lowercase hex digits (what the registry client returns).
    fn parse(digest: &str) -> Option<Self> {
        let hex = digest.strip_prefix("sha256:")?.as_bytes();
        if hex.len() != 64 {
            return None;
        }
        let nibble = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        let mut out = [0u8; 32];
        for (i, pair) in hex.chunks_exact(2).enumerate() {
            out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
        }
        Some(Self(out))
    }

    /// `sha256:…`, as the registry wrote it.
    fn to_digest(self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(71);
        s.push_str("sha256:");
        for b in self.0 {
            s.push(HEX[usize::from(b >> 4)] as char);
            s.push(HEX[usize::from(b & 15)] as char);
        }
        s
    }
}

/// A cached answer: a digest, or why there is none (shared, not copied, by every hit).
#[derive(Debug, Clone)]
struct Cached {
    result: Result<Sha256, Arc<ResolveError>>,
}

/// The oldest last good answer ever served during an outage, whatever `staleIfError` says.
const LAST_GOOD_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// Cache keys: `registry/repository:tag|credentials`, one allocation shared by both caches.
type Key = Arc<str>;

struct CacheExpiry {
    ttl: Duration,
    negative_ttl: Duration,
}

impl moka::Expiry<Key, Cached> for CacheExpiry {
    fn expire_after_create(&self, _key: &Key, value: &Cached, _now: Instant) -> Option<Duration> {
        Some(if value.result.is_ok() {
            self.ttl
        } else {
            self.negative_ttl
        })
    }
}

/// Resolves tags to digests, with a cache shared by all admissions.
pub struct Resolver {
    transport: ArcSwap<Transport>,
    cache: moka::future::Cache<Key, Cached>,
    last_good: moka::sync::Cache<Key, (Sha256, Instant)>,
    metrics: Arc<Metrics>,
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
    ) -> Result<Self, String> {
        Ok(Self {
            transport: ArcSwap::from_pointee(Transport::new(registries, settings.call_timeout)?),
            cache: moka::future::Cache::builder()
                .max_capacity(settings.max_entries)
                .expire_after(CacheExpiry {
                    ttl: settings.ttl,
                    negative_ttl: settings.negative_ttl,
                })
                .build(),
            // No expiry of its own (a timer per entry costs memory): an answer older than
            // LAST_GOOD_MAX_AGE is never served, and the capacity bounds the rest.
            last_good: moka::sync::Cache::builder()
                .max_capacity(settings.max_entries)
                .build(),
            metrics,
        })
    }

    /// Replaces the per-registry settings (on policy reload); the cache stays.
    pub fn reconfigure(
        &self,
        registries: &[RegistrySettings],
        call_timeout: Duration,
    ) -> Result<(), String> {
        self.transport
            .store(Arc::new(Transport::new(registries, call_timeout)?));
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
    /// credentials share one registry lookup.
    pub async fn resolve(
        &self,
        image: &ImageRef,
        scope: &Scope,
        deadline: Instant,
    ) -> Result<Resolved, ResolveError> {
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
        let key: Key = format!(
            "{}/{}:{tag}|{scope_key}",
            image.registry(),
            image.repository()
        )
        .into();
        let start = Instant::now();
        let entry = self
            .cache
            .entry_by_ref(&key)
            .or_insert_with(async {
                let result = self
                    .lookup(image, &tag, &credentials, scope.allowed.as_ref(), deadline)
                    .await;
                Cached {
                    result: match result {
                        Ok(digest) => Sha256::parse(&digest).ok_or_else(|| {
                            Arc::new(ResolveError::Invalid {
                                registry: image.registry().to_owned(),
                                detail: format!("{digest:?} is not a sha256 digest"),
                            })
                        }),
                        Err(e) => Err(Arc::new(e)),
                    },
                }
            })
            .await;
        let fresh = entry.is_fresh();
        let result = entry.into_value().result;
        let cache_result = if fresh { "miss" } else { "hit" };
        if fresh && let Ok(digest) = result {
            self.last_good.insert(key.clone(), (digest, Instant::now()));
            self.metrics
                .resolution_duration
                .observe(start.elapsed().as_secs_f64());
        }
        let (answer, label) = match result {
            Ok(digest) => (
                Ok(Resolved {
                    digest: digest.to_digest(),
                    stale_for: None,
                }),
                cache_result,
            ),
            Err(e) => match self.last_good.get(&key) {
                // The registry is failing: a digest resolved recently enough is still served.
                Some((digest, at))
                    if e.is_outage()
                        && at.elapsed() <= scope.stale_if_error.min(LAST_GOOD_MAX_AGE) =>
                {
                    (
                        Ok(Resolved {
                            digest: digest.to_digest(),
                            stale_for: Some(at.elapsed()),
                        }),
                        "stale",
                    )
                }
                _ => (Err((*e).clone()), cache_result),
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
    ) -> Result<String, ResolveError> {
        let transport = self.transport.load_full();
        let endpoints = transport.endpoints(image.registry());
        let mut last_err = None;
        for endpoint in &endpoints {
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
                let r = transport.digest(endpoint, &lookup, &mut exchange).await;
                let outcome = match &r {
                    Ok(_) => "ok",
                    Err(e) => e.metric_label(),
                };
                if exchange.requests > 0 {
                    self.metrics
                        .registry_requests
                        .get_or_create(&RegistryLabels {
                            registry: endpoint.host.clone(),
                            outcome,
                        })
                        .inc_by(u64::from(exchange.requests));
                }
                tried.push(credential.map_or_else(|| "anonymous".to_owned(), |c| c.source.clone()));
                match r {
                    Err(ResolveError::Unauthorized {
                        registry,
                        repository,
                        ..
                    }) => {
                        result = Some(Err(ResolveError::Unauthorized {
                            registry,
                            repository,
                            tried: tried.join(", "),
                        }));
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
        Err(last_err.unwrap_or_else(|| ResolveError::Invalid {
            registry: image.registry().to_owned(),
            detail: "no endpoint to ask".into(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_round_trips_and_refuses_other_text() {
        let d = "sha256:7b3ccabffc97de872a30dfd234fd972a66d247c8cfc69b0550f276481852627c";
        assert_eq!(Sha256::parse(d).unwrap().to_digest(), d);
        assert_eq!(Sha256::parse(&d.to_uppercase()), None);
        assert_eq!(Sha256::parse(&d[..70]), None);
        assert_eq!(Sha256::parse(&d.replace("sha256", "sha512")), None);
        assert_eq!(Sha256::parse(&d.replace('7', "g")), None);
    }
}
