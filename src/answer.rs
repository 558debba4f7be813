//! The answer to one admission request, written once from the [`Decision`] and what the
//! resolver found: allowed or denied, the message, the JSON Patch, warnings, audit annotations,
//! the audit records and the metric labels. Every word pinhook says about a request is here;
//! the HTTP layer serializes the answer, the audit trail and the metrics read it.

use std::collections::HashMap;
use std::time::Duration;

use json_patch::{Patch, PatchOperation, ReplaceOperation, TestOperation};
use kube::core::Status;
use serde_json::Value;

use crate::admission::{Decision, Finding, Outcome, PinPlan};
use crate::audit::{Entry, PinnedImage, Violation};
use crate::metrics::{AnswerLabels, ViolationLabels};
use crate::pin::{PinResult, Target, pinned_reference};
use crate::policy::{Mode, OnResolveFailure};
use crate::resolve::ResolveError;
use crate::text::{clip, shown};
use crate::workload;

/// Warnings longer than this are truncated by kubectl.
pub const WARNING_MAX_CHARS: usize = 119;

/// Most warnings in one answer; past it, one more warning says how many were left out. The
/// API server passes at most 4 KiB of warnings on (and cuts each at 256 characters): eleven
/// warnings of [`WARNING_MAX_CHARS`] fit.
pub const WARNINGS_MAX: usize = 10;

/// Most offending containers (or images) listed in a denial message and in each audit
/// annotation; the rest are counted in a last `and N more`.
pub const LISTED_MAX: usize = 20;

/// Most containers (or images) listed in one audit line; its `omitted` field counts the rest.
pub const AUDIT_ITEMS_MAX: usize = 50;

/// Longest request-supplied string (an image, a container or object name) quoted in a
/// message, warning, annotation or audit line, in characters; a longer one loses its middle to
/// `…`. A valid image reference or Kubernetes name is shorter.
pub const TEXT_MAX_CHARS: usize = 1024;

/// Longest line of a message, entry of an annotation or error in an audit line, in
/// characters (a registry's error text included).
pub const LINE_MAX_CHARS: usize = 4096;

/// Everything pinhook answers to one request.
#[derive(Debug, Clone)]
pub struct Answer<'d> {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// The status: empty when allowed, code 403 `Forbidden` with the message when denied.
    pub status: Status,
    /// The JSON Patch that pins images (`/mutate` only).
    pub patch: Option<Patch>,
    /// Warnings shown by kubectl, each at most [`WARNING_MAX_CHARS`].
    pub warnings: Vec<String>,
    /// Annotations for the API server's audit log.
    pub audit_annotations: HashMap<String, String>,
    /// The records of pinhook's own audit trail, in order.
    pub records: Vec<Entry<'d>>,
    /// The labels metrics count this answer under.
    pub labels: AnswerLabels,
}

impl<'d> Answer<'d> {
    /// Allowed, with nothing to say.
    pub fn allow() -> Self {
        Answer {
            allowed: true,
            status: Status::default(),
            patch: None,
            warnings: Vec::new(),
            audit_annotations: HashMap::new(),
            records: Vec::new(),
            labels: AnswerLabels {
                decision: Outcome::Allowed.as_str(),
                violations: Vec::new(),
                pins: Vec::new(),
            },
        }
    }

    /// The answer for `decision`, given the results of its pin plan's targets (in order).
    pub fn new(decision: &'d Decision, results: &'d [PinResult]) -> Self {
        let outcome = decision.outcome();
        let mode = decision.mode.map(Mode::as_str).unwrap_or_default();
        let mut answer = Answer::allow();
        answer.labels.decision = outcome.as_str();
        if outcome != Outcome::Allowed {
            let key = match outcome {
                Outcome::Denied => "rejected-images",
                Outcome::Warned => "warned-images",
                _ => "audited-images",
            };
            answer
                .audit_annotations
                .insert(key.to_owned(), images_annotation(&decision.findings));
            answer
                .audit_annotations
                .insert("mode".to_owned(), mode.to_owned());
            let (violations, omitted) = audited(decision.findings.iter().map(Violation::of));
            answer.records.push(Entry::Violations {
                event: outcome.as_str(),
                violations,
                omitted,
            });
            answer.labels.violations = decision
                .findings
                .iter()
                .map(|f| ViolationLabels {
                    rule: f.reason.code(),
                    mode,
                })
                .collect();
        }
        if outcome == Outcome::Denied {
            answer.deny(denial_message(decision));
            return answer;
        }
        let mut warned = 0;
        if outcome == Outcome::Warned {
            warned = decision.findings.len();
            answer.warnings = decision
                .findings
                .iter()
                .take(WARNINGS_MAX + 1)
                .map(finding_warning)
                .collect();
        }
        if let Ok(plan) = &decision.pin {
            warned += answer.pinned(decision, plan, results);
        }
        answer.cap_warnings(warned);
        answer
    }

    /// Keeps the first [`WARNINGS_MAX`] of `all` warnings and says how many more there were.
    fn cap_warnings(&mut self, all: usize) {
        if all > WARNINGS_MAX {
            self.warnings.truncate(WARNINGS_MAX);
            self.warnings.push(fit(format!(
                "pinhook: and {} more warnings (see the audit annotations)",
                all - WARNINGS_MAX
            )));
        }
    }

    /// Denies with `message` (code 403, reason `Forbidden`).
    fn deny(&mut self, message: String) {
        self.allowed = false;
        self.status = Status::failure(&message, "Forbidden").with_code(403);
        self.labels.decision = Outcome::Denied.as_str();
    }

    /// Adds what pinning did: the patch, warnings, annotations and records, or the denial when
    /// a tag cannot be pinned; returns how many warnings it had to give (at most
    /// [`WARNINGS_MAX`] + 1 of each kind are written).
    fn pinned(
        &mut self,
        decision: &Decision,
        plan: &'d PinPlan,
        results: &'d [PinResult],
    ) -> usize {
        let pins: Vec<(&'d Target, &'d PinResult)> = plan.targets.iter().zip(results).collect();
        self.labels.pins = pins.iter().map(|(_, r)| r.label()).collect();
        let denials: Vec<(&'d Target, &'d ResolveError)> = pins
            .iter()
            .filter_map(|&(t, r)| match r {
                PinResult::Failed(e) if denies(e, plan.on_failure) => Some((t, e)),
                _ => None,
            })
            .collect();
        if !denials.is_empty() {
            let n = denials.len();
            let mut msg = format!(
                "pinhook could not pin {}: {n} image{} could not be resolved to a digest:",
                decision.object,
                if n == 1 { "" } else { "s" }
            );
            let lines: Vec<String> = denials
                .iter()
                .take(LISTED_MAX)
                .map(|(t, e)| unresolved(t, e))
                .collect();
            for d in &lines {
                msg.push_str("\n- ");
                msg.push_str(d);
            }
            if n > LISTED_MAX {
                msg.push_str(&format!("\n- and {} more", n - LISTED_MAX));
            }
            self.audit_annotations.insert(
                "unresolved-images".to_owned(),
                listed(lines.into_iter(), n, "; "),
            );
            let failed: Vec<(&'d Target, &'d PinResult, &'d ResolveError)> = pins
                .iter()
                .filter_map(|&(t, r)| match r {
                    PinResult::Failed(e) => Some((t, r, e)),
                    _ => None,
                })
                .collect();
            let (images, omitted) = audited(
                failed
                    .iter()
                    .map(|(t, r, e)| PinnedImage::failed(t, r.label(), e)),
            );
            self.records.push(Entry::Images {
                event: "denied",
                images,
                omitted,
            });
            self.deny(msg);
            return 0;
        }
        let rewritten: Vec<(&'d Target, &'d PinResult, String)> = pins
            .iter()
            .filter_map(|&(t, r)| {
                r.digest()
                    .map(|d| (t, r, pinned_reference(&t.image, d, plan.keep_tag)))
            })
            .collect();
        let unpinned: Vec<(&'d Target, &'d ResolveError)> = pins
            .iter()
            .filter_map(|&(t, r)| match r {
                PinResult::Failed(e) => Some((t, e)),
                _ => None,
            })
            .collect();
        if !rewritten.is_empty() {
            self.patch = Some(patch(&rewritten));
            self.warnings.extend(
                rewritten
                    .iter()
                    .take(WARNINGS_MAX + 1)
                    .map(|(t, r, _)| pin_warning(t, r)),
            );
            self.audit_annotations.insert(
                "pinned-images".to_owned(),
                listed(
                    rewritten.iter().take(LISTED_MAX).map(|(t, _, p)| {
                        format!(
                            "{}: {} → {p}",
                            site_label(t),
                            shown(&t.image, TEXT_MAX_CHARS)
                        )
                    }),
                    rewritten.len(),
                    ", ",
                ),
            );
        }
        if !unpinned.is_empty() {
            self.warnings
                .extend(unpinned.iter().take(WARNINGS_MAX + 1).map(|(t, e)| {
                    fit(format!(
                        "pinhook: {} {:?}: {} left unpinned: {}",
                        t.noun,
                        clip(&t.container, TEXT_MAX_CHARS),
                        shown(&t.image, TEXT_MAX_CHARS),
                        e.metric_label()
                    ))
                }));
            self.audit_annotations.insert(
                "unpinned-images".to_owned(),
                listed(
                    unpinned.iter().take(LISTED_MAX).map(|(t, e)| {
                        format!(
                            "{}: {} ({e})",
                            site_label(t),
                            shown(&t.image, TEXT_MAX_CHARS)
                        )
                    }),
                    unpinned.len(),
                    ", ",
                ),
            );
        }
        let warned = rewritten.len() + unpinned.len();
        if !rewritten.is_empty() {
            let (images, omitted) = audited(
                rewritten
                    .into_iter()
                    .map(|(t, r, p)| PinnedImage::pinned(t, r, p)),
            );
            self.records.push(Entry::Images {
                event: "pinned",
                images,
                omitted,
            });
        }
        if !unpinned.is_empty() {
            let (images, omitted) = audited(
                unpinned
                    .into_iter()
                    .map(|(t, e)| PinnedImage::failed(t, "unpinned", e)),
            );
            self.records.push(Entry::Images {
                event: "unpinned",
                images,
                omitted,
            });
        }
        warned
    }
}

/// The first [`LISTED_MAX`] of `total` entries of an annotation, each at most
/// [`LINE_MAX_CHARS`] and escaped, joined by `sep`, then `and N more` for the rest.
fn listed(first: impl Iterator<Item = String>, total: usize, sep: &str) -> String {
    let mut out = first
        .take(LISTED_MAX)
        .map(|e| shown(&e, LINE_MAX_CHARS).into_owned())
        .collect::<Vec<_>>()
        .join(sep);
    if total > LISTED_MAX {
        out.push_str(&format!("{sep}and {} more", total - LISTED_MAX));
    }
    out
}

/// The first [`AUDIT_ITEMS_MAX`] items for an audit line, and how many were left out.
fn audited<T>(items: impl ExactSizeIterator<Item = T>) -> (Vec<T>, usize) {
    let omitted = items.len().saturating_sub(AUDIT_ITEMS_MAX);
    (items.take(AUDIT_ITEMS_MAX).collect(), omitted)
}

/// Whether a resolution failure denies the request: a missing tag always, others when
/// `onResolveFailure: deny`.
fn denies(e: &ResolveError, on_failure: OnResolveFailure) -> bool {
    matches!(e, ResolveError::NotFound { .. }) || on_failure == OnResolveFailure::Deny
}

/// The full sentence for a finding: which container, which image, what rule, how to fix it
/// (names and image clipped to [`TEXT_MAX_CHARS`], quoted with escapes).
pub fn violation(f: &Finding) -> String {
    format!(
        "{} {:?} ({}): {}",
        f.noun,
        clip(&f.container, TEXT_MAX_CHARS),
        f.path,
        f.reason.describe(&clip(&f.image, TEXT_MAX_CHARS))
    )
}

/// The denial text: the object, then each finding on its own line, at most [`LISTED_MAX`] of
/// them and `and N more`.
pub fn denial_message(decision: &Decision) -> String {
    let n = decision.findings.len();
    let mut msg = format!(
        "pinhook denied {}: {n} image{} violate{} the image policy:",
        decision.object,
        if n == 1 { "" } else { "s" },
        if n == 1 { "s" } else { "" },
    );
    for f in decision.findings.iter().take(LISTED_MAX) {
        msg.push_str("\n- ");
        msg.push_str(&violation(f));
    }
    if n > LISTED_MAX {
        msg.push_str(&format!("\n- and {} more", n - LISTED_MAX));
    }
    msg
}

/// `container=image (rule)` pairs for the audit annotation, at most [`LISTED_MAX`].
fn images_annotation(findings: &[Finding]) -> String {
    listed(
        findings.iter().take(LISTED_MAX).map(|f| {
            format!(
                "{}={} ({})",
                workload::label(f.noun, &clip(&f.container, TEXT_MAX_CHARS)),
                clip(&f.image, TEXT_MAX_CHARS),
                f.reason.code()
            )
        }),
        findings.len(),
        ", ",
    )
}

/// How annotations name a target's site (the name clipped to [`TEXT_MAX_CHARS`]).
fn site_label(t: &Target) -> String {
    workload::label(t.noun, &clip(&t.container, TEXT_MAX_CHARS))
}

/// The warning for a finding: the image is shortened in the middle if need be, so the rule
/// broken stays readable.
pub fn finding_warning(f: &Finding) -> String {
    let container = clip(&f.container, WARNING_MAX_CHARS);
    let make = |image: &str| {
        format!(
            "pinhook: {} {:?}: image {:?} {}",
            f.noun,
            container,
            image,
            f.reason.brief()
        )
    };
    let full = make(&f.image);
    let excess = full.chars().count().saturating_sub(WARNING_MAX_CHARS);
    if excess == 0 {
        return full;
    }
    let chars: Vec<char> = f.image.chars().collect();
    let keep = chars.len().saturating_sub(excess + 1);
    let head = keep / 2;
    let tail = keep - head;
    let short: String = chars[..head]
        .iter()
        .chain(['…'].iter())
        .chain(chars[chars.len() - tail..].iter())
        .collect();
    fit(make(&short))
}

/// The warning for a pinned, reused or stale image; what happened comes before the image, so
/// the cut at the end never hides it.
fn pin_warning(t: &Target, r: &PinResult) -> String {
    let digest = r.digest().unwrap_or_default();
    let short = &digest[..digest.len().min(19)];
    fit(match r {
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
    })
}

/// The one truncation rule for warnings: at most [`WARNING_MAX_CHARS`] characters, cut at the
/// end with `…`.
fn fit(s: String) -> String {
    if s.chars().count() <= WARNING_MAX_CHARS {
        s
    } else {
        let mut t: String = s.chars().take(WARNING_MAX_CHARS - 1).collect();
        t.push('…');
        t
    }
}

/// One line for a tag that cannot be pinned: the site, the image, the error and what to do;
/// at most [`LINE_MAX_CHARS`], escaped (the error may quote a registry).
pub fn unresolved(t: &Target, e: &ResolveError) -> String {
    let line = format!(
        "{} {:?} ({}): cannot pin image {:?}: {e}; {}",
        t.noun,
        clip(&t.container, TEXT_MAX_CHARS),
        t.path,
        clip(&t.image, TEXT_MAX_CHARS),
        hint(e)
    );
    shown(&line, LINE_MAX_CHARS).into_owned()
}

/// A JSON Patch with a `test` before each `replace`, touching only image fields.
fn patch(rewritten: &[(&Target, &PinResult, String)]) -> Patch {
    let mut ops = Vec::with_capacity(rewritten.len() * 2);
    for (t, _, pinned) in rewritten {
        ops.push(PatchOperation::Test(TestOperation {
            path: t.pointer.clone(),
            value: Value::String(t.image.clone()),
        }));
        ops.push(PatchOperation::Replace(ReplaceOperation {
            path: t.pointer.clone(),
            value: Value::String(pinned.clone()),
        }));
    }
    Patch(ops)
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
        ResolveError::ShuttingDown { .. } => "retry: another pinhook replica will answer",
        ResolveError::Busy { .. } => {
            "retry: other lookups to that registry were queued ahead of this one"
        }
        ResolveError::Invalid { .. }
        | ResolveError::NoCachedAnswer { .. }
        | ResolveError::NoEndpoint { .. } => "pin the image by digest yourself",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::fixtures::{pod, request};
    use crate::admission::{Endpoint, ObjectRef, review};
    use crate::pin::{NoPin, Source};
    use crate::policy::{Policy, Reason};
    use crate::reference::ImageRef;
    use crate::workload::PullCredentials;
    use serde_json::json;

    const D: &str = "sha256:1111111111111111111111111111111111111111111111111111111111111111";

    fn decided(policy: &Policy, images: &[(&str, &str)]) -> Decision {
        review(
            policy,
            &request(("", "Pod"), "CREATE", pod(images), Value::Null),
            Endpoint::Validate,
        )
    }

    #[test]
    fn denial_names_every_offending_container() {
        let d = decided(
            &Policy::default(),
            &[
                ("web", "nginx:latest"),
                ("ok", "nginx:1.27.1"),
                ("side", "busybox"),
            ],
        );
        let msg = denial_message(&d);
        assert!(msg.contains(r#"container "web" (spec.containers[0]): image "nginx:latest" uses mutable tag "latest"; use a version tag or a digest"#), "{msg}");
        assert!(
            msg.contains(r#"container "side" (spec.containers[2])"#),
            "{msg}"
        );
        assert!(
            msg.starts_with("pinhook denied Pod shop/web-*: 2 images violate"),
            "{msg}"
        );
        let a = Answer::new(&d, &[]);
        assert_eq!(a.status.message, msg);
    }

    #[test]
    fn denial_has_code_403_an_annotation_a_record_and_labels() {
        let d = decided(&Policy::default(), &[("web", "nginx:latest")]);
        let a = Answer::new(&d, &[]);
        assert!(!a.allowed);
        assert_eq!(a.status.code, 403);
        assert_eq!(a.status.reason, "Forbidden");
        assert_eq!(
            a.audit_annotations["rejected-images"],
            "web=nginx:latest (mutable-tag)"
        );
        assert_eq!(a.audit_annotations["mode"], "enforce");
        assert!(a.patch.is_none());
        assert_eq!(a.records.len(), 1);
        assert_eq!(a.records[0].event(), "denied");
        assert_eq!(a.labels.decision, "denied");
        assert_eq!(
            a.labels.violations,
            [ViolationLabels {
                rule: "mutable-tag",
                mode: "enforce"
            }]
        );
    }

    #[test]
    fn warn_mode_allows_with_short_warnings() {
        let policy = Policy::from_yaml("mode: warn", "t").unwrap();
        let long = format!(
            "registry.example.com/{}/app:latest",
            "very-long-path".repeat(10)
        );
        let d = decided(&policy, &[("web", "nginx:latest"), ("x", &long)]);
        let a = Answer::new(&d, &[]);
        assert!(a.allowed);
        assert_eq!(a.warnings.len(), 2);
        assert_eq!(
            a.warnings[0],
            r#"pinhook: container "web": image "nginx:latest" uses mutable tag "latest""#
        );
        assert!(
            a.warnings
                .iter()
                .all(|w| w.chars().count() <= WARNING_MAX_CHARS),
            "{:?}",
            a.warnings
        );
        assert!(
            a.warnings[1].contains('…') && a.warnings[1].contains("mutable tag"),
            "{}",
            a.warnings[1]
        );
        assert_eq!(a.labels.decision, "warned");
    }

    #[test]
    fn audit_mode_allows_without_warnings() {
        let policy = Policy::from_yaml("mode: audit", "t").unwrap();
        let d = decided(&policy, &[("web", "nginx:latest")]);
        assert_eq!(d.outcome(), Outcome::Audited);
        let a = Answer::new(&d, &[]);
        assert!(a.allowed && a.warnings.is_empty());
        assert!(a.audit_annotations.contains_key("audited-images"));
        assert_eq!(a.records[0].event(), "audited");
    }

    #[test]
    fn a_clean_request_gets_an_empty_answer() {
        let d = decided(&Policy::default(), &[("ok", "nginx:1.27.1")]);
        let a = Answer::new(&d, &[]);
        assert!(a.allowed && a.warnings.is_empty() && a.audit_annotations.is_empty());
        assert!(a.records.is_empty() && a.patch.is_none());
        assert_eq!(a.labels, Answer::allow().labels);
    }

    /// A decision pinning `n` containers `shop/appN:1.0.0`.
    fn pinning(n: usize, on_failure: OnResolveFailure) -> Decision {
        let targets = (0..n)
            .map(|i| Target {
                container: format!("c{i}"),
                noun: "container",
                path: format!("spec.containers[{i}]"),
                pointer: format!("/spec/containers/{i}/image").try_into().unwrap(),
                image: format!("shop/app{i}:1.0.0"),
                reference: ImageRef::parse(&format!("shop/app{i}:1.0.0")).unwrap(),
                source: Source::Resolve,
            })
            .collect();
        Decision {
            object: ObjectRef {
                kind: "Pod".into(),
                namespace: "shop".into(),
                name: "p".into(),
                generate_name: String::new(),
            },
            endpoint: Endpoint::Mutate,
            mode: Some(Mode::Enforce),
            skipped: None,
            findings: Vec::new(),
            pin: Ok(PinPlan {
                targets,
                credentials: PullCredentials::default(),
                allowed_registries: None,
                stale_if_error: Duration::from_secs(3600),
                keep_tag: true,
                on_failure,
            }),
        }
    }

    #[test]
    fn patch_tests_then_replaces_and_applies() {
        let d = pinning(2, OnResolveFailure::Deny);
        let results = [
            PinResult::Pinned { digest: D.into() },
            PinResult::Reused { digest: D.into() },
        ];
        let a = Answer::new(&d, &results);
        let mut doc = json!({"spec": {"containers": [{"name": "c0", "image": "shop/app0:1.0.0"}, {"name": "c1", "image": "shop/app1:1.0.0"}]}});
        let patch = a.patch.unwrap();
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
        assert_eq!(a.labels.pins, ["pinned", "reused"]);
        assert_eq!(a.records[0].event(), "pinned");
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
        let d = pinning(2, OnResolveFailure::Allow);
        let results = [
            PinResult::Failed(nf.clone()),
            PinResult::Failed(down.clone()),
        ];
        let a = Answer::new(&d, &results);
        assert!(!a.allowed);
        assert_eq!(
            a.audit_annotations["unresolved-images"],
            r#"container "c0" (spec.containers[0]): cannot pin image "shop/app0:1.0.0": tag "1.0.0" not found in r/shop/app0; push the tag or correct the image name"#
        );
        assert_eq!(a.labels.decision, "denied");
        // The denial record lists every image that failed, the one allowed unpinned too.
        assert_eq!(a.records.len(), 1);
        let Entry::Images { event, images, .. } = &a.records[0] else {
            panic!("{:?}", a.records)
        };
        assert_eq!((*event, images.len()), ("denied", 2));

        let d = pinning(1, OnResolveFailure::Allow);
        let results = [PinResult::Failed(down.clone())];
        let a = Answer::new(&d, &results);
        assert!(a.allowed);
        assert!(a.audit_annotations["unpinned-images"].contains("did not answer"));
        assert_eq!(
            a.warnings,
            [r#"pinhook: container "c0": shop/app0:1.0.0 left unpinned: timeout"#]
        );
        assert_eq!(a.records[0].event(), "unpinned");

        let d = pinning(1, OnResolveFailure::Deny);
        let results = [PinResult::Failed(down)];
        let a = Answer::new(&d, &results);
        assert!(
            a.status
                .message
                .contains("registry r did not answer within 1.0s"),
            "{}",
            a.status.message
        );
    }

    #[test]
    fn warnings_stay_short_and_say_what_happened() {
        let d = pinning(2, OnResolveFailure::Deny);
        let results = [
            PinResult::Pinned { digest: D.into() },
            PinResult::Stale {
                digest: D.into(),
                age: Duration::from_secs(720),
            },
        ];
        let a = Answer::new(&d, &results);
        let w = &a.warnings;
        assert_eq!(
            w[0],
            r#"pinhook: container "c0": shop/app0:1.0.0 pinned to sha256:111111111111…"#
        );
        assert!(w[1].contains("resolved 12m0s ago"), "{}", w[1]);
        assert!(w.iter().all(|w| w.chars().count() <= WARNING_MAX_CHARS));
        assert_eq!(
            a.audit_annotations["pinned-images"],
            format!(
                "c0: shop/app0:1.0.0 → shop/app0:1.0.0@{D}, c1: shop/app1:1.0.0 → shop/app1:1.0.0@{D}"
            )
        );
    }

    #[test]
    fn a_finding_warning_and_a_pin_warning_share_one_limit() {
        let long = "x".repeat(300);
        let w = fit(long);
        assert_eq!(w.chars().count(), WARNING_MAX_CHARS);
        assert!(w.ends_with('…'));
        let f = Finding {
            container: "c".repeat(200),
            noun: "container",
            path: "spec.containers[0]".into(),
            pointer: "/spec/containers/0/image".try_into().unwrap(),
            image: "nginx:latest".into(),
            reason: Reason::MutableTag("latest".into()),
        };
        assert_eq!(finding_warning(&f).chars().count(), WARNING_MAX_CHARS);
        assert_eq!(
            pinning(1, OnResolveFailure::Deny)
                .pin
                .map(|p| p.targets.len()),
            Ok::<_, NoPin>(1)
        );
    }

    /// `n` containers `cI` with image `nginx:latest` (each a finding under the built-in policy).
    fn many(n: usize) -> Vec<(String, String)> {
        (0..n)
            .map(|i| (format!("c{i}"), "nginx:latest".to_owned()))
            .collect()
    }

    fn refs(v: &[(String, String)]) -> Vec<(&str, &str)> {
        v.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect()
    }

    fn audit_line(a: &Answer<'_>, d: &Decision, i: usize) -> String {
        let info = crate::audit::RequestInfo::default();
        serde_json::to_string(&crate::audit::Record {
            header: crate::audit::Header::new(a.records[i].event(), d, &info),
            entry: &a.records[i],
        })
        .unwrap()
    }

    #[test]
    fn ten_thousand_findings_give_a_bounded_denial() {
        let images = many(10_000);
        let d = decided(&Policy::default(), &refs(&images));
        let a = Answer::new(&d, &[]);
        let msg = &a.status.message;
        assert!(
            msg.starts_with("pinhook denied Pod shop/web-*: 10000 images violate"),
            "{msg}"
        );
        assert_eq!(msg.lines().count(), 1 + LISTED_MAX + 1);
        assert!(msg.ends_with("\n- and 9980 more"), "{msg}");
        assert!(msg.len() < 4 * 1024, "{} bytes", msg.len());
        let ann = &a.audit_annotations["rejected-images"];
        assert!(
            ann.starts_with("c0=nginx:latest (mutable-tag), c1=nginx:latest"),
            "{ann}"
        );
        assert!(ann.ends_with(", and 9980 more"), "{ann}");
        assert_eq!(ann.matches("(mutable-tag)").count(), LISTED_MAX);
        let Entry::Violations {
            violations,
            omitted,
            ..
        } = &a.records[0]
        else {
            panic!("{:?}", a.records[0])
        };
        assert_eq!((violations.len(), *omitted), (AUDIT_ITEMS_MAX, 9950));
        let line = audit_line(&a, &d, 0);
        assert!(line.len() < 32 * 1024, "{} bytes", line.len());
        assert!(line.ends_with(r#","omitted":9950}"#), "{line}");
        // The labels still count every violation.
        assert_eq!(a.labels.violations.len(), 10_000);
    }

    #[test]
    fn ten_thousand_warnings_become_ten_and_a_count() {
        let policy = Policy::from_yaml("mode: warn", "t").unwrap();
        let images = many(10_000);
        let d = decided(&policy, &refs(&images));
        let a = Answer::new(&d, &[]);
        assert!(a.allowed);
        assert_eq!(a.warnings.len(), WARNINGS_MAX + 1);
        assert_eq!(
            a.warnings[WARNINGS_MAX],
            "pinhook: and 9990 more warnings (see the audit annotations)"
        );
        assert!(
            a.warnings
                .iter()
                .all(|w| w.chars().count() <= WARNING_MAX_CHARS)
        );
        let total: usize = a.warnings.iter().map(String::len).sum();
        assert!(total < 4096, "{total} bytes of warnings");
        // Exactly WARNINGS_MAX warnings: no count.
        let images = many(WARNINGS_MAX);
        let d = decided(&policy, &refs(&images));
        let a = Answer::new(&d, &[]);
        assert_eq!(a.warnings.len(), WARNINGS_MAX);
        assert!(!a.warnings.iter().any(|w| w.contains("more warnings")));
    }

    #[test]
    fn ten_thousand_pins_give_bounded_warnings_annotations_and_records() {
        let d = pinning(10_000, OnResolveFailure::Deny);
        let results: Vec<PinResult> = (0..10_000)
            .map(|_| PinResult::Pinned { digest: D.into() })
            .collect();
        let a = Answer::new(&d, &results);
        assert!(a.allowed);
        assert_eq!(a.warnings.len(), WARNINGS_MAX + 1);
        assert_eq!(
            a.warnings[WARNINGS_MAX],
            "pinhook: and 9990 more warnings (see the audit annotations)"
        );
        let ann = &a.audit_annotations["pinned-images"];
        assert_eq!(ann.matches(" → ").count(), LISTED_MAX);
        assert!(
            ann.ends_with(", and 9980 more") && ann.len() < 4096,
            "{ann}"
        );
        // The patch pins every image: it is what the request asked for.
        assert_eq!(a.patch.as_ref().unwrap().0.len(), 20_000);
        let Entry::Images {
            images, omitted, ..
        } = &a.records[0]
        else {
            panic!()
        };
        assert_eq!((images.len(), *omitted), (AUDIT_ITEMS_MAX, 9950));
        assert!(audit_line(&a, &d, 0).len() < 32 * 1024);

        let nf = ResolveError::NotFound {
            registry: "r".into(),
            repository: "shop/app".into(),
            tag: "1.0.0".into(),
        };
        let results: Vec<PinResult> = (0..10_000).map(|_| PinResult::Failed(nf.clone())).collect();
        let a = Answer::new(&d, &results);
        assert!(!a.allowed);
        let msg = &a.status.message;
        assert!(
            msg.starts_with("pinhook could not pin Pod shop/p: 10000 images could not be resolved"),
            "{msg}"
        );
        assert_eq!(msg.lines().count(), 1 + LISTED_MAX + 1);
        assert!(msg.ends_with("\n- and 9980 more") && msg.len() < 8 * 1024);
        let ann = &a.audit_annotations["unresolved-images"];
        assert!(ann.ends_with("; and 9980 more") && ann.len() < 8 * 1024);
        let Entry::Images {
            images, omitted, ..
        } = &a.records[0]
        else {
            panic!()
        };
        assert_eq!((images.len(), *omitted), (AUDIT_ITEMS_MAX, 9950));
    }

    #[test]
    fn huge_names_and_images_are_clipped_everywhere() {
        let name = "n".repeat(100_000);
        let image = format!("registry.example/{}:latest", "x".repeat(100_000));
        let d = decided(&Policy::default(), &[(&name, &image)]);
        let a = Answer::new(&d, &[]);
        let msg = &a.status.message;
        assert!(msg.len() < 3 * TEXT_MAX_CHARS + 256, "{} bytes", msg.len());
        assert!(msg.contains('…'));
        assert!(a.audit_annotations["rejected-images"].len() < 3 * TEXT_MAX_CHARS);
        assert!(audit_line(&a, &d, 0).len() < 4 * TEXT_MAX_CHARS + 1024);
    }

    #[test]
    fn control_characters_never_reach_a_message_annotation_or_audit_line() {
        let evil = "\n- container \"x\": fake\u{1b}[31m\r\u{202e}";
        let object = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"generateName": format!("web-{evil}"), "namespace": format!("shop{evil}")},
            "spec": {"containers": [{"name": format!("c{evil}"), "image": "nginx:latest"},
                                    {"name": "d", "image": format!("nginx:1{evil}")}]}
        });
        let mut req = request(("", "Pod"), "CREATE", object, Value::Null);
        req.namespace = Some(format!("shop{evil}"));
        let d = review(&Policy::default(), &req, Endpoint::Validate);
        let a = Answer::new(&d, &[]);
        let clean = |s: &str| {
            !s.chars()
                .any(|c| c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c))
        };
        let msg = &a.status.message;
        assert_eq!(msg.lines().count(), 3, "{msg}");
        assert!(msg.lines().all(clean), "{msg:?}");
        assert!(
            msg.starts_with(
                r#"pinhook denied Pod shop\n- container "x": fake\u{1b}[31m\r\u{202e}/web-\n- container "x": fake\u{1b}[31m\r\u{202e}*: 2 images"#
            ),
            "{msg}"
        );
        for v in a.audit_annotations.values() {
            assert!(clean(v), "{v:?}");
        }
        let line = audit_line(&a, &d, 0);
        assert!(!line.contains('\n') && !line.contains('\u{1b}'), "{line}");
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["namespace"], format!("shop{evil}"));
        // Warnings too.
        let policy = Policy::from_yaml("mode: warn", "t").unwrap();
        let d = review(&policy, &req, Endpoint::Validate);
        let a = Answer::new(&d, &[]);
        assert_eq!(a.warnings.len(), 2);
        assert!(a.warnings.iter().all(|w| clean(w)), "{:?}", a.warnings);
    }
}
