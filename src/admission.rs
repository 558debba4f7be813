//! AdmissionReview in, decision out: which containers break the policy, and the
//! `AdmissionResponse` (denial, warnings, audit annotations) that says so.
//!
//! Contract: <https://kubernetes.io/docs/reference/access-authn-authz/extensible-admission-controllers/>

use std::collections::HashMap;
use std::fmt;

use kube::core::admission::{
    AdmissionRequest, AdmissionResponse, META_API_VERSION_V1, META_KIND, Operation,
};
use kube::core::{DynamicObject, Status};
use serde_json::Value;

use crate::pin::Pinning;
use crate::policy::{Mode, Policy, Profile, Reason, Verdict};
use crate::workload::{self, ContainerImage, ImageField, WorkloadKind};

/// Warnings longer than this are truncated by kubectl.
pub const WARNING_MAX_CHARS: usize = 119;

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

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = if self.name.is_empty() && !self.generate_name.is_empty() {
            format!("{}*", self.generate_name)
        } else {
            self.name.clone()
        };
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, name)
        }
    }
}

/// One container whose image breaks the policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The container's (or image volume's) name.
    pub container: String,
    /// `container` or `volume`.
    pub noun: &'static str,
    /// Field path for people, e.g. `spec.template.spec.containers[0]`.
    pub path: String,
    /// JSON pointer to the image field.
    pub pointer: String,
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

    /// The full sentence: which container, which image, what rule, how to fix it.
    pub fn message(&self) -> String {
        format!(
            "{} {:?} ({}): {}",
            self.noun,
            self.container,
            self.path,
            self.reason.describe(&self.image)
        )
    }

    /// A warning line under [`WARNING_MAX_CHARS`], shortening the image in the middle if needed.
    pub fn warning(&self) -> String {
        let make = |image: &str| {
            format!(
                "pinhook: {} {:?}: image {:?} {}",
                self.noun,
                self.container,
                image,
                self.reason.brief()
            )
        };
        let full = make(&self.image);
        let excess = full.chars().count().saturating_sub(WARNING_MAX_CHARS);
        if excess == 0 {
            return full;
        }
        let chars: Vec<char> = self.image.chars().collect();
        let keep = chars.len().saturating_sub(excess + 1);
        let head = keep / 2;
        let tail = keep - head;
        let short: String = chars[..head]
            .iter()
            .chain(['…'].iter())
            .chain(chars[chars.len() - tail..].iter())
            .collect();
        make(&short).chars().take(WARNING_MAX_CHARS).collect()
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

/// What pinhook decided about one request, as data; the HTTP layer only serializes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The object concerned.
    pub object: ObjectRef,
    /// The mode that applied, or `None` when the request was not judged.
    pub mode: Option<Mode>,
    /// Why it was not judged, if it was not.
    pub skipped: Option<Skip>,
    /// Every offending container.
    pub findings: Vec<Finding>,
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

impl Decision {
    /// Allowed, denied, warned or audited.
    pub fn outcome(&self) -> Outcome {
        match (self.findings.is_empty(), self.mode) {
            (true, _) | (false, None) => Outcome::Allowed,
            (false, Some(Mode::Enforce)) => Outcome::Denied,
            (false, Some(Mode::Warn)) => Outcome::Warned,
            (false, Some(Mode::Audit)) => Outcome::Audited,
        }
    }

    /// The denial text: the object, then every finding on its own line.
    pub fn denial_message(&self) -> String {
        let n = self.findings.len();
        let mut msg = format!(
            "pinhook denied {}: {n} image{} violate{} the image policy:",
            self.object,
            if n == 1 { "" } else { "s" },
            if n == 1 { "s" } else { "" },
        );
        for f in &self.findings {
            msg.push_str("\n- ");
            msg.push_str(&f.message());
        }
        msg
    }

    /// `container=image` pairs for the audit annotation.
    pub fn images_annotation(&self) -> String {
        self.findings
            .iter()
            .map(|f| {
                format!(
                    "{}={} ({})",
                    crate::workload::label(f.noun, &f.container),
                    f.image,
                    f.reason.code()
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The admission response for `req` carrying this decision.
    pub fn respond<T: kube::Resource>(&self, req: &AdmissionRequest<T>) -> AdmissionResponse {
        let mut resp = AdmissionResponse::from(req);
        let outcome = self.outcome();
        if outcome == Outcome::Allowed {
            return resp;
        }
        let key = match outcome {
            Outcome::Denied => "rejected-images",
            Outcome::Warned => "warned-images",
            _ => "audited-images",
        };
        resp.audit_annotations = HashMap::from([
            (key.to_owned(), self.images_annotation()),
            (
                "mode".to_owned(),
                self.mode.map(Mode::as_str).unwrap_or_default().to_owned(),
            ),
        ]);
        match outcome {
            Outcome::Denied => {
                resp = resp.deny(self.denial_message());
                resp.result = Status::failure(&resp.result.message, "Forbidden").with_code(403);
            }
            Outcome::Warned => {
                resp.warnings = Some(self.findings.iter().map(Finding::warning).collect())
            }
            _ => {}
        }
        resp
    }
}

impl Decision {
    /// The /mutate response: the policy decision first, then pinning (patch, warnings,
    /// annotations), or a denial when a tag cannot be pinned and the policy says deny.
    pub fn respond_mutate<T: kube::Resource>(
        &self,
        pinning: Option<&Pinning>,
        req: &AdmissionRequest<T>,
    ) -> AdmissionResponse {
        let mut resp = self.respond(req);
        let Some(p) = pinning else { return resp };
        if !resp.allowed {
            return resp;
        }
        let denials = p.denials();
        if !denials.is_empty() {
            let n = denials.len();
            let mut msg = format!(
                "pinhook could not pin {}: {n} image{} could not be resolved to a digest:",
                self.object,
                if n == 1 { "" } else { "s" }
            );
            for d in &denials {
                msg.push_str("\n- ");
                msg.push_str(d);
            }
            resp.audit_annotations
                .insert("unresolved-images".to_owned(), denials.join("; "));
            resp = resp.deny(&msg);
            resp.result = Status::failure(&msg, "Forbidden").with_code(403);
            return resp;
        }
        let patch = p.patch();
        if !patch.0.is_empty() {
            resp = match resp.clone().with_patch(patch) {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "cannot serialize patch");
                    resp
                }
            };
        }
        let warnings = p.warnings();
        if !warnings.is_empty() {
            resp.warnings.get_or_insert_with(Vec::new).extend(warnings);
        }
        resp.audit_annotations.extend(p.audit_annotations());
        resp
    }
}

/// The AdmissionReview answer as the API server reads it: `admission.k8s.io/v1`, and the patch
/// as base64 (kube's type holds raw bytes, which JSON would write as an array of numbers).
/// Written in one pass, with the fields of kube's `AdmissionResponse`.
pub fn review_json(resp: AdmissionResponse) -> Result<Vec<u8>, serde_json::Error> {
    use base64::Engine;

    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Review<'a> {
        api_version: &'static str,
        kind: &'static str,
        response: Response<'a>,
    }

    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Response<'a> {
        uid: &'a str,
        allowed: bool,
        status: &'a Status,
        #[serde(skip_serializing_if = "Option::is_none")]
        patch: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        patch_type: Option<&'static str>,
        #[serde(skip_serializing_if = "HashMap::is_empty")]
        audit_annotations: &'a HashMap<String, String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        warnings: Option<&'a Vec<String>>,
    }

    let patch = resp
        .patch
        .as_ref()
        .map(|p| base64::engine::general_purpose::STANDARD.encode(p));
    let review = Review {
        api_version: META_API_VERSION_V1,
        kind: META_KIND,
        response: Response {
            uid: &resp.uid,
            allowed: resp.allowed,
            status: &resp.result,
            // kube sets the patch type with the patch, and JSONPatch is the only one there is.
            patch_type: patch.as_ref().map(|_| "JSONPatch"),
            patch,
            audit_annotations: &resp.audit_annotations,
            warnings: resp.warnings.as_ref(),
        },
    };
    let mut out = Vec::with_capacity(512);
    serde_json::to_writer(&mut out, &review)?;
    Ok(out)
}

/// The findings for one object of `kind` under `profile`; on update only new or changed images count.
pub fn findings(
    profile: &Profile,
    kind: WorkloadKind,
    object: &Value,
    old: Option<&Value>,
) -> Vec<Finding> {
    let mut list = workload::containers(kind, object);
    if let Some(old) = old {
        list = workload::changed(list, &workload::containers(kind, old));
    }
    list.iter()
        .filter_map(|c| match c.image {
            ImageField::Unset => None,
            ImageField::NotAString => Some(Finding::new(
                c,
                "<not a string>",
                Reason::InvalidReference("the image field is not a string".into()),
            )),
            ImageField::Str(image) => match profile.judge(image) {
                Verdict::Rejected(reason) => Some(Finding::new(c, image, reason)),
                Verdict::Exempt | Verdict::Accepted(_) => None,
            },
        })
        .collect()
}

/// Decides an object under `policy` in `namespace` (shared by the webhook and `pinhook check`).
pub fn decide(
    policy: &Policy,
    kind: WorkloadKind,
    object: ObjectRef,
    body: &Value,
    old: Option<&Value>,
) -> Decision {
    let Some(profile) = policy.profile_for(&object.namespace) else {
        return Decision {
            object,
            mode: None,
            skipped: Some(Skip::ExemptNamespace),
            findings: Vec::new(),
        };
    };
    Decision {
        findings: findings(profile, kind, body, old),
        object,
        mode: Some(profile.mode),
        skipped: None,
    }
}

/// Decides an admission request under `policy`.
pub fn review(policy: &Policy, req: &AdmissionRequest<DynamicObject>) -> Decision {
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
    let skip = |skip| Decision {
        object: object.clone(),
        mode: None,
        skipped: Some(skip),
        findings: Vec::new(),
    };
    let Some(kind) = WorkloadKind::from_group_kind(&req.kind.group, &req.kind.kind) else {
        return skip(Skip::UnknownKind);
    };
    if !matches!(req.operation, Operation::Create | Operation::Update) {
        return skip(Skip::Operation);
    }
    match req.sub_resource.as_deref() {
        None | Some("") => {}
        Some("ephemeralcontainers") if kind == WorkloadKind::Pod => {}
        Some(_) => return skip(Skip::Subresource),
    }
    let Some(new) = req.object.as_ref() else {
        return skip(Skip::NoObject);
    };
    let old = match req.operation {
        Operation::Update => req.old_object.as_ref().map(|o| &o.data),
        _ => None,
    };
    decide(policy, kind, object, &new.data, old)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::admission::AdmissionReview;
    use serde_json::json;

    fn request(
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

    fn pod(images: &[(&str, &str)]) -> Value {
        let cs: Vec<Value> = images
            .iter()
            .map(|(n, i)| json!({"name": n, "image": i}))
            .collect();
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-", "namespace": "shop"}, "spec": {"containers": cs}})
    }

    #[test]
    fn denies_every_offending_container() {
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
        let d = review(&Policy::default(), &req);
        assert_eq!(d.outcome(), Outcome::Denied);
        assert_eq!(d.findings.len(), 2);
        let msg = d.denial_message();
        assert!(msg.contains(r#"container "web" (spec.containers[0]): image "nginx:latest" uses mutable tag "latest"; use a version tag or a digest"#), "{msg}");
        assert!(
            msg.contains(r#"container "side" (spec.containers[2])"#),
            "{msg}"
        );
        assert!(
            msg.starts_with("pinhook denied Pod shop/web-*: 2 images violate"),
            "{msg}"
        );
    }

    #[test]
    fn denial_response_has_code_403_and_annotation() {
        let req = request(
            ("", "Pod"),
            "CREATE",
            pod(&[("web", "nginx:latest")]),
            Value::Null,
        );
        let resp = review(&Policy::default(), &req).respond(&req);
        assert!(!resp.allowed);
        assert_eq!(resp.result.code, 403);
        assert_eq!(resp.uid, "u-1");
        assert_eq!(
            resp.audit_annotations["rejected-images"],
            "web=nginx:latest (mutable-tag)"
        );
        assert!(resp.patch.is_none());
    }

    #[test]
    fn warn_mode_allows_with_short_warnings() {
        let policy = Policy::from_yaml("mode: warn", "t").unwrap();
        let long = format!(
            "registry.example.com/{}/app:latest",
            "very-long-path".repeat(10)
        );
        let req = request(
            ("", "Pod"),
            "CREATE",
            pod(&[("web", "nginx:latest"), ("x", &long)]),
            Value::Null,
        );
        let resp = review(&policy, &req).respond(&req);
        assert!(resp.allowed);
        let warnings = resp.warnings.unwrap();
        assert_eq!(warnings.len(), 2);
        assert_eq!(
            warnings[0],
            r#"pinhook: container "web": image "nginx:latest" uses mutable tag "latest""#
        );
        assert!(
            warnings
                .iter()
                .all(|w| w.chars().count() <= WARNING_MAX_CHARS),
            "{warnings:?}"
        );
        assert!(
            warnings[1].contains('…') && warnings[1].contains("mutable tag"),
            "{}",
            warnings[1]
        );
    }

    #[test]
    fn audit_mode_allows_without_warnings() {
        let policy = Policy::from_yaml("mode: audit", "t").unwrap();
        let req = request(
            ("", "Pod"),
            "CREATE",
            pod(&[("web", "nginx:latest")]),
            Value::Null,
        );
        let d = review(&policy, &req);
        assert_eq!(d.outcome(), Outcome::Audited);
        let resp = d.respond(&req);
        assert!(resp.allowed && resp.warnings.is_none());
        assert!(resp.audit_annotations.contains_key("audited-images"));
    }

    #[test]
    fn update_judges_only_changed_images() {
        let old = pod(&[("web", "nginx:latest")]);
        let req = request(("", "Pod"), "UPDATE", old.clone(), old);
        assert_eq!(review(&Policy::default(), &req).outcome(), Outcome::Allowed);
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
            review(&Policy::default(), &req).findings[0].reason,
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
            review(&Policy::default(), &req).skipped,
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
            review(&Policy::default(), &req).skipped,
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
        let d = review(&policy, &req);
        assert_eq!(d.skipped, Some(Skip::ExemptNamespace));
        assert!(d.respond(&req).allowed);
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
            review(&Policy::default(), &req).skipped,
            Some(Skip::Subresource)
        );
    }

    #[test]
    fn non_string_image_is_an_invalid_reference() {
        let obj = json!({"spec": {"containers": [{"name": "a", "image": 7}]}});
        let req = request(("", "Pod"), "CREATE", obj, Value::Null);
        let d = review(&Policy::default(), &req);
        assert!(matches!(d.findings[0].reason, Reason::InvalidReference(_)));
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

    #[test]
    fn review_json_is_kubes_document_with_a_base64_patch() {
        use base64::Engine;
        let policy = Policy::from_yaml("mode: warn", "t").unwrap();
        let req = request(
            ("", "Pod"),
            "CREATE",
            pod(&[("web", "nginx:latest")]),
            Value::Null,
        );
        let patch: json_patch::Patch = serde_json::from_value(json!([
            {"op": "replace", "path": "/spec/containers/0/image", "value": "nginx:latest@sha256:00"}
        ]))
        .unwrap();
        let resp = review(&policy, &req)
            .respond(&req)
            .with_patch(patch.clone())
            .unwrap();
        let ours: Value = serde_json::from_slice(&review_json(resp.clone()).unwrap()).unwrap();
        // What kube's own serialization gives, with the patch bytes written as base64.
        let mut kubes = resp;
        kubes.types.api_version = META_API_VERSION_V1.to_owned();
        kubes.types.kind = META_KIND.to_owned();
        let bytes = kubes.patch.take().unwrap();
        let mut expected = serde_json::to_value(kubes.into_review()).unwrap();
        expected["response"]["patch"] =
            json!(base64::engine::general_purpose::STANDARD.encode(&bytes));
        assert_eq!(ours, expected);
        assert_eq!(ours["response"]["patchType"], "JSONPatch");
        assert_eq!(ours["response"]["warnings"].as_array().unwrap().len(), 1);
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(ours["response"]["patch"].as_str().unwrap())
            .unwrap();
        assert_eq!(
            serde_json::from_slice::<json_patch::Patch>(&decoded).unwrap(),
            patch
        );
    }

    #[test]
    fn review_json_without_patch_has_no_patch_type() {
        let req = request(
            ("", "Pod"),
            "CREATE",
            pod(&[("ok", "nginx:1.27.1")]),
            Value::Null,
        );
        let v: Value = serde_json::from_slice(
            &review_json(review(&Policy::default(), &req).respond(&req)).unwrap(),
        )
        .unwrap();
        assert_eq!(v["apiVersion"], "admission.k8s.io/v1");
        assert_eq!(v["kind"], "AdmissionReview");
        assert_eq!(v["response"]["uid"], "u-1");
        assert_eq!(v["response"]["allowed"], true);
        assert!(v["response"].get("patch").is_none() && v["response"].get("patchType").is_none());
    }
}
