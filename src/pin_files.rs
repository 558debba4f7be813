//! `pinhook pin`: manifests pinned in place, before they reach the cluster, with the webhook's
//! policy, resolver and words. Only image strings change (and a kustomization entry gains a
//! `digest:`); every other byte of a file stays as it was.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::admission::View;
use crate::manifest::{self, Document, Splice};
use crate::offline::{ImageOutcome, Offline};
use crate::workload;

/// Exit status: nothing to do, or everything pinned.
pub const EXIT_CLEAN: i32 = 0;
/// Exit status: an image is denied or cannot be resolved (or, with `--check`, would be pinned).
pub const EXIT_PROBLEM: i32 = 1;
/// Exit status: some input could not be read, parsed or written.
pub const EXIT_UNREADABLE: i32 = 2;

/// How to pin.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Change nothing; report what would change.
    pub check: bool,
    /// Resolve `name:tag@digest` again and update the digest if the tag moved.
    pub refresh: bool,
    /// The namespace of objects that name none.
    pub namespace: String,
}

/// What a run did.
#[derive(Debug, Default)]
pub struct Report {
    /// Files read.
    pub files: usize,
    /// Images pinned (or, with `--check`, that would be).
    pub pinned: usize,
    /// Images the policy denies.
    pub denied: usize,
    /// Images that could not be resolved.
    pub unresolved: usize,
    /// Files or documents that could not be used.
    pub errors: usize,
    /// One line per image changed, denied or unresolved, and per note, in order.
    pub lines: Vec<String>,
}

impl Report {
    /// 2 if any input was unusable, else 1 if an image is denied, unresolved or (with
    /// `check`) not pinned yet, else 0.
    pub fn exit_code(&self, check: bool) -> i32 {
        if self.errors > 0 {
            EXIT_UNREADABLE
        } else if self.denied > 0 || self.unresolved > 0 || (check && self.pinned > 0) {
            EXIT_PROBLEM
        } else {
            EXIT_CLEAN
        }
    }

    /// The summary line.
    pub fn summary(&self, check: bool) -> String {
        format!(
            "pinhook pin: {} file(s) read, {} image(s) {}, {} denied, {} unresolved, {} input error(s)",
            self.files,
            self.pinned,
            if check { "would be pinned" } else { "pinned" },
            self.denied,
            self.unresolved,
            self.errors
        )
    }
}

/// Pins every file of `paths` (`-`: stdin to stdout).
pub async fn pin_paths(offline: &Offline, paths: &[PathBuf], opts: &Options) -> Report {
    let mut report = Report::default();
    for given in paths {
        // Files found by walking a directory may be anything; files named are meant.
        let walked = given.is_dir();
        for path in manifest::files(std::slice::from_ref(given)) {
            let path = match path {
                Ok(p) => p,
                Err(e) => {
                    report.errors += 1;
                    report.lines.push(e.to_string());
                    continue;
                }
            };
            if walked && is_helm_template(&path) {
                report.lines.push(format!(
                    "{}: skipped: a Helm template (pin the rendered output: helm template … | pinhook pin -)",
                    path.display()
                ));
                continue;
            }
            pin_file(offline, &path, walked, opts, &mut report).await;
        }
    }
    report
}

/// A file under `templates/` of a directory holding a `Chart.yaml`.
fn is_helm_template(path: &Path) -> bool {
    path.ancestors().skip(1).any(|dir| {
        dir.file_name().is_some_and(|n| n == "templates")
            && dir
                .parent()
                .is_some_and(|chart| chart.join("Chart.yaml").is_file())
    })
}

async fn pin_file(
    offline: &Offline,
    path: &Path,
    walked: bool,
    opts: &Options,
    report: &mut Report,
) {
    let stdin = path == Path::new("-");
    let name = path.display().to_string();
    let text = match manifest::read(path) {
        Ok(t) => t,
        Err(e) => {
            report.errors += 1;
            report.lines.push(format!("{name}: cannot read: {e}"));
            return;
        }
    };
    report.files += 1;
    let kustomization = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
        matches!(
            n,
            "kustomization.yaml" | "kustomization.yml" | "Kustomization"
        )
    });
    let out = pin_text(offline, &name, &text, kustomization, walked, opts, report).await;
    let written = match (&out, stdin, opts.check) {
        (_, true, false) => std::io::stdout()
            .write_all(out.as_deref().unwrap_or(&text).as_bytes())
            .map_err(|e| format!("cannot write to stdout: {e}")),
        (Some(new), false, false) => write_in_place(path, new),
        _ => Ok(()),
    };
    if let Err(e) = written {
        report.errors += 1;
        report.lines.push(format!("{name}: {e}"));
    }
}

/// Replaces `path`'s contents through a temporary file in the same directory, keeping its
/// permissions, so a crash never leaves half a manifest.
fn write_in_place(path: &Path, text: &str) -> Result<(), String> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let tmp = dir.unwrap_or(Path::new(".")).join(format!(
        ".{}.pinhook-tmp",
        path.file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("manifest")
    ));
    let result = std::fs::write(&tmp, text)
        .and_then(|()| {
            if let Ok(meta) = std::fs::metadata(path) {
                std::fs::set_permissions(&tmp, meta.permissions())?;
            }
            std::fs::rename(&tmp, path)
        })
        .map_err(|e| format!("cannot write: {e}"));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Pins the manifests in `text` (named `file` in messages); the new text when it changed.
/// A file found by walking a directory (`walked`) that is not YAML is skipped with a note; a
/// file named on the command line that is not YAML is an input error.
pub async fn pin_text(
    offline: &Offline,
    file: &str,
    text: &str,
    kustomization_file: bool,
    walked: bool,
    opts: &Options,
    report: &mut Report,
) -> Option<String> {
    let docs = match manifest::parse(text) {
        Ok(d) => d,
        Err(e) if walked => {
            report
                .lines
                .push(format!("{file}: skipped: not YAML ({e})"));
            return None;
        }
        Err(e) => {
            report.errors += 1;
            report.lines.push(format!("{file}: {e}"));
            return None;
        }
    };
    let mut splices = Vec::new();
    let mut kubernetes = false;
    let mut foreign = false;
    for doc in &docs {
        if doc.value.is_null() {
            continue;
        }
        if is_kustomization(doc, kustomization_file) {
            kubernetes = true;
            splices.extend(kustomize(offline, file, text, doc, opts, report).await);
            continue;
        }
        let has = |k: &str| doc.value.get(k).and_then(|v| v.as_str()).is_some();
        if !(has("apiVersion") && has("kind")) {
            foreign = true;
            continue;
        }
        kubernetes = true;
        for m in workload::manifests(&doc.value) {
            let (object, view) = View::of_manifest(&m, &opts.namespace);
            let pins = offline.pin(object, view, opts.refresh).await;
            for p in &pins.denied {
                report.denied += 1;
                report
                    .lines
                    .push(format!("{file}: denied: {}: {}", pins.object, p.message));
            }
            for p in &pins.unresolved {
                report.unresolved += 1;
                report.lines.push(format!(
                    "{file}: unresolved: {}: {}",
                    pins.object, p.message
                ));
            }
            for e in &pins.edits {
                let mut pointer = m.pointer.clone();
                pointer.append(&e.pointer);
                match manifest::replace(doc, pointer.as_str(), &e.to) {
                    Ok(s) => {
                        report.pinned += 1;
                        report.lines.push(format!(
                            "{file}: {}: {}: {} {} → {}",
                            if opts.check { "would pin" } else { "pinned" },
                            pins.object,
                            e.site,
                            e.from,
                            e.to
                        ));
                        splices.push(s);
                    }
                    Err(err) => {
                        report.unresolved += 1;
                        report.lines.push(format!(
                            "{file}: unresolved: {}: {}: {err}",
                            pins.object, e.site
                        ));
                    }
                }
            }
        }
    }
    if foreign && !kubernetes {
        report
            .lines
            .push(format!("{file}: skipped: not Kubernetes YAML"));
    }
    if splices.is_empty() {
        return None;
    }
    Some(manifest::apply(text, splices))
}

/// A kustomization: its kind, or a `kustomization.yaml` without a kind.
fn is_kustomization(doc: &Document, kustomization_file: bool) -> bool {
    match doc.value.get("kind").and_then(|k| k.as_str()) {
        Some(kind) => kind == "Kustomization",
        None => kustomization_file && doc.value.is_object(),
    }
}

/// The splices that add or update `digest:` in a kustomization's `images:` entries.
async fn kustomize(
    offline: &Offline,
    file: &str,
    text: &str,
    doc: &Document,
    opts: &Options,
    report: &mut Report,
) -> Vec<Splice> {
    let mut out = Vec::new();
    let Some(images) = doc.value.get("images").and_then(|v| v.as_array()) else {
        return out;
    };
    let namespace = doc
        .value
        .get("namespace")
        .and_then(|v| v.as_str())
        .unwrap_or(&opts.namespace);
    for (i, entry) in images.iter().enumerate() {
        let Some(name) = entry.get("name").and_then(|v| v.as_str()) else {
            continue;
        };
        // A tag written `1.10` is a number to YAML: take it as written.
        let tag = match entry.get("newTag") {
            Some(serde_json::Value::String(t)) => t.clone(),
            Some(v) if !v.is_null() => match doc.scalar(&format!("/images/{i}/newTag")) {
                Some(s) => text[s.start..s.end].to_owned(),
                None => v.to_string(),
            },
            _ => continue,
        };
        let digest = entry.get("digest").and_then(|v| v.as_str());
        if digest.is_some() && !opts.refresh {
            continue;
        }
        let repo = entry
            .get("newName")
            .and_then(|v| v.as_str())
            .unwrap_or(name);
        let image = format!("{repo}:{tag}");
        let path = format!("images[{i}]");
        let label = format!("Kustomization {}", doc_label(doc));
        match offline
            .pin_image(name, &path, &image, namespace, opts.refresh)
            .await
        {
            ImageOutcome::Pinned(d) if Some(d.as_str()) == digest => {}
            ImageOutcome::Pinned(d) => {
                let splice = match digest {
                    Some(_) => manifest::replace(doc, &format!("/images/{i}/digest"), &d).ok(),
                    None => manifest::append(doc, text, &format!("/images/{i}"), "digest", &d),
                };
                if let Some(s) = splice {
                    report.pinned += 1;
                    report.lines.push(format!(
                        "{file}: {}: {label}: image {name:?} ({path}): {image} → digest {d}",
                        if opts.check { "would pin" } else { "pinned" },
                    ));
                    out.push(s);
                }
            }
            ImageOutcome::Denied(m) => {
                report.denied += 1;
                report.lines.push(format!("{file}: denied: {label}: {m}"));
            }
            ImageOutcome::Unresolved(m) => {
                report.unresolved += 1;
                report
                    .lines
                    .push(format!("{file}: unresolved: {label}: {m}"));
            }
            ImageOutcome::Unchanged => {}
        }
    }
    out
}

/// How a kustomization document is named: its `metadata.name`, else its number.
fn doc_label(doc: &Document) -> String {
    doc.value
        .pointer("/metadata/name")
        .and_then(|v| v.as_str())
        .map_or_else(|| format!("(document {})", doc.number), str::to_owned)
}
