//! The one I/O step of `/mutate`: gather the pod's credentials (pull secrets, the kubelet's
//! credential providers, `--registry-config`) and resolve every target of a
//! [`PinPlan`] concurrently before the admission deadline (the resolver bounds the lookups
//! in flight, per registry and across the process).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admission::PinPlan;
use crate::pin::{PinResult, Source, Target};
use crate::resolve::auth::Keyring;
use crate::resolve::credential_provider::{Account, CredentialProviders};
use crate::resolve::secrets::PullSecrets;
use crate::resolve::{Resolve, ResolveError, Scope};

/// Resolves the images of pin plans.
#[derive(Debug)]
pub struct Pinner {
    resolver: Arc<dyn Resolve>,
    secrets: Option<PullSecrets>,
    providers: Option<Arc<CredentialProviders>>,
    registry_config: Keyring,
}

/// What one object's credentials depend on: its pod's pull secrets, and whose pod it is.
struct Credentials<'a> {
    pod: Keyring,
    account: Account<'a>,
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
            providers: None,
            registry_config,
        }
    }

    /// Asks `providers` (the kubelet's credential-provider plugins) for credentials after the
    /// pod's pull secrets and before `--registry-config`.
    pub fn with_credential_providers(
        mut self,
        providers: Option<Arc<CredentialProviders>>,
    ) -> Self {
        self.providers = providers;
        self
    }

    /// The resolver (for `/metrics` and policy reloads).
    pub fn resolver(&self) -> &dyn Resolve {
        self.resolver.as_ref()
    }

    /// What happened to each target of `plan` (same order), for an object in `namespace`.
    pub async fn pin(&self, plan: &PinPlan, namespace: &str, deadline: Instant) -> Vec<PinResult> {
        let credentials = Credentials {
            pod: if plan.needs_registry() {
                self.pod_keyring(plan, namespace).await
            } else {
                Keyring::default()
            },
            account: Account {
                namespace,
                name: &plan.credentials.service_account,
            },
        };
        let scope = if plan.needs_registry() {
            let mut keyring = credentials.pod.clone();
            keyring.extend(self.registry_config.clone());
            Scope {
                keyring,
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
                .map(|target| self.resolve_one(target, &scope, &credentials, deadline)),
        )
        .await
    }

    /// The pod's pull secrets, then its service account's (kubelet order; `--registry-config`
    /// and credential providers are added by the caller).
    async fn pod_keyring(&self, plan: &PinPlan, namespace: &str) -> Keyring {
        let mut keyring = Keyring::default();
        if let Some(secrets) = &self.secrets {
            let c = &plan.credentials;
            keyring.extend(
                secrets
                    .keyring(namespace, &c.secrets, &c.service_account)
                    .await,
            );
        }
        keyring
    }

    /// The scope of `target` with the credential providers' credentials for it between the
    /// pod's and `--registry-config`; the providers' failures, for the message.
    async fn provider_scope(
        &self,
        target: &Target,
        shared: &Scope,
        credentials: &Credentials<'_>,
        deadline: Instant,
    ) -> (Option<Scope>, Vec<String>) {
        let Some(providers) = &self.providers else {
            return (None, Vec::new());
        };
        if !providers.matches(&target.reference) {
            return (None, Vec::new());
        }
        let provided = providers
            .credentials(&target.reference, Some(credentials.account), deadline)
            .await;
        for f in &provided.failures {
            tracing::warn!(error = %f, "credential provider gave no credentials; going on with the other credential sources");
        }
        for n in &provided.not_asked {
            tracing::debug!(reason = %n, "credential provider not asked");
        }
        let failures: Vec<String> = provided
            .failures
            .iter()
            .chain(&provided.not_asked)
            .map(ToString::to_string)
            .collect();
        if provided.keyring.is_empty() {
            return (None, failures);
        }
        let mut keyring = credentials.pod.clone();
        keyring.extend(provided.keyring);
        keyring.extend(self.registry_config.clone());
        let scope = Scope {
            keyring,
            allowed: shared.allowed.clone(),
            stale_if_error: shared.stale_if_error,
        };
        (Some(scope), failures)
    }

    async fn resolve_one(
        &self,
        target: &Target,
        shared: &Scope,
        credentials: &Credentials<'_>,
        deadline: Instant,
    ) -> PinResult {
        if let Source::Reuse(digest) = &target.source {
            return PinResult::Reused {
                digest: digest.clone(),
            };
        }
        let (own, failures) = self
            .provider_scope(target, shared, credentials, deadline)
            .await;
        let scope = own.as_ref().unwrap_or(shared);
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
            Ok(Err(e)) => PinResult::Failed(with_failures(e, &failures)),
            Err(_) => PinResult::Failed(ResolveError::Timeout {
                registry: registry(),
                seconds: Duration::as_secs_f64(&remaining),
            }),
        }
    }
}

/// An access refusal with the credential providers' failures added to what was tried, so the
/// message says why their credentials were missing.
fn with_failures(mut e: ResolveError, failures: &[String]) -> ResolveError {
    if let ResolveError::Unauthorized { tried, .. } = &mut e
        && !failures.is_empty()
    {
        tried.push_str("; ");
        tried.push_str(&failures.join("; "));
    }
    e
}
