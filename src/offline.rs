//! Pinning outside the cluster (`pinhook pin`, `pinhook krm`, `pinhook drift`): the webhook's
//! own decision, resolver, credentials and words, applied to objects read from manifests or
//! listed from the API. Nothing here writes; callers apply the edits it returns.

use std::sync::Arc;
use std::time::{Duration, Instant};

use json_patch::jsonptr::PointerBuf;
use serde_json::Value;

use crate::admission::{self, Endpoint, ObjectRef, PinPlan, View};
use crate::answer;
use crate::config::{RegistryArgs, RegistryConfigFileError};
use crate::metrics::Metrics;
use crate::mutate::Pinner;
use crate::pin::{NoPin, PinResult, Source, Target, pinned_reference};
use crate::policy::{Mode, Policy, Profile, Verdict};
use crate::reference::ImageRef;
use crate::resolve::{RegistryConfigError, Resolver};
use crate::workload::{self, ImageField, PullCredentials};

/// The offline engine cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// `--registry-config` is unusable.
    #[error(transparent)]
    RegistryConfig(#[from] RegistryConfigFileError),
    /// `--image-credential-provider-config` or its bin dir is unusable.
    #[error(transparent)]
    CredentialProviders(#[from] crate::resolve::credential_provider::SetupError),
    /// The policy's `registries` list is unusable.
    #[error("{file}: {source}")]
    Registries {
        /// The policy file.
        file: String,
        /// What is wrong.
        source: RegistryConfigError,
    },
}

/// One image string to replace in a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Edit {
    /// JSON pointer to the image field in the object.
    pub pointer: PointerBuf,
    /// How the site is named in messages: `container "web"` or `volume "model"`.
    pub site: String,
    /// The image as written.
    pub from: String,
    /// The pinned reference to write.
    pub to: String,
}

/// An image left alone, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Field path of the image, e.g. `spec.template.spec.containers[0]`.
    pub path: String,
    /// The sentence, in the webhook's words.
    pub message: String,
}

/// What pinning one object would do.
#[derive(Debug, Clone, Default)]
pub struct ObjectPins {
    /// The object.
    pub object: ObjectRef,
    /// The images to rewrite.
    pub edits: Vec<Edit>,
    /// Images the policy denies, in `/validate`'s words (left alone).
    pub denied: Vec<Problem>,
    /// Images that could not be resolved, in `/mutate`'s words (left alone).
    pub unresolved: Vec<Problem>,
    /// Warnings (warn mode findings), in `/mutate`'s words.
    pub warnings: Vec<String>,
}

/// What pinning one image string (a kustomization `images:` entry) gives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageOutcome {
    /// The digest to write.
    Pinned(String),
    /// The policy denies the image (its words).
    Denied(String),
    /// The tag cannot be resolved (the webhook's words).
    Unresolved(String),
    /// Nothing to do: exempt, already pinned, or no tag.
    Unchanged,
}

/// A `name:tag@digest` whose tag now points at another digest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Moved {
    /// The object, e.g. `Deployment shop/web`.
    pub object: String,
    /// The site: `container "web"` or `volume "model"`.
    pub site: String,
    /// Field path, e.g. `spec.template.spec.containers[0]`.
    pub path: String,
    /// The reference as written.
    pub image: String,
    /// `name:tag`.
    pub tag: String,
    /// The digest written.
    pub pinned: String,
    /// The digest the tag points at now.
    pub current: String,
}

/// A `name:tag@digest` that could not be checked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Unchecked {
    /// The object.
    pub object: String,
    /// The site.
    pub site: String,
    /// The reference as written.
    pub image: String,
    /// Why, in `/mutate`'s words.
    pub error: String,
}

/// The drift of one object.
#[derive(Debug, Clone, Default)]
pub struct Drift {
    /// Pinned references whose tag moved.
    pub moved: Vec<Moved>,
    /// Pinned references still current.
    pub current: usize,
    /// Pinned references that could not be checked.
    pub unchecked: Vec<Unchecked>,
}

/// The webhook's engine for manifests: policy, resolver and `--registry-config` credentials.
#[derive(Debug)]
pub struct Offline {
    policy: Policy,
    pinner: Pinner,
    budget: Duration,
}

impl Offline {
    /// The engine for `policy` with the registry flags (`--registry-config`, timeouts).
    pub fn new(policy: Policy, registry: &RegistryArgs) -> Result<Self, OfflineError> {
        let keyring = registry.keyring()?;
        let resolver = Resolver::new(
            policy.registries(),
            &registry.resolver_settings(),
            Arc::new(Metrics::new()),
        )
        .map_err(|source| OfflineError::Registries {
            file: policy.source().to_owned(),
            source,
        })?;
        Ok(Self {
            pinner: Pinner::new(Arc::new(resolver), None, keyring)
                .with_credential_providers(registry.credential_providers(None)?.map(Arc::new)),
            // Each object gets the time of a few registry calls (token, HEAD, a retry).
            budget: registry.registry_timeout * 3,
            policy,
        })
    }

    /// The policy in force.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// What pinning `view` would do, with `/mutate`'s rules; with `refresh`, images already
    /// pinned as `name:tag@digest` are resolved again and updated if the tag moved.
    pub async fn pin(&self, object: ObjectRef, view: View<'_>, refresh: bool) -> ObjectPins {
        let decision = admission::decide(&self.policy, object, view, Endpoint::Manifest);
        let mut out = ObjectPins {
            object: decision.object.clone(),
            denied: match decision.mode {
                Some(Mode::Enforce) => decision
                    .findings
                    .iter()
                    .map(|f| Problem {
                        path: f.path.clone(),
                        message: answer::violation(f),
                    })
                    .collect(),
                _ => Vec::new(),
            },
            warnings: match decision.mode {
                Some(Mode::Warn) => decision
                    .findings
                    .iter()
                    .map(answer::finding_warning)
                    .collect(),
                _ => Vec::new(),
            },
            ..ObjectPins::default()
        };
        let Some(profile) = self.policy.profile_for(&decision.object.namespace) else {
            return out;
        };
        let mut plan = match decision.pin {
            Ok(plan) => plan,
            Err(NoPin::Disabled) => return out,
            Err(_) => empty_plan(profile),
        };
        if refresh {
            plan.targets.extend(pinned_targets(profile, &view));
        }
        if plan.targets.is_empty() {
            return out;
        }
        let results = self.resolve(&mut plan, &out.object.namespace).await;
        for (t, r) in plan.targets.iter().zip(&results) {
            let site = format!("{} {:?}", t.noun, t.container);
            let written = written(&view, &t.pointer).unwrap_or(&t.image);
            match r {
                // In a manifest a tag that cannot be pinned is always reported, whatever
                // onResolveFailure says: nothing is waiting on an admission here.
                PinResult::Failed(e) => out.unresolved.push(Problem {
                    path: t.path.clone(),
                    message: answer::unresolved(t, e),
                }),
                r => {
                    let digest = r.digest().unwrap_or_default();
                    let to = pinned_reference(&t.image, digest, plan.keep_tag);
                    if to != written {
                        out.edits.push(Edit {
                            pointer: t.pointer.clone(),
                            site,
                            from: written.to_owned(),
                            to,
                        });
                    }
                }
            }
        }
        out
    }

    /// Every reference of `view` pinned as `name:tag@digest` whose tag now points elsewhere.
    pub async fn drift(&self, object: &ObjectRef, view: View<'_>) -> Drift {
        let mut drift = Drift::default();
        let Some(profile) = self.policy.profile_for(&object.namespace) else {
            return drift;
        };
        let mut plan = empty_plan(profile);
        plan.targets = pinned_targets(profile, &view);
        if plan.targets.is_empty() {
            return drift;
        }
        let results = self.resolve(&mut plan, &object.namespace).await;
        for (t, r) in plan.targets.iter().zip(&results) {
            let site = format!("{} {:?}", t.noun, t.container);
            let written = written(&view, &t.pointer).unwrap_or(&t.image).to_owned();
            let pinned = written
                .rsplit_once('@')
                .map(|(_, d)| d.to_owned())
                .unwrap_or_default();
            match r.digest() {
                Some(current) if current == pinned => drift.current += 1,
                Some(current) => drift.moved.push(Moved {
                    object: object.to_string(),
                    site,
                    path: t.path.clone(),
                    image: written,
                    tag: t.image.clone(),
                    pinned,
                    current: current.to_owned(),
                }),
                None => drift.unchecked.push(Unchecked {
                    object: object.to_string(),
                    site,
                    image: written,
                    error: match r {
                        PinResult::Failed(e) => e.to_string(),
                        _ => String::new(),
                    },
                }),
            }
        }
        drift
    }

    /// Pins `image`, named `name` at `path` in messages (e.g. a kustomization's `images[0]`),
    /// under the policy of `namespace`; with `fresh`, not from the cache.
    pub async fn pin_image(
        &self,
        name: &str,
        path: &str,
        image: &str,
        namespace: &str,
        fresh: bool,
    ) -> ImageOutcome {
        let Some(profile) = self.policy.profile_for(namespace) else {
            return ImageOutcome::Unchanged;
        };
        let (accepted, rejected) = match profile.judge(image) {
            Verdict::Accepted(r) => (Some(r), None),
            Verdict::Rejected(reason) => (None, Some(reason)),
            Verdict::Exempt => return ImageOutcome::Unchanged,
        };
        let Some(reference) =
            crate::pin::candidate(profile.mode, accepted, rejected.as_ref(), image)
        else {
            return match (rejected, profile.mode) {
                (Some(reason), Mode::Enforce) => ImageOutcome::Denied(format!(
                    "image {name:?} ({path}): {}",
                    reason.describe(image)
                )),
                _ => ImageOutcome::Unchanged,
            };
        };
        let target = Target {
            container: name.to_owned(),
            noun: "image",
            path: path.to_owned(),
            pointer: PointerBuf::new(),
            image: image.to_owned(),
            reference,
            source: if fresh {
                Source::Refresh
            } else {
                Source::Resolve
            },
        };
        let mut plan = empty_plan(profile);
        plan.targets.push(target);
        let results = self.resolve(&mut plan, namespace).await;
        match results.first() {
            Some(PinResult::Failed(e)) => {
                ImageOutcome::Unresolved(answer::unresolved(&plan.targets[0], e))
            }
            Some(r) => r.digest().map_or(ImageOutcome::Unchanged, |d| {
                ImageOutcome::Pinned(d.to_owned())
            }),
            None => ImageOutcome::Unchanged,
        }
    }

    /// Resolves `plan`'s targets within the engine's budget.
    async fn resolve(&self, plan: &mut PinPlan, namespace: &str) -> Vec<PinResult> {
        if plan.needs_registry()
            && plan.allowed_registries.is_none()
            && let Some(profile) = self.policy.profile_for(namespace)
        {
            plan.allowed_registries = (!profile.allowed_registries.is_empty())
                .then(|| profile.allowed_registries.clone());
        }
        self.pinner
            .pin(plan, namespace, Instant::now() + self.budget)
            .await
    }
}

/// A plan with no targets yet, with `profile`'s settings.
fn empty_plan(profile: &Profile) -> PinPlan {
    PinPlan {
        targets: Vec::new(),
        credentials: PullCredentials::default(),
        allowed_registries: None,
        stale_if_error: profile.stale_if_error,
        keep_tag: profile.keep_tag,
        on_failure: profile.on_resolve_failure,
    }
}

/// The image as written at `pointer` in the object.
fn written<'v>(view: &View<'v>, pointer: &PointerBuf) -> Option<&'v str> {
    view.body.pointer(pointer.as_str()).and_then(Value::as_str)
}

/// A target per `name:tag@digest` the policy accepts, to resolve `name:tag` again (the
/// target's `image` is `name:tag`).
fn pinned_targets(profile: &Profile, view: &View<'_>) -> Vec<Target> {
    let mut out = Vec::new();
    for site in workload::containers(view.kind, view.body) {
        let ImageField::Str(image) = site.image else {
            continue;
        };
        let Verdict::Accepted(reference) = profile.judge(image) else {
            continue;
        };
        if !reference.is_pinned() || reference.tag().is_none() {
            continue;
        }
        let Some((name_tag, _)) = image.rsplit_once('@') else {
            continue;
        };
        let Ok(tagged) = ImageRef::parse(name_tag) else {
            continue;
        };
        out.push(Target {
            container: site.name.to_owned(),
            noun: site.noun(),
            path: site.path(),
            pointer: site.pointer(),
            image: name_tag.to_owned(),
            reference: tagged,
            source: Source::Refresh,
        });
    }
    out
}
