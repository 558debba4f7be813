//! The `/mutate` pipeline around the pure [`pin`](crate::pin) plan: gather the pod's
//! credentials, resolve every target concurrently (bounded) before the admission deadline.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, Operation};
use serde_json::Value;
use tokio::sync::Semaphore;

use crate::admission::Decision;
use crate::metrics::{Metrics, PinLabels};
use crate::pin::{self, NoPin, PinResult, Pinning, Source, Target};
use crate::policy::Policy;
use crate::resolve::auth::Keyring;
use crate::resolve::secrets::PullSecrets;
use crate::resolve::{Resolver, Scope};
use crate::workload::WorkloadKind;

/// Pins images for /mutate.
#[derive(Debug)]
pub struct Pinner {
    /// The shared resolver and its cache.
    pub resolver: Arc<Resolver>,
    secrets: Option<PullSecrets>,
    registry_config: Keyring,
    concurrency: Semaphore,
    metrics: Arc<Metrics>,
}

impl Pinner {
    /// A pinner; `secrets` is `None` where no Kubernetes API is configured.
    pub fn new(
        resolver: Arc<Resolver>,
        secrets: Option<PullSecrets>,
        registry_config: Keyring,
        concurrency: usize,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            resolver,
            secrets,
            registry_config,
            concurrency: Semaphore::new(concurrency.max(1)),
            metrics,
        }
    }

    /// Pins what the policy allows in the request's object, or `None` when there is nothing to do.
    pub async fn pin(
        &self,
        policy: &Policy,
        req: &AdmissionRequest<DynamicObject>,
        decision: &Decision,
        deadline: Instant,
    ) -> Option<Pinning> {
        if decision.skipped.is_some() {
            return None;
        }
        let kind = WorkloadKind::from_group_kind(&req.kind.group, &req.kind.kind)?;
        let profile = policy.profile_for(&decision.object.namespace)?;
        let object = req.object.as_ref()?;
        let old = match req.operation {
            Operation::Update => req.old_object.as_ref(),
            _ => None,
        };
        let refresh = pin::refresh_requested(&object.metadata, old.map(|o| &o.metadata));
        let targets = match pin::plan(
            profile,
            kind,
            &object.metadata,
            &object.data,
            old.map(|o| &o.data),
            refresh,
        ) {
            Ok(t) if t.is_empty() => return None,
            Ok(t) => t,
            Err(NoPin::Disabled) => return None,
            Err(NoPin::Controlled(owner)) => {
                tracing::debug!(object = %decision.object, owner, "not pinned: controlled by an owner whose template was pinned");
                return None;
            }
        };
        let scope = if targets
            .iter()
            .any(|t| matches!(t.source, Source::Resolve | Source::Refresh))
        {
            Scope {
                keyring: self
                    .keyring(kind, &decision.object.namespace, &object.data)
                    .await,
                allowed: (!profile.allowed_registries.is_empty())
                    .then(|| profile.allowed_registries.clone()),
                stale_if_error: profile.stale_if_error,
            }
        } else {
            Scope::default()
        };
        // Every target concurrently, in this task: a cached digest answers at once, and the
        // misses wait for the registry together (bounded by the semaphore), without a task
        // spawned per image.
        let results = futures_util::future::join_all(targets.iter().map(|target| {
            resolve_one(&self.resolver, target, &scope, &self.concurrency, deadline)
        }))
        .await;
        let results: Vec<(Target, PinResult)> = targets
            .into_iter()
            .zip(results)
            .map(|(t, r)| {
                self.metrics
                    .pins
                    .get_or_create(&PinLabels { result: r.label() })
                    .inc();
                (t, r)
            })
            .collect();
        Some(Pinning {
            results,
            keep_tag: profile.keep_tag,
            on_failure: profile.on_resolve_failure,
        })
    }

    /// Credentials in kubelet order: pod pull secrets, service-account pull secrets, `--registry-config`.
    async fn keyring(&self, kind: WorkloadKind, namespace: &str, object: &Value) -> Keyring {
        let mut keyring = Keyring::default();
        if let Some(secrets) = &self.secrets {
            let spec = crate::workload::pod_spec(kind, object);
            let names: Vec<String> = spec
                .and_then(|s| s.get("imagePullSecrets"))
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|r| r.get("name").and_then(Value::as_str).map(str::to_owned))
                .collect();
            let account = spec
                .and_then(|s| {
                    s.get("serviceAccountName")
                        .or_else(|| s.get("serviceAccount"))
                })
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .unwrap_or("default");
            keyring.extend(secrets.keyring(namespace, &names, account).await);
        }
        keyring.extend(self.registry_config.clone());
        keyring
    }
}

async fn resolve_one(
    resolver: &Resolver,
    target: &Target,
    scope: &Scope,
    permits: &Semaphore,
    deadline: Instant,
) -> PinResult {
    if let Source::Reuse(digest) = &target.source {
        return PinResult::Reused {
            digest: digest.clone(),
        };
    }
    let Ok(_permit) = permits.acquire().await else {
        return PinResult::Failed(crate::resolve::ResolveError::Invalid {
            registry: target.reference.registry().to_owned(),
            detail: "resolver is shutting down".into(),
        });
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    match tokio::time::timeout(
        remaining,
        resolver.resolve(
            &target.reference,
            scope,
            deadline,
            target.source == Source::Refresh,
        ),
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
        Err(_) => PinResult::Failed(crate::resolve::ResolveError::Timeout {
            registry: target.reference.registry().to_owned(),
            seconds: Duration::as_secs_f64(&remaining),
        }),
    }
}
