//! `pinhook check`: the admission policy applied offline to manifest files, for CI pipelines.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::admission::{self, Decision, Endpoint, Outcome, View};
use crate::answer;
use crate::policy::Policy;
use crate::workload;

/// Exit status: everything passes.
pub const EXIT_CLEAN: i32 = 0;
/// Exit status: at least one image would be denied.
pub const EXIT_DENIED: i32 = 1;
/// Exit status: some input could not be read or parsed.
pub const EXIT_UNREADABLE: i32 = 2;

/// A manifest file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum InputError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The path (`-` for stdin).
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A document is not valid YAML or JSON.
    #[error("{file}: document {document}: {message}")]
    Parse {
        /// The path.
        file: String,
        /// 1-based document number.
        document: usize,
        /// The parser's message, with line and column.
        message: String,
    },
}

/// One object's decision, located in its file.
#[derive(Debug)]
pub struct Checked {
    /// The file it came from.
    pub file: String,
    /// The decision.
    pub decision: Decision,
}

/// The result of checking a set of files.
#[derive(Debug, Default)]
pub struct Report {
    /// Every pod-bearing object found.
    pub checked: Vec<Checked>,
    /// Files or documents that could not be used.
    pub errors: Vec<InputError>,
}

impl Report {
    /// The exit status: 2 if any input was unusable, else 1 if anything is denied, else 0.
    pub fn exit_code(&self) -> i32 {
        if !self.errors.is_empty() {
            EXIT_UNREADABLE
        } else if self
            .checked
            .iter()
            .any(|c| c.decision.outcome() == Outcome::Denied)
        {
            EXIT_DENIED
        } else {
            EXIT_CLEAN
        }
    }

    /// The findings, one line each, in the admission messages' words.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in &self.checked {
            let label = match c.decision.outcome() {
                Outcome::Allowed => continue,
                Outcome::Denied => "denied",
                Outcome::Warned => "warning",
                Outcome::Audited => "audit",
            };
            for f in &c.decision.findings {
                out.push(format!(
                    "{}: {label}: {}: {}",
                    c.file,
                    c.decision.object,
                    answer::violation(f)
                ));
            }
        }
        out
    }
}

/// Reads every file (`-` is stdin) and decides every pod-bearing object in it.
pub fn check_files(policy: &Policy, files: &[PathBuf], default_namespace: &str) -> Report {
    let mut report = Report::default();
    for path in files {
        let name = path.display().to_string();
        let text = match crate::manifest::read(path) {
            Ok(t) => t,
            Err(source) => {
                report.errors.push(InputError::Read { file: name, source });
                continue;
            }
        };
        check_text(policy, &name, &text, default_namespace, &mut report);
    }
    report
}

/// Decides every object in `text` (YAML or JSON, possibly several documents).
pub fn check_text(
    policy: &Policy,
    file: &str,
    text: &str,
    default_namespace: &str,
    report: &mut Report,
) {
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        match Value::deserialize(doc) {
            Ok(value) => check_value(policy, file, &value, default_namespace, report),
            Err(e) => {
                report.errors.push(InputError::Parse {
                    file: file.to_owned(),
                    document: i + 1,
                    message: e.to_string(),
                });
                // The YAML stream cannot be resynchronized after a syntax error.
                break;
            }
        }
    }
}

fn check_value(
    policy: &Policy,
    file: &str,
    value: &Value,
    default_namespace: &str,
    report: &mut Report,
) {
    for manifest in workload::manifests(value) {
        let (object, view) = View::of_manifest(&manifest, default_namespace);
        report.checked.push(Checked {
            file: file.to_owned(),
            decision: admission::decide(policy, object, view, Endpoint::Validate),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(text: &str) -> Report {
        let mut r = Report::default();
        check_text(&Policy::default(), "m.yaml", text, "default", &mut r);
        r
    }

    #[test]
    fn finds_mutable_tag_in_second_document() {
        let r = run(
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, namespace: shop}\nspec:\n  template:\n    spec:\n      containers: [{name: web, image: 'nginx:latest'}]\n",
        );
        assert_eq!(r.exit_code(), EXIT_DENIED);
        assert_eq!(
            r.lines(),
            [
                r#"m.yaml: denied: Deployment shop/web: container "web" (spec.template.spec.containers[0]): image "nginx:latest" uses mutable tag "latest"; use a version tag or a digest"#
            ]
        );
    }

    #[test]
    fn clean_manifest_exits_zero() {
        let r = run(
            r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"},"spec":{"containers":[{"name":"a","image":"nginx:1.27.3"}]}}"#,
        );
        assert_eq!(r.checked.len(), 1);
        assert_eq!(r.exit_code(), EXIT_CLEAN);
    }

    #[test]
    fn list_items_are_checked() {
        let r = run(
            r#"{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"batch/v1","kind":"CronJob","metadata":{"name":"c"},"spec":{"jobTemplate":{"spec":{"template":{"spec":{"containers":[{"name":"a","image":"busybox"}]}}}}}}]}"#,
        );
        assert_eq!(r.exit_code(), EXIT_DENIED);
    }

    #[test]
    fn broken_yaml_is_unreadable() {
        let r = run("apiVersion: v1\nkind: Pod\nspec: [unclosed\n");
        assert_eq!(r.exit_code(), EXIT_UNREADABLE);
        assert!(
            r.errors[0].to_string().starts_with("m.yaml: document 1:"),
            "{}",
            r.errors[0]
        );
    }

    #[test]
    fn exempt_namespace_is_clean() {
        let r = run(
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: kube-system}\nspec: {containers: [{name: a, image: nginx}]}\n",
        );
        assert_eq!(r.exit_code(), EXIT_CLEAN);
    }
}
