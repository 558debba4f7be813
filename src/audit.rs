//! The audit trail: one JSON line per request with findings, emitted through tracing on the
//! `pinhook::audit` target and written verbatim, one write per line, by [`AuditLayer`].

use std::io::Write;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{Filtered, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;

use crate::admission::{Decision, Outcome};
use crate::pin::{PinResult, Pinning};

/// The tracing target audit events are emitted on.
pub const TARGET: &str = "pinhook::audit";

/// One violation in an audit record.
#[derive(Debug, Serialize)]
pub struct Violation<'a> {
    /// The container's (or image volume's) name.
    pub container: &'a str,
    /// What it is: `container` or `volume`.
    pub site: &'static str,
    /// Field path, e.g. `spec.containers[0]`.
    pub path: &'a str,
    /// The image as written.
    pub image: &'a str,
    /// Machine-readable rule, e.g. `mutable-tag`.
    pub rule: &'static str,
    /// The full sentence shown to the user.
    pub reason: String,
}

/// Who asked for what, for the audit record.
#[derive(Debug, Default, Clone)]
pub struct RequestInfo {
    /// `request.uid`.
    pub uid: String,
    /// `CREATE`, `UPDATE`, ….
    pub operation: String,
    /// `request.userInfo.username`.
    pub user: String,
    /// `request.dryRun`.
    pub dry_run: bool,
    /// The endpoint that answered (`validate` or `mutate`).
    pub endpoint: &'static str,
}

/// The fields every audit record starts with: who asked for what, when.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Header<'a> {
    /// RFC 3339 UTC time.
    pub timestamp: String,
    /// `admission.denied`, `.warned`, `.audited`, `.pinned` or `.unpinned`.
    pub event: String,
    /// `request.uid`.
    pub uid: &'a str,
    /// The operation.
    pub operation: &'a str,
    /// The namespace.
    pub namespace: &'a str,
    /// The object's kind.
    pub kind: &'a str,
    /// The object's name (empty when generated).
    pub name: &'a str,
    /// `metadata.generateName`.
    pub generate_name: &'a str,
    /// Who made the request.
    pub user: &'a str,
    /// Whether the request was a dry run.
    pub dry_run: bool,
    /// The policy mode that applied.
    pub mode: &'a str,
    /// The endpoint that answered.
    pub endpoint: &'a str,
}

impl<'a> Header<'a> {
    fn new(event: &str, decision: &'a Decision, info: &'a RequestInfo) -> Self {
        Self {
            timestamp: OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .unwrap_or_default(),
            event: format!("admission.{event}"),
            uid: &info.uid,
            operation: &info.operation,
            namespace: &decision.object.namespace,
            kind: &decision.object.kind,
            name: &decision.object.name,
            generate_name: &decision.object.generate_name,
            user: &info.user,
            dry_run: info.dry_run,
            mode: decision.mode.map(|m| m.as_str()).unwrap_or_default(),
            endpoint: info.endpoint,
        }
    }
}

/// The audit record of one decision with findings.
#[derive(Debug, Serialize)]
pub struct Record<'a> {
    /// Who asked for what.
    #[serde(flatten)]
    pub header: Header<'a>,
    /// Every offending container.
    pub violations: Vec<Violation<'a>>,
}

impl<'a> Record<'a> {
    /// The record for `decision`, or `None` when there is nothing to record.
    pub fn of(decision: &'a Decision, info: &'a RequestInfo) -> Option<Self> {
        let outcome = decision.outcome();
        if outcome == Outcome::Allowed {
            return None;
        }
        Some(Self {
            header: Header::new(outcome.as_str(), decision, info),
            violations: decision
                .findings
                .iter()
                .map(|f| Violation {
                    container: &f.container,
                    site: f.noun,
                    path: &f.path,
                    image: &f.image,
                    rule: f.reason.code(),
                    reason: f.reason.describe(&f.image),
                })
                .collect(),
        })
    }

    /// Emits the record as one JSON line on the audit target.
    pub fn emit(&self) {
        emit(self, self.header.uid);
    }
}

/// One image in a pinning record.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PinnedImage<'a> {
    /// The container's (or image volume's) name.
    pub container: &'a str,
    /// What it is: `container` or `volume`.
    pub site: &'static str,
    /// Field path.
    pub path: &'a str,
    /// The image as written.
    pub image: &'a str,
    /// The reference written instead (absent when left unpinned).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned: Option<String>,
    /// `pinned`, `reused`, `stale` or `failed`.
    pub result: &'static str,
    /// Age of a stale digest, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_seconds: Option<u64>,
    /// Why it could not be pinned.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The audit record of a pinning: `admission.pinned` or `admission.unpinned`.
#[derive(Debug, Serialize)]
pub struct PinRecord<'a> {
    /// Who asked for what.
    #[serde(flatten)]
    pub header: Header<'a>,
    /// The images concerned.
    pub images: Vec<PinnedImage<'a>>,
}

/// Records `admission.pinned` for rewritten images and `admission.unpinned` for images left as
/// they were under `onResolveFailure: allow`; when a tag cannot be pinned and the request is
/// denied, only `admission.denied` with the images that failed (nothing was patched).
pub fn record_pinning(pinning: &Pinning, decision: &Decision, info: &RequestInfo) {
    if !pinning.denials().is_empty() {
        let failed: Vec<PinnedImage<'_>> = pinning
            .results
            .iter()
            .filter_map(|(t, r)| match r {
                PinResult::Failed(e) => Some(PinnedImage {
                    container: &t.container,
                    site: t.noun,
                    path: &t.path,
                    image: &t.image,
                    pinned: None,
                    result: r.label(),
                    stale_seconds: None,
                    error: Some(e.to_string()),
                }),
                _ => None,
            })
            .collect();
        let r = PinRecord {
            header: Header::new("denied", decision, info),
            images: failed,
        };
        emit(&r, info.uid.as_str());
        return;
    }
    let pinned: Vec<PinnedImage<'_>> = pinning
        .rewritten()
        .into_iter()
        .map(|(t, r, p)| PinnedImage {
            container: &t.container,
            site: t.noun,
            path: &t.path,
            image: &t.image,
            pinned: Some(p),
            result: r.label(),
            stale_seconds: match r {
                PinResult::Stale { age, .. } => Some(age.as_secs()),
                _ => None,
            },
            error: None,
        })
        .collect();
    if !pinned.is_empty() {
        let r = PinRecord {
            header: Header::new("pinned", decision, info),
            images: pinned,
        };
        emit(&r, info.uid.as_str());
    }
    let unpinned: Vec<PinnedImage<'_>> = pinning
        .unpinned()
        .into_iter()
        .map(|(t, e)| PinnedImage {
            container: &t.container,
            site: t.noun,
            path: &t.path,
            image: &t.image,
            pinned: None,
            result: "unpinned",
            stale_seconds: None,
            error: Some(e.to_string()),
        })
        .collect();
    if !unpinned.is_empty() {
        let r = PinRecord {
            header: Header::new("unpinned", decision, info),
            images: unpinned,
        };
        emit(&r, info.uid.as_str());
    }
}

fn emit<T: Serialize>(record: &T, uid: &str) {
    match serde_json::to_string(record) {
        Ok(line) => tracing::info!(target: TARGET, line = line.as_str()),
        Err(e) => tracing::error!(error = %e, uid, "cannot serialize audit record"),
    }
}

/// Records the audit line of `decision`, if it has findings.
pub fn record(decision: &Decision, info: &RequestInfo) {
    if let Some(r) = Record::of(decision, info) {
        r.emit();
    }
}

/// A tracing layer that writes the `line` field of audit events, unchanged, to its writer.
///
/// Install it with [`layer`], which filters it to the audit target: a layer without a filter
/// is interested in every callsite, which keeps every `trace!` and `debug!` of the HTTP stack
/// enabled (and every span allocated) on every request, even when nothing is logged.
#[derive(Debug)]
pub struct AuditLayer<W> {
    make_writer: W,
}

/// [`AuditLayer`] writing to `make_writer`, interested only in `INFO` events on [`TARGET`].
pub fn layer<S, W>(make_writer: W) -> Filtered<AuditLayer<W>, Targets, S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + 'static,
{
    AuditLayer { make_writer }.with_filter(Targets::new().with_target(TARGET, tracing::Level::INFO))
}

/// Collects the `line` field of an audit event, newline included.
#[derive(Default)]
struct LineField(Option<String>);

impl Visit for LineField {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "line" {
            let mut line = String::with_capacity(value.len() + 1);
            line.push_str(value);
            line.push('\n');
            self.0 = Some(line);
        }
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "line" {
            self.0 = Some(format!("{value:?}\n"));
        }
    }
}

impl<S, W> tracing_subscriber::Layer<S> for AuditLayer<W>
where
    S: tracing::Subscriber,
    W: for<'w> MakeWriter<'w> + 'static,
{
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if event.metadata().target() != TARGET {
            return;
        }
        let mut field = LineField::default();
        event.record(&mut field);
        if let Some(line) = field.0 {
            // One write per line: a writer shared with other threads never interleaves two
            // records, and a queueing writer queues the record whole.
            if let Err(e) = self.make_writer.make_writer().write_all(line.as_bytes()) {
                eprintln!("pinhook: cannot write an audit line: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admission::{Finding, ObjectRef};
    use crate::policy::{Mode, Reason};

    fn decision(mode: Mode) -> Decision {
        Decision {
            object: ObjectRef {
                kind: "Pod".into(),
                namespace: "shop".into(),
                name: String::new(),
                generate_name: "web-".into(),
            },
            mode: Some(mode),
            skipped: None,
            findings: vec![Finding {
                container: "web".into(),
                noun: "container",
                path: "spec.containers[0]".into(),
                pointer: "/spec/containers/0/image".into(),
                image: "nginx:latest".into(),
                reason: Reason::MutableTag("latest".into()),
            }],
        }
    }

    #[test]
    fn record_has_every_field() {
        let d = decision(Mode::Enforce);
        let info = RequestInfo {
            uid: "u1".into(),
            operation: "CREATE".into(),
            user: "alice".into(),
            dry_run: true,
            endpoint: "validate",
        };
        let v: serde_json::Value = serde_json::to_value(Record::of(&d, &info).unwrap()).unwrap();
        for key in [
            "timestamp",
            "event",
            "uid",
            "operation",
            "namespace",
            "kind",
            "name",
            "user",
            "dryRun",
            "mode",
            "violations",
        ] {
            assert!(v.get(key).is_some(), "missing {key} in {v}");
        }
        assert_eq!(v["event"], "admission.denied");
        assert_eq!(v["dryRun"], true);
        assert_eq!(v["violations"][0]["container"], "web");
        assert_eq!(v["violations"][0]["path"], "spec.containers[0]");
        assert_eq!(v["violations"][0]["image"], "nginx:latest");
        assert!(
            v["violations"][0]["reason"]
                .as_str()
                .unwrap()
                .contains("mutable tag")
        );
    }

    #[test]
    fn event_follows_mode() {
        let info = RequestInfo::default();
        assert_eq!(
            Record::of(&decision(Mode::Warn), &info)
                .unwrap()
                .header
                .event,
            "admission.warned"
        );
        assert_eq!(
            Record::of(&decision(Mode::Audit), &info)
                .unwrap()
                .header
                .event,
            "admission.audited"
        );
    }

    #[test]
    fn nothing_to_record_when_clean() {
        let mut d = decision(Mode::Enforce);
        d.findings.clear();
        assert!(Record::of(&d, &RequestInfo::default()).is_none());
    }
}
