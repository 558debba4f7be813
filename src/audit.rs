//! The audit trail: one JSON line per request with findings, emitted through tracing on the
//! `pinhook::audit` target and written verbatim, one write per line, by [`AuditLayer`].

use std::borrow::Cow;
use std::io::Write;

use serde::Serialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tracing::field::{Field, Visit};
use tracing_subscriber::Layer as _;
use tracing_subscriber::filter::{Filtered, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;

use crate::admission::{Decision, Finding};
use crate::answer::{LINE_MAX_CHARS, TEXT_MAX_CHARS};
use crate::pin::{PinResult, Target};
use crate::resolve::ResolveError;
use crate::text::clip;

/// The tracing target audit events are emitted on.
pub const TARGET: &str = "pinhook::audit";

/// One violation in an audit record.
#[derive(Debug, Clone, Serialize)]
pub struct Violation<'a> {
    /// The container's (or image volume's) name, clipped to [`TEXT_MAX_CHARS`].
    pub container: Cow<'a, str>,
    /// What it is: `container` or `volume`.
    pub site: &'static str,
    /// Field path, e.g. `spec.containers[0]`.
    pub path: &'a str,
    /// The image as written, clipped to [`TEXT_MAX_CHARS`].
    pub image: Cow<'a, str>,
    /// Machine-readable rule, e.g. `mutable-tag`.
    pub rule: &'static str,
    /// The full sentence shown to the user.
    pub reason: String,
}

impl<'a> Violation<'a> {
    /// The record of one finding.
    pub fn of(f: &'a Finding) -> Self {
        let image = clip(&f.image, TEXT_MAX_CHARS);
        Self {
            container: clip(&f.container, TEXT_MAX_CHARS),
            site: f.noun,
            path: &f.path,
            reason: f.reason.describe(&image),
            image,
            rule: f.reason.code(),
        }
    }
}

/// One image in a pinning record.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PinnedImage<'a> {
    /// The container's (or image volume's) name, clipped to [`TEXT_MAX_CHARS`].
    pub container: Cow<'a, str>,
    /// What it is: `container` or `volume`.
    pub site: &'static str,
    /// Field path.
    pub path: &'a str,
    /// The image as written, clipped to [`TEXT_MAX_CHARS`].
    pub image: Cow<'a, str>,
    /// The reference written instead (absent when left unpinned).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pinned: Option<String>,
    /// `pinned`, `reused`, `stale`, `unpinned` or `failed`.
    pub result: &'static str,
    /// Age of a stale digest, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_seconds: Option<u64>,
    /// Why it could not be pinned, clipped to [`LINE_MAX_CHARS`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl<'a> PinnedImage<'a> {
    /// An image rewritten to `pinned`.
    pub fn pinned(t: &'a Target, r: &PinResult, pinned: String) -> Self {
        Self {
            container: clip(&t.container, TEXT_MAX_CHARS),
            site: t.noun,
            path: &t.path,
            image: clip(&t.image, TEXT_MAX_CHARS),
            pinned: Some(pinned),
            result: r.label(),
            stale_seconds: match r {
                PinResult::Stale { age, .. } => Some(age.as_secs()),
                _ => None,
            },
            error: None,
        }
    }

    /// An image that could not be pinned, recorded as `result`.
    pub fn failed(t: &'a Target, result: &'static str, e: &ResolveError) -> Self {
        Self {
            container: clip(&t.container, TEXT_MAX_CHARS),
            site: t.noun,
            path: &t.path,
            image: clip(&t.image, TEXT_MAX_CHARS),
            pinned: None,
            result,
            stale_seconds: None,
            error: Some(clip(&e.to_string(), LINE_MAX_CHARS).into_owned()),
        }
    }
}

/// One record of the audit trail, without its header.
#[derive(Debug, Clone, Serialize)]
#[serde(untagged)]
pub enum Entry<'a> {
    /// `admission.denied`, `.warned` or `.audited` with the findings.
    Violations {
        /// `denied`, `warned` or `audited`.
        #[serde(skip)]
        event: &'static str,
        /// The offending containers, at most [`AUDIT_ITEMS_MAX`](crate::answer::AUDIT_ITEMS_MAX).
        violations: Vec<Violation<'a>>,
        /// How many more were found but not listed (absent when none).
        #[serde(skip_serializing_if = "is_zero")]
        omitted: usize,
    },
    /// `admission.pinned`, `.unpinned`, or `.denied` for tags that cannot be pinned.
    Images {
        /// `pinned`, `unpinned` or `denied`.
        #[serde(skip)]
        event: &'static str,
        /// The images concerned, at most [`AUDIT_ITEMS_MAX`](crate::answer::AUDIT_ITEMS_MAX).
        images: Vec<PinnedImage<'a>>,
        /// How many more there were but are not listed (absent when none).
        #[serde(skip_serializing_if = "is_zero")]
        omitted: usize,
    },
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Entry<'_> {
    /// The event name without its `admission.` prefix.
    pub fn event(&self) -> &'static str {
        match self {
            Entry::Violations { event, .. } | Entry::Images { event, .. } => event,
        }
    }
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
    /// The namespace, clipped to [`TEXT_MAX_CHARS`] like every request-supplied name.
    pub namespace: Cow<'a, str>,
    /// The object's kind.
    pub kind: Cow<'a, str>,
    /// The object's name (empty when generated).
    pub name: Cow<'a, str>,
    /// `metadata.generateName`.
    pub generate_name: Cow<'a, str>,
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
    /// The header of record `event` for `decision`, asked by `info`.
    pub fn new(event: &str, decision: &'a Decision, info: &'a RequestInfo) -> Self {
        Self {
            timestamp: OffsetDateTime::now_utc()
                .format(&Rfc3339)
                .unwrap_or_default(),
            event: format!("admission.{event}"),
            uid: &info.uid,
            operation: &info.operation,
            namespace: clip(&decision.object.namespace, TEXT_MAX_CHARS),
            kind: clip(&decision.object.kind, TEXT_MAX_CHARS),
            name: clip(&decision.object.name, TEXT_MAX_CHARS),
            generate_name: clip(&decision.object.generate_name, TEXT_MAX_CHARS),
            user: &info.user,
            dry_run: info.dry_run,
            mode: decision.mode.map(|m| m.as_str()).unwrap_or_default(),
            endpoint: decision.endpoint.as_str(),
        }
    }
}

/// An audit record: the header, then the entry's fields.
#[derive(Debug, Serialize)]
pub struct Record<'a, 'e> {
    /// Who asked for what.
    #[serde(flatten)]
    pub header: Header<'a>,
    /// What happened.
    #[serde(flatten)]
    pub entry: &'e Entry<'e>,
}

/// Each of an answer's `entries` as one JSON line (without the newline).
pub fn lines(entries: &[Entry<'_>], decision: &Decision, info: &RequestInfo) -> Vec<String> {
    let mut out = Vec::with_capacity(entries.len());
    for entry in entries {
        let record = Record {
            header: Header::new(entry.event(), decision, info),
            entry,
        };
        match serde_json::to_string(&record) {
            Ok(line) => out.push(line),
            Err(e) => tracing::error!(error = %e, uid = info.uid, "cannot serialize audit record"),
        }
    }
    out
}

/// Writes audit lines on the audit target, one event each.
pub fn write(lines: &[String]) {
    for line in lines {
        tracing::info!(target: TARGET, line = line.as_str());
    }
}

/// Writes each of an answer's `entries` as one JSON line on the audit target.
pub fn record(entries: &[Entry<'_>], decision: &Decision, info: &RequestInfo) {
    write(&lines(entries, decision, info));
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
    use crate::admission::{Endpoint, ObjectRef};
    use crate::pin::NoPin;
    use crate::policy::{Mode, Reason};

    fn decision(mode: Mode) -> Decision {
        Decision {
            object: ObjectRef {
                kind: "Pod".into(),
                namespace: "shop".into(),
                name: String::new(),
                generate_name: "web-".into(),
            },
            endpoint: Endpoint::Validate,
            mode: Some(mode),
            skipped: None,
            findings: vec![Finding {
                container: "web".into(),
                noun: "container",
                path: "spec.containers[0]".into(),
                pointer: "/spec/containers/0/image".try_into().unwrap(),
                image: "nginx:latest".into(),
                reason: Reason::MutableTag("latest".into()),
            }],
            pin: Err(NoPin::NotRequested),
        }
    }

    /// The records of `d`'s findings, as `answer` writes them.
    fn records(d: &Decision, info: &RequestInfo) -> Vec<serde_json::Value> {
        let event = match d.mode {
            _ if d.findings.is_empty() => return Vec::new(),
            Some(Mode::Warn) => "warned",
            Some(Mode::Audit) => "audited",
            _ => "denied",
        };
        [Entry::Violations {
            event,
            violations: d.findings.iter().map(Violation::of).collect(),
            omitted: 0,
        }]
        .iter()
        .map(|entry| {
            serde_json::to_value(Record {
                header: Header::new(entry.event(), d, info),
                entry,
            })
            .unwrap()
        })
        .collect()
    }

    #[test]
    fn record_has_every_field() {
        let d = decision(Mode::Enforce);
        let info = RequestInfo {
            uid: "u1".into(),
            operation: "CREATE".into(),
            user: "alice".into(),
            dry_run: true,
        };
        let v = &records(&d, &info)[0];
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
        assert_eq!(v["endpoint"], "validate");
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
            records(&decision(Mode::Warn), &info)[0]["event"],
            "admission.warned"
        );
        assert_eq!(
            records(&decision(Mode::Audit), &info)[0]["event"],
            "admission.audited"
        );
    }

    #[test]
    fn the_entry_follows_the_header_in_one_object() {
        let d = decision(Mode::Enforce);
        let v = &records(&d, &RequestInfo::default())[0];
        let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
        assert_eq!(keys.len(), 13, "{keys:?}");
        assert!(v.get("images").is_none() && v["violations"].is_array());
    }
}
