//! Pinning, as data: which images of an object `/mutate` rewrites to digests (and which it must
//! leave alone), and the JSON Patch, warnings and audit annotations that carry the result.
//!
//! Rules that prevent surprise rollouts and controller storms:
//! - an image string identical to the one in `oldObject` is never re-resolved;
//! - on update, `name:tag` whose old value was `name:tag@digest` keeps that digest, unless the
//!   object's [`REFRESH_ANNOTATION`] changed in this request;
//! - an object (other than a Pod) controlled by another (`ownerReferences[].controller`) is never
//!   mutated: its owner's template was pinned when the owner was admitted, and a controller that
//!   finds its child different from its template creates another child, and another.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use json_patch::jsonptr::PointerBuf;
use json_patch::{Patch, PatchOperation, ReplaceOperation, TestOperation};
use kube::core::ObjectMeta;
use serde_json::Value;

use crate::admission::WARNING_MAX_CHARS;
use crate::policy::{Mode, OnResolveFailure, Profile, Reason, Verdict};
use crate::reference::ImageRef;
use crate::resolve::ResolveError;
use crate::workload::{self, ImageField, Section, WorkloadKind};

/// Changing this annotation's value forces fresh resolution of every tag in the object.
pub const REFRESH_ANNOTATION: &str = "pinhook.dev/refresh";

/// How a target gets its digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Ask the registry (or the cache).
    Resolve,
    /// Ask the registry, not the cache: `pinhook.dev/refresh` changed.
    Refresh,
    /// Keep the digest `oldObject` already had for the same `name:tag`.
    Reuse(String),
}

/// One image /mutate will pin.
#[derive(Debug, Clone)]
pub struct Target {
    /// Container (or image volume) name.
    pub container: String,
    /// `container` or `volume`.
    pub noun: &'static str,
    /// Field path, e.g. `spec.containers[0]`.
    pub path: String,
    /// JSON pointer to the image field.
    pub pointer: String,
    /// The image as written.
    pub image: String,
    /// Parsed reference.
    pub reference: ImageRef,
    /// Where its digest comes from.
    pub source: Source,
}

/// Why an object gets no pinning at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoPin {
    /// `pin: false` in the policy.
    Disabled,
    /// Controlled by another object, whose template was pinned instead (owner kind/name).
    Controlled(String),
}

/// The controller owner of `meta`, as `Kind/name`, if any.
pub fn controller_of(meta: &ObjectMeta) -> Option<String> {
    meta.owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| format!("{}/{}", o.kind, o.name))
}

/// True when the refresh annotation is set and differs from the old object's.
pub fn refresh_requested(meta: &ObjectMeta, old: Option<&ObjectMeta>) -> bool {
    let get = |m: &ObjectMeta| {
        m.annotations
            .as_ref()
            .and_then(|a| a.get(REFRESH_ANNOTATION))
            .cloned()
    };
    match (get(meta), old.map(get)) {
        (Some(new), Some(old)) => Some(new) != old,
        (Some(_), None) => old.is_some(),
        _ => false,
    }
}

/// The images of `object` to pin under `profile`, or why none are.
pub fn plan(
    profile: &Profile,
    kind: WorkloadKind,
    meta: &ObjectMeta,
    object: &Value,
    old: Option<&Value>,
    refresh: bool,
) -> Result<Vec<Target>, NoPin> {
    if !profile.pin {
        return Err(NoPin::Disabled);
    }
    if kind != WorkloadKind::Pod
        && let Some(owner) = controller_of(meta)
    {
        return Err(NoPin::Controlled(owner));
    }
    let old_images: HashMap<(Section, &str), &str> = old
        .map(|o| workload::containers(kind, o))
        .unwrap_or_default()
        .into_iter()
        .filter_map(|c| match c.image {
            ImageField::Str(s) => Some(((c.section, c.name), s)),
            _ => None,
        })
        .collect();
    let mut targets = Vec::new();
    for c in workload::containers(kind, object) {
        let ImageField::Str(image) = c.image else {
            continue;
        };
        let reference = match profile.judge(image) {
            Verdict::Accepted(r) => r,
            // In warn and audit modes an allowed mutable tag is still frozen to what it is now.
            Verdict::Rejected(
                Reason::MutableTag(_) | Reason::PartialVersion(_) | Reason::TagNotAllowed { .. },
            ) if profile.mode != Mode::Enforce => match ImageRef::parse(image) {
                Ok(r) => r,
                Err(_) => continue,
            },
            _ => continue,
        };
        if reference.is_pinned() || reference.tag().is_none() {
            continue;
        }
        let before = old_images.get(&(c.section, c.name)).copied();
        let source = match before {
            // A Job's template is immutable: touching an unchanged image would fail the update.
            Some(b) if b == image && (!refresh || kind == WorkloadKind::Job) => continue,
            Some(b) if !refresh => match b.split_once('@') {
                Some((name_tag, digest)) if name_tag == image => Source::Reuse(digest.to_owned()),
                _ => Source::Resolve,
            },
            _ if refresh => Source::Refresh,
            _ => Source::Resolve,
        };
        targets.push(Target {
            container: c.name.to_owned(),
            noun: c.noun(),
            path: c.path(),
            pointer: c.pointer(),
            image: image.to_owned(),
            reference,
            source,
        });
    }
    Ok(targets)
}

/// `name:tag@digest` (keeping the user's spelling) or `name@digest`.
pub fn pinned_reference(image: &str, digest: &str, keep_tag: bool) -> String {
    if keep_tag {
        let mut s = String::with_capacity(image.len() + 1 + digest.len());
        s.push_str(image);
        s.push('@');
        s.push_str(digest);
        return s;
    }
    let (prefix, last) = image.rsplit_once('/').map_or(("", image), |(p, l)| (p, l));
    let name = last.split_once(':').map_or(last, |(n, _)| n);
    if prefix.is_empty() {
        format!("{name}@{digest}")
    } else {
        format!("{prefix}/{name}@{digest}")
    }
}

/// What happened to one target.
#[derive(Debug, Clone, PartialEq)]
pub enum PinResult {
    /// Resolved now (or from the cache).
    Pinned {
        /// The digest.
        digest: String,
    },
    /// Kept the digest of the old object.
    Reused {
        /// The digest.
        digest: String,
    },
    /// The registry is down; a recent digest was served.
    Stale {
        /// The digest.
        digest: String,
        /// Its age.
        age: Duration,
    },
    /// Resolution failed.
    Failed(ResolveError),
}

impl PinResult {
    /// The digest written, if any.
    pub fn digest(&self) -> Option<&str> {
        match self {
            PinResult::Pinned { digest }
            | PinResult::Reused { digest }
            | PinResult::Stale { digest, .. } => Some(digest),
            PinResult::Failed(_) => None,
        }
    }

    /// Label for metrics and audit records.
    pub fn label(&self) -> &'static str {
        match self {
            PinResult::Pinned { .. } => "pinned",
            PinResult::Reused { .. } => "reused",
            PinResult::Stale { .. } => "stale",
            PinResult::Failed(_) => "failed",
        }
    }
}

/// The outcome of pinning one object: each target with its result.
#[derive(Debug, Clone)]
pub struct Pinning {
    /// Targets and results, in container order.
    pub results: Vec<(Target, PinResult)>,
    /// `keepTag` of the profile.
    pub keep_tag: bool,
    /// `onResolveFailure` of the profile.
    pub on_failure: OnResolveFailure,
}

impl Pinning {
    /// Failures that deny the request: a missing tag always, others when `onResolveFailure: deny`.
    pub fn denials(&self) -> Vec<String> {
        self.results
            .iter()
            .filter_map(|(t, r)| match r {
                PinResult::Failed(e @ ResolveError::NotFound { .. }) => Some((t, e)),
                PinResult::Failed(e) if self.on_failure == OnResolveFailure::Deny => Some((t, e)),
                _ => None,
            })
            .map(|(t, e)| {
                format!(
                    "{} {:?} ({}): cannot pin image {:?}: {e}; {}",
                    t.noun,
                    t.container,
                    t.path,
                    t.image,
                    hint(e)
                )
            })
            .collect()
    }

    /// The references written, per target that got a digest.
    pub fn rewritten(&self) -> Vec<(&Target, &PinResult, String)> {
        self.results
            .iter()
            .filter_map(|(t, r)| {
                r.digest()
                    .map(|d| (t, r, pinned_reference(&t.image, d, self.keep_tag)))
            })
            .collect()
    }

    /// Targets left unpinned under `onResolveFailure: allow`.
    pub fn unpinned(&self) -> Vec<(&Target, &ResolveError)> {
        self.results
            .iter()
            .filter_map(|(t, r)| match r {
                PinResult::Failed(e)
                    if !matches!(e, ResolveError::NotFound { .. })
                        && self.on_failure == OnResolveFailure::Allow =>
                {
                    Some((t, e))
                }
                _ => None,
            })
            .collect()
    }

    /// A JSON Patch with a `test` before each `replace`, touching only image fields.
    pub fn patch(&self) -> Patch {
        let mut ops = Vec::new();
        for (t, _, pinned) in self.rewritten() {
            let path = PointerBuf::parse(&t.pointer).unwrap_or_default();
            ops.push(PatchOperation::Test(TestOperation {
                path: path.clone(),
                value: Value::String(t.image.clone()),
            }));
            ops.push(PatchOperation::Replace(ReplaceOperation {
                path,
                value: Value::String(pinned),
            }));
        }
        Patch(ops)
    }

    /// One warning per pinned, stale or unpinned image, each under 120 characters.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (t, r, _) in self.rewritten() {
            let digest = r.digest().unwrap_or_default();
            let short = &digest[..digest.len().min(19)];
            let line = match r {
                // The age first: a long image name must not push it past the truncation.
                PinResult::Stale { age, .. } => format!(
                    "pinhook: {} {:?}: registry unreachable, digest resolved {} ago: {} pinned to {short}…",
                    t.noun,
                    t.container,
                    human(*age),
                    t.image
                ),
                PinResult::Reused { .. } => format!(
                    "pinhook: {} {:?}: {} kept its digest {short}…",
                    t.noun, t.container, t.image
                ),
                _ => format!(
                    "pinhook: {} {:?}: {} pinned to {short}…",
                    t.noun, t.container, t.image
                ),
            };
            out.push(truncate(line));
        }
        for (t, e) in self.unpinned() {
            out.push(truncate(format!(
                "pinhook: {} {:?}: {} left unpinned: {}",
                t.noun,
                t.container,
                t.image,
                e.metric_label()
            )));
        }
        out
    }

    /// Audit annotations: `pinned-images` (original → pinned) and `unpinned-images`.
    pub fn audit_annotations(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        let pinned: Vec<String> = self
            .rewritten()
            .iter()
            .map(|(t, _, p)| {
                let site = crate::workload::label(t.noun, &t.container);
                format!("{site}: {} → {p}", t.image)
            })
            .collect();
        if !pinned.is_empty() {
            out.insert("pinned-images".to_owned(), pinned.join(", "));
        }
        let unpinned: Vec<String> = self
            .unpinned()
            .iter()
            .map(|(t, e)| {
                let site = crate::workload::label(t.noun, &t.container);
                format!("{site}: {} ({e})", t.image)
            })
            .collect();
        if !unpinned.is_empty() {
            out.insert("unpinned-images".to_owned(), unpinned.join(", "));
        }
        out
    }
}

fn truncate(s: String) -> String {
    if s.chars().count() <= WARNING_MAX_CHARS {
        s
    } else {
        let mut t: String = s.chars().take(WARNING_MAX_CHARS - 1).collect();
        t.push('…');
        t
    }
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// What a developer can do about a resolution error.
fn hint(e: &ResolveError) -> &'static str {
    match e {
        ResolveError::NotFound { .. } => "push the tag or correct the image name",
        ResolveError::Unauthorized { .. } => "add an imagePullSecret that can pull this image",
        ResolveError::RateLimited { .. } => "retry later, or configure a mirror or credentials",
        ResolveError::Timeout { .. }
        | ResolveError::Connect { .. }
        | ResolveError::Status { .. } => {
            "retry when the registry is reachable, or pin the image by digest yourself"
        }
        ResolveError::Tls { .. } => {
            "give the registry's CA as caFile in the policy's registries list"
        }
        ResolveError::Forbidden { .. } => "use an allowed registry",
        ResolveError::Invalid { .. }
        | ResolveError::ShuttingDown { .. }
        | ResolveError::NoCachedAnswer { .. }
        | ResolveError::NoEndpoint { .. } => "pin the image by digest yourself",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;
    use serde_json::json;

    const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn deployment(images: &[&str]) -> Value {
        let cs: Vec<Value> = images
            .iter()
            .enumerate()
            .map(|(i, im)| json!({"name": format!("c{i}"), "image": im}))
            .collect();
        json!({"spec": {"template": {"spec": {"containers": cs}}}})
    }

    fn targets(
        profile_yaml: &str,
        kind: WorkloadKind,
        meta: &ObjectMeta,
        new: &Value,
        old: Option<&Value>,
        refresh: bool,
    ) -> Result<Vec<Target>, NoPin> {
        let p = Policy::from_yaml(profile_yaml, "t").unwrap();
        plan(
            p.profile_for("shop").unwrap(),
            kind,
            meta,
            new,
            old,
            refresh,
        )
    }

    #[test]
    fn tags_are_planned_digests_and_untagged_are_not() {
        let obj = deployment(&["nginx:1.27.3", &format!("redis:7@{D}"), "busybox:1.36.1"]);
        let t = targets(
            "# defaults",
            WorkloadKind::Deployment,
            &ObjectMeta::default(),
            &obj,
            None,
            false,
        )
        .unwrap();
        assert_eq!(
            t.iter().map(|t| t.image.as_str()).collect::<Vec<_>>(),
            ["nginx:1.27.3", "busybox:1.36.1"]
        );
        assert_eq!(t[0].pointer, "/spec/template/spec/containers/0/image");
        assert!(t.iter().all(|t| t.source == Source::Resolve));
    }

    #[test]
    fn identical_string_is_never_re_resolved() {
        let old = deployment(&["nginx:1.27.3"]);
        let t = targets(
            "# defaults",
            WorkloadKind::Deployment,
            &ObjectMeta::default(),
            &old.clone(),
            Some(&old),
            false,
        )
        .unwrap();
        assert!(t.is_empty());
    }

    #[test]
    fn update_reuses_the_old_digest_for_the_same_tag() {
        let old = deployment(&[&format!("shop/web:1.4.2@{D}")]);
        let new = deployment(&["shop/web:1.4.2"]);
        let t = targets(
            "# defaults",
            WorkloadKind::Deployment,
            &ObjectMeta::default(),
            &new,
            Some(&old),
            false,
        )
        .unwrap();
        assert_eq!(t[0].source, Source::Reuse(D.into()));
    }

    #[test]
    fn an_image_volume_keeps_its_old_digest_and_a_container_of_the_same_name_does_not_share_it() {
        let with_volume = |volume: &str, container: &str| {
            json!({"spec": {"template": {"spec": {
                "containers": [{"name": "model", "image": container}],
                "volumes": [{"name": "model", "image": {"reference": volume}}]
            }}}})
        };
        let old = with_volume(&format!("acme/model:7@{D}"), "acme/server:1.0.0");
        let new = with_volume("acme/model:7", "acme/model:7");
        let t = targets(
            "# defaults",
            WorkloadKind::Deployment,
            &ObjectMeta::default(),
            &new,
            Some(&old),
            false,
        )
        .unwrap();
        let by_pointer = |p: &str| t.iter().find(|t| t.pointer == p).unwrap();
        let volume = by_pointer("/spec/template/spec/volumes/0/image/reference");
        assert_eq!(
            (volume.noun, &volume.source),
            ("volume", &Source::Reuse(D.into()))
        );
        let container = by_pointer("/spec/template/spec/containers/0/image");
        assert_eq!(container.source, Source::Resolve);
    }

    #[test]
    fn refresh_resolves_again() {
        let old = deployment(&[&format!("shop/web:1.4.2@{D}"), "shop/api:2.0.0"]);
        let new = deployment(&["shop/web:1.4.2", "shop/api:2.0.0"]);
        let t = targets(
            "# defaults",
            WorkloadKind::Deployment,
            &ObjectMeta::default(),
            &new,
            Some(&old),
            true,
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert!(t.iter().all(|t| t.source == Source::Refresh));
    }

    #[test]
    fn refresh_never_touches_an_unchanged_job_image() {
        let old = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x:1.0.0"}]}}}});
        let t = targets(
            "# defaults",
            WorkloadKind::Job,
            &ObjectMeta::default(),
            &old.clone(),
            Some(&old),
            true,
        )
        .unwrap();
        assert!(t.is_empty());
    }

    #[test]
    fn controlled_workloads_are_not_pinned_but_pods_are() {
        let meta: ObjectMeta = serde_json::from_value(json!({"ownerReferences": [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web", "uid": "u", "controller": true}]})).unwrap();
        let obj = deployment(&["nginx:1.27.3"]);
        assert_eq!(
            targets(
                "# defaults",
                WorkloadKind::ReplicaSet,
                &meta,
                &obj,
                None,
                false
            )
            .unwrap_err(),
            NoPin::Controlled("Deployment/web".into())
        );
        let pod = json!({"spec": {"containers": [{"name": "a", "image": "nginx:1.27.3"}]}});
        assert_eq!(
            targets("# defaults", WorkloadKind::Pod, &meta, &pod, None, false)
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn non_controller_owner_does_not_stop_pinning() {
        let meta: ObjectMeta = serde_json::from_value(json!({"ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "x", "uid": "u"}]})).unwrap();
        assert_eq!(
            targets(
                "# defaults",
                WorkloadKind::Job,
                &meta,
                &deployment(&["a:1.0.0"]),
                None,
                false
            )
            .unwrap()
            .len(),
            1
        );
    }

    #[test]
    fn pin_false_disables() {
        assert_eq!(
            targets(
                "pin: false",
                WorkloadKind::Deployment,
                &ObjectMeta::default(),
                &deployment(&["a:1.0.0"]),
                None,
                false
            )
            .unwrap_err(),
            NoPin::Disabled
        );
    }

    #[test]
    fn warn_mode_pins_mutable_tags_too() {
        let t = targets(
            "mode: warn",
            WorkloadKind::Deployment,
            &ObjectMeta::default(),
            &deployment(&["nginx:latest", "nginx"]),
            None,
            false,
        )
        .unwrap();
        assert_eq!(
            t.iter().map(|t| t.image.as_str()).collect::<Vec<_>>(),
            ["nginx:latest"]
        );
    }

    #[test]
    fn pinned_reference_keeps_spelling() {
        assert_eq!(
            pinned_reference("nginx:1.27", D, true),
            format!("nginx:1.27@{D}")
        );
        assert_eq!(
            pinned_reference("nginx:1.27", D, false),
            format!("nginx@{D}")
        );
        assert_eq!(
            pinned_reference("127.0.0.1:5000/shop/web:1.4.2", D, false),
            format!("127.0.0.1:5000/shop/web@{D}")
        );
        assert_eq!(
            pinned_reference("localhost:5000/web:1", D, false),
            format!("localhost:5000/web@{D}")
        );
    }

    fn pinning(results: Vec<PinResult>, on_failure: OnResolveFailure) -> Pinning {
        let results = results
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                (
                    Target {
                        container: format!("c{i}"),
                        noun: "container",
                        path: format!("spec.containers[{i}]"),
                        pointer: format!("/spec/containers/{i}/image"),
                        image: format!("shop/app{i}:1.0.0"),
                        reference: ImageRef::parse(&format!("shop/app{i}:1.0.0")).unwrap(),
                        source: Source::Resolve,
                    },
                    r,
                )
            })
            .collect();
        Pinning {
            results,
            keep_tag: true,
            on_failure,
        }
    }

    #[test]
    fn patch_tests_then_replaces_and_applies() {
        let p = pinning(
            vec![
                PinResult::Pinned { digest: D.into() },
                PinResult::Reused { digest: D.into() },
            ],
            OnResolveFailure::Deny,
        );
        let mut doc = json!({"spec": {"containers": [{"name": "c0", "image": "shop/app0:1.0.0"}, {"name": "c1", "image": "shop/app1:1.0.0"}]}});
        let patch = p.patch();
        let ops = serde_json::to_value(&patch).unwrap();
        assert_eq!(
            ops[0],
            json!({"op": "test", "path": "/spec/containers/0/image", "value": "shop/app0:1.0.0"})
        );
        assert_eq!(
            ops[1],
            json!({"op": "replace", "path": "/spec/containers/0/image", "value": format!("shop/app0:1.0.0@{D}")})
        );
        json_patch::patch(&mut doc, &patch).unwrap();
        assert_eq!(
            doc["spec"]["containers"][1]["image"],
            format!("shop/app1:1.0.0@{D}")
        );
    }

    #[test]
    fn not_found_always_denies_other_failures_follow_policy() {
        let nf = ResolveError::NotFound {
            registry: "r".into(),
            repository: "shop/app0".into(),
            tag: "1.0.0".into(),
        };
        let down = ResolveError::Timeout {
            registry: "r".into(),
            seconds: 1.0,
        };
        let p = pinning(
            vec![
                PinResult::Failed(nf.clone()),
                PinResult::Failed(down.clone()),
            ],
            OnResolveFailure::Allow,
        );
        let d = p.denials();
        assert_eq!(d.len(), 1);
        assert_eq!(
            d[0],
            r#"container "c0" (spec.containers[0]): cannot pin image "shop/app0:1.0.0": tag "1.0.0" not found in r/shop/app0; push the tag or correct the image name"#
        );
        assert_eq!(p.unpinned().len(), 1);
        assert!(p.audit_annotations()["unpinned-images"].contains("did not answer"));
        let p = pinning(vec![PinResult::Failed(down)], OnResolveFailure::Deny);
        assert!(p.denials()[0].contains("registry r did not answer within 1.0s"));
    }

    #[test]
    fn warnings_stay_short_and_say_what_happened() {
        let p = pinning(
            vec![
                PinResult::Pinned { digest: D.into() },
                PinResult::Stale {
                    digest: D.into(),
                    age: Duration::from_secs(720),
                },
            ],
            OnResolveFailure::Deny,
        );
        let w = p.warnings();
        assert_eq!(
            w[0],
            r#"pinhook: container "c0": shop/app0:1.0.0 pinned to sha256:111111111111…"#
        );
        assert!(w[1].contains("resolved 12m0s ago"), "{}", w[1]);
        assert!(w.iter().all(|w| w.chars().count() <= WARNING_MAX_CHARS));
        assert_eq!(
            p.audit_annotations()["pinned-images"],
            format!(
                "c0: shop/app0:1.0.0 → shop/app0:1.0.0@{D}, c1: shop/app1:1.0.0 → shop/app1:1.0.0@{D}"
            )
        );
    }

    #[test]
    fn refresh_needs_a_changed_annotation() {
        let with = |v: &str| -> ObjectMeta {
            serde_json::from_value(json!({"annotations": {REFRESH_ANNOTATION: v}})).unwrap()
        };
        assert!(refresh_requested(&with("2"), Some(&with("1"))));
        assert!(!refresh_requested(&with("1"), Some(&with("1"))));
        assert!(refresh_requested(&with("1"), Some(&ObjectMeta::default())));
        assert!(!refresh_requested(&with("1"), None));
    }
}
