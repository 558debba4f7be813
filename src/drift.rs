//! `pinhook drift`: which references pinned as `name:tag@digest`, in manifest files or in the
//! live workloads of a cluster, have a tag that now points at another digest.
//!
//! Objects come from files (read like `pinhook check` reads them) or from the Kubernetes API
//! (`--cluster`, read-only: `list` of the six pod-bearing kinds); [`Offline::drift`] resolves
//! each `name:tag` again with the webhook's resolver, policy and `--registry-config`.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::{
    apps::v1::{DaemonSet, Deployment, StatefulSet},
    batch::v1::{CronJob, Job},
    core::v1::Pod,
};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use serde::Serialize;
use serde_json::{Value, json};

use crate::admission::View;
use crate::config::{DriftArgs, DriftOutput};
use crate::manifest;
use crate::offline::{Moved, Offline, Unchecked};
use crate::policy::Policy;
use crate::workload;

/// Exit status: every pinned reference was checked and none moved.
pub const EXIT_CURRENT: i32 = 0;
/// Exit status: at least one tag moved.
pub const EXIT_MOVED: i32 = 1;
/// Exit status: the report is incomplete (unusable input, an API error, an unchecked reference).
pub const EXIT_INCOMPLETE: i32 = 2;

/// Objects listed per API call with `--cluster`.
const PAGE: u32 = 500;
/// Objects checked at once (each resolves its references concurrently too).
const CONCURRENT_OBJECTS: usize = 8;

/// Something that keeps the report from being complete.
#[derive(Debug, thiserror::Error)]
pub enum DriftError {
    /// The policy file does not load.
    #[error("{0}")]
    Policy(#[from] crate::policy::PolicyError),
    /// The resolver cannot be set up (`--registry-config`, the policy's `registries`).
    #[error("{0}")]
    Offline(#[from] crate::offline::OfflineError),
    /// The async runtime cannot start.
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// A file or directory could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The path (`-` for stdin).
        file: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A directory could not be listed.
    #[error(transparent)]
    Walk(#[from] crate::manifest::WalkError),
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
    /// No Kubernetes API configuration (neither `KUBECONFIG` nor in-cluster).
    #[error("cannot connect to the Kubernetes API: {0}")]
    Connect(String),
    /// Listing a kind failed.
    #[error("cannot list {plural}{scope}: {message}")]
    List {
        /// The resource, e.g. `deployments`.
        plural: String,
        /// ` in namespace "x"`, or empty for all namespaces.
        scope: String,
        /// The API server's message and code, or the transport error.
        message: String,
    },
}

/// A report entry with the file it was found in (absent for `--cluster`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Located<T> {
    /// The manifest file, for files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The entry.
    #[serde(flatten)]
    pub entry: T,
}

/// The drift of every object read.
#[derive(Debug, Default)]
pub struct Report {
    /// Pinned references whose tag moved.
    pub moved: Vec<Located<Moved>>,
    /// Pinned references still current.
    pub current: usize,
    /// Pinned references that could not be checked.
    pub unchecked: Vec<Located<Unchecked>>,
    /// Pod-bearing objects read.
    pub objects: usize,
    /// Objects left out because the object controlling them is in the report (`--cluster`).
    pub owned: usize,
    /// Input, API and setup errors.
    pub errors: Vec<DriftError>,
}

impl Report {
    /// Pinned references checked (current, moved and unchecked).
    pub fn checked(&self) -> usize {
        self.current + self.moved.len() + self.unchecked.len()
    }

    /// 2 if the report is incomplete (an error or an unchecked reference), else 1 if any tag
    /// moved, else 0.
    pub fn exit_code(&self) -> i32 {
        if !self.errors.is_empty() || !self.unchecked.is_empty() {
            EXIT_INCOMPLETE
        } else if !self.moved.is_empty() {
            EXIT_MOVED
        } else {
            EXIT_CURRENT
        }
    }

    /// One line per moved or unchecked reference.
    pub fn lines(&self) -> Vec<String> {
        let prefix =
            |file: &Option<String>| file.as_ref().map(|f| format!("{f}: ")).unwrap_or_default();
        let moved = self.moved.iter().map(|m| {
            let e = &m.entry;
            format!(
                "{}moved: {}: {} ({}): {} pinned to {}, now {}",
                prefix(&m.file),
                e.object,
                e.site,
                e.path,
                e.tag,
                e.pinned,
                e.current
            )
        });
        let unchecked = self.unchecked.iter().map(|u| {
            let e = &u.entry;
            format!(
                "{}unchecked: {}: {}: {}: {}",
                prefix(&u.file),
                e.object,
                e.site,
                e.image,
                e.error
            )
        });
        moved.chain(unchecked).collect()
    }

    /// The report as one JSON document.
    pub fn to_json(&self) -> Value {
        json!({
            "checked": self.checked(),
            "current": self.current,
            "moved": self.moved,
            "unchecked": self.unchecked,
            "errors": self.errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })
    }

    /// The summary line (without the `pinhook drift: ` prefix).
    pub fn summary(&self) -> String {
        format!(
            "{} pinned reference(s) checked, {} moved, {} unchecked, {} error(s)",
            self.checked(),
            self.moved.len(),
            self.unchecked.len(),
            self.errors.len()
        )
    }
}

/// An object to check, and the file it came from.
#[derive(Debug)]
pub struct Found {
    /// The file (`None`: the cluster).
    pub file: Option<String>,
    /// The object (or a `List` of objects).
    pub value: Value,
}

/// Runs `pinhook drift` with `args`: reads the objects, checks them, and reports.
pub fn run(args: &DriftArgs) -> Report {
    let mut report = Report::default();
    let policy = match &args.policy {
        Some(path) => match Policy::load(path) {
            Ok(p) => p,
            Err(e) => {
                report.errors.push(e.into());
                return report;
            }
        },
        None => Policy::default(),
    };
    let offline = match Offline::new(policy, &args.registry) {
        Ok(o) => o,
        Err(e) => {
            report.errors.push(e.into());
            return report;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            report.errors.push(DriftError::Runtime(e));
            return report;
        }
    };
    runtime.block_on(async {
        let found = if args.cluster {
            match connect().await {
                Ok(client) => {
                    let listed = list_cluster(client, args.namespace.as_deref(), &mut report).await;
                    let (keep, owned) = without_owned(listed);
                    report.owned = owned;
                    keep
                }
                Err(e) => {
                    report.errors.push(e);
                    Vec::new()
                }
            }
        } else {
            read_paths(&args.paths, &mut report)
        };
        let namespace = args.namespace.as_deref().unwrap_or("default");
        check(&offline, &found, namespace, &mut report).await;
    });
    report
}

/// Prints `report` as `args` asks (report on stdout, errors and summary on stderr) and returns
/// the exit status.
pub fn print(args: &DriftArgs, report: &Report) -> i32 {
    match args.output {
        DriftOutput::Text => {
            for line in report.lines() {
                println!("{line}");
            }
        }
        DriftOutput::Json => println!("{:#}", report.to_json()),
    }
    for e in &report.errors {
        eprintln!("pinhook drift: {e}");
    }
    eprintln!("pinhook drift: {}", report.summary());
    report.exit_code()
}

/// Checks every pinned reference of every pod-bearing object of `found`.
pub async fn check(
    offline: &Offline,
    found: &[Found],
    default_namespace: &str,
    report: &mut Report,
) {
    let objects: Vec<_> = found
        .iter()
        .flat_map(|f| {
            workload::manifests(&f.value)
                .into_iter()
                .map(move |m| (f, m))
        })
        .collect();
    report.objects += objects.len();
    let mut results = futures_util::stream::iter(objects.iter().map(|(f, m)| async move {
        let (object, view) = View::of_manifest(m, default_namespace);
        (f, offline.drift(&object, view).await)
    }))
    .buffered(CONCURRENT_OBJECTS);
    while let Some((f, drift)) = results.next().await {
        report.current += drift.current;
        report
            .moved
            .extend(drift.moved.into_iter().map(|entry| Located {
                file: f.file.clone(),
                entry,
            }));
        report
            .unchecked
            .extend(drift.unchecked.into_iter().map(|entry| Located {
                file: f.file.clone(),
                entry,
            }));
    }
}

/// Reads every path: files, `-` (stdin), and directories walked for `*.yaml`, `*.yml` and
/// `*.json` in name order, as `pinhook pin` walks them ([`manifest::files`]).
pub fn read_paths(paths: &[PathBuf], report: &mut Report) -> Vec<Found> {
    let mut found = Vec::new();
    for path in manifest::files(paths) {
        let path = match path {
            Ok(p) => p,
            Err(e) => {
                report.errors.push(e.into());
                continue;
            }
        };
        let name = path.display().to_string();
        match crate::manifest::read(&path) {
            Ok(text) => found.extend(parse(&name, &text, report)),
            Err(source) => report.errors.push(DriftError::Read { file: name, source }),
        }
    }
    found
}

/// The documents of `text` (YAML, merge keys applied, or JSON). A document that is valid YAML
/// but cannot be a Kubernetes object (e.g. a list as a map key) is left out; a syntax error
/// is reported and ends the file, as in `pinhook check`.
pub fn parse(file: &str, text: &str, report: &mut Report) -> Vec<Found> {
    use serde::Deserialize as _;
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let mut yaml = match serde_yaml_ng::Value::deserialize(doc) {
            Ok(v) => v,
            Err(e) => {
                report.errors.push(DriftError::Parse {
                    file: file.to_owned(),
                    document: i + 1,
                    message: e.to_string(),
                });
                // The YAML stream cannot be resynchronized after a syntax error.
                break;
            }
        };
        // kubectl applies `<<` merge keys; a document whose merges do not apply is read as is.
        let _ = yaml.apply_merge();
        if let Ok(value) = serde_json::to_value(&yaml) {
            out.push(Found {
                file: Some(file.to_owned()),
                value,
            });
        }
    }
    out
}

/// A client from `KUBECONFIG` (or `~/.kube/config`), else the in-cluster service account.
async fn connect() -> Result<kube::Client, DriftError> {
    let mut config = kube::Config::infer()
        .await
        .map_err(|e| DriftError::Connect(e.to_string()))?;
    // A list is one request; the default (for watches) is five minutes.
    config.read_timeout = Some(Duration::from_secs(60));
    kube::Client::try_from(config).map_err(|e| DriftError::Connect(e.to_string()))
}

/// The kinds `--cluster` lists (group, plural, `apiVersion` and `kind`); the chart's drift
/// ClusterRole grants `get` and `list` on exactly these.
pub fn cluster_kinds() -> [ApiResource; 6] {
    [
        ApiResource::erase::<Deployment>(&()),
        ApiResource::erase::<StatefulSet>(&()),
        ApiResource::erase::<DaemonSet>(&()),
        ApiResource::erase::<CronJob>(&()),
        ApiResource::erase::<Job>(&()),
        ApiResource::erase::<Pod>(&()),
    ]
}

/// Every object of the kinds `--cluster` reads, in `namespace` or all namespaces, page by page.
async fn list_cluster(
    client: kube::Client,
    namespace: Option<&str>,
    report: &mut Report,
) -> Vec<Found> {
    let mut out = Vec::new();
    for resource in cluster_kinds() {
        let api: Api<DynamicObject> = match namespace {
            Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
            None => Api::all_with(client.clone(), &resource),
        };
        let mut params = ListParams::default().limit(PAGE);
        loop {
            let page = match api.list(&params).await {
                Ok(p) => p,
                Err(e) => {
                    report.errors.push(DriftError::List {
                        plural: resource.plural.clone(),
                        scope: namespace
                            .map(|ns| format!(" in namespace {ns:?}"))
                            .unwrap_or_default(),
                        message: describe(&e),
                    });
                    break;
                }
            };
            for item in page.items {
                // List items carry no apiVersion and kind; the object is read by them.
                if let Ok(mut value) = serde_json::to_value(&item) {
                    value["apiVersion"] = json!(resource.api_version);
                    value["kind"] = json!(resource.kind);
                    out.push(Found { file: None, value });
                }
            }
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
    }
    out
}

/// A kube error in one line: the API server's message and code, or the transport error.
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
        other => other.to_string(),
    }
}

/// Leaves out the objects whose images another listed object already carries: a Pod or Job
/// controlled by a listed object (a Job of a CronJob, a Pod of a Job, StatefulSet or
/// DaemonSet), and a Pod of a ReplicaSet that a listed Deployment created (named
/// `DEPLOYMENT-HASH`, with `pod-template-hash: HASH`). Returns what is kept and how many were
/// left out. Pods of a ReplicaSet without a Deployment, and bare Pods, are kept.
pub fn without_owned(found: Vec<Found>) -> (Vec<Found>, usize) {
    let str_at = |v: &Value, p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_owned);
    let uids: HashSet<String> = found
        .iter()
        .filter_map(|f| str_at(&f.value, "/metadata/uid"))
        .collect();
    let deployments: HashSet<(String, String)> = found
        .iter()
        .filter(|f| f.value["kind"] == "Deployment")
        .filter_map(|f| {
            Some((
                str_at(&f.value, "/metadata/namespace")?,
                str_at(&f.value, "/metadata/name")?,
            ))
        })
        .collect();
    let covered = |v: &Value| {
        let Some(owner) = v
            .pointer("/metadata/ownerReferences")
            .and_then(Value::as_array)
            .and_then(|refs| refs.iter().find(|r| r["controller"] == true))
        else {
            return false;
        };
        if owner["uid"].as_str().is_some_and(|u| uids.contains(u)) {
            return true;
        }
        let (Some(ns), Some(rs), Some(hash)) = (
            str_at(v, "/metadata/namespace"),
            owner["name"].as_str(),
            str_at(v, "/metadata/labels/pod-template-hash"),
        ) else {
            return false;
        };
        owner["kind"] == "ReplicaSet"
            && rs
                .strip_suffix(hash.as_str())
                .and_then(|d| d.strip_suffix('-'))
                .is_some_and(|d| deployments.contains(&(ns, d.to_owned())))
    };
    let before = found.len();
    let kept: Vec<Found> = found.into_iter().filter(|f| !covered(&f.value)).collect();
    let owned = before - kept.len();
    (kept, owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(value: Value) -> Found {
        Found { file: None, value }
    }

    fn names(found: &[Found]) -> Vec<String> {
        found
            .iter()
            .map(|f| {
                format!(
                    "{}/{}",
                    f.value["kind"].as_str().unwrap(),
                    f.value["metadata"]["name"].as_str().unwrap()
                )
            })
            .collect()
    }

    fn owned_by(kind: &str, name: &str, uid: &str) -> Value {
        json!([{"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": uid, "controller": true}])
    }

    #[test]
    fn owned_objects_are_reported_once_at_the_top() {
        let listed = vec![
            found(
                json!({"kind": "Deployment", "metadata": {"name": "web", "namespace": "shop", "uid": "d1"}}),
            ),
            found(
                json!({"kind": "Pod", "metadata": {"name": "web-7f9c-abcde", "namespace": "shop",
                "labels": {"pod-template-hash": "7f9c"}, "ownerReferences": owned_by("ReplicaSet", "web-7f9c", "rs1")}}),
            ),
            found(
                json!({"kind": "CronJob", "metadata": {"name": "nightly", "namespace": "shop", "uid": "c1"}}),
            ),
            found(
                json!({"kind": "Job", "metadata": {"name": "nightly-1", "namespace": "shop", "uid": "j1",
                "ownerReferences": owned_by("CronJob", "nightly", "c1")}}),
            ),
            found(
                json!({"kind": "Pod", "metadata": {"name": "nightly-1-x", "namespace": "shop",
                "ownerReferences": owned_by("Job", "nightly-1", "j1")}}),
            ),
            // A ReplicaSet of its own (no Deployment of that name): its Pods are kept.
            found(
                json!({"kind": "Pod", "metadata": {"name": "solo-abc", "namespace": "shop",
                "labels": {"pod-template-hash": "abc"}, "ownerReferences": owned_by("ReplicaSet", "solo", "rs2")}}),
            ),
            // Same Deployment name in another namespace does not cover it.
            found(
                json!({"kind": "Pod", "metadata": {"name": "web-7f9c-zzz", "namespace": "other",
                "labels": {"pod-template-hash": "7f9c"}, "ownerReferences": owned_by("ReplicaSet", "web-7f9c", "rs3")}}),
            ),
            // An owner that is not listed (and not a controller reference) does not hide it.
            found(
                json!({"kind": "Pod", "metadata": {"name": "bare", "namespace": "shop",
                "ownerReferences": [{"kind": "Node", "name": "n", "uid": "n1"}]}}),
            ),
        ];
        let (kept, owned) = without_owned(listed);
        assert_eq!(owned, 3);
        assert_eq!(
            names(&kept),
            [
                "Deployment/web",
                "CronJob/nightly",
                "Pod/solo-abc",
                "Pod/web-7f9c-zzz",
                "Pod/bare"
            ]
        );
    }

    #[test]
    fn documents_that_are_not_objects_are_left_out() {
        let mut r = Report::default();
        let found = parse(
            "m.yaml",
            "? [a, b]\n: c\n---\nplain: text\nlist: [1, 2]\n---\n- 1\n- 2\n",
            &mut r,
        );
        assert!(r.errors.is_empty(), "{:?}", r.errors);
        // The sequence-keyed map is left out; the others are read (and have no objects).
        assert_eq!(found.len(), 2);
        assert!(
            found
                .iter()
                .all(|f| workload::manifests(&f.value).is_empty())
        );
    }

    #[test]
    fn merge_keys_are_applied() {
        let mut r = Report::default();
        let found = parse(
            "m.yaml",
            "base: &base {name: app, image: 'shop/web:1.0@sha256:aa'}\napiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n    - <<: *base\n",
            &mut r,
        );
        assert_eq!(
            found[0].value["spec"]["containers"][0]["image"],
            "shop/web:1.0@sha256:aa"
        );
    }

    #[test]
    fn syntax_error_ends_the_file_and_makes_the_report_incomplete() {
        let mut r = Report::default();
        let found = parse("m.yaml", "a: 1\n---\nb: [unclosed\n---\nc: 3\n", &mut r);
        assert_eq!(found.len(), 1);
        assert_eq!(r.exit_code(), EXIT_INCOMPLETE);
        assert!(
            r.errors[0].to_string().starts_with("m.yaml: document 2:"),
            "{}",
            r.errors[0]
        );
    }

    fn moved() -> Moved {
        Moved {
            object: "Deployment shop/web".into(),
            site: "container \"web\"".into(),
            path: "spec.template.spec.containers[0]".into(),
            image: "shop/web:1.0@sha256:aaa".into(),
            tag: "shop/web:1.0".into(),
            pinned: "sha256:aaa".into(),
            current: "sha256:bbb".into(),
        }
    }

    #[test]
    fn exit_status_and_lines() {
        let mut r = Report::default();
        assert_eq!(r.exit_code(), EXIT_CURRENT);
        r.current = 2;
        assert_eq!(r.exit_code(), EXIT_CURRENT);
        r.moved.push(Located {
            file: Some("deploy/web.yaml".into()),
            entry: moved(),
        });
        r.moved.push(Located {
            file: None,
            entry: moved(),
        });
        assert_eq!(r.exit_code(), EXIT_MOVED);
        assert_eq!(
            r.lines(),
            [
                "deploy/web.yaml: moved: Deployment shop/web: container \"web\" (spec.template.spec.containers[0]): shop/web:1.0 pinned to sha256:aaa, now sha256:bbb",
                "moved: Deployment shop/web: container \"web\" (spec.template.spec.containers[0]): shop/web:1.0 pinned to sha256:aaa, now sha256:bbb",
            ]
        );
        r.unchecked.push(Located {
            file: None,
            entry: Unchecked {
                object: "Pod shop/p".into(),
                site: "container \"a\"".into(),
                image: "shop/a:1@sha256:ccc".into(),
                error: "registry down".into(),
            },
        });
        // An unchecked reference makes the report incomplete, even with moved tags.
        assert_eq!(r.exit_code(), EXIT_INCOMPLETE);
        assert_eq!(
            r.lines()[2],
            "unchecked: Pod shop/p: container \"a\": shop/a:1@sha256:ccc: registry down"
        );
        assert_eq!(
            r.summary(),
            "5 pinned reference(s) checked, 2 moved, 1 unchecked, 0 error(s)"
        );
        let j = r.to_json();
        assert_eq!(j["checked"], 5);
        assert_eq!(j["current"], 2);
        assert_eq!(j["moved"][0]["file"], "deploy/web.yaml");
        assert!(j["moved"][1].get("file").is_none(), "{j}");
        assert_eq!(j["moved"][0]["current"], "sha256:bbb");
        assert_eq!(j["unchecked"][0]["error"], "registry down");
        assert_eq!(j["errors"], json!([]));
    }

    #[test]
    fn directories_are_walked_and_missing_files_reported() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("b")).unwrap();
        for f in ["b/2.yml", "b/1.json", "a.yaml", "notes.txt"] {
            std::fs::write(d.join(f), "{kind: ConfigMap}\n").unwrap();
        }
        let mut r = Report::default();
        let found = read_paths(&[d.to_path_buf(), d.join("missing.yaml")], &mut r);
        let files: Vec<String> = found
            .iter()
            .map(|f| {
                f.file
                    .clone()
                    .unwrap()
                    .replace(&d.display().to_string(), "")
            })
            .collect();
        assert_eq!(files, ["/a.yaml", "/b/1.json", "/b/2.yml"]);
        assert_eq!(r.errors.len(), 1, "{:?}", r.errors);
        assert!(
            r.errors[0]
                .to_string()
                .contains("missing.yaml: cannot read")
        );
    }
}
