//! One pass over a request: read it once into a [`View`], judge each image site once, and
//! record the [`Decision`]: which images break the policy and which `/mutate` must resolve.
//! Pure; the answer's words are written by [`answer`](crate::answer).
//!
//! Contract: <https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/>

use std::fmt;
use std::time::Duration;

use json_patch::jsonptr::PointerBuf;
use kube::core::admission::{AdmissionRequest, Operation};
use kube::core::{DynamicObject, ObjectMeta};
use serde_json::Value;

use crate::answer::TEXT_MAX_CHARS;
use crate::patterns::Patterns;
use crate::pin::{self, NoPin, Source, Target};
use crate::policy::{Mode, OnResolveFailure, Policy, Profile, Reason, Verdict};
use crate::text::shown;
use crate::workload::{
    self, Before, ContainerImage, ImageField, Manifest, PullCredentials, WorkloadKind,
};

/// The webhook endpoint that asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Endpoint {
    /// `/validate`: judge only.
    Validate,
    /// `/mutate`: judge, then pin what is allowed.
    Mutate,
    /// `pinhook pin` and `pinhook krm`: judge a manifest and pin what the policy allows; images
    /// it denies are reported and left alone, and the others are still pinned.
    Manifest,
}

impl Endpoint {
    /// `validate` or `mutate`, as in metrics and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Endpoint::Validate => "validate",
            Endpoint::Mutate => "mutate",
            Endpoint::Manifest => "manifest",
        }
    }
}

/// The object a request is about, for messages and audit records.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectRef {
    /// The kind, e.g. `Deployment`.
    pub kind: String,
    /// The namespace (empty for cluster-scoped requests).
    pub namespace: String,
    /// `metadata.name` (empty when the server will generate it).
    pub name: String,
    /// `metadata.generateName`, when set.
    pub generate_name: String,
}

/// Every part is request-supplied: shown clipped to [`TEXT_MAX_CHARS`] with control characters
/// escaped, so the name of an object cannot add a line to a denial or a log.
impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |s: &str| shown(s, TEXT_MAX_CHARS).into_owned();
        let name = if self.name.is_empty() && !self.generate_name.is_empty() {
            format!("{}*", show(&self.generate_name))
        } else {
            show(&self.name)
        };
        if self.namespace.is_empty() {
            write!(f, "{} {}", show(&self.kind), name)
        } else {
            write!(f, "{} {}/{}", show(&self.kind), show(&self.namespace), name)
        }
    }
}

/// One container (or image volume) whose image breaks the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The container's (or image volume's) name.
    pub container: String,
    /// `container` or `volume`.
    pub noun: &'static str,
    /// Field path for people, e.g. `spec.template.spec.containers[0]`.
    pub path: String,
    /// JSON pointer to the image field.
    pub pointer: PointerBuf,
    /// The image string as written.
    pub image: String,
    /// Why it is not acceptable.
    pub reason: Reason,
}

impl Finding {
    fn new(c: &ContainerImage<'_>, image: &str, reason: Reason) -> Self {
        Self {
            container: c.name.to_owned(),
            noun: c.noun(),
            path: c.path(),
            pointer: c.pointer(),
            image: image.to_owned(),
            reason,
        }
    }
}

/// Why a request was let through without judging its images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Not a kind that carries a pod spec.
    UnknownKind,
    /// `DELETE` or `CONNECT`.
    Operation,
    /// A subresource other than `ephemeralcontainers` (e.g. `status`).
    Subresource,
    /// The namespace is exempt.
    ExemptNamespace,
    /// No object in the request.
    NoObject,
}

/// The outcome of a decision, as reported in metrics and the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Allowed with nothing to report.
    Allowed,
    /// Denied (enforce mode).
    Denied,
    /// Allowed with warnings (warn mode).
    Warned,
    /// Allowed, recorded only (audit mode).
    Audited,
}

impl Outcome {
    /// Lowercase label, e.g. `denied`.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Warned => "warned",
            Outcome::Audited => "audited",
        }
    }
}

/// A request (or manifest) read once: what it is about, and the objects to judge.
#[derive(Debug, Clone, Copy)]
pub struct View<'r> {
    /// The workload kind.
    pub kind: WorkloadKind,
    /// The new object.
    pub body: &'r Value,
    /// The new object's metadata, where it was read apart from the body.
    pub meta: Option<&'r ObjectMeta>,
    /// The old object, on update.
    pub old: Option<&'r Value>,
    /// The old object's metadata, on update.
    pub old_meta: Option<&'r ObjectMeta>,
}

/// A request that is not judged, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// The object concerned.
    pub object: ObjectRef,
    /// Why.
    pub skip: Skip,
}

impl<'r> View<'r> {
    /// Reads an admission request, or says why it is not judged.
    pub fn of_request(
        req: &'r AdmissionRequest<DynamicObject>,
    ) -> (ObjectRef, Result<View<'r>, Skip>) {
        let object_meta = req
            .object
            .as_ref()
            .or(req.old_object.as_ref())
            .map(|o| &o.metadata);
        let object = ObjectRef {
            kind: req.kind.kind.clone(),
            namespace: req
                .namespace
                .clone()
                .or_else(|| object_meta.and_then(|m| m.namespace.clone()))
                .unwrap_or_default(),
            name: if req.name.is_empty() {
                object_meta.and_then(|m| m.name.clone()).unwrap_or_default()
            } else {
                req.name.clone()
            },
            generate_name: object_meta
                .and_then(|m| m.generate_name.clone())
                .unwrap_or_default(),
        };
        let view = (|| {
            let kind = WorkloadKind::from_group_kind(&req.kind.group, &req.kind.kind)
                .ok_or(Skip::UnknownKind)?;
            if !matches!(req.operation, Operation::Create | Operation::Update) {
                return Err(Skip::Operation);
            }
            match req.sub_resource.as_deref() {
                None | Some("") => {}
                Some("ephemeralcontainers") if kind == WorkloadKind::Pod => {}
                Some(_) => return Err(Skip::Subresource),
            }
            let new = req.object.as_ref().ok_or(Skip::NoObject)?;
            let old = match req.operation {
                Operation::Update => req.old_object.as_ref(),
                _ => None,
            };
            Ok(View {
                kind,
                body: &new.data,
                meta: Some(&new.metadata),
                old: old.map(|o| &o.data),
                old_meta: old.map(|o| &o.metadata),
            })
        })();
        (object, view)
    }

    /// Reads a manifest found in a file; its namespace is `default_namespace` when unset.
    pub fn of_manifest(m: &Manifest<'r>, default_namespace: &str) -> (ObjectRef, View<'r>) {
        let object = ObjectRef {
            kind: m.kind.name().to_owned(),
            namespace: if m.namespace.is_empty() {
                default_namespace
            } else {
                m.namespace
            }
            .to_owned(),
            name: m.name.to_owned(),
            generate_name: m.generate_name.to_owned(),
        };
        let view = View {
            kind: m.kind,
            body: m.body,
            meta: None,
            old: None,
            old_meta: None,
        };
        (object, view)
    }
}

/// What `/mutate` must resolve for one object, and the profile's settings for the answer.
#[derive(Debug, Clone)]
pub struct PinPlan {
    /// The images to pin, in site order (never empty).
    pub targets: Vec<Target>,
    /// The pod's pull secrets and service account (empty when nothing is asked of a registry).
    pub credentials: PullCredentials,
    /// `allowedRegistries` of the profile, when set and something is asked of a registry.
    pub allowed_registries: Option<Patterns>,
    /// `staleIfError` of the profile.
    pub stale_if_error: Duration,
    /// `keepTag` of the profile.
    pub keep_tag: bool,
    /// `onResolveFailure` of the profile.
    pub on_failure: OnResolveFailure,
}

impl PinPlan {
    /// True when some target needs the registry (or the cache), not only the old object.
    pub fn needs_registry(&self) -> bool {
        self.targets
            .iter()
            .any(|t| matches!(t.source, Source::Resolve | Source::Refresh))
    }
}

/// What pinhook decided about one request, as data.
#[derive(Debug, Clone)]
pub struct Decision {
    /// The object concerned.
    pub object: ObjectRef,
    /// The endpoint that asked.
    pub endpoint: Endpoint,
    /// The mode that applied, or `None` when the request was not judged.
    pub mode: Option<Mode>,
    /// Why it was not judged, if it was not.
    pub skipped: Option<Skip>,
    /// Every offending container.
    pub findings: Vec<Finding>,
    /// What `/mutate` pins, or why nothing.
    pub pin: Result<PinPlan, NoPin>,
}

impl Decision {
    /// A request let through without judging.
    pub fn skipped(object: ObjectRef, endpoint: Endpoint, skip: Skip) -> Self {
        Self {
            object,
            endpoint,
            mode: None,
            skipped: Some(skip),
            findings: Vec::new(),
            pin: Err(NoPin::NotRequested),
        }
    }

    /// Allowed, denied, warned or audited.
    pub fn outcome(&self) -> Outcome {
        match (self.findings.is_empty(), self.mode) {
            (true, _) | (false, None) => Outcome::Allowed,
            (false, Some(Mode::Enforce)) => Outcome::Denied,
            (false, Some(Mode::Warn)) => Outcome::Warned,
            (false, Some(Mode::Audit)) => Outcome::Audited,
        }
    }

    /// The images to resolve (empty when nothing is pinned).
    pub fn targets(&self) -> &[Target] {
        self.pin.as_ref().map_or(&[], |p| &p.targets)
    }
}

/// Decides an admission request under `policy` for `endpoint`.
pub fn review(
    policy: &Policy,
    req: &AdmissionRequest<DynamicObject>,
    endpoint: Endpoint,
) -> Decision {
    let (object, view) = View::of_request(req);
    match view {
        Ok(view) => decide(policy, object, view, endpoint),
        Err(skip) => Decision::skipped(object, endpoint, skip),
    }
}

/// Decides one object: each image site is judged once, for the findings (new or changed
/// images only) and, on `/mutate`, for the pinning plan.
pub fn decide(policy: &Policy, object: ObjectRef, view: View<'_>, endpoint: Endpoint) -> Decision {
    let Some(profile) = policy.profile_for(&object.namespace) else {
        return Decision::skipped(object, endpoint, Skip::ExemptNamespace);
    };
    let pinning = pinning_wanted(profile, &view, endpoint);
    let refresh = pinning.is_ok()
        && view
            .meta
            .is_some_and(|m| pin::refresh_requested(m, view.old_meta));
    let before = Before::of(view.kind, view.old);
    let mut findings = Vec::new();
    let mut targets = Vec::new();
    for site in workload::containers(view.kind, view.body) {
        let was = before.image(&site);
        let changed = was.is_none_or(|w| w != site.image);
        let image = match site.image {
            ImageField::Str(image) => image,
            ImageField::NotAString if changed => {
                findings.push(Finding::new(
                    &site,
                    "<not a string>",
                    Reason::InvalidReference("the image field is not a string".into()),
                ));
                continue;
            }
            // A pod template may leave the image to a later controller; a Pod cannot run without one.
            ImageField::Unset if changed && view.kind == WorkloadKind::Pod => {
                findings.push(Finding::new(
                    &site,
                    "",
                    Reason::InvalidReference("the image is empty; a Pod must name one".into()),
                ));
                continue;
            }
            _ => continue,
        };
        let source = match pinning {
            Ok(()) => pin::source(
                image,
                match was {
                    Some(ImageField::Str(w)) => Some(w),
                    _ => None,
                },
                refresh,
                view.kind,
            ),
            Err(_) => None,
        };
        if !changed && source.is_none() {
            continue;
        }
        let (accepted, rejected) = match profile.judge(image) {
            Verdict::Accepted(r) => (Some(r), None),
            Verdict::Rejected(reason) => (None, Some(reason)),
            Verdict::Exempt => (None, None),
        };
        if let Some(source) = source
            && let Some(reference) =
                pin::candidate(profile.mode, accepted, rejected.as_ref(), image)
        {
            targets.push(Target {
                container: site.name.to_owned(),
                noun: site.noun(),
                path: site.path(),
                pointer: site.pointer(),
                image: image.to_owned(),
                reference,
                source,
            });
        }
        if changed && let Some(reason) = rejected {
            findings.push(Finding::new(&site, image, reason));
        }
    }
    // At admission a denied request is not pinned; in a manifest the allowed images still are.
    let denied =
        endpoint == Endpoint::Mutate && profile.mode == Mode::Enforce && !findings.is_empty();
    let pin = match pinning {
        Err(why) => Err(why),
        Ok(()) if denied => Err(NoPin::Denied),
        Ok(()) if targets.is_empty() => Err(NoPin::Nothing),
        Ok(()) => {
            let mut plan = PinPlan {
                targets,
                credentials: PullCredentials::default(),
                allowed_registries: None,
                stale_if_error: profile.stale_if_error,
                keep_tag: profile.keep_tag,
                on_failure: profile.on_resolve_failure,
            };
            if plan.needs_registry() {
                plan.credentials = workload::pull_credentials(view.kind, view.body);
                plan.allowed_registries = (!profile.allowed_registries.is_empty())
                    .then(|| profile.allowed_registries.clone());
            }
            Ok(plan)
        }
    };
    Decision {
        object,
        endpoint,
        mode: Some(profile.mode),
        skipped: None,
        findings,
        pin,
    }
}

/// Whether `/mutate` may pin this object at all.
fn pinning_wanted(profile: &Profile, view: &View<'_>, endpoint: Endpoint) -> Result<(), NoPin> {
    if endpoint == Endpoint::Validate {
        return Err(NoPin::NotRequested);
    }
    if !profile.pin {
        return Err(NoPin::Disabled);
    }
    if view.kind != WorkloadKind::Pod
        && let Some(owner) = view.meta.and_then(pin::controller_of)
    {
        return Err(NoPin::Controlled(owner));
    }
    Ok(())
}

/// Requests and objects for the unit tests of the answer path (admission, answer, server).
#[cfg(test)]
pub(crate) mod fixtures {
    use kube::core::DynamicObject;
    use kube::core::admission::{AdmissionRequest, AdmissionReview};
    use serde_json::{Value, json};

    /// An AdmissionRequest (uid `u-1`, user alice, namespace `shop`) of `op` on `object`.
    pub(crate) fn request(
        kind: (&str, &str),
        op: &str,
        object: Value,
        old: Value,
    ) -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
            "request": {
                "uid": "u-1", "kind": {"group": kind.0, "version": "v1", "kind": kind.1},
                "resource": {"group": kind.0, "version": "v1", "resource": "x"},
                "namespace": "shop", "operation": op, "userInfo": {"username": "alice"},
                "object": object, "oldObject": old
            }
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    /// A Pod `web-*` in `shop` with one container per `(name, image)`.
    pub(crate) fn pod(images: &[(&str, &str)]) -> Value {
        let cs: Vec<Value> = images
            .iter()
            .map(|(n, i)| json!({"name": n, "image": i}))
            .collect();
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-", "namespace": "shop"}, "spec": {"containers": cs}})
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{pod, request};
    use super::*;
    use serde_json::json;

    const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    #[test]
    fn denies_every_offending_container_judging_each_once() {
        let req = request(
            ("", "Pod"),
            "CREATE",
            pod(&[
                ("web", "nginx:latest"),
                ("ok", "nginx:1.27.1"),
                ("side", "busybox"),
            ]),
            Value::Null,
        );
        let d = review(&Policy::default(), &req, Endpoint::Mutate);
        assert_eq!(d.outcome(), Outcome::Denied);
        assert_eq!(
            d.findings
                .iter()
                .map(|f| (f.container.as_str(), f.pointer.as_str()))
                .collect::<Vec<_>>(),
            [
                ("web", "/spec/containers/0/image"),
                ("side", "/spec/containers/2/image")
            ]
        );
        assert_eq!(
            d.pin.unwrap_err(),
            NoPin::Denied,
            "a denied request is not pinned"
        );
    }

    #[test]
    fn validate_never_plans_pinning() {
        let req = request(
            ("", "Pod"),
            "CREATE",
            pod(&[("ok", "nginx:1.27.1")]),
            Value::Null,
        );
        let d = review(&Policy::default(), &req, Endpoint::Validate);
        assert_eq!(d.pin.unwrap_err(), NoPin::NotRequested);
        let d = review(&Policy::default(), &req, Endpoint::Mutate);
        assert_eq!(d.targets().len(), 1);
    }

    #[test]
    fn credentials_are_read_only_when_a_registry_is_asked() {
        let with = |image: &str| json!({"spec": {"imagePullSecrets": [{"name": "regcred"}], "containers": [{"name": "web", "image": image}]}});
        let req = request(("", "Pod"), "CREATE", with("shop/web:1.0.0"), Value::Null);
        let plan = review(&Policy::default(), &req, Endpoint::Mutate)
            .pin
            .unwrap();
        assert_eq!(plan.credentials.secrets, ["regcred"]);
        assert_eq!(plan.credentials.service_account, "default");
        let req = request(
            ("", "Pod"),
            "UPDATE",
            with("shop/web:1.0.0"),
            with(&format!("shop/web:1.0.0@{D}")),
        );
        let plan = review(&Policy::default(), &req, Endpoint::Mutate)
            .pin
            .unwrap();
        assert_eq!(plan.targets[0].source, Source::Reuse(D.into()));
        assert!(plan.credentials.secrets.is_empty(), "{plan:?}");
    }

    #[test]
    fn update_judges_only_changed_images() {
        let old = pod(&[("web", "nginx:latest")]);
        let req = request(("", "Pod"), "UPDATE", old.clone(), old);
        assert_eq!(
            review(&Policy::default(), &req, Endpoint::Validate).outcome(),
            Outcome::Allowed
        );
    }

    #[test]
    fn update_with_new_mutable_image_is_denied() {
        let req = request(
            ("", "Pod"),
            "UPDATE",
            pod(&[("web", "nginx:main")]),
            pod(&[("web", "nginx:1.2.3")]),
        );
        assert_eq!(
            review(&Policy::default(), &req, Endpoint::Validate).findings[0].reason,
            Reason::MutableTag("main".into())
        );
    }

    #[test]
    fn delete_is_not_judged() {
        let req = request(
            ("", "Pod"),
            "DELETE",
            Value::Null,
            pod(&[("web", "nginx:latest")]),
        );
        assert_eq!(
            review(&Policy::default(), &req, Endpoint::Validate).skipped,
            Some(Skip::Operation)
        );
    }

    #[test]
    fn unknown_kind_is_not_judged() {
        let req = request(
            ("", "ConfigMap"),
            "CREATE",
            json!({"data": {"image": "nginx:latest"}}),
            Value::Null,
        );
        assert_eq!(
            review(&Policy::default(), &req, Endpoint::Validate).skipped,
            Some(Skip::UnknownKind)
        );
    }

    #[test]
    fn exempt_namespace_is_not_judged() {
        let policy = Policy::from_yaml("exemptNamespaces: [shop]", "t").unwrap();
        let req = request(
            ("", "Pod"),
            "CREATE",
            pod(&[("web", "nginx:latest")]),
            Value::Null,
        );
        let d = review(&policy, &req, Endpoint::Mutate);
        assert_eq!(d.skipped, Some(Skip::ExemptNamespace));
        assert_eq!(d.outcome(), Outcome::Allowed);
        assert_eq!(d.pin.unwrap_err(), NoPin::NotRequested);
    }

    #[test]
    fn status_subresource_is_not_judged() {
        let mut req = request(
            ("", "Pod"),
            "UPDATE",
            pod(&[("web", "nginx:latest")]),
            pod(&[]),
        );
        req.sub_resource = Some("status".into());
        assert_eq!(
            review(&Policy::default(), &req, Endpoint::Validate).skipped,
            Some(Skip::Subresource)
        );
    }

    #[test]
    fn non_string_image_is_an_invalid_reference() {
        let obj = json!({"spec": {"containers": [{"name": "a", "image": 7}]}});
        let req = request(("", "Pod"), "CREATE", obj, Value::Null);
        let d = review(&Policy::default(), &req, Endpoint::Validate);
        assert!(matches!(d.findings[0].reason, Reason::InvalidReference(_)));
    }

    #[test]
    fn an_empty_image_is_refused_in_a_pod_but_left_to_controllers_in_a_template() {
        for image in [json!(""), Value::Null] {
            let obj = json!({"spec": {"containers": [{"name": "a", "image": image}]}});
            let req = request(("", "Pod"), "CREATE", obj, Value::Null);
            let d = review(&Policy::default(), &req, Endpoint::Validate);
            assert_eq!(d.findings.len(), 1, "{image}");
            assert!(
                matches!(&d.findings[0].reason, Reason::InvalidReference(why) if why.contains("empty")),
                "{:?}",
                d.findings[0].reason
            );
        }
        let template =
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": ""}]}}}});
        let req = request(("apps", "Deployment"), "CREATE", template, Value::Null);
        assert!(
            review(&Policy::default(), &req, Endpoint::Validate)
                .findings
                .is_empty()
        );
    }

    #[test]
    fn object_ref_prefers_name_then_generate_name() {
        let o = ObjectRef {
            kind: "Pod".into(),
            namespace: "a".into(),
            name: String::new(),
            generate_name: "web-".into(),
        };
        assert_eq!(o.to_string(), "Pod a/web-*");
        let o = ObjectRef {
            name: "web-1".into(),
            ..o
        };
        assert_eq!(o.to_string(), "Pod a/web-1");
    }

    fn deployment(images: &[&str]) -> Value {
        let cs: Vec<Value> = images
            .iter()
            .enumerate()
            .map(|(i, im)| json!({"name": format!("c{i}"), "image": im}))
            .collect();
        json!({"spec": {"template": {"spec": {"containers": cs}}}})
    }

    /// The targets /mutate plans for `new` (a `kind`), with `pinhook.dev/refresh` changed
    /// when `refresh`.
    fn targets(
        profile_yaml: &str,
        kind: WorkloadKind,
        meta: &ObjectMeta,
        new: &Value,
        old: Option<&Value>,
        refresh: bool,
    ) -> Result<Vec<Target>, NoPin> {
        let policy = Policy::from_yaml(profile_yaml, "t").unwrap();
        let annotated = |v: &str| ObjectMeta {
            annotations: Some([(pin::REFRESH_ANNOTATION.to_owned(), v.to_owned())].into()),
            ..meta.clone()
        };
        let (meta, old_meta) = if refresh {
            (annotated("2"), annotated("1"))
        } else {
            (meta.clone(), ObjectMeta::default())
        };
        let view = View {
            kind,
            body: new,
            meta: Some(&meta),
            old,
            old_meta: old.map(|_| &old_meta),
        };
        let object = ObjectRef {
            namespace: "shop".into(),
            ..ObjectRef::default()
        };
        match decide(&policy, object, view, Endpoint::Mutate).pin {
            Ok(plan) => Ok(plan.targets),
            Err(NoPin::Nothing) => Ok(Vec::new()),
            Err(why) => Err(why),
        }
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
}
