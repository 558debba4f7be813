//! The one I/O step of `/mutate`: gather the pod's credentials and resolve every target of a
//! [`PinPlan`] concurrently before the admission deadline (the resolver bounds the lookups
//! in flight, per registry and across the process).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admission::PinPlan;
use crate::pin::{PinResult, Source, Target};
use crate::resolve::auth::Keyring;
use crate::resolve::secrets::PullSecrets;
use crate::resolve::{Resolve, ResolveError, Scope};

/// Resolves the images of pin plans.
#[derive(Debug)]
pub struct Pinner {
    resolver: Arc<dyn Resolve>,
    secrets: Option<PullSecrets>,
    registry_config: Keyring,
}

impl Pinner {
    /// A pinner; `secrets` is `None` where no Kubernetes API is configured.
    pub fn new(
        resolver: Arc<dyn Resolve>,
        secrets: Option<PullSecrets>,
        registry_config: Keyring,
    ) -> Self {
        Self {
            resolver,
            secrets,
            registry_config,
        }
    }

    /// The resolver (for `/metrics` and policy reloads).
    pub fn resolver(&self) -> &dyn Resolve {
        self.resolver.as_ref()
    }

    /// What happened to each target of `plan` (same order), for an object in `namespace`.
    pub async fn pin(&self, plan: &PinPlan, namespace: &str, deadline: Instant) -> Vec<PinResult> {
        let scope = if plan.needs_registry() {
            Scope {
                keyring: self.keyring(plan, namespace).await,
                allowed: plan.allowed_registries.clone(),
                stale_if_error: plan.stale_if_error,
            }
        } else {
            Scope::default()
        };
        // Every target concurrently, in this task: a cached digest answers at once, and the
        // misses wait for the registry together (the resolver's permits bound the lookups in
        // flight, per registry and across the process), without a task spawned per image.
        futures_util::future::join_all(
            plan.targets
                .iter()
                .map(|target| self.resolve_one(target, &scope, deadline)),
        )
        .await
    }

    /// Credentials in kubelet order: pod pull secrets, service-account pull secrets, `--registry-config`.
    async fn keyring(&self, plan: &PinPlan, namespace: &str) -> Keyring {
        let mut keyring = Keyring::default();
        if let Some(secrets) = &self.secrets {
            let c = &plan.credentials;
            keyring.extend(
                secrets
                    .keyring(namespace, &c.secrets, &c.service_account)
                    .await,
            );
        }
        keyring.extend(self.registry_config.clone());
        keyring
    }

    async fn resolve_one(&self, target: &Target, scope: &Scope, deadline: Instant) -> PinResult {
        if let Source::Reuse(digest) = &target.source {
            return PinResult::Reused {
                digest: digest.clone(),
            };
        }
        let registry = || target.reference.registry().to_owned();
        // Cut at the deadline whatever the resolver does; a resolver that queued for a permit
        // until then says so itself (`Busy`), since it is polled before this timeout fires.
        let remaining = deadline.saturating_duration_since(Instant::now());
        let fresh = target.source == Source::Refresh;
        match tokio::time::timeout(
            remaining,
            self.resolver
                .resolve(&target.reference, scope, deadline, fresh),
        )
        .await
        {
            Ok(Ok(r)) => match r.stale_for {
                Some(age) => PinResult::Stale {
                    digest: r.digest,
                    age,
                },
                None => PinResult::Pinned { digest: r.digest },
            },
            Ok(Err(e)) => PinResult::Failed(e),
            Err(_) => PinResult::Failed(ResolveError::Timeout {
                registry: registry(),
                seconds: Duration::as_secs_f64(&remaining),
            }),
        }
    }
}
