//! The pinning rules, as data: which images of an object `/mutate` rewrites to digests, where
//! each digest comes from, and what happened to each. The words are written by
//! [`answer`](crate::answer); the one pass that applies these rules is
//! [`admission`](crate::admission).
//!
//! Rules that prevent surprise rollouts and controller storms:
//! - an image string identical to the one in `oldObject` is never re-resolved;
//! - on update, `name:tag` whose old value was `name:tag@digest` keeps that digest, unless the
//!   object's [`REFRESH_ANNOTATION`] changed in this request;
//! - an object (other than a Pod) controlled by another (`ownerReferences[].controller`) is never
//!   mutated: its owner's template was pinned when the owner was admitted, and a controller that
//!   finds its child different from its template creates another child, and another.

use std::time::Duration;

use json_patch::jsonptr::PointerBuf;
use kube::core::ObjectMeta;

use crate::policy::{Mode, Reason};
use crate::reference::ImageRef;
use crate::resolve::ResolveError;
use crate::workload::WorkloadKind;

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
    pub pointer: PointerBuf,
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
    /// Asked on `/validate`, or the request was not judged.
    NotRequested,
    /// The request is denied anyway.
    Denied,
    /// No image needs a digest (all pinned, untagged, unchanged or exempt).
    Nothing,
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

/// The reference to pin for an image judged `verdict`-wise: an accepted reference, or in warn
/// and audit modes a tag the policy only warns about (it is still frozen to what it is now).
pub fn candidate(
    mode: Mode,
    accepted: Option<ImageRef>,
    rejected: Option<&Reason>,
    image: &str,
) -> Option<ImageRef> {
    let reference = match (accepted, rejected) {
        (Some(r), _) => r,
        (
            None,
            Some(Reason::MutableTag(_) | Reason::PartialVersion(_) | Reason::TagNotAllowed { .. }),
        ) if mode != Mode::Enforce => ImageRef::parse(image).ok()?,
        _ => return None,
    };
    (!reference.is_pinned() && reference.tag().is_some()).then_some(reference)
}

/// Where the digest of `image` comes from, given what its site held before (`None` when new),
/// or `None` when it must be left alone.
pub fn source(
    image: &str,
    before: Option<&str>,
    refresh: bool,
    kind: WorkloadKind,
) -> Option<Source> {
    Some(match before {
        // A Job's template is immutable: touching an unchanged image would fail the update.
        Some(b) if b == image && (!refresh || kind == WorkloadKind::Job) => return None,
        Some(b) if !refresh => match b.split_once('@') {
            Some((name_tag, digest)) if name_tag == image => Source::Reuse(digest.to_owned()),
            _ => Source::Resolve,
        },
        _ if refresh => Source::Refresh,
        _ => Source::Resolve,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

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

    #[test]
    fn an_unchanged_image_is_left_alone_unless_refreshed_and_never_in_a_job() {
        let image = "shop/web:1.4.2";
        assert_eq!(
            source(image, Some(image), false, WorkloadKind::Deployment),
            None
        );
        assert_eq!(
            source(image, Some(image), true, WorkloadKind::Deployment),
            Some(Source::Refresh)
        );
        assert_eq!(source(image, Some(image), true, WorkloadKind::Job), None);
        let before = format!("{image}@{D}");
        assert_eq!(
            source(image, Some(&before), false, WorkloadKind::Deployment),
            Some(Source::Reuse(D.into()))
        );
        assert_eq!(
            source(image, None, false, WorkloadKind::Pod),
            Some(Source::Resolve)
        );
    }

    #[test]
    fn warn_mode_freezes_a_mutable_tag_and_enforce_mode_does_not() {
        let latest = Reason::MutableTag("latest".into());
        assert!(candidate(Mode::Warn, None, Some(&latest), "nginx:latest").is_some());
        assert!(candidate(Mode::Enforce, None, Some(&latest), "nginx:latest").is_none());
        let pinned = ImageRef::parse(&format!("nginx:1.27@{D}")).unwrap();
        assert!(candidate(Mode::Enforce, Some(pinned), None, "").is_none());
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
